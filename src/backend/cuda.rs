//! The CUDA backend (issue 4): hand-written kernels from `kernels/*.cu` compiled with NVRTC, cuBLAS for the
//! matrix products, all through cudarc with dynamic loading. Placeholder until the backend lands.

use crate::error::{Error, Result};

/// Whether a CUDA driver can be loaded on this machine (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub fn unavailable() -> Error {
    Error::Cuda("no CUDA driver/device found (libcuda.so could not be loaded); use --device cpu".into())
}

pub fn check_available() -> Result<()> {
    if !driver_present() {
        return Err(unavailable());
    }
    Err(Error::Cuda("the CUDA backend is not built yet; use --device cpu".into()))
}
