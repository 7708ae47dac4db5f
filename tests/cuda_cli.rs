//! `lmscore score --device cuda` as a user runs it, against `--device cpu`: the same per-request
//! log-likelihoods within the documented f32 tolerance (1e-3 nats per request, docs/gpu.md), the same greedy
//! flags, and the same metrics. On a machine without a GPU it runs on the CPU stand-in for the CUDA
//! libraries (scripts/cuda-sim.sh, as CI does), or prints SKIPPED (a failure under LMSCORE_REQUIRE_CUDA=1).

mod common;

use lmscore::checkpoint::DType;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn score(device: &str, out: &Path) -> (Vec<Value>, Value) {
    let log = out.join(format!("{device}.jsonl"));
    let json = out.join(format!("{device}.json"));
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .current_dir(root())
        .args([
            "score",
            "--model",
            "tests/fixtures/models/pythia-tiny",
            "--tasks",
            "memo_trap,neqa,truthfulqa_mc1,truthfulqa_mc2",
        ])
        .args(["--device", device, "--dtype", "f32", "--offline"])
        .arg("--log-requests")
        .arg(&log)
        .arg("--output-json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "lmscore score --device {device} failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let rows = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (rows, results["results"].clone())
}

#[test]
fn score_on_cuda_matches_cpu() {
    if common::cuda_or_skip("score_on_cuda_matches_cpu", DType::F32).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cpu, cpu_results) = score("cpu", tmp.path());
    let (cuda, cuda_results) = score("cuda", tmp.path());
    assert_eq!(cpu.len(), cuda.len(), "request counts");
    assert!(cpu.len() > 100, "only {} requests", cpu.len());
    let mut worst = 0f64;
    for (c, g) in cpu.iter().zip(&cuda) {
        for key in ["task", "doc", "choice", "n_tokens"] {
            assert_eq!(c[key], g[key], "request order/identity: {c} vs {g}");
        }
        let (a, b) = (c["logprob"].as_f64().unwrap(), g["logprob"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-3, "{c}: cuda logprob {b} vs cpu {a}");
        assert_eq!(c["is_greedy"], g["is_greedy"], "{c}: greedy flag on cuda {g}");
        worst = worst.max((a - b).abs());
    }
    // Argmax decisions per document: accuracies (acc, acc_norm, MC1's acc) are equal; MC2 (a probability mass)
    // within the log-likelihood tolerance.
    let tasks = cpu_results.as_object().expect("results per task");
    for (task, metrics) in tasks {
        for (metric, v) in metrics.as_object().unwrap() {
            let (Some(a), Some(b)) = (v.as_f64(), cuda_results[task][metric].as_f64()) else {
                continue;
            };
            if metric.contains("stderr") {
                continue;
            }
            let tol = if task == "truthfulqa_mc2" { 1e-3 } else { 0.0 };
            assert!((a - b).abs() <= tol, "{task} {metric}: cuda {b} vs cpu {a}");
        }
    }
    common::visible(&format!(
        "score_on_cuda_matches_cpu: {} requests, worst |Δ| {worst:.2e} nats, identical metrics",
        cpu.len()
    ));
}
