//! `lmscore merge --into A.db B.db C.db`: combine results stores (e.g. the shards of a sweep).

use lmscore::error::{Error, Result};
use lmscore::store::Store;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store to merge into (created if missing; must be an lmscore store or empty otherwise).
    #[arg(long)]
    pub into: PathBuf,
    /// Stores to merge from (opened read-only).
    #[arg(required = true)]
    pub from: Vec<PathBuf>,
}

/// Idempotent: tasks already present with the same values are skipped. A task present in both stores with
/// different values is a conflict: reported, left as it is in the target, and the command exits non-zero.
/// Every source is opened (read-only) and checked before the target is touched; a target this command
/// created is removed again if the merge fails.
pub fn run(args: Args) -> Result<()> {
    let sources = args.from.iter().map(Store::open_read_only).collect::<Result<Vec<_>>>()?;
    let created = !args.into.exists();
    let result = merge(&args, &sources);
    if result.is_err() && created {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = args.into.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
    let conflicts = result?;
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

/// Merge every source into `--into`; the conflicts, one line each.
fn merge(args: &Args, sources: &[Store]) -> Result<Vec<String>> {
    let mut into = Store::open(&args.into)?;
    let mut conflicts = Vec::new();
    for src in sources {
        let r = into.merge_store(src)?;
        eprintln!(
            "{}: {} tasks added, {} already present, {} conflicts",
            src.path().display(),
            r.added,
            r.identical,
            r.conflicts.len()
        );
        conflicts.extend(r.conflicts.into_iter().map(|c| format!("{}: {c}", src.path().display())));
    }
    Ok(conflicts)
}
