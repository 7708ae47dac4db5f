//! `lmscore score --profile FILE`: what the CUDA backend asks of the device per batch. Every index table
//! of a batch goes up in one copy from pinned memory and every score comes back in one copy after the
//! batch's one synchronisation, so on the fixture tasks a run makes at most 4 host-to-device copies,
//! 1 device-to-host copy and 1 synchronisation per batch (issue 10's bound; the engine makes 1, 1, 1).
//! The counts are the backend's own: LMSCORE_CUDA_SYNC=1's synchronisation after every launch is counted
//! apart (`debug_synchronizations`, one per launch) and leaves `synchronizations` as it was, which this
//! checks too. On the CPU stand-in the op seconds are host time,
//! and the document says so. Scores with --profile equal those without (timing changes nothing).
//!
//! Runs on the stand-in (scripts/cuda-sim.sh) or a GPU; SKIPPED without either (a failure under
//! LMSCORE_REQUIRE_CUDA=1).

mod common;

use lmscore::checkpoint::DType;
use serde_json::Value;
use std::path::Path;

/// `lmscore score` on `model` with `extra` flags; returns (per-request log lines, profile document).
fn score(model: &str, tasks: &str, device: &str, extra: &[&str], sync_each: bool, out: &Path, tag: &str) -> (Vec<Value>, Option<Value>) {
    let log = out.join(format!("{tag}.jsonl"));
    let prof = out.join(format!("{tag}.profile.json"));
    let profiled = !extra.contains(&"--no-profile");
    let rows = common::score::logged_requests(model, tasks, device, &log, |cmd| {
        cmd.args(["--limit", "6"]);
        if profiled {
            cmd.arg("--profile").arg(&prof);
        }
        cmd.args(extra.iter().filter(|a| **a != "--no-profile"));
        cmd.env_remove("LMSCORE_CUDA_SYNC");
        if sync_each {
            cmd.env("LMSCORE_CUDA_SYNC", "1");
        }
    });
    let profile = profiled.then(|| serde_json::from_str(&std::fs::read_to_string(&prof).unwrap()).unwrap());
    (rows, profile)
}

fn count(run: &Value, key: &str) -> u64 {
    run[key].as_u64().unwrap_or_else(|| panic!("{key} missing from {run}"))
}

#[test]
fn at_most_four_uploads_one_read_back_and_one_synchronisation_per_batch() {
    if common::cuda_or_skip("at_most_four_uploads_one_read_back_and_one_synchronisation_per_batch", DType::F32).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Two models (safetensors with rotary 25%, a .bin with rotary 50%), the fixture tasks, one large and two small batch budgets: the
    // small ones split sequences across batches (K/V cache retained and appended) and leave batches that
    // score nothing (a primer alone).
    for model in ["tests/fixtures/models/pythia-tiny", "tests/fixtures/models/pythia-tiny-b"] {
        for budget in ["8192", "96", "40"] {
            let tag = format!("{}-{budget}", model.rsplit('/').next().unwrap());
            let (_, profile) = score(
                model,
                "memo_trap,neqa,truthfulqa_mc1,truthfulqa_mc2",
                "cuda",
                &["--max-batch-tokens", budget],
                false,
                tmp.path(),
                &tag,
            );
            let profile = profile.unwrap();
            assert_eq!(profile["op_seconds_are_gpu_time"], Value::Bool(!common::cuda_stand_in()), "{profile}");
            let runs = profile["runs"].as_array().unwrap();
            assert_eq!(runs.len(), 3, "{tag}: memo_trap, neqa, and TruthfulQA MC1 + MC2 in one plan: {profile}");
            let mut total_batches = 0;
            for run in runs {
                let batches = count(run, "batches");
                total_batches += batches;
                let (h2d, d2h, syncs, launches) = (
                    count(run, "h2d_copies"),
                    count(run, "d2h_copies"),
                    count(run, "synchronizations"),
                    count(run, "kernel_launches"),
                );
                let what = format!("{tag} {}: {batches} batches, {h2d} h2d, {d2h} d2h, {syncs} syncs", run["tasks"]);
                assert!(batches > 0, "{what}");
                assert!(h2d <= 4 * batches, "{what}: more than 4 uploads per batch");
                assert!(
                    d2h <= batches && syncs <= batches,
                    "{what}: more than one read-back or synchronisation per batch"
                );
                assert!(
                    d2h >= 1 && syncs >= 1 && h2d >= batches,
                    "{what}: the scores are read back and every batch has inputs"
                );
                let by_op: u64 = run["ops"].as_object().unwrap().values().map(|o| o["launches"].as_u64().unwrap()).sum();
                assert_eq!(by_op, launches, "{what}: launches per op add up");
                for op in ["attention", "linear", "qkv_rotary", "layernorm", "logsoftmax_gather"] {
                    assert!(run["ops"][op]["launches"].as_u64().unwrap_or(0) > 0, "{what}: no {op} launch: {run}");
                }
                common::visible(&format!("{what}, {launches} launches"));
            }
            if budget != "8192" {
                assert!(total_batches > 3, "{tag}: budget {budget} should split the plans into several batches");
            }
        }
    }
}

#[test]
fn counts_are_the_backends_own_and_profiling_changes_no_score() {
    if common::cuda_or_skip("counts_are_the_backends_own_and_profiling_changes_no_score", DType::F32).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = "tests/fixtures/models/pythia-tiny";
    let args = ["--max-batch-tokens", "64"];
    let (plain, _) = score(
        model,
        "memo_trap",
        "cuda",
        &["--max-batch-tokens", "64", "--no-profile"],
        false,
        tmp.path(),
        "plain",
    );
    let (profiled, quiet) = score(model, "memo_trap", "cuda", &args, false, tmp.path(), "profiled");
    assert_eq!(plain, profiled, "--profile changed a score");
    // A synchronisation after every launch (LMSCORE_CUDA_SYNC=1) is counted apart, one per launch; scoring's
    // own synchronisations stay as they were.
    let (_, each) = score(model, "memo_trap", "cuda", &args, true, tmp.path(), "sync-each");
    let (quiet, each) = (&quiet.unwrap()["runs"][0], &each.unwrap()["runs"][0]);
    assert_eq!(count(quiet, "kernel_launches"), count(each, "kernel_launches"));
    assert_eq!(
        count(each, "synchronizations"),
        count(quiet, "synchronizations"),
        "LMSCORE_CUDA_SYNC=1: {each}"
    );
    assert_eq!(
        count(each, "debug_synchronizations"),
        count(each, "kernel_launches"),
        "LMSCORE_CUDA_SYNC=1: {each}"
    );
    assert_eq!(count(quiet, "debug_synchronizations"), 0, "{quiet}");
    // The CPU backend moves nothing between host and device; it times its ops on the host.
    let (cpu, cpu_profile) = score(model, "memo_trap", "cpu", &args, false, tmp.path(), "cpu");
    assert_eq!(cpu.len(), plain.len());
    let cpu_profile = cpu_profile.unwrap();
    let run = &cpu_profile["runs"][0];
    for key in [
        "h2d_copies",
        "d2h_copies",
        "synchronizations",
        "debug_synchronizations",
        "kernel_launches",
    ] {
        assert_eq!(count(run, key), 0, "cpu {key}: {run}");
    }
    assert!(run["ops"]["attention"]["seconds"].as_f64().unwrap() > 0.0, "{run}");
    assert_eq!(cpu_profile["op_seconds_are_gpu_time"], Value::Bool(false));
}
