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
}

pub fn run(args: Args) -> Result<()> {
    let rows = match (&args.tsv, &args.db) {
        (Some(tsv), _) => report::read_tsv(tsv)?,
        (None, Some(db)) => {
            if !db.exists() {
                return Err(Error::file(db, "results store not found (make one with `lmscore sweep --db FILE`)"));
            }
            let rows = lmscore::store::Store::open_read_only(db)?.report_rows(args.protocol.as_deref())?;
            if rows.is_empty() {
                return Err(Error::file(db, "the store holds no completed task results to report on"));
            }
            rows
        }
        (None, None) => return Err(Error::invalid("give the results to report with --tsv FILE")),
    };
    let summary = report::write_all(&rows, &args.out)?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", report::format_tests_table(&summary.tests));
    let inverse = summary.trends.iter().filter(|t| t.inverse_scaling).count();
    let shaped = summary
        .trends
        .iter()
        .filter(|t| matches!(t.shape, report::Shape::U | report::Shape::InvertedU))
        .count();
    eprintln!(
        "{} results, {} runs, {} tasks; trend flags (p < {}): {inverse} inverse scaling over training, {shaped} U-shaped or inverted-U of {} (task, model) pairs",
        summary.rows,
        summary.runs,
        summary.tasks.len(),
        report::ALPHA,
        summary.trends.len()
    );
    eprintln!("wrote {} files to {}", summary.files.len(), args.out.display());
    Ok(())
}
