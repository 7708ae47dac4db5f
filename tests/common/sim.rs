//! The harness that drives the cuda-sim stand-in (the CPU stand-in for the CUDA driver and NVRTC, cuda-sim/)
//! directly, without the CUDA backend: the stand-in's own suites (tests/cuda_sim.rs, tests/cuda_sim_mma.rs)
//! compile small test kernels with its NVRTC, launch them on its driver and check what it answers.
//!
//! - [`Sim`]: the context, its default stream and the stand-in's test hooks (`lms_sim_reset_fault`,
//!   `lms_sim_set_schedules`, `lms_sim_last_error`, exported by its libcuda.so.1; a real driver has none);
//! - [`compile`]: a kernel file through NVRTC as program "t.cu" for sm_90, so messages name `t.cu:LINE`;
//! - [`launch!`]: a launch with its arguments; [`describe`] and [`expect_err`]: what a failure said.
//!
//! Schedules and the sticky fault are process-wide, so a `Sim` holds one process-wide lock for as long as it
//! lives, starts and ends under the default schedule ("forward") and clears the fault when dropped: the
//! tests of a binary cannot see each other's schedules or faults, whatever the test threads.

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaContext, CudaModule, CudaStream, DriverError, LaunchConfig};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Arc, Mutex, MutexGuard};

/// Serialises the tests: schedules and the sticky fault are process-wide.
static LOCK: Mutex<()> = Mutex::new(());

/// The stand-in's thread schedules, each a different order of running a block's threads.
pub const ALL_SCHEDULES: [&str; 4] = ["forward", "reverse", "greedy", "shuffle:7"];
/// `ALL_SCHEDULES` in one spec: each launch runs under all four, and the stand-in fails one whose outputs differ.
pub const EVERY_SCHEDULE_AT_ONCE: &str = "forward,reverse,greedy,shuffle:7";

/// The context, the default stream, and the stand-in's test hooks (exported by its libcuda.so.1).
pub struct Sim {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    reset_fault: unsafe extern "C" fn(),
    set_schedules: unsafe extern "C" fn(*const c_char) -> c_int,
    last_error: unsafe extern "C" fn() -> *const c_char,
    _lib: libloading::Library,
    _lock: MutexGuard<'static, ()>,
}

impl Sim {
    /// None (after printing SKIPPED, as `<test binary>::test`) when the stand-in is not on the library path.
    pub fn new(test: &str) -> Option<Sim> {
        let lock = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !super::stand_in_or_skip(&format!("{}::{test}", env!("CARGO_CRATE_NAME"))) {
            return None;
        }
        let ctx = CudaContext::new(0).expect("CudaContext::new(0) on the stand-in");
        let stream = ctx.default_stream();
        // SAFETY: the stand-in's libcuda.so.1 (the one cudarc loaded: same soname); the hooks' C signatures are
        // those of cuda-sim/src/driver.cpp.
        unsafe {
            let lib = libloading::Library::new("libcuda.so.1").expect("dlopen libcuda.so.1 (the stand-in)");
            let reset_fault = *lib
                .get::<unsafe extern "C" fn()>(b"lms_sim_reset_fault")
                .expect("hook lms_sim_reset_fault");
            let set_schedules = *lib
                .get::<unsafe extern "C" fn(*const c_char) -> c_int>(b"lms_sim_set_schedules")
                .expect("hook lms_sim_set_schedules");
            let last_error = *lib
                .get::<unsafe extern "C" fn() -> *const c_char>(b"lms_sim_last_error")
                .expect("hook lms_sim_last_error");
            let sim = Sim {
                ctx,
                stream,
                reset_fault,
                set_schedules,
                last_error,
                _lib: lib,
                _lock: lock,
            };
            sim.recover();
            sim.schedules("forward");
            Some(sim)
        }
    }

    /// Every later launch in the process runs under these schedules ("forward,greedy": both, outputs compared).
    pub fn schedules(&self, spec: &str) {
        assert_eq!(self.try_schedules(spec), 0, "lms_sim_set_schedules({spec:?})");
    }

    /// What the schedule hook answers to `spec`: 0 when it took it, non-zero when it refused it (as
    /// CUDA_SIM_SCHEDULES would refuse it), leaving the schedules as they were.
    pub fn try_schedules(&self, spec: &str) -> c_int {
        let c = CString::new(spec).unwrap();
        // SAFETY: a NUL-terminated string that outlives the call.
        unsafe { (self.set_schedules)(c.as_ptr()) }
    }

    /// Clears the sticky fault of a deliberate failure, and what cudarc's drops recorded meanwhile.
    pub fn recover(&self) {
        // SAFETY: no arguments; the hook only clears the driver's sticky state.
        unsafe { (self.reset_fault)() };
        let _ = self.ctx.check_err();
    }

    /// The stand-in's description of the last failure on this thread.
    pub fn last_error(&self) -> String {
        // SAFETY: the hook returns a NUL-terminated thread-local string, valid until the next failure.
        unsafe { CStr::from_ptr((self.last_error)()) }.to_string_lossy().into_owned()
    }

    /// `src` (a whole program, starting with `#line 1 "t.cu"`) compiled and loaded; a compile error panics
    /// with NVRTC's log.
    pub fn module(&self, src: &str) -> Arc<CudaModule> {
        let cubin = compile(src).unwrap_or_else(|log| panic!("compiling a test kernel failed:\n{log}"));
        self.ctx.load_module(Ptx::from_binary(cubin)).expect("load_module")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.recover();
        self.schedules("forward");
    }
}

/// Compiles `src` with the (stand-in) NVRTC for sm_90 as program "t.cu": the cubin, or the log.
pub fn compile(src: &str) -> Result<Vec<u8>, String> {
    let c_src = CString::new(src).unwrap();
    let name = CString::new("t.cu").unwrap();
    let prog = nvrtc::create_program(&c_src, Some(&name)).map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    // SAFETY: a live program; c_src and name outlive it; the CUBIN buffer is sized by nvrtcGetCUBINSize.
    unsafe {
        let status = nvrtc::compile_program(prog, &["--gpu-architecture=sm_90"]);
        let log = nvrtc::get_program_log(prog).map(|raw| c_chars(&raw)).unwrap_or_default();
        let out = match status {
            Err(e) => Err(format!("{e:?}\n{log}")),
            Ok(()) => {
                let mut size = 0usize;
                nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))
                    .and_then(|()| {
                        let mut bin = vec![0u8; size];
                        nvrtc_sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut c_char)
                            .result()
                            .map(|()| bin)
                            .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))
                    })
            }
        };
        let _ = nvrtc::destroy_program(prog);
        out
    }
}

fn c_chars(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A launch of `grid` blocks of `block` threads (x, y, z) with `shared_mem_bytes` of dynamic shared memory.
pub fn launch_config(grid: (u32, u32, u32), block: (u32, u32, u32), shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes,
    }
}

/// Launches `f` on `$sim`'s stream with the arguments (each a reference, as cudarc's `arg` takes them).
/// The caller imports cudarc's `PushKernelArg`, which `arg` needs.
// Like the rest of common/, compiled into every test binary that includes it, most of which never launch.
#[allow(unused_macros)]
macro_rules! launch {
    ($sim:expr, $f:expr, $cfg:expr $(, $arg:expr)* $(,)?) => {{
        let mut builder = $sim.stream.launch_builder(&$f);
        $(builder.arg($arg);)*
        // SAFETY: the test kernels' parameter lists are the arguments given; deliberate faults are caught
        // by the stand-in.
        unsafe { builder.launch($cfg) }.map(|_| ())
    }};
}
// A path to the macro, so a test file imports it like the rest (`use common::sim::launch`).
#[allow(unused_imports)]
pub(crate) use launch;

/// The error's code and its cuGetErrorString text (which carries the stand-in's `[cuda-sim: ...]`
/// description).
pub fn describe(e: &DriverError) -> String {
    let text = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "<no error string>".into());
    format!("{:?}: {text}", e.0)
}

/// Asserts that `r` failed with `code` and that the message (cuGetErrorString, with the stand-in's
/// description) contains every one of `parts`; returns the message.
pub fn expect_err<T>(what: &str, r: Result<T, DriverError>, code: CUresult, parts: &[&str]) -> String {
    let e = match r {
        Ok(_) => panic!("{what}: succeeded, expected {code:?} mentioning {parts:?}"),
        Err(e) => e,
    };
    let msg = describe(&e);
    assert_eq!(e.0, code, "{what}: wrong error code; message: {msg}");
    for p in parts {
        assert!(msg.contains(p), "{what}: the message lacks {p:?}:\n{msg}");
    }
    msg
}
