//! Loaders on hand-written files (`tests/fixtures/tasks/`): the prize classification format with classes
//! as a string and as a list (apostrophes, double quotes, escapes, unicode), file names of the 8 datasets
//! missing from shared/data, the custom JSONL format, bad rows (error with file and line, or skipped and
//! counted), missing data (local path, Hub dataset, how to supply), and task-list expansion.

use lmscore::tasks::{self, metrics::py_len, prize, LoadOptions, LoadedTask, Protocol, Scoring, STUDY_TASKS};
use lmscore::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tasks"))
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/models/pythia-tiny/tokenizer.json"
    )))
    .unwrap()
}

/// The harnesses' pair encoding, written out independently: regime A (`paper-2023`) encodes each string on
/// its own; lm-eval 0.4's `_encode_pair` moves the context's trailing whitespace into the continuation, then
/// `context_enc = enc(context)`, `continuation_enc = enc(context + continuation)[len(context_enc):]`. An
/// empty context is `[<|endoftext|>]` + `enc(continuation)` in both.
fn lm_eval_pair(tok: &Tokenizer, context: &str, continuation: &str, protocol: Protocol) -> (Vec<u32>, Vec<u32>) {
    if context.is_empty() {
        return (vec![0], tok.encode(continuation).unwrap());
    }
    match protocol {
        Protocol::Paper2023 => (tok.encode(context).unwrap(), tok.encode(continuation).unwrap()),
        Protocol::LmEval04 => {
            let trimmed = context.trim_end();
            let cont = format!("{}{continuation}", &context[trimmed.len()..]);
            let whole = tok.encode(&format!("{trimmed}{cont}")).unwrap();
            let ctx = tok.encode(trimmed).unwrap();
            let rest = whole[ctx.len()..].to_vec();
            (ctx, rest)
        }
    }
}

fn expected() -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("prize_expected.json")).unwrap()).unwrap()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

/// A data directory holding `file` as `<dir>/<name>` (the layout of shared/data), marked as a sample so
/// the sha256 check stays quiet.
fn data_dir_with(file: &Path, dir: &str, name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
    std::fs::copy(file, tmp.path().join(dir).join(name)).unwrap();
    std::fs::write(tmp.path().join("SAMPLE.md"), "test data\n").unwrap();
    tmp
}

fn opts(dir: &Path, skip: bool) -> LoadOptions {
    LoadOptions {
        data_dir: dir.to_path_buf(),
        skip_bad_rows: skip,
        offline: true,
    }
}

/// Choices as the harnesses' own Python code gives them (prize_expected.json was written with
/// `classes.split("'")[1::2]` and `ast.literal_eval`), from classes as a string and as a real list.
#[test]
fn prize_classes_string_and_list() {
    let tok = tokenizer();
    let exp = expected();
    for file in ["prize_string.jsonl", "prize_list.jsonl"] {
        for protocol in [Protocol::Paper2023, Protocol::LmEval04] {
            let (docs, skipped) = prize::load_file(&fixtures().join(file), protocol, &tok, false).unwrap();
            assert_eq!((docs.len(), skipped), (5, 0));
            for (i, (d, e)) in docs.iter().zip(&exp).enumerate() {
                let key = if protocol == Protocol::Paper2023 { "paper" } else { "lm_eval" };
                assert_eq!(d.choices, strs(&e[key]), "{file} {protocol} row {i}");
                assert_eq!(d.gold as u64, e["gold"].as_u64().unwrap());
                let delim = protocol.prize_delimiter();
                assert_eq!(d.continuations, d.choices.iter().map(|c| format!("{delim}{c}")).collect::<Vec<_>>());
                assert_eq!(d.requests.len(), d.choices.len());
                if protocol == Protocol::Paper2023 {
                    let lens: Vec<u64> = d.choices.iter().map(|c| py_len(c) as u64).collect();
                    assert_eq!(
                        lens,
                        e["paper_lens"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_u64().unwrap())
                            .collect::<Vec<_>>()
                    );
                    // Regime A: the context is encoded on its own, and the continuation too.
                    assert_eq!(d.requests[0].context, tok.encode(&d.context).unwrap());
                    assert_eq!(d.requests[0].continuation, tok.encode(&d.continuations[0]).unwrap());
                }
                for (r, c) in d.requests.iter().zip(&d.continuations) {
                    assert_eq!(
                        (&r.context, &r.continuation),
                        (
                            &lm_eval_pair(&tok, &d.context, c, protocol).0,
                            &lm_eval_pair(&tok, &d.context, c, protocol).1
                        )
                    );
                }
            }
        }
    }
    // The same data as a string or as a list gives identical requests under either protocol.
    for protocol in [Protocol::Paper2023, Protocol::LmEval04] {
        let (a, _) = prize::load_file(&fixtures().join("prize_string.jsonl"), protocol, &tok, false).unwrap();
        let (b, _) = prize::load_file(&fixtures().join("prize_list.jsonl"), protocol, &tok, false).unwrap();
        assert_eq!(a, b, "{protocol}");
    }
}

/// The 8 datasets missing from shared/data load from the file names their SOURCE.md gives.
#[test]
fn missing_datasets_file_names() {
    let tok = tokenizer();
    let names = [
        ("hindsight_neglect", "hindsight-neglect_classification.jsonl"),
        ("into_the_unknown", "into-the-unknown_classification.jsonl"),
        ("modus_tollens", "modus-tollens_classification.jsonl"),
        ("pattern_matching_suppression", "pattern-matching-suppression_classification.jsonl"),
        ("redefine", "redefine_classification.jsonl"),
        ("repetitive_algebra", "repetitive-algebra_classification.jsonl"),
        ("resisting_correction", "resisting-correction_classification.jsonl"),
        ("sig_figs", "sig-figs_classification.jsonl"),
    ];
    for (task, file) in names {
        let dir = data_dir_with(&fixtures().join("prize_string.jsonl"), task, file);
        for protocol in [Protocol::Paper2023, Protocol::LmEval04] {
            let t = tasks::load_task(task, protocol, &tok, &opts(dir.path(), false)).unwrap();
            assert_eq!((t.name.as_str(), t.docs.len(), t.scoring), (task, 5, Scoring::Choice));
            assert!(t.source.ends_with(format!("{task}/{file}")));
        }
    }
    // lm-eval 0.4's round-1 tasks.
    for (task, file) in [
        ("redefine_math", "redefine-math_classification.jsonl"),
        ("quote_repetition", "quote-repetition_classification.jsonl"),
    ] {
        let dir = data_dir_with(&fixtures().join("prize_list.jsonl"), task, file);
        let t = tasks::load_task(task, Protocol::LmEval04, &tok, &opts(dir.path(), false)).unwrap();
        assert_eq!(t.docs.len(), 5);
        assert!(tasks::load_task(task, Protocol::Paper2023, &tok, &opts(dir.path(), false)).is_err());
    }
}

fn err_text(r: lmscore::Result<LoadedTask>) -> String {
    match r {
        Ok(t) => panic!("expected an error, loaded {} docs", t.docs.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn prize_bad_rows() {
    let tok = tokenizer();
    let file = fixtures().join("prize_bad.jsonl");
    let dir = data_dir_with(&file, "neqa", "neqa_classification.jsonl");
    let path = dir.path().join("neqa/neqa_classification.jsonl");
    // Without --skip-bad-rows: the first bad row, with file and line.
    let e = err_text(tasks::load_task("neqa", Protocol::Paper2023, &tok, &opts(dir.path(), false)));
    assert!(e.starts_with(&format!("{}:2:", path.display())), "{e}");
    assert!(e.contains("missing `prompt`") && e.contains("--skip-bad-rows"), "{e}");
    // Each kind of bad row on its own.
    let cases = [
        (3, "`answer_index` 5 is out of range"),
        (5, "gives no choices"),
        (6, "not valid JSON"),
        (7, "`classes` must be a list of strings"),
        (8, "`answer_index` must be a non-negative integer"),
    ];
    let lines: Vec<&str> = std::fs::read_to_string(&file).unwrap().leak().lines().collect();
    for (line, msg) in cases {
        let one = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(one.path(), format!("{}\n{}\n", lines[0], lines[line - 1])).unwrap();
        let e = prize::load_file(one.path(), Protocol::Paper2023, &tok, false).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2:", one.path().display())) && e.contains(msg),
            "line {line}: {e}"
        );
    }
    // The unterminated list is fine for the paper's split parser but not for a Python-literal parser.
    let one = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(one.path(), format!("{}\n", lines[3])).unwrap();
    let (docs, _) = prize::load_file(one.path(), Protocol::Paper2023, &tok, false).unwrap();
    assert_eq!(docs[0].choices, vec![" yes", " no"]);
    let e = prize::load_file(one.path(), Protocol::LmEval04, &tok, false).unwrap_err().to_string();
    assert!(e.contains(":1:") && e.contains("unparsable `classes`"), "{e}");
    // With --skip-bad-rows: skipped and counted (the blank line is neither a doc nor a bad row).
    let t = tasks::load_task("neqa", Protocol::Paper2023, &tok, &opts(dir.path(), true)).unwrap();
    assert_eq!((t.docs.len(), t.skipped_rows), (3, 6));
    assert_eq!(t.docs.iter().map(|d| d.line).collect::<Vec<_>>(), vec![1, 4, 10]);
    let t = tasks::load_task("neqa", Protocol::LmEval04, &tok, &opts(dir.path(), true)).unwrap();
    assert_eq!((t.docs.len(), t.skipped_rows), (2, 7));
    // A file with nothing usable is an error even when skipping.
    let none = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(none.path(), "{\"prompt\": \"x\"}\n").unwrap();
    let e = prize::load_file(none.path(), Protocol::Paper2023, &tok, true).unwrap_err().to_string();
    assert!(e.contains("no usable rows (1 skipped"), "{e}");
}

#[test]
fn truthfulqa_bad_rows() {
    let tok = tokenizer();
    let dir = data_dir_with(&fixtures().join("truthfulqa_bad.jsonl"), "truthfulqa", "truthfulqa_mc_validation.jsonl");
    let path = dir.path().join("truthfulqa/truthfulqa_mc_validation.jsonl");
    for name in ["truthfulqa_mc1", "truthfulqa_mc2"] {
        let e = err_text(tasks::load_task(name, Protocol::Paper2023, &tok, &opts(dir.path(), false)));
        assert!(
            e.starts_with(&format!("{}:2:", path.display())) && e.contains("`mc2_targets` has 8 choices but 7 labels"),
            "{e}"
        );
        // MC1 and MC2 keep or skip the same questions.
        let t = tasks::load_task(name, Protocol::Paper2023, &tok, &opts(dir.path(), true)).unwrap();
        assert_eq!((t.docs.len(), t.skipped_rows), (2, 3), "{name}");
        assert_eq!(t.docs.iter().map(|d| d.line).collect::<Vec<_>>(), vec![1, 5]);
    }
    let lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(str::to_string).collect();
    for (line, msg) in [(3, "has no false answer"), (4, "missing `mc1_targets`")] {
        let one = tempfile::NamedTempFile::with_suffix(".jsonl").unwrap();
        std::fs::write(one.path(), format!("{}\n", lines[line - 1])).unwrap();
        let e = tasks::truthfulqa::load_file("truthfulqa_mc2", one.path(), true, Protocol::Paper2023, &tok, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(":1:") && e.contains(msg), "{e}");
    }
    // mc_task.json entries are named by their position in the array.
    let json = tempfile::NamedTempFile::with_suffix(".json").unwrap();
    std::fs::write(
        json.path(),
        r#"[{"question": "q", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "b": 2}}]"#,
    )
    .unwrap();
    let e = tasks::truthfulqa::load_file("truthfulqa_mc2", json.path(), true, Protocol::Paper2023, &tok, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("question #1") && e.contains("labels must be 0 or 1"), "{e}");
}

#[test]
fn custom_tasks() {
    let tok = tokenizer();
    let spec = format!("custom:{}", fixtures().join("custom.jsonl").display());
    assert_eq!(
        tasks::expand_task_list(&format!("neqa,{spec}"), Protocol::Paper2023).unwrap(),
        vec!["neqa".to_string(), spec.clone()]
    );
    let o = opts(Path::new("/nonexistent"), false);
    for protocol in [Protocol::Paper2023, Protocol::LmEval04] {
        let t = tasks::load_task(&spec, protocol, &tok, &o).unwrap();
        assert_eq!((t.name.as_str(), t.docs.len(), t.scoring), (spec.as_str(), 6, Scoring::Choice));
        assert_eq!(t.docs[0].continuations, vec![" Paris", " Rome", " Berlin"]);
        assert_eq!(t.docs[1].continuations, vec![" 4", " 5"]); // delimiter ""
        assert_eq!(t.docs[2].continuations, vec![" yes", " no"]);
        assert_eq!(t.docs[3].requests[0].context, vec![0]); // empty context -> <|endoftext|>
        assert_eq!(t.docs[4].choices, vec!["☕", "茶"]);
        assert_eq!(t.docs[4].gold, 1);
        for d in &t.docs {
            for (r, c) in d.requests.iter().zip(&d.continuations) {
                let (ctx, cont) = lm_eval_pair(&tok, &d.context, c, protocol);
                assert_eq!((&r.context, &r.continuation), (&ctx, &cont));
            }
        }
        // A token spanning the boundary: lm-eval 0.4 keeps enc(context) as the context ("bro") and scores
        // what the joint encoding has after len(enc(context)) tokens (" fox jumps"; "wn" is swallowed).
        let d = &t.docs[5];
        assert_eq!(d.requests[0].context, tok.encode("The quick bro").unwrap());
        if protocol == Protocol::LmEval04 {
            assert_eq!(d.requests[0].continuation, tok.encode(" fox jumps").unwrap());
        } else {
            assert_eq!(d.requests[0].continuation, tok.encode("wn fox jumps").unwrap());
        }
    }
    let bad = format!("custom:{}", fixtures().join("custom_bad.jsonl").display());
    let e = err_text(tasks::load_task(&bad, Protocol::Paper2023, &tok, &o));
    assert!(e.contains("custom_bad.jsonl:2:") && e.contains("`choices` is empty"), "{e}");
    let t = tasks::load_task(&bad, Protocol::Paper2023, &tok, &opts(Path::new("/nonexistent"), true)).unwrap();
    assert_eq!((t.docs.len(), t.skipped_rows), (2, 5));
    let e = err_text(tasks::load_task("custom:/no/such/file.jsonl", Protocol::Paper2023, &tok, &o));
    assert!(e.contains("/no/such/file.jsonl") && e.contains("not found"), "{e}");
}

#[test]
fn task_lists() {
    assert_eq!(tasks::expand_task_list("all", Protocol::Paper2023).unwrap(), STUDY_TASKS.to_vec());
    assert_eq!(tasks::expand_task_list("all", Protocol::LmEval04).unwrap(), STUDY_TASKS.to_vec());
    assert_eq!(
        tasks::expand_task_list(" neqa, memo_trap,neqa ", Protocol::Paper2023).unwrap(),
        vec!["neqa", "memo_trap"]
    );
    assert_eq!(
        tasks::expand_task_list("redefine_math,quote_repetition", Protocol::LmEval04).unwrap(),
        vec!["redefine_math", "quote_repetition"]
    );
    let e = tasks::expand_task_list("memo_trap,memotrap", Protocol::Paper2023)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown task `memotrap`") && STUDY_TASKS.iter().all(|t| e.contains(t)), "{e}");
    let e = tasks::expand_task_list("redefine_math", Protocol::Paper2023).unwrap_err().to_string();
    assert!(e.contains("--protocol lm-eval-0.4"), "{e}");
    assert!(tasks::expand_task_list("", Protocol::Paper2023).is_err());
    assert!(tasks::expand_task_list("custom:", Protocol::Paper2023).is_err());
}

/// A missing file: the error says where it was looked for locally, which Hub dataset was tried, and how to
/// supply it. The Hub is made unreachable (HF_ENDPOINT at a closed local port, an empty HF cache) so the
/// test means the same with or without network.
#[test]
fn missing_data_errors() {
    let tok = tokenizer();
    let empty = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", cache.path());
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let local = empty.path().join("hindsight_neglect/hindsight-neglect_classification.jsonl");
    // Online: the Hub is tried and fails.
    let o = LoadOptions {
        data_dir: empty.path().to_path_buf(),
        skip_bad_rows: false,
        offline: false,
    };
    let e = err_text(tasks::load_task("hindsight_neglect", Protocol::Paper2023, &tok, &o));
    assert!(e.contains(&local.display().to_string()), "{e}");
    assert!(e.contains("jmichaelov/inverse_scaling_prize-hindsight_neglect"), "{e}");
    assert!(e.contains("1539e144e20c760cd70980ca012d3d75744b59385bdf78cffc4d02560c4b3686"), "{e}");
    assert!(e.contains("place the file at") && e.contains("--data-dir"), "{e}");
    // Offline: the Hub is not tried, and the message says so.
    let o = LoadOptions { offline: true, ..o };
    let e = err_text(tasks::load_task("hindsight_neglect", Protocol::Paper2023, &tok, &o));
    assert!(
        e.contains("--offline") && e.contains("jmichaelov/inverse_scaling_prize-hindsight_neglect") && e.contains("place the file at"),
        "{e}"
    );
    // lm-eval 0.4's round-1 tasks are not in shared/data either.
    let e = err_text(tasks::load_task("redefine_math", Protocol::LmEval04, &tok, &o));
    assert!(
        e.contains("redefine_math/redefine-math_classification.jsonl") && e.contains("inverse-scaling/redefine-math"),
        "{e}"
    );
    // TruthfulQA has no readable Hub copy: the message names both local files.
    let e = err_text(tasks::load_task("truthfulqa_mc1", Protocol::Paper2023, &tok, &o));
    assert!(
        e.contains("truthfulqa_mc_validation.jsonl") && e.contains("mc_task.json") && e.contains("Parquet"),
        "{e}"
    );
    // A file found in the HF cache is used (layout: datasets--owner--name/refs/main + snapshots/<commit>/file).
    let repo = cache.path().join("hub/datasets--jmichaelov--inverse_scaling_prize-hindsight_neglect");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    std::fs::create_dir_all(repo.join("snapshots/0123abcd")).unwrap();
    std::fs::copy(
        fixtures().join("prize_list.jsonl"),
        repo.join("snapshots/0123abcd/hindsight-neglect_classification.jsonl"),
    )
    .unwrap();
    let t = tasks::load_task("hindsight_neglect", Protocol::Paper2023, &tok, &o).unwrap();
    assert_eq!(t.docs.len(), 5);
    assert!(t.source.starts_with(cache.path()));
}
