//! Sweeps: many checkpoints x many tasks into one results store, resumable and shardable.
//!
//! ```text
//! checkpoints x tasks -> (checkpoint, task) units -> this shard's units -> skip the complete ones
//!   -> one checkpoint at a time: [background thread: fetch the NEXT checkpoint, read its files once]
//!                                 check its files are unchanged -> load on the device -> score task group
//!                                 by group -> each task's requests + metrics in ONE store transaction
//! ```
//!
//! Resuming: a unit is complete when the store holds it computed from the same inputs ([`Store::task_state`]):
//! the same run key (name, revision, protocol, dtype, device), the same checkpoint digest
//! ([`checkpoint_digest`]: the Hub commit, or for a local directory a digest of its files) and the same task
//! data (sha256 of the data file). Anything else is redone from scratch, and a unit stored from other inputs
//! is replaced; `--force` re-scores everything. A sweep killed at any moment (even `kill -9`) and started
//! again with the same arguments finishes the work without losing or duplicating a row.
//!
//! Sharding (`--shard i/N`, e.g. a Slurm job array with `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`):
//! checkpoints are numbered 0.. in sweep order (the preset: size-major, then step) and tasks 0.. in task-list
//! order. With N <= #checkpoints, shard i takes every checkpoint c with `c % N == i`, all its tasks: each
//! checkpoint is downloaded and loaded by exactly one shard, and round-robin spreads the model sizes evenly.
//! With more shards than checkpoints, units are numbered checkpoint-major, `u = c * #tasks + t`, and shard i
//! takes the units with `u % N == i`. Either way the N shards partition the units exactly; each shard writes
//! its own store and `lmscore merge` combines them.
//!
//! Files changing under a sweep: the next checkpoint is prefetched with plain reads (never through a memory
//! map), and its files' sizes and modification times are checked before it is loaded and again after: a
//! checkpoint rewritten meanwhile is a failure of that checkpoint, and the sweep goes on.

use crate::checkpoint::{Checkpoint, FileStamp};
use crate::engine::{Device, Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::hub::{self, CheckpointSpec, HubOptions, Source};
use crate::store::{DocRow, Inputs, RunKey, Store, TaskRecord, TaskState, Timing};
use crate::tasks::{self, LoadOptions, LoadedTask, Protocol};
use crate::tokenizer::Tokenizer;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// Show progress: bars on a terminal, else a plain line every `progress_interval`.
    pub progress: bool,
    /// How often a plain progress line is printed when stderr is not a terminal (e.g. a Slurm log).
    pub progress_interval: Duration,
    /// Re-score units the store already holds from the same inputs (and replace them).
    pub force: bool,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            checkpoints: Vec::new(),
            tasks: Vec::new(),
            protocol: Protocol::default(),
            engine: EngineOptions::default(),
            data_dir: PathBuf::from("data"),
            db: PathBuf::new(),
            shard: None,
            hub: HubOptions::default(),
            skip_bad_rows: false,
            tokenizer: None,
            progress: true,
            progress_interval: Duration::from_secs(30),
            force: false,
        }
    }
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepSummary {
    /// Units in this shard.
    pub units: usize,
    /// Units found complete (same inputs) in the store before this process scored them.
    pub already_done: usize,
    /// Units re-scored because the store held them from other inputs.
    pub stale: usize,
    /// Units scored and stored by this process.
    pub scored: usize,
    /// Units this process scored but another process had stored (from the same inputs) first.
    pub stored_by_others: usize,
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
    // The backend, not the GPU slot: results do not depend on which of a node's devices ran them (each shard
    // of an 8-GPU job is `cuda:0` under its own CUDA_VISIBLE_DEVICES anyway), so a shard restarted on another
    // device resumes, and merged shards form one series in reports.
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

// ---------------------------------------------------------------------------------------------------
// What a checkpoint is: its files, their digest, their sizes and times

/// The files of a model directory that determine its scores: `config.json`, `tokenizer.json`, shard
/// indexes and every `.safetensors` / `.bin` file, sorted by name.
fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "config.json" | "tokenizer.json") || [".safetensors", ".bin", ".index.json"].iter().any(|x| name.ends_with(x)) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The weight files the loader reads (safetensors when there are any, else `.bin`).
fn weight_files(files: &[PathBuf]) -> Vec<&PathBuf> {
    let of = |ext: &str| files.iter().filter(|p| p.extension().is_some_and(|x| x == ext)).collect::<Vec<_>>();
    let st = of("safetensors");
    if st.is_empty() {
        of("bin")
    } else {
        st
    }
}

/// Bytes of a weights file that stand for it in the digest: all of it up to 1 MiB; else the first and last
/// 256 KiB (the safetensors header; the zip central directory of a `.bin`, with every entry's CRC-32) and 32
/// pages spread over the file (checkpoints of different training steps differ in every page).
fn sample_file(path: &Path, len: u64, out: &mut Vec<u8>) -> Result<()> {
    use std::os::unix::fs::FileExt;
    const WHOLE: u64 = 1 << 20;
    const EDGE: u64 = 256 << 10;
    const PAGE: u64 = 4096;
    let file = crate::error::open_regular(path)?;
    let mut ranges = vec![(0, len.min(WHOLE))];
    if len > WHOLE {
        ranges = vec![(0, EDGE), (len - EDGE, EDGE)];
        ranges.extend((1..=32u64).map(|i| ((len / 33 * i) / PAGE * PAGE, PAGE)));
    }
    for (at, n) in ranges {
        let start = out.len();
        out.resize(start + n as usize, 0);
        file.read_exact_at(&mut out[start..], at)
            .map_err(|e| Error::file(path, format!("cannot read {n} bytes at offset {at} ({e}); was the file truncated?")))?;
    }
    Ok(())
}

/// What a checkpoint's scores are computed from, as one digest: `hub:COMMIT` for a Hub checkpoint; for a
/// local directory, sha256 over its config, tokenizer and indexes and, for each weights file, its name, size
/// and sampled bytes ([`sample_file`]: cheap, no full read). A `--tokenizer` file is added by its sha256.
pub fn checkpoint_digest(spec: &CheckpointSpec, dir: &Path, tokenizer: Option<&Path>) -> Result<String> {
    let files = checkpoint_files(dir)?;
    digest_of(spec, dir, &files, tokenizer)
}

fn digest_of(spec: &CheckpointSpec, dir: &Path, files: &[PathBuf], tokenizer: Option<&Path>) -> Result<String> {
    let sha = |bytes: &[u8]| crate::tasks::hub::sha256_hex(bytes);
    let mut digest = match spec.source {
        Source::Hub => format!("hub:{}", dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
        Source::Local(_) => {
            let mut buf = Vec::new();
            for f in files {
                let meta = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
                buf.extend_from_slice(f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
                buf.extend_from_slice(&meta.len().to_le_bytes());
                if f.extension().is_some_and(|x| x == "json") {
                    let text = crate::error::read_bounded(f, crate::error::MAX_METADATA_BYTES)?;
                    buf.extend_from_slice(sha(&text).as_bytes());
                } else if meta.is_file() {
                    sample_file(f, meta.len(), &mut buf)?;
                }
            }
            sha(&buf)
        }
    };
    if let Some(t) = tokenizer {
        digest.push_str(&format!(
            "+tokenizer:{}",
            sha(&crate::error::read_bounded(t, crate::error::MAX_METADATA_BYTES)?)
        ));
    }
    Ok(digest)
}

/// Size and modification time of a file (None: gone).
type Stamp = Option<FileStamp>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| FileStamp::from(&m))
}

/// A checkpoint fetched by the background thread: where it is, its digest, and its files as they were then.
struct Fetched {
    dir: PathBuf,
    digest: String,
    files: Vec<(PathBuf, Stamp)>,
    /// Seconds spent resolving (downloading) it.
    download_seconds: f64,
    /// Bytes of its weight files.
    weights_bytes: u64,
}

impl Fetched {
    /// An error naming the first file whose size or modification time changed since the fetch.
    fn check_unchanged(&self, when: &str) -> Result<()> {
        for (path, was) in &self.files {
            let now = stamp(path);
            if now != *was {
                let size = |s: &Stamp| s.map_or("gone".to_string(), |s| format!("{} bytes", s.len));
                return Err(Error::file(
                    path,
                    format!(
                        "changed on disk {when} (was {}, now {}); not using this checkpoint",
                        size(was),
                        size(&now)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Resolve (and download) a checkpoint, read its weights once so that loading finds them in the page cache,
/// and compute its digest. No file is memory-mapped here: a file truncated meanwhile is an error, not SIGBUS.
fn fetch(spec: &CheckpointSpec, hub_opts: &HubOptions, tokenizer: Option<&Path>) -> Result<Fetched> {
    let t0 = Instant::now();
    let dir = hub::resolve(spec, hub_opts)?;
    let download_seconds = t0.elapsed().as_secs_f64();
    let paths = checkpoint_files(&dir)?;
    let files: Vec<(PathBuf, Stamp)> = paths.iter().map(|p| (p.clone(), stamp(p))).collect();
    let weights = weight_files(&paths);
    let weights_bytes = weights.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    warm_page_cache(&weights);
    let digest = digest_of(spec, &dir, &paths, tokenizer)?;
    let fetched = Fetched {
        dir,
        digest,
        files,
        download_seconds,
        weights_bytes,
    };
    fetched.check_unchanged("while it was being prefetched")?;
    Ok(fetched)
}

/// Read weight files once through one small buffer, so that putting the weights on the device later reads
/// them from the page cache rather than the disk. Skipped when the files would take more than half the
/// memory available. Read errors end it quietly: this only saves time, and a file that changed is caught by
/// [`Fetched::check_unchanged`].
fn warm_page_cache(files: &[&PathBuf]) {
    use std::io::Read;
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
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let Ok(mut file) = crate::error::open_regular(f) else { continue };
        while matches!(file.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// The directory of a checkpoint if it is available without fetching anything (a local directory, or a
/// checkpoint complete in the Hub cache).
fn available_dir(spec: &CheckpointSpec, hub_opts: &HubOptions) -> Option<PathBuf> {
    match &spec.source {
        Source::Local(dir) => dir.is_dir().then(|| dir.clone()),
        Source::Hub => {
            let cache = hub_opts.cache_dir.clone().or_else(|| hub::default_cache_dir().ok())?;
            hub::resolve_cached(spec, &cache).ok()
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Tasks

/// The sweep's tasks tokenized with one tokenizer, and the sha256 of each task's data file.
struct TaskSet {
    tokenizer: Vec<u8>,
    tasks: Vec<LoadedTask>,
    digests: Vec<String>,
}

fn read_tokenizer(path: &Path) -> Result<(Vec<u8>, Tokenizer)> {
    let bytes = crate::error::read_bounded(path, crate::error::MAX_METADATA_BYTES)?;
    Ok((bytes, Tokenizer::from_file(path)?))
}

fn load_tasks((bytes, tokenizer): (Vec<u8>, Tokenizer), opts: &SweepOptions) -> Result<TaskSet> {
    let lo = LoadOptions {
        data_dir: opts.data_dir.clone(),
        skip_bad_rows: opts.skip_bad_rows,
        offline: opts.hub.offline,
    };
    let tasks = opts
        .tasks
        .iter()
        .map(|t| tasks::load_task(t, opts.protocol, &tokenizer, &lo))
        .collect::<Result<Vec<_>>>()?;
    let digests = tasks
        .iter()
        .map(|t| {
            Ok(crate::tasks::hub::sha256_hex(&crate::error::read_bounded(
                &t.source,
                crate::error::MAX_DATA_BYTES,
            )?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TaskSet {
        tokenizer: bytes,
        tasks,
        digests,
    })
}

/// A tokenizer to load the task data with before any checkpoint is fetched: `--tokenizer`, else that of a
/// checkpoint already on disk, else `DATA_DIR/tokenizer/tokenizer.json` (shared/data ships Pythia's, which every
/// Pythia checkpoint uses; a checkpoint with another tokenizer has its tasks tokenized again once fetched).
fn early_tokenizer(opts: &SweepOptions, first_dir: Option<&Path>) -> Option<PathBuf> {
    opts.tokenizer
        .clone()
        .or_else(|| first_dir.map(|d| d.join("tokenizer.json")))
        .or_else(|| Some(opts.data_dir.join("tokenizer").join("tokenizer.json")).filter(|p| p.is_file()))
}

/// Per-document values of each metric of a task (from its stored log-likelihoods) and their chance levels:
/// 1/choices for acc, acc_norm and MC1 (a uniformly random pick), and for MC2 the value MC2 gives equal
/// probabilities on every choice (the share of the choices it counts as true), computed by the task's own
/// MC2 formula so the v0.3 split and the fixed version each get theirs.
pub fn doc_rows(task: &LoadedTask, outcome: &tasks::TaskOutcome) -> Result<Vec<DocRow>> {
    let lls: Vec<f64> = outcome.requests.iter().map(|r| r.logprob).collect();
    let values = tasks::doc_metrics(task, &lls)?;
    let uniform = tasks::doc_metrics(task, &vec![0.0; lls.len()])?;
    let mut out = Vec::new();
    for ((metric, v), (_, u)) in values.iter().zip(&uniform) {
        for (d, doc) in task.docs.iter().enumerate() {
            let chance = if matches!(task.scoring, tasks::Scoring::Mc2 { .. }) {
                u[d]
            } else {
                1.0 / doc.requests.len().max(1) as f64
            };
            out.push(DocRow {
                metric: metric.to_string(),
                doc: d as u64,
                value: v[d],
                chance,
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// Dry run: what a sweep would do, and what it would cost

/// (hidden size, layers) of the Pythia sizes, for estimates about checkpoints not on disk yet.
const PYTHIA_SHAPES: [(&str, usize, usize); 8] = [
    ("70m", 512, 6),
    ("160m", 768, 12),
    ("410m", 1024, 24),
    ("1b", 2048, 16),
    ("1.4b", 2048, 24),
    ("2.8b", 2560, 32),
    ("6.9b", 4096, 32),
    ("12b", 5120, 36),
];

/// Parameters and download bytes of a Pythia checkpoint known by name only: the GPT-NeoX parameter count of
/// its shape (vocabulary 50,304, 4x MLP), stored as fp16 like Pythia's `stepN` revisions, plus the legacy
/// `attention.bias` causal mask (2048 x 2048 bytes) those files keep per layer. None for other names.
fn pythia_estimate(model: &str) -> Option<(u64, u64)> {
    let name = model.rsplit('/').next()?.to_ascii_lowercase();
    let size = name.strip_prefix("pythia-")?.split('-').next()?;
    let &(_, h, l) = PYTHIA_SHAPES.iter().find(|s| s.0 == size)?;
    let (h, l, v) = (h as u64, l as u64, 50_304u64);
    let params = l * (12 * h * h + 13 * h) + 2 * v * h + 2 * h;
    Some((params, 2 * params + l * 2048 * 2048))
}

/// What `sweep --dry-run` found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DryRun {
    /// Units in this shard, and those already complete in the store from the same inputs.
    pub units: usize,
    pub already_done: usize,
    /// Checkpoints with units left, and of those, the ones that must be downloaded.
    pub checkpoints: usize,
    pub to_download: usize,
    /// Tokens the plans compute for the units left (prefix sharing on), and what scoring each request alone
    /// would take.
    pub computed_tokens: u64,
    pub naive_tokens: u64,
    /// Bytes to download (estimated from the model names: not asked of the Hub) and bytes already on disk.
    pub download_bytes: u64,
    pub local_bytes: u64,
    /// Forward-pass work, 2 x parameters x computed tokens, summed over checkpoints.
    pub flops: f64,
    /// FLOP/s the estimate assumes, and where that number comes from.
    pub flops_per_second: f64,
    pub rate_source: String,
    /// The tokenizer the task data was loaded with.
    pub tokenizer: PathBuf,
    /// Per task: (name, documents, requests).
    pub tasks: Vec<(String, usize, usize)>,
}

impl DryRun {
    /// Seconds of scoring the estimate comes to.
    pub fn seconds(&self) -> f64 {
        self.flops / self.flops_per_second
    }
}

/// A rough FLOP rate when the store has no timings to measure one from: a few CPU cores running f32 GEMMs, or
/// one recent GPU at half precision with modest utilisation. Stated as assumed in the dry run's output.
fn assumed_rate(device: Device) -> f64 {
    match device {
        Device::Cpu => 5e10,
        Device::Cuda => 5e13,
    }
}

/// Parameters of a checkpoint: from its config.json when on disk, else from its name.
fn checkpoint_params(spec: &CheckpointSpec, dir: Option<&Path>) -> Option<u64> {
    dir.and_then(|d| crate::config::ModelConfig::from_file(&d.join("config.json")).ok())
        .map(|c| c.num_params() as u64)
        .or_else(|| pythia_estimate(&spec.model).map(|e| e.0))
        .or_else(|| crate::report::parse_params(&spec.model).map(|p| p as u64))
}

/// Plan the sweep without fetching or scoring anything: load (and so check) the task data, count the units
/// left, the tokens their plans compute, the bytes to download and the time it should take. The store is
/// only read (a missing store has nothing done).
pub fn dry_run(opts: &SweepOptions) -> Result<DryRun> {
    if opts.checkpoints.is_empty() || opts.tasks.is_empty() {
        return Err(Error::invalid("a sweep needs at least one checkpoint and one task"));
    }
    let units = shard_units(opts.checkpoints.len(), opts.tasks.len(), opts.shard);
    let in_shard: BTreeSet<usize> = units.iter().map(|u| u.0).collect();
    let dirs: Vec<Option<PathBuf>> = (0..opts.checkpoints.len())
        .map(|c| {
            if in_shard.contains(&c) {
                available_dir(&opts.checkpoints[c], &opts.hub)
            } else {
                None
            }
        })
        .collect();
    let first_dir = dirs.iter().flatten().next().cloned();
    let tok = early_tokenizer(opts, first_dir.as_deref()).ok_or_else(|| {
        Error::invalid(format!(
            "--dry-run needs a tokenizer to plan with: give --tokenizer FILE, a checkpoint already on disk, or a --data-dir with \
             tokenizer/tokenizer.json (none at {})",
            opts.data_dir.join("tokenizer").join("tokenizer.json").display()
        ))
    })?;
    let ts = load_tasks(read_tokenizer(&tok)?, opts)?;
    let store = if opts.db.exists() {
        Some(Store::open_read_only(&opts.db)?)
    } else {
        None
    };

    let mut out = DryRun {
        units: units.len(),
        tokenizer: tok,
        tasks: ts.tasks.iter().map(|t| (t.name.clone(), t.docs.len(), t.n_requests())).collect(),
        ..Default::default()
    };
    // Pending tasks per checkpoint (complete only if the store holds them from the same inputs).
    let mut pending: Vec<(usize, Vec<usize>)> = Vec::new();
    for &(c, t) in &units {
        let key = run_key(&opts.checkpoints[c], opts.protocol, &opts.engine);
        let digest = dirs[c]
            .as_ref()
            .and_then(|d| checkpoint_digest(&opts.checkpoints[c], d, opts.tokenizer.as_deref()).ok());
        let done = match (&store, digest) {
            (Some(s), Some(w)) if !opts.force => s.is_done(
                &key,
                &opts.tasks[t],
                &Inputs {
                    weights: w,
                    data: ts.digests[t].clone(),
                },
            )?,
            _ => false,
        };
        if done {
            out.already_done += 1;
            continue;
        }
        match pending.last_mut() {
            Some((pc, v)) if *pc == c => v.push(t),
            _ => pending.push((c, vec![t])),
        }
    }
    // Plans per set of pending tasks (the same for every checkpoint with the same tokenizer and window).
    let mut plans: std::collections::HashMap<(Vec<usize>, usize), (u64, u64)> = std::collections::HashMap::new();
    for (c, todo) in &pending {
        let spec = &opts.checkpoints[*c];
        let dir = dirs[*c].as_deref();
        let max_len = opts.engine.max_length.unwrap_or_else(|| {
            dir.and_then(|d| crate::config::ModelConfig::from_file(&d.join("config.json")).ok())
                .map_or(2048, |cfg| cfg.max_positions)
        });
        let (mut computed, mut naive) = (0u64, 0u64);
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for &t in todo {
            match groups.iter_mut().find(|g| ts.tasks[g[0]].plan_group == ts.tasks[t].plan_group) {
                Some(g) => g.push(t),
                None => groups.push(vec![t]),
            }
        }
        for g in groups {
            let key = (g.clone(), max_len);
            if !plans.contains_key(&key) {
                let reqs: Vec<_> = g.iter().flat_map(|&t| ts.tasks[t].requests().cloned()).collect();
                let tokens = if reqs.is_empty() {
                    (0, 0)
                } else {
                    let p = crate::plan::build(&reqs, max_len, usize::MAX, opts.engine.sharing)?;
                    (p.computed_tokens as u64, p.naive_tokens as u64)
                };
                plans.insert(key.clone(), tokens);
            }
            let (c_t, n_t) = plans[&key];
            computed += c_t;
            naive += n_t;
        }
        out.checkpoints += 1;
        out.computed_tokens += computed;
        out.naive_tokens += naive;
        let params = checkpoint_params(spec, dir).unwrap_or(0) as f64;
        out.flops += 2.0 * params * computed as f64;
        match dir {
            Some(d) => {
                let files = checkpoint_files(d)?;
                out.local_bytes += weight_files(&files)
                    .iter()
                    .filter_map(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum::<u64>();
            }
            None => {
                out.to_download += 1;
                out.download_bytes += pythia_estimate(&spec.model).map_or((params * 2.0) as u64, |e| e.1);
            }
        }
    }
    // The rate: measured from this store's earlier checkpoints on the same device, else assumed.
    let device = run_key(&opts.checkpoints[0], opts.protocol, &opts.engine).device;
    let measured = store.as_ref().map(|s| s.timings()).transpose()?.unwrap_or_default();
    let (mut work, mut secs) = (0.0, 0.0);
    for t in measured
        .iter()
        .filter(|t| t.run.device == device && t.total.scoring_seconds > 0.0 && t.total.params > 0)
    {
        work += 2.0 * t.total.params as f64 * t.total.computed_tokens as f64;
        secs += t.total.scoring_seconds;
    }
    if work > 0.0 && secs > 0.0 {
        let n = measured
            .iter()
            .filter(|t| t.run.device == device && t.total.scoring_seconds > 0.0 && t.total.params > 0)
            .count();
        out.flops_per_second = work / secs;
        out.rate_source = format!("measured on {n} earlier checkpoint(s) in {}", opts.db.display());
    } else {
        out.flops_per_second = assumed_rate(opts.engine.device);
        out.rate_source = format!("assumed for {device} (no timings in the store to measure from: sweep one checkpoint first for a measured rate)");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// Messages

/// `1 unit`, `2 units`.
fn count(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// `1h02m`, `3m05s`, `12s`.
fn clock(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `NAME@REV`: how a checkpoint is named in messages (without a local directory's path).
fn short_name(spec: &CheckpointSpec) -> String {
    format!("{}@{}", spec.model, spec.revision)
}

/// Progress of a sweep on stderr: bars on a terminal; without one (a Slurm log), a plain line with rates and
/// ETAs every `progress_interval`; with `progress` off, only the per-unit lines.
struct Progress {
    multi: MultiProgress,
    /// The sweep bar, in thousandths of a unit: it moves with the tokens of the unit being scored.
    bar: ProgressBar,
    plain: Option<Duration>,
    units: usize,
    /// Units complete (found or stored).
    done: usize,
    /// Units complete or failed.
    settled: usize,
    /// Units settled by this process's own scoring or failures (for the sweep's rate).
    worked: usize,
    checkpoint: String,
    started: Instant,
    last_line: Instant,
}

const SCALE: u64 = 1000;

impl Progress {
    fn new(opts: &SweepOptions, units: usize, done: usize) -> Progress {
        let visible = opts.progress && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let bar = multi.add(ProgressBar::new(units as u64 * SCALE));
        bar.set_style(ProgressStyle::with_template("sweep {bar:30} {msg} [{elapsed} < {eta}]").unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar.set_position(done as u64 * SCALE);
        bar.reset_eta();
        if visible {
            bar.enable_steady_tick(Duration::from_millis(500));
        }
        let p = Progress {
            multi,
            bar,
            plain: (opts.progress && !visible).then_some(opts.progress_interval),
            units,
            done,
            settled: done,
            worked: 0,
            checkpoint: String::new(),
            started: Instant::now(),
            last_line: Instant::now(),
        };
        p.show();
        p
    }

    fn log(&self, msg: &str) {
        if self.multi.is_hidden() {
            eprintln!("{msg}");
        } else {
            let _ = self.multi.println(msg);
        }
    }

    fn show(&self) {
        self.bar.set_message(format!("{}/{} units {}", self.done, self.units, self.checkpoint));
    }

    fn set_checkpoint(&mut self, name: &str) {
        self.checkpoint = name.to_string();
        self.show();
    }

    /// `n` units complete (`worked`: by this process's scoring) or, with `complete` false, failed.
    fn settle(&mut self, n: usize, complete: bool, worked: bool) {
        self.settled += n;
        self.done += if complete { n } else { 0 };
        self.worked += if worked { n } else { 0 };
        self.bar.set_position(self.settled as u64 * SCALE);
        self.show();
    }

    /// Scoring `what` (a plan of `units` units) has run `tokens.0` of `tokens.1` tokens since `since`.
    fn tick(&mut self, what: &str, units: usize, tokens: (u64, u64), since: Instant) {
        let frac = tokens.0 as f64 / tokens.1.max(1) as f64 * units as f64;
        self.bar.set_position(((self.settled as f64 + frac) * SCALE as f64) as u64);
        let Some(every) = self.plain else { return };
        if self.last_line.elapsed() < every {
            return;
        }
        self.last_line = Instant::now();
        let rate = tokens.0 as f64 / since.elapsed().as_secs_f64().max(1e-9);
        let sweep_rate = (self.worked as f64 + frac) / self.started.elapsed().as_secs_f64().max(1e-9);
        let left = self.units.saturating_sub(self.settled) as f64 - frac;
        eprintln!(
            "progress: {}/{} units complete; {what}: {}/{} computed tokens ({:.0}%), {:.0} computed tokens/s, ETA {}; sweep ETA {} (elapsed {})",
            self.done,
            self.units,
            tokens.0,
            tokens.1,
            100.0 * tokens.0 as f64 / tokens.1.max(1) as f64,
            rate,
            clock(tokens.1.saturating_sub(tokens.0) as f64 / rate),
            clock(left / sweep_rate),
            clock(self.started.elapsed().as_secs_f64())
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// The sweep

/// Run a sweep. Per-checkpoint failures are collected in the summary (the other checkpoints still run);
/// store and task-data errors stop the sweep.
pub fn run(opts: &SweepOptions) -> Result<SweepSummary> {
    if opts.checkpoints.is_empty() || opts.tasks.is_empty() {
        return Err(Error::invalid("a sweep needs at least one checkpoint and one task"));
    }
    let keys: Vec<RunKey> = opts.checkpoints.iter().map(|c| run_key(c, opts.protocol, &opts.engine)).collect();
    for (i, k) in keys.iter().enumerate() {
        if let Some(j) = keys[..i].iter().position(|o| o == k) {
            return Err(Error::invalid(format!(
                "checkpoints {} and {} are both {}@{}: give local checkpoints distinct NAME@REV",
                opts.checkpoints[j], opts.checkpoints[i], k.model, k.revision
            )));
        }
    }
    let mut store = Store::open(&opts.db)?;
    let units = shard_units(opts.checkpoints.len(), opts.tasks.len(), opts.shard);
    let mut summary = SweepSummary {
        units: units.len(),
        ..Default::default()
    };
    let in_shard: BTreeSet<usize> = units.iter().map(|u| u.0).collect();

    // What can be known without fetching: the digests of checkpoints already on disk, and the task data
    // (loaded with the first such checkpoint's tokenizer). Errors here are left for the fetch to report.
    let mut digests: Vec<Option<String>> = vec![None; opts.checkpoints.len()];
    let mut first_dir = None;
    if !opts.force {
        for &c in &in_shard {
            let Some(dir) = available_dir(&opts.checkpoints[c], &opts.hub) else {
                continue;
            };
            digests[c] = checkpoint_digest(&opts.checkpoints[c], &dir, opts.tokenizer.as_deref()).ok();
            if digests[c].is_some() && first_dir.is_none() {
                first_dir = Some(dir);
            }
        }
    }
    // The task data is checked here, before any checkpoint is fetched: a sweep with missing data stops before
    // downloading gigabytes. Tokenized with the first tokenizer at hand (see `early_tokenizer`).
    let mut task_set: Option<TaskSet> = None;
    if let Some(tok) = early_tokenizer(opts, first_dir.as_deref()) {
        if let Ok(t) = read_tokenizer(&tok) {
            task_set = Some(load_tasks(t, opts)?);
        }
    }
    // Pending task indices per checkpoint, in order.
    let mut pending: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut stale = 0;
    for &(c, t) in &units {
        let state = match (&digests[c], &task_set) {
            (Some(w), Some(ts)) => store.task_state(
                &keys[c],
                &opts.tasks[t],
                &Inputs {
                    weights: w.clone(),
                    data: ts.digests[t].clone(),
                },
            )?,
            _ => TaskState::Missing,
        };
        match state {
            TaskState::Done => {
                summary.already_done += 1;
                continue;
            }
            TaskState::Stale(_) => stale += 1,
            TaskState::Missing => {}
        }
        match pending.last_mut() {
            Some((pc, ts)) if *pc == c => ts.push(t),
            _ => pending.push((c, vec![t])),
        }
    }

    let shard_note = opts.shard.map(|s| format!(" (shard {s})")).unwrap_or_default();
    let n_ck = in_shard.len();
    let n_t = units.iter().map(|u| u.1).collect::<BTreeSet<_>>().len();
    let what = if units.len() == n_ck * n_t {
        format!("{} ({} x {})", count(units.len(), "unit"), count(n_ck, "checkpoint"), count(n_t, "task"))
    } else {
        format!(
            "{} over {} and {}",
            count(units.len(), "unit"),
            count(n_ck, "checkpoint"),
            count(n_t, "task")
        )
    };
    let mut progress = Progress::new(opts, units.len(), summary.already_done);
    progress.log(&format!(
        "sweep{shard_note}: {what}; {} already complete in {}, {} to score{}",
        summary.already_done,
        opts.db.display(),
        units.len() - summary.already_done,
        if stale > 0 {
            format!(" ({stale} stored from other inputs)")
        } else {
            String::new()
        }
    ));

    // The background thread fetches checkpoints in order; the rendezvous channel makes it hold at most one
    // finished checkpoint (the next) while the current one is scored.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Result<Fetched>)>(0);
    let to_fetch: Vec<(usize, CheckpointSpec)> = pending.iter().map(|(c, _)| (*c, opts.checkpoints[*c].clone())).collect();
    let (hub_opts, tokenizer) = (opts.hub.clone(), opts.tokenizer.clone());
    let fetcher = std::thread::Builder::new()
        .name("lmscore-fetch".into())
        .spawn(move || {
            for (c, spec) in to_fetch {
                if tx.send((c, fetch(&spec, &hub_opts, tokenizer.as_deref()))).is_err() {
                    return; // the sweep stopped
                }
            }
        })
        .map_err(|e| Error::invalid(format!("cannot start the checkpoint fetch thread: {e}")))?;

    for (c, task_idx) in &pending {
        let name = short_name(&opts.checkpoints[*c]);
        let key = &keys[*c];
        progress.set_checkpoint(&name);
        let fetched = rx
            .recv()
            .map_err(|_| Error::invalid("the checkpoint fetch thread stopped unexpectedly"))?;
        debug_assert_eq!(fetched.0, *c);
        let fail = |summary: &mut SweepSummary, progress: &mut Progress, e: Error, left: usize| {
            progress.log(&format!("FAILED {name}: {e}"));
            summary.failures.push(format!("{name}: {e}"));
            progress.settle(left, false, true);
        };
        let f = match fetched.1 {
            Ok(f) => f,
            Err(e) => {
                fail(&mut summary, &mut progress, e, task_idx.len());
                continue;
            }
        };
        // Tasks for this tokenizer (every Pythia checkpoint shares one: tokenized once).
        let tok_path = opts.tokenizer.clone().unwrap_or_else(|| f.dir.join("tokenizer.json"));
        let tok_bytes = crate::error::read_bounded(&tok_path, crate::error::MAX_METADATA_BYTES);
        if !matches!((&tok_bytes, &task_set), (Ok(b), Some(s)) if s.tokenizer == *b) {
            match read_tokenizer(&tok_path) {
                Ok(t) => task_set = Some(load_tasks(t, opts)?),
                Err(e) => {
                    fail(&mut summary, &mut progress, e, task_idx.len());
                    continue;
                }
            }
        }
        let ts = task_set.as_ref().expect("loaded above");
        let inputs = |t: usize| Inputs {
            weights: f.digest.clone(),
            data: ts.digests[t].clone(),
        };
        // The decisive check, with the digest of the files as fetched.
        let mut todo = Vec::new();
        for &t in task_idx {
            match if opts.force {
                TaskState::Missing
            } else {
                store.task_state(key, &opts.tasks[t], &inputs(t))?
            } {
                TaskState::Done => {
                    summary.already_done += 1;
                    progress.settle(1, true, false);
                }
                TaskState::Stale(why) => {
                    summary.stale += 1;
                    progress.log(&format!("{name} {}: re-scoring: {why}", opts.tasks[t]));
                    todo.push(t);
                }
                TaskState::Missing => todo.push(t),
            }
        }
        if !todo.is_empty() {
            let mut counts = Counts::default();
            let r = score_checkpoint(&f, &name, key, &todo, ts, opts, &mut store, &mut progress, &mut counts);
            summary.scored += counts.stored;
            summary.stored_by_others += counts.by_others;
            match r {
                Ok(()) => {}
                Err(ScoreError::Store(e)) => return Err(e),
                Err(ScoreError::Checkpoint(e)) => {
                    fail(&mut summary, &mut progress, e, todo.len() - counts.stored - counts.by_others);
                    continue;
                }
            }
        }
        // The run is finished when every task of the sweep is complete for it (other shards included).
        let mut all_done = true;
        for t in 0..opts.tasks.len() {
            all_done &= store.is_done(key, &opts.tasks[t], &inputs(t))?;
        }
        if all_done {
            store.finish_run(key)?;
        }
    }
    drop(rx);
    let _ = fetcher.join();
    progress.bar.finish_and_clear();
    let others = if summary.stored_by_others > 0 {
        format!(", {} stored meanwhile by another process", summary.stored_by_others)
    } else {
        String::new()
    };
    progress.log(&format!(
        "sweep{shard_note}: {} scored now, {} already complete{others}, {} failed; results in {}",
        count(summary.scored, "unit"),
        summary.already_done,
        count(summary.failures.len(), "checkpoint"),
        opts.db.display()
    ));
    Ok(summary)
}

enum ScoreError {
    /// The store failed: stop the sweep.
    Store(Error),
    /// This checkpoint failed: go on with the next.
    Checkpoint(Error),
}

/// Units a checkpoint's scoring settled.
#[derive(Default)]
struct Counts {
    /// Stored by this process.
    stored: usize,
    /// Scored here, but another process had stored them first.
    by_others: usize,
}

/// Load one fetched checkpoint on the device (after checking its files did not change since the fetch) and
/// score the tasks `todo` (indices into the sweep's tasks), storing each task as soon as its plan group is
/// scored.
#[allow(clippy::too_many_arguments)]
fn score_checkpoint(
    f: &Fetched,
    name: &str,
    key: &RunKey,
    todo: &[usize],
    ts: &TaskSet,
    opts: &SweepOptions,
    store: &mut Store,
    progress: &mut Progress,
    counts: &mut Counts,
) -> std::result::Result<(), ScoreError> {
    let failed = ScoreError::Checkpoint;
    f.check_unchanged("after it was prefetched").map_err(failed)?;
    let t0 = Instant::now();
    // The checkpoint's files are memory-mapped only while the weights are copied onto the device.
    let engine = Engine::load(&Checkpoint::open(&f.dir).map_err(failed)?, &opts.engine).map_err(failed)?;
    f.check_unchanged("while it was being loaded").map_err(failed)?;
    let mut timing = Timing {
        download_seconds: f.download_seconds,
        load_seconds: t0.elapsed().as_secs_f64(),
        weights_bytes: f.weights_bytes,
        params: engine.config().num_params() as u64,
        ..Default::default()
    };
    progress.log(&format!("{name}: loaded in {:.1} s on {}", timing.load_seconds, engine.describe()));
    let r = score_loaded(&engine, f, name, key, todo, ts, opts, store, progress, counts, &mut timing);
    // The attempt's timings, whatever became of it (a failed scoring still spent them).
    if timing.tasks > 0 || r.is_err() {
        store.record_timing(key, &timing).map_err(ScoreError::Store)?;
    }
    r
}

/// Score the tasks `todo` on a loaded checkpoint; `timing` collects the scoring seconds and tasks stored.
#[allow(clippy::too_many_arguments)]
fn score_loaded(
    engine: &Engine,
    f: &Fetched,
    name: &str,
    key: &RunKey,
    todo: &[usize],
    ts: &TaskSet,
    opts: &SweepOptions,
    store: &mut Store,
    progress: &mut Progress,
    counts: &mut Counts,
    timing: &mut Timing,
) -> std::result::Result<(), ScoreError> {
    let failed = ScoreError::Checkpoint;
    store.start_run(key).map_err(ScoreError::Store)?;
    // Plan groups (TruthfulQA MC1 + MC2 share one plan), in order of first appearance.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &t in todo {
        match groups.iter_mut().find(|g| ts.tasks[g[0]].plan_group == ts.tasks[t].plan_group) {
            Some(g) => g.push(t),
            None => groups.push(vec![t]),
        }
    }
    // Computed tokens per group, for the checkpoint bar's ETA (planning is cheap next to scoring).
    let max_len = opts.engine.max_length.unwrap_or(engine.config().max_positions);
    let totals: Vec<u64> = groups
        .iter()
        .map(|g| {
            let reqs: Vec<_> = g.iter().flat_map(|&t| ts.tasks[t].requests().cloned()).collect();
            if reqs.is_empty() {
                return 0;
            }
            crate::plan::build(&reqs, max_len, usize::MAX, opts.engine.sharing)
                .map(|p| p.computed_tokens as u64)
                .unwrap_or(0)
        })
        .collect();
    let bar = progress.multi.add(ProgressBar::new(totals.iter().sum()));
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} tokens [{elapsed} < {eta}, {per_sec}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut base = 0u64;
    for (g, &total) in groups.iter().zip(&totals) {
        let group: Vec<LoadedTask> = g.iter().map(|&t| ts.tasks[t].clone()).collect();
        let names: Vec<&str> = group.iter().map(|t| t.name.as_str()).collect();
        let what = format!("{name} {}", names.join("+"));
        bar.set_message(what.clone());
        let started = Instant::now();
        let outcomes = tasks::evaluate(engine, &group, &opts.engine, |done, _| {
            bar.set_position(base + done as u64);
            progress.tick(&what, g.len(), (done as u64, total), started);
        });
        timing.scoring_seconds += started.elapsed().as_secs_f64();
        timing.computed_tokens += total;
        let outcomes = match outcomes {
            Ok(o) => o,
            Err(e) => {
                bar.finish_and_clear();
                return Err(failed(Error::invalid(format!("scoring {}: {e}", names.join("+")))));
            }
        };
        for o in &outcomes {
            let t = g.iter().copied().find(|&t| ts.tasks[t].name == o.task).unwrap_or(g[0]);
            let mut rec = TaskRecord::from(o);
            rec.inputs = Inputs {
                weights: f.digest.clone(),
                data: ts.digests[t].clone(),
            };
            rec.docs = doc_rows(&ts.tasks[t], o).map_err(failed)?;
            let stored = store.record(key, &rec, opts.force).map_err(ScoreError::Store)?;
            timing.tasks += 1;
            let metrics: Vec<String> = o.metrics.iter().map(|m| format!("{}={:.4}", m.name, m.value)).collect();
            let note = if stored {
                counts.stored += 1;
                ""
            } else {
                counts.by_others += 1;
                "; another process had stored it already, kept that"
            };
            progress.settle(1, true, true);
            progress.log(&format!(
                "{name} {}: {} ({} docs, {:.1} s, {:.0} requested tokens/s{note})",
                o.task,
                metrics.join(" "),
                o.n_docs,
                o.stats.seconds,
                o.stats.tokens_per_second()
            ));
        }
        base += total;
        bar.set_position(base);
    }
    bar.finish_and_clear();
    Ok(())
}
