//! Seeded random inputs for tests and benches: a tiny RNG, random models of any geometry on any backend,
//! and random token sequences. Not used by the engine itself.

use crate::backend::Backend;
use crate::checkpoint::HostTensor;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::{Layer, Model};

/// xorshift64*: deterministic, a few lines, no dependency. Failures print the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    /// `n` token ids below `vocab`.
    pub fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n).map(|_| self.below(vocab) as u32).collect()
    }
}

/// A GPT-NeoX geometry like Pythia's (rotary 25%, parallel residual, d_ff = 4h).
pub fn pythia_like(hidden: usize, layers: usize, heads: usize, vocab: usize, max_positions: usize) -> ModelConfig {
    ModelConfig {
        hidden_size: hidden,
        num_layers: layers,
        num_heads: heads,
        intermediate_size: 4 * hidden,
        vocab_size: vocab,
        max_positions,
        layer_norm_eps: 1e-5,
        rotary_pct: 0.25,
        rotary_base: 10000.0,
        parallel_residual: true,
        torch_dtype: None,
    }
}

/// Random weights uploaded to `backend`. Scales keep activations O(1) and make q/k biases large like Pythia's.
pub fn random_model<B: Backend>(backend: &B, config: &ModelConfig, seed: u64) -> Result<Model<B>> {
    let mut r = Rng(seed);
    let (h, f, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let w_scale = 1.0 / (h as f32).sqrt();
    let mut t = |rows: usize, cols: usize, scale: f32| -> Result<B::Tensor> {
        let shape = if rows == 1 { vec![cols] } else { vec![rows, cols] };
        backend.upload(&HostTensor::from_f32("random", shape, &r.values(rows * cols, scale)))
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for _ in 0..config.num_layers {
        layers.push(Layer {
            ln1_w: t(1, h, 1.0)?,
            ln1_b: t(1, h, 0.2)?,
            ln2_w: t(1, h, 1.0)?,
            ln2_b: t(1, h, 0.2)?,
            qkv_w: t(3 * h, h, 2.0 * w_scale)?,
            qkv_b: t(1, 3 * h, 2.0)?,
            dense_w: t(h, h, 2.0 * w_scale)?,
            dense_b: t(1, h, 0.1)?,
            fc1_w: t(f, h, 2.0 * w_scale)?,
            fc1_b: t(1, f, 0.1)?,
            fc2_w: t(h, f, 2.0 / (f as f32).sqrt())?,
            fc2_b: t(1, h, 0.1)?,
        });
    }
    Ok(Model {
        config: config.clone(),
        embed_in: t(v, h, 1.0)?,
        layers,
        final_ln_w: t(1, h, 1.0)?,
        final_ln_b: t(1, h, 0.1)?,
        embed_out: t(v, h, 3.0 * w_scale)?,
    })
}
