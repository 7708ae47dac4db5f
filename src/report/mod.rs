//! Reports over finished runs: the paper's results table, lm-eval-style JSON per run, Figure 1
//! (accuracy over training, one panel per task), the paper's statistical table, and trend flags.
//!
//! Input is a flat list of [`ResultRow`]s, one per (model, checkpoint, task), however it was obtained
//! (the paper's `all_results.tsv` via [`read_tsv`], or a results store). [`write_all`] is the single
//! entry point that writes every output into one directory.
//!
//! Conventions, as in the paper: a model's parameter count is the nominal size in its name
//! (`pythia-1.4b` -> 1.4e9), and a checkpoint `stepN` has seen N x 2,097,152 training tokens
//! (1024 sequences of 2048 tokens per step).

mod figure;
mod pdf;
mod table;
mod text;
mod trends;

pub use figure::{chance_level, render_figure, FigureFormat, FigureOptions, FIGURE_SIZE};
pub use table::{format_tests_table, format_timings, statistical_tests, task_display_name, TaskTests};
pub use trends::{format_trends_markdown, format_trends_tsv, trend_flags, trend_flags_with, ItemData, Shape, TestKind, TrendRow, ALPHA};

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Training tokens per optimizer step of every Pythia model (batch 1024 x sequence 2048).
pub const TOKENS_PER_STEP: u64 = 2_097_152;

/// The columns of the paper's `all_results.tsv`, in its order.
pub const TSV_COLUMNS: [&str; 5] = ["ModelName", "ModelRevision", "Task", "Accuracy", "Accuracy_SE"];

/// One result: a task's accuracy (and its standard error) for one model at one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Hugging Face model id, e.g. `EleutherAI/pythia-1.4b`.
    pub model: String,
    /// Checkpoint revision, e.g. `step143000`.
    pub revision: String,
    /// Task id, e.g. `isp_memo_trap` or `truthfulqa_mc1`.
    pub task: String,
    pub accuracy: f64,
    pub accuracy_se: f64,
}

impl ResultRow {
    /// Nominal parameter count from the model name, or what was expected.
    pub fn params(&self) -> std::result::Result<f64, String> {
        parse_params(&self.model).ok_or_else(|| {
            format!(
                "model `{}`: expected a Pythia model name ending in its size, like EleutherAI/pythia-1.4b or pythia-70m-deduped",
                self.model
            )
        })
    }

    /// Training step from the revision, or what was expected.
    pub fn step(&self) -> std::result::Result<u64, String> {
        parse_step(&self.revision).ok_or_else(|| format!("revision `{}`: expected a checkpoint revision like step143000", self.revision))
    }

    /// Training tokens seen at this checkpoint: step x 2,097,152, in f64 (a u64 product wraps past step
    /// 2^43; f64 holds every Pythia step exactly and any other to 16 digits).
    pub fn tokens(&self) -> std::result::Result<f64, String> {
        Ok(step_tokens(self.step()?))
    }

    /// Can the row enter the statistics, trends and figure (a Pythia size and a `stepN` revision)?
    pub fn is_analysable(&self) -> bool {
        self.params().is_ok() && self.step().is_ok()
    }

    /// Everything that must hold for the row to be reported; `Err` says what was expected. A model name without
    /// a size or a revision that is not `stepN` is reported (in the tables and per-run JSON) but left out of the
    /// statistics; a standard error that is NaN is "not available" (a task of one document).
    fn check(&self) -> std::result::Result<(), String> {
        if self.task.is_empty() {
            return Err("empty task name".into());
        }
        if !(0.0..=1.0).contains(&self.accuracy) {
            return Err(format!("accuracy {}: expected a number between 0 and 1", self.accuracy));
        }
        if !(self.accuracy_se.is_nan() || (self.accuracy_se.is_finite() && self.accuracy_se >= 0.0)) {
            return Err(format!(
                "standard error {}: expected a finite number >= 0 (or NA: not available)",
                self.accuracy_se
            ));
        }
        Ok(())
    }
}

/// `pythia-1.4b` -> 1.4e9, `EleutherAI/pythia-70m-deduped` -> 7e7: the first `-`-separated part of
/// the name's last path segment that is a number followed by `m` (millions) or `b` (billions).
pub fn parse_params(model: &str) -> Option<f64> {
    size_token(model).map(|(v, unit)| v * if unit == 'm' { 1e6 } else { 1e9 })
}

/// `pythia-1.4b` -> `1.4B`: the size as written in the model name, for legends.
pub fn size_label(model: &str) -> Option<String> {
    let name = model.rsplit('/').next().unwrap_or(model);
    name.split('-').find(|p| parse_size(p).is_some()).map(|p| p.to_uppercase())
}

fn size_token(model: &str) -> Option<(f64, char)> {
    let name = model.rsplit('/').next().unwrap_or(model);
    name.split('-').find_map(parse_size)
}

fn parse_size(part: &str) -> Option<(f64, char)> {
    let unit = part.chars().last()?.to_ascii_lowercase();
    if unit != 'm' && unit != 'b' {
        return None;
    }
    let num = &part[..part.len() - 1];
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let v: f64 = num.parse().ok()?;
    (v > 0.0 && v.is_finite()).then_some((v, unit))
}

/// Training tokens at step `step`, without integer overflow.
pub fn step_tokens(step: u64) -> f64 {
    step as f64 * TOKENS_PER_STEP as f64
}

/// `step143000` -> 143000.
pub fn parse_step(revision: &str) -> Option<u64> {
    let digits = revision.strip_prefix("step")?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Read a results table with the columns of the paper's `all_results.tsv` (ModelName, ModelRevision,
/// Task, Accuracy, Accuracy_SE, in any order; extra columns are ignored). Every row is checked: a bad
/// row is an error naming its line and what was expected. Blank lines are skipped.
pub fn read_tsv(path: impl AsRef<Path>) -> Result<Vec<ResultRow>> {
    let path = path.as_ref();
    let text = crate::error::read_to_string_bounded(path, crate::error::MAX_DATA_BYTES)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) if !h.trim().is_empty() => h.split('\t').map(str::trim).collect(),
        _ => {
            return Err(Error::row(
                path,
                1,
                format!("expected a header line with the columns {}", TSV_COLUMNS.join(", ")),
            ))
        }
    };
    let mut col = [0usize; 5];
    for (k, name) in TSV_COLUMNS.iter().enumerate() {
        col[k] = header.iter().position(|h| h == name).ok_or_else(|| {
            Error::row(
                path,
                1,
                format!(
                    "header has no `{name}` column: expected the columns {} (tab-separated)",
                    TSV_COLUMNS.join(", ")
                ),
            )
        })?;
    }
    let mut rows = Vec::new();
    let mut seen: HashMap<(String, String, String), usize> = HashMap::new();
    for (i, line) in lines {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != header.len() {
            return Err(Error::row(
                path,
                lineno,
                format!("expected {} tab-separated fields as in the header, found {}", header.len(), fields.len()),
            ));
        }
        let get = |k: usize| fields[col[k]].trim();
        let number = |k: usize| -> Result<f64> {
            let s = get(k);
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| Error::row(path, lineno, format!("{} `{s}`: expected a finite number", TSV_COLUMNS[k])))
        };
        // A standard error can be "not available" (one document): NA, N/A or an empty field, as written.
        let se = if NOT_AVAILABLE.contains(&get(4)) { f64::NAN } else { number(4)? };
        let row = ResultRow {
            model: get(0).to_string(),
            revision: get(1).to_string(),
            task: get(2).to_string(),
            accuracy: number(3)?,
            accuracy_se: se,
        };
        row.check().map_err(|msg| Error::row(path, lineno, msg))?;
        let key = (row.model.clone(), row.revision.clone(), row.task.clone());
        if let Some(first) = seen.insert(key, lineno) {
            return Err(Error::row(
                path,
                lineno,
                format!(
                    "second result for model {}, revision {}, task {} (first on line {first}): expected one row per run and task",
                    row.model, row.revision, row.task
                ),
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// How a results table writes (`NA`) and reads (any of these) a standard error that is not available.
pub const NOT_AVAILABLE: [&str; 3] = ["NA", "N/A", ""];

/// The rows as a TSV with the paper's columns, in the given order. Numbers are written in their
/// shortest round-trip form, so [`read_tsv`] gives back exactly the same values.
pub fn format_tsv(rows: &[ResultRow]) -> String {
    let mut s = TSV_COLUMNS.join("\t");
    s.push('\n');
    for r in rows {
        // `{:?}` is the shortest round-trip form and keeps a `.0` on whole numbers, as Python (which wrote
        // the paper's file) does, so the paper's table is written back byte for byte.
        let se = if r.accuracy_se.is_nan() {
            NOT_AVAILABLE[0].to_string()
        } else {
            format!("{:?}", r.accuracy_se)
        };
        let _ = writeln!(s, "{}\t{}\t{}\t{:?}\t{se}", r.model, r.revision, r.task, r.accuracy);
    }
    s
}

/// One run's metrics as a results store holds them, for its per-run JSON: every metric of every task (acc
/// and acc_norm, not only the one reported), the documents scored and the protocol.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunDetail {
    /// Per task (the id of [`ResultRow::task`]).
    pub tasks: BTreeMap<String, TaskDetail>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskDetail {
    /// `paper-2023` or `lm-eval-0.4`.
    pub protocol: String,
    /// Documents the metrics were computed over.
    pub n: u64,
    /// (metric in lm-eval's name: `acc`, `acc_norm`; value; standard error, NaN where not available).
    pub metrics: Vec<(String, f64, f64)>,
}

/// (model, revision) -> what the store holds for that run.
pub type RunDetails = HashMap<(String, String), RunDetail>;

/// [`run_jsons_with`] from the rows alone (a results table: `acc` only, documents unknown).
pub fn run_jsons(rows: &[ResultRow]) -> Result<Vec<(String, Value)>> {
    run_jsons_with(rows, None)
}

/// lm-eval 0.4's results document (built by [`crate::lm_eval::results_document`], as `lmscore score` writes it)
/// for every (model, revision): `results[task]` with `alias`, `acc,none`, `acc_stderr,none` (and `acc_norm,none`,
/// `acc_norm_stderr,none` where the store has them), `versions`, `n-shot`, `higher_is_better`, `n-samples`,
/// `config` (`model_args` = `pretrained=...,revision=...`) and `date`. Task keys are the report's task ids
/// (the paper's `isp_` names). A standard error that is not available is `"N/A"`, as lm-eval writes it; the
/// documents of a task read from a results table are unknown (`null`).
///
/// Named `<model name>_<revision>.json` like the paper's `per_run_json/`; names are unique, compared without
/// case (for case-insensitive file systems): models that share a last path segment (`pythia-70m`,
/// `EleutherAI/pythia-70m`) are named by their full names (`EleutherAI_pythia-70m_main.json`), and a name
/// still taken (after `/` and other characters become `_`) gets a numeric suffix (`_2`, ...). Returns (file name, document) pairs, runs ordered by
/// size then step.
pub fn run_jsons_with(rows: &[ResultRow], details: Option<&RunDetails>) -> Result<Vec<(String, Value)>> {
    use crate::lm_eval::{results_document, task_meta, TaskResults};
    let mut runs: BTreeMap<RunKey, Vec<&ResultRow>> = BTreeMap::new();
    for r in rows {
        runs.entry(RunKey::of(r)).or_default().push(r);
    }
    let date = crate::lm_eval::unix_time();
    // Last path segments (without case) that more than one model of the report ends in.
    let short_of = |m: &str| m.rsplit('/').next().unwrap_or(m).to_lowercase();
    let mut models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    models.sort();
    models.dedup();
    let shared_short = |m: &str| models.iter().filter(|o| short_of(o) == short_of(m)).count() > 1;
    let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (key, mut rs) in runs {
        rs.sort_by(|a, b| a.task.cmp(&b.task));
        let detail = details.and_then(|d| d.get(&(key.model.clone(), key.revision.clone())));
        let mut tasks = Vec::new();
        let mut unknown_n = Vec::new();
        let mut protocols: Vec<String> = Vec::new();
        for r in &rs {
            let d = detail.and_then(|d| d.tasks.get(&r.task));
            let protocol_name = d.map_or("paper-2023", |d| d.protocol.as_str());
            let protocol: crate::tasks::Protocol = protocol_name.parse().unwrap_or_default();
            if !protocols.iter().any(|p| p == protocol_name) {
                protocols.push(protocol_name.to_string());
            }
            let lmscore_task = r.task.strip_prefix("isp_").unwrap_or(&r.task);
            let metrics = match d {
                Some(d) if !d.metrics.is_empty() => d.metrics.clone(),
                _ => {
                    unknown_n.push(r.task.clone());
                    vec![("acc".to_string(), r.accuracy, r.accuracy_se)]
                }
            };
            let n = d.map_or(0, |d| d.n) as usize;
            tasks.push(TaskResults {
                key: r.task.clone(),
                metrics,
                original: n,
                effective: n,
                meta: task_meta(lmscore_task, protocol, ""),
            });
        }
        let config = json!({
            "model": "lmscore",
            "model_args": format!("pretrained={},revision={}", key.model, key.revision),
            "batch_size": Value::Null,
            "device": Value::Null,
            "limit": Value::Null,
        });
        let mut extra = Map::new();
        extra.insert("date".into(), json!(date));
        extra.insert(
            "lmscore".into(),
            json!({"written_by": "lmscore report", "protocol": protocols.join(","), "source": if detail.is_some() { "results store" } else { "results table" }}),
        );
        let run = format!("{}@{}", key.model, key.revision);
        let mut doc = results_document(&tasks, config, extra).map_err(|e| Error::invalid(format!("per-run JSON of {run}: {e}")))?;
        for t in &unknown_n {
            doc["results"][t]["sample_len"] = Value::Null;
            doc["n-samples"][t] = Value::Null;
        }
        let sanitize = |s: &str| -> String {
            let s: String = s
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
                .collect();
            s.chars().take(150).collect() // file names stay well under the usual 255-byte limit
        };
        let rev = sanitize(&key.revision);
        let short = key.model.rsplit('/').next().unwrap_or(&key.model);
        let base = if shared_short(&key.model) {
            format!("{}_{rev}", sanitize(&key.model))
        } else {
            format!("{}_{rev}", sanitize(short))
        };
        let free = |n: &String| !used.contains(&format!("{}.json", n.to_lowercase()));
        let name = std::iter::once(base.clone())
            .chain((2..).map(|k| format!("{base}_{k}")))
            .find(free)
            .map(|c| format!("{c}.json"))
            .unwrap_or_default();
        used.insert(name.to_lowercase());
        out.push((name, doc));
    }
    Ok(out)
}

/// A run, ordered by parameter count, then model name, then training step.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RunKey {
    params_milli: u64,
    model: String,
    step: u64,
    revision: String,
}

impl RunKey {
    /// Only for checked rows.
    fn of(r: &ResultRow) -> Self {
        RunKey {
            params_milli: (r.params().unwrap_or(0.0) / 1e3).round() as u64,
            model: r.model.clone(),
            step: r.step().unwrap_or(0),
            revision: r.revision.clone(),
        }
    }
}

/// One model's results on one task over its checkpoints, in training order (only checkpoints with
/// tokens > 0: log scales and the paper's analysis leave step 0 out).
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub model: String,
    pub params: f64,
    /// (tokens, accuracy, standard error, step), by increasing step.
    pub points: Vec<(f64, f64, f64, u64)>,
}

/// Per task (sorted by task id), its series, by increasing model size.
pub(crate) fn series_by_task(rows: &[ResultRow]) -> BTreeMap<String, Vec<Series>> {
    let mut map: BTreeMap<String, BTreeMap<(u64, String), Series>> = BTreeMap::new();
    for r in rows {
        let (Ok(params), Ok(step)) = (r.params(), r.step()) else { continue };
        if step == 0 {
            continue;
        }
        let key = ((params / 1e3).round() as u64, r.model.clone());
        let s = map.entry(r.task.clone()).or_default().entry(key).or_insert_with(|| Series {
            model: r.model.clone(),
            params,
            points: vec![],
        });
        s.points.push((step_tokens(step), r.accuracy, r.accuracy_se, step));
    }
    map.into_iter()
        .map(|(task, models)| {
            let mut v: Vec<Series> = models.into_values().collect();
            for s in &mut v {
                s.points.sort_by_key(|p| p.3);
            }
            (task, v)
        })
        .collect()
}

/// What [`write_all`] produced.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    /// Result rows reported.
    pub rows: usize,
    /// Distinct (model, revision) runs.
    pub runs: usize,
    /// Task ids, sorted.
    pub tasks: Vec<String>,
    /// The statistical table, one entry per task (BH-adjusted over all of them).
    pub tests: Vec<TaskTests>,
    /// Trend flags, one per (task, model).
    pub trends: Vec<TrendRow>,
    /// Every file written, in the order written.
    pub files: Vec<PathBuf>,
    /// Things the reader should know (runs left out of the analysis, tasks that could not be fitted).
    pub warnings: Vec<String>,
}

/// File names inside the output directory.
pub const RESULTS_TSV: &str = "all_results.tsv";
pub const RUN_JSON_DIR: &str = "per_run_json";
pub const STATS_TSV: &str = "statistical_tests.tsv";
pub const TRENDS_TSV: &str = "trends.tsv";
pub const TRENDS_MD: &str = "trends.md";
pub const FIGURE_SVG: &str = "figure1.svg";
pub const FIGURE_PNG: &str = "figure1.png";
pub const FIGURE_PDF: &str = "figure1.pdf";

/// What a report is made from besides its rows.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Per-item values and chance levels (from a results store): paired trend tests and exact chance lines.
    pub items: Option<ItemData>,
    pub figure: FigureOptions,
    /// Every metric of every run (from a results store), for the per-run JSON; None: the rows' metric only.
    pub runs: Option<RunDetails>,
}

/// Remove what an earlier `report` wrote into `out_dir`, so that a new report is never mixed with stale files
/// (a figure format not asked for this time, the JSON of a run no longer in the input). Only lmscore's own
/// outputs go, by name: the files named by the constants above and `per_run_json/*.json`; anything else in
/// the directory is the user's and is left alone. (Refusing a non-empty directory instead would make the
/// common case, re-running a report into the same directory, an error.)
fn remove_previous_outputs(out_dir: &Path) -> Result<()> {
    let remove = |p: &Path| -> Result<()> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_file() => std::fs::remove_file(p).map_err(|e| Error::io(p, e)),
            _ => Ok(()),
        }
    };
    for name in [RESULTS_TSV, STATS_TSV, TRENDS_TSV, TRENDS_MD, FIGURE_SVG, FIGURE_PNG, FIGURE_PDF] {
        remove(&out_dir.join(name))?;
    }
    let json_dir = out_dir.join(RUN_JSON_DIR);
    if let Ok(entries) = std::fs::read_dir(&json_dir) {
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&json_dir, e))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                remove(&path)?;
            }
        }
    }
    Ok(())
}

/// Write every report for `rows` into `out_dir` (created if missing):
/// `all_results.tsv`, `per_run_json/*.json`, `statistical_tests.tsv`, `trends.tsv`, `trends.md`,
/// `figure1.svg` and `figure1.png`.
pub fn write_all(rows: &[ResultRow], out_dir: &Path) -> Result<ReportSummary> {
    write_report(rows, &ReportOptions::default(), out_dir)
}

/// [`write_all`] with per-item data and figure options.
pub fn write_report(rows: &[ResultRow], opts: &ReportOptions, out_dir: &Path) -> Result<ReportSummary> {
    if rows.is_empty() {
        return Err(Error::invalid("no results to report: the input has no rows"));
    }
    let mut seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        r.check()
            .map_err(|msg| Error::invalid(format!("result {} ({}, {}, {}): {msg}", i + 1, r.model, r.revision, r.task)))?;
        if let Some(first) = seen.insert((&r.model, &r.revision, &r.task), i + 1) {
            return Err(Error::invalid(format!(
                "results {first} and {} are both for model {}, revision {}, task {}: expected one result per run and task",
                i + 1,
                r.model,
                r.revision,
                r.task
            )));
        }
    }
    let mut warnings = Vec::new();
    let step0: Vec<String> = {
        let mut v: Vec<String> = rows.iter().filter(|r| r.step() == Ok(0)).map(|r| r.model.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    if !step0.is_empty() {
        warnings.push(format!(
            "step0 results of {} are in the tables but left out of the statistics, trends and figure (no tokens seen: log10 undefined)",
            step0.join(", ")
        ));
    }

    let unanalysable: Vec<String> = {
        let mut v: Vec<String> = rows
            .iter()
            .filter(|r| !r.is_analysable())
            .map(|r| format!("{}@{}", r.model, r.revision))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    if !unanalysable.is_empty() {
        let more = if unanalysable.len() > 5 {
            format!(" and {} more", unanalysable.len() - 5)
        } else {
            String::new()
        };
        warnings.push(format!(
            "{} run(s) without a Pythia size in the model name or a stepN revision ({}{more}) are in the tables and per-run JSON \
             but left out of the statistics, trends and figure (they need parameters and training tokens)",
            unanalysable.len(),
            unanalysable.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }

    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    remove_previous_outputs(out_dir)?;
    let mut files = Vec::new();
    let write = |name: &str, content: &[u8], files: &mut Vec<PathBuf>| -> Result<()> {
        let path = out_dir.join(name);
        crate::output::write_file(&path, content)?; // atomically: a failed report never leaves half a file
        files.push(path);
        Ok(())
    };

    write(RESULTS_TSV, format_tsv(rows).as_bytes(), &mut files)?;

    let json_dir = out_dir.join(RUN_JSON_DIR);
    std::fs::create_dir_all(&json_dir).map_err(|e| Error::io(&json_dir, e))?;
    let jsons = run_jsons_with(rows, opts.runs.as_ref())?;
    let runs = jsons.len();
    for (name, doc) in &jsons {
        let text = serde_json::to_string_pretty(doc).expect("JSON of strings and finite numbers") + "\n";
        write(&format!("{RUN_JSON_DIR}/{name}"), text.as_bytes(), &mut files)?;
    }

    let tests = statistical_tests(rows);
    for t in &tests {
        if let Some(e) = &t.error {
            warnings.push(format!("task {}: no statistical test ({e})", t.task));
        }
    }
    write(STATS_TSV, format_tests_table(&tests).as_bytes(), &mut files)?;

    let trends = trend_flags_with(rows, opts.items.as_ref());
    if let Some(w) = trends::unpaired_warning(&trends, opts.items.as_ref()) {
        warnings.push(w);
    }
    write(TRENDS_TSV, format_trends_tsv(&trends).as_bytes(), &mut files)?;
    write(TRENDS_MD, format_trends_markdown(&trends).as_bytes(), &mut files)?;

    let chance = opts.items.as_ref().map(|i| &i.chance);
    if series_by_task(rows).is_empty() {
        warnings.push("no figure: no run has a Pythia size, a stepN revision and tokens > 0".into());
    } else {
        for (format, bytes) in render_figure(rows, &opts.figure, chance)? {
            write(format.file_name(), &bytes, &mut files)?;
        }
    }

    let mut tasks: Vec<String> = rows.iter().map(|r| r.task.clone()).collect();
    tasks.sort();
    tasks.dedup();
    Ok(ReportSummary {
        rows: rows.len(),
        runs,
        tasks,
        tests,
        trends,
        files,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_steps() {
        assert_eq!(parse_params("EleutherAI/pythia-70m"), Some(70e6));
        assert_eq!(parse_params("EleutherAI/pythia-1.4b"), Some(1.4e9));
        assert_eq!(parse_params("pythia-12b-deduped"), Some(12e9));
        assert_eq!(parse_params("EleutherAI/pythia"), None);
        assert_eq!(parse_params("gpt2"), None);
        assert_eq!(size_label("EleutherAI/pythia-1.4b").as_deref(), Some("1.4B"));
        assert_eq!(parse_step("step143000"), Some(143000));
        assert_eq!(parse_step("step"), None);
        assert_eq!(parse_step("main"), None);
        assert_eq!(parse_step("step-1"), None);
    }

    #[test]
    fn json_layout() {
        let rows = vec![ResultRow {
            model: "EleutherAI/pythia-1b".into(),
            revision: "step2000".into(),
            task: "isp_neqa".into(),
            accuracy: 0.5,
            accuracy_se: 0.01,
        }];
        let j = run_jsons(&rows).unwrap();
        assert_eq!(j[0].0, "pythia-1b_step2000.json");
        assert_eq!(j[0].1["results"]["isp_neqa"]["acc,none"], 0.5);
        assert_eq!(j[0].1["results"]["isp_neqa"]["alias"], "isp_neqa");
        assert_eq!(j[0].1["config"]["model_args"], "pretrained=EleutherAI/pythia-1b,revision=step2000");
    }
}
