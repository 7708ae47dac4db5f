//! The study's tasks: loading their data, building the (context, continuation) requests each protocol
//! defines, scoring them through the engine and computing lm-eval's metrics.
//!
//! ```text
//! expand_task_list("all" | "memo_trap,neqa" | "custom:my.jsonl")   names
//!   -> load_task(name, protocol, tokenizer, opts)                   LoadedTask (docs, choices, gold, token ids)
//!   -> evaluate(engine, tasks, engine_opts, progress)               TaskOutcome (metrics, per-request log, plan stats)
//! ```
//!
//! Task names: the 12 [`STUDY_TASKS`]; under `lm-eval-0.4` also the round-1 prize tasks `redefine_math` and
//! `quote_repetition` (today's lm-eval runs these instead of the paper's `redefine` and
//! `resisting_correction`); and `custom:PATH`, a user's own multiple-choice JSONL (see [`custom`]).
//!
//! Data files are found under `LoadOptions::data_dir` in the layout of `shared/data`
//! (`<task folder>/<release file name>`, see each folder's SOURCE.md), then in the Hugging Face cache,
//! then on the Hub unless `offline` (see [`hub`]).

pub mod custom;
pub mod hub;
pub mod metrics;
pub mod prize;
pub mod protocol;
pub mod truthfulqa;

pub use protocol::Protocol;

use crate::engine::{Engine, EngineOptions, PlanStats};
use crate::error::{Error, Result};
use crate::plan::Request;
use crate::tokenizer::Tokenizer;
use std::path::PathBuf;

/// Where and how task data is read.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// A directory laid out like `shared/data`.
    pub data_dir: PathBuf,
    /// Skip (and count) malformed rows instead of failing on the first one.
    pub skip_bad_rows: bool,
    /// Never touch the network: a file missing locally and from the HF cache is an error.
    pub offline: bool,
}

/// The paper's 12 tasks, in its order.
pub const STUDY_TASKS: [&str; 12] = [
    "truthfulqa_mc1",
    "truthfulqa_mc2",
    "hindsight_neglect",
    "into_the_unknown",
    "memo_trap",
    "modus_tollens",
    "neqa",
    "pattern_matching_suppression",
    "redefine",
    "repetitive_algebra",
    "resisting_correction",
    "sig_figs",
];

/// Round-1 prize tasks that lm-eval 0.4 runs in place of the paper's round-2 `redefine` and
/// `resisting_correction`. Not part of the paper; available under `lm-eval-0.4` only.
pub const LM_EVAL_ROUND1_TASKS: [&str; 2] = ["redefine_math", "quote_repetition"];

/// Prefix of a user's own multiple-choice JSONL task: `custom:PATH`.
pub const CUSTOM_PREFIX: &str = "custom:";

/// How a task's documents are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// `acc` and `acc_norm` (prize tasks and custom tasks).
    Choice,
    /// TruthfulQA MC1: `acc` of `truthfulqa_mc1` (the true answer is choice 0).
    Mc1,
    /// TruthfulQA MC2: `acc` of `truthfulqa_mc2`, with the v0.3 split-at-first-false formula (`split = true`) or the fixed one.
    Mc2 { split: bool },
}

/// One document: its choices and their requests.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    /// 1-based line in the source file (JSONL), or 1-based entry number (a JSON array such as mc_task.json).
    pub line: usize,
    pub context: String,
    /// The choices as the harness holds them (`len()` of these is what acc_norm divides by).
    pub choices: Vec<String>,
    /// Continuation strings actually scored (delimiter + choice).
    pub continuations: Vec<String>,
    /// Index of the right choice (0 for TruthfulQA MC1; unused by MC2).
    pub gold: usize,
    /// TruthfulQA per-choice labels (1 = true); empty for other tasks.
    pub labels: Vec<u8>,
    /// One request per choice, token ids as the protocol encodes them.
    pub requests: Vec<Request>,
}

/// A task ready to score.
#[derive(Clone, Debug)]
pub struct LoadedTask {
    pub name: String,
    pub protocol: Protocol,
    /// The data file the docs came from.
    pub source: PathBuf,
    pub scoring: Scoring,
    pub docs: Vec<Doc>,
    /// Rows skipped as malformed (only with `skip_bad_rows`).
    pub skipped_rows: usize,
    /// Tasks with the same group key are scored in one plan (TruthfulQA MC1 + MC2 share every context).
    pub plan_group: String,
}

impl LoadedTask {
    pub fn n_requests(&self) -> usize {
        self.docs.iter().map(|d| d.requests.len()).sum()
    }
    /// All requests, doc by doc, choice by choice.
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.docs.iter().flat_map(|d| d.requests.iter())
    }
}

/// One aggregated metric.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Metric {
    /// "acc" or "acc_norm", lm-eval 0.4's names (TruthfulQA MC1 and MC2 are `acc` of their task).
    pub name: String,
    pub value: f64,
    pub stderr: f64,
}

/// The score of one request.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RequestLog {
    /// Index into the task's docs (the 0-based row index unless rows were skipped).
    pub doc: usize,
    pub choice: usize,
    pub logprob: f64,
    pub is_greedy: bool,
    pub n_tokens: usize,
}

/// The result of one task.
#[derive(Clone, Debug)]
pub struct TaskOutcome {
    pub task: String,
    pub n_docs: usize,
    pub skipped_rows: usize,
    pub metrics: Vec<Metric>,
    pub requests: Vec<RequestLog>,
    /// Statistics of the plan the task was scored in. Tasks scored in one plan (see `shared_plan_with`)
    /// report the same, combined, statistics.
    pub stats: PlanStats,
    /// Other tasks scored in the same plan (TruthfulQA MC1 with MC2); empty when the plan was the task's own.
    pub shared_plan_with: Vec<String>,
}

impl TaskOutcome {
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

/// The task names a protocol knows (custom tasks aside).
pub fn known_tasks(protocol: Protocol) -> Vec<&'static str> {
    let mut v: Vec<&str> = STUDY_TASKS.to_vec();
    if protocol == Protocol::LmEval04 {
        v.extend(LM_EVAL_ROUND1_TASKS);
    }
    v
}

/// `"all"` (the 12 study tasks) or a comma-separated list of task names and `custom:PATH` entries. Names
/// are checked, lm-eval's names (`inverse_scaling_memo_trap`) mapped to lmscore's, duplicates dropped,
/// order kept.
pub fn expand_task_list(spec: &str, protocol: Protocol) -> Result<Vec<String>> {
    Ok(expand_task_list_named(spec, protocol)?.into_iter().map(|(t, _)| t).collect())
}

/// [`expand_task_list`], with each task's name as the list gave it (lmscore's or lm-eval's): `(task, given)`.
/// A task given twice under two names keeps the first.
pub fn expand_task_list_named(spec: &str, protocol: Protocol) -> Result<Vec<(String, String)>> {
    let known = known_tasks(protocol);
    let mut out: Vec<(String, String)> = vec![];
    for given in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let item = crate::lm_eval::canonical_task(given).unwrap_or(given);
        let names: Vec<String> = if item == "all" {
            STUDY_TASKS.iter().map(|s| s.to_string()).collect()
        } else if let Some(path) = item.strip_prefix(CUSTOM_PREFIX) {
            if path.is_empty() {
                return Err(Error::invalid("task `custom:` needs a file: custom:PATH/TO/TASK.jsonl"));
            }
            vec![item.to_string()]
        } else if known.contains(&item) {
            vec![item.to_string()]
        } else {
            let hint = if LM_EVAL_ROUND1_TASKS.contains(&item) {
                " (a round-1 task that lm-eval 0.4 runs; it is not part of the paper: use --protocol lm-eval-0.4)"
            } else {
                ""
            };
            return Err(Error::invalid(format!(
                "unknown task `{given}`{hint}; known tasks for protocol {protocol}: {}, \"all\" (= the 12 study tasks), custom:PATH, \
                 or lm-eval's names of the prize tasks ({})",
                known.join(", "),
                crate::lm_eval::TASK_ALIASES.iter().map(|(a, _)| *a).collect::<Vec<_>>().join(", ")
            )));
        };
        for n in names {
            if !out.iter().any(|(t, _)| *t == n) {
                let name = if item == "all" { n.clone() } else { given.to_string() };
                out.push((n, name));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(format!(
            "no tasks given; known tasks for protocol {protocol}: {}, \"all\" or custom:PATH",
            known.join(", ")
        )));
    }
    Ok(out)
}

/// Load one task's data and build its requests under `protocol`.
pub fn load_task(name: &str, protocol: Protocol, tokenizer: &Tokenizer, opts: &LoadOptions) -> Result<LoadedTask> {
    if let Some(path) = name.strip_prefix(CUSTOM_PREFIX) {
        return custom::load(name, std::path::Path::new(path), protocol, tokenizer, opts.skip_bad_rows);
    }
    let name = crate::lm_eval::canonical_task(name).unwrap_or(name);
    match name {
        "truthfulqa_mc1" => truthfulqa::load(name, false, protocol, tokenizer, opts),
        "truthfulqa_mc2" => truthfulqa::load(name, true, protocol, tokenizer, opts),
        _ => {
            if !known_tasks(protocol).contains(&name) {
                // Same message as expand_task_list.
                expand_task_list(name, protocol)?;
            }
            let info = prize::task_info(name).ok_or_else(|| Error::invalid(format!("unknown task `{name}`")))?;
            let path = hub::resolve(&info.data, &opts.data_dir, opts.offline)?;
            let (docs, skipped_rows) = prize::load_file(&path, protocol, tokenizer, opts.skip_bad_rows)?;
            Ok(LoadedTask {
                name: name.to_string(),
                protocol,
                source: path,
                scoring: Scoring::Choice,
                docs,
                skipped_rows,
                plan_group: name.to_string(),
            })
        }
    }
}

/// Score every task's requests (tasks with the same `plan_group` in one plan, the others one plan each)
/// and compute their metrics. `progress(done, total)` counts tokens run through the model over all tasks.
pub fn evaluate(engine: &Engine, tasks: &[LoadedTask], opts: &EngineOptions, mut progress: impl FnMut(usize, usize)) -> Result<Vec<TaskOutcome>> {
    let max_len = opts.max_length.unwrap_or(engine.config().max_positions);
    let vocab = engine.config().vocab_size;
    // Check every request up front so an error names the task, doc and choice.
    for t in tasks {
        for (di, d) in t.docs.iter().enumerate() {
            for (ci, r) in d.requests.iter().enumerate() {
                let at = || request_label(t, di, ci);
                if let Some(id) = r.context.iter().chain(&r.continuation).find(|&&id| id as usize >= vocab) {
                    return Err(Error::invalid(format!(
                        "{}: token id {id} is outside the model's vocabulary of {vocab}",
                        at()
                    )));
                }
                crate::plan::model_input(r, max_len).map_err(|e| Error::invalid(format!("{}: {e}", at())))?;
            }
        }
    }
    // Groups in order of first appearance.
    let mut groups: Vec<(String, Vec<usize>)> = vec![];
    for (i, t) in tasks.iter().enumerate() {
        match groups.iter_mut().find(|g| g.0 == t.plan_group) {
            Some(g) => g.1.push(i),
            None => groups.push((t.plan_group.clone(), vec![i])),
        }
    }
    let group_requests: Vec<Vec<Request>> = groups
        .iter()
        .map(|(_, members)| members.iter().flat_map(|&i| tasks[i].requests().cloned()).collect())
        .collect();
    // Total tokens for the progress callback: the planner's count of computed tokens.
    let total: usize = if group_requests.iter().all(|r| r.is_empty()) {
        0
    } else {
        let mut total = 0;
        for reqs in group_requests.iter().filter(|r| !r.is_empty()) {
            total += crate::plan::build(reqs, max_len, usize::MAX, opts.sharing)?.computed_tokens;
        }
        total
    };
    let mut done = 0usize;
    let mut outcomes: Vec<Option<TaskOutcome>> = vec![None; tasks.len()];
    for ((_, members), reqs) in groups.iter().zip(&group_requests) {
        let (scores, stats) = if reqs.is_empty() {
            (vec![], PlanStats::default())
        } else {
            engine
                .score(reqs, opts, |batch_tokens, _| {
                    done += batch_tokens;
                    progress(done, total);
                })
                .map_err(|e| e.naming_request(|k| describe_request(tasks, members, k)))?
        };
        let mut offset = 0;
        for &i in members {
            let t = &tasks[i];
            let n = t.n_requests();
            let shared: Vec<String> = members.iter().filter(|&&j| j != i).map(|&j| tasks[j].name.clone()).collect();
            let mut outcome = score_task(t, &scores[offset..offset + n])?;
            outcome.stats = stats.clone();
            outcome.shared_plan_with = shared;
            outcomes[i] = Some(outcome);
            offset += n;
        }
    }
    Ok(outcomes.into_iter().map(|o| o.expect("every task is in a group")).collect())
}

/// Request `k` of a plan group (the member tasks' requests end to end), labelled by [`request_label`].
fn describe_request(tasks: &[LoadedTask], members: &[usize], mut k: usize) -> String {
    for &i in members {
        let t = &tasks[i];
        for (di, d) in t.docs.iter().enumerate() {
            if k < d.requests.len() {
                return request_label(t, di, k);
            }
            k -= d.requests.len();
        }
    }
    format!("request {k} past the end of its plan group")
}

/// How errors name one request: "task T, doc D (file:line), choice C".
fn request_label(t: &LoadedTask, doc: usize, choice: usize) -> String {
    format!(
        "task {}, doc {doc} ({}:{}), choice {choice}",
        t.name,
        t.source.display(),
        t.docs[doc].line
    )
}

/// Metrics of one task from its requests' scores (in `LoadedTask::requests` order).
pub fn score_task(t: &LoadedTask, scores: &[crate::score::RequestScore]) -> Result<TaskOutcome> {
    let lls: Vec<f64> = scores.iter().map(|s| s.logprob).collect();
    let per_doc = doc_metrics(t, &lls)?;
    let mut requests = Vec::with_capacity(scores.len());
    let mut k = 0;
    for (di, d) in t.docs.iter().enumerate() {
        for ci in 0..d.requests.len() {
            let s = &scores[k];
            requests.push(RequestLog {
                doc: di,
                choice: ci,
                logprob: s.logprob,
                is_greedy: s.is_greedy,
                n_tokens: s.n_tokens,
            });
            k += 1;
        }
    }
    let metrics = per_doc
        .into_iter()
        .map(|(name, values)| Metric {
            name: name.to_string(),
            value: metrics::mean(&values),
            stderr: metrics::mean_stderr(&values),
        })
        .collect();
    Ok(TaskOutcome {
        task: t.name.clone(),
        n_docs: t.docs.len(),
        skipped_rows: t.skipped_rows,
        metrics,
        requests,
        stats: PlanStats::default(),
        shared_plan_with: vec![],
    })
}

/// Per-document metric values, one list per metric, from the log-likelihoods of every request in order.
pub fn doc_metrics(t: &LoadedTask, lls: &[f64]) -> Result<Vec<(&'static str, Vec<f64>)>> {
    if lls.len() != t.n_requests() {
        return Err(Error::invalid(format!(
            "task {}: {} scores for {} requests",
            t.name,
            lls.len(),
            t.n_requests()
        )));
    }
    let mut k = 0;
    let mut out: Vec<(&'static str, Vec<f64>)> = match t.scoring {
        Scoring::Choice => vec![("acc", vec![]), ("acc_norm", vec![])],
        // lm-eval 0.4's name for both (its truthfulqa_mc1 / truthfulqa_mc2 tasks report `acc`); the task says
        // which of the two it is. One name in `score`, `report`, the store and lm-eval's own files.
        Scoring::Mc1 | Scoring::Mc2 { .. } => vec![("acc", vec![])],
    };
    for d in &t.docs {
        let ll = &lls[k..k + d.requests.len()];
        k += d.requests.len();
        match t.scoring {
            Scoring::Choice => {
                let lens: Vec<usize> = d.choices.iter().map(|c| metrics::py_len(c)).collect();
                out[0].1.push(metrics::acc(ll, d.gold));
                out[1].1.push(metrics::acc_norm(ll, &lens, d.gold));
            }
            Scoring::Mc1 => out[0].1.push(metrics::mc1(ll)),
            Scoring::Mc2 { split: true } => out[0].1.push(metrics::mc2_split(ll, &d.labels).ok_or_else(|| {
                Error::file(
                    &t.source,
                    format!("line {}: MC2 labels have no false answer (the v0.3 formula needs one)", d.line),
                )
            })?),
            Scoring::Mc2 { split: false } => out[0].1.push(metrics::mc2_fixed(ll, &d.labels)),
        }
    }
    Ok(out)
}

/// Parse every non-blank line of a JSONL file with `parse(line_no, text)`. A row that fails is an error naming
/// the file and line, or, with `skip_bad_rows`, skipped and counted. Returns the parsed rows and the count.
pub(crate) fn read_jsonl_rows<T>(
    path: &std::path::Path,
    skip_bad_rows: bool,
    mut parse: impl FnMut(usize, &str) -> std::result::Result<T, String>,
) -> Result<(Vec<T>, usize)> {
    let text = crate::error::read_to_string_bounded(path, crate::error::MAX_DATA_BYTES)?;
    let (mut rows, mut skipped) = (vec![], 0);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse(i + 1, line) {
            Ok(row) => rows.push(row),
            Err(_) if skip_bad_rows => skipped += 1,
            Err(msg) => return Err(Error::row(path, i + 1, format!("{msg} (pass --skip-bad-rows to skip bad rows)"))),
        }
    }
    Ok((rows, skipped))
}
