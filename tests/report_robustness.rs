//! `lmscore report` never aborts on a valid store (issue 13 item 3): revisions that are not `stepN` and
//! models without a Pythia size are reported but left out of the statistics; `pythia-70m` and
//! `EleutherAI/pythia-70m` are two series with two labels; per-run JSON names are unique; stale outputs
//! are not mixed with new ones; a one-document task reports its standard error as not available; training
//! tokens never wrap. And (issue 11 item 2) the per-run JSON is lm-eval 0.4's results layout with acc_norm.

use lmscore::report::{self, ReportOptions, ResultRow};
use lmscore::store::{DocRow, MetricRow, RunKey, Store, TaskRecord};
use std::path::Path;
use std::process::Command;

fn lmscore(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lmscore")).args(args).output().expect("run lmscore")
}

fn key(model: &str, rev: &str) -> RunKey {
    RunKey {
        model: model.into(),
        revision: rev.into(),
        dtype: "f32".into(),
        protocol: "paper-2023".into(),
        device: "cpu".into(),
    }
}

/// A task of `n_docs` documents with accuracy `acc` (docs alternate 1/0) and acc_norm `acc / 2`; the standard
/// errors are undefined (None) for one document.
fn record(task: &str, acc: f64, n_docs: u64) -> TaskRecord {
    let se = (n_docs > 1).then_some(0.05);
    TaskRecord {
        task: task.into(),
        n_docs,
        metrics: vec![
            MetricRow {
                name: "acc".into(),
                value: acc,
                stderr: se,
            },
            MetricRow {
                name: "acc_norm".into(),
                value: acc / 2.0,
                stderr: se,
            },
        ],
        docs: (0..n_docs)
            .map(|d| DocRow {
                metric: "acc".into(),
                doc: d,
                value: ((d + (acc * 10.0) as u64) % 2) as f64,
                chance: 0.5,
            })
            .collect(),
        ..Default::default()
    }
}

fn rows(spec: &[(&str, &str)]) -> Vec<ResultRow> {
    spec.iter()
        .enumerate()
        .map(|(i, (m, r))| ResultRow {
            model: m.to_string(),
            revision: r.to_string(),
            task: "isp_neqa".into(),
            accuracy: 0.3 + 0.01 * i as f64,
            accuracy_se: 0.02,
        })
        .collect()
}

fn json_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(report::RUN_JSON_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_store_with_mixed_names_revisions_and_a_one_document_task_reports() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("results.db");
    {
        let mut store = Store::open(&db).unwrap();
        let runs = [
            ("EleutherAI/pythia-70m", "step1000", 0.6),
            ("EleutherAI/pythia-70m", "step2000", 0.5),
            ("EleutherAI/pythia-70m", "step3000", 0.4),
            ("pythia-70m", "step1000", 0.3),
            ("pythia-70m", "step2000", 0.3),
            ("pythia-70m", "step3000", 0.2),
            ("EleutherAI/pythia-160m", "step1000", 0.5),
            ("EleutherAI/pythia-160m", "step2000", 0.5),
            ("EleutherAI/pythia-160m", "step3000", 0.6),
            ("EleutherAI/pythia-70m", "main", 0.4),
            ("EleutherAI/pythia-160m", "0123abcd", 0.6),
            ("gpt2", "step1000", 0.5),
        ];
        for (m, r, acc) in runs {
            store.record(&key(m, r), &record("memo_trap", acc, 20), false).unwrap();
            store
                .record(&key(m, r), &record("neqa", if acc > 0.45 { 1.0 } else { 0.0 }, 1), false)
                .unwrap();
        }
    }
    let out = dir.path().join("out");
    let o = lmscore(&[
        "report",
        "--db",
        db.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--figure-format",
        "svg",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "report failed:\n{}\n{stderr}", String::from_utf8_lossy(&o.stdout));
    // Runs without a size or a step are named in a warning, and kept in the table.
    assert!(
        stderr.contains("warning:") && stderr.contains("EleutherAI/pythia-70m@main") && stderr.contains("gpt2@step1000"),
        "{stderr}"
    );
    assert!(stderr.contains("EleutherAI/pythia-160m@0123abcd"), "{stderr}");
    let table = std::fs::read_to_string(out.join(report::RESULTS_TSV)).unwrap();
    assert!(table.contains("EleutherAI/pythia-70m\tmain\tisp_memo_trap\t0.4\t0.05\n"), "{table}");
    assert!(table.contains("gpt2\tstep1000\tisp_neqa\t1.0\tNA\n"), "{table}");
    // The table reads back, NA included.
    let back = report::read_tsv(out.join(report::RESULTS_TSV)).unwrap();
    assert_eq!(back.len(), 24);
    assert!(back.iter().filter(|r| r.task == "isp_neqa").all(|r| r.accuracy_se.is_nan()));

    // One JSON per run (12), in lm-eval 0.4's layout with acc and acc_norm; N/A where undefined.
    let names = json_names(&out);
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(
        names.contains(&"pythia-70m_step1000.json".to_string()) && names.contains(&"EleutherAI_pythia-70m_step1000.json".to_string()),
        "{names:?}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(report::RUN_JSON_DIR).join("EleutherAI_pythia-70m_main.json")).unwrap()).unwrap();
    let memo = &doc["results"]["isp_memo_trap"];
    assert_eq!(memo["alias"], "isp_memo_trap");
    assert_eq!(memo["acc,none"], 0.4);
    assert_eq!(memo["acc_stderr,none"], 0.05);
    assert_eq!(memo["acc_norm,none"], 0.2);
    assert_eq!(memo["acc_norm_stderr,none"], 0.05);
    assert_eq!(doc["results"]["isp_neqa"]["acc_stderr,none"], "N/A");
    assert_eq!(doc["results"]["isp_neqa"]["acc_norm_stderr,none"], "N/A");
    assert_eq!(doc["n-samples"]["isp_memo_trap"]["effective"], 20);
    assert_eq!(doc["n-samples"]["isp_neqa"]["original"], 1);
    assert_eq!(doc["higher_is_better"]["isp_memo_trap"]["acc_norm"], true);
    assert_eq!(doc["n-shot"]["isp_memo_trap"], 0);
    assert!(doc["versions"].get("isp_neqa").is_some() && doc["configs"].get("isp_neqa").is_some());
    assert_eq!(doc["config"]["model_args"], "pretrained=EleutherAI/pythia-70m,revision=main");
    assert!(doc["date"].is_number());

    // No NaN printed as a number anywhere.
    for f in all_files(&out) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).to_string();
        assert!(
            !text.contains("NaN") && !text.contains("nan,") && !text.contains("\tnan"),
            "{}:\n{text}",
            f.display()
        );
    }
    // The two 70m models are two series with two labels.
    let svg = std::fs::read_to_string(out.join(report::FIGURE_SVG)).unwrap();
    let labels: Vec<&str> = svg.lines().map(str::trim).collect();
    assert!(
        labels.contains(&"EleutherAI/pythia-70m") && labels.contains(&"pythia-70m"),
        "labels in the figure:\n{svg}"
    );
}

#[test]
fn one_document_task_from_rows_reports_not_available() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = rows(&[
        ("EleutherAI/pythia-70m", "step1000"),
        ("EleutherAI/pythia-70m", "step2000"),
        ("EleutherAI/pythia-160m", "step1000"),
        ("EleutherAI/pythia-160m", "step2000"),
    ]);
    for r in &mut rs {
        r.accuracy = 1.0;
        r.accuracy_se = f64::NAN;
    }
    let summary = report::write_all(&rs, dir.path()).unwrap();
    assert_eq!(summary.runs, 4);
    for f in all_files(dir.path())
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x != "png" && x != "pdf"))
    {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.contains("NaN"), "{}:\n{text}", f.display());
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(report::RUN_JSON_DIR).join("pythia-70m_step1000.json")).unwrap()).unwrap();
    assert_eq!(doc["results"]["isp_neqa"]["acc_stderr,none"], "N/A");
    // From a results table the documents are unknown: null, not a made-up count.
    assert!(doc["n-samples"]["isp_neqa"].is_null());
    // A TSV with NA (or N/A, or nothing) as the standard error reads.
    let tsv = dir.path().join("na.tsv");
    std::fs::write(
        &tsv,
        "ModelName\tModelRevision\tTask\tAccuracy\tAccuracy_SE\nm\tmain\tt\t1.0\tNA\nm\tstep1\tt\t0.0\tN/A\nm\tstep2\tt\t0.0\t\n",
    )
    .unwrap();
    let back = report::read_tsv(&tsv).unwrap();
    assert!(back.iter().all(|r| r.accuracy_se.is_nan()));
    assert_eq!(report::format_tsv(&back).lines().nth(1), Some("m\tmain\tt\t1.0\tNA"));
}

#[test]
fn per_run_json_names_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let rs = rows(&[
        ("EleutherAI/pythia-70m", "step1000"),
        ("pythia-70m", "step1000"),
        ("other/pythia-70m", "step1000"),
        ("Pythia-70M", "step1000"),
        ("EleutherAI/pythia-70m", "main"),
        ("x/y", "a/b"),
        ("x_y", "a_b"),
    ]);
    let summary = report::write_all(&rs, dir.path()).unwrap();
    assert_eq!(summary.runs, 7);
    let names = json_names(dir.path());
    assert_eq!(names.len(), 7, "{names:?}");
    let lower: std::collections::HashSet<String> = names.iter().map(|n| n.to_lowercase()).collect();
    assert_eq!(lower.len(), 7, "names differ only by case: {names:?}");
    // Every run's JSON names its own model and revision.
    let mut args: Vec<String> = names
        .iter()
        .map(|n| {
            let d: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.path().join(report::RUN_JSON_DIR).join(n)).unwrap()).unwrap();
            d["config"]["model_args"].as_str().unwrap().to_string()
        })
        .collect();
    args.sort();
    args.dedup();
    assert_eq!(args.len(), 7);
}

#[test]
fn stale_outputs_are_not_mixed_with_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rs = rows(&[
        ("EleutherAI/pythia-70m", "step1000"),
        ("EleutherAI/pythia-70m", "step2000"),
        ("EleutherAI/pythia-160m", "step1000"),
        ("EleutherAI/pythia-160m", "step2000"),
    ]);
    report::write_all(&rs, d).unwrap();
    assert_eq!(json_names(d).len(), 4);
    assert!(d.join(report::FIGURE_PDF).exists());
    std::fs::write(d.join("notes.txt"), "mine").unwrap();
    std::fs::write(d.join(report::RUN_JSON_DIR).join("README"), "mine").unwrap();

    // Fewer runs and only a PNG this time: the old JSON and figures go, the user's files stay.
    let mut opts = ReportOptions::default();
    opts.figure.formats = vec![report::FigureFormat::Png];
    let summary = report::write_report(&rs[..2], &opts, d).unwrap();
    assert!(summary.warnings.iter().all(|w| !w.contains("Pythia size")), "{:?}", summary.warnings);
    assert_eq!(
        json_names(d),
        vec!["README".to_string(), "pythia-70m_step1000.json".into(), "pythia-70m_step2000.json".into()]
    );
    assert!(!d.join(report::FIGURE_PDF).exists() && !d.join(report::FIGURE_SVG).exists() && d.join(report::FIGURE_PNG).exists());
    assert_eq!(std::fs::read_to_string(d.join("notes.txt")).unwrap(), "mine");
    // A report that fails on its input removes nothing.
    let mut bad = rs.clone();
    bad[0].accuracy = 2.0;
    assert!(report::write_all(&bad, d).is_err());
    assert!(d.join(report::FIGURE_PNG).exists() && d.join(report::RESULTS_TSV).exists());
}

#[test]
fn unanalysable_runs_only_are_reported_without_a_figure() {
    let dir = tempfile::tempdir().unwrap();
    let rs = rows(&[("gpt2", "main"), ("EleutherAI/pythia-70m", "main"), ("EleutherAI/pythia", "step1000")]);
    let summary = report::write_all(&rs, dir.path()).unwrap();
    assert_eq!(summary.runs, 3);
    assert!(
        summary.warnings.iter().any(|w| w.contains("3 run(s)") && w.contains("gpt2@main")),
        "{:?}",
        summary.warnings
    );
    assert!(summary.warnings.iter().any(|w| w.contains("no figure")), "{:?}", summary.warnings);
    assert!(!dir.path().join(report::FIGURE_PNG).exists());
    assert_eq!(report::read_tsv(dir.path().join(report::RESULTS_TSV)).unwrap(), rs);
}

#[test]
fn training_tokens_never_wrap() {
    let r = ResultRow {
        model: "EleutherAI/pythia-70m".into(),
        revision: "step9000000000000".into(), // x 2,097,152 is past u64::MAX
        task: "isp_neqa".into(),
        accuracy: 0.5,
        accuracy_se: 0.01,
    };
    assert_eq!(r.tokens().unwrap(), 9e12 * 2_097_152.0);
    assert_eq!(report::step_tokens(u64::MAX), u64::MAX as f64 * 2_097_152.0);
    let mut rs = vec![
        r.clone(),
        ResultRow {
            revision: "step18446744073709551615".into(),
            ..r.clone()
        },
    ];
    rs.push(ResultRow {
        revision: "step1000".into(),
        ..r.clone()
    });
    rs.push(ResultRow {
        model: "EleutherAI/pythia-160m".into(),
        revision: "step1000".into(),
        ..r.clone()
    });
    rs.push(ResultRow {
        model: "EleutherAI/pythia-160m".into(),
        revision: "step2000".into(),
        ..r.clone()
    });
    // More digits than a u64 holds: not a step, reported but left out.
    rs.push(ResultRow {
        revision: "step99999999999999999999999".into(),
        ..r
    });
    let dir = tempfile::tempdir().unwrap();
    let summary = report::write_all(&rs, dir.path()).unwrap();
    assert_eq!(summary.runs, 6);
    assert!(
        summary.warnings.iter().any(|w| w.contains("step99999999999999999999999")),
        "{:?}",
        summary.warnings
    );
}
