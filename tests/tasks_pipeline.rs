//! Whole pipeline on the committed fixture checkpoint `tests/fixtures/models/pythia-tiny` against
//! `tests/fixtures/goldens/pythia-tiny-tasks.json` (task-spec implemented independently in Python, scored
//! with HF transformers): per-request log-likelihoods within 2e-4 nats, identical acc / acc_norm / mc1 (a
//! doc may differ only where the golden LLs are within 1e-4 of a tie, at most one per task), mc2 within 1e-4.
//!
//! memo_trap and neqa are scored in full under both protocols, and so is TruthfulQA (9,996 requests, MC1 and
//! MC2 in one plan; about 10 s per protocol on a 2-core CPU, the 50304-row LM head dominating) in the
//! `truthfulqa_full_*` tests. A quick subset test (the first 60 questions plus rows 25 and 208, the unsorted
//! MC2 labels) checks the same on a few seconds' budget when iterating with a filter.
//!
//! Also: the `lmscore score` command on the bundled sample data (JSON layout, request log, missing-data error).

use lmscore::checkpoint::Checkpoint;
use lmscore::engine::{Engine, EngineOptions};
use lmscore::tasks::{self, metrics, LoadOptions, LoadedTask, Protocol, Scoring, TaskOutcome};
use lmscore::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

const LL_TOL: f64 = 2e-4;
const TIE_TOL: f64 = 1e-4;
const MC2_TOL: f64 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared_data() -> PathBuf {
    let p = root().join("../shared/data");
    assert!(
        p.join("memo_trap").is_dir(),
        "{} is missing: these tests need the project's shared data beside the crate, as CI has it",
        p.display()
    );
    p
}

fn goldens() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let p = root().join("tests/fixtures/goldens/pythia-tiny-tasks.json");
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
    })
}

fn model_dir() -> PathBuf {
    root().join("tests/fixtures/models/pythia-tiny")
}

fn engine() -> &'static (Engine, Tokenizer) {
    static E: OnceLock<(Engine, Tokenizer)> = OnceLock::new();
    E.get_or_init(|| {
        let ckpt = Checkpoint::open(model_dir()).unwrap();
        let tok = Tokenizer::from_file(&ckpt.tokenizer_path()).unwrap();
        (Engine::load(&ckpt, &EngineOptions::default()).unwrap(), tok)
    })
}

fn load(name: &str, protocol: Protocol) -> LoadedTask {
    let opts = LoadOptions {
        data_dir: shared_data(),
        skip_bad_rows: false,
        offline: true,
    };
    tasks::load_task(name, protocol, &engine().1, &opts).unwrap()
}

/// Golden per-doc, per-choice log-likelihoods of a task.
fn golden_lls(protocol: Protocol, task: &str) -> Vec<Vec<f64>> {
    goldens()[protocol.name()][task]["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

/// Gap between the best and second-best value (0 for a single choice).
fn top_gap(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| b.partial_cmp(a).unwrap());
    if v.len() < 2 {
        f64::INFINITY
    } else {
        v[0] - v[1]
    }
}

struct Report {
    requests: usize,
    max_dll: f64,
    differing_docs: Vec<(&'static str, usize)>,
}

/// Compare an outcome with the golden LLs of the same docs (`doc_ids[i]` = golden doc index of the task's
/// doc i). Checks per-request LLs and per-doc metric values.
fn compare(t: &LoadedTask, o: &TaskOutcome, protocol: Protocol, doc_ids: &[usize]) -> Report {
    let g = golden_lls(protocol, &t.name);
    let mut rep = Report {
        requests: 0,
        max_dll: 0.0,
        differing_docs: vec![],
    };
    let mut k = 0;
    for (di, d) in t.docs.iter().enumerate() {
        let gl = &g[doc_ids[di]];
        assert_eq!(gl.len(), d.requests.len(), "{} doc {}: choice count", t.name, doc_ids[di]);
        let ours: Vec<f64> = o.requests[k..k + gl.len()].iter().map(|r| r.logprob).collect();
        for (ci, (a, b)) in ours.iter().zip(gl).enumerate() {
            let dll = (a - b).abs();
            assert!(
                dll <= LL_TOL,
                "{} ({protocol}) doc {} choice {ci}: logprob {a} vs golden {b} (|Δ| {dll:.2e} > {LL_TOL})",
                t.name,
                doc_ids[di]
            );
            rep.max_dll = rep.max_dll.max(dll);
            rep.requests += 1;
        }
        k += gl.len();
        // Per-doc metrics from our LLs vs from the golden LLs.
        match t.scoring {
            Scoring::Choice => {
                let lens: Vec<usize> = d.choices.iter().map(|c| metrics::py_len(c)).collect();
                if metrics::acc(&ours, d.gold) != metrics::acc(gl, d.gold) {
                    assert!(
                        top_gap(gl) <= TIE_TOL,
                        "{} doc {}: acc differs and the golden LLs {gl:?} are not a near-tie",
                        t.name,
                        doc_ids[di]
                    );
                    rep.differing_docs.push(("acc", doc_ids[di]));
                }
                if metrics::acc_norm(&ours, &lens, d.gold) != metrics::acc_norm(gl, &lens, d.gold) {
                    let normed: Vec<f64> = gl.iter().zip(&lens).map(|(l, &n)| l / n as f64).collect();
                    assert!(
                        top_gap(&normed) <= TIE_TOL,
                        "{} doc {}: acc_norm differs and the golden is not a near-tie",
                        t.name,
                        doc_ids[di]
                    );
                    rep.differing_docs.push(("acc_norm", doc_ids[di]));
                }
            }
            Scoring::Mc1 => {
                if metrics::mc1(&ours) != metrics::mc1(gl) {
                    assert!(
                        top_gap(gl) <= TIE_TOL,
                        "{} doc {}: mc1 differs and the golden LLs are not a near-tie",
                        t.name,
                        doc_ids[di]
                    );
                    rep.differing_docs.push(("mc1", doc_ids[di]));
                }
            }
            Scoring::Mc2 { split } => {
                let (a, b) = if split {
                    (metrics::mc2_split(&ours, &d.labels).unwrap(), metrics::mc2_split(gl, &d.labels).unwrap())
                } else {
                    (metrics::mc2_fixed(&ours, &d.labels), metrics::mc2_fixed(gl, &d.labels))
                };
                assert!((a - b).abs() <= MC2_TOL, "{} doc {}: mc2 {a} vs {b}", t.name, doc_ids[di]);
            }
        }
    }
    assert_eq!(k, o.requests.len());
    for m in ["acc", "acc_norm", "mc1"] {
        let n = rep.differing_docs.iter().filter(|(x, _)| *x == m).count();
        assert!(n <= 1, "{} ({protocol}): {n} docs differ in {m} (at most 1 near-tie allowed)", t.name);
    }
    rep
}

/// Aggregated metrics against the golden ones (full task only).
fn compare_metrics(o: &TaskOutcome, protocol: Protocol, rep: &Report) {
    let g = &goldens()[protocol.name()][o.task.as_str()];
    assert_eq!(o.n_docs as u64, g["n"].as_u64().unwrap(), "{}: n", o.task);
    for m in &o.metrics {
        // The goldens name TruthfulQA's metrics mc1 / mc2; lmscore uses lm-eval's name, acc of each task.
        let name = match (o.task.as_str(), m.name.as_str()) {
            ("truthfulqa_mc1", "acc") => "mc1",
            ("truthfulqa_mc2", "acc") => "mc2",
            (_, n) => n,
        };
        let gv = g["metrics"][name].as_f64().unwrap_or_else(|| panic!("golden {} has no {name}", o.task));
        let gs = g["metrics"][format!("{name}_stderr")].as_f64().unwrap();
        let flips = rep.differing_docs.iter().filter(|(x, _)| *x == name).count() as f64;
        let tol = if name == "mc2" { MC2_TOL } else { flips / o.n_docs as f64 + 1e-12 };
        assert!(
            (m.value - gv).abs() <= tol,
            "{} ({protocol}) {}: {} vs golden {gv}",
            o.task,
            m.name,
            m.value
        );
        let stol = if name == "mc2" || flips > 0.0 { 1e-4 } else { 1e-12 };
        assert!(
            (m.stderr - gs).abs() <= stol,
            "{} ({protocol}) {}_stderr: {} vs golden {gs}",
            o.task,
            m.name,
            m.stderr
        );
        eprintln!(
            "  {} ({protocol}) {:<8} {:.6} ± {:.6}   golden {gv:.6} ± {gs:.6}",
            o.task, m.name, m.value, m.stderr
        );
    }
}

fn run_full(protocol: Protocol, names: &[&str]) {
    let (eng, _) = engine();
    let loaded: Vec<LoadedTask> = names.iter().map(|n| load(n, protocol)).collect();
    let start = std::time::Instant::now();
    let outcomes = tasks::evaluate(eng, &loaded, &EngineOptions::default(), |_, _| {}).unwrap();
    let secs = start.elapsed().as_secs_f64();
    for (t, o) in loaded.iter().zip(&outcomes) {
        let ids: Vec<usize> = (0..t.docs.len()).collect();
        let rep = compare(t, o, protocol, &ids);
        eprintln!(
            "{} ({protocol}): {} requests match (max |Δlogprob| {:.2e}), {} near-tie docs differ {:?}",
            t.name,
            rep.requests,
            rep.max_dll,
            rep.differing_docs.len(),
            rep.differing_docs
        );
        compare_metrics(o, protocol, &rep);
    }
    eprintln!("{names:?} ({protocol}): scored in {secs:.1} s");
}

#[test]
fn memo_trap_and_neqa_paper_2023() {
    run_full(Protocol::Paper2023, &["memo_trap", "neqa"]);
}

#[test]
fn memo_trap_and_neqa_lm_eval_04() {
    run_full(Protocol::LmEval04, &["memo_trap", "neqa"]);
}

/// TruthfulQA subset: questions 0..60 (row 25 among them) plus row 208, the two rows with unsorted MC2 labels.
fn truthfulqa_subset(protocol: Protocol) {
    let (eng, _) = engine();
    let keep: Vec<usize> = (0..60).chain([208]).collect();
    let mut loaded = vec![load("truthfulqa_mc1", protocol), load("truthfulqa_mc2", protocol)];
    for t in &mut loaded {
        let docs = std::mem::take(&mut t.docs);
        t.docs = keep.iter().map(|&i| docs[i].clone()).collect();
    }
    let start = std::time::Instant::now();
    let outcomes = tasks::evaluate(eng, &loaded, &EngineOptions::default(), |_, _| {}).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(outcomes[0].shared_plan_with, vec!["truthfulqa_mc2".to_string()]);
    assert_eq!(outcomes[0].stats.naive_tokens, outcomes[1].stats.naive_tokens);
    for (t, o) in loaded.iter().zip(&outcomes) {
        let rep = compare(t, o, protocol, &keep);
        eprintln!(
            "{} ({protocol}) subset of {} questions: {} requests match (max |Δlogprob| {:.2e}), differing near-tie docs {:?}",
            t.name,
            keep.len(),
            rep.requests,
            rep.max_dll,
            rep.differing_docs
        );
    }
    eprintln!(
        "truthfulqa subset ({protocol}): {} requests in {secs:.1} s",
        loaded.iter().map(|t| t.n_requests()).sum::<usize>()
    );
}

#[test]
fn truthfulqa_subset_paper_2023() {
    truthfulqa_subset(Protocol::Paper2023);
}

#[test]
fn truthfulqa_subset_lm_eval_04() {
    truthfulqa_subset(Protocol::LmEval04);
}

#[test]
fn truthfulqa_full_paper_2023() {
    run_full(Protocol::Paper2023, &["truthfulqa_mc1", "truthfulqa_mc2"]);
}

#[test]
fn truthfulqa_full_lm_eval_04() {
    run_full(Protocol::LmEval04, &["truthfulqa_mc1", "truthfulqa_mc2"]);
}

// ---- the command line ----

fn lmscore(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

/// The README command: no --data-dir, so the bundled sample; JSON layout and request log.
#[test]
fn cli_score_on_bundled_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("out.json");
    let log = tmp.path().join("requests.jsonl");
    let out = lmscore(&[
        "score",
        "--model",
        "tests/fixtures/models/pythia-tiny",
        "--tasks",
        "memo_trap,neqa,truthfulqa_mc1,truthfulqa_mc2",
        "--output-json",
        json.to_str().unwrap(),
        "--log-requests",
        log.to_str().unwrap(),
        "--offline",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("memo_trap") && stdout.contains("acc_norm") && stdout.contains("mc2"),
        "{stdout}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = &v["results"];
    // lm-eval 0.4's layout (tests/lm_eval_results.rs checks it against lm-eval itself).
    for k in ["acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"] {
        assert!(r["memo_trap"][k].is_f64(), "results.memo_trap.{k}");
    }
    assert_eq!(r["memo_trap"]["sample_len"], 20);
    assert!(r["truthfulqa_mc1"]["acc,none"].is_f64() && r["truthfulqa_mc2"]["acc_stderr,none"].is_f64());
    assert_eq!(v["config"]["protocol"], "paper-2023");
    assert_eq!(v["config"]["device"], "cpu");
    assert_eq!(v["config"]["dtype"], "f32");
    for k in [
        "naive_tokens",
        "computed_tokens",
        "scored_rows",
        "batches",
        "sharing_ratio",
        "tokens_per_second",
    ] {
        assert!(!v["plan"]["neqa"][k].is_null(), "plan.neqa.{k}");
        assert!(!v["plan"]["total"][k].is_null(), "plan.total.{k}");
    }
    assert_eq!(v["plan"]["truthfulqa_mc1"]["shared_with"][0], "truthfulqa_mc2");
    // The sample's TruthfulQA is counted once in the total.
    let p = &v["plan"];
    let sum = p["memo_trap"]["naive_tokens"].as_u64().unwrap()
        + p["neqa"]["naive_tokens"].as_u64().unwrap()
        + p["truthfulqa_mc1"]["naive_tokens"].as_u64().unwrap();
    assert_eq!(p["total"]["naive_tokens"].as_u64().unwrap(), sum);
    let rows: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 40 + 40 + 111 + 154);
    assert_eq!(rows[0]["task"], "memo_trap");
    for k in ["doc", "choice", "logprob", "is_greedy", "n_tokens"] {
        assert!(!rows[0][k].is_null(), "log row key {k}");
    }
    // The sample's first memo_trap doc is the full file's first: same golden LLs.
    let g = golden_lls(Protocol::Paper2023, "memo_trap");
    assert!((rows[0]["logprob"].as_f64().unwrap() - g[0][0]).abs() < LL_TOL);
    assert!((rows[1]["logprob"].as_f64().unwrap() - g[0][1]).abs() < LL_TOL);
}

#[test]
fn cli_missing_data_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = lmscore(&[
        "score",
        "--model",
        "tests/fixtures/models/pythia-tiny",
        "--tasks",
        "sig_figs",
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--offline",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sig_figs/sig-figs_classification.jsonl"), "{err}");
    assert!(err.contains("jmichaelov/inverse_scaling_prize-sig_figs"), "{err}");
    assert!(err.contains("19ca4afdd2b5d0fb2608097cf747b5a4105038ea2183750796c8bf57f23e7448"), "{err}");
    let out = lmscore(&["score", "--model", "tests/fixtures/models/pythia-tiny", "--tasks", "memo_trap,nonsense"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown task `nonsense`") && err.contains("pattern_matching_suppression"),
        "{err}"
    );
}

/// A data file that is not the official release (here: the sample's memo_trap outside a SAMPLE.md
/// directory) is scored, with a sha256 warning on stderr.
#[test]
fn cli_sha256_mismatch_is_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("memo_trap")).unwrap();
    std::fs::copy(
        root().join("data/sample/memo_trap/memo-trap_classification.jsonl"),
        tmp.path().join("memo_trap/memo-trap_classification.jsonl"),
    )
    .unwrap();
    let out = lmscore(&[
        "score",
        "--model",
        "tests/fixtures/models/pythia-tiny",
        "--tasks",
        "memo_trap",
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--offline",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning:") && err.contains("f09aac90bf841f2eb899d23beed8c8ccad2e1d3ab4f0fd3f1ff403fd5c7e11f2"),
        "{err}"
    );
}

/// The string requests of the HF oracle golden (`pythia-tiny.json`, tokenised like lm-eval 0.4), run as a
/// custom task under lm-eval-0.4 (one choice per doc, delimiter ""): same token ids (including the
/// "The quick bro" + "wn fox jumps" row, where a token spans the boundary, and the trailing-whitespace rows)
/// and log-likelihoods within 2e-4.
#[test]
fn custom_task_matches_hf_string_requests() {
    let p = root().join("tests/fixtures/goldens/pythia-tiny.json");
    let g: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let rows: Vec<&Value> = g["requests"].as_array().unwrap().iter().filter(|r| r["context"].is_string()).collect();
    assert!(rows.len() >= 20);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("hf.jsonl");
    let text: String = rows
        .iter()
        .map(|r| serde_json::json!({"context": r["context"], "choices": [r["continuation"]], "gold": 0, "delimiter": ""}).to_string() + "\n")
        .collect();
    std::fs::write(&file, text).unwrap();
    let (eng, tok) = engine();
    let opts = LoadOptions {
        data_dir: tmp.path().to_path_buf(),
        skip_bad_rows: false,
        offline: true,
    };
    let t = tasks::load_task(&format!("custom:{}", file.display()), Protocol::LmEval04, tok, &opts).unwrap();
    let ids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    for (d, r) in t.docs.iter().zip(&rows) {
        assert_eq!(d.requests[0].context, ids(&r["context_ids"]), "context ids of {:?}", r["context"]);
        assert_eq!(
            d.requests[0].continuation,
            ids(&r["continuation_ids"]),
            "continuation ids of {:?} + {:?}",
            r["context"],
            r["continuation"]
        );
    }
    let o = &tasks::evaluate(eng, std::slice::from_ref(&t), &EngineOptions::default(), |_, _| {}).unwrap()[0];
    let mut worst: f64 = 0.0;
    for (s, r) in o.requests.iter().zip(&rows) {
        let d = (s.logprob - r["logprob"].as_f64().unwrap()).abs();
        assert!(d <= LL_TOL, "{:?}: {} vs {}", r["context"], s.logprob, r["logprob"]);
        assert_eq!(s.is_greedy, r["is_greedy"].as_bool().unwrap());
        worst = worst.max(d);
    }
    eprintln!("{} HF string requests as a custom task: max |Δlogprob| {worst:.2e}", rows.len());
}
