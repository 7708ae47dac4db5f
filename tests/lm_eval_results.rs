//! `lmscore score` takes what lm-eval users pass (--limit, --num-fewshot, lm-eval's task names, a Hub id) and
//! writes lm-eval 0.4's results layout. No Python needed; tests/lm_eval_harness.rs checks the layout against
//! lm-eval's own files.

use serde_json::Value;
use std::process::Command;

fn score(args: &[&str]) -> (bool, Value, String) {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "score",
            "--model",
            "tests/fixtures/models/pythia-tiny",
            "--offline",
            "--output-json",
            json.to_str().unwrap(),
        ])
        .args(args)
        .env("HF_HUB_CACHE", tmp.path().join("empty-cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = std::fs::read_to_string(&json)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(Value::Null);
    (out.status.success(), v, stderr)
}

#[test]
fn limit_aliases_and_metric_names() {
    let (ok, v, err) = score(&[
        "--tasks",
        "inverse_scaling_memo_trap,memo_trap,truthfulqa_mc2",
        "--protocol",
        "lm-eval-0.4",
        "--limit",
        "3",
    ]);
    assert!(ok, "{err}");
    // memo_trap given twice under two names: scored once, under the first name.
    let r = v["results"].as_object().unwrap();
    assert_eq!(r.keys().collect::<Vec<_>>(), ["inverse_scaling_memo_trap", "truthfulqa_mc2"]);
    assert_eq!(
        v["n-samples"]["inverse_scaling_memo_trap"],
        serde_json::json!({"original": 20, "effective": 3})
    );
    assert_eq!(r["truthfulqa_mc2"]["sample_len"], 3);
    assert!(
        r["truthfulqa_mc2"]["acc,none"].is_f64() && r["truthfulqa_mc2"].get("mc2").is_none(),
        "{v}"
    );
    assert_eq!(v["versions"]["truthfulqa_mc2"], 3.0);
    assert_eq!(
        v["higher_is_better"]["inverse_scaling_memo_trap"],
        serde_json::json!({"acc": true, "acc_norm": true})
    );
    assert_eq!(v["config"]["limit"], 3.0);
    assert_eq!(v["config"]["model_args"], "pretrained=tests/fixtures/models/pythia-tiny");
    assert_eq!(v["lmscore"]["data_sha256"]["truthfulqa_mc2"].as_str().unwrap().len(), 64);
    assert!(v["plan"]["inverse_scaling_memo_trap"]["computed_tokens"].as_u64().unwrap() > 0);
    // A fraction is lm-eval's: ceil(20 * 0.25) = 5 documents.
    let (ok, v, err) = score(&["--tasks", "neqa", "--limit", "0.25"]);
    assert!(ok, "{err}");
    assert_eq!(v["results"]["neqa"]["sample_len"], 5);
    assert_eq!(v["versions"]["neqa"], "paper-2023", "paper-2023 is not an lm-eval 0.4 task version");
    // One document: lm-eval writes the standard error as "N/A"; never a NaN (JSON has none).
    let (ok, v, err) = score(&["--tasks", "neqa,truthfulqa_mc1", "--limit", "1"]);
    assert!(ok, "{err}");
    assert_eq!(v["results"]["neqa"]["acc_stderr,none"], "N/A");
    assert_eq!(v["results"]["truthfulqa_mc1"]["acc_stderr,none"], "N/A");
}

#[test]
fn lm_eval_arguments_refused_clearly() {
    let (ok, v, err) = score(&["--tasks", "neqa", "--num-fewshot", "5"]);
    assert!(!ok && v.is_null() && err.contains("--num-fewshot 5") && err.contains("lm-eval"), "{err}");
    let (ok, _, err) = score(&["--tasks", "neqa", "--limit", "0"]);
    assert!(!ok && err.contains("--limit 0"), "{err}");
    let (ok, _, err) = score(&["--tasks", "inverse_scaling_nonsense"]);
    assert!(
        !ok && err.contains("unknown task `inverse_scaling_nonsense`") && err.contains("inverse_scaling_memo_trap"),
        "{err}"
    );
    // A Hub id with a revision, offline with an empty cache: the error says what is missing.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .args(["score", "--model", "EleutherAI/pythia-160m@step2000", "--tasks", "neqa", "--offline"])
        .env("HF_HUB_CACHE", tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("EleutherAI/pythia-160m@step2000") && err.contains("--offline"),
        "{err}"
    );
    // HF_HUB_OFFLINE=1 means offline for checkpoints too (it once did only for task data): no download is tried.
    let out = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .args(["score", "--model", "EleutherAI/pythia-160m@step2000", "--tasks", "neqa"])
        .env("HF_HUB_CACHE", tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("HF_HUB_OFFLINE is set") && err.contains("not complete in the Hugging Face cache"),
        "{err}"
    );
}
