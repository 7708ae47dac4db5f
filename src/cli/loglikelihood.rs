//! `lmscore loglikelihood`: the standalone scoring binary. JSONL in, JSONL out, rows in input order.

use lmscore::checkpoint::Checkpoint;
use lmscore::engine::{token_progress, Device, Engine, EngineOptions};
use lmscore::error::{Error, Result, MAX_DATA_BYTES};
use lmscore::output::{self, OutputTarget};
use lmscore::plan::Request;
use lmscore::tokenizer::{PairEncoding, Tokenizer};
use serde_json::{json, Value};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face model directory (config.json, weights, tokenizer.json for text input).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL: {"id", "context", "continuation"} or {"id", "context_ids", "continuation_ids"} per line, or `-`
    /// for stdin. "id" (a string or an integer) is optional but must then be on every row or on none: rows
    /// without ids are numbered 0, 1, 2... in input order (blank lines skipped); duplicate ids are an error.
    /// Lines may be at most 256 MiB, the file at most 512 MiB.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL written in input order: {"id", "logprob", "is_greedy", "n_tokens"}. `-` is stdout. A file is
    /// replaced atomically once scoring is done (a symlink is followed); a device or FIFO is written in place.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Flags shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
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
            device: self.device,
            dtype,
            max_batch_tokens: self.max_batch_tokens,
            max_length: self.max_length,
            sharing: !self.no_sharing,
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    let opts = args.engine.options()?;
    let output = OutputTarget::check(&args.output)?;
    output::check_distinct(&[&output], &[&args.input, &args.model])?;
    let ckpt = Checkpoint::open(&args.model)?;
    let rows = read_rows(&args.input)?;
    let needs_tokenizer = rows.iter().any(|r| matches!(r.input, RowInput::Text { .. }));
    let vocab = ckpt.config.vocab_size;
    let max_len = opts.max_length.unwrap_or(ckpt.config.max_positions);
    // Only the last max_len + 1 tokens of a request are used: a huge text context is encoded from its tail.
    let tokenizer = if needs_tokenizer {
        Some(Tokenizer::from_file(&ckpt.tokenizer_path())?.with_window(max_len.saturating_add(1)))
    } else {
        None
    };
    let mut requests = Vec::with_capacity(rows.len());
    for r in &rows {
        let bad = |msg: String| Error::row(&args.input, r.line, msg);
        let (context, continuation) = match &r.input {
            RowInput::Text { context, continuation } => tokenizer
                .as_ref()
                .unwrap()
                .encode_pair(context, continuation, PairEncoding::Joint)
                .map_err(|e| bad(e.to_string()))?,
            RowInput::Ids { context, continuation } => (context.clone(), continuation.clone()),
        };
        if let Some(id) = context.iter().chain(&continuation).find(|&&id| id as usize >= vocab) {
            return Err(bad(format!("token id {id} is outside the model's vocabulary of {vocab}")));
        }
        let request = Request { context, continuation };
        lmscore::plan::model_input(&request, max_len).map_err(|e| bad(e.to_string()))?;
        requests.push(request);
    }
    let engine = Engine::load(&ckpt, &opts)?;
    let bar = token_progress(0, "scoring");
    let (scores, stats) = engine
        .score(&requests, &opts, |tokens, total| {
            bar.set_length(total as u64);
            bar.inc(tokens as u64);
        })
        .map_err(|e| e.naming_request(|i| format!("{}:{}: request id {}", args.input.display(), rows[i].line, rows[i].id)))?;
    bar.finish_and_clear();
    let mut out = String::new();
    for (r, s) in rows.iter().zip(&scores) {
        let v = json!({"id": r.id, "logprob": s.logprob, "is_greedy": s.is_greedy, "n_tokens": s.n_tokens});
        out.push_str(&v.to_string());
        out.push('\n');
    }
    output.write_bytes(out.as_bytes())?;
    eprintln!(
        "scored {} requests on {}: {} tokens requested, {} computed (sharing x{:.2}), {:.0} tokens/s",
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
        let input = match (text("context"), text("continuation"), ids("context_ids"), ids("continuation_ids")) {
            (Some(c), Some(k), None, None) => RowInput::Text {
                context: c?,
                continuation: k?,
            },
            (None, None, Some(c), Some(k)) => RowInput::Ids {
                context: c?,
                continuation: k?,
            },
            _ => {
                return Err(bad(
                    "expected either \"context\" and \"continuation\" (strings) or \"context_ids\" and \"continuation_ids\" (token id arrays)".into(),
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
