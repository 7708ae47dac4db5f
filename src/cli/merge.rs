//! `lmscore merge --into A.db B.db C.db`: combine results stores (e.g. the shards of a sweep).

use lmscore::error::{Error, Result};
use lmscore::store::Store;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store to merge into (created if missing).
    #[arg(long)]
    pub into: PathBuf,
    /// Stores to merge from.
    #[arg(required = true)]
    pub from: Vec<PathBuf>,
}

/// Idempotent: tasks already present with the same values are skipped. A task present in both stores with
/// different values is a conflict: reported, left as it is in the target, and the command exits non-zero.
pub fn run(args: Args) -> Result<()> {
    let mut into = Store::open(&args.into)?;
    let mut conflicts = Vec::new();
    for src in &args.from {
        let r = into.merge_from(src)?;
        eprintln!(
            "{}: {} tasks added, {} already present, {} conflicts",
            src.display(),
            r.added,
            r.identical,
            r.conflicts.len()
        );
        conflicts.extend(r.conflicts.into_iter().map(|c| format!("{}: {c}", src.display())));
    }
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{} conflicting task(s) were not merged (the values in {} were kept):\n  {}",
            conflicts.len(),
            args.into.display(),
            conflicts.join("\n  ")
        )))
    }
}
