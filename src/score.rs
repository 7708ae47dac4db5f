//! Running a plan: forward each packed batch, score its target rows, and sum per request.

use crate::backend::{Backend, Tensor2};
use crate::error::{Error, Result};
use crate::model::{forward, forward_inspected, score_rows, BatchInputs, KvCache, Model, Stage};
use crate::plan::Plan;
use crate::plan::Request;

/// The log-likelihood of one continuation after its context.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestScore {
    /// Sum over continuation tokens of log p(token | everything before), summed in f64.
    pub logprob: f64,
    /// Every continuation token is the model's argmax.
    pub is_greedy: bool,
    pub n_tokens: usize,
}

/// Run every batch of `plan`; `on_batch(tokens_in_batch)` is called after each (progress bars).
pub fn run_plan<B: Backend>(b: &B, m: &Model<B>, plan: &Plan, mut on_batch: impl FnMut(usize)) -> Result<Vec<RequestScore>> {
    let mut out = vec![
        RequestScore {
            logprob: 0.0,
            is_greedy: true,
            n_tokens: 0
        };
        plan.num_requests
    ];
    let mut cache = KvCache::new(m.layers.len());
    for batch in &plan.batches {
        let inputs = batch_inputs(b, batch)?;
        let hidden = forward(b, m, &inputs, &mut cache)?;
        let scores = score_rows(b, m, &hidden, &inputs)?;
        for (t, s) in batch.targets.iter().zip(scores) {
            if !s.logprob.is_finite() {
                return Err(Error::NonFinite {
                    request: t.request as usize,
                    detail: format!(
                        "the log-probability of continuation token id {} is {}: the model's numbers are not finite",
                        t.token, s.logprob
                    ),
                });
            }
            let r = &mut out[t.request as usize];
            r.logprob += s.logprob as f64;
            r.is_greedy &= s.is_greedy;
            r.n_tokens += 1;
        }
        on_batch(batch.tokens.len());
    }
    Ok(out)
}

/// A planned batch's tables on the backend (one upload).
fn batch_inputs<B: Backend>(b: &B, batch: &crate::plan::Batch) -> Result<BatchInputs<B>> {
    let pairs: Vec<(u32, u32)> = batch.targets.iter().map(|t| (t.row, t.token)).collect();
    BatchInputs::new(b, &batch.tokens, &batch.layout, &batch.cache, &pairs)
}

/// Where the forward pass of `request` first produces non-finite values: run it alone, checking the
/// residual stream after the embedding and after each layer. Only called after a non-finite score, so
/// the read-backs cost nothing in a normal run.
pub fn locate_non_finite<B: Backend>(b: &B, m: &Model<B>, request: &Request, max_len: usize) -> Result<String> {
    let plan = crate::plan::build(std::slice::from_ref(request), max_len, max_len.saturating_add(1), false)?;
    let mut cache = KvCache::new(m.layers.len());
    let mut first: Option<(Stage, usize)> = None;
    for batch in &plan.batches {
        let inputs = batch_inputs(b, batch)?;
        let mut inspect = |stage: Stage, x: &B::Tensor| -> Result<()> {
            if first.is_none() {
                let values = b.to_host(x)?;
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    first = Some((stage, i / x.cols().max(1)));
                }
            }
            Ok(())
        };
        let hidden = forward_inspected(b, m, &inputs, &mut cache, &mut inspect)?;
        if first.is_some() {
            break;
        }
        if score_rows(b, m, &hidden, &inputs)?.iter().any(|s| !s.logprob.is_finite()) {
            return Ok("non-finite values first appear after the last layer: in the final LayerNorm or the LM head (embed_out)".into());
        }
    }
    Ok(match first {
        Some((Stage::Embedding, row)) => format!("non-finite values first appear in the token embedding (embed_in), at input position {row}"),
        Some((Stage::Layer(l), row)) => format!(
            "non-finite values first appear in the output of layer {l} (0-based, of {}), at input position {row}",
            m.layers.len()
        ),
        None => "run alone, this request's numbers are finite: the non-finite value depends on the batch it was packed in".into(),
    })
}
