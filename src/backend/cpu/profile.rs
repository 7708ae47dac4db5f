//! Wall time per CPU op, for `lmscore bench`'s breakdown of where scoring time goes. Off unless a bench
//! turns it on: then each op costs one `Instant::now()` pair, nothing when off but one relaxed load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Embedding,
    LayerNorm,
    /// Every body matrix product (qkv, dense, fc1, fc2) with its bias.
    Linear,
    BiasGelu,
    QkvRotary,
    Attention,
    ResidualAdd,
    /// gather_rows and concat_rows (K/V cache upkeep, scored-row selection).
    Rows,
    LmHead,
    LogSoftmax,
}

pub const OPS: [Op; 10] = [
    Op::Embedding,
    Op::LayerNorm,
    Op::Linear,
    Op::BiasGelu,
    Op::QkvRotary,
    Op::Attention,
    Op::ResidualAdd,
    Op::Rows,
    Op::LmHead,
    Op::LogSoftmax,
];

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Embedding => "embedding",
            Op::LayerNorm => "layernorm",
            Op::Linear => "linear (qkv, dense, fc1, fc2)",
            Op::BiasGelu => "bias + GELU",
            Op::QkvRotary => "qkv_rotary",
            Op::Attention => "attention",
            Op::ResidualAdd => "residual add",
            Op::Rows => "row gather / concat",
            Op::LmHead => "LM head GEMM",
            Op::LogSoftmax => "log-softmax gather",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; OPS.len()] = [const { AtomicU64::new(0) }; OPS.len()];

/// Start (or stop) recording; starting clears what was recorded.
pub fn enable(on: bool) {
    if on {
        NANOS.iter().for_each(|n| n.store(0, Ordering::Relaxed));
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// Seconds recorded per op since `enable(true)`.
pub fn seconds() -> Vec<(Op, f64)> {
    OPS.iter()
        .map(|&op| (op, NANOS[op as usize].load(Ordering::Relaxed) as f64 * 1e-9))
        .collect()
}

/// Times the op until dropped (when recording).
pub struct Scope(Option<(Op, Instant)>);

pub fn scope(op: Op) -> Scope {
    Scope(ENABLED.load(Ordering::Relaxed).then(|| (op, Instant::now())))
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((op, start)) = self.0 {
            NANOS[op as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}
