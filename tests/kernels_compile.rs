//! Every kernel file compiles with NVRTC, on any machine (no GPU needed): for the virtual architectures
//! compute_80 and compute_90 (PTX, checked for every entry point the backend launches and for its ISA
//! version), and for the real sm_80 / sm_90 (cubins through NVRTC's built-in ptxas, whose register /
//! spill / shared-memory report is printed).
//!
//! Without libnvrtc the test prints `SKIPPED: NVRTC not found ...` and passes; with LMSCORE_REQUIRE_NVRTC=1
//! (CI) it fails instead. Install NVRTC from PyPI with `eval "$(bash scripts/install-nvrtc.sh)"`.
//!
//! These tests are about the real NVRTC: when the CPU stand-in (cuda-sim/, which CI puts first on the
//! library path for the GPU suite) is the NVRTC this process loaded, each test runs itself again in a child
//! process whose library path leaves the stand-in out, and requires the real NVRTC there.
//!
//! PTX ISA version: the engine never hands PTX to the driver. It loads cubins that NVRTC compiles for the
//! device's own sm_XY, and a cubin from a newer 13.x NVRTC loads on driver 580 (CUDA 13.0), whose JIT would
//! refuse PTX newer than ISA 9.0. So the PTX version is reported, and is a failure only when
//! LMSCORE_MAX_PTX_VERSION is set (for someone who does feed PTX to a driver's JIT).

mod common;

use lmscore::backend::cuda::{entry_points, kernels};

fn max_ptx_version() -> Option<(u32, u32)> {
    let v = std::env::var("LMSCORE_MAX_PTX_VERSION").ok()?;
    let (a, b) = v.split_once('.').unwrap_or((&v, "0"));
    Some((
        a.parse().expect("LMSCORE_MAX_PTX_VERSION like 9.0"),
        b.parse().expect("LMSCORE_MAX_PTX_VERSION like 9.0"),
    ))
}

/// True when this process may run the test: the real NVRTC is loaded. With the stand-in loaded instead, the
/// test has already been run in a child without it (and this returns false after checking the child passed).
fn real_nvrtc_or_rerun(test: &str) -> bool {
    if !kernels::nvrtc_is_stand_in() {
        return common::nvrtc_or_skip(test);
    }
    let out = common::rerun_without_cuda_stand_in(test);
    common::visible(&String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{test} against the real NVRTC (library path without the CUDA stand-in) failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !real_nvrtc_or_rerun("every_kernel_compiles_with_nvrtc") {
        return;
    }
    let (major, minor) = kernels::nvrtc_version().unwrap();
    let include = kernels::cuda_include_dir();
    common::visible(&format!(
        "kernels_compile: NVRTC {major}.{minor}, CUDA include dir {}",
        include.as_ref().map_or("(none found; not needed)".into(), |p| p.display().to_string())
    ));
    let names = kernels::op_names();
    assert!(names.len() >= 9, "expected every op file, got {names:?}");
    let entries = entry_points();
    let max_ptx = max_ptx_version();
    let mut failures: Vec<String> = vec![];
    let mut ptx_versions = std::collections::BTreeSet::new();

    for name in &names {
        for arch in ["compute_80", "compute_90"] {
            match kernels::compile(name, arch, &[]) {
                Ok(c) => {
                    let v = c.ptx_version();
                    ptx_versions.insert(v);
                    match (v, max_ptx) {
                        (Some(v), Some(max)) if v > max => failures.push(format!(
                            "{name}.cu ({arch}): PTX ISA {}.{} is newer than LMSCORE_MAX_PTX_VERSION {}.{}",
                            v.0, v.1, max.0, max.1
                        )),
                        (None, _) => failures.push(format!("{name}.cu ({arch}): no .version line in the PTX")),
                        _ => {}
                    }
                    for (_, f) in entries.iter().filter(|(m, _)| m == name) {
                        if !c.ptx.contains(&format!(".entry {f}(")) {
                            failures.push(format!("{name}.cu ({arch}): entry point {f} missing from the PTX"));
                        }
                    }
                }
                Err(e) => failures.push(format!("{name}.cu ({arch}): {e}")),
            }
        }
        for arch in ["sm_80", "sm_90"] {
            match kernels::compile(name, arch, &["--ptxas-options=-v"]) {
                Ok(c) => {
                    if c.cubin.as_ref().is_none_or(|b| b.is_empty()) {
                        failures.push(format!("{name}.cu ({arch}): no cubin"));
                    }
                    // ptxas -v: "Compiling entry function 'X' for 'sm_90'", then "... N bytes spill stores ...",
                    // then "Used R registers, ...".
                    let mut current = String::new();
                    let mut summary = vec![];
                    for line in c.log.lines() {
                        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                            current = rest.split('\'').next().unwrap_or("").to_string();
                        } else if line.contains("spill stores") && !line.contains(" 0 bytes spill stores") {
                            failures.push(format!("{name}.cu ({arch}): {current} spills registers: {}", line.trim()));
                        } else if let Some(rest) = line.split("Used ").nth(1) {
                            let regs = rest.split(' ').next().unwrap_or("?");
                            summary.push(format!("{current}:{regs}"));
                        }
                    }
                    if arch == "sm_90" {
                        summary.sort();
                        common::visible(&format!("kernels_compile: {name}.cu sm_90 registers per thread: {}", summary.join(" ")));
                    }
                }
                Err(e) => failures.push(format!("{name}.cu ({arch}): {e}")),
            }
        }
    }
    let versions: Vec<String> = ptx_versions.iter().map(|v| v.map_or("?".into(), |(a, b)| format!("{a}.{b}"))).collect();
    common::visible(&format!(
        "kernels_compile: {} kernel files, {} entry points, PTX ISA {} ({}), sm_80 and sm_90 cubins (what the runtime loads)",
        names.len(),
        entries.len(),
        versions.join(", "),
        max_ptx.map_or("not checked: the runtime loads cubins, never PTX".into(), |(a, b)| format!(
            "limit {a}.{b}"
        ))
    ));
    assert!(
        failures.is_empty(),
        "{} kernel compile problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A broken kernel is an `Error::Cuda` carrying NVRTC's log with file and line (not a panic): the error
/// path the backend relies on when a kernel edit breaks compilation on a GPU host. A missing file is an
/// error too.
#[test]
fn nvrtc_errors_name_the_file_and_line() {
    if !real_nvrtc_or_rerun("nvrtc_errors_name_the_file_and_line") {
        return;
    }
    let src = "extern \"C\" __global__ void k(float* x) {\n    x[0] = undefined_thing;\n}\n";
    let err = kernels::compile_source("broken", src, "compute_80", &[]).unwrap_err().to_string();
    assert!(err.contains("broken.cu(2)") && err.contains("undefined_thing"), "{err}");
    let err = kernels::compile("does_not_exist", "compute_80", &[]).unwrap_err().to_string();
    assert!(err.contains("kernels/does_not_exist.cu"), "{err}");
}
