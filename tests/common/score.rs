//! `lmscore score` on the fixture models as a user runs it, every request logged (`--log-requests`): the
//! runner of the command-line tests of the CUDA backend (tests/cuda_cli.rs, tests/cuda_profile.rs), which
//! compare what it logged between devices, flags and environments.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `lmscore score --model MODEL --tasks TASKS --device DEVICE --offline --log-requests LOG_REQUESTS`, run
/// from the source tree's root: the fixture models are named relative to it (`tests/fixtures/models/...`),
/// as a user in a checkout names them.
pub fn command(model: &str, tasks: &str, device: &str, log_requests: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmscore"));
    cmd.current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .args(["score", "--model", model, "--tasks", tasks, "--device", device, "--offline"])
        .arg("--log-requests")
        .arg(log_requests);
    cmd
}

/// Runs [`command`] with what `more` adds to it (flags, environment); panics with the command line, its
/// stdout and its stderr unless it succeeded. Returns the requests it logged, one JSON object each, in the
/// order scored.
pub fn logged_requests(model: &str, tasks: &str, device: &str, log_requests: &Path, more: impl FnOnce(&mut Command)) -> Vec<Value> {
    let mut cmd = command(model, tasks, device, log_requests);
    more(&mut cmd);
    let run = cmd.output().unwrap();
    assert!(
        run.status.success(),
        "lmscore score failed: {cmd:?}\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read_to_string(log_requests)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
