//! The kernel sources (`kernels/*.cu`, embedded by build.rs) and their compilation with NVRTC.
//!
//! Every op file is compiled as its own NVRTC program: the prelude `kernels/common.cu` followed by the
//! file (with a `#line` directive, so error messages name the right file and line). The backend compiles
//! for the device's real architecture (`sm_XY`) and loads the resulting cubin: a cubin from a newer NVRTC
//! still loads on an older driver of the same major version, whereas PTX from a newer NVRTC does not
//! (driver 580 / CUDA 13.0 rejects PTX ISA 9.5 from the 13.5 wheels, see docs/gpu.md). Cubins are cached
//! on disk, keyed by a hash of the program text, the options and the NVRTC version.
//!
//! Nothing here touches a GPU, so the compile test (`tests/kernels_compile.rs`) runs it on CPU-only CI.

use crate::error::{Error, Result};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::ffi::CString;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// The prelude every op file is compiled with.
pub const PRELUDE: &str = "common";

/// The source of `kernels/<name>.cu`.
pub fn source(name: &str) -> Option<&'static str> {
    KERNEL_SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Names of the op files: every `kernels/*.cu` except the prelude, sorted.
pub fn op_names() -> Vec<&'static str> {
    KERNEL_SOURCES.iter().map(|(n, _)| *n).filter(|n| *n != PRELUDE).collect()
}

/// The whole NVRTC program for op file `name`: prelude, then the file.
pub fn program_source(name: &str) -> Result<String> {
    let body = source(name).ok_or_else(|| Error::Cuda(format!("no kernel file kernels/{name}.cu was embedded at build time")))?;
    let prelude = source(PRELUDE).unwrap_or("");
    Ok(format!("#line 1 \"{PRELUDE}.cu\"\n{prelude}\n#line 1 \"{name}.cu\"\n{body}"))
}

/// Whether libnvrtc can be loaded (never panics; cudarc panics on first use when it cannot).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// Whether the loaded NVRTC is the CPU stand-in of `cuda-sim/` (scripts/cuda-sim.sh): its "cubins" are
/// shared objects for the stand-in driver, never for a GPU, so the disk cache keys them apart, and the
/// compile test (which must exercise the real NVRTC) looks for the real library instead.
pub fn nvrtc_is_stand_in() -> bool {
    // SAFETY: the library is loadable (checked first); looking a symbol up runs nothing.
    nvrtc_present() && unsafe { nvrtc_sys::culib().get::<*const u8>(b"lms_sim_identity\0").is_ok() }
}

/// The stand-in NVRTC's build hash (`lms_sim_build`): its modules depend on its SIMT header, not only on
/// the program text, so the cache key includes it.
fn stand_in_build() -> String {
    // SAFETY: only called when the stand-in is loaded; `lms_sim_build` is a NUL-terminated char array.
    unsafe {
        nvrtc_sys::culib()
            .get::<*const std::ffi::c_char>(b"lms_sim_build\0")
            .map(|s| std::ffi::CStr::from_ptr(*s as *const std::ffi::c_char).to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// (major, minor) of the loaded NVRTC.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(nvrtc_missing());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live locals.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Cuda(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

pub fn nvrtc_missing() -> Error {
    Error::Cuda(
        "NVRTC not found: libnvrtc.so.13 could not be loaded. Put the directory holding libnvrtc.so.13 and \
         libnvrtc-builtins.so.13.* on LD_LIBRARY_PATH (scripts/install-nvrtc.sh installs it from PyPI)"
            .into(),
    )
}

/// A directory holding `cuda_fp16.h`, if one can be found: `LMSCORE_CUDA_INCLUDE`, `$CUDA_PATH/include`,
/// `$CUDA_HOME/include`, `/usr/local/cuda/include`, or the pip wheel layout (`.../nvidia/cu13/include`,
/// next to a `.../nvidia/cu13/lib` on LD_LIBRARY_PATH, or in a Python site-packages).
///
/// The kernels need no header today (f16/bf16 are converted with PTX, see kernels/common.cu); the path is
/// passed to NVRTC when found so a kernel may include `cuda_fp16.h` / `cuda_bf16.h`.
pub fn cuda_include_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = vec![];
    if let Some(p) = std::env::var_os("LMSCORE_CUDA_INCLUDE") {
        candidates.push(PathBuf::from(p));
    }
    for var in ["CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"] {
        if let Some(p) = std::env::var_os(var) {
            candidates.push(PathBuf::from(p).join("include"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    // pip wheels: <site>/nvidia/cu13/{lib,include}; CUDA 12 wheels: <site>/nvidia/cuda_{nvrtc,runtime}/...
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        for lib in std::env::split_paths(&paths) {
            if let Some(parent) = lib.parent() {
                candidates.push(parent.join("include"));
                if let Some(nvidia) = parent.parent() {
                    candidates.push(nvidia.join("cuda_runtime").join("include"));
                }
            }
        }
    }
    let mut sites: Vec<PathBuf> = vec![];
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = std::env::var_os(var) {
            sites.push(PathBuf::from(p).join("lib"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        sites.push(PathBuf::from(home).join(".local/lib"));
    }
    sites.extend(["/usr/local/lib", "/usr/lib", "/opt/conda/lib"].map(PathBuf::from));
    for lib in sites {
        let Ok(entries) = std::fs::read_dir(&lib) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("python3") {
                for pkgs in ["site-packages", "dist-packages"] {
                    candidates.push(e.path().join(pkgs).join("nvidia/cu13/include"));
                    candidates.push(e.path().join(pkgs).join("nvidia/cuda_runtime/include"));
                }
            }
        }
    }
    candidates.into_iter().find(|d| d.join("cuda_fp16.h").is_file())
}

/// One NVRTC compilation.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// PTX text (always produced).
    pub ptx: String,
    /// Device code for a real architecture (`sm_XY`), absent for a virtual one (`compute_XY`).
    pub cubin: Option<Vec<u8>>,
    /// NVRTC's log: warnings, and ptxas statistics when `--ptxas-options=-v` was given.
    pub log: String,
}

impl Compiled {
    /// The `.version X.Y` of the PTX, e.g. (9, 0).
    pub fn ptx_version(&self) -> Option<(u32, u32)> {
        let line = self.ptx.lines().find(|l| l.starts_with(".version"))?;
        let (major, minor) = line.trim_start_matches(".version").trim().split_once('.')?;
        Some((major.trim().parse().ok()?, minor.trim().parse().ok()?))
    }
}

/// Options every kernel is compiled with (besides the architecture). NVRTC defaults are kept for
/// precision: IEEE division and square root, no flush-to-zero, no fast math.
fn base_options() -> Vec<String> {
    let mut opts = vec!["-std=c++17".to_string()];
    if let Some(dir) = cuda_include_dir() {
        opts.push(format!("--include-path={}", dir.display()));
    }
    opts
}

/// Compile op file `name` for `arch` (`compute_XY`: PTX only; `sm_XY`: PTX and a cubin), with `extra`
/// options appended (e.g. `--ptxas-options=-v`).
pub fn compile(name: &str, arch: &str, extra: &[&str]) -> Result<Compiled> {
    compile_source(name, &program_source(name)?, arch, extra)
}

/// Compile program text `src` (reported as `<name>.cu`) like `compile` does.
pub fn compile_source(name: &str, src: &str, arch: &str, extra: &[&str]) -> Result<Compiled> {
    if !nvrtc_present() {
        return Err(nvrtc_missing());
    }
    let mut options = base_options();
    options.push(format!("--gpu-architecture={arch}"));
    options.extend(extra.iter().map(|s| s.to_string()));
    compile_program(name, src, &options)
}

fn compile_program(name: &str, src: &str, options: &[String]) -> Result<Compiled> {
    let c_src = CString::new(src).map_err(|_| Error::Cuda(format!("kernels/{name}.cu contains a NUL byte")))?;
    let c_name = CString::new(format!("{name}.cu")).expect("kernel names have no NUL");
    let prog =
        nvrtc::create_program(&c_src, Some(&c_name)).map_err(|e| Error::Cuda(format!("NVRTC could not create a program for {name}.cu: {e:?}")))?;
    // Destroy the program whatever happens below.
    struct Guard(nvrtc_sys::nvrtcProgram);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once.
            let _ = unsafe { nvrtc::destroy_program(self.0) };
        }
    }
    let guard = Guard(prog);
    // SAFETY: `prog` is a live program; c_src and c_name outlive it (dropped after `guard`).
    let status = unsafe { nvrtc::compile_program(guard.0, options) };
    let log = unsafe { nvrtc::get_program_log(guard.0) }
        .map(|raw| c_chars_to_string(&raw))
        .unwrap_or_default();
    if let Err(e) = status {
        return Err(Error::Cuda(format!("NVRTC failed to compile {name}.cu ({e:?}) with {options:?}:\n{log}")));
    }
    let ptx = unsafe { nvrtc::get_ptx(guard.0) }.map_err(|e| Error::Cuda(format!("NVRTC gave no PTX for {name}.cu: {e:?}")))?;
    let ptx = c_chars_to_string(&ptx);
    let real_arch = options.iter().any(|o| o.starts_with("--gpu-architecture=sm_"));
    let cubin = if real_arch {
        let mut size = 0usize;
        // SAFETY: live program; the buffer is sized from nvrtcGetCUBINSize.
        unsafe { nvrtc_sys::nvrtcGetCUBINSize(guard.0, &mut size) }
            .result()
            .map_err(|e| Error::Cuda(format!("nvrtcGetCUBINSize for {name}.cu: {e:?}")))?;
        let mut bin = vec![0u8; size];
        unsafe { nvrtc_sys::nvrtcGetCUBIN(guard.0, bin.as_mut_ptr() as *mut _) }
            .result()
            .map_err(|e| Error::Cuda(format!("nvrtcGetCUBIN for {name}.cu: {e:?}")))?;
        (size > 0).then_some(bin)
    } else {
        None
    };
    drop(guard);
    drop((c_src, c_name));
    Ok(Compiled { ptx, cubin, log })
}

fn c_chars_to_string(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// FNV-1a, 64 bit: a hash that is stable across Rust releases (the cache key must survive a toolchain update).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Where compiled cubins are kept: `LMSCORE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/lmscore/kernels`, else
/// `~/.cache/lmscore/kernels`. `LMSCORE_KERNEL_CACHE=off` disables the cache.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("LMSCORE_KERNEL_CACHE") {
        Some(v) if v == "off" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("lmscore").join("kernels")),
    }
}

/// The cubin of op file `name` for `sm_<cc>`, from the disk cache or compiled (and cached).
pub fn cubin_for(name: &str, cc: (i32, i32)) -> Result<Vec<u8>> {
    let arch = format!("sm_{}{}", cc.0, cc.1);
    let src = program_source(name)?;
    let mut options = base_options();
    options.push(format!("--gpu-architecture={arch}"));
    let version = nvrtc_version()?;
    let compiler = if nvrtc_is_stand_in() {
        format!("cuda-sim {}", stand_in_build())
    } else {
        "nvrtc".into()
    };
    let key = fnv1a(&[src.as_bytes(), options.join(" ").as_bytes(), format!("{compiler} {version:?}").as_bytes()]);
    let path = cache_dir().map(|d| d.join(format!("{name}-{arch}-{key:016x}.cubin")));
    if let Some(bin) = path.as_deref().and_then(|p| std::fs::read(p).ok()).filter(|b| !b.is_empty()) {
        return Ok(bin);
    }
    let compiled = compile_program(name, &src, &options)?;
    let bin = compiled
        .cubin
        .ok_or_else(|| Error::Cuda(format!("NVRTC produced no cubin for {name}.cu ({arch})")))?;
    if let Some(p) = path.as_deref() {
        write_atomically(p, &bin);
    }
    Ok(bin)
}

/// Best effort: a cache that cannot be written is only slower.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("k"),
        std::process::id()
    ));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_file_is_embedded_with_the_prelude() {
        let names = op_names();
        for op in ["attention", "embedding", "layernorm", "logsoftmax_gather", "qkv_rotary"] {
            assert!(names.contains(&op), "kernels/{op}.cu missing from {names:?}");
        }
        assert!(!names.contains(&PRELUDE));
        let src = program_source("qkv_rotary").unwrap();
        assert!(src.starts_with("#line 1 \"common.cu\""));
        assert!(src.contains("#line 1 \"qkv_rotary.cu\""));
    }

    #[test]
    fn ptx_version_is_parsed() {
        let c = Compiled {
            ptx: "//\n.version 9.0\n.target sm_90\n".into(),
            cubin: None,
            log: String::new(),
        };
        assert_eq!(c.ptx_version(), Some((9, 0)));
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(fnv1a(&[b"abc"]), fnv1a(&[b"abc"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
