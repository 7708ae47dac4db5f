//! The op set every backend implements. `model::forward` is written once against this trait, so the CPU
//! oracle and the CUDA engine run the same sequence of ops and can be checked op by op.
//!
//! All tensors are 2-D and row-major: a row is a token (or a weight's output feature), columns are features.
//! Shapes in comments: T = tokens in the packed batch, P = cached (past) rows, h = hidden size,
//! hd = head dim, V = padded vocabulary, R = scored rows.

pub mod cpu;
pub mod cuda;

use crate::checkpoint::HostTensor;
use crate::error::Result;

/// A 2-D tensor living on some backend.
pub trait Tensor2 {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
}

/// Result of the fused log-softmax gather for one (row, target) pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenScore {
    /// logits[row, target] - logsumexp(logits[row, :]) over every vocabulary row (padding rows included, as HF does).
    pub logprob: f32,
    /// The target is the first maximum of the row (torch.argmax semantics).
    pub is_greedy: bool,
}

/// Which keys one query segment of a packed batch attends to.
///
/// Key index space: `[0, past_len)` are rows of the K/V cache kept from earlier batches,
/// `[past_len, past_len + T)` are the rows of the current batch.
/// A query at batch row `q_start + i` sees every key of `ancestors` plus the keys
/// `past_len + q_start ..= past_len + q_start + i` (its own segment, causally).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttnSegment {
    pub q_start: u32,
    pub q_len: u32,
    /// (start, len) ranges in key index space, root first. Empty for a root segment.
    pub ancestors: Vec<(u32, u32)>,
}

/// Host-side description of a packed batch: everything the position-dependent ops need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchLayout {
    /// [T] rotary position of each batch row (its segment's start position plus its offset).
    pub positions: Vec<u32>,
    /// Segments laid end to end: together they cover rows 0..T exactly once.
    pub segments: Vec<AttnSegment>,
    /// Rows in the K/V cache (P).
    pub past_len: usize,
}

impl BatchLayout {
    pub fn tokens(&self) -> usize {
        self.positions.len()
    }
}

/// The number of (row, token) pairs in a flat `targets` table, checked to fit `scores[at..]` of `n` scores.
pub fn check_targets(targets: &[u32], n: usize, at: usize) -> Result<usize> {
    if targets.len() % 2 != 0 {
        return Err(crate::error::Error::invalid(format!(
            "logsoftmax_gather: a target table of {} values is not (row, token) pairs",
            targets.len()
        )));
    }
    let pairs = targets.len() / 2;
    if at.checked_add(pairs).is_none_or(|end| end > n) {
        return Err(crate::error::Error::invalid(format!(
            "logsoftmax_gather: {pairs} targets at score {at} overrun the {n} scores"
        )));
    }
    Ok(pairs)
}

/// What a backend did while scoring, for `lmscore score --profile`: traffic between host and device and,
/// per op, its launches and time. Counters only grow; a run's activity is the difference of two snapshots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Activity {
    pub h2d_copies: u64,
    pub d2h_copies: u64,
    /// Host waits for the device that scoring itself makes: stream synchronisations, and a wait for the
    /// previous upload before the pinned staging memory is written again when that upload is still running.
    pub synchronizations: u64,
    /// Waits made only to pin a device fault on its op (LMSCORE_CUDA_SYNC=1: one after every launch), counted
    /// apart so that `synchronizations` says what scoring needs whichever way a run was started.
    pub debug_synchronizations: u64,
    /// Kernel launches and cuBLAS calls (each counted once).
    pub kernel_launches: u64,
    /// Per op name: (launches, seconds). Seconds only while op timing is on.
    pub ops: std::collections::BTreeMap<String, (u64, f64)>,
    /// Where the seconds come from, e.g. "CUDA events (GPU time)".
    pub clock: &'static str,
}

impl Activity {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Activity) -> Activity {
        let mut ops = self.ops.clone();
        for (name, (n, secs)) in &earlier.ops {
            if let Some(v) = ops.get_mut(name) {
                *v = (v.0 - n.min(&v.0), (v.1 - secs).max(0.0));
            }
        }
        ops.retain(|_, v| v.0 > 0 || v.1 > 0.0);
        Activity {
            h2d_copies: self.h2d_copies - earlier.h2d_copies,
            d2h_copies: self.d2h_copies - earlier.d2h_copies,
            synchronizations: self.synchronizations - earlier.synchronizations,
            debug_synchronizations: self.debug_synchronizations - earlier.debug_synchronizations,
            kernel_launches: self.kernel_launches - earlier.kernel_launches,
            ops,
            clock: self.clock,
        }
    }
}

/// Model geometry the attention-side ops need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    pub heads: usize,
    pub head_dim: usize,
    /// Leading dims of each q/k head that rotate (NeoX rotate-half pairs i and i + rotary_ndims/2).
    pub rotary_ndims: usize,
    pub rotary_base: f32,
}

pub trait Backend {
    type Tensor: Tensor2;
    /// A `BatchLayout` made ready for the kernels (on CUDA: uploaded once per batch).
    type Layout;
    /// A table of u32 on the backend: token ids, row numbers, or (row, token) pairs laid flat.
    type Index;
    /// Target scores of one batch, kept on the backend until `read_scores` (one read-back per batch).
    type Scores;

    /// Human-readable device and precision, e.g. "cpu f32" or "cuda:0 NVIDIA H100 (f16)".
    fn describe(&self) -> String;

    /// Called by `Model::load` before the first upload: an error when the model's weights cannot fit (the
    /// CUDA backend compares them with the device's free memory). Nothing to check by default.
    fn check_weights_fit(&self, _config: &crate::config::ModelConfig) -> Result<()> {
        Ok(())
    }
    /// Move a checkpoint tensor onto the backend in its compute precision. 1-D tensors become [1, n].
    fn upload(&self, t: &HostTensor) -> Result<Self::Tensor>;
    /// Activations from host f32 values (tests, benches).
    fn from_host(&self, rows: usize, cols: usize, values: &[f32]) -> Result<Self::Tensor>;
    /// Any tensor back to host f32 values (tests).
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Every index table of one batch at once: the attention layout's tables and `tables` (returned as
    /// indices, in order). On CUDA this is the batch's one host-to-device copy, from pinned memory.
    fn prepare(&self, layout: &BatchLayout, tables: &[&[u32]]) -> Result<(Self::Layout, Vec<Self::Index>)>;
    /// One index table on its own (tests, benches): its own upload.
    fn index(&self, values: &[u32]) -> Result<Self::Index>;

    /// table [V, h], ids [T] -> [T, h]
    fn embedding(&self, table: &Self::Tensor, ids: &Self::Index) -> Result<Self::Tensor>;
    /// x [T, c], w [1, c], b [1, c] -> [T, c]; mean and variance over c in f32.
    fn layernorm(&self, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// GPT-NeoX's parallel residual, x + attn(ln1(x)) + mlp(ln2(x)), starts here, from one read of x [T, h]
    /// (f32): returns (ln1(x), ln2(x)) in the compute dtype, and adds the two output projections' biases
    /// (`out_biases`, [1, h] each) to x in f32, so that both projections accumulate straight into it
    /// (`linear_accumulate`). `ln1` and `ln2` are (weight, bias) pairs.
    fn parallel_norms(
        &self,
        x: &mut Self::Tensor,
        ln1: (&Self::Tensor, &Self::Tensor),
        ln2: (&Self::Tensor, &Self::Tensor),
        eps: f32,
        out_biases: (&Self::Tensor, &Self::Tensor),
    ) -> Result<(Self::Tensor, Self::Tensor)>;
    /// y [T, out] (f32) += x [T, in] w [out, in]^T, accumulated in f32 into y (a GEMM with beta = 1).
    fn linear_accumulate(&self, y: &mut Self::Tensor, x: &Self::Tensor, w: &Self::Tensor) -> Result<()>;
    /// x [T, in], w [out, in] (PyTorch Linear layout), b [1, out] -> x w^T + b: [T, out]
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor, b: Option<&Self::Tensor>) -> Result<Self::Tensor>;
    /// x [T, c] += b [1, c], then exact (erf) GELU, in place.
    fn bias_gelu(&self, x: &mut Self::Tensor, b: &Self::Tensor) -> Result<()>;
    /// The attention's input projection: x [T, h], w [3h, h], b [1, 3h] -> qkv [T, 3h] (per head: q | k | v,
    /// hd each) = x w^T + b with the first rotary_ndims dims of every q and k head rotated by the row's
    /// position (NeoX rotate-half), all in f32 and rounded once to the compute dtype.
    fn qkv_rotary(&self, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, layout: &Self::Layout, shape: AttnShape) -> Result<Self::Tensor>;
    /// qkv [T, 3h], past [P, 3h] (cached qkv rows of earlier batches) -> softmax(q k^T / sqrt(hd)) v: [T, h]
    fn attention(&self, qkv: &Self::Tensor, past: Option<&Self::Tensor>, layout: &Self::Layout, shape: AttnShape) -> Result<Self::Tensor>;
    /// x [T, h] += a [T, h] + b [T, h] (GPT-NeoX parallel residual). `b` may be absent.
    fn residual_add(&self, x: &mut Self::Tensor, a: &Self::Tensor, b: Option<&Self::Tensor>) -> Result<()>;
    /// x [T, c], rows [R] -> [R, c]
    fn gather_rows(&self, x: &Self::Tensor, rows: &Self::Index) -> Result<Self::Tensor>;
    /// a [A, c], b [B, c] -> [A + B, c]
    fn concat_rows(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// x [R, h], w [V, h] -> f32 logits [R, V] (always f32: Pythia logits are ~1e3, f16 would lose 0.5 nat).
    fn lm_head(&self, x: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor>;
    /// Room for `n` target scores.
    fn new_scores(&self, n: usize) -> Result<Self::Scores>;
    /// logits [R, V], targets [N x (row, token)] -> scores[at .. at + N], one pass over each row.
    fn logsoftmax_gather(&self, logits: &Self::Tensor, targets: &Self::Index, scores: &mut Self::Scores, at: usize) -> Result<()>;
    /// The scores on the host (on CUDA: the batch's one device-to-host copy and its one synchronisation).
    fn read_scores(&self, scores: &Self::Scores) -> Result<Vec<TokenScore>>;

    /// Everything counted so far (see `Activity`); nothing by default.
    fn activity(&self) -> Activity {
        Activity::default()
    }
    /// Time every op from now on (CUDA: an event pair per launch); off by default.
    fn time_ops(&self, _on: bool) {}

    /// `logsoftmax_gather` of host targets straight to the host (tests, benches).
    fn logsoftmax_gather_host(&self, logits: &Self::Tensor, targets: &[(u32, u32)]) -> Result<Vec<TokenScore>> {
        let flat: Vec<u32> = targets.iter().flat_map(|&(row, token)| [row, token]).collect();
        let mut scores = self.new_scores(targets.len())?;
        self.logsoftmax_gather(logits, &self.index(&flat)?, &mut scores, 0)?;
        self.read_scores(&scores)
    }
}
