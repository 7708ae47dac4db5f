//! GPT-NeoX (Pythia) weights on a backend, and the one forward pass, generic over the backend.

use crate::backend::{Backend, Tensor2, TokenScore};
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::Result;

pub struct Layer<B: Backend> {
    pub ln1_w: B::Tensor,
    pub ln1_b: B::Tensor,
    pub ln2_w: B::Tensor,
    pub ln2_b: B::Tensor,
    /// [3h, h], rows per head interleaved [q | k | v] (hd rows each)
    pub qkv_w: B::Tensor,
    pub qkv_b: B::Tensor,
    pub dense_w: B::Tensor,
    pub dense_b: B::Tensor,
    pub fc1_w: B::Tensor,
    pub fc1_b: B::Tensor,
    pub fc2_w: B::Tensor,
    pub fc2_b: B::Tensor,
}

pub struct Model<B: Backend> {
    pub config: ModelConfig,
    pub embed_in: B::Tensor,
    pub layers: Vec<Layer<B>>,
    pub final_ln_w: B::Tensor,
    pub final_ln_b: B::Tensor,
    /// [V, h], untied from embed_in, no bias
    pub embed_out: B::Tensor,
}

impl<B: Backend> Model<B> {
    /// Upload every weight, checking each shape against config.json. Pythia's legacy buffers
    /// (`attention.bias`, `attention.masked_bias`, `attention.rotary_emb.inv_freq`) are never read:
    /// inv_freq is recomputed in f32 by the rotary op.
    pub fn load(backend: &B, ckpt: &Checkpoint) -> Result<Self> {
        let c = &ckpt.config;
        let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        backend.check_weights_fit(c)?;
        let get = |name: &str, shape: &[usize]| -> Result<B::Tensor> { backend.upload(&ckpt.tensor_with_shape(name, shape)?) };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("gpt_neox.layers.{i}");
            layers.push(Layer {
                ln1_w: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                ln1_b: get(&format!("{p}.input_layernorm.bias"), &[h])?,
                ln2_w: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                ln2_b: get(&format!("{p}.post_attention_layernorm.bias"), &[h])?,
                qkv_w: get(&format!("{p}.attention.query_key_value.weight"), &[3 * h, h])?,
                qkv_b: get(&format!("{p}.attention.query_key_value.bias"), &[3 * h])?,
                dense_w: get(&format!("{p}.attention.dense.weight"), &[h, h])?,
                dense_b: get(&format!("{p}.attention.dense.bias"), &[h])?,
                fc1_w: get(&format!("{p}.mlp.dense_h_to_4h.weight"), &[f, h])?,
                fc1_b: get(&format!("{p}.mlp.dense_h_to_4h.bias"), &[f])?,
                fc2_w: get(&format!("{p}.mlp.dense_4h_to_h.weight"), &[h, f])?,
                fc2_b: get(&format!("{p}.mlp.dense_4h_to_h.bias"), &[h])?,
            });
        }
        Ok(Model {
            config: c.clone(),
            embed_in: get("gpt_neox.embed_in.weight", &[v, h])?,
            layers,
            final_ln_w: get("gpt_neox.final_layer_norm.weight", &[h])?,
            final_ln_b: get("gpt_neox.final_layer_norm.bias", &[h])?,
            embed_out: get("embed_out.weight", &[v, h])?,
        })
    }
}

/// Per layer, the qkv rows ([P, 3h], rotary applied) of segments that later batches still attend to.
/// Only K and V are read back; keeping whole qkv rows lets the cache be filled with a plain row gather.
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<B::Tensor>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| None).collect(),
        }
    }
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |t| t.rows())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the cache changes after a batch: the cached rows that stay (in order), then the batch rows added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheUpdate {
    pub retain: Vec<u32>,
    pub append: Vec<u32>,
}

impl CacheUpdate {
    fn is_noop(&self, past_len: usize) -> bool {
        self.append.is_empty() && self.retain.len() == past_len && self.retain.iter().enumerate().all(|(i, &r)| r as usize == i)
    }
}

/// One forward pass over a packed batch. Returns the residual stream after the last layer, [T, h]
/// (final LayerNorm not applied: `score_rows` applies it to the scored rows only).
pub fn forward<B: Backend>(
    b: &B,
    m: &Model<B>,
    tokens: &[u32],
    layout: &B::Layout,
    cache: &mut KvCache<B>,
    update: &CacheUpdate,
) -> Result<B::Tensor> {
    let c = &m.config;
    let shape = c.attn_shape();
    let eps = c.layer_norm_eps;
    let past_len = cache.len();
    let mut x = b.embedding(&m.embed_in, tokens)?; // [T, h]
    for (l, layer) in m.layers.iter().enumerate() {
        let a_in = b.layernorm(&x, &layer.ln1_w, &layer.ln1_b, eps)?; // [T, h]
        let mut qkv = b.linear(&a_in, &layer.qkv_w, Some(&layer.qkv_b))?; // [T, 3h]
        b.rotary(&mut qkv, layout, shape)?; // q, k rotated in place
        let past = cache.layers[l].take(); // [P, 3h]
        let attn = b.attention(&qkv, past.as_ref(), layout, shape)?; // [T, h]
        cache.layers[l] = update_cache(b, past, &qkv, update, past_len)?;
        let attn = b.linear(&attn, &layer.dense_w, Some(&layer.dense_b))?; // [T, h]
        if c.parallel_residual {
            // x = x + attn(ln1(x)) + mlp(ln2(x))
            let m_in = b.layernorm(&x, &layer.ln2_w, &layer.ln2_b, eps)?; // [T, h]
            let mlp = mlp(b, layer, &m_in)?; // [T, h]
            b.residual_add(&mut x, &attn, Some(&mlp))?;
        } else {
            // x = x + attn; x = x + mlp(ln2(x))
            b.residual_add(&mut x, &attn, None)?;
            let m_in = b.layernorm(&x, &layer.ln2_w, &layer.ln2_b, eps)?;
            let mlp = mlp(b, layer, &m_in)?;
            b.residual_add(&mut x, &mlp, None)?;
        }
    }
    Ok(x)
}

/// dense_4h_to_h(gelu(dense_h_to_4h(x)))
fn mlp<B: Backend>(b: &B, layer: &Layer<B>, x: &B::Tensor) -> Result<B::Tensor> {
    let mut hidden = b.linear(x, &layer.fc1_w, None)?; // [T, 4h]
    b.bias_gelu(&mut hidden, &layer.fc1_b)?;
    b.linear(&hidden, &layer.fc2_w, Some(&layer.fc2_b)) // [T, h]
}

fn update_cache<B: Backend>(b: &B, past: Option<B::Tensor>, qkv: &B::Tensor, u: &CacheUpdate, past_len: usize) -> Result<Option<B::Tensor>> {
    if u.is_noop(past_len) {
        return Ok(past);
    }
    let kept = match &past {
        Some(p) if !u.retain.is_empty() => Some(b.gather_rows(p, &u.retain)?),
        _ => None,
    };
    let added = if u.append.is_empty() {
        None
    } else {
        Some(b.gather_rows(qkv, &u.append)?)
    };
    Ok(match (kept, added) {
        (Some(k), Some(a)) => Some(b.concat_rows(&k, &a)?),
        (k, a) => k.or(a),
    })
}

/// Rows scored per LM-head call: bounds the f32 logits buffer to ROW_CHUNK x V
/// (512 x 50688 x 4 B = 104 MB for pythia-12b).
pub const LOGIT_CHUNK_ROWS: usize = 512;

/// Score `targets` = (row of `hidden`, target token): final LayerNorm, LM head and the fused
/// log-softmax gather on the distinct rows only, in chunks. Several targets may share a row.
pub fn score_rows<B: Backend>(b: &B, m: &Model<B>, hidden: &B::Tensor, targets: &[(u32, u32)]) -> Result<Vec<TokenScore>> {
    let mut rows: Vec<u32> = targets.iter().map(|t| t.0).collect();
    rows.sort_unstable();
    rows.dedup();
    let mut out = vec![
        TokenScore {
            logprob: 0.0,
            is_greedy: false
        };
        targets.len()
    ];
    for chunk in rows.chunks(LOGIT_CHUNK_ROWS) {
        let x = b.gather_rows(hidden, chunk)?; // [R, h]
        let x = b.layernorm(&x, &m.final_ln_w, &m.final_ln_b, m.config.layer_norm_eps)?;
        let logits = b.lm_head(&x, &m.embed_out)?; // [R, V] f32
        let (lo, hi) = (chunk[0], *chunk.last().unwrap());
        let (idx, local): (Vec<usize>, Vec<(u32, u32)>) = targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.0 >= lo && t.0 <= hi)
            .map(|(i, t)| (i, (chunk.binary_search(&t.0).unwrap() as u32, t.1)))
            .unzip();
        for (i, s) in idx.into_iter().zip(b.logsoftmax_gather(&logits, &local)?) {
            out[i] = s;
        }
    }
    Ok(out)
}
