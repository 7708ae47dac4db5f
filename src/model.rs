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
    /// inv_freq is recomputed in f32 by `qkv_rotary`.
    pub fn load(backend: &B, ckpt: &Checkpoint) -> Result<Self> {
        let c = &ckpt.config;
        let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let lm_head = check_tensor_names(ckpt)?;
        backend.check_weights_fit(c)?;
        let get = |name: &str, shape: &[usize]| -> Result<B::Tensor> { backend.upload(&ckpt.tensor_with_shape(name, shape)?) };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let tensors = layer_params(h, f)
                .iter()
                .map(|(name, shape)| get(&format!("gpt_neox.layers.{i}.{name}"), shape))
                .collect::<Result<Vec<_>>>()?;
            let mut tensors = tensors.into_iter();
            let mut next = || tensors.next().expect("one tensor per layer_params entry");
            layers.push(Layer {
                ln1_w: next(),
                ln1_b: next(),
                ln2_w: next(),
                ln2_b: next(),
                qkv_w: next(),
                qkv_b: next(),
                dense_w: next(),
                dense_b: next(),
                fc1_w: next(),
                fc1_b: next(),
                fc2_w: next(),
                fc2_b: next(),
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
    let layer_param_names = layer_params(0, 0).map(|(name, _)| name);
    for name in ckpt.tensor_names() {
        let known = match name.strip_prefix("gpt_neox.layers.") {
            Some(rest) => {
                let (index, param) = rest.split_once('.').unwrap_or((rest, ""));
                match index.parse::<usize>() {
                    Ok(i) if index == i.to_string() => {
                        layers_present = layers_present.max(i.saturating_add(1));
                        i < layers && (layer_param_names.contains(&param) || LEGACY_BUFFERS.contains(&param))
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

/// Every tensor of a layer, in `Layer`'s field order: its name under `gpt_neox.layers.{i}.` and its shape for
/// hidden size h and MLP width f.
fn layer_params(h: usize, f: usize) -> [(&'static str, Vec<usize>); 12] {
    [
        ("input_layernorm.weight", vec![h]),
        ("input_layernorm.bias", vec![h]),
        ("post_attention_layernorm.weight", vec![h]),
        ("post_attention_layernorm.bias", vec![h]),
        ("attention.query_key_value.weight", vec![3 * h, h]),
        ("attention.query_key_value.bias", vec![3 * h]),
        ("attention.dense.weight", vec![h, h]),
        ("attention.dense.bias", vec![h]),
        ("mlp.dense_h_to_4h.weight", vec![f, h]),
        ("mlp.dense_h_to_4h.bias", vec![f]),
        ("mlp.dense_4h_to_h.weight", vec![h, f]),
        ("mlp.dense_4h_to_h.bias", vec![h]),
    ]
}

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

/// Rows scored per LM-head call: bounds the f32 logits buffer to ROW_CHUNK x V
/// (512 x 50688 x 4 B = 104 MB for pythia-12b).
pub const LOGIT_CHUNK_ROWS: usize = 512;

/// One packed batch's index tables on the backend, all uploaded by one `Backend::prepare` (on CUDA: one
/// copy): the attention layout, the token ids, the cache's retained and appended rows, and per LM-head
/// chunk its distinct scored rows and its (chunk row, token) targets.
pub struct BatchInputs<B: Backend> {
    pub layout: B::Layout,
    tokens: B::Index,
    /// `None` when the cache stays as it is.
    cache: Option<CacheTables<B>>,
    chunks: Vec<ScoreChunk<B>>,
    /// Score slot i (chunk by chunk) holds the score of target `slots[i]` (its index in the caller's order).
    slots: Vec<usize>,
    past_len: usize,
}

struct CacheTables<B: Backend> {
    retain: Option<B::Index>,
    append: Option<B::Index>,
}

struct ScoreChunk<B: Backend> {
    /// [R] rows of the batch's hidden states.
    rows: B::Index,
    /// [N x 2] (row within `rows`, target token).
    targets: B::Index,
    /// N
    len: usize,
}

impl<B: Backend> BatchInputs<B> {
    /// Plan the batch's tables on the host and upload them together. `targets` are (batch row, token);
    /// several may share a row. `past_len` is the number of rows the K/V cache holds before the batch.
    pub fn new(b: &B, tokens: &[u32], layout: &crate::backend::BatchLayout, update: &CacheUpdate, targets: &[(u32, u32)]) -> Result<Self> {
        let past_len = layout.past_len;
        let mut rows: Vec<u32> = targets.iter().map(|t| t.0).collect();
        rows.sort_unstable();
        rows.dedup();
        let mut slots = Vec::with_capacity(targets.len());
        let mut chunk_tables: Vec<(Vec<u32>, Vec<u32>)> = vec![];
        for chunk in rows.chunks(LOGIT_CHUNK_ROWS) {
            let (lo, hi) = (chunk[0], *chunk.last().unwrap_or(&chunk[0]));
            let mut pairs = vec![];
            for (i, t) in targets.iter().enumerate().filter(|(_, t)| t.0 >= lo && t.0 <= hi) {
                let local = chunk.binary_search(&t.0).unwrap_or_default() as u32;
                pairs.extend([local, t.1]);
                slots.push(i);
            }
            chunk_tables.push((chunk.to_vec(), pairs));
        }
        let noop = update.is_noop(past_len);
        let mut tables: Vec<&[u32]> = vec![tokens];
        if !noop {
            tables.extend([update.retain.as_slice(), update.append.as_slice()]);
        }
        for (r, t) in &chunk_tables {
            tables.extend([r.as_slice(), t.as_slice()]);
        }
        let (layout, indices) = b.prepare(layout, &tables)?;
        let mut indices = indices.into_iter();
        let mut next = || {
            indices
                .next()
                .ok_or_else(|| crate::error::Error::invalid("prepare returned too few index tables"))
        };
        let tokens = next()?;
        let cache = if noop {
            None
        } else {
            let (retain, append) = (next()?, next()?);
            Some(CacheTables {
                retain: (!update.retain.is_empty()).then_some(retain),
                append: (!update.append.is_empty()).then_some(append),
            })
        };
        let mut chunks = Vec::with_capacity(chunk_tables.len());
        for (_, pairs) in &chunk_tables {
            chunks.push(ScoreChunk {
                rows: next()?,
                targets: next()?,
                len: pairs.len() / 2,
            });
        }
        Ok(BatchInputs {
            layout,
            tokens,
            cache,
            chunks,
            slots,
            past_len,
        })
    }
}

/// One forward pass over a packed batch. Returns the residual stream after the last layer, [T, h]
/// (final LayerNorm not applied: `score_rows` applies it to the scored rows only).
pub fn forward<B: Backend>(b: &B, m: &Model<B>, batch: &BatchInputs<B>, cache: &mut KvCache<B>) -> Result<B::Tensor> {
    forward_inspected(b, m, batch, cache, &mut |_, _| Ok(()))
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
    batch: &BatchInputs<B>,
    cache: &mut KvCache<B>,
    inspect: &mut dyn FnMut(Stage, &B::Tensor) -> Result<()>,
) -> Result<B::Tensor> {
    let c = &m.config;
    let shape = c.attn_shape();
    let eps = c.layer_norm_eps;
    if cache.len() != batch.past_len {
        return Err(crate::error::Error::invalid(format!(
            "forward: the batch expects {} cached rows, the cache holds {}",
            batch.past_len,
            cache.len()
        )));
    }
    let layout = &batch.layout;
    let mut x = b.embedding(&m.embed_in, &batch.tokens)?; // [T, h] f32, the residual stream
    inspect(Stage::Embedding, &x)?;
    for (l, layer) in m.layers.iter().enumerate() {
        // Parallel residual, x + attn(ln1(x)) + mlp(ln2(x)): both norms from one read of x, which then
        // holds x + both output biases, so the two output projections accumulate straight into it.
        let (a_in, m_in) = if c.parallel_residual {
            let ln1 = (&layer.ln1_w, &layer.ln1_b);
            let (a, m) = b.parallel_norms(&mut x, ln1, (&layer.ln2_w, &layer.ln2_b), eps, (&layer.dense_b, &layer.fc2_b))?;
            (a, Some(m)) // [T, h] each
        } else {
            (b.layernorm(&x, &layer.ln1_w, &layer.ln1_b, eps)?, None)
        };
        let qkv = b.qkv_rotary(&a_in, &layer.qkv_w, &layer.qkv_b, layout, shape)?; // [T, 3h], q and k rotated
        let past = cache.layers[l].take(); // [P, 3h]
        let attn = b.attention(&qkv, past.as_ref(), layout, shape)?; // [T, h]
        cache.layers[l] = update_cache(b, past, &qkv, batch.cache.as_ref())?;
        if let Some(m_in) = m_in {
            b.linear_accumulate(&mut x, &attn, &layer.dense_w)?; // x += attn dense_w^T
            b.linear_accumulate(&mut x, &mlp_hidden(b, layer, &m_in)?, &layer.fc2_w)?;
        // x += gelu(..) fc2_w^T
        } else {
            // x = x + attn; x = x + mlp(ln2(x))
            let attn = b.linear(&attn, &layer.dense_w, Some(&layer.dense_b))?; // [T, h]
            b.residual_add(&mut x, &attn, None)?;
            let m_in = b.layernorm(&x, &layer.ln2_w, &layer.ln2_b, eps)?;
            let mlp = b.linear(&mlp_hidden(b, layer, &m_in)?, &layer.fc2_w, Some(&layer.fc2_b))?;
            b.residual_add(&mut x, &mlp, None)?;
        }
        inspect(Stage::Layer(l), &x)?;
    }
    Ok(x)
}

/// gelu(dense_h_to_4h(x)): [T, 4h]
fn mlp_hidden<B: Backend>(b: &B, layer: &Layer<B>, x: &B::Tensor) -> Result<B::Tensor> {
    let mut hidden = b.linear(x, &layer.fc1_w, None)?;
    b.bias_gelu(&mut hidden, &layer.fc1_b)?;
    Ok(hidden)
}

/// The cache after this batch: its retained rows, then the batch's appended qkv rows ([P', 3h]).
fn update_cache<B: Backend>(b: &B, past: Option<B::Tensor>, qkv: &B::Tensor, u: Option<&CacheTables<B>>) -> Result<Option<B::Tensor>> {
    let Some(u) = u else {
        return Ok(past);
    };
    let kept = match (&past, &u.retain) {
        (Some(p), Some(rows)) => Some(b.gather_rows(p, rows)?),
        _ => None,
    };
    let added = match &u.append {
        Some(rows) => Some(b.gather_rows(qkv, rows)?),
        None => None,
    };
    Ok(match (kept, added) {
        (Some(k), Some(a)) => Some(b.concat_rows(&k, &a)?),
        (k, a) => k.or(a),
    })
}

/// Score the batch's targets from `hidden` [T, h]: final LayerNorm, LM head and the fused log-softmax
/// gather on the distinct scored rows only, LOGIT_CHUNK_ROWS at a time, the scores staying on the backend
/// until one read-back at the end. Returned in the order of `BatchInputs::new`'s targets.
pub fn score_rows<B: Backend>(b: &B, m: &Model<B>, hidden: &B::Tensor, batch: &BatchInputs<B>) -> Result<Vec<TokenScore>> {
    let mut scores = b.new_scores(batch.slots.len())?;
    let mut at = 0;
    for chunk in &batch.chunks {
        let x = b.gather_rows(hidden, &chunk.rows)?; // [R, h]
        let x = b.layernorm(&x, &m.final_ln_w, &m.final_ln_b, m.config.layer_norm_eps)?;
        let logits = b.lm_head(&x, &m.embed_out)?; // [R, V] f32
        b.logsoftmax_gather(&logits, &chunk.targets, &mut scores, at)?;
        at += chunk.len;
    }
    let by_slot = b.read_scores(&scores)?;
    let mut out = by_slot.clone();
    for (slot, &target) in batch.slots.iter().enumerate() {
        out[target] = by_slot[slot];
    }
    Ok(out)
}
