//! `lmscore bench` runs end to end and reports the ratio it exists for (no timing is asserted: the figures
//! are for BENCHMARKS.md, measured on an idle machine).

use std::process::Command;

#[test]
fn bench_reports_the_fraction_of_the_gemm_rate() {
    let out = Command::new(env!("CARGO_BIN_EXE_lmscore"))
        .args([
            "bench",
            "--shape",
            "64:2:4:2000,32:1:2:500",
            "--questions",
            "3",
            "--primer",
            "20",
            "--reps",
            "1",
            "--threads",
            "1,2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Two shapes x two thread counts, each with its ratio.
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("scoring:")).collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for line in lines {
        let percent: f64 = line
            .split("= ")
            .nth(1)
            .and_then(|r| r.split('%').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(percent > 0.0 && percent.is_finite(), "{line}");
    }
    for needle in [
        "cpu f32 (1 thread)",
        "cpu f32 (2 threads)",
        "LM head [512 x 64] x [64 x 2000]",
        "LM head [512 x 32] x [32 x 500]",
        "attention",
        "log-softmax gather",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?}:\n{stdout}");
    }
}
