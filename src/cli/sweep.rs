//! `lmscore sweep`: checkpoints x tasks into a results store, resumable (`kill -9` safe) and shardable.

use crate::cli::loglikelihood::EngineArgs;
use lmscore::error::{Error, Result};
use lmscore::hub::{CheckpointSpec, HubOptions};
use lmscore::sweep::{self, Shard, SweepOptions};
use lmscore::tasks::{self, Protocol};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Comma-separated checkpoints: HUB_ID[@REV] (e.g. EleutherAI/pythia-160m@step2000; REV defaults to main)
    /// or NAME[@REV]=DIR for a local model directory.
    #[arg(long, conflicts_with = "preset", required_unless_present = "preset")]
    pub checkpoints: Option<String>,
    /// A named sweep: `emergent-inabilities` = pythia-{70m,160m,410m,1b,1.4b,2.8b,6.9b,12b} at steps
    /// 2000, 4000, 8000, 16000, 32000, 64000, 128000, 143000, with the paper's 12 tasks (unless --tasks).
    #[arg(long)]
    pub preset: Option<String>,
    /// Comma-separated tasks, `all` (the paper's 12) or custom:PATH entries (default: all, or the preset's).
    #[arg(long)]
    pub tasks: Option<String>,
    /// Task data directory laid out like shared/data (files missing there come from the HF cache or the Hub).
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Results store (SQLite); created if missing, resumed if present.
    #[arg(long)]
    pub db: PathBuf,
    #[arg(long, value_enum, default_value = "paper-2023")]
    pub protocol: Protocol,
    /// Run only shard i of N (0-based): whole checkpoints round-robin (checkpoint c goes to shard c % N), or
    /// (checkpoint, task) units round-robin when N exceeds the number of checkpoints. Merge the shards' stores
    /// with `lmscore merge`.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Use only local directories and the local Hugging Face cache; say what is missing instead of downloading.
    #[arg(long)]
    pub offline: bool,
    /// Skip (and count) malformed task rows instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// tokenizer.json to use instead of each checkpoint's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// No progress bars (they are off anyway when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: Args) -> Result<()> {
    let (checkpoints, default_tasks) = match (&args.checkpoints, &args.preset) {
        (Some(list), None) => (CheckpointSpec::parse_list(list)?, "all".to_string()),
        (None, Some(p)) => sweep::preset(p)?,
        _ => return Err(Error::invalid("give either --checkpoints or --preset")),
    };
    let tasks = tasks::expand_task_list(args.tasks.as_deref().unwrap_or(&default_tasks), args.protocol)?;
    let opts = SweepOptions {
        checkpoints,
        tasks,
        protocol: args.protocol,
        engine: args.engine.options()?,
        data_dir: args.data_dir,
        db: args.db,
        shard: args.shard,
        hub: HubOptions {
            offline: args.offline,
            cache_dir: None,
            progress: false,
        },
        skip_bad_rows: args.skip_bad_rows,
        tokenizer: args.tokenizer,
        progress: !args.quiet,
    };
    let summary = sweep::run(&opts)?;
    if !summary.failures.is_empty() {
        return Err(Error::invalid(format!(
            "{} checkpoint(s) failed (their units stay pending; run the same command again to retry):\n  {}",
            summary.failures.len(),
            summary.failures.join("\n  ")
        )));
    }
    Ok(())
}
