//! `lmscore report` on the paper's own results reproduces the paper's statistical table cell for cell,
//! writes back its results table, per-run JSON matching the paper's lm-eval output, a plausible
//! Figure 1 (PNG and SVG), and trend flags; bad input is refused with the line at fault.

use lmscore::report::{self, ResultRow};
use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/reference_results")
}

fn reference_tsv() -> PathBuf {
    shared().join("all_results.tsv")
}

fn lmscore(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lmscore")).args(args).output().expect("run lmscore")
}

/// Runs the CLI on the paper's results (once per test that needs it); returns the output directory
/// and what it printed.
fn report_on_reference_with_stdout() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = lmscore(&[
        "report",
        "--tsv",
        reference_tsv().to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "lmscore report failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, String::from_utf8(out.stdout).unwrap())
}

fn report_on_reference() -> tempfile::TempDir {
    report_on_reference_with_stdout().0
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

/// `t(60)=-4.22, p<0.001` -> ("t(60)=-4.22", "p<0.001").
fn split_cell(cell: &str) -> (&str, &str) {
    cell.split_once(", ").unwrap_or((cell, ""))
}

#[test]
fn reproduces_every_cell_of_the_papers_statistical_table() {
    let (dir, stdout) = report_on_reference_with_stdout();
    let want = read(shared().join("statistical_tests.tsv"));
    let got = read(dir.path().join(report::STATS_TSV));
    let want_rows: Vec<Vec<&str>> = want.lines().map(|l| l.split('\t').collect()).collect();
    let got_rows: Vec<Vec<&str>> = got.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(got_rows.len(), want_rows.len(), "row count\n{got}");
    assert_eq!(got_rows[0], want_rows[0], "header");
    let mut checked = 0;
    for (g, w) in got_rows.iter().zip(&want_rows).skip(1) {
        assert_eq!(g.len(), 4, "{g:?}");
        assert_eq!(g[0], w[0], "task name");
        for col in 1..4 {
            let (gt, gp) = split_cell(g[col]);
            let (wt, wp) = split_cell(w[col]);
            assert_eq!(gt, wt, "t value of {} / {}", w[0], want_rows[0][col]);
            assert_eq!(gp, wp, "p value of {} / {}", w[0], want_rows[0][col]);
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
    // And the file as a whole, byte for byte (layout, order, trailing newline).
    assert_eq!(got, want);
    // The CLI prints the same table.
    assert_eq!(stdout, want);
}

#[test]
fn results_table_and_run_json_match_the_paper() {
    let dir = report_on_reference();
    // The results table is written back byte for byte, and reads back to the same rows.
    let ours = dir.path().join(report::RESULTS_TSV);
    assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(reference_tsv()).unwrap());
    assert_eq!(report::read_tsv(&ours).unwrap(), report::read_tsv(reference_tsv()).unwrap());

    // One JSON per run, named and filled like the paper's lm-eval output.
    let theirs_dir = shared().join("per_run_json");
    let mut n = 0;
    for entry in std::fs::read_dir(&theirs_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let theirs: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&read(dir.path().join(report::RUN_JSON_DIR).join(&name))).unwrap();
        assert_eq!(ours["config"]["model_args"], theirs["config"]["model_args"], "{name}");
        let results = ours["results"].as_object().unwrap();
        assert_eq!(results.len(), 12, "{name}");
        for (task, v) in results {
            let (acc, se) = match task.as_str() {
                "truthfulqa_mc1" => (
                    &theirs["results"]["truthfulqa_mc"]["mc1"],
                    &theirs["results"]["truthfulqa_mc"]["mc1_stderr"],
                ),
                "truthfulqa_mc2" => (
                    &theirs["results"]["truthfulqa_mc"]["mc2"],
                    &theirs["results"]["truthfulqa_mc"]["mc2_stderr"],
                ),
                t => (&theirs["results"][t]["acc"], &theirs["results"][t]["acc_stderr"]),
            };
            // The paper's TSV carries 15 significant digits of the JSON's values.
            let close = |a: &serde_json::Value, b: &serde_json::Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-12;
            // lm-eval 0.4's layout (`acc,none`), as `lmscore score` writes it.
            assert!(close(&v["acc,none"], acc), "{name} {task} acc {} vs {acc}", v["acc,none"]);
            assert!(close(&v["acc_stderr,none"], se), "{name} {task} stderr {} vs {se}", v["acc_stderr,none"]);
            assert_eq!(v["alias"], task.as_str());
        }
        n += 1;
    }
    assert_eq!(n, 64);
    assert_eq!(std::fs::read_dir(dir.path().join(report::RUN_JSON_DIR)).unwrap().count(), 64);
}

#[test]
fn figure_is_plausible() {
    let dir = report_on_reference();
    // The PNG decodes, at the advertised size, and is a drawing (not blank): it has white background,
    // dark text and coloured lines.
    let file = std::fs::File::open(dir.path().join(report::FIGURE_PNG)).unwrap();
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
    let mut buf = vec![0; decoder.output_buffer_size().unwrap()];
    let info = decoder.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), report::FIGURE_SIZE);
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let px: Vec<&[u8]> = buf[..info.buffer_size()].chunks(3).collect();
    let white = px.iter().filter(|p| p.iter().all(|&c| c == 255)).count();
    let dark = px.iter().filter(|p| p.iter().all(|&c| c < 60)).count();
    let colored = px.iter().filter(|p| p.iter().max().unwrap() - p.iter().min().unwrap() > 80).count();
    let total = px.len();
    assert!(white > total / 2, "mostly white background: {white} of {total}");
    assert!(dark > 2_000, "text and axes drawn: {dark} dark pixels");
    assert!(colored > 20_000, "data lines drawn: {colored} coloured pixels");

    // The SVG has every panel title, the axis titles and every model size in the legend.
    let svg = read(dir.path().join(report::FIGURE_SVG));
    assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
    for title in [
        "Hindsight Neglect",
        "Into the Unknown",
        "Memo Trap",
        "Modus Tollens",
        "NeQA",
        "Pattern Match Suppression",
        "Redefine",
        "Repetitive Algebra",
        "Resisting Correction",
        "Sig Figs",
        "TruthfulQA-MC1",
        "TruthfulQA-MC2",
        "Accuracy",
        "Training tokens seen (log scale)",
    ] {
        assert!(
            svg.contains(&format!(">{title}<")) || svg.contains(&format!(">\n{title}\n<")),
            "SVG lacks `{title}`"
        );
    }
    for size in ["70M", "160M", "410M", "1B", "1.4B", "2.8B", "6.9B", "12B"] {
        assert!(svg.contains(size), "legend lacks {size}");
    }
    // Camera-ready: MC2 is named as what it is, a chance line is drawn, the SVG prints at 6.5 inches with a
    // named standard font, the PNG says its DPI, and the PDF is there.
    for needle in [
        "MC2 score",
        "MC1 accuracy",
        "chance",
        "width=\"6.5000in\"",
        "font-family=\"DejaVu Sans, Helvetica",
    ] {
        assert!(svg.contains(needle), "SVG lacks `{needle}`");
    }
    // Tick labels (7.5 pt) and panel titles (9 pt) at 300 dpi: font-size is pixels per em.
    let size_of = |text: &str| -> f64 {
        let at = svg
            .find(&format!(">{text}<"))
            .or_else(|| svg.find(&format!(">\n{text}\n<")))
            .unwrap_or_else(|| panic!("no `{text}`"));
        let tag = &svg[svg[..at].rfind("<text").unwrap()..at];
        tag.split("font-size=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap()
    };
    let points = |px: f64| px * 72.0 / 300.0;
    assert!(points(size_of("300B")) >= 7.0, "tick labels {} pt", points(size_of("300B")));
    assert!(points(size_of("Memo Trap")) >= 9.0, "titles {} pt", points(size_of("Memo Trap")));
    let png_bytes = std::fs::read(dir.path().join(report::FIGURE_PNG)).unwrap();
    let phys = png_bytes.windows(4).position(|w| w == b"pHYs").expect("PNG has a pHYs chunk");
    let ppm = u32::from_be_bytes(png_bytes[phys + 4..phys + 8].try_into().unwrap());
    assert_eq!((ppm, png_bytes[phys + 12]), (11811, 1), "300 dpi in pixels per metre");
    let pdf = std::fs::read(dir.path().join(report::FIGURE_PDF)).unwrap();
    let pdf_text = String::from_utf8_lossy(&pdf);
    assert!(pdf.starts_with(b"%PDF-1.4") && pdf_text.ends_with("%%EOF\n"));
    assert!(pdf_text.contains("/BaseFont /Helvetica") && pdf_text.contains("(TruthfulQA-MC2) Tj"));
    assert!(pdf_text.contains("/MediaBox [0 0 468.00 522.00]"), "6.5 x 7.25 inches");
}

#[test]
fn figure_options_subset_metric_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let out = lmscore(&[
        "report",
        "--tsv",
        reference_tsv().to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
        "--tasks",
        "memo_trap,truthfulqa_mc2",
        "--figure-format",
        "svg",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join(report::FIGURE_SVG).exists());
    assert!(!dir.path().join(report::FIGURE_PNG).exists() && !dir.path().join(report::FIGURE_PDF).exists());
    let svg = read(dir.path().join(report::FIGURE_SVG));
    let has = |t: &str| svg.contains(&format!(">{t}<")) || svg.contains(&format!(">\n{t}\n<"));
    assert!(has("Memo Trap") && has("TruthfulQA-MC2") && !has("NeQA"));
    // Two panels side by side: 2 x 6.5 / 3 inches wide.
    assert!(svg.starts_with("<svg width=\"4.3333in\""), "{}", &svg[..80]);
    let stats = read(dir.path().join(report::STATS_TSV));
    assert_eq!(stats.lines().count(), 3, "{stats}");
    // A TSV holds acc only; unknown formats and tasks are named.
    for (flag, value, needle) in [
        ("--metric", "acc_norm", "holds one metric"),
        ("--figure-format", "gif", "expected png, svg or pdf"),
        ("--tasks", "memo_trap,nope", "no results for task `nope`"),
    ] {
        let out = lmscore(&[
            "report",
            "--tsv",
            reference_tsv().to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
            flag,
            value,
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{flag} {value}: {err}");
    }
}

#[test]
fn trend_flags_are_written_with_their_definitions() {
    let dir = report_on_reference();
    let tsv = read(dir.path().join(report::TRENDS_TSV));
    let lines: Vec<&str> = tsv.lines().collect();
    assert_eq!(lines.len(), 1 + 12 * 8, "one row per (task, model)");
    let header: Vec<&str> = lines[0].split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for l in &lines[1..] {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f.len(), header.len(), "{l}");
        assert!(["yes", "no"].contains(&f[col("inverse_scaling")]), "{l}");
        assert!(["U-shaped", "inverted-U", "none"].contains(&f[col("shape")]), "{l}");
        assert_eq!(f[col("checkpoints")], "8");
    }
    let md = read(dir.path().join(report::TRENDS_MD));
    for needle in [
        "one-sided",
        "Bonferroni",
        "Benjamini-Hochberg",
        "q < 0.05",
        "McNemar",
        "Unpaired approximation",
        "no paired test is possible",
        "quadratic",
        "strictly inside",
    ] {
        assert!(md.contains(needle), "trends.md lacks `{needle}`");
    }
    // From a TSV every test is the unpaired approximation, and no statistic is absurd: the row that read
    // z = 1235 (accuracy 0.9992 -> 0, a zero standard error) is now a pooled z near 50.
    for l in &lines[1..] {
        let f: Vec<&str> = l.split('\t').collect();
        assert!(["unpaired-z-proportions", "unpaired-z-means"].contains(&f[col("drop_test")]), "{l}");
        let z: f64 = f[col("drop_stat")].parse().unwrap_or(0.0);
        assert!(z.abs() < 100.0, "{l}");
        for c in ["drop_p", "drop_q"] {
            let p: f64 = f[col(c)].parse().unwrap();
            assert!((0.0..=1.0).contains(&p), "{c} in {l}");
        }
    }
    let tollens = lines
        .iter()
        .find(|l| l.starts_with("isp_modus_tollens\tEleutherAI/pythia-1.4b\t"))
        .unwrap();
    let z: f64 = tollens.split('\t').nth(col("drop_stat")).unwrap().parse().unwrap();
    assert!((40.0..60.0).contains(&z), "{tollens}");
    // A case that is visible in the paper's figure: TruthfulQA-MC2 accuracy of the 12B model falls
    // steadily from its early checkpoints to the last.
    let row = lines
        .iter()
        .find(|l| l.starts_with("truthfulqa_mc2\tEleutherAI/pythia-12b\t"))
        .expect("truthfulqa_mc2 / 12b row");
    assert!(row.split('\t').nth(col("inverse_scaling")) == Some("yes"), "{row}");
}

#[test]
fn library_entry_point_handles_partial_results() {
    // Three tasks, and one model missing for one of them: still fits (df follows the runs), BH over 9.
    let rows: Vec<ResultRow> = report::read_tsv(reference_tsv())
        .unwrap()
        .into_iter()
        .filter(|r| ["isp_neqa", "isp_redefine", "truthfulqa_mc1"].contains(&r.task.as_str()))
        .filter(|r| !(r.task == "isp_neqa" && r.model.ends_with("-70m")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let summary = report::write_all(&rows, dir.path()).unwrap();
    assert_eq!(summary.tasks.len(), 3);
    assert_eq!(summary.runs, 64);
    assert_eq!(summary.tests.len(), 3);
    let neqa = &summary.tests[0];
    assert_eq!(neqa.task, "isp_neqa");
    assert_eq!(neqa.fit.unwrap().df, 56 - 4);
    let table = read(dir.path().join(report::STATS_TSV));
    assert!(table.contains("NeQA\tt(52)="), "{table}");
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert!(dir.path().join(report::FIGURE_PNG).exists() && dir.path().join(report::FIGURE_SVG).exists());

    // Runs at step 0 are kept in the tables but left out of the analysis, with a warning.
    let mut with_step0 = rows.clone();
    with_step0.push(ResultRow {
        revision: "step0".into(),
        ..rows[0].clone()
    });
    let summary = report::write_all(&with_step0, dir.path()).unwrap();
    assert_eq!(summary.tests[0].runs, neqa.runs);
    assert!(summary.warnings.iter().any(|w| w.contains("step0")), "{:?}", summary.warnings);

    // Rows from elsewhere (a results store) are checked too.
    let mut bad = rows.clone();
    bad[5].accuracy = 1.5;
    let err = report::write_all(&bad, dir.path()).unwrap_err().to_string();
    assert!(err.contains("result 6") && err.contains("between 0 and 1"), "{err}");
    bad[5] = bad[4].clone();
    let err = report::write_all(&bad, dir.path()).unwrap_err().to_string();
    assert!(err.contains("results 5 and 6"), "{err}");
    assert!(report::write_all(&[], dir.path()).is_err());
}

/// Write `body` under a header to a temp file and expect `read_tsv` to fail naming `line` and `needle`.
fn expect_row_error(dir: &Path, body: &str, line: usize, needle: &str) {
    let path = dir.join("bad.tsv");
    std::fs::write(&path, body).unwrap();
    let err = report::read_tsv(&path).unwrap_err().to_string();
    assert!(err.contains(&format!("bad.tsv:{line}:")), "expected line {line}: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

#[test]
fn bad_tsv_rows_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let h = "ModelName\tModelRevision\tTask\tAccuracy\tAccuracy_SE\n";
    let ok = "EleutherAI/pythia-1b\tstep2000\tisp_neqa\t0.5\t0.02\n";
    expect_row_error(
        d,
        &format!("{h}{ok}EleutherAI/pythia-1b\tstep4000\tisp_neqa\tabc\t0.02\n"),
        3,
        "Accuracy `abc`: expected a finite number",
    );
    expect_row_error(
        d,
        &format!("{h}{ok}EleutherAI/pythia-1b\tstep4000\tisp_neqa\t0.5\n"),
        3,
        "expected 5 tab-separated fields",
    );
    expect_row_error(
        d,
        &format!("{h}{ok}\nEleutherAI/pythia-1b\tstep4000\tisp_neqa\t1.2\t0.02\n"),
        4,
        "between 0 and 1",
    );
    expect_row_error(
        d,
        &format!("{h}EleutherAI/pythia-1b\tstep4000\tisp_neqa\t0.5\t-0.1\n"),
        2,
        "expected a finite number >= 0",
    );
    // A model without a size, or a revision that is not stepN, is read (and reported, outside the statistics).
    let odd = d.join("odd.tsv");
    std::fs::write(
        &odd,
        format!("{h}EleutherAI/pythia\tstep4000\tisp_neqa\t0.5\t0.1\nEleutherAI/pythia-1b\tmain\tisp_neqa\t0.5\t0.1\n"),
    )
    .unwrap();
    assert_eq!(report::read_tsv(&odd).unwrap().len(), 2);
    expect_row_error(d, &format!("{h}{ok}{ok}"), 3, "first on line 2");
    expect_row_error(
        d,
        &format!("ModelName\tRevision\tTask\tAccuracy\tAccuracy_SE\n{ok}"),
        1,
        "no `ModelRevision` column",
    );
    expect_row_error(d, "", 1, "expected a header line");

    // Through the CLI: a non-zero exit and the same message.
    let path = d.join("bad.tsv");
    std::fs::write(&path, format!("{h}{ok}EleutherAI/pythia-1b\tstep4000\tisp_neqa\tNaN\t0.02\n")).unwrap();
    let out = lmscore(&["report", "--tsv", path.to_str().unwrap(), "--out", d.join("out").to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.tsv:3:") && stderr.contains("Accuracy `NaN`"), "{stderr}");

    // A results store that does not exist is named.
    let out = lmscore(&[
        "report",
        "--db",
        d.join("results.sqlite").to_str().unwrap(),
        "--out",
        d.join("out").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("results.sqlite") && stderr.contains("results store not found"),
        "{stderr}"
    );
}
