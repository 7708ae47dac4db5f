//! Bad input to `lmscore loglikelihood` gives a clear error naming the file, tensor or line and what was
//! expected, a non-zero exit, and never a panic. Each case corrupts a copy of a fixture checkpoint.

mod common;

use common::model_files::{copy_model, expect_error, fixture_model as fixture, loglikelihood, rewrite_safetensors};
use safetensors::tensor::Dtype;
use std::path::Path;
use std::process::Command;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

const GOOD_ROW: &str = r#"{"id": "a", "context_ids": [1, 2, 3], "continuation_ids": [4, 5]}"#;

#[test]
fn a_good_run_writes_rows_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let rows = [
        GOOD_ROW,
        "",
        r#"{"id": 7, "context_ids": [9], "continuation_ids": [4]}"#,
        r#"{"id": "c", "context_ids": [1, 2, 3], "continuation_ids": [4]}"#,
    ];
    write(&input, &rows.join("\n"));
    let out = dir.path().join("out.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .args(["loglikelihood", "--model"])
        .arg(fixture("neox-seq"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let got: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 3, "blank lines are skipped, every other row answered");
    assert_eq!(got[0]["id"], "a");
    assert_eq!(got[1]["id"], 7);
    assert_eq!(got[2]["id"], "c");
    assert_eq!(got[0]["n_tokens"], 2);
    assert!(got[0]["logprob"].as_f64().unwrap() < 0.0);
    // "c" is the first token of "a": same context, same first target, so the same first-token score.
    assert!(got[2]["logprob"].as_f64().unwrap() >= got[0]["logprob"].as_f64().unwrap());
}

#[test]
fn missing_model_directory_and_config() {
    expect_error(
        Path::new("/nonexistent/model"),
        GOOD_ROW,
        &["/nonexistent/model", "model directory not found"],
    );
    let dir = copy_model("neox-seq");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    expect_error(dir.path(), GOOD_ROW, &["config.json", "missing"]);
}

#[test]
fn corrupt_config() {
    let dir = copy_model("neox-seq");
    write(&dir.path().join("config.json"), "{\"hidden_size\": 64,");
    expect_error(dir.path(), GOOD_ROW, &["config.json", "not valid JSON"]);
    write(&dir.path().join("config.json"), r#"{"hidden_size": "big", "num_hidden_layers": 2}"#);
    expect_error(dir.path(), GOOD_ROW, &["config.json", "hidden_size"]);
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let dir = copy_model("neox-seq");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(dir.path(), GOOD_ROW, &["model.safetensors", "truncated or corrupt"]);
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    expect_error(dir.path(), GOOD_ROW, &["model.safetensors", "not a valid safetensors file"]);
    std::fs::remove_file(&path).unwrap();
    expect_error(dir.path(), GOOD_ROW, &["no weights found", "model.safetensors"]);
}

#[test]
fn missing_tensor() {
    let dir = copy_model("neox-seq");
    rewrite_safetensors(dir.path(), |t| {
        t.remove("gpt_neox.layers.1.mlp.dense_4h_to_h.bias");
    });
    expect_error(dir.path(), GOOD_ROW, &["gpt_neox.layers.1.mlp.dense_4h_to_h.bias", "missing"]);
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = copy_model("neox-seq");
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    write(
        &dir.path().join("config.json"),
        &cfg.replace("\"intermediate_size\": 256", "\"intermediate_size\": 128"),
    );
    expect_error(
        dir.path(),
        GOOD_ROW,
        &["gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "[256, 64]", "[128, 64]"],
    );
}

#[test]
fn unknown_dtype() {
    let dir = copy_model("neox-seq");
    rewrite_safetensors(dir.path(), |t| {
        let e = t.get_mut("gpt_neox.final_layer_norm.weight").unwrap();
        e.0 = Dtype::I32; // same byte count as F32, so the file stays valid
    });
    expect_error(dir.path(), GOOD_ROW, &["gpt_neox.final_layer_norm.weight", "dtype"]);
}

#[test]
fn malformed_rows_report_their_line() {
    let m = fixture("neox-seq");
    expect_error(&m, &format!("{GOOD_ROW}\n{{\"id\": 2, \"context\": "), &["in.jsonl:2", "not valid JSON"]);
    expect_error(&m, &format!("{GOOD_ROW}\n\n[1, 2]"), &["in.jsonl:3", "JSON object"]);
    expect_error(
        &m,
        &format!("{GOOD_ROW}\n{{\"id\": 2, \"context_ids\": [1]}}"),
        &["in.jsonl:2", "continuation_ids"],
    );
    expect_error(
        &m,
        r#"{"id": 1, "context_ids": [1, -2], "continuation_ids": [3]}"#,
        &["in.jsonl:1", "non-negative token ids"],
    );
    expect_error(
        &m,
        r#"{"id": 1, "context_ids": [1], "continuation_ids": [3000]}"#,
        &["in.jsonl:1", "token id 3000", "vocabulary of 512"],
    );
}

#[test]
fn empty_continuation_and_empty_context() {
    let m = fixture("neox-seq");
    expect_error(
        &m,
        r#"{"id": 1, "context_ids": [1, 2], "continuation_ids": []}"#,
        &["in.jsonl:1", "empty continuation"],
    );
    expect_error(
        &m,
        r#"{"id": 1, "context_ids": [], "continuation_ids": [5]}"#,
        &["in.jsonl:1", "empty context"],
    );
    expect_error(
        &fixture("pythia-tiny"),
        r#"{"id": 1, "context": "Hello", "continuation": ""}"#,
        &["in.jsonl:1", "empty continuation"],
    );
}

#[test]
fn sequences_past_the_context_window() {
    let m = fixture("neox-seq"); // max_position_embeddings 128
                                 // A long context is truncated from the left, as lm-eval does: not an error.
    let long_ctx: Vec<String> = (0..300).map(|i| (i % 500).to_string()).collect();
    let (run, _dir) = loglikelihood(
        &m,
        &format!(r#"{{"id": 1, "context_ids": [{}], "continuation_ids": [3, 4]}}"#, long_ctx.join(",")),
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    // A continuation that alone exceeds the window cannot be scored.
    let long_cont: Vec<String> = (0..129).map(|i| (i % 500).to_string()).collect();
    expect_error(
        &m,
        &format!(r#"{{"id": 1, "context_ids": [1], "continuation_ids": [{}]}}"#, long_cont.join(",")),
        &["in.jsonl:1", "128-token context window"],
    );
}

#[test]
fn text_input_without_a_tokenizer() {
    expect_error(
        &fixture("neox-seq"),
        r#"{"id": 1, "context": "Hello", "continuation": " world"}"#,
        &["tokenizer.json", "not found"],
    );
}

#[test]
fn cuda_without_a_driver_is_a_clear_error() {
    // The CPU stand-in for CUDA (CI puts it on the library path) is left out of the child's path.
    if lmscore::backend::cuda::driver_present() && !common::cuda_stand_in() {
        println!("SKIPPED: a CUDA driver is present; this test checks the no-driver message");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write(&input, GOOD_ROW);
    let out = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .env("LD_LIBRARY_PATH", common::library_path_without_cuda_stand_in())
        .args(["loglikelihood", "--device", "cuda", "--model"])
        .arg(fixture("neox-seq"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("o.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no CUDA driver/device found") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
