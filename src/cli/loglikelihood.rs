//! `lmscore loglikelihood`: the standalone scoring binary. JSONL in, JSONL out, rows in input order.
//!
//! Row kinds (one plan for all rows of a file, so prefixes are shared across every row):
//! - `{"id", "context", "continuation"}`: log p(continuation | context), tokenised as lm-eval 0.4's HF
//!   backend does (`_encode_pair`: the context's trailing whitespace moves to the continuation, continuation ids
//!   = `enc(context + continuation)[len(enc(context)):]`; an empty context is `<|endoftext|>`), truncated from
//!   the left to the window.
//! - `{"id", "context_ids", "continuation_ids"}`: the same on token ids.
//! - `{"id", "rolling"}` (text) or `{"id", "rolling_ids"}` (token ids, optional `"prefix_id"`, default 0 =
//!   `<|endoftext|>`): the log-likelihood of the whole text, as lm-eval's `loglikelihood_rolling` computes it
//!   (`lm_eval.utils.get_rolling_token_windows` with `context_len=1` and `make_disjoint_window`): windows of
//!   `max_length` predicted tokens, the first after the prefix token, each later one conditioned on the
//!   `max_length + 1 - n` tokens before its `n` predicted ones; the sum over windows.
//!
//! Output: `{"id", "logprob", "is_greedy", "n_tokens"}`; rolling rows also `"windows"`.

use lmscore::checkpoint::Checkpoint;
use lmscore::engine::{token_progress, DeviceSpec, Engine, EngineOptions};
use lmscore::error::{Error, Result, MAX_DATA_BYTES};
use lmscore::output::{self, OutputTarget};
use lmscore::plan::Request;
use lmscore::tokenizer::{PairEncoding, Tokenizer};
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face model directory (config.json, weights, tokenizer.json for text input), or a Hub model id
    /// with an optional revision, EleutherAI/pythia-160m@step2000 (the standard HF cache; downloaded unless
    /// --offline).
    #[arg(long)]
    pub model: String,
    /// JSONL, one request per line (see the kinds above), or `-` for stdin. "id" (a string or an integer) is
    /// optional but must then be on every row or on none: rows without ids are numbered 0, 1, 2... in input
    /// order (blank lines skipped); duplicate ids are an error. Lines may be at most 256 MiB, the file at most
    /// 512 MiB.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL written in input order: {"id", "logprob", "is_greedy", "n_tokens"} (rolling rows also "windows").
    /// `-` is stdout. A file is replaced atomically once scoring is done (a symlink is followed); a device or
    /// FIFO is written in place.
    #[arg(long)]
    pub output: PathBuf,
    /// Never download: a Hub model must be complete in the Hugging Face cache.
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Flags shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// cpu, cuda (= cuda:0) or cuda:N: the N-th CUDA device this process sees, counted from 0 among those
    /// CUDA_VISIBLE_DEVICES lists when it is set.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Compute precision: f16, bf16 or f32 (default: the checkpoint's stored dtype; CPU is always f32).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Token budget of one packed batch (default: 2048 on CPU, more on CUDA).
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Context window; longer sequences are truncated from the left as lm-eval does (default: the model's).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// CPU threads for the CPU backend's matrix products and row loops, and the CUDA backend's host work
    /// (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Compute every request on its own instead of sharing common prefixes (for comparisons).
    #[arg(long)]
    pub no_sharing: bool,
}

impl EngineArgs {
    pub fn options(&self) -> Result<EngineOptions> {
        use lmscore::checkpoint::DType;
        let dtype = match self.dtype.as_deref() {
            None => None,
            Some("f16") | Some("fp16") | Some("float16") => Some(DType::F16),
            Some("bf16") | Some("bfloat16") => Some(DType::BF16),
            Some("f32") | Some("fp32") | Some("float32") => Some(DType::F32),
            Some(other) => return Err(Error::invalid(format!("--dtype {other}: expected f16, bf16 or f32"))),
        };
        // Checked here, before any file is read, so the error is about the flag rather than the first request.
        if self.max_length == Some(0) {
            return Err(Error::invalid("--max-length must be at least 1"));
        }
        if self.max_batch_tokens == Some(0) {
            return Err(Error::invalid("--max-batch-tokens must be at least 1"));
        }
        if let Some(n) = self.threads {
            lmscore::engine::use_threads(n)?;
        }
        Ok(EngineOptions {
            device: self.device.kind,
            cuda_ordinal: self.device.ordinal,
            dtype,
            max_batch_tokens: self.max_batch_tokens,
            max_length: self.max_length,
            sharing: !self.no_sharing,
        })
    }
}

/// lm-eval's rolling windows of `tokens` (`get_rolling_token_windows(tokens, prefix, max_len, context_len=1)`
/// then `make_disjoint_window`), as (context, continuation) requests. No tokens: no windows.
pub fn rolling_windows(tokens: &[u32], prefix: u32, max_len: usize) -> Vec<Request> {
    let mut out = vec![];
    if tokens.is_empty() {
        return out;
    }
    // The first window predicts up to max_len tokens after the prefix token alone.
    let first = max_len.min(tokens.len());
    out.push(Request {
        context: vec![prefix],
        continuation: tokens[..first].to_vec(),
    });
    let mut predicted = first;
    while predicted < tokens.len() {
        // Each later one predicts up to max_len more, seeing max_len + 1 tokens in all.
        let n = (tokens.len() - predicted).min(max_len);
        let end = predicted + n;
        let window = &tokens[end - max_len - 1..end - 1];
        out.push(Request {
            context: window[..window.len() - (n - 1)].to_vec(),
            continuation: tokens[end - n..end].to_vec(),
        });
        predicted += n;
    }
    out
}

/// Plain progress lines on stderr when it is not a terminal (a pipe: lmscore-lm-eval relays them; a log
/// file), where the progress bar is hidden: one every 10 s and one at the end.
struct PlainProgress {
    on: bool,
    start: std::time::Instant,
    last: std::time::Instant,
    done: u64,
}

impl PlainProgress {
    fn new() -> Self {
        let now = std::time::Instant::now();
        PlainProgress {
            on: !std::io::stderr().is_terminal(),
            start: now,
            last: now,
            done: 0,
        }
    }
    fn add(&mut self, tokens: u64, total: u64) {
        self.done += tokens;
        if self.on && (self.last.elapsed().as_secs_f64() >= 10.0 || self.done == total) {
            self.last = std::time::Instant::now();
            let secs = self.start.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "scoring: {}/{total} tokens ({:.0}%), {:.0} tokens/s, {secs:.0} s",
                self.done,
                100.0 * self.done as f64 / total.max(1) as f64,
                self.done as f64 / secs
            );
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let opts = args.engine.options()?;
    let output = OutputTarget::check(&args.output)?;
    let model_arg = PathBuf::from(&args.model);
    output::check_distinct(&[&output], &[&args.input, &model_arg])?;
    let rows = read_rows(&args.input)?;
    let (_, model_dir, _) = super::score::resolve_model(&args.model, args.offline)?;
    let ckpt = Checkpoint::open(&model_dir)?;
    let needs_tokenizer = rows.iter().any(|r| matches!(r.input, RowInput::Text { .. } | RowInput::RollingText(_)));
    let vocab = ckpt.config.vocab_size;
    let max_len = opts.max_length.unwrap_or(ckpt.config.max_positions);
    // Only the last max_len + 1 tokens of a pair are used: a huge text context is encoded from its tail.
    // (Rolling text is scored whole: `encode` never cuts.)
    let tokenizer = if needs_tokenizer {
        Some(Tokenizer::from_file(&ckpt.tokenizer_path())?.with_window(max_len.saturating_add(1)))
    } else {
        None
    };
    // Requests of every row end to end; row i owns requests[spans[i]].
    let mut requests = Vec::with_capacity(rows.len());
    let mut spans = Vec::with_capacity(rows.len());
    for r in &rows {
        let bad = |msg: String| Error::row(&args.input, r.line, msg);
        let tok = || tokenizer.as_ref().expect("loaded for text rows");
        let first = requests.len();
        match &r.input {
            RowInput::Text { context, continuation } => {
                let (mut ctx, mut cont) = tok()
                    .encode_pair(context, continuation, PairEncoding::Joint)
                    .map_err(|e| bad(e.to_string()))?;
                // lm-eval's empty context: `<|endoftext|>`, unless the continuation itself starts with it, which
                // then serves as the context (`(cont[:1], cont[1:])`).
                if context.is_empty() && cont.first() == Some(&0) && cont.len() > 1 {
                    ctx = vec![0];
                    cont.remove(0);
                }
                requests.push(Request {
                    context: ctx,
                    continuation: cont,
                });
            }
            RowInput::Ids { context, continuation } => requests.push(Request {
                context: context.clone(),
                continuation: continuation.clone(),
            }),
            RowInput::RollingText(text) => {
                let ids = tok().encode(text).map_err(|e| bad(e.to_string()))?;
                requests.extend(rolling_windows(&ids, 0, max_len));
            }
            RowInput::RollingIds { ids, prefix } => requests.extend(rolling_windows(ids, *prefix, max_len)),
        }
        for request in &requests[first..] {
            if let Some(id) = request.context.iter().chain(&request.continuation).find(|&&id| id as usize >= vocab) {
                return Err(bad(format!("token id {id} is outside the model's vocabulary of {vocab}")));
            }
            lmscore::plan::model_input(request, max_len).map_err(|e| bad(e.to_string()))?;
        }
        spans.push(first..requests.len());
    }
    let owner: Vec<usize> = spans.iter().enumerate().flat_map(|(i, s)| std::iter::repeat_n(i, s.len())).collect();
    let engine = Engine::load(&ckpt, &opts)?;
    let bar = token_progress(0, "scoring");
    let mut plain = PlainProgress::new();
    let (scores, stats) = engine
        .score(&requests, &opts, |tokens, total| {
            bar.set_length(total as u64);
            bar.inc(tokens as u64);
            plain.add(tokens as u64, total as u64);
        })
        .map_err(|e| e.naming_request(|i| format!("{}:{}: request id {}", args.input.display(), rows[owner[i]].line, rows[owner[i]].id)))?;
    bar.finish_and_clear();
    let mut out = String::new();
    for (r, span) in rows.iter().zip(&spans) {
        let s = &scores[span.clone()];
        // Summed over windows in order, in f64, as lm-eval sums them.
        let logprob: f64 = s.iter().map(|x| x.logprob).sum();
        let is_greedy = s.iter().all(|x| x.is_greedy);
        let n_tokens: usize = s.iter().map(|x| x.n_tokens).sum();
        let v = match r.input {
            RowInput::RollingText(_) | RowInput::RollingIds { .. } => {
                json!({"id": r.id, "logprob": logprob, "is_greedy": is_greedy, "n_tokens": n_tokens, "windows": span.len()})
            }
            _ => json!({"id": r.id, "logprob": logprob, "is_greedy": is_greedy, "n_tokens": n_tokens}),
        };
        out.push_str(&v.to_string());
        out.push('\n');
    }
    output.write_bytes(out.as_bytes())?;
    eprintln!(
        "scored {} rows ({} requests) on {}: {} tokens requested, {} computed (sharing x{:.2}), {:.0} tokens/s",
        rows.len(),
        requests.len(),
        engine.describe(),
        stats.naive_tokens,
        stats.computed_tokens,
        stats.sharing_ratio(),
        stats.tokens_per_second()
    );
    Ok(())
}

struct Row {
    line: usize,
    id: Value,
    input: RowInput,
}

enum RowInput {
    Text { context: String, continuation: String },
    Ids { context: Vec<u32>, continuation: Vec<u32> },
    RollingText(String),
    RollingIds { ids: Vec<u32>, prefix: u32 },
}

/// The longest JSONL line read: no real request comes near it, and without a bound a file with no
/// newline (or `--input - < /dev/zero`) is read until memory runs out.
const MAX_LINE_BYTES: u64 = 256 << 20;

fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let mut reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(lmscore::error::open_regular(path)?))
    };
    let mut rows = Vec::new();
    let (mut line_no, mut total, mut buf) = (0, 0, Vec::new());
    // The first line with an "id" and the first without; ids seen (as JSON text) -> line.
    let (mut with_id, mut without_id) = (None, None);
    let mut seen_ids = std::collections::HashMap::new();
    loop {
        buf.clear();
        let n = reader.by_ref().take(MAX_LINE_BYTES + 1).read_until(b'\n', &mut buf);
        let n = n.map_err(|e| Error::row(path, line_no + 1, format!("unreadable: {e}")))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        total += n as u64;
        let bad = |msg: String| Error::row(path, line_no, msg);
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() as u64 > MAX_LINE_BYTES {
            return Err(bad(format!("line longer than {} MiB", MAX_LINE_BYTES >> 20)));
        }
        if total > MAX_DATA_BYTES {
            return Err(Error::file(path, format!("is larger than {} MiB", MAX_DATA_BYTES >> 20)));
        }
        let line = std::str::from_utf8(&buf).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad("expected a JSON object".into()))?;
        let id = match obj.get("id") {
            Some(id) if id.is_string() || id.is_i64() || id.is_u64() => {
                with_id.get_or_insert(line_no);
                if let Some(first) = seen_ids.insert(id.to_string(), line_no) {
                    return Err(bad(format!("duplicate id {id}: line {first} has the same id; ids must be unique")));
                }
                id.clone()
            }
            Some(_) => return Err(bad("`id` must be a string or an integer".into())),
            None => {
                without_id.get_or_insert(line_no);
                Value::from(rows.len())
            }
        };
        if let (Some(a), Some(b)) = (with_id, without_id) {
            return Err(bad(format!(
                "line {a} has an \"id\" and line {b} has none: give every row an id, or none (rows are then numbered 0, 1, 2...)"
            )));
        }
        let text = |k: &str| {
            obj.get(k)
                .map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad(format!("`{k}` must be a string"))))
        };
        let ids = |k: &str| {
            obj.get(k).map(|x| {
                x.as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|t| t.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as u32))
                            .collect::<Option<Vec<u32>>>()
                    })
                    .ok_or_else(|| bad(format!("`{k}` must be an array of non-negative token ids")))
            })
        };
        let rolling = (text("rolling"), ids("rolling_ids"));
        let pair = (text("context"), text("continuation"), ids("context_ids"), ids("continuation_ids"));
        let input = match (rolling, pair) {
            ((Some(t), None), (None, None, None, None)) => RowInput::RollingText(t?),
            ((None, Some(t)), (None, None, None, None)) => {
                let prefix = match obj.get("prefix_id") {
                    None => 0,
                    Some(p) => p
                        .as_u64()
                        .filter(|&n| n <= u32::MAX as u64)
                        .ok_or_else(|| bad("`prefix_id` must be a non-negative token id".into()))? as u32,
                };
                RowInput::RollingIds { ids: t?, prefix }
            }
            ((None, None), (Some(c), Some(k), None, None)) => RowInput::Text {
                context: c?,
                continuation: k?,
            },
            ((None, None), (None, None, Some(c), Some(k))) => RowInput::Ids {
                context: c?,
                continuation: k?,
            },
            _ => {
                return Err(bad(
                    "expected either \"context\" and \"continuation\" (strings), \"context_ids\" and \"continuation_ids\" (token id arrays), \
                     \"rolling\" (a string) or \"rolling_ids\" (a token id array)"
                        .into(),
                ))
            }
        };
        if let RowInput::Text { continuation, .. } = &input {
            if continuation.is_empty() {
                return Err(bad("empty continuation: there is nothing to score".into()));
            }
        }
        rows.push(Row { line: line_no, id, input });
    }
    Ok(rows)
}
