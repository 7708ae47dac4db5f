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

    /// Training tokens seen at this checkpoint: step x 2,097,152.
    pub fn tokens(&self) -> std::result::Result<f64, String> {
        Ok((self.step()? * TOKENS_PER_STEP) as f64)
    }

    /// Everything that must hold for the row to be reported; `Err` says what was expected.
    fn check(&self) -> std::result::Result<(), String> {
        if self.task.is_empty() {
            return Err("empty task name".into());
        }
        self.params()?;
        self.step()?;
        if !(0.0..=1.0).contains(&self.accuracy) {
            return Err(format!("accuracy {}: expected a number between 0 and 1", self.accuracy));
        }
        if !(self.accuracy_se.is_finite() && self.accuracy_se >= 0.0) {
            return Err(format!("standard error {}: expected a finite number >= 0", self.accuracy_se));
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
        let row = ResultRow {
            model: get(0).to_string(),
            revision: get(1).to_string(),
            task: get(2).to_string(),
            accuracy: number(3)?,
            accuracy_se: number(4)?,
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

/// The rows as a TSV with the paper's columns, in the given order. Numbers are written in their
/// shortest round-trip form, so [`read_tsv`] gives back exactly the same values.
pub fn format_tsv(rows: &[ResultRow]) -> String {
    let mut s = TSV_COLUMNS.join("\t");
    s.push('\n');
    for r in rows {
        // `{:?}` is the shortest round-trip form and keeps a `.0` on whole numbers, as Python (which wrote
        // the paper's file) does, so the paper's table is written back byte for byte.
        let _ = writeln!(s, "{}\t{}\t{}\t{:?}\t{:?}", r.model, r.revision, r.task, r.accuracy, r.accuracy_se);
    }
    s
}

/// lm-eval-style JSON for every (model, revision): `{"results": {task: {"acc", "acc_stderr"}},
/// "config": {"model_args": "pretrained=...,revision=..."}}`, named `<model name>_<revision>.json`
/// like the paper's `per_run_json/`. Returns (file name, document) pairs, runs ordered by size then step.
pub fn run_jsons(rows: &[ResultRow]) -> Vec<(String, Value)> {
    let mut runs: BTreeMap<RunKey, Vec<&ResultRow>> = BTreeMap::new();
    for r in rows {
        runs.entry(RunKey::of(r)).or_default().push(r);
    }
    runs.into_iter()
        .map(|(key, mut rs)| {
            rs.sort_by(|a, b| a.task.cmp(&b.task));
            let mut results = Map::new();
            for r in &rs {
                results.insert(r.task.clone(), json!({"acc": r.accuracy, "acc_stderr": r.accuracy_se}));
            }
            let doc = json!({
                "results": results,
                "config": {"model_args": format!("pretrained={},revision={}", key.model, key.revision)},
            });
            let short = key.model.rsplit('/').next().unwrap_or(&key.model);
            let name = format!("{short}_{}.json", key.revision)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
                .collect();
            (name, doc)
        })
        .collect()
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
        s.points.push(((step * TOKENS_PER_STEP) as f64, r.accuracy, r.accuracy_se, step));
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

    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
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
    let jsons = run_jsons(rows);
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
    for (format, bytes) in render_figure(rows, &opts.figure, chance)? {
        write(format.file_name(), &bytes, &mut files)?;
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
        let j = run_jsons(&rows);
        assert_eq!(j[0].0, "pythia-1b_step2000.json");
        assert_eq!(j[0].1["results"]["isp_neqa"]["acc"], 0.5);
        assert_eq!(j[0].1["config"]["model_args"], "pretrained=EleutherAI/pythia-1b,revision=step2000");
    }
}
