//! Running a plan: forward each packed batch, score its target rows, and sum per request.

use crate::backend::Backend;
use crate::error::Result;
use crate::model::{forward, score_rows, KvCache, Model};
use crate::plan::Plan;

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
        let layout = b.prepare(&batch.layout)?;
        let hidden = forward(b, m, &batch.tokens, &layout, &mut cache, &batch.cache)?;
        let pairs: Vec<(u32, u32)> = batch.targets.iter().map(|t| (t.row, t.token)).collect();
        let scores = score_rows(b, m, &hidden, &pairs)?;
        for (t, s) in batch.targets.iter().zip(scores) {
            let r = &mut out[t.request as usize];
            r.logprob += s.logprob as f64;
            r.is_greedy &= s.is_greedy;
            r.n_tokens += 1;
        }
        on_batch(batch.tokens.len());
    }
    Ok(out)
}
