//! Writable copies of fixture checkpoints, edited tensor by tensor or key by key, and a runner for the
//! release binary on them: the tools of the bad-input and hostile-model tests.

use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn fixture_model(name: &str) -> PathBuf {
    super::fixtures_dir().join("models").join(name)
}

/// A writable copy of a fixture model directory.
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_model(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

/// Every tensor of a safetensors file: name -> (dtype, shape, bytes).
pub type Tensors = HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrite model.safetensors of `dir` through `edit`.
pub fn rewrite_safetensors(dir: &Path, edit: impl FnOnce(&mut Tensors)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Set element `i` of an f16/bf16/f32 tensor's bytes to NaN.
pub fn poison(bytes: &mut [u8], dtype: Dtype, i: usize) {
    match dtype {
        Dtype::F16 => bytes[2 * i..2 * i + 2].copy_from_slice(&half::f16::NAN.to_le_bytes()),
        Dtype::BF16 => bytes[2 * i..2 * i + 2].copy_from_slice(&half::bf16::NAN.to_le_bytes()),
        Dtype::F32 => bytes[4 * i..4 * i + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
        other => panic!("poison: {other:?} is not a float dtype"),
    }
}

/// Edit config.json of `dir` as JSON.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A zip like torch.save writes (stored entries, names as given).
pub fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// `lmscore loglikelihood --model MODEL --input INPUT --output OUTPUT`, run through `sh` so that a
/// `ulimit` can go first (`prefix`, e.g. "ulimit -v 1048576"; empty for none).
pub fn loglikelihood_command(prefix: &str, model: &Path, input: &Path, output: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{prefix}{}exec \"$0\" \"$@\"", if prefix.is_empty() { "" } else { " && " }))
        .arg(env!("CARGO_BIN_EXE_lmscore"))
        .args(["loglikelihood", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output);
    cmd
}

/// What a run of the release binary did.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Run `lmscore loglikelihood --model MODEL --input (rows) --output DIR/out.jsonl [extra]`. Panics if the
/// binary panicked or died of a signal: neither is ever an acceptable answer to bad input.
pub fn loglikelihood(model: &Path, input_rows: &str, extra: &[&str]) -> (Run, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, input_rows).unwrap();
    let out = loglikelihood_command("", model, &input, &dir.path().join("out.jsonl"))
        .args(extra)
        .output()
        .unwrap();
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    };
    assert!(!run.stderr.contains("panicked"), "lmscore panicked:\n{}", run.stderr);
    assert!(
        out.status.code().is_some(),
        "lmscore died of a signal ({:?}):\n{}",
        out.status,
        run.stderr
    );
    (run, dir)
}

/// `loglikelihood` must fail with every one of `needles` in its message.
pub fn expect_error(model: &Path, rows: &str, needles: &[&str]) -> String {
    let (run, _dir) = loglikelihood(model, rows, &[]);
    assert!(!run.ok, "expected failure, got success; stderr:\n{}", run.stderr);
    for n in needles {
        assert!(run.stderr.contains(n), "error should mention {n:?}; got:\n{}", run.stderr);
    }
    run.stderr
}
