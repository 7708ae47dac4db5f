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
    /// Results store (SQLite); created if missing or empty, resumed if present. Another application's
    /// database is refused.
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
    /// No progress bars or progress lines (only one line per unit scored).
    #[arg(long)]
    pub quiet: bool,
    /// When stderr is not a terminal (a Slurm log), print a plain progress line with rates and ETAs every
    /// SECONDS.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub progress_interval: f64,
    /// Score every unit again, even those the store holds from the same checkpoint and task data (the stored
    /// results are replaced).
    #[arg(long)]
    pub force: bool,
    /// Fetch and score nothing: check the task data, then print the units left, the tokens their plans compute,
    /// the bytes to download and an estimate of the scoring time on the chosen device.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: Args) -> Result<()> {
    let (checkpoints, default_tasks) = match (&args.checkpoints, &args.preset) {
        (Some(list), None) => (CheckpointSpec::parse_list(list)?, "all".to_string()),
        (None, Some(p)) => sweep::preset(p)?,
        _ => return Err(Error::invalid("give either --checkpoints or --preset")),
    };
    if !(args.progress_interval.is_finite() && args.progress_interval >= 0.0) {
        return Err(Error::invalid(format!(
            "--progress-interval {}: expected a number of seconds >= 0",
            args.progress_interval
        )));
    }
    let progress_interval = std::time::Duration::from_secs_f64(args.progress_interval.min(1e9));
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
        progress_interval,
        force: args.force,
    };
    if args.dry_run {
        print!("{}", format_dry_run(&sweep::dry_run(&opts)?, &opts));
        return Ok(());
    }
    let summary = sweep::run(&opts)?;
    match summary.failures.len() {
        0 => Ok(()),
        n => Err(Error::invalid(format!(
            "{n} checkpoint{} failed (the FAILED lines above say why); {} units stay pending: run the same command again to retry",
            if n == 1 { "" } else { "s" },
            if n == 1 { "its" } else { "their" }
        ))),
    }
}

/// `1.5 GB`, `340 MB`.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.0} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{:.0} KiB", n as f64 / 1024.0),
    }
}

/// `3 h 20 min`, `12 min`, `45 s`.
fn duration(secs: f64) -> String {
    match secs {
        s if !s.is_finite() => "unknown".into(),
        s if s >= 3600.0 => format!("{} h {:02} min", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64),
        s if s >= 60.0 => format!("{:.0} min", s / 60.0),
        s => format!("{s:.0} s"),
    }
}

fn format_dry_run(d: &sweep::DryRun, opts: &SweepOptions) -> String {
    let mut s = String::new();
    let shard = opts.shard.map(|s| format!(" (shard {s})")).unwrap_or_default();
    s += &format!("dry run{shard}: nothing fetched or scored\n");
    s += &format!("task data: checked ({} tasks, tokenized with {})\n", d.tasks.len(), d.tokenizer.display());
    for (name, docs, reqs) in &d.tasks {
        s += &format!("  {name}: {docs} documents, {reqs} requests\n");
    }
    s += &format!(
        "units: {} in this sweep, {} already complete in {}, {} to score over {} checkpoint(s)\n",
        d.units,
        d.already_done,
        opts.db.display(),
        d.units - d.already_done,
        d.checkpoints
    );
    let ratio = if d.computed_tokens > 0 {
        d.naive_tokens as f64 / d.computed_tokens as f64
    } else {
        f64::NAN
    };
    s += &format!(
        "tokens to compute: {} (the plans' count with prefix sharing; {} if each request were scored alone, x{ratio:.1})\n",
        d.computed_tokens, d.naive_tokens
    );
    s += &format!(
        "download: {} checkpoint(s), about {} (estimated from the model names: fp16 weights and Pythia's causal-mask buffers; the Hub is not asked); {} already on disk\n",
        d.to_download,
        bytes(d.download_bytes),
        bytes(d.local_bytes)
    );
    s += &format!(
        "estimated scoring time on {}: {} ({:.3e} FLOP = 2 x parameters x tokens, at {:.2e} FLOP/s {}); downloads and loading come on top\n",
        opts.engine.device_spec(),
        duration(d.seconds()),
        d.flops,
        d.flops_per_second,
        d.rate_source
    );
    s
}
