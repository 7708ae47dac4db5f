//! lmscore inside lm-evaluation-harness 0.4 itself (`--model lmscore`, python/), on local copies of lm-eval's
//! own task YAMLs (tests/lm_eval/local_tasks.py: only the data source differs) and the pythia-tiny fixture:
//! per request against the committed HF goldens; `lmscore score`'s results JSON and samples files against
//! the ones lm-eval writes; rolling log-likelihoods against lm-eval's window code and HF per-token goldens.
//!
//! Needs a Python with lm_eval 0.4.x: `LMSCORE_PYTHON` (default `python3`). Without it the tests print
//! SKIPPED and pass; `LMSCORE_REQUIRE_LM_EVAL=1` (CI) turns that into a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared_data() -> PathBuf {
    let p = root().join("../shared/data");
    assert!(
        p.join("truthfulqa").is_dir(),
        "{} is missing: these tests need the project's shared data",
        p.display()
    );
    p
}

/// The Python to run lm-eval with, or None after printing SKIPPED (a failure under LMSCORE_REQUIRE_LM_EVAL=1).
fn python_or_skip(test: &str) -> Option<String> {
    let python = std::env::var("LMSCORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args([
            "-c",
            "import lm_eval, sys; v = getattr(lm_eval, '__version__', '0.4'); sys.exit(0 if v.startswith('0.4') else 3)",
        ])
        .output();
    if probe.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    let why = format!("no Python with lm_eval 0.4 ({python}; set LMSCORE_PYTHON)");
    if std::env::var("LMSCORE_REQUIRE_LM_EVAL").is_ok_and(|v| v == "1") {
        panic!("{test}: LMSCORE_REQUIRE_LM_EVAL=1 but {why}");
    }
    common::visible(&format!("SKIPPED: {why}: {test}"));
    None
}

/// `python ARGS` with the repository's python/ package importable, the test binary as LMSCORE_BIN and the Hub
/// off; its output must be a success. Returns stdout + stderr.
fn python(py: &str, args: &[&str]) -> String {
    let pythonpath = match std::env::var_os("PYTHONPATH") {
        Some(p) => format!("{}:{}", root().join("python").display(), p.to_string_lossy()),
        None => root().join("python").display().to_string(),
    };
    let out = Command::new(py)
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .env("LMSCORE_BIN", env!("CARGO_BIN_EXE_lmscore"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_DATASETS_CACHE", std::env::temp_dir().join("lmscore-test-hf-datasets"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "python {args:?} failed:\n{text}");
    text
}

fn lmscore(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lmscore")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "lmscore {args:?}: {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const TASKS: &str = "truthfulqa_mc1,truthfulqa_mc2,inverse_scaling_memo_trap,inverse_scaling_neqa";
const LIMIT: &str = "4";

#[test]
fn lm_eval_model_lmscore_and_results_layout() {
    let Some(py) = python_or_skip("lm_eval_model_lmscore_and_results_layout") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (local, lm_out, ours, samples) = (
        tmp.path().join("local"),
        tmp.path().join("lm_eval"),
        tmp.path().join("ours.json"),
        tmp.path().join("samples"),
    );
    python(&py, &[s(&root().join("tests/lm_eval/local_tasks.py")), s(&local), s(&shared_data())]);
    let model = root().join("tests/fixtures/models/pythia-tiny");
    let model_args = format!("pretrained={}", model.display());
    // --device cpu: the goldens are HF float32 on the CPU. Without it lm-eval asks for cuda:0, which CI's CUDA
    // stand-in provides, and the checkpoint's fp16 would differ from them by ~1e-3 nats.
    let run = python(
        &py,
        &[
            "-m",
            "lmscore_lm_eval.cli",
            "run",
            "--model",
            "lmscore",
            "--model_args",
            &model_args,
            "--device",
            "cpu",
            "--tasks",
            TASKS,
            "--include_path",
            s(&local.join("tasks")),
            "--limit",
            LIMIT,
            "--output_path",
            s(&lm_out),
            "--log_samples",
        ],
    );
    assert!(
        run.contains("scored ") && run.contains("requests"),
        "the binary's messages reach the terminal:\n{run}"
    );
    lmscore(&[
        "score",
        "--model",
        s(&model),
        "--tasks",
        TASKS,
        "--protocol",
        "lm-eval-0.4",
        "--data-dir",
        s(&local.join("data")),
        "--limit",
        LIMIT,
        "--output-json",
        s(&ours),
        "--log-samples",
        s(&samples),
        "--offline",
    ]);
    let report = python(
        &py,
        &[
            s(&root().join("tests/lm_eval/check.py")),
            "compare",
            s(&lm_out),
            s(&ours),
            s(&samples),
            s(&root().join("tests/fixtures/goldens/pythia-tiny-tasks.json")),
        ],
    );
    common::visible(&format!(
        "lm_eval_model_lmscore_and_results_layout:\n{}",
        report.lines().filter(|l| !l.contains("examples/s")).collect::<Vec<_>>().join("\n")
    ));
}

#[test]
fn rolling_loglikelihood_matches_lm_eval_windows_and_hf() {
    let Some(py) = python_or_skip("rolling_loglikelihood_matches_lm_eval_windows_and_hf") else {
        return;
    };
    let model = root().join("tests/fixtures/models/pythia-tiny");
    let report = python(
        &py,
        &[
            s(&root().join("tests/lm_eval/check.py")),
            "rolling",
            env!("CARGO_BIN_EXE_lmscore"),
            s(&model),
            s(&root().join("tests/fixtures/goldens/pythia-tiny.json")),
        ],
    );
    common::visible(&format!("rolling_loglikelihood_matches_lm_eval_windows_and_hf:\n{report}"));
}

/// Through the model class: rolling text is lm-eval's `tok_encode` then the windows (the binary's text rows
/// against its id rows); `generate_until` and engine failures are Python exceptions with lmscore's message.
#[test]
fn model_class_rolling_text_and_errors() {
    let Some(py) = python_or_skip("model_class_rolling_text_and_errors") else {
        return;
    };
    let model = root().join("tests/fixtures/models/pythia-tiny");
    let tok = lmscore::tokenizer::Tokenizer::from_file(&model.join("tokenizer.json")).unwrap();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(12) + "Café, naïve, 🍕.\n\nSecond paragraph.";
    let ids = tok.encode(&text).unwrap();
    let script = format!(
        r#"
import json
from lm_eval.api.instance import Instance
import lmscore_lm_eval as L
lm = L.LMScoreLM(pretrained={model:?}, max_length=16)
req = lambda *a: Instance(request_type="x", doc={{}}, arguments=a, idx=0)
text = json.loads({text_json:?})
ids = json.loads({ids_json:?})
[a] = lm.loglikelihood_rolling([req(text)])
rows = lm._score([{{"id": 0, "rolling_ids": ids}}], "check")
assert abs(a - rows[0]["logprob"]) < 1e-9 and rows[0]["windows"] == -(-len(ids) // 16), (a, rows)
[(ll, greedy)] = lm.loglikelihood([req("The capital of France is", " Paris")])
assert ll < 0 and isinstance(greedy, bool)
for call, needle in [(lambda: lm.generate_until([req("Q:", {{}})]), "does not generate"),
                     (lambda: L.LMScoreLM(pretrained="/nonexistent/model").loglikelihood([req("a", " b")]), "/nonexistent/model"),
                     (lambda: L.LMScoreLM(pretrained={model:?}, bogus=1), "unknown model_args")]:
    try:
        call()
        raise SystemExit(f"no error for {{needle}}")
    except L.LMScoreError as e:
        assert needle in str(e), str(e)
print("rolling text", a, "over", len(ids), "tokens; errors are LMScoreError with lmscore's message")
"#,
        model = model.display().to_string(),
        text_json = serde_json::to_string(&text).unwrap(),
        ids_json = serde_json::to_string(&ids).unwrap(),
    );
    let out = python(&py, &["-c", &script]);
    common::visible(&format!("model_class_rolling_text_and_errors: {}", out.lines().last().unwrap_or("")));
}
