//! Sweeps: many checkpoints x many tasks into one results store, resumable and shardable.
//!
//! ```text
//! checkpoints x tasks -> (checkpoint, task) units -> this shard's units -> skip the complete ones
//!   -> one checkpoint at a time: [background thread: fetch, open and read the NEXT checkpoint into memory]
//!                                 load on the device -> load tasks -> score task group by group
//!                                 -> each task's requests + metrics in ONE store transaction
//! ```
//!
//! Resuming: a unit is complete when the store says so ([`Store::is_done`]); everything else is redone
//! from scratch. A sweep killed at any moment (even `kill -9`) and started again with the same arguments
//! finishes the work without losing or duplicating a row.
//!
//! Sharding (`--shard i/N`, e.g. a Slurm job array with `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`):
//! checkpoints are numbered 0.. in sweep order (the preset: size-major, then step) and tasks 0.. in task-list
//! order. With N <= #checkpoints, shard i takes every checkpoint c with `c % N == i`, all its tasks: each
//! checkpoint is downloaded and loaded by exactly one shard, and round-robin spreads the model sizes evenly.
//! With more shards than checkpoints, units are numbered checkpoint-major, `u = c * #tasks + t`, and shard i
//! takes the units with `u % N == i`. Either way the N shards partition the units exactly; each shard writes
//! its own store and `lmscore merge` combines them.

use crate::checkpoint::Checkpoint;
use crate::engine::{Device, Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::hub::{self, CheckpointSpec, HubOptions};
use crate::store::{RunKey, Store};
use crate::tasks::{self, LoadOptions, LoadedTask, Protocol};
use crate::tokenizer::Tokenizer;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

/// The preset of "Emergent inabilities?" (2023): 8 Pythia sizes x 8 checkpoints x 12 tasks.
pub const PRESET_EMERGENT_INABILITIES: &str = "emergent-inabilities";

/// The checkpoints and task list of a named preset.
pub fn preset(name: &str) -> Result<(Vec<CheckpointSpec>, String)> {
    match name {
        PRESET_EMERGENT_INABILITIES => Ok((hub::emergent_inabilities_checkpoints(), "all".to_string())),
        other => Err(Error::invalid(format!(
            "unknown preset `{other}`; known presets: {PRESET_EMERGENT_INABILITIES}"
        ))),
    }
}

/// `--shard i/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let bad = || format!("--shard {s}: expected i/N with 0 <= i < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The (checkpoint, task) units of a shard, checkpoint-major (see the module docs for the rule).
pub fn shard_units(n_checkpoints: usize, n_tasks: usize, shard: Option<Shard>) -> Vec<(usize, usize)> {
    let all = (0..n_checkpoints).flat_map(|c| (0..n_tasks).map(move |t| (c, t)));
    match shard {
        None => all.collect(),
        Some(Shard { index, count }) if count <= n_checkpoints => all.filter(|&(c, _)| c % count == index).collect(),
        Some(Shard { index, count }) => all.filter(|&(c, t)| (c * n_tasks + t) % count == index).collect(),
    }
}

#[derive(Clone, Debug)]
pub struct SweepOptions {
    pub checkpoints: Vec<CheckpointSpec>,
    /// Task names, already expanded (`tasks::expand_task_list`).
    pub tasks: Vec<String>,
    pub protocol: Protocol,
    pub engine: EngineOptions,
    pub data_dir: PathBuf,
    pub db: PathBuf,
    pub shard: Option<Shard>,
    pub hub: HubOptions,
    pub skip_bad_rows: bool,
    /// Tokenizer to use instead of each checkpoint's `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
    /// Draw progress bars (they are also hidden whenever stderr is not a terminal).
    pub progress: bool,
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepSummary {
    /// Units in this shard.
    pub units: usize,
    /// Units found complete in the store at the start.
    pub already_done: usize,
    /// Units scored and stored by this run.
    pub scored: usize,
    /// One line per checkpoint that failed (fetch, load or scoring); its units stay pending.
    pub failures: Vec<String>,
}

/// The run key of a checkpoint under these options. The dtype is the compute dtype: `f32` on the CPU,
/// the `--dtype` given on CUDA, or `auto` (the checkpoint's stored dtype) when none was given.
pub fn run_key(spec: &CheckpointSpec, protocol: Protocol, engine: &EngineOptions) -> RunKey {
    let dtype = match (engine.device, engine.dtype) {
        (Device::Cpu, _) => "f32".to_string(),
        (_, Some(d)) => d.name().to_ascii_lowercase(),
        (_, None) => "auto".to_string(),
    };
    let device = match engine.device {
        Device::Cpu => "cpu",
        Device::Cuda => "cuda",
    };
    RunKey {
        model: spec.model.clone(),
        revision: spec.revision.clone(),
        dtype,
        protocol: protocol.name().into(),
        device: device.into(),
    }
}

/// A checkpoint fetched and opened by the background thread.
type Fetched = (usize, Result<(PathBuf, Checkpoint)>);

/// Run a sweep. Per-checkpoint failures are collected in the summary (the other checkpoints still run);
/// store and task-data errors stop the sweep.
pub fn run(opts: &SweepOptions) -> Result<SweepSummary> {
    if opts.checkpoints.is_empty() || opts.tasks.is_empty() {
        return Err(Error::invalid("a sweep needs at least one checkpoint and one task"));
    }
    let mut store = Store::open(&opts.db)?;
    let keys: Vec<RunKey> = opts.checkpoints.iter().map(|c| run_key(c, opts.protocol, &opts.engine)).collect();
    for (i, k) in keys.iter().enumerate() {
        if let Some(j) = keys[..i].iter().position(|o| o == k) {
            return Err(Error::invalid(format!(
                "checkpoints {} and {} are both {}@{}: give local checkpoints distinct NAME@REV",
                opts.checkpoints[j], opts.checkpoints[i], k.model, k.revision
            )));
        }
    }
    let units = shard_units(opts.checkpoints.len(), opts.tasks.len(), opts.shard);
    let mut summary = SweepSummary {
        units: units.len(),
        ..Default::default()
    };
    // Pending task indices per checkpoint, in order.
    let mut pending: Vec<(usize, Vec<usize>)> = Vec::new();
    for &(c, t) in &units {
        if store.is_done(&keys[c], &opts.tasks[t])? {
            summary.already_done += 1;
            continue;
        }
        match pending.last_mut() {
            Some((pc, ts)) if *pc == c => ts.push(t),
            _ => pending.push((c, vec![t])),
        }
    }

    let visible = opts.progress && std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let log = |msg: String| {
        if visible {
            let _ = multi.println(&msg);
        } else {
            eprintln!("{msg}");
        }
    };
    let shard_note = opts.shard.map(|s| format!(" (shard {s})")).unwrap_or_default();
    log(format!(
        "sweep{shard_note}: {} units ({} checkpoints x {} tasks in this shard), {} already complete in {}",
        units.len(),
        units.iter().map(|u| u.0).collect::<std::collections::BTreeSet<_>>().len(),
        opts.tasks.len(),
        summary.already_done,
        opts.db.display()
    ));
    let sweep_bar = multi.add(ProgressBar::new(units.len() as u64));
    sweep_bar.set_style(
        ProgressStyle::with_template("sweep {bar:30} {pos}/{len} units [{elapsed} < {eta}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    sweep_bar.set_position(summary.already_done as u64);

    // The background thread fetches and opens checkpoints in order; the rendezvous channel makes it hold at
    // most one finished checkpoint (the next) while the current one is scored.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Fetched>(0);
    let to_fetch: Vec<(usize, CheckpointSpec)> = pending.iter().map(|(c, _)| (*c, opts.checkpoints[*c].clone())).collect();
    let hub_opts = opts.hub.clone();
    let fetcher = std::thread::Builder::new()
        .name("lmscore-fetch".into())
        .spawn(move || {
            for (c, spec) in to_fetch {
                let r = hub::resolve(&spec, &hub_opts).and_then(|dir| {
                    let ckpt = Checkpoint::open(&dir)?;
                    warm_page_cache(&dir);
                    Ok((dir, ckpt))
                });
                if tx.send((c, r)).is_err() {
                    return; // the sweep stopped
                }
            }
        })
        .map_err(|e| Error::invalid(format!("cannot start the checkpoint fetch thread: {e}")))?;

    // Tasks are tokenized once per distinct tokenizer (every Pythia checkpoint shares one).
    let mut task_cache: Option<(Vec<u8>, Vec<LoadedTask>)> = None;
    for (c, task_idx) in &pending {
        let spec = &opts.checkpoints[*c];
        let key = &keys[*c];
        sweep_bar.set_message(format!("{spec}"));
        let fetched = rx
            .recv()
            .map_err(|_| Error::invalid("the checkpoint fetch thread stopped unexpectedly"))?;
        debug_assert_eq!(fetched.0, *c);
        let (dir, ckpt) = match fetched.1 {
            Ok(x) => x,
            Err(e) => {
                log(format!("FAILED {spec}: {e}"));
                summary.failures.push(format!("{spec}: {e}"));
                continue;
            }
        };
        // Tasks for this tokenizer.
        let tok_path = opts.tokenizer.clone().unwrap_or_else(|| ckpt.tokenizer_path());
        let tok_bytes = crate::error::read_bounded(&tok_path, crate::error::MAX_METADATA_BYTES)?;
        if task_cache.as_ref().is_none_or(|(b, _)| *b != tok_bytes) {
            let tokenizer = Tokenizer::from_file(&tok_path)?;
            let lo = LoadOptions {
                data_dir: opts.data_dir.clone(),
                skip_bad_rows: opts.skip_bad_rows,
                offline: opts.hub.offline,
            };
            let loaded = opts
                .tasks
                .iter()
                .map(|t| tasks::load_task(t, opts.protocol, &tokenizer, &lo))
                .collect::<Result<Vec<_>>>()?;
            task_cache = Some((tok_bytes, loaded));
        }
        let all_tasks = &task_cache.as_ref().expect("loaded above").1;
        let todo: Vec<&LoadedTask> = task_idx.iter().map(|&t| &all_tasks[t]).collect();

        match score_checkpoint(&ckpt, key, &todo, opts, &mut store, &multi, &sweep_bar, &log) {
            Ok(n) => summary.scored += n,
            Err(ScoreError::Store(e)) => return Err(e),
            Err(ScoreError::Checkpoint(e, n)) => {
                summary.scored += n;
                log(format!("FAILED {spec} ({}): {e}", dir.display()));
                summary.failures.push(format!("{spec}: {e}"));
                continue;
            }
        }
        // The run is finished when every task of the sweep is complete for it (other shards included).
        if opts
            .tasks
            .iter()
            .map(|t| store.is_done(key, t))
            .collect::<Result<Vec<bool>>>()?
            .into_iter()
            .all(|d| d)
        {
            store.finish_run(key)?;
        }
    }
    drop(rx);
    let _ = fetcher.join();
    sweep_bar.finish_and_clear();
    log(format!(
        "sweep{shard_note}: {} units scored now, {} were already complete, {} checkpoints failed; results in {}",
        summary.scored,
        summary.already_done,
        summary.failures.len(),
        opts.db.display()
    ));
    Ok(summary)
}

/// Read a checkpoint's safetensors files once, in the background, so that putting the weights on the device
/// later reads them from the page cache rather than the disk. (Pickled `.bin` weights are already in memory
/// after `Checkpoint::open`.) Skipped when the files would take more than half the memory available; errors
/// are ignored: this only saves time.
fn warm_page_cache(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    let total: u64 = files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    if available.is_none_or(|a| total > a / 2) {
        return;
    }
    for f in files {
        if let Ok(mut file) = std::fs::File::open(&f) {
            let _ = std::io::copy(&mut file, &mut std::io::sink());
        }
    }
}

enum ScoreError {
    /// The store failed: stop the sweep.
    Store(Error),
    /// This checkpoint failed after `n` of its units were stored: go on with the next.
    Checkpoint(Error, usize),
}

/// Load one checkpoint on the device and score its pending tasks, storing each task as soon as its plan
/// group is scored. Returns the number of units stored.
#[allow(clippy::too_many_arguments)]
fn score_checkpoint(
    ckpt: &Checkpoint,
    key: &RunKey,
    todo: &[&LoadedTask],
    opts: &SweepOptions,
    store: &mut Store,
    multi: &MultiProgress,
    sweep_bar: &ProgressBar,
    log: &dyn Fn(String),
) -> std::result::Result<usize, ScoreError> {
    let engine = Engine::load(ckpt, &opts.engine).map_err(|e| ScoreError::Checkpoint(e, 0))?;
    store.start_run(key).map_err(ScoreError::Store)?;
    // Plan groups (TruthfulQA MC1 + MC2 share one plan), in order of first appearance.
    let mut groups: Vec<Vec<LoadedTask>> = Vec::new();
    for t in todo {
        match groups.iter_mut().find(|g| g[0].plan_group == t.plan_group) {
            Some(g) => g.push((*t).clone()),
            None => groups.push(vec![(*t).clone()]),
        }
    }
    // Total computed tokens over the groups, for the checkpoint bar's ETA (planning is cheap next to scoring).
    let max_len = opts.engine.max_length.unwrap_or(engine.config().max_positions);
    let mut total = 0u64;
    for g in &groups {
        let reqs: Vec<_> = g.iter().flat_map(|t| t.requests().cloned()).collect();
        if !reqs.is_empty() {
            total += crate::plan::build(&reqs, max_len, usize::MAX, opts.engine.sharing)
                .map(|p| p.computed_tokens as u64)
                .unwrap_or(0);
        }
    }
    let bar = multi.add(ProgressBar::new(total));
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} tokens [{elapsed} < {eta}, {per_sec}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{}@{}", key.model, key.revision));
    let mut stored = 0;
    let mut base = 0u64;
    for g in &groups {
        let names: Vec<&str> = g.iter().map(|t| t.name.as_str()).collect();
        bar.set_message(format!("{}@{} {}", key.model, key.revision, names.join("+")));
        let outcomes = tasks::evaluate(&engine, g, &opts.engine, |done, _| bar.set_position(base + done as u64));
        let outcomes = match outcomes {
            Ok(o) => o,
            Err(e) => {
                bar.finish_and_clear();
                return Err(ScoreError::Checkpoint(
                    Error::invalid(format!("scoring {}: {e}", names.join("+"))),
                    stored,
                ));
            }
        };
        for o in &outcomes {
            store.record_task(key, o).map_err(ScoreError::Store)?;
            stored += 1;
            sweep_bar.inc(1);
            let metrics: Vec<String> = o.metrics.iter().map(|m| format!("{}={:.4}", m.name, m.value)).collect();
            log(format!(
                "{}@{} {}: {} ({} docs, {:.0} tokens/s)",
                key.model,
                key.revision,
                o.task,
                metrics.join(" "),
                o.n_docs,
                o.stats.tokens_per_second()
            ));
        }
        base += outcomes.first().map(|o| o.stats.computed_tokens as u64).unwrap_or(0);
        bar.set_position(base);
    }
    bar.finish_and_clear();
    Ok(stored)
}
