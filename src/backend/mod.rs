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
    fn prepare(&self, layout: &BatchLayout) -> Result<Self::Layout>;

    /// table [V, h], ids [T] -> [T, h]
    fn embedding(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor>;
    /// x [T, c], w [1, c], b [1, c] -> [T, c]; mean and variance over c in f32.
    fn layernorm(&self, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// x [T, in], w [out, in] (PyTorch Linear layout), b [1, out] -> x w^T + b: [T, out]
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor, b: Option<&Self::Tensor>) -> Result<Self::Tensor>;
    /// x [T, c] += b [1, c], then exact (erf) GELU, in place.
    fn bias_gelu(&self, x: &mut Self::Tensor, b: &Self::Tensor) -> Result<()>;
    /// qkv [T, 3h] (per head: q | k | v, hd each): rotate the first rotary_ndims dims of every q and k head
    /// by the row's position, in place.
    fn rotary(&self, qkv: &mut Self::Tensor, layout: &Self::Layout, shape: AttnShape) -> Result<()>;
    /// qkv [T, 3h], past [P, 3h] (cached qkv rows of earlier batches) -> softmax(q k^T / sqrt(hd)) v: [T, h]
    fn attention(&self, qkv: &Self::Tensor, past: Option<&Self::Tensor>, layout: &Self::Layout, shape: AttnShape) -> Result<Self::Tensor>;
    /// x [T, h] += a [T, h] + b [T, h] (GPT-NeoX parallel residual). `b` may be absent.
    fn residual_add(&self, x: &mut Self::Tensor, a: &Self::Tensor, b: Option<&Self::Tensor>) -> Result<()>;
    /// x [T, c], rows [R] -> [R, c]
    fn gather_rows(&self, x: &Self::Tensor, rows: &[u32]) -> Result<Self::Tensor>;
    /// a [A, c], b [B, c] -> [A + B, c]
    fn concat_rows(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// x [R, h], w [V, h] -> f32 logits [R, V] (always f32: Pythia logits are ~1e3, f16 would lose 0.5 nat).
    fn lm_head(&self, x: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor>;
    /// logits [R, V], targets [(row, token)] -> one TokenScore per target, one pass over each row.
    fn logsoftmax_gather(&self, logits: &Self::Tensor, targets: &[(u32, u32)]) -> Result<Vec<TokenScore>>;
}
