//! The request builder against the golden token ids in `shared/data/derived/requests/` (generated with HF
//! `tokenizers`): every one of the 12,468 requests of truthfulqa (MC1 + MC2), memo_trap and neqa, under the
//! paper's protocol; TruthfulQA also under lm-eval-0.4 (identical ids); and the two TruthfulQA source files
//! (HF-rows JSONL and the original mc_task.json) give identical requests.

use lmscore::tasks::{self, metrics::py_len, LoadOptions, LoadedTask, Protocol, Scoring};
use lmscore::tokenizer::{PairEncoding, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn shared() -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    assert!(
        p.join("data/derived/requests").is_dir(),
        "{} is missing: these tests need the project's shared data (shared/data/derived/requests, shared/data/truthfulqa, ...) \
         checked out beside the crate, as CI has it",
        p.display()
    );
    p
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&shared().join("data/tokenizer/tokenizer.json")).unwrap()
}

fn opts() -> LoadOptions {
    LoadOptions {
        data_dir: shared().join("data"),
        skip_bad_rows: false,
        offline: true,
    }
}

fn golden(task: &str) -> Vec<Value> {
    let path = shared().join(format!("data/derived/requests/{task}.jsonl"));
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

/// Compare a prize task with its golden file; returns the number of requests checked.
fn check_prize(task: &str) -> usize {
    let tok = tokenizer();
    let t = tasks::load_task(task, Protocol::Paper2023, &tok, &opts()).unwrap();
    let g = golden(task);
    assert_eq!(t.docs.len(), g.len(), "{task}: doc count");
    assert_eq!(t.scoring, Scoring::Choice);
    let mut n = 0;
    for (d, g) in t.docs.iter().zip(&g) {
        let at = format!("{task} doc {}", g["doc_index"]);
        assert_eq!(d.context, g["context"].as_str().unwrap(), "{at}: context");
        assert_eq!(d.continuations, strs(&g["continuations"]), "{at}: continuations");
        let lens: Vec<u64> = d.choices.iter().map(|c| py_len(c) as u64).collect();
        assert_eq!(
            lens,
            g["choice_char_lens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect::<Vec<_>>(),
            "{at}: lens"
        );
        assert_eq!(d.gold as u64, g["gold"].as_u64().unwrap(), "{at}: gold");
        n += assert_requests(&at, &d.requests, &g["context_ids"], &g["continuation_ids"]);
    }
    n
}

/// A document's requests against the golden context ids and one continuation id list per choice; returns
/// how many requests were checked.
fn assert_requests(at: &str, requests: &[lmscore::plan::Request], context_ids: &Value, continuation_ids: &Value) -> usize {
    let gc: Vec<Vec<u32>> = continuation_ids.as_array().unwrap().iter().map(ids).collect();
    assert_eq!(requests.len(), gc.len(), "{at}: number of requests");
    for (r, cont) in requests.iter().zip(&gc) {
        assert_eq!(r.context, ids(context_ids), "{at}: context ids");
        assert_eq!(&r.continuation, cont, "{at}: continuation ids");
    }
    requests.len()
}

#[test]
fn memo_trap_requests_match_golden_ids() {
    assert_eq!(check_prize("memo_trap"), 1872);
}

#[test]
fn neqa_requests_match_golden_ids() {
    assert_eq!(check_prize("neqa"), 600);
}

/// The two mangled memo_trap rows (0-based 203 and 493) get the paper's parser's second choice `t."]`.
#[test]
fn memo_trap_apostrophe_quirk() {
    let tok = tokenizer();
    let paper = tasks::load_task("memo_trap", Protocol::Paper2023, &tok, &opts()).unwrap();
    assert_eq!(paper.docs[203].choices, vec![" proceed.", "t.\"]"]);
    assert_eq!(paper.docs[493].choices, vec![" here.", "t.\"]"]);
    assert_eq!(paper.docs[203].continuations, vec!["  proceed.", " t.\"]"]);
    let v04 = tasks::load_task("memo_trap", Protocol::LmEval04, &tok, &opts()).unwrap();
    assert_eq!(v04.docs[203].choices, vec![" proceed.", " don't."]);
    assert_eq!(v04.docs[493].choices, vec![" here.", " in't."]);
    // lm-eval 0.4: target_delimiter "", so the continuation is the class itself (one leading space).
    assert_eq!(v04.docs[203].continuations, vec![" proceed.", " don't."]);
    assert_eq!(v04.docs[0].continuations, vec![" heavy.", " fonder."]);
    // No prompt ends in whitespace, so the joint encoding keeps the context's ids.
    for (a, b) in paper.docs.iter().zip(&v04.docs) {
        assert_eq!(a.requests[0].context, b.requests[0].context);
    }
}

fn check_truthfulqa(protocol: Protocol, data_dir: &Path) -> usize {
    let tok = tokenizer();
    let o = LoadOptions {
        data_dir: data_dir.to_path_buf(),
        skip_bad_rows: false,
        offline: true,
    };
    let mc1 = tasks::load_task("truthfulqa_mc1", protocol, &tok, &o).unwrap();
    let mc2 = tasks::load_task("truthfulqa_mc2", protocol, &tok, &o).unwrap();
    assert_eq!(mc1.plan_group, mc2.plan_group, "MC1 and MC2 are scored in one plan");
    assert_eq!(mc1.scoring, Scoring::Mc1);
    assert_eq!(
        mc2.scoring,
        Scoring::Mc2 {
            split: protocol == Protocol::Paper2023
        }
    );
    let g = golden("truthfulqa");
    assert_eq!(mc1.docs.len(), 817);
    assert_eq!(mc2.docs.len(), 817);
    let mut n = 0;
    for (i, g) in g.iter().enumerate() {
        for (t, key) in [(&mc1, "mc1"), (&mc2, "mc2")] {
            let d = &t.docs[i];
            let at = format!("truthfulqa {key} doc {i} ({protocol})");
            assert_eq!(d.context, g["context"].as_str().unwrap(), "{at}: context");
            assert_eq!(d.continuations, strs(&g[format!("{key}_continuations")]), "{at}: continuations");
            let labels: Vec<u8> = g[format!("{key}_labels")]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(d.labels, labels, "{at}: labels");
            n += assert_requests(&at, &d.requests, &g["context_ids"], &g[format!("{key}_continuation_ids")]);
        }
    }
    n
}

#[test]
fn truthfulqa_requests_match_golden_ids() {
    assert_eq!(check_truthfulqa(Protocol::Paper2023, &shared().join("data")), 9996);
}

#[test]
fn truthfulqa_lm_eval_04_has_the_same_ids() {
    assert_eq!(check_truthfulqa(Protocol::LmEval04, &shared().join("data")), 9996);
}

fn requests_of(t: &LoadedTask) -> Vec<(Vec<u32>, Vec<u32>)> {
    t.requests().map(|r| (r.context.clone(), r.continuation.clone())).collect()
}

/// `mc_task.json` (answer -> label objects, in file order) gives exactly the requests of the HF-rows JSONL.
#[test]
fn truthfulqa_mc_task_json_equals_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("truthfulqa")).unwrap();
    std::fs::copy(shared().join("data/truthfulqa/mc_task.json"), tmp.path().join("truthfulqa/mc_task.json")).unwrap();
    let tok = tokenizer();
    let from_json = LoadOptions {
        data_dir: tmp.path().to_path_buf(),
        skip_bad_rows: false,
        offline: true,
    };
    for (name, key) in [("truthfulqa_mc1", "mc1"), ("truthfulqa_mc2", "mc2")] {
        let a = tasks::load_task(name, Protocol::Paper2023, &tok, &opts()).unwrap();
        let b = tasks::load_task(name, Protocol::Paper2023, &tok, &from_json).unwrap();
        assert!(a.source.ends_with("truthfulqa_mc_validation.jsonl"));
        assert!(b.source.ends_with("mc_task.json"));
        assert_eq!(requests_of(&a), requests_of(&b), "{key}: requests differ between the two source files");
        for (x, y) in a.docs.iter().zip(&b.docs) {
            assert_eq!((&x.choices, &x.labels, x.gold), (&y.choices, &y.labels, y.gold));
        }
    }
    // And both match the goldens.
    assert_eq!(check_truthfulqa(Protocol::Paper2023, tmp.path()), 9996);
}

/// The two rows whose MC2 labels are not sorted true-first (0-based 25 and 208) keep their labels.
#[test]
fn truthfulqa_unsorted_mc2_labels_are_kept() {
    let tok = tokenizer();
    let mc2 = tasks::load_task("truthfulqa_mc2", Protocol::Paper2023, &tok, &opts()).unwrap();
    assert_eq!(mc2.docs[25].labels, vec![1, 1, 1, 0, 1, 0, 0, 0, 0]);
    assert_eq!(mc2.docs[208].labels, vec![1, 1, 0, 1, 0, 0, 0]);
    let unsorted: Vec<usize> = mc2
        .docs
        .iter()
        .enumerate()
        .filter(|(_, d)| d.labels.windows(2).any(|w| w[0] == 0 && w[1] == 1))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(unsorted, vec![25, 208]);
}

/// Regime C (joint encoding) gives the golden ids too, for every request of the three tasks (task-spec §1).
#[test]
fn joint_encoding_agrees_on_all_golden_requests() {
    let tok = tokenizer();
    let mut n = 0;
    for task in ["memo_trap", "neqa"] {
        for g in golden(task) {
            for (c, ids_c) in strs(&g["continuations"]).iter().zip(g["continuation_ids"].as_array().unwrap()) {
                let (ctx, cont) = tok.encode_pair(g["context"].as_str().unwrap(), c, PairEncoding::Joint).unwrap();
                assert_eq!((ctx, cont), (ids(&g["context_ids"]), ids(ids_c)));
                n += 1;
            }
        }
    }
    for g in golden("truthfulqa") {
        for key in ["mc1", "mc2"] {
            for (c, ids_c) in strs(&g[format!("{key}_continuations")])
                .iter()
                .zip(g[format!("{key}_continuation_ids")].as_array().unwrap())
            {
                let (ctx, cont) = tok.encode_pair(g["context"].as_str().unwrap(), c, PairEncoding::Joint).unwrap();
                assert_eq!((ctx, cont), (ids(&g["context_ids"]), ids(ids_c)));
                n += 1;
            }
        }
    }
    assert_eq!(n, 12_468);
}
