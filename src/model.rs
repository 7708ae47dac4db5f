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
        let lm_head = check_tensor_names(ckpt)?;
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
            embed_out: get(lm_head, &[v, h])?,
        })
    }
}

/// The names transformers gives the LM head: `embed_out.weight` in every Pythia file, `lm_head.weight` in
/// files transformers 5 writes.
const LM_HEAD_NAMES: [&str; 2] = ["embed_out.weight", "lm_head.weight"];

/// Buffers older transformers saved beside the weights; never read (inv_freq is recomputed in f32).
const LEGACY_BUFFERS: [&str; 3] = ["attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq"];

/// Check that config.json and the checkpoint describe the same model before anything is read: exactly
/// `num_hidden_layers` layers, and no tensor left over (a config saying 1 layer on a 2-layer checkpoint
/// would otherwise score a different model without a word). Returns the LM head's name.
fn check_tensor_names(ckpt: &Checkpoint) -> Result<&'static str> {
    let layers = ckpt.config.num_layers;
    let mut unused = Vec::new();
    let mut layers_present = 0usize;
    for name in ckpt.tensor_names() {
        let known = match name.strip_prefix("gpt_neox.layers.") {
            Some(rest) => {
                let (index, param) = rest.split_once('.').unwrap_or((rest, ""));
                match index.parse::<usize>() {
                    Ok(i) if index == i.to_string() => {
                        layers_present = layers_present.max(i.saturating_add(1));
                        i < layers && (LAYER_PARAMS.contains(&param) || LEGACY_BUFFERS.contains(&param))
                    }
                    _ => false,
                }
            }
            None => GLOBAL_PARAMS.contains(&name) || LM_HEAD_NAMES.contains(&name),
        };
        if !known {
            unused.push(name);
        }
    }
    if layers_present != layers {
        return Err(crate::Error::file(
            ckpt.dir.join("config.json"),
            format!("num_hidden_layers is {layers}, but the checkpoint's weights hold {layers_present} layers"),
        ));
    }
    if !unused.is_empty() {
        unused.sort_unstable();
        let shown: Vec<&str> = unused.iter().take(5).copied().collect();
        let more = if unused.len() > 5 {
            format!(" and {} more", unused.len() - 5)
        } else {
            String::new()
        };
        return Err(crate::Error::file(
            &ckpt.dir,
            format!(
                "{} tensors of the checkpoint are not part of a GPT-NeoX model as config.json describes it: `{}`{more}",
                unused.len(),
                shown.join("`, `")
            ),
        ));
    }
    match LM_HEAD_NAMES.iter().copied().filter(|n| ckpt.contains(n)).collect::<Vec<_>>()[..] {
        [name] => Ok(name),
        [] => Err(crate::Error::tensor(
            "embed_out.weight",
            format!("missing from the checkpoint in {} (nor is there an `lm_head.weight`)", ckpt.dir.display()),
        )),
        _ => Err(crate::Error::file(
            &ckpt.dir,
            "the checkpoint holds both `embed_out.weight` and `lm_head.weight`: which one is the LM head is ambiguous",
        )),
    }
}

const LAYER_PARAMS: [&str; 12] = [
    "input_layernorm.weight",
    "input_layernorm.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "attention.query_key_value.weight",
    "attention.query_key_value.bias",
    "attention.dense.weight",
    "attention.dense.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight",
    "mlp.dense_4h_to_h.bias",
];

const GLOBAL_PARAMS: [&str; 3] = [
    "gpt_neox.embed_in.weight",
    "gpt_neox.final_layer_norm.weight",
    "gpt_neox.final_layer_norm.bias",
];

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
    forward_inspected(b, m, tokens, layout, cache, update, &mut |_, _| Ok(()))
}

/// Where in the forward pass an inspected residual stream comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Embedding,
    /// The residual stream after layer `i` (0-based).
    Layer(usize),
}

/// [`forward`], handing the residual stream to `inspect` after the embedding and after every layer
/// (used to find where non-finite values first appear).
pub fn forward_inspected<B: Backend>(
    b: &B,
    m: &Model<B>,
    tokens: &[u32],
    layout: &B::Layout,
    cache: &mut KvCache<B>,
    update: &CacheUpdate,
    inspect: &mut dyn FnMut(Stage, &B::Tensor) -> Result<()>,
) -> Result<B::Tensor> {
    let c = &m.config;
    let shape = c.attn_shape();
    let eps = c.layer_norm_eps;
    let past_len = cache.len();
    let mut x = b.embedding(&m.embed_in, tokens)?; // [T, h]
    inspect(Stage::Embedding, &x)?;
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
        inspect(Stage::Layer(l), &x)?;
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
