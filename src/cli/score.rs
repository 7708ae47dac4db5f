//! `lmscore score`: evaluate a checkpoint on the study's tasks (or a user's own multiple-choice JSONL) and
//! report lm-eval's metrics in lm-eval 0.4's own results layout.
//!
//! ```text
//! lmscore score --model DIR|HUB_ID[@REV] --tasks memo_trap,neqa,truthfulqa_mc1,truthfulqa_mc2 \
//!     [--data-dir DIR] [--protocol paper-2023|lm-eval-0.4] [--limit N] [--num-fewshot 0] [--device cpu|cuda] \
//!     [--output-json FILE] [--log-samples DIR] [--log-requests FILE] [--skip-bad-rows] [--offline] [engine flags]
//! ```
//!
//! Task names are lmscore's or lm-eval's (`inverse_scaling_memo_trap`); results are keyed by the name given.
//! `--output-json` writes lm-eval 0.4's results document (see [`lmscore::lm_eval`]): `results` (per task
//! `name`, `alias`, `sample_len`, `"acc,none"`, `"acc_stderr,none"`, `"acc_norm,none"`, ...; TruthfulQA MC1
//! and MC2 are `acc`, as in lm-eval), `group_subtasks`, `configs`, `versions`, `n-shot`, `higher_is_better`,
//! `n-samples`, `config` (lm-eval's `model`, `model_args`, `batch_size`, `device`, `limit`, ..., and
//! lmscore's `protocol`, `dtype`, `engine`, `threads`, ...), `git_hash`, `date`,
//! `total_evaluation_time_seconds`, and two sections of lmscore's own:
//!
//! ```json
//!  "lmscore": {"version", "protocol", "weights_digest", "data_files": {task: file}, "data_sha256": {task: hex},
//!              "skipped_rows": {task: n}},
//!  "plan": {"memo_trap": {"naive_tokens", "computed_tokens", "scored_rows", "batches", "sharing_ratio",
//!                         "tokens_per_second", "seconds", "shared_with": []}, ..., "total": {...}}
//! ```
//!
//! `plan` is per task. TruthfulQA MC1 and MC2 are scored in ONE plan when both are selected (MC2 repeats
//! the MC1 answers; the prefix tree computes them once): both then report that plan's figures and name each
//! other in `shared_with`; `total` counts it once.
//!
//! `--log-samples DIR` writes lm-eval's samples file per task, `DIR/samples_<task>_<date>.jsonl`, one row
//! per document with lm-eval's keys (`doc_id`, `doc`, `target`, `arguments`, `resps`, `filtered_resps`,
//! `filter`, `metrics`, `doc_hash`, `prompt_hash`, `target_hash` and each metric's value). `doc` is the row of
//! the data file as read; `doc_id` the 0-based index among the task's scored documents.
//!
//! `--log-requests` writes one JSONL row per request: `{"task", "doc", "choice", "logprob", "is_greedy",
//! "n_tokens"}`, `doc` being the 0-based index among the task's scored documents.
//!
//! Outputs are checked before anything is loaded (see [`lmscore::output`]): `-` is stdout (the results
//! table then goes to stderr), outputs must be different files and none may be an input.

use super::loglikelihood::EngineArgs;
use lmscore::checkpoint::{Checkpoint, DType};
use lmscore::engine::{token_progress, Device, Engine, PlanStats};
use lmscore::error::{Error, Result};
use lmscore::hub::{CheckpointSpec, HubOptions, Source};
use lmscore::lm_eval::{self, TaskResults};
use lmscore::output::{self, OutputTarget};
use lmscore::tasks::{self, LoadOptions, LoadedTask, Protocol, TaskOutcome};
use lmscore::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face model directory (config.json, weights, tokenizer.json), or a Hub model id with an optional
    /// revision, EleutherAI/pythia-160m@step2000 (the standard HF cache; downloaded unless --offline).
    #[arg(long)]
    pub model: String,
    /// "all" (the paper's 12 tasks) or a comma-separated list: truthfulqa_mc1, truthfulqa_mc2, hindsight_neglect,
    /// into_the_unknown, memo_trap, modus_tollens, neqa, pattern_matching_suppression, redefine,
    /// repetitive_algebra, resisting_correction, sig_figs; under lm-eval-0.4 also redefine_math and
    /// quote_repetition; lm-eval's names of the prize tasks (inverse_scaling_memo_trap, ...); custom:PATH for
    /// your own JSONL ({"context", "choices", "gold", optional "delimiter"}).
    #[arg(long)]
    pub tasks: String,
    /// Data directory laid out like shared/data (<task>/<release file>, see each SOURCE.md). Default: the
    /// bundled sample data/sample/ (20 documents each of memo_trap, neqa and TruthfulQA).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// paper-2023: what the paper ran (lm-eval master, spring 2023). lm-eval-0.4: today's lm-eval definitions.
    #[arg(long, value_enum, default_value_t = Protocol::Paper2023)]
    pub protocol: Protocol,
    /// Score only the first N documents of each task (lm-eval's --limit: a number below 1 is a fraction of
    /// the documents, rounded up).
    #[arg(long)]
    pub limit: Option<f64>,
    /// Few-shot examples per document. Only 0: none of lmscore's tasks defines few-shot examples
    /// (TruthfulQA's six-question primer is part of its prompt, and lm-eval counts it as 0-shot).
    #[arg(long, default_value_t = 0)]
    pub num_fewshot: usize,
    /// Write results as lm-eval 0.4's results JSON, plus lmscore's `lmscore` and `plan` sections. `-` is
    /// stdout (the results table then goes to stderr). A file is replaced atomically (a symlink is
    /// followed); a device or FIFO is written in place.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
    /// Write lm-eval's samples JSONL per task into this directory (created if missing):
    /// samples_<task>_<date>.jsonl.
    #[arg(long)]
    pub log_samples: Option<PathBuf>,
    /// Write every request's score as JSONL: {task, doc, choice, logprob, is_greedy, n_tokens}. Same rules
    /// as --output-json; the two must be different files.
    #[arg(long)]
    pub log_requests: Option<PathBuf>,
    /// Write what the device did as JSON: per run (one packed plan) its batches, host-to-device and
    /// device-to-host copies, synchronisations and kernel launches, and per op its launches and seconds
    /// (CUDA events on a GPU; host time, and said so, on the CUDA stand-in and the CPU). Timing every op
    /// costs a pair of events per launch. Same rules as --output-json.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Skip malformed data rows (and count them) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Never download: data and Hub models must be in --data-dir or the Hugging Face cache.
    #[arg(long)]
    pub offline: bool,
    /// tokenizer.json to use (default: the model directory's, else <data-dir>/tokenizer/tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The bundled sample data: `data/sample` under the working directory, else in the source tree.
fn default_data_dir() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from("data/sample"),
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/sample")),
    ];
    for c in &candidates {
        if c.is_dir() {
            return Ok(c.clone());
        }
    }
    Err(Error::invalid(format!(
        "no --data-dir given and the bundled sample data is not there ({} or {}); pass --data-dir pointing at a directory laid out like shared/data",
        candidates[0].display(),
        candidates[1].display()
    )))
}

fn find_tokenizer(args: &Args, ckpt: &Checkpoint, data_dir: &Path) -> Result<PathBuf> {
    if let Some(t) = &args.tokenizer {
        return Ok(t.clone());
    }
    let tried = [ckpt.tokenizer_path(), data_dir.join("tokenizer/tokenizer.json")];
    for t in &tried {
        if t.is_file() {
            return Ok(t.clone());
        }
    }
    Err(Error::file(
        &tried[0],
        format!("tokenizer.json not found (also tried {}); pass --tokenizer FILE", tried[1].display()),
    ))
}

fn dtype_name(d: DType) -> String {
    d.name().to_ascii_lowercase()
}

/// `--model`: an existing directory, else a Hub id `ORG/NAME[@REV]` (resolved through the HF cache, as
/// `sweep` does). Returns the spec, the local directory and lm-eval's `model_args` string.
pub fn resolve_model(model: &str, offline: bool) -> Result<(CheckpointSpec, PathBuf, String)> {
    let dir = PathBuf::from(model);
    if dir.is_dir() {
        let spec = CheckpointSpec {
            model: model.to_string(),
            revision: "main".into(),
            source: Source::Local(dir.clone()),
        };
        return Ok((spec, dir, format!("pretrained={model}")));
    }
    // Not a directory: a Hub id if it reads as one (ORG/NAME[@REV]), else a directory that is not there.
    let spec = match CheckpointSpec::parse(model) {
        Ok(spec) if matches!(spec.source, Source::Hub) && spec.model.contains('/') => spec,
        _ => {
            return Err(Error::file(
                &dir,
                "model directory not found (nor is it a Hub model id, ORG/NAME[@REVISION])",
            ))
        }
    };
    let local = lmscore::hub::resolve(
        &spec,
        &HubOptions {
            offline,
            cache_dir: None,
            progress: true,
        },
    )?;
    let args = format!("pretrained={},revision={}", spec.model, spec.revision);
    Ok((spec, local, args))
}

/// lm-eval's `--limit`: documents to score out of `n` (None: all).
fn limit_docs(limit: Option<f64>, n: usize) -> Result<usize> {
    match limit {
        None => Ok(n),
        Some(l) if !(l.is_finite() && l > 0.0) => Err(Error::invalid(format!("--limit {l}: expected a positive number"))),
        // `int(math.ceil(len(docs) * limit)) if limit < 1.0 else int(limit)`
        Some(l) if l < 1.0 => Ok(((n as f64 * l).ceil() as usize).min(n)),
        Some(l) => Ok((l as usize).min(n)),
    }
}

/// `--profile`'s document: one run per packed plan (tasks scored together share one), its counts and the
/// counts per batch, and per op its launches and seconds.
fn profile_json(engine: &Engine, outcomes: &[lmscore::tasks::TaskOutcome]) -> serde_json::Value {
    let mut runs = vec![];
    for (i, o) in outcomes.iter().enumerate() {
        if outcomes[..i].iter().any(|earlier| earlier.shared_plan_with.contains(&o.task)) {
            continue; // scored in an earlier task's plan
        }
        let (s, a) = (&o.stats, &o.stats.activity);
        let per_batch = |n: u64| if s.batches == 0 { 0.0 } else { n as f64 / s.batches as f64 };
        let ops: Map<String, serde_json::Value> = a
            .ops
            .iter()
            .map(|(name, &(launches, seconds))| (name.clone(), json!({"launches": launches, "seconds": seconds})))
            .collect();
        let mut tasks = vec![o.task.clone()];
        tasks.extend(o.shared_plan_with.iter().cloned());
        runs.push(json!({
            "tasks": tasks,
            "batches": s.batches,
            "computed_tokens": s.computed_tokens,
            "scored_rows": s.scored_rows,
            "seconds": s.seconds,
            "h2d_copies": a.h2d_copies,
            "d2h_copies": a.d2h_copies,
            "synchronizations": a.synchronizations,
            "debug_synchronizations": a.debug_synchronizations,
            "kernel_launches": a.kernel_launches,
            "per_batch": {
                "h2d_copies": per_batch(a.h2d_copies),
                "d2h_copies": per_batch(a.d2h_copies),
                "synchronizations": per_batch(a.synchronizations),
                "debug_synchronizations": per_batch(a.debug_synchronizations),
                "kernel_launches": per_batch(a.kernel_launches),
            },
            "ops": ops,
        }));
    }
    let clock = outcomes.iter().map(|o| o.stats.activity.clock).find(|c| !c.is_empty()).unwrap_or("");
    json!({
        "engine": engine.describe(),
        "op_seconds_clock": clock,
        "op_seconds_are_gpu_time": clock == lmscore::backend::cuda::activity::GPU_CLOCK,
        "lmscore_version": env!("CARGO_PKG_VERSION"),
        "runs": runs,
    })
}

pub fn run(args: Args) -> Result<()> {
    let started = lm_eval::unix_time();
    let opts = args.engine.options()?;
    let output_json = args.output_json.as_ref().map(OutputTarget::check).transpose()?;
    let log_requests = args.log_requests.as_ref().map(OutputTarget::check).transpose()?;
    let profile = args.profile.as_ref().map(OutputTarget::check).transpose()?;
    let outputs: Vec<&OutputTarget> = output_json.iter().chain(&log_requests).chain(&profile).collect();
    let model_arg = PathBuf::from(&args.model);
    let mut inputs: Vec<&Path> = vec![&model_arg];
    inputs.extend(args.tokenizer.as_deref());
    output::check_distinct(&outputs, &inputs)?;
    if let Some(dir) = &args.log_samples {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::file(dir, "--log-samples: exists and is not a directory"));
        }
    }
    limit_docs(args.limit, 1)?;
    let named = tasks::expand_task_list_named(&args.tasks, args.protocol)?;
    if args.num_fewshot > 0 {
        return Err(Error::invalid(format!(
            "--num-fewshot {}: none of these tasks defines few-shot examples in lmscore (TruthfulQA's six-question primer is \
             part of its prompt; lm-eval counts it as 0-shot). For few-shot prompts drawn lm-eval's way, run lm-eval with \
             --model lmscore (lmscore-lm-eval, see the README)",
            args.num_fewshot
        )));
    }
    for (task, given) in &named {
        if task != given && args.protocol == Protocol::Paper2023 {
            eprintln!(
                "note: {given} is scored as lmscore's {task} under --protocol paper-2023 (the paper's definitions); \
                 --protocol lm-eval-0.4 scores lm-eval 0.4's definition"
            );
        }
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            let d = default_data_dir()?;
            eprintln!(
                "note: no --data-dir given: using the bundled sample data in {} (a few documents per task, not the full sets)",
                d.display()
            );
            d
        }
    };
    let (spec, model_dir, model_args) = resolve_model(&args.model, args.offline)?;
    let ckpt = Checkpoint::open(&model_dir)?;
    let tokenizer_path = find_tokenizer(&args, &ckpt, &data_dir)?;
    let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
    let load = LoadOptions {
        data_dir: data_dir.clone(),
        skip_bad_rows: args.skip_bad_rows,
        offline: args.offline,
    };
    let mut loaded: Vec<LoadedTask> = Vec::with_capacity(named.len());
    let mut original: Vec<usize> = Vec::with_capacity(named.len());
    for (name, _) in &named {
        let mut t = tasks::load_task(name, args.protocol, &tokenizer, &load)?;
        original.push(t.docs.len());
        t.docs.truncate(limit_docs(args.limit, t.docs.len())?);
        eprintln!(
            "{}: {} docs{}, {} requests from {}{}",
            t.name,
            t.docs.len(),
            if t.docs.len() < original[original.len() - 1] {
                format!(" of {}", original[original.len() - 1])
            } else {
                String::new()
            },
            t.n_requests(),
            t.source.display(),
            if t.skipped_rows > 0 {
                format!(" ({} bad rows skipped)", t.skipped_rows)
            } else {
                String::new()
            }
        );
        loaded.push(t);
    }
    // The data files are known now; still before the model is loaded.
    let mut inputs: Vec<&Path> = vec![&tokenizer_path];
    inputs.extend(loaded.iter().map(|t| t.source.as_path()));
    output::check_distinct(&outputs, &inputs)?;
    let engine = Engine::load(&ckpt, &opts)?;
    engine.time_ops(profile.is_some());
    let bar = token_progress(0, "scoring");
    let outcomes = tasks::evaluate(&engine, &loaded, &opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if let Some(target) = &profile {
        let text = serde_json::to_string_pretty(&profile_json(&engine, &outcomes)).map_err(|e| Error::invalid(format!("--profile: {e}")))?;
        target.write_bytes(format!("{text}\n").as_bytes())?;
    }

    let keys: Vec<&str> = named.iter().map(|(_, given)| given.as_str()).collect();
    if outputs.iter().any(|o| o.is_stdout()) {
        eprint!("{}", table(&outcomes, &keys));
    } else {
        print!("{}", table(&outcomes, &keys));
    }
    let dtype = match opts.device {
        Device::Cpu => "f32".to_string(),
        _ => match opts.dtype.or(ckpt.config.torch_dtype) {
            Some(d) => dtype_name(d),
            None => dtype_name(ckpt.stored_dtype()?),
        },
    };
    let device = opts.device_spec().to_string();
    if let Some(dir) = &args.log_samples {
        let date_id = lm_eval::date_id(started);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for ((t, o), key) in loaded.iter().zip(&outcomes).zip(&keys) {
            let path = dir.join(format!("samples_{key}_{date_id}.jsonl").replace(['/', ':'], "_"));
            output::write_file(&path, samples_jsonl(t, o)?.as_bytes())?;
            eprintln!("wrote {} samples of {key} to {}", t.docs.len(), path.display());
        }
    }
    if let Some(target) = &output_json {
        let max_batch_tokens = opts.max_batch_tokens.unwrap_or_else(|| engine.default_batch_tokens());
        let config = json!({
            // lm-eval's keys
            "model": "lmscore",
            "model_args": model_args,
            "model_name": spec.model,
            "model_revision": spec.revision,
            "batch_size": format!("packed: {max_batch_tokens} tokens per batch"),
            "batch_sizes": [],
            "device": device,
            "use_cache": null,
            "limit": args.limit,
            "gen_kwargs": null,
            // lmscore's
            "model_path": model_dir.display().to_string(),
            "protocol": args.protocol.name(),
            "dtype": dtype,
            "lmscore_version": env!("CARGO_PKG_VERSION"),
            "engine": engine.describe(),
            "tasks": keys,
            "data_dir": data_dir.display().to_string(),
            "num_fewshot": 0,
            "max_length": opts.max_length.unwrap_or(engine.config().max_positions),
            "max_batch_tokens": max_batch_tokens,
            "sharing": opts.sharing,
            "threads": lmscore::engine::threads(),
        });
        let mut lmscore_section = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": args.protocol.name(),
            "weights_digest": lmscore::sweep::checkpoint_digest(&spec, &model_dir, args.tokenizer.as_deref())?,
            "data_files": {}, "data_sha256": {}, "skipped_rows": {},
        });
        for (t, key) in loaded.iter().zip(&keys) {
            let bytes = lmscore::error::read_bounded(&t.source, lmscore::error::MAX_DATA_BYTES)?;
            lmscore_section["data_files"][*key] = json!(t.source.display().to_string());
            lmscore_section["data_sha256"][*key] = json!(lmscore::tasks::hub::sha256_hex(&bytes));
            lmscore_section["skipped_rows"][*key] = json!(t.skipped_rows);
        }
        let mut extra = Map::new();
        extra.insert("git_hash".into(), json!(lm_eval::git_hash()));
        extra.insert("date".into(), json!(started));
        extra.insert(
            "total_evaluation_time_seconds".into(),
            json!((lm_eval::unix_time() - started).to_string()),
        );
        extra.insert("lmscore".into(), lmscore_section);
        let task_results: Vec<TaskResults> = loaded
            .iter()
            .zip(&outcomes)
            .zip(&keys)
            .zip(&original)
            .map(|(((t, o), key), &n)| TaskResults {
                key: key.to_string(),
                metrics: o.metrics.iter().map(|m| (m.name.clone(), m.value, m.stderr)).collect(),
                original: n,
                effective: o.n_docs,
                meta: lm_eval::task_meta(&t.name, args.protocol, &t.source.display().to_string()),
            })
            .collect();
        let v = results_json(&task_results, &outcomes, &keys, config, extra)?;
        let mut text = serde_json::to_string_pretty(&v).map_err(|e| Error::invalid(format!("cannot serialise results: {e}")))?;
        text.push('\n');
        target.write_bytes(text.as_bytes())?;
        eprintln!("wrote {}", target.path().display());
    }
    if let Some(target) = &log_requests {
        let mut out = String::new();
        for (o, key) in outcomes.iter().zip(&keys) {
            for r in &o.requests {
                let row =
                    json!({"task": key, "doc": r.doc, "choice": r.choice, "logprob": r.logprob, "is_greedy": r.is_greedy, "n_tokens": r.n_tokens});
                out.push_str(&row.to_string());
                out.push('\n');
            }
        }
        target.write_bytes(out.as_bytes())?;
        eprintln!(
            "wrote {} request scores to {}",
            outcomes.iter().map(|o| o.requests.len()).sum::<usize>(),
            target.path().display()
        );
    }
    Ok(())
}

/// The data file's row of each document, as lm-eval's `doc`: JSONL line `Doc::line`, or entry `Doc::line`
/// of a JSON array (TruthfulQA's mc_task.json).
fn raw_docs(t: &LoadedTask) -> Result<Vec<Value>> {
    let text = lmscore::error::read_to_string_bounded(&t.source, lmscore::error::MAX_DATA_BYTES)?;
    let parse = |s: &str, line: usize| serde_json::from_str::<Value>(s).map_err(|e| Error::row(&t.source, line, format!("not valid JSON: {e}")));
    if t.source.extension().is_some_and(|e| e == "jsonl") {
        let lines: Vec<&str> = text.lines().collect();
        t.docs
            .iter()
            .map(|d| parse(lines.get(d.line - 1).copied().unwrap_or(""), d.line))
            .collect()
    } else {
        let all = parse(&text, 1)?;
        Ok(t.docs.iter().map(|d| all.get(d.line - 1).cloned().unwrap_or(Value::Null)).collect())
    }
}

/// lm-eval's samples JSONL of one task (`lm_eval/evaluator.py` builds the row, `EvaluationTracker.
/// save_results_samples` writes it: arguments as `gen_args_i.arg_j`, responses as Python `str()`s, the
/// target as `str(target)`).
fn samples_jsonl(t: &LoadedTask, o: &TaskOutcome) -> Result<String> {
    let docs = raw_docs(t)?;
    let lls: Vec<f64> = o.requests.iter().map(|r| r.logprob).collect();
    let per_doc = tasks::doc_metrics(t, &lls)?;
    let py_bool = |b: bool| if b { "True" } else { "False" };
    let mut out = String::new();
    let mut k = 0;
    for (di, (d, raw)) in t.docs.iter().zip(docs).enumerate() {
        let mut arguments = Map::new();
        let (mut resps, mut filtered) = (vec![], vec![]);
        for (ci, cont) in d.continuations.iter().enumerate() {
            let r = &o.requests[k + ci];
            arguments.insert(format!("gen_args_{ci}"), json!({"arg_0": d.context, "arg_1": cont}));
            let resp = json!([lm_eval::py_float_str(r.logprob), py_bool(r.is_greedy)]);
            resps.push(json!([resp.clone()]));
            filtered.push(resp);
        }
        k += d.continuations.len();
        // lm-eval's doc_to_target: TruthfulQA's is the literal 0, the prize and custom tasks' the gold index.
        let target = d.gold.to_string();
        let mut row = json!({
            "doc_id": di,
            "doc": raw,
            "target": target,
            "arguments": arguments,
            "resps": resps,
            "filtered_resps": filtered,
            "filter": "none",
            "metrics": per_doc.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            "doc_hash": lm_eval::hash_string(&lm_eval::py_json_dumps_indent2(&raw)),
            "prompt_hash": lm_eval::hash_string(&d.context),
            "target_hash": lm_eval::hash_string(&target),
        });
        for (m, values) in &per_doc {
            row[*m] = json!(values[di]);
        }
        out.push_str(&serde_json::to_string(&row).map_err(|e| Error::invalid(format!("cannot serialise a sample: {e}")))?);
        out.push('\n');
    }
    Ok(out)
}

fn plan_json(s: &PlanStats, shared_with: &[String]) -> Value {
    json!({
        "naive_tokens": s.naive_tokens,
        "computed_tokens": s.computed_tokens,
        "scored_rows": s.scored_rows,
        "batches": s.batches,
        "sharing_ratio": s.sharing_ratio(),
        "tokens_per_second": s.tokens_per_second(),
        "seconds": s.seconds,
        "shared_with": shared_with,
    })
}

/// lm-eval's results document for `tasks` (see [`lm_eval::results_document`]) with `extra` after `config`,
/// then the planner's figures under `plan` (keyed like `results`).
pub fn results_json(tasks: &[TaskResults], outcomes: &[TaskOutcome], keys: &[&str], config: Value, mut extra: Map<String, Value>) -> Result<Value> {
    let mut plan = Map::new();
    let mut total = PlanStats::default();
    let mut counted: Vec<&str> = vec![];
    for (o, key) in outcomes.iter().zip(keys) {
        let shared: Vec<String> = o
            .shared_plan_with
            .iter()
            .map(|t| outcomes.iter().position(|x| &x.task == t).map_or(t.clone(), |i| keys[i].to_string()))
            .collect();
        plan.insert(key.to_string(), plan_json(&o.stats, &shared));
        // A shared plan counts once in the total.
        if !o.shared_plan_with.iter().any(|t| counted.contains(&t.as_str())) {
            total.naive_tokens += o.stats.naive_tokens;
            total.computed_tokens += o.stats.computed_tokens;
            total.scored_rows += o.stats.scored_rows;
            total.batches += o.stats.batches;
            total.seconds += o.stats.seconds;
        }
        counted.push(&o.task);
    }
    plan.insert("total".into(), plan_json(&total, &[]));
    extra.insert("plan".into(), Value::Object(plan));
    lm_eval::results_document(tasks, config, extra)
}

/// The results table printed on stdout.
pub fn table(outcomes: &[TaskOutcome], keys: &[&str]) -> String {
    let w = keys.iter().map(|k| k.len()).max().unwrap_or(4).max(4);
    let mut s = format!(
        "{:<w$}  {:<8}  {:>8}    {:<8}  {:>6}  {:>10}  {:>8}\n",
        "task", "metric", "value", "stderr", "n", "tokens/s", "sharing"
    );
    for (o, key) in outcomes.iter().zip(keys) {
        for (i, m) in o.metrics.iter().enumerate() {
            // Requested tokens per second, and requested / computed tokens (what the prefix tree saved).
            let (task, n, tps, share) = if i == 0 {
                let (tps, share) = (o.stats.tokens_per_second(), o.stats.sharing_ratio());
                (*key, o.n_docs.to_string(), format!("{tps:.0}"), format!("x{share:.1}"))
            } else {
                ("", String::new(), String::new(), String::new())
            };
            s.push_str(&format!(
                "{task:<w$}  {:<8}  {:>8.4} ± {:<8.4}  {n:>6}  {tps:>10}  {share:>8}\n",
                m.name, m.value, m.stderr
            ));
        }
    }
    s
}
