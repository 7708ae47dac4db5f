//! The CUDA backend's error paths, which only a device (or the CPU stand-in, scripts/cuda-sim.sh) reaches:
//! teardown after a device fault, a fault reported against its op, weights that do not fit, and the cuBLAS
//! math mode. A device fault is sticky (every later call of the process fails), so each case runs in a
//! child process of its own: the parent test re-runs this binary on the case with `LMSCORE_FAULT_CASE` set.
//! The cases that inject a fault or shrink the device use the stand-in's test hooks and memory size; on a
//! real GPU they print SKIPPED.

mod common;

use lmscore::backend::cuda::CudaBackend;
use lmscore::backend::Backend;
use lmscore::checkpoint::{Checkpoint, DType};
use lmscore::model::Model;

/// Run `case` in a child process (with `env`), returning (success, stdout + stderr).
fn child(case: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", case, "--nocapture", "--test-threads", "1"])
        .env("LMSCORE_FAULT_CASE", case);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// True in the child that runs `case`; in the parent, false (after running the child when `run_child`).
fn in_child(case: &str) -> bool {
    std::env::var("LMSCORE_FAULT_CASE").is_ok_and(|c| c == case)
}

/// A backend on the stand-in, or None (SKIPPED) on a GPU or without CUDA.
fn stand_in_backend(test: &str, dtype: DType) -> Option<CudaBackend> {
    let gpu = common::cuda_or_skip(test, dtype)?;
    if !common::cuda_stand_in() {
        common::visible(&format!("SKIPPED: {test} injects a device fault through the CUDA stand-in's test hook"));
        return None;
    }
    Some(gpu)
}

/// Make the device's context fail as a faulting kernel would (the stand-in's hook `lms_sim_fault`).
fn inject_fault(msg: &str) {
    let c = std::ffi::CString::new(msg).unwrap();
    // SAFETY: the stand-in driver is loaded (stand_in_backend checked); the hook takes a C string.
    unsafe {
        let f = cudarc::driver::sys::culib()
            .get::<unsafe extern "C" fn(*const std::ffi::c_char)>(b"lms_sim_fault\0")
            .expect("the CUDA stand-in exports lms_sim_fault");
        f(c.as_ptr());
    }
}

#[test]
fn teardown_after_a_device_fault_does_not_panic() {
    const CASE: &str = "teardown_after_a_device_fault_does_not_panic";
    if !in_child(CASE) {
        if common::cuda_or_skip(CASE, DType::F32).is_some() {
            let (ok, text) = child(CASE, &[]);
            assert!(ok && text.contains("1 passed") && !text.contains("panicked"), "{text}");
        }
        return;
    }
    let Some(gpu) = stand_in_backend(CASE, DType::F16) else { return };
    let x = gpu.from_host(2, 3, &[1.0; 6]).unwrap();
    inject_fault("an injected device fault");
    // Every later call fails with the device's error...
    let err = gpu.to_host(&x).unwrap_err().to_string();
    assert!(err.contains("illegal memory access"), "{err}");
    // ... and dropping the tensors and the backend (cuBLAS handle included) is not a panic.
    drop(x);
    drop(gpu);
}

#[test]
fn a_fault_is_reported_against_its_op() {
    const CASE: &str = "a_fault_is_reported_against_its_op";
    if !in_child(CASE) {
        if common::cuda_or_skip(CASE, DType::F32).is_some() {
            let (ok, text) = child(CASE, &[("LMSCORE_CUDA_SYNC", "1")]);
            assert!(ok && text.contains("layernorm"), "{text}");
        }
        return;
    }
    let Some(gpu) = stand_in_backend(CASE, DType::F32) else { return };
    let x = gpu.from_host(2, 4, &[1.0; 8]).unwrap();
    let w = gpu.from_host(1, 4, &[1.0; 4]).unwrap();
    let b = gpu.from_host(1, 4, &[0.0; 4]).unwrap();
    gpu.layernorm(&x, &w, &b, 1e-5).unwrap();
    inject_fault("an injected device fault");
    let err = gpu.layernorm(&x, &w, &b, 1e-5).map(|_| ()).unwrap_err().to_string();
    assert!(
        err.starts_with("CUDA: layernorm") || err.contains("layernorm:"),
        "the error names the op: {err}"
    );
    common::visible(&format!("{CASE}: {err}"));
}

#[test]
fn weights_that_do_not_fit_say_so() {
    const CASE: &str = "weights_that_do_not_fit_say_so";
    if !in_child(CASE) {
        if common::cuda_or_skip(CASE, DType::F32).is_some() && common::cuda_stand_in() {
            // neox-hd80 in f32: ~2.1 MB of weights on a 1 MB device.
            let (ok, text) = child(CASE, &[("CUDA_SIM_MEMORY_BYTES", "1000000")]);
            assert!(ok && text.contains("weights need"), "{text}");
        }
        return;
    }
    let Some(gpu) = stand_in_backend(CASE, DType::F32) else { return };
    let ckpt = Checkpoint::open(common::fixtures_dir().join("models/neox-hd80")).unwrap();
    let err = Model::load(&gpu, &ckpt).map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("weights need") && err.contains("GB") && err.contains("free") && !err.contains("--max-batch-tokens N"),
        "{err}"
    );
    assert!(err.contains("cannot help"), "a smaller batch is not offered as the remedy: {err}");
    common::visible(&format!("{CASE}: {err}"));
}

/// Split-K partial sums must not be reduced in half precision: the handle has the flag set.
#[test]
fn cublas_never_reduces_in_reduced_precision() {
    let Some(gpu) = common::cuda_or_skip("cublas_never_reduces_in_reduced_precision", DType::F16) else {
        return;
    };
    let mode = gpu.cublas_math_mode().unwrap();
    assert_ne!(
        mode & 16,
        0,
        "CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION is not set: math mode {mode}"
    );
}
