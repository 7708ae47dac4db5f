//! `lmscore score`: evaluate a checkpoint on the study's tasks (or a user's own multiple-choice JSONL) and
//! report lm-eval-style metrics.
//!
//! ```text
//! lmscore score --model DIR --tasks memo_trap,neqa,truthfulqa_mc1,truthfulqa_mc2 \
//!     [--data-dir DIR] [--protocol paper-2023|lm-eval-0.4] [--device cpu|cuda] \
//!     [--output-json FILE] [--log-requests FILE] [--skip-bad-rows] [--offline] [engine flags]
//! ```
//!
//! `--output-json` writes lm-eval's layout plus the planner's figures:
//!
//! ```json
//! {"results": {"memo_trap": {"acc": 0.65, "acc_stderr": 0.015, "acc_norm": 0.6, "acc_norm_stderr": 0.016, "n": 936, "skipped_rows": 0},
//!              "truthfulqa_mc1": {"mc1": .., "mc1_stderr": .., "n": 817, ..}, "truthfulqa_mc2": {"mc2": .., "mc2_stderr": .., ..}},
//!  "config": {"model", "protocol", "device", "dtype", "lmscore_version", "engine", "tasks", "data_dir",
//!             "data_files": {task: file}, "num_fewshot": 0, "max_length", "max_batch_tokens", "sharing"},
//!  "plan": {"memo_trap": {"naive_tokens", "computed_tokens", "scored_rows", "batches", "sharing_ratio",
//!                         "tokens_per_second", "seconds", "shared_with": []}, ..., "total": {...}}}
//! ```
//!
//! `plan` is per task. TruthfulQA MC1 and MC2 are scored in ONE plan when both are selected (MC2 repeats
//! the MC1 answers; the prefix tree computes them once): both then report that plan's figures and name each
//! other in `shared_with`; `total` counts it once.
//!
//! `--log-requests` writes one JSONL row per request: `{"task", "doc", "choice", "logprob", "is_greedy",
//! "n_tokens"}`, `doc` being the 0-based index among the task's scored documents.
//!
//! Both outputs are checked before anything is loaded (see [`lmscore::output`]): `-` is stdout (the results
//! table then goes to stderr), the two must be different files and neither may be an input.

use super::loglikelihood::EngineArgs;
use lmscore::checkpoint::{Checkpoint, DType};
use lmscore::engine::{token_progress, Device, Engine, PlanStats};
use lmscore::error::{Error, Result};
use lmscore::output::{self, OutputTarget};
use lmscore::tasks::{self, LoadOptions, LoadedTask, Protocol, TaskOutcome};
use lmscore::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face model directory (config.json, weights, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// "all" (the paper's 12 tasks) or a comma-separated list: truthfulqa_mc1, truthfulqa_mc2, hindsight_neglect,
    /// into_the_unknown, memo_trap, modus_tollens, neqa, pattern_matching_suppression, redefine,
    /// repetitive_algebra, resisting_correction, sig_figs; under lm-eval-0.4 also redefine_math and
    /// quote_repetition; custom:PATH for your own JSONL ({"context", "choices", "gold", optional "delimiter"}).
    #[arg(long)]
    pub tasks: String,
    /// Data directory laid out like shared/data (<task>/<release file>, see each SOURCE.md). Default: the
    /// bundled sample data/sample/ (20 documents each of memo_trap, neqa and TruthfulQA).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// paper-2023: what the paper ran (lm-eval master, spring 2023). lm-eval-0.4: today's lm-eval definitions.
    #[arg(long, value_enum, default_value_t = Protocol::Paper2023)]
    pub protocol: Protocol,
    /// Write results, config and planner figures as JSON (lm-eval's layout). `-` is stdout (the results
    /// table then goes to stderr). A file is replaced atomically (a symlink is followed); a device or FIFO is
    /// written in place.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
    /// Write every request's score as JSONL: {task, doc, choice, logprob, is_greedy, n_tokens}. Same rules
    /// as --output-json; the two must be different files.
    #[arg(long)]
    pub log_requests: Option<PathBuf>,
    /// Skip malformed data rows (and count them) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Never download: data must be in --data-dir or the Hugging Face cache.
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

pub fn run(args: Args) -> Result<()> {
    let opts = args.engine.options()?;
    let output_json = args.output_json.as_ref().map(OutputTarget::check).transpose()?;
    let log_requests = args.log_requests.as_ref().map(OutputTarget::check).transpose()?;
    let outputs: Vec<&OutputTarget> = output_json.iter().chain(&log_requests).collect();
    let mut inputs: Vec<&Path> = vec![&args.model];
    inputs.extend(args.tokenizer.as_deref());
    output::check_distinct(&outputs, &inputs)?;
    let names = tasks::expand_task_list(&args.tasks, args.protocol)?;
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
    let ckpt = Checkpoint::open(&args.model)?;
    let tokenizer_path = find_tokenizer(&args, &ckpt, &data_dir)?;
    let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
    let load = LoadOptions {
        data_dir: data_dir.clone(),
        skip_bad_rows: args.skip_bad_rows,
        offline: args.offline,
    };
    let mut loaded: Vec<LoadedTask> = Vec::with_capacity(names.len());
    for name in &names {
        let t = tasks::load_task(name, args.protocol, &tokenizer, &load)?;
        eprintln!(
            "{}: {} docs, {} requests from {}{}",
            t.name,
            t.docs.len(),
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
    let bar = token_progress(0, "scoring");
    let outcomes = tasks::evaluate(&engine, &loaded, &opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();

    if outputs.iter().any(|o| o.is_stdout()) {
        eprint!("{}", table(&outcomes));
    } else {
        print!("{}", table(&outcomes));
    }
    let dtype = match opts.device {
        Device::Cpu => "f32".to_string(),
        _ => match opts.dtype.or(ckpt.config.torch_dtype) {
            Some(d) => dtype_name(d),
            None => dtype_name(ckpt.stored_dtype()?),
        },
    };
    if let Some(target) = &output_json {
        let config = json!({
            "model": args.model.display().to_string(),
            "protocol": args.protocol.name(),
            "device": match opts.device { Device::Cpu => "cpu", Device::Cuda => "cuda" },
            "dtype": dtype,
            "lmscore_version": env!("CARGO_PKG_VERSION"),
            "engine": engine.describe(),
            "tasks": names,
            "data_dir": data_dir.display().to_string(),
            "data_files": loaded.iter().map(|t| (t.name.clone(), Value::from(t.source.display().to_string()))).collect::<Map<_, _>>(),
            "num_fewshot": 0,
            "max_length": opts.max_length.unwrap_or(engine.config().max_positions),
            "max_batch_tokens": opts.max_batch_tokens.unwrap_or_else(|| engine.default_batch_tokens()),
            "sharing": opts.sharing,
            "threads": lmscore::engine::threads(),
        });
        let v = results_json(&outcomes, config);
        let mut text = serde_json::to_string_pretty(&v).map_err(|e| Error::invalid(format!("cannot serialise results: {e}")))?;
        text.push('\n');
        target.write_bytes(text.as_bytes())?;
        eprintln!("wrote {}", target.path().display());
    }
    if let Some(target) = &log_requests {
        let mut out = String::new();
        for o in &outcomes {
            for r in &o.requests {
                let row =
                    json!({"task": o.task, "doc": r.doc, "choice": r.choice, "logprob": r.logprob, "is_greedy": r.is_greedy, "n_tokens": r.n_tokens});
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

/// `{"results", "config", "plan"}` (see the module docs).
pub fn results_json(outcomes: &[TaskOutcome], config: Value) -> Value {
    let mut results = Map::new();
    let mut plan = Map::new();
    let mut total = PlanStats::default();
    let mut counted: Vec<&str> = vec![];
    for o in outcomes {
        let mut r = Map::new();
        for m in &o.metrics {
            r.insert(m.name.clone(), json!(m.value));
            r.insert(format!("{}_stderr", m.name), json!(m.stderr));
        }
        r.insert("n".into(), json!(o.n_docs));
        r.insert("skipped_rows".into(), json!(o.skipped_rows));
        results.insert(o.task.clone(), Value::Object(r));
        plan.insert(o.task.clone(), plan_json(&o.stats, &o.shared_plan_with));
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
    json!({"results": results, "config": config, "plan": plan})
}

/// The results table printed on stdout.
pub fn table(outcomes: &[TaskOutcome]) -> String {
    let w = outcomes.iter().map(|o| o.task.len()).max().unwrap_or(4).max(4);
    let mut s = format!(
        "{:<w$}  {:<8}  {:>8}    {:<8}  {:>6}  {:>10}  {:>8}\n",
        "task", "metric", "value", "stderr", "n", "tokens/s", "sharing"
    );
    for o in outcomes {
        for (i, m) in o.metrics.iter().enumerate() {
            // Requested tokens per second, and requested / computed tokens (what the prefix tree saved).
            let (task, n, tps, share) = if i == 0 {
                let (tps, share) = (o.stats.tokens_per_second(), o.stats.sharing_ratio());
                (o.task.as_str(), o.n_docs.to_string(), format!("{tps:.0}"), format!("x{share:.1}"))
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
