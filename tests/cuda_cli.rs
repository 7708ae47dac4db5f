//! `lmscore score --device cuda` as a user runs it, against `--device cpu`: the same per-request
//! log-likelihoods within the documented f32 tolerance (1e-3 nats per request, docs/gpu.md), the same greedy
//! flags, and the same metrics. On a machine without a GPU it runs on the CPU stand-in for the CUDA
//! libraries (scripts/cuda-sim.sh, as CI does), or prints SKIPPED (a failure under LMSCORE_REQUIRE_CUDA=1).

mod common;

use lmscore::checkpoint::DType;
use serde_json::Value;
use std::path::Path;

/// `lmscore score --device DEVICE --dtype f32` on the fixture tasks: (per-request log lines, metrics per task).
fn score(device: &str, out: &Path) -> (Vec<Value>, Value) {
    let log = out.join(format!("{device}.jsonl"));
    let json = out.join(format!("{device}.json"));
    let model = "tests/fixtures/models/pythia-tiny";
    let rows = common::score::logged_requests(model, "memo_trap,neqa,truthfulqa_mc1,truthfulqa_mc2", device, &log, |cmd| {
        cmd.args(["--dtype", "f32"]).arg("--output-json").arg(&json);
    });
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

/// `--device` values: `cpu`, `cuda` (= `cuda:0`), `cuda:N`; anything else is refused with the accepted forms.
#[test]
fn device_flag_parses() {
    use lmscore::engine::{Device, DeviceSpec};
    let ok = |s: &str| s.parse::<DeviceSpec>().unwrap_or_else(|e| panic!("{s}: {e}"));
    let spec = |kind, ordinal| DeviceSpec { kind, ordinal };
    assert_eq!(ok("cpu"), spec(Device::Cpu, 0));
    assert_eq!(ok("cuda"), spec(Device::Cuda, 0));
    assert_eq!(ok("cuda:0"), ok("cuda"));
    assert_eq!(ok("cuda:7"), spec(Device::Cuda, 7));
    assert_eq!(ok("cuda:7").to_string(), "cuda:7");
    assert_eq!(ok("cuda").to_string(), "cuda:0");
    assert_eq!(ok("cpu").to_string(), "cpu");
    for bad in [
        "gpu",
        "",
        "CUDA",
        "cuda:",
        "cuda:x",
        "cuda:-1",
        "cuda:1.5",
        "cuda: 1",
        "cuda:0:1",
        "cpu:0",
        "cuda:99999999999999999999999",
    ] {
        let e = bad.parse::<DeviceSpec>().expect_err(bad);
        assert!(e.contains("cuda:N") || e.contains("out of range") || e.contains("use cpu"), "{bad}: {e}");
    }
    assert!("cuda:x".parse::<DeviceSpec>().unwrap_err().contains("`x` is not a device number"));
}

/// A bad `--device` is a usage error from the command line, before any file is read.
#[test]
fn bad_device_flags_are_usage_errors() {
    for bad in ["gpu", "cuda:x"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lmscore"))
            .args([
                "loglikelihood",
                "--device",
                bad,
                "--model",
                "/nonexistent",
                "--input",
                "-",
                "--output",
                "-",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{bad}' for '--device")) && stderr.contains("expected cpu, cuda or cuda:N"),
            "{bad}: {stderr}"
        );
        assert!(
            !stderr.contains("/nonexistent"),
            "{bad}: the model was looked at before the flag was checked: {stderr}"
        );
    }
}

/// `--device cuda:N` picks device N: `cuda:0` scores, and an ordinal past the devices present fails cleanly
/// (the CUDA stand-in has one device) saying how many there are.
#[test]
fn cuda_ordinal_selects_the_device() {
    if common::cuda_or_skip("cuda_ordinal_selects_the_device", DType::F32).is_none() {
        return;
    }
    let count = lmscore::backend::cuda::device_count().unwrap();
    let model = common::fixtures_dir().join("models/neox-seq");
    let row = r#"{"id": "a", "context_ids": [1, 2, 3], "continuation_ids": [4, 5]}"#;
    let (run, dir) = common::model_files::loglikelihood(&model, row, &["--device", "cuda:0", "--dtype", "f32"]);
    assert!(run.ok, "--device cuda:0: {}", run.stderr);
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert!(out.contains("\"logprob\""), "{out}");
    let (run, dir) = common::model_files::loglikelihood(&model, row, &["--device", &format!("cuda:{count}"), "--dtype", "f32"]);
    let present = if count == 1 {
        "1 CUDA device is present (cuda:0)".to_string()
    } else {
        format!("{count} CUDA devices are present")
    };
    assert!(
        !run.ok && run.stderr.contains(&format!("--device cuda:{count}")) && run.stderr.contains(&present),
        "--device cuda:{count}: {}",
        run.stderr
    );
    assert!(!dir.path().join("out.jsonl").exists(), "no output on failure");
    common::visible(&format!(
        "cuda_ordinal_selects_the_device: cuda:0 scored, cuda:{count} refused ({count} present)"
    ));
}
