//! Skip / require logic shared by the CUDA test files (`tests/kernels_compile.rs`, `tests/cuda_parity.rs`),
//! and a seeded RNG. Submodules: `model_files` (fixture checkpoints edited, and `lmscore loglikelihood` on
//! them), `score` (`lmscore score` on the fixture models) and `sim` (the harness that drives the CUDA
//! stand-in directly).
//!
//! Without NVRTC or a GPU these tests print a visible `SKIPPED: ...` line and pass, so `cargo test` stays
//! green on CPU-only machines. CI and GPU runs turn the skip into a failure:
//! - `LMSCORE_REQUIRE_NVRTC=1`: the kernel compile test fails when libnvrtc cannot be loaded;
//! - `LMSCORE_REQUIRE_CUDA=1`: the GPU parity tests fail when no CUDA device can be opened.
#![allow(dead_code)]

pub mod model_files;
pub mod score;
pub mod sim;

use lmscore::backend::cuda::{self, CudaBackend};
use lmscore::checkpoint::DType;
use std::io::Write;
use std::path::PathBuf;

/// `tests/fixtures`: `LMSCORE_FIXTURES` if set, else the source tree the binary was built from, else
/// `./tests/fixtures` (a test binary copied to a GPU host runs from a copy of the repository at another path).
pub fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("LMSCORE_FIXTURES") {
        return PathBuf::from(p);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("tests/fixtures")
    }
}

/// Print straight to the process's stderr: libtest captures `println!`/`eprintln!` of passing tests, and a
/// skip must be seen.
pub fn visible(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// True when NVRTC can be loaded. Otherwise prints SKIPPED and returns false, or panics under
/// LMSCORE_REQUIRE_NVRTC=1.
pub fn nvrtc_or_skip(test: &str) -> bool {
    if cuda::kernels::nvrtc_present() {
        return true;
    }
    let why = "NVRTC not found (libnvrtc.so.13 could not be loaded; run `eval \"$(bash scripts/install-nvrtc.sh)\"`)";
    if required("LMSCORE_REQUIRE_NVRTC") {
        panic!("{test}: LMSCORE_REQUIRE_NVRTC=1 but {why}");
    }
    visible(&format!("SKIPPED: {why}: {test}"));
    false
}

/// A CUDA backend computing in `dtype`, or None (after printing SKIPPED) when no device can be opened.
/// Panics under LMSCORE_REQUIRE_CUDA=1 instead of skipping.
pub fn cuda_or_skip(test: &str, dtype: DType) -> Option<CudaBackend> {
    let err = match cuda::check_available() {
        Ok(()) => match CudaBackend::new(0, dtype) {
            Ok(b) => return Some(b),
            // A device is there but the backend failed: always a failure.
            Err(e) => panic!("{test}: a CUDA device is present but CudaBackend::new failed: {e}"),
        },
        Err(e) => e,
    };
    if required("LMSCORE_REQUIRE_CUDA") {
        panic!("{test}: LMSCORE_REQUIRE_CUDA=1 but {err}");
    }
    visible(&format!("SKIPPED: no CUDA device ({err}): {test}"));
    None
}

/// True when the CUDA stand-in's libraries are on the library path (LMSCORE_CUDA_SIM, which
/// scripts/cuda-sim.sh exports): the stand-in's own suites need it. Otherwise prints SKIPPED and returns
/// false, or panics under LMSCORE_REQUIRE_CUDA=1.
pub fn stand_in_or_skip(test: &str) -> bool {
    if std::env::var_os("LMSCORE_CUDA_SIM").is_some() {
        return true;
    }
    let why = "the CUDA stand-in is not on the library path (run `eval \"$(bash scripts/cuda-sim.sh)\"` first)";
    if required("LMSCORE_REQUIRE_CUDA") {
        panic!("{test}: LMSCORE_REQUIRE_CUDA=1 but {why}");
    }
    visible(&format!("SKIPPED: {why}: {test}"));
    false
}

/// Whether the CUDA backend runs on the CPU stand-in of cuda-sim/ (scripts/cuda-sim.sh) rather than a GPU.
pub fn cuda_stand_in() -> bool {
    cuda::driver_is_stand_in()
}

/// Set the stand-in's thread schedules for every later launch of this process ("forward,greedy", ...): with
/// more than one, each launch runs once per schedule and its outputs must be bit-identical. Returns false
/// (and does nothing) on a real GPU.
pub fn set_stand_in_schedules(spec: &str) -> bool {
    if !cuda_stand_in() {
        return false;
    }
    let c = std::ffi::CString::new(spec).expect("no NUL");
    // SAFETY: the stand-in driver is loaded (checked above); the hook takes a C string and returns 0 on success.
    let rc = unsafe {
        let f = cudarc::driver::sys::culib()
            .get::<unsafe extern "C" fn(*const std::ffi::c_char) -> i32>(b"lms_sim_set_schedules\0")
            .expect("the CUDA stand-in exports lms_sim_set_schedules");
        f(c.as_ptr())
    };
    assert_eq!(rc, 0, "the CUDA stand-in refused the schedules {spec:?}");
    true
}

/// LD_LIBRARY_PATH without the CUDA stand-in's directories (LMSCORE_CUDA_SIM, and any holding the
/// stand-in's libcuda or libnvrtc): a child started with it loads the real libraries, or none.
pub fn library_path_without_cuda_stand_in() -> std::ffi::OsString {
    let stand_in = std::env::var_os("LMSCORE_CUDA_SIM").map(PathBuf::from);
    let is_stand_in_dir = |d: &std::path::Path| {
        stand_in.as_deref() == Some(d)
            || ["libnvrtc.so.13", "libcuda.so.1"]
                .iter()
                .any(|lib| std::fs::read(d.join(lib)).is_ok_and(|b| b.windows(21).any(|w| w == b"lmscore CUDA stand-in")))
    };
    let path = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::env::split_paths(&path).filter(|d| !is_stand_in_dir(d)).collect();
    std::env::join_paths(kept).expect("a library path")
}

/// Run test `test` of this binary again in a child process that does not see the CUDA stand-in.
pub fn rerun_without_cuda_stand_in(test: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("LD_LIBRARY_PATH", library_path_without_cuda_stand_in())
        .env_remove("LMSCORE_CUDA_SIM")
        .output()
        .expect("re-running the test binary")
}

/// SplitMix64: small, seeded, reproducible across platforms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-a, a).
    pub fn sym(&mut self, a: f32) -> f32 {
        (2.0 * self.uniform() - 1.0) * a
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
    pub fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.sym(a)).collect()
    }
}
