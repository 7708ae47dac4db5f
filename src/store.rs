//! The results store: one SQLite file holding every run, every request's log-likelihood and every task
//! metric.
//!
//! Schema (version 3; `PRAGMA application_id` = [`APPLICATION_ID`], `user_version` = the schema version):
//!
//! ```sql
//! runs          (id, model, revision, dtype, protocol, device, lmscore_version, started_at, finished_at)
//!                UNIQUE (model, revision, dtype, protocol, device)        -- the RunKey
//! task_runs     (run_id, task, n_docs, skipped_rows, naive_tokens, computed_tokens, seconds,
//!                lmscore_version, finished_at, weights_digest, data_digest)
//!                PRIMARY KEY (run_id, task)                               -- "this task is complete"
//! requests      (run_id, task, doc, choice, logprob, is_greedy, n_tokens)
//!                PRIMARY KEY (run_id, task, doc, choice)
//! task_results  (run_id, task, metric, value, stderr, n)   PRIMARY KEY (run_id, task, metric)
//! doc_results   (run_id, task, metric, doc, value, chance)   PRIMARY KEY (run_id, task, metric, doc)
//!                -- per-document metric values: what paired tests across checkpoints need (version 3)
//! timings       (run_id, finished_at, download_seconds, load_seconds, scoring_seconds, tasks, weights_bytes,
//!                params, computed_tokens)
//!                PRIMARY KEY (run_id, finished_at)                        -- one row per checkpoint attempt (version 3)
//! meta          (key, value)                                 -- schema_version
//! ```
//!
//! `doc_results.chance` is what the metric's expected value would be for that document under a uniformly
//! random answer (1/choices for acc, acc_norm and MC1; for MC2 the share of the choices that count as true,
//! which is what MC2 gives a model that puts equal probability on every choice): its mean over documents is
//! the chance line of the report's figure.
//!
//! What a task's numbers were computed from is part of its identity: a `task_runs` row records the
//! digests of the checkpoint and of the task data ([`Inputs`]). A task is complete for a sweep only when
//! both match; one stored from other inputs (another directory under the same NAME@REV, other task data, a
//! version-1 store that recorded no digests) is re-scored and replaced.
//!
//! Readers ([`Store::open_read_only`]: `report`, the sources of `merge`) open the file read-only: they
//! never create tables, change the journal mode or write a byte, and work on a read-only file. Writers
//! ([`Store::open`]: `sweep`, `merge --into`) refuse a database that is neither empty nor an lmscore store.
//! A writer runs in WAL mode and sets the file back to rollback-journal mode when it closes, so a store at
//! rest is one self-contained file that a reader opens without creating `-wal`/`-shm` files beside it.
//!
//! Crash safety: everything one (checkpoint, task) produces -- its requests, its metrics and its
//! `task_runs` row -- is written in ONE transaction. A process killed at any moment (even `kill -9`)
//! leaves either all of it or none of it, and a task is complete exactly when its `task_runs` row
//! exists, so a restarted sweep skips complete tasks and redoes the rest: nothing lost, nothing
//! duplicated (the primary keys make a duplicate impossible rather than merely unlikely).
//!
//! `synchronous=FULL`: a committed task survives a power cut too, at one fsync per task.
//!
//! Stores are merged with [`Store::merge_from`] (`lmscore merge`): idempotent, and a task present in
//! both stores with different values (or computed from different inputs) is reported as a conflict and
//! left as it was, never overwritten.

use crate::error::{Error, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use std::path::{Path, PathBuf};

pub const SCHEMA_VERSION: i64 = 3;

/// `PRAGMA application_id` of an lmscore store: "lmsc".
pub const APPLICATION_ID: i64 = 0x6c6d_7363;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id              INTEGER PRIMARY KEY,
    model           TEXT NOT NULL,
    revision        TEXT NOT NULL,
    dtype           TEXT NOT NULL,
    protocol        TEXT NOT NULL,
    device          TEXT NOT NULL,
    lmscore_version TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    UNIQUE (model, revision, dtype, protocol, device)
);
CREATE TABLE IF NOT EXISTS task_runs (
    run_id          INTEGER NOT NULL REFERENCES runs(id),
    task            TEXT NOT NULL,
    n_docs          INTEGER NOT NULL,
    skipped_rows    INTEGER NOT NULL,
    naive_tokens    INTEGER NOT NULL,
    computed_tokens INTEGER NOT NULL,
    seconds         REAL NOT NULL,
    lmscore_version TEXT NOT NULL,
    finished_at     TEXT NOT NULL,
    weights_digest  TEXT NOT NULL DEFAULT '',
    data_digest     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, task)
);
CREATE TABLE IF NOT EXISTS requests (
    run_id    INTEGER NOT NULL REFERENCES runs(id),
    task      TEXT NOT NULL,
    doc       INTEGER NOT NULL,
    choice    INTEGER NOT NULL,
    logprob   REAL NOT NULL,
    is_greedy INTEGER NOT NULL,
    n_tokens  INTEGER NOT NULL,
    PRIMARY KEY (run_id, task, doc, choice)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS task_results (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    task   TEXT NOT NULL,
    metric TEXT NOT NULL,
    value  REAL,                 -- NULL: NaN (a metric over no documents)
    stderr REAL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (run_id, task, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS doc_results (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    task   TEXT NOT NULL,
    metric TEXT NOT NULL,
    doc    INTEGER NOT NULL,
    value  REAL,                 -- NULL: NaN
    chance REAL,
    PRIMARY KEY (run_id, task, metric, doc)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timings (
    run_id           INTEGER NOT NULL REFERENCES runs(id),
    finished_at      TEXT NOT NULL,
    download_seconds REAL NOT NULL,
    load_seconds     REAL NOT NULL,
    scoring_seconds  REAL NOT NULL,
    tasks            INTEGER NOT NULL,
    weights_bytes    INTEGER NOT NULL,
    params           INTEGER NOT NULL,
    computed_tokens  INTEGER NOT NULL,
    PRIMARY KEY (run_id, finished_at)
);
";

/// Version 1 -> 2: the inputs of each task. Rows of version 1 get empty digests, which match no input: a
/// sweep re-scores them.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE task_runs ADD COLUMN weights_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE task_runs ADD COLUMN data_digest TEXT NOT NULL DEFAULT '';
UPDATE meta SET value = '2' WHERE key = 'schema_version';
";

/// Version 2 -> 3: per-document values and per-checkpoint timings (the new tables of [`SCHEMA`]). Tasks stored
/// by version 2 keep no per-document values: reports test them with the unpaired approximation.
const MIGRATE_2_TO_3: &str = "UPDATE meta SET value = '3' WHERE key = 'schema_version';";

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// What identifies a run: one checkpoint scored one way. Tasks of the same run share a `runs` row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    /// Hub id (`EleutherAI/pythia-160m`) or the NAME of a local `NAME@REV=DIR` spec.
    pub model: String,
    /// `step2000`, `main`, ...
    pub revision: String,
    /// Compute dtype: `f32`, `f16`, `bf16`, or `auto` (the checkpoint's stored dtype).
    pub dtype: String,
    /// Task protocol (`paper-2023`, `lm-eval-0.4`).
    pub protocol: String,
    /// `cpu` or `cuda`.
    pub device: String,
}

impl RunKey {
    /// Read `model, revision, dtype, protocol, device` from five consecutive columns starting at `first`
    /// (the column order of the `runs` table).
    fn from_columns(r: &rusqlite::Row, first: usize) -> rusqlite::Result<RunKey> {
        Ok(RunKey {
            model: r.get(first)?,
            revision: r.get(first + 1)?,
            dtype: r.get(first + 2)?,
            protocol: r.get(first + 3)?,
            device: r.get(first + 4)?,
        })
    }
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} ({}, {}, {})", self.model, self.revision, self.protocol, self.device, self.dtype)
    }
}

/// What a task's numbers were computed from, besides its [`RunKey`]: digests of the checkpoint (weights,
/// config, tokenizer) and of the task's data file. Empty strings: unknown (a version-1 store).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    pub weights: String,
    pub data: String,
}

impl Inputs {
    /// What differs between two sets of inputs, in words; `labels` name the two sides ("stored", "now").
    pub fn difference(&self, other: &Inputs, labels: (&str, &str)) -> String {
        let (a, b) = labels;
        if self.weights.is_empty() && self.data.is_empty() {
            return format!("the result {a} has no record of its inputs (stored by an older lmscore)");
        }
        let mut what = Vec::new();
        if self.weights != other.weights {
            what.push(format!(
                "the checkpoint differs ({a} {}, {b} {})",
                short(&self.weights),
                short(&other.weights)
            ));
        }
        if self.data != other.data {
            what.push(format!(
                "the task data differs ({a} sha256 {}, {b} {})",
                short(&self.data),
                short(&other.data)
            ));
        }
        what.join(" and ")
    }
}

/// The first 12 characters of a digest, for messages.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Where a task of a run stands in the store, for given inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Not stored.
    Missing,
    /// Stored from these inputs: complete.
    Done,
    /// Stored from other inputs (what differs, in words): to be re-scored.
    Stale(String),
}

/// One request's score, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRow {
    pub doc: u64,
    pub choice: u64,
    pub logprob: f64,
    pub is_greedy: bool,
    pub n_tokens: u64,
}

/// One metric of one task, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    pub name: String,
    pub value: f64,
    pub stderr: Option<f64>,
}

/// One document's value of one metric, and its chance level (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct DocRow {
    pub metric: String,
    pub doc: u64,
    pub value: f64,
    pub chance: f64,
}

/// One attempt at one checkpoint: how long its download, load and scoring took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timing {
    /// Resolving the checkpoint: the Hub download (0 for a cached or local checkpoint, bar the lookup).
    pub download_seconds: f64,
    /// Putting the weights on the device.
    pub load_seconds: f64,
    /// Scoring its tasks (planning, forward passes and metrics).
    pub scoring_seconds: f64,
    /// Tasks scored in this attempt.
    pub tasks: u64,
    /// Bytes of its weight files.
    pub weights_bytes: u64,
    /// The model's parameters, and the tokens its plans computed in this attempt (a plan shared by tasks
    /// counted once): 2 x params x tokens is the work the scoring seconds did.
    pub params: u64,
    pub computed_tokens: u64,
}

/// The timings of one checkpoint (all its attempts summed), for reports.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointTiming {
    pub run: RunKey,
    pub attempts: u64,
    /// Seconds, tasks and tokens summed over attempts; bytes and params as recorded.
    pub total: Timing,
}

/// Everything one (checkpoint, task) produced: written in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskRecord {
    pub task: String,
    pub n_docs: u64,
    pub skipped_rows: u64,
    pub naive_tokens: u64,
    pub computed_tokens: u64,
    pub seconds: f64,
    pub metrics: Vec<MetricRow>,
    pub requests: Vec<RequestRow>,
    /// Per-document metric values (metric, then doc order); empty in a store older than version 3.
    pub docs: Vec<DocRow>,
    /// What the numbers were computed from.
    pub inputs: Inputs,
}

impl From<&crate::tasks::TaskOutcome> for TaskRecord {
    fn from(o: &crate::tasks::TaskOutcome) -> Self {
        TaskRecord {
            task: o.task.clone(),
            n_docs: o.n_docs as u64,
            skipped_rows: o.skipped_rows as u64,
            naive_tokens: o.stats.naive_tokens as u64,
            computed_tokens: o.stats.computed_tokens as u64,
            seconds: o.stats.seconds,
            metrics: o
                .metrics
                .iter()
                .map(|m| MetricRow {
                    name: m.name.clone(),
                    value: m.value,
                    stderr: m.stderr.is_finite().then_some(m.stderr),
                })
                .collect(),
            requests: o
                .requests
                .iter()
                .map(|r| RequestRow {
                    doc: r.doc as u64,
                    choice: r.choice as u64,
                    logprob: r.logprob,
                    is_greedy: r.is_greedy,
                    n_tokens: r.n_tokens as u64,
                })
                .collect(),
            docs: Vec::new(),
            inputs: Inputs::default(),
        }
    }
}

/// One metric of one task of one run, for reports.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResult {
    pub model: String,
    pub revision: String,
    pub dtype: String,
    pub protocol: String,
    pub device: String,
    pub task: String,
    pub metric: String,
    pub value: f64,
    pub stderr: Option<f64>,
    /// Documents the metric was computed over.
    pub n: u64,
}

/// The metric the paper reports for a task, and the task's name in the paper's `all_results.tsv`:
/// `mc1` / `mc2` for TruthfulQA, `acc` under an `isp_` prefix for the Inverse Scaling Prize tasks, `acc` under
/// the task's own name for anything else (custom tasks).
pub fn paper_metric(task: &str) -> (&'static str, String) {
    match task {
        "truthfulqa_mc1" => ("mc1", task.to_string()),
        "truthfulqa_mc2" => ("mc2", task.to_string()),
        t if crate::tasks::STUDY_TASKS.contains(&t) || crate::tasks::LM_EVAL_ROUND1_TASKS.contains(&t) => ("acc", format!("isp_{t}")),
        t => ("acc", t.to_string()),
    }
}

/// [`paper_metric`], with `acc` replaced by `choice_metric` (`acc` or `acc_norm`).
fn report_metric(task: &str, choice_metric: &str) -> (&'static str, String) {
    match paper_metric(task) {
        ("acc", name) if choice_metric == "acc_norm" => ("acc_norm", name),
        other => other,
    }
}

/// Is a stored metric the one reported for the task? TruthfulQA's are stored as `mc1` / `mc2`, or as `acc`
/// under lm-eval 0.4's names (its tasks truthfulqa_mc1 and truthfulqa_mc2 each report `acc`).
fn is_report_metric(task: &str, stored: &str, choice_metric: &str) -> bool {
    let (want, _) = report_metric(task, choice_metric);
    stored == want || (matches!(want, "mc1" | "mc2") && stored == "acc")
}

/// What a merge did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeReport {
    /// Tasks copied in.
    pub added: usize,
    /// Tasks already present with identical values (skipped).
    pub identical: usize,
    /// Tasks present in both with different values: left as they were; one line each.
    pub conflicts: Vec<String>,
}

pub struct Store {
    path: PathBuf,
    conn: Connection,
    /// Opened by [`Store::open`] (else read-only).
    writable: bool,
    /// Schema version of the file (older ones are read as they are; writers migrate them).
    version: i64,
}

fn db_err(path: &Path, what: &str, e: rusqlite::Error) -> Error {
    Error::file(path, format!("results store: {what}: {e}"))
}

/// What a SQLite file holds, judged without writing to it.
enum Kind {
    /// No schema at all (a new or zero-byte file).
    Empty,
    /// An lmscore store of this schema version.
    Store(i64),
    /// Something else, and why it is not a store.
    Foreign(String),
}

fn classify(c: &Connection) -> rusqlite::Result<Kind> {
    let app: i64 = c.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if app != 0 && app != APPLICATION_ID {
        return Ok(Kind::Foreign(format!("its application_id is {app:#x}, another application's")));
    }
    // One statement, so one snapshot: another process creating the schema between two queries would make a
    // half-seen store look foreign.
    let objects: Vec<(String, String)> = c
        .prepare("SELECT type, name FROM sqlite_master ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let tables: Vec<String> = objects.iter().filter(|o| o.0 == "table").map(|o| o.1.clone()).collect();
    if objects.is_empty() {
        return Ok(Kind::Empty);
    }
    let holds = if tables.is_empty() {
        "no tables".to_string()
    } else {
        format!("tables {}", tables.join(", "))
    };
    if !tables.iter().any(|t| t == "meta") {
        return Ok(Kind::Foreign(format!("it holds {holds} and no lmscore meta table")));
    }
    let version = match c
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))
        .optional()
    {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(Kind::Foreign(format!("it holds {holds}; its meta table has no schema_version"))),
        Err(e) => return Ok(Kind::Foreign(format!("it holds {holds}; its meta table is not lmscore's ({e})"))),
    };
    match version.parse::<i64>() {
        Ok(v) if v >= 1 => Ok(Kind::Store(v)),
        _ => Ok(Kind::Foreign(format!("its schema_version {version:?} is not an lmscore schema version"))),
    }
}

/// Percent-encode a path for a `file:` URI.
fn file_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The file system a `f_type` of `statfs(2)` names, when it is one where SQLite's WAL mode is unsafe: a
/// network or cluster file system (the `-shm` shared memory and the POSIX locks WAL relies on are not
/// coherent across clients there), or FUSE, which may be one. Only the low 32 bits are compared: the magic
/// numbers are 32-bit and `f_type` is a signed word on some targets.
pub fn classify_fs_type(f_type: u64) -> Option<&'static str> {
    match f_type & 0xFFFF_FFFF {
        0x6969 => Some("NFS"),
        0x0BD0_0BD0 => Some("Lustre"),
        0xFF53_4D42 => Some("CIFS/SMB"),
        0xFE53_4D42 => Some("SMB2"),
        0x4750_4653 => Some("GPFS"),
        0x1983_0326 => Some("BeeGFS"),
        0x00C3_6400 => Some("CephFS"),
        0x0102_1997 => Some("9p"),
        0x6573_5546 => Some("FUSE (possibly network)"),
        _ => None,
    }
}

/// The `f_type` magic number of the file system `path` lies on (`statfs(2)`, low 32 bits; what
/// `stat -f -c %t` prints), or None where `statfs` fails or on a platform other than Linux.
pub fn fs_type(path: &Path) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: `c` is a NUL-terminated path and `st` a statfs the call may fill; nothing is kept.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // f_type's width and signedness differ between targets
        let f_type = st.f_type as u64;
        Some(f_type & 0xFFFF_FFFF)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// The network file system `dir` lies on (see [`classify_fs_type`]), or None: a local file system, a
/// directory `statfs` cannot read, or a platform other than Linux.
pub fn network_filesystem(dir: &Path) -> Option<&'static str> {
    fs_type(dir).and_then(classify_fs_type)
}

/// One line on stderr when a store about to be written lies on a network file system: not an error (a
/// single writer there usually works), but WAL on it can corrupt the store or lock up.
fn warn_if_network_filesystem(path: &Path) {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    if let Some(fs) = network_filesystem(&dir) {
        eprintln!(
            "warning: results store {} is on {fs}: SQLite's WAL mode on a network file system can corrupt the store or lock up; \
             write it on node-local disk ($TMPDIR, /local) and copy it to shared storage when the sweep has exited (docs/cluster.md)",
            path.display()
        );
    }
}

/// `path` with `suffix` appended to its file name (`r.db` -> `r.db-wal`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

impl Store {
    /// Open a results store for writing, creating it if the file is missing or empty. A database that is
    /// not an lmscore store is refused and left as it is (nothing is written before that check).
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::file(&path, format!("results store: directory {} does not exist", dir.display())));
            }
        }
        if let Ok(meta) = std::fs::metadata(&path) {
            if !meta.is_file() {
                return Err(Error::file(&path, "results store: not a regular file"));
            }
        }
        warn_if_network_filesystem(&path);
        let conn = Connection::open(&path).map_err(|e| db_err(&path, "cannot open", e))?;
        let mut s = Store {
            path,
            conn,
            writable: true,
            version: SCHEMA_VERSION,
        };
        s.init()?;
        Ok(s)
    }

    /// Open an existing results store read-only (SQLITE_OPEN_READ_ONLY): nothing in the file or beside it is
    /// created or changed. Errors name the file: missing, not SQLite, not an lmscore store, a newer schema.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::file(&path, "results store not found")),
            Err(e) => return Err(Error::io(&path, e)),
            Ok(m) if !m.is_file() => return Err(Error::file(&path, "results store: not a regular file")),
            Ok(_) => {}
        }
        let connect = |immutable: bool| -> rusqlite::Result<(Connection, Kind)> {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = if immutable {
                let abs = std::fs::canonicalize(&path).map_err(|_| rusqlite::Error::InvalidPath(path.clone()))?;
                Connection::open_with_flags(format!("{}?immutable=1", file_uri(&abs)), flags | OpenFlags::SQLITE_OPEN_URI)?
            } else {
                Connection::open_with_flags(&path, flags)?
            };
            conn.busy_timeout(std::time::Duration::from_secs(60))?;
            let kind = classify(&conn)?;
            Ok((conn, kind))
        };
        // A store left in WAL mode (by a killed writer or an older lmscore) needs a `-shm` file; where none can
        // be created (a read-only directory) and no `-wal` holds pending writes, the main file is the whole
        // store: read it as immutable.
        let (conn, kind) = match connect(false) {
            Ok(x) => x,
            Err(e) if !sibling(&path, "-wal").exists() => connect(true).map_err(|_| db_err(&path, "cannot read it", e))?,
            Err(e) => return Err(db_err(&path, "cannot read it", e)),
        };
        let version = match kind {
            Kind::Store(v) if v <= SCHEMA_VERSION => v,
            Kind::Store(v) => return Err(newer_schema(&path, v)),
            Kind::Empty => return Err(Error::file(&path, "not an lmscore results store (an empty database)")),
            Kind::Foreign(why) => return Err(Error::file(&path, format!("not an lmscore results store: {why}"))),
        };
        Ok(Store {
            path,
            conn,
            writable: false,
            version,
        })
    }

    fn err(&self, what: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        let what = what.to_string();
        move |e| db_err(&self.path, &what, e)
    }

    /// Check what the file holds (refusing anything but an empty database or an lmscore store), then switch
    /// to WAL and create or migrate the schema.
    fn init(&mut self) -> Result<()> {
        let path = self.path.clone();
        let c = &mut self.conn;
        c.busy_timeout(std::time::Duration::from_secs(60))
            .map_err(|e| db_err(&path, "setting the busy timeout", e))?;
        let check = |c: &Connection| -> Result<Kind> {
            match classify(c).map_err(|e| db_err(&path, "not a SQLite database (or unreadable)", e))? {
                Kind::Foreign(why) => Err(Error::file(
                    &path,
                    format!("not an lmscore results store: {why}; refusing to write to it (give a new file or an existing store)"),
                )),
                Kind::Store(v) if v > SCHEMA_VERSION => Err(newer_schema(&path, v)),
                k => Ok(k),
            }
        };
        check(c)?;
        // `journal_mode` answers with the mode in effect; anything but wal means the file is not writable
        // (or lives on a file system without shared memory).
        // Switching the journal mode takes an exclusive lock and SQLite answers "locked" at once, without the
        // busy handler, while another writer (a concurrent sweep creating the schema) holds the file: retry
        // for as long as the busy timeout would have waited.
        let started = std::time::Instant::now();
        let mode: String = loop {
            match c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                        && started.elapsed() < std::time::Duration::from_secs(60) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => break r.map_err(|e| db_err(&path, "cannot switch to WAL mode (is the file writable?)", e))?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::file(
                &path,
                format!("results store: could not switch to WAL mode (journal_mode is {mode}; is the file writable?)"),
            ));
        }
        c.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(|e| db_err(&path, "setting pragmas", e))?;
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| db_err(&path, "begin", e))?;
        // Again inside the write lock: another process may have created the schema meanwhile.
        let setup = match check(&tx)? {
            Kind::Empty => format!(
                "{SCHEMA} INSERT INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
                 PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ),
            Kind::Store(1) => format!(
                "{SCHEMA} {MIGRATE_1_TO_2} {MIGRATE_2_TO_3} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ),
            Kind::Store(2) => format!("{SCHEMA} {MIGRATE_2_TO_3} PRAGMA user_version = {SCHEMA_VERSION};"),
            _ => String::new(),
        };
        tx.execute_batch(&setup).map_err(|e| db_err(&path, "creating the schema", e))?;
        tx.commit().map_err(|e| db_err(&path, "commit", e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn run_id(&self, key: &RunKey) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT id FROM runs WHERE model=?1 AND revision=?2 AND dtype=?3 AND protocol=?4 AND device=?5",
                params![key.model, key.revision, key.dtype, key.protocol, key.device],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("looking up a run"))
    }

    /// Record that a run started (its `started_at` is kept from the first call); returns nothing new if it exists.
    pub fn start_run(&mut self, key: &RunKey) -> Result<()> {
        let tx = self.conn.transaction().map_err(|e| db_err(&self.path, "begin", e))?;
        ensure_run(&tx, key, None).map_err(|e| db_err(&self.path, "recording a run", e))?;
        tx.commit().map_err(|e| db_err(&self.path, "commit", e))
    }

    /// Mark a run finished (every task it was asked for is complete).
    pub fn finish_run(&mut self, key: &RunKey) -> Result<()> {
        self.start_run(key)?;
        self.conn
            .execute(
                &format!("UPDATE runs SET finished_at={NOW} WHERE model=?1 AND revision=?2 AND dtype=?3 AND protocol=?4 AND device=?5"),
                params![key.model, key.revision, key.dtype, key.protocol, key.device],
            )
            .map_err(self.err("finishing a run"))?;
        Ok(())
    }

    /// Where this task of this run stands for `inputs`: missing, complete, or stored from other inputs.
    pub fn task_state(&self, key: &RunKey, task: &str, inputs: &Inputs) -> Result<TaskState> {
        let Some(id) = self.run_id(key)? else { return Ok(TaskState::Missing) };
        let stored = stored_inputs(&self.conn, id, task, self.version).map_err(self.err("checking a task"))?;
        Ok(match stored {
            None => TaskState::Missing,
            Some(s) if s == *inputs => TaskState::Done,
            Some(s) => TaskState::Stale(s.difference(inputs, ("stored", "now"))),
        })
    }

    /// Is this task of this run complete from these inputs (requests and metrics stored)?
    pub fn is_done(&self, key: &RunKey, task: &str, inputs: &Inputs) -> Result<bool> {
        Ok(self.task_state(key, task, inputs)? == TaskState::Done)
    }

    /// Store one task's outcome computed from `inputs` (see [`Store::record`]).
    pub fn record_task(&mut self, key: &RunKey, inputs: &Inputs, outcome: &crate::tasks::TaskOutcome, force: bool) -> Result<bool> {
        let mut rec = TaskRecord::from(outcome);
        rec.inputs = inputs.clone();
        self.record(key, &rec, force)
    }

    /// Store one task's requests, metrics and completion marker in one transaction: all or nothing. A record
    /// of the task from other inputs (or, with `force`, from any) is replaced in the same transaction.
    /// Returns false (and writes nothing) if the task was already complete from the same inputs and not
    /// `force`d (e.g. another process stored it meanwhile).
    pub fn record(&mut self, key: &RunKey, rec: &TaskRecord, force: bool) -> Result<bool> {
        let path = self.path.clone();
        let path = path.as_path();
        let e = |what: &'static str| move |e: rusqlite::Error| db_err(path, &format!("{what} for {key} task {}", rec.task), e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e("begin"))?;
        let id = ensure_run(&tx, key, None).map_err(e("recording the run"))?;
        match stored_inputs(&tx, id, &rec.task, SCHEMA_VERSION).map_err(e("checking"))? {
            Some(s) if s == rec.inputs && !force => return Ok(false),
            Some(_) => delete_task(&tx, id, &rec.task).map_err(e("replacing the stored task"))?,
            None => {}
        }
        insert_task(&tx, id, rec, env!("CARGO_PKG_VERSION"), None).map_err(e("writing"))?;
        crash_point();
        tx.commit().map_err(e("commit"))?;
        Ok(true)
    }

    /// Every stored metric, ordered by model, revision, task, metric (then dtype, protocol, device).
    pub fn all_task_results(&self) -> Result<Vec<StoredResult>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT r.model, r.revision, r.dtype, r.protocol, r.device, t.task, t.metric, t.value, t.stderr, t.n
                 FROM task_results t JOIN runs r ON r.id = t.run_id
                 ORDER BY r.model, r.revision, t.task, t.metric, r.dtype, r.protocol, r.device",
            )
            .map_err(self.err("reading results"))?;
        let rows = st
            .query_map([], |r| {
                Ok(StoredResult {
                    model: r.get(0)?,
                    revision: r.get(1)?,
                    dtype: r.get(2)?,
                    protocol: r.get(3)?,
                    device: r.get(4)?,
                    task: r.get(5)?,
                    metric: r.get(6)?,
                    value: r.get::<_, Option<f64>>(7)?.unwrap_or(f64::NAN),
                    stderr: r.get(8)?,
                    n: r.get::<_, i64>(9)? as u64,
                })
            })
            .map_err(self.err("reading results"))?;
        rows.collect::<std::result::Result<_, _>>().map_err(self.err("reading results"))
    }

    /// The paper's results table from this store: one row per (model, revision, task) with the paper's metric
    /// (see [`paper_metric`]), for runs under `protocol` (None: any). A missing standard error is NaN. Two runs of
    /// the same checkpoint and task (another device or dtype) are an error naming them: pick one with `protocol`
    /// or keep such runs in separate stores.
    pub fn report_rows(&self, protocol: Option<&str>) -> Result<Vec<crate::report::ResultRow>> {
        self.report_rows_with(protocol, "acc")
    }

    /// [`Store::report_rows`] with `choice_metric` (`acc` or `acc_norm`) for the tasks the paper reports `acc` for.
    pub fn report_rows_with(&self, protocol: Option<&str>, choice_metric: &str) -> Result<Vec<crate::report::ResultRow>> {
        let mut out: Vec<crate::report::ResultRow> = Vec::new();
        let mut seen: std::collections::HashMap<(String, String, String), String> = std::collections::HashMap::new();
        for r in self.all_task_results()? {
            let (_, task) = report_metric(&r.task, choice_metric);
            if !is_report_metric(&r.task, &r.metric, choice_metric) || protocol.is_some_and(|p| p != r.protocol) {
                continue;
            }
            let run = format!("{}/{}/{}", r.protocol, r.device, r.dtype);
            if let Some(other) = seen.insert((r.model.clone(), r.revision.clone(), task.clone()), run.clone()) {
                return Err(Error::file(
                    &self.path,
                    format!(
                        "{}@{} task {} was scored twice ({other} and {run}); choose a protocol or split the store",
                        r.model, r.revision, r.task
                    ),
                ));
            }
            out.push(crate::report::ResultRow {
                model: r.model,
                revision: r.revision,
                task,
                accuracy: r.value,
                accuracy_se: r.stderr.unwrap_or(f64::NAN),
            });
        }
        Ok(out)
    }

    /// Every metric of every run under `protocol` (None: any), keyed like [`Store::report_rows_with`]'s rows
    /// (the paper's task names), for the per-run JSON of `report`: acc and acc_norm of the choice tasks, the
    /// documents scored and the protocol. TruthfulQA's `mc1` / `mc2` of an older store are lm-eval's `acc`.
    pub fn report_run_details(&self, protocol: Option<&str>) -> Result<crate::report::RunDetails> {
        let mut out = crate::report::RunDetails::new();
        for r in self.all_task_results()? {
            if protocol.is_some_and(|p| p != r.protocol) || !r.value.is_finite() {
                continue;
            }
            let (_, task) = paper_metric(&r.task);
            let metric = if matches!(r.metric.as_str(), "mc1" | "mc2") {
                "acc".to_string()
            } else {
                r.metric.clone()
            };
            let d = out
                .entry((r.model.clone(), r.revision.clone()))
                .or_default()
                .tasks
                .entry(task)
                .or_default();
            d.protocol = r.protocol.clone();
            d.n = d.n.max(r.n);
            if !d.metrics.iter().any(|m| m.0 == metric) {
                d.metrics.push((metric, r.value, r.stderr.unwrap_or(f64::NAN)));
            }
        }
        for run in out.values_mut() {
            for t in run.tasks.values_mut() {
                // acc before acc_norm, as lm-eval lists them.
                t.metrics.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
        Ok(out)
    }

    /// Per-document values of the metric [`Store::report_rows_with`] reports, for the same runs, keyed like its
    /// rows (the paper's task names), and each task's chance level (the mean of its documents' chance values).
    /// Empty for a store older than version 3.
    pub fn report_items(&self, protocol: Option<&str>, choice_metric: &str) -> Result<crate::report::ItemData> {
        let mut items = crate::report::ItemData::default();
        if self.version < 3 {
            return Ok(items);
        }
        // (model, revision, protocol, task, metric) -> (value, chance) per document, in document order.
        type Key = (String, String, String, String, String);
        let read = || -> rusqlite::Result<Vec<(Key, Vec<(f64, f64)>)>> {
            let mut st = self.conn.prepare(
                "SELECT r.model, r.revision, r.protocol, d.task, d.metric, d.value, d.chance FROM doc_results d JOIN runs r ON r.id = d.run_id
                 ORDER BY r.id, d.task, d.metric, d.doc",
            )?;
            let mut rows = st.query([])?;
            let mut out: Vec<(Key, Vec<(f64, f64)>)> = Vec::new();
            while let Some(r) = rows.next()? {
                let key: Key = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
                let v = (
                    r.get::<_, Option<f64>>(5)?.unwrap_or(f64::NAN),
                    r.get::<_, Option<f64>>(6)?.unwrap_or(f64::NAN),
                );
                match out.last_mut() {
                    Some((k, values)) if *k == key => values.push(v),
                    _ => out.push((key, vec![v])),
                }
            }
            Ok(out)
        };
        for ((model, revision, proto, task, metric), values) in read().map_err(self.err("reading per-document results"))? {
            let (_, name) = report_metric(&task, choice_metric);
            if !is_report_metric(&task, &metric, choice_metric) || protocol.is_some_and(|p| p != proto) {
                continue;
            }
            let chance: Vec<f64> = values.iter().map(|v| v.1).filter(|c| c.is_finite()).collect();
            if chance.len() == values.len() && !chance.is_empty() {
                items
                    .chance
                    .entry(name.clone())
                    .or_insert(chance.iter().sum::<f64>() / chance.len() as f64);
            }
            items.insert(&model, &revision, &name, values.into_iter().map(|v| v.0).collect());
        }
        Ok(items)
    }

    /// Record one attempt at a checkpoint (its download, load and scoring seconds).
    pub fn record_timing(&mut self, key: &RunKey, t: &Timing) -> Result<()> {
        let tx = self.conn.transaction().map_err(|e| db_err(&self.path, "begin", e))?;
        let id = ensure_run(&tx, key, None).map_err(|e| db_err(&self.path, "recording a run", e))?;
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO timings (run_id, finished_at, download_seconds, load_seconds, scoring_seconds, tasks, weights_bytes,
                                                 params, computed_tokens)
                 VALUES (?1, {NOW}, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                id,
                t.download_seconds,
                t.load_seconds,
                t.scoring_seconds,
                t.tasks as i64,
                t.weights_bytes as i64,
                t.params as i64,
                t.computed_tokens as i64
            ],
        )
        .map_err(|e| db_err(&self.path, &format!("recording the timings of {key}"), e))?;
        tx.commit().map_err(|e| db_err(&self.path, "commit", e))
    }

    /// Per checkpoint (run) with recorded timings: its attempts summed, and the tokens computed for its tasks.
    /// Runs ordered by model, revision. Empty for a store older than version 3.
    pub fn timings(&self) -> Result<Vec<CheckpointTiming>> {
        if self.version < 3 {
            return Ok(Vec::new());
        }
        let read = || -> rusqlite::Result<Vec<CheckpointTiming>> {
            let mut st = self.conn.prepare(
                "SELECT r.model, r.revision, r.dtype, r.protocol, r.device, count(*), sum(t.download_seconds), sum(t.load_seconds),
                        sum(t.scoring_seconds), sum(t.tasks), max(t.weights_bytes), max(t.params), sum(t.computed_tokens)
                 FROM timings t JOIN runs r ON r.id = t.run_id GROUP BY r.id ORDER BY r.model, r.revision, r.id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(CheckpointTiming {
                    run: RunKey::from_columns(r, 0)?,
                    attempts: r.get::<_, i64>(5)? as u64,
                    total: Timing {
                        download_seconds: r.get(6)?,
                        load_seconds: r.get(7)?,
                        scoring_seconds: r.get(8)?,
                        tasks: r.get::<_, i64>(9)? as u64,
                        weights_bytes: r.get::<_, i64>(10)? as u64,
                        params: r.get::<_, i64>(11)? as u64,
                        computed_tokens: r.get::<_, i64>(12)? as u64,
                    },
                })
            })?;
            rows.collect()
        };
        read().map_err(self.err("reading timings"))
    }

    /// The stored record of one task (requests ordered by doc, choice; metrics by name); None if not complete.
    pub fn task_record(&self, key: &RunKey, task: &str) -> Result<Option<TaskRecord>> {
        let Some(id) = self.run_id(key)? else { return Ok(None) };
        read_task(&self.conn, id, task, self.version).map_err(self.err("reading a task"))
    }

    /// Every complete (run, task) in the store.
    pub fn completed(&self) -> Result<Vec<(RunKey, String)>> {
        completed(&self.conn).map_err(self.err("listing tasks"))
    }

    /// Copy every complete task of the store at `other` (opened read-only) into this one; see [`Store::merge_store`].
    pub fn merge_from(&mut self, other: &Path) -> Result<MergeReport> {
        let src = Store::open_read_only(other)?;
        self.merge_store(&src)
    }

    /// Copy every complete task of `src` into this store, in one transaction. Tasks already here with
    /// identical values and inputs are skipped; with different ones they are reported in `conflicts` and left
    /// as they are. Running it twice changes nothing the second time.
    pub fn merge_store(&mut self, src: &Store) -> Result<MergeReport> {
        let other = src.path.as_path();
        let same_file = match (std::fs::canonicalize(other), std::fs::canonicalize(&self.path)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same_file {
            return Err(Error::file(other, "cannot merge a results store into itself"));
        }
        let oerr = |what: &'static str| move |e: rusqlite::Error| db_err(other, what, e);
        let mut report = MergeReport::default();
        let runs = {
            let mut st = src
                .conn
                .prepare("SELECT id, model, revision, dtype, protocol, device, lmscore_version, started_at, finished_at FROM runs ORDER BY id")
                .map_err(oerr("reading runs"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        RunKey::from_columns(r, 1)?,
                        (r.get::<_, String>(6)?, r.get::<_, String>(7)?, r.get::<_, Option<String>>(8)?),
                    ))
                })
                .map_err(oerr("reading runs"))?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(oerr("reading runs"))?
        };
        let path = self.path.clone();
        let path = path.as_path();
        let e = |what: &'static str| move |e: rusqlite::Error| db_err(path, what, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e("begin"))?;
        for (src_id, key, (version, started_at, finished_at)) in runs {
            let id = ensure_run(&tx, &key, Some((&version, &started_at))).map_err(e("merging a run"))?;
            let tasks: Vec<(String, String, String)> = {
                let mut st = src
                    .conn
                    .prepare("SELECT task, lmscore_version, finished_at FROM task_runs WHERE run_id=?1 ORDER BY task")
                    .map_err(oerr("reading tasks"))?;
                let rows = st
                    .query_map([src_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(oerr("reading tasks"))?;
                rows.collect::<std::result::Result<_, _>>().map_err(oerr("reading tasks"))?
            };
            for (task, task_version, task_finished) in tasks {
                let Some(theirs) = read_task(&src.conn, src_id, &task, src.version).map_err(oerr("reading a task"))? else {
                    continue; // listed above, gone now: nothing to merge
                };
                match read_task(&tx, id, &task, SCHEMA_VERSION).map_err(e("reading a task"))? {
                    None => {
                        insert_task(&tx, id, &theirs, &task_version, Some(&task_finished)).map_err(e("writing a task"))?;
                        report.added += 1;
                    }
                    Some(ours) if ours.same_results(&theirs) => report.identical += 1,
                    Some(ours) => report
                        .conflicts
                        .push(format!("{key} task {task}: {}", describe_difference(&ours, &theirs))),
                }
            }
            if src.version >= 3 {
                // Timings are a log of attempts: copy those not here yet (same run and time), never replace.
                type Row = (String, f64, f64, f64, i64, i64, i64, i64);
                let rows: Vec<Row> = {
                    let mut st = src
                        .conn
                        .prepare(
                            "SELECT finished_at, download_seconds, load_seconds, scoring_seconds, tasks, weights_bytes, params, computed_tokens
                             FROM timings WHERE run_id=?1",
                        )
                        .map_err(oerr("reading timings"))?;
                    let rows = st
                        .query_map([src_id], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
                        })
                        .map_err(oerr("reading timings"))?;
                    rows.collect::<std::result::Result<_, _>>().map_err(oerr("reading timings"))?
                };
                for (at, d, l, sc, n, b, p, ct) in rows {
                    tx.execute(
                        "INSERT OR IGNORE INTO timings (run_id, finished_at, download_seconds, load_seconds, scoring_seconds, tasks, weights_bytes,
                                                        params, computed_tokens)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![id, at, d, l, sc, n, b, p, ct],
                    )
                    .map_err(e("merging timings"))?;
                }
            }
            if let Some(f) = finished_at {
                // Finished if either side finished it; keep the later time.
                tx.execute(
                    "UPDATE runs SET finished_at=max(coalesce(finished_at, ''), ?2) WHERE id=?1",
                    params![id, f],
                )
                .map_err(e("merging a run"))?;
            }
        }
        tx.commit().map_err(e("commit"))?;
        Ok(report)
    }
}

impl Drop for Store {
    /// A writer leaves the file in rollback-journal mode (the WAL checkpointed into it and removed), so that
    /// readers find one self-contained file. Best effort: while another connection has the store open the
    /// switch is refused at once (no waiting) and the file stays in WAL mode, which is just as valid.
    fn drop(&mut self) {
        if self.writable {
            let _ = self.conn.busy_timeout(std::time::Duration::ZERO);
            let _ = self.conn.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(()));
        }
    }
}

fn newer_schema(path: &Path, v: i64) -> Error {
    Error::file(
        path,
        format!("results store has schema version {v}, this lmscore reads versions up to {SCHEMA_VERSION}"),
    )
}

/// Test hook for crash safety: with `LMSCORE_TEST_ABORT_IN_TRANSACTION=N`, the N-th task write of this
/// process aborts the process (SIGABRT, no unwinding, no cleanup) after its rows were inserted and before
/// the commit: the moment where a crash would hurt most. Unset, it costs one environment lookup per task.
fn crash_point() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    if let Some(n) = std::env::var("LMSCORE_TEST_ABORT_IN_TRANSACTION")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        if WRITES.fetch_add(1, Ordering::SeqCst) + 1 == n {
            eprintln!("LMSCORE_TEST_ABORT_IN_TRANSACTION={n}: aborting inside the store transaction");
            std::process::abort();
        }
    }
}

fn ensure_run(tx: &Connection, key: &RunKey, from: Option<(&str, &str)>) -> rusqlite::Result<i64> {
    let (version, started) = match from {
        Some((v, s)) => (v.to_string(), Some(s.to_string())),
        None => (env!("CARGO_PKG_VERSION").to_string(), None),
    };
    tx.execute(
        &format!(
            "INSERT INTO runs (model, revision, dtype, protocol, device, lmscore_version, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, coalesce(?7, {NOW}))
             ON CONFLICT (model, revision, dtype, protocol, device) DO UPDATE SET started_at = min(started_at, excluded.started_at)"
        ),
        params![key.model, key.revision, key.dtype, key.protocol, key.device, version, started],
    )?;
    tx.query_row(
        "SELECT id FROM runs WHERE model=?1 AND revision=?2 AND dtype=?3 AND protocol=?4 AND device=?5",
        params![key.model, key.revision, key.dtype, key.protocol, key.device],
        |r| r.get(0),
    )
}

/// The digest columns, or empty strings in a version-1 store.
fn inputs_columns(version: i64) -> &'static str {
    if version >= 2 {
        "weights_digest, data_digest"
    } else {
        "'', ''"
    }
}

/// The inputs a complete task was stored from; None if the task is not complete.
fn stored_inputs(c: &Connection, run: i64, task: &str, version: i64) -> rusqlite::Result<Option<Inputs>> {
    c.query_row(
        &format!("SELECT {} FROM task_runs WHERE run_id=?1 AND task=?2", inputs_columns(version)),
        params![run, task],
        |r| {
            Ok(Inputs {
                weights: r.get(0)?,
                data: r.get(1)?,
            })
        },
    )
    .optional()
}

fn delete_task(tx: &Transaction, run: i64, task: &str) -> rusqlite::Result<()> {
    for table in ["requests", "task_results", "doc_results", "task_runs"] {
        tx.execute(&format!("DELETE FROM {table} WHERE run_id=?1 AND task=?2"), params![run, task])?;
    }
    Ok(())
}

fn insert_task(tx: &Transaction, run: i64, rec: &TaskRecord, version: &str, finished_at: Option<&str>) -> rusqlite::Result<()> {
    {
        let mut st =
            tx.prepare_cached("INSERT INTO requests (run_id, task, doc, choice, logprob, is_greedy, n_tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
        for r in &rec.requests {
            st.execute(params![
                run,
                rec.task,
                r.doc as i64,
                r.choice as i64,
                r.logprob,
                r.is_greedy,
                r.n_tokens as i64
            ])?;
        }
        let mut st = tx.prepare_cached("INSERT INTO task_results (run_id, task, metric, value, stderr, n) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        for m in &rec.metrics {
            st.execute(params![run, rec.task, m.name, m.value, m.stderr, rec.n_docs as i64])?;
        }
        let mut st = tx.prepare_cached("INSERT INTO doc_results (run_id, task, metric, doc, value, chance) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        for d in &rec.docs {
            // NaN is stored as NULL (SQLite has no NaN) and read back as NaN.
            let nan_null = |v: f64| (!v.is_nan()).then_some(v);
            st.execute(params![run, rec.task, d.metric, d.doc as i64, nan_null(d.value), nan_null(d.chance)])?;
        }
    }
    tx.execute(
        &format!(
            "INSERT INTO task_runs (run_id, task, n_docs, skipped_rows, naive_tokens, computed_tokens, seconds, lmscore_version, finished_at,
                                    weights_digest, data_digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, coalesce(?9, {NOW}), ?10, ?11)"
        ),
        params![
            run,
            rec.task,
            rec.n_docs as i64,
            rec.skipped_rows as i64,
            rec.naive_tokens as i64,
            rec.computed_tokens as i64,
            rec.seconds,
            version,
            finished_at,
            rec.inputs.weights,
            rec.inputs.data
        ],
    )?;
    Ok(())
}

fn read_task(c: &Connection, run: i64, task: &str, version: i64) -> rusqlite::Result<Option<TaskRecord>> {
    let head = c
        .query_row(
            &format!(
                "SELECT n_docs, skipped_rows, naive_tokens, computed_tokens, seconds, {} FROM task_runs WHERE run_id=?1 AND task=?2",
                inputs_columns(version)
            ),
            params![run, task],
            |r| {
                Ok((
                    (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?),
                    r.get::<_, f64>(4)?,
                    Inputs {
                        weights: r.get(5)?,
                        data: r.get(6)?,
                    },
                ))
            },
        )
        .optional()?;
    let Some(((n_docs, skipped, naive, computed), seconds, inputs)) = head else {
        return Ok(None);
    };
    let mut st = c.prepare_cached("SELECT metric, value, stderr FROM task_results WHERE run_id=?1 AND task=?2 ORDER BY metric")?;
    let metrics = st
        .query_map(params![run, task], |r| {
            Ok(MetricRow {
                name: r.get(0)?,
                value: r.get::<_, Option<f64>>(1)?.unwrap_or(f64::NAN),
                stderr: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st =
        c.prepare_cached("SELECT doc, choice, logprob, is_greedy, n_tokens FROM requests WHERE run_id=?1 AND task=?2 ORDER BY doc, choice")?;
    let requests = st
        .query_map(params![run, task], |r| {
            Ok(RequestRow {
                doc: r.get::<_, i64>(0)? as u64,
                choice: r.get::<_, i64>(1)? as u64,
                logprob: r.get(2)?,
                is_greedy: r.get(3)?,
                n_tokens: r.get::<_, i64>(4)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let docs = if version >= 3 {
        let mut st = c.prepare_cached("SELECT metric, doc, value, chance FROM doc_results WHERE run_id=?1 AND task=?2 ORDER BY metric, doc")?;
        let rows = st.query_map(params![run, task], |r| {
            Ok(DocRow {
                metric: r.get(0)?,
                doc: r.get::<_, i64>(1)? as u64,
                value: r.get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN),
                chance: r.get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN),
            })
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(Some(TaskRecord {
        task: task.to_string(),
        n_docs: n_docs as u64,
        skipped_rows: skipped as u64,
        naive_tokens: naive as u64,
        computed_tokens: computed as u64,
        seconds,
        metrics,
        requests,
        docs,
        inputs,
    }))
}

fn completed(c: &Connection) -> rusqlite::Result<Vec<(RunKey, String)>> {
    let mut st = c.prepare(
        "SELECT r.model, r.revision, r.dtype, r.protocol, r.device, t.task FROM task_runs t JOIN runs r ON r.id = t.run_id
         ORDER BY r.model, r.revision, r.dtype, r.protocol, r.device, t.task",
    )?;
    let rows = st.query_map([], |r| Ok((RunKey::from_columns(r, 0)?, r.get(5)?)))?;
    rows.collect()
}

/// Two records of the same task differ in their results or their inputs (timings and token counts are not
/// results).
impl TaskRecord {
    fn same_results(&self, other: &TaskRecord) -> bool {
        self.task == other.task
            && self.inputs == other.inputs
            && self.n_docs == other.n_docs
            && self.skipped_rows == other.skipped_rows
            && self.metrics.len() == other.metrics.len()
            && self
                .metrics
                .iter()
                .zip(&other.metrics)
                .all(|(a, b)| a.name == b.name && same(a.value, b.value) && a.stderr == b.stderr)
            && self.requests == other.requests
    }
}

/// Equal, with NaN equal to NaN (a stored NULL metric).
fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn describe_difference(ours: &TaskRecord, theirs: &TaskRecord) -> String {
    if ours.inputs != theirs.inputs {
        return format!(
            "computed from other inputs: {} (kept this one)",
            ours.inputs.difference(&theirs.inputs, ("here", "in the other store"))
        );
    }
    if ours.n_docs != theirs.n_docs {
        return format!("{} documents here, {} in the other store", ours.n_docs, theirs.n_docs);
    }
    for m in &ours.metrics {
        match theirs.metrics.iter().find(|t| t.name == m.name) {
            Some(t) if same(t.value, m.value) && t.stderr == m.stderr => {}
            Some(t) => return format!("{} = {} here, {} in the other store (kept this one)", m.name, m.value, t.value),
            None => return format!("metric {} missing from the other store", m.name),
        }
    }
    if ours.metrics.len() != theirs.metrics.len() {
        return "the other store has extra metrics (kept this one)".into();
    }
    let diff = ours.requests.iter().zip(&theirs.requests).filter(|(a, b)| a != b).count() + ours.requests.len().abs_diff(theirs.requests.len());
    format!("{diff} request log-likelihoods differ (kept this one)")
}
