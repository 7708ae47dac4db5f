//! `lmscore report`: tables, per-run JSON, Figure 1, the paper's statistics and trend flags from a
//! results table.

use lmscore::error::{Error, Result};
use lmscore::report;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Results table with the columns of the paper's all_results.tsv
    /// (ModelName, ModelRevision, Task, Accuracy, Accuracy_SE).
    #[arg(long, conflicts_with = "db", required_unless_present = "db")]
    pub tsv: Option<PathBuf>,
    /// SQLite results store to report on (instead of --tsv); opened read-only.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// With --db: report only runs of this protocol (paper-2023 or lm-eval-0.4); needed when a store holds both.
    #[arg(long, requires = "db")]
    pub protocol: Option<String>,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Metric of the tasks scored by choice accuracy (all but TruthfulQA, which has mc1 and mc2): acc, or
    /// acc_norm (length-normalised; a store holds both, the paper's TSV only acc).
    #[arg(long, value_parser = ["acc", "acc_norm"], default_value = "acc")]
    pub metric: String,
    /// Report only these tasks (comma-separated ids, e.g. memo_trap,truthfulqa_mc2; the paper's isp_ names work
    /// too): tables, statistics, trend flags and the figure.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Figure formats to write, comma-separated: png (with its DPI set), svg, pdf.
    #[arg(long, default_value = "png,svg,pdf")]
    pub figure_format: String,
}

/// `png,svg` -> the formats, or what was expected.
fn figure_formats(list: &str) -> Result<Vec<report::FigureFormat>> {
    let mut out = Vec::new();
    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let format = match f.to_ascii_lowercase().as_str() {
            "png" => report::FigureFormat::Png,
            "svg" => report::FigureFormat::Svg,
            "pdf" => report::FigureFormat::Pdf,
            other => {
                return Err(Error::invalid(format!(
                    "--figure-format {other}: expected png, svg or pdf (comma-separated)"
                )))
            }
        };
        if !out.contains(&format) {
            out.push(format);
        }
    }
    Ok(out)
}

/// Keep the rows of the tasks in `list` (either `memo_trap` or the paper's `isp_memo_trap`); a task with no
/// rows is an error naming the tasks there are.
fn select_tasks(rows: Vec<report::ResultRow>, list: &str) -> Result<Vec<report::ResultRow>> {
    let wanted: Vec<&str> = list.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    let matches = |task: &str, w: &str| task == w || task.strip_prefix("isp_") == Some(w);
    let mut present: Vec<&str> = rows.iter().map(|r| r.task.as_str()).collect();
    present.sort();
    present.dedup();
    if let Some(w) = wanted.iter().find(|w| !present.iter().any(|t| matches(t, w))) {
        return Err(Error::invalid(format!(
            "--tasks: no results for task `{w}`; the results have {}",
            present.join(", ")
        )));
    }
    Ok(rows.into_iter().filter(|r| wanted.iter().any(|w| matches(&r.task, w))).collect())
}

pub fn run(args: Args) -> Result<()> {
    let mut opts = report::ReportOptions::default();
    opts.figure.formats = figure_formats(&args.figure_format)?;
    opts.figure.metric = args.metric.clone();
    let mut timings = Vec::new();
    let rows = match (&args.tsv, &args.db) {
        (Some(tsv), _) => {
            if args.metric != "acc" {
                return Err(Error::file(
                    tsv,
                    format!(
                        "--metric {}: a results table holds one metric (acc); report on a store for acc_norm",
                        args.metric
                    ),
                ));
            }
            report::read_tsv(tsv)?
        }
        (None, Some(db)) => {
            if !db.exists() {
                return Err(Error::file(db, "results store not found (make one with `lmscore sweep --db FILE`)"));
            }
            let store = lmscore::store::Store::open_read_only(db)?;
            let rows = store.report_rows_with(args.protocol.as_deref(), &args.metric)?;
            if rows.is_empty() {
                return Err(Error::file(db, "the store holds no completed task results to report on"));
            }
            opts.items = Some(store.report_items(args.protocol.as_deref(), &args.metric)?);
            opts.runs = Some(store.report_run_details(args.protocol.as_deref())?);
            timings = store.timings()?;
            rows
        }
        (None, None) => return Err(Error::invalid("give the results to report with --tsv FILE")),
    };
    let rows = match &args.tasks {
        Some(list) => select_tasks(rows, list)?,
        None => rows,
    };
    let summary = report::write_report(&rows, &opts, &args.out)?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    if opts.items.as_ref().is_none_or(|i| i.is_empty()) {
        eprintln!(
            "note: no per-item data (a TSV, or a store from before schema version 3): the trend tests are the unpaired approximation; \
             a store from `lmscore sweep` gives paired tests"
        );
    }
    print!("{}", report::format_tests_table(&summary.tests));
    if !timings.is_empty() {
        print!("\n{}", report::format_timings(&timings));
    }
    let inverse = summary.trends.iter().filter(|t| t.inverse_scaling).count();
    let shaped = summary
        .trends
        .iter()
        .filter(|t| matches!(t.shape, report::Shape::U | report::Shape::InvertedU))
        .count();
    eprintln!(
        "{} results, {} runs, {} tasks; trend flags (BH q < {}): {inverse} inverse scaling over training, {shaped} U-shaped or inverted-U of {} (task, model) pairs",
        summary.rows,
        summary.runs,
        summary.tasks.len(),
        report::ALPHA,
        summary.trends.len()
    );
    eprintln!("wrote {} files to {}", summary.files.len(), args.out.display());
    Ok(())
}
