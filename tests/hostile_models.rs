//! Checkpoints that would once have scored a wrong number that looks right: NaN weights, configs that
//! silently change the model, tensors the config leaves unused, the LM head under its transformers-5
//! name, and sizes that overflow. Each runs the release binary on an edited copy of a fixture and expects
//! either the right number or a clear error with a non-zero exit and no output file.

mod common;

use common::model_files::{copy_model, edit_config, expect_error, fixture_model, loglikelihood, poison, rewrite_safetensors};
use serde_json::json;
use std::path::Path;

const ROW: &str = r#"{"id": "a", "context_ids": [1, 2, 3], "continuation_ids": [4, 5]}"#;
const ROWS: &str = "{\"id\": \"a\", \"context_ids\": [1, 2, 3], \"continuation_ids\": [4, 5]}\n\
                    {\"id\": \"b\", \"context_ids\": [7, 8], \"continuation_ids\": [9]}";

/// (id, logprob, is_greedy) of each output row of a successful run.
fn scores(model: &Path, rows: &str) -> Vec<(String, f64, bool)> {
    let (run, dir) = loglikelihood(model, rows, &[]);
    assert!(run.ok, "run failed:\n{}", run.stderr);
    std::fs::read_to_string(dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["id"].to_string(), v["logprob"].as_f64().unwrap(), v["is_greedy"].as_bool().unwrap())
        })
        .collect()
}

/// A failing run writes no output file.
fn fails_without_output(model: &Path, rows: &str, extra: &[&str], needles: &[&str]) -> String {
    let (run, dir) = loglikelihood(model, rows, extra);
    assert!(!run.ok, "expected failure, got success; stderr:\n{}", run.stderr);
    for n in needles {
        assert!(run.stderr.contains(n), "error should mention {n:?}; got:\n{}", run.stderr);
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("in.jsonl")], "a failed run left files behind");
    run.stderr
}

#[test]
fn nan_in_the_lm_head_outside_the_target_rows_is_an_error_not_a_score() {
    // Once: NaN rows dropped out of the softmax and the request scored -1.2 with is_greedy true.
    let dir = copy_model("neox-seq");
    rewrite_safetensors(dir.path(), |t| {
        let (dtype, shape, bytes) = t.get_mut("embed_out.weight").unwrap();
        let h = shape[1];
        for row in (0..shape[0]).filter(|r| ![4, 5, 9].contains(r)) {
            poison(bytes, *dtype, row * h);
        }
    });
    fails_without_output(dir.path(), ROW, &[], &["\"a\"", "not finite", "LM head"]);
}

#[test]
fn an_all_nan_head_is_an_error() {
    let dir = copy_model("neox-seq");
    rewrite_safetensors(dir.path(), |t| {
        let (dtype, shape, bytes) = t.get_mut("embed_out.weight").unwrap();
        for i in 0..shape[0] * shape[1] {
            poison(bytes, *dtype, i);
        }
    });
    fails_without_output(dir.path(), ROWS, &[], &["not finite"]);
}

#[test]
fn nan_in_a_layer_is_located_at_that_layer() {
    let dir = copy_model("neox-seq");
    rewrite_safetensors(dir.path(), |t| {
        let (dtype, _, bytes) = t.get_mut("gpt_neox.layers.1.attention.dense.bias").unwrap();
        poison(bytes, *dtype, 3);
    });
    fails_without_output(dir.path(), ROW, &[], &["not finite", "layer 1 "]);
}

#[test]
fn nan_in_an_embedding_row_no_request_uses_changes_nothing() {
    let good = scores(&fixture_model("neox-seq"), ROWS);
    let dir = copy_model("neox-seq");
    rewrite_safetensors(dir.path(), |t| {
        let (dtype, shape, bytes) = t.get_mut("gpt_neox.embed_in.weight").unwrap();
        let h = shape[1];
        poison(bytes, *dtype, 200 * h + 1); // token 200 appears in no request
    });
    assert_eq!(scores(dir.path(), ROWS), good);
}

#[test]
fn a_missing_rotary_pct_means_transformers_default_of_a_quarter() {
    let dir = copy_model("pythia-tiny");
    let stated = scores(dir.path(), ROWS);
    edit_config(dir.path(), |c| {
        assert_eq!(c.remove("rotary_pct"), Some(json!(0.25)));
    });
    assert_eq!(scores(dir.path(), ROWS), stated);
}

#[test]
fn config_values_that_change_the_model_are_refused() {
    let cases = [
        ("use_parallel_residual", json!("false")),
        ("layer_norm_eps", json!(-1e-5)),
        ("rotary_emb_base", json!(0)),
        ("rotary_emb_base", json!(-10000)),
        ("rotary_pct", json!(0)),
        ("num_hidden_layers", json!(1_000_000_000_000u64)),
        ("num_hidden_layers", json!(9_223_372_036_854_775_808u64)),
        ("max_position_embeddings", json!(u64::MAX)),
    ];
    for (key, value) in cases {
        let dir = copy_model("pythia-tiny");
        edit_config(dir.path(), |c| {
            c.insert(key.into(), value.clone());
        });
        fails_without_output(dir.path(), ROW, &[], &["config.json", key]);
    }
}

#[test]
fn a_config_with_fewer_layers_than_the_weights_is_refused() {
    let dir = copy_model("pythia-tiny");
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), json!(1));
    });
    fails_without_output(dir.path(), ROW, &[], &["num_hidden_layers is 1", "hold 2 layers"]);
    let dir = copy_model("pythia-tiny");
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), json!(3));
    });
    fails_without_output(dir.path(), ROW, &[], &["num_hidden_layers is 3", "hold 2 layers"]);
}

#[test]
fn tensors_the_model_does_not_use_are_named() {
    let dir = copy_model("pythia-tiny");
    rewrite_safetensors(dir.path(), |t| {
        let extra = t["gpt_neox.final_layer_norm.bias"].clone();
        t.insert("gpt_neox.layers.0.mlp.extra_gate.weight".into(), extra.clone());
        t.insert("score.weight".into(), extra);
    });
    fails_without_output(dir.path(), ROW, &[], &["not part of a GPT-NeoX model", "score.weight", "extra_gate"]);
}

#[test]
fn the_lm_head_may_be_named_lm_head_weight() {
    let good = scores(&fixture_model("pythia-tiny"), ROWS);
    let dir = copy_model("pythia-tiny");
    rewrite_safetensors(dir.path(), |t| {
        let head = t.remove("embed_out.weight").unwrap();
        t.insert("lm_head.weight".into(), head);
    });
    assert_eq!(scores(dir.path(), ROWS), good);
    // Both names at once is ambiguous.
    rewrite_safetensors(dir.path(), |t| {
        let head = t["lm_head.weight"].clone();
        t.insert("embed_out.weight".into(), head);
    });
    fails_without_output(dir.path(), ROW, &[], &["ambiguous"]);
}

#[test]
fn a_huge_max_length_is_an_error_not_a_panic() {
    fails_without_output(
        &fixture_model("pythia-tiny"),
        ROW,
        &["--max-length", "18446744073709551615"],
        &["max-length"],
    );
}

#[test]
fn a_fifo_or_device_as_config_is_refused_not_read_forever() {
    let dir = copy_model("pythia-tiny");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("config.json")).unwrap();
    expect_error(dir.path(), ROW, &["config.json", "not a regular file"]);
    let dir = copy_model("pythia-tiny");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let fifo = dir.path().join("model.safetensors");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    expect_error(dir.path(), ROW, &["model.safetensors", "not a regular file"]);
}

use std::process::Command;

/// Largest resident set of any child this test process has waited for, in bytes.
fn max_child_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn a_100_mb_text_context_costs_what_its_window_costs() {
    // Once: the whole context was tokenised (> 9 GB) although only the last window is used. Now only an
    // exact tail is encoded: the scores equal those of the context's last few thousand words alone.
    let words = ["alpha", "beta", "gamma", "delta,", "epsilon.", "zeta", "eta", "theta\n"];
    let mut long = String::with_capacity(100 << 20);
    let mut i = 0usize;
    while long.len() < 100 << 20 {
        long.push_str(words[i % words.len()]);
        long.push(' ');
        i = i.wrapping_mul(31).wrapping_add(7) % 1009;
    }
    long.push_str("omega");
    // A tail of 4,000 words holds far more than the fixture's 2048-token window.
    let tail_start = long.len() - 4000 * 6;
    let tail_start = tail_start + long[tail_start..].find(' ').unwrap() + 1;
    let row = |ctx: &str| serde_json::json!({"id": "x", "context": ctx, "continuation": " the end"}).to_string();
    let started = std::time::Instant::now();
    let whole = scores(&fixture_model("pythia-tiny"), &row(&long));
    let seconds = started.elapsed().as_secs_f64();
    let rss = max_child_rss();
    eprintln!("100 MB context: {seconds:.2} s, {} MB peak resident", rss >> 20);
    assert_eq!(whole, scores(&fixture_model("pythia-tiny"), &row(&long[tail_start..])));
    assert!(seconds < 10.0, "{seconds:.1} s for a 100 MB context");
    assert!(rss < 1 << 30, "{} MB resident for a 100 MB context", rss >> 20);
}

#[test]
fn score_names_the_task_document_and_choice_of_a_non_finite_request() {
    let dir = copy_model("pythia-tiny");
    rewrite_safetensors(dir.path(), |t| {
        let (dtype, shape, bytes) = t.get_mut("gpt_neox.final_layer_norm.weight").unwrap();
        for i in 0..shape[0] {
            poison(bytes, *dtype, i);
        }
    });
    let json = dir.path().join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .args(["score", "--tasks", "memo_trap", "--model"])
        .arg(dir.path())
        .arg("--output-json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in ["task memo_trap, doc 0", "choice 0", "not finite", "final LayerNorm"] {
        assert!(stderr.contains(needle), "error should mention {needle:?}; got:\n{stderr}");
    }
    assert!(!json.exists(), "a failed run wrote its results");
}

#[test]
fn task_files_that_are_devices_and_zero_sized_flags_are_refused_up_front() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lmscore")).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success() && out.status.code().is_some() && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
        stderr
    };
    let m = fixture_model("pythia-tiny");
    let m = m.to_str().unwrap();
    assert!(run(&["score", "--model", m, "--tasks", "custom:/dev/zero"]).contains("/dev/zero: is not a regular file"));
    assert!(run(&["report", "--tsv", "/dev/zero", "--out", "/nonexistent/x"]).contains("not a regular file"));
    for flag in ["--max-length", "--max-batch-tokens"] {
        let err = run(&["score", "--model", m, "--tasks", "memo_trap", flag, "0"]);
        assert!(err.contains(&format!("{flag} must be at least 1")), "{err}");
    }
}
