//! `config.json` of a GPT-NeoX / Pythia checkpoint, accepting every key spelling transformers has written:
//! `rotary_pct`/`rotary_emb_base` (Pythia's own files), `partial_rotary_factor`/`rope_theta` (transformers >= 4.45)
//! and `rope_parameters.{partial_rotary_factor, rope_theta}` (transformers v5).

use crate::checkpoint::DType;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    /// Padded vocabulary: rows of embed_in and embed_out (50304 for most Pythia sizes).
    pub vocab_size: usize,
    pub max_positions: usize,
    pub layer_norm_eps: f32,
    pub rotary_pct: f32,
    pub rotary_base: f32,
    pub parallel_residual: bool,
    /// Dtype the checkpoint says it was saved in (`torch_dtype` / `dtype`), if any.
    pub torch_dtype: Option<DType>,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// HF: `int(head_dim * rotary_pct)`.
    pub fn rotary_ndims(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_pct as f64) as usize
    }
    pub fn attn_shape(&self) -> crate::backend::AttnShape {
        crate::backend::AttnShape {
            heads: self.num_heads,
            head_dim: self.head_dim(),
            rotary_ndims: self.rotary_ndims(),
            rotary_base: self.rotary_base,
        }
    }
    /// Weights in the model (every Linear and LayerNorm, both embeddings).
    pub fn num_params(&self) -> usize {
        let (h, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let matrices = 3 * h * h + h * h + 2 * h * f;
        self.num_layers * matrices + 2 * v * h + self.num_1d_params()
    }

    /// The 1-D parameters among them: biases (qkv 3h, dense h, fc1 f, fc2 h) and LayerNorm weights and
    /// biases (4h per layer, 2h final).
    pub fn num_1d_params(&self) -> usize {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        self.num_layers * (3 * h + h + f + h + 4 * h) + 2 * h
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::error::read_to_string(path)?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
        Self::from_json(&value).map_err(|msg| Error::file(path, msg))
    }

    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        if !v.is_object() {
            return Err("expected a JSON object with the model's hyper-parameters".into());
        }
        let rope = v.get("rope_parameters");
        let pick = |keys: &[&str]| -> Option<&Value> {
            keys.iter().find_map(|k| v.get(*k).filter(|x| !x.is_null())).or_else(|| {
                let r = rope?;
                keys.iter().find_map(|k| r.get(*k).filter(|x| !x.is_null()))
            })
        };
        let uint = |key: &str| -> std::result::Result<usize, String> {
            match v.get(key) {
                Some(x) => x
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| format!("`{key}` is {x}, expected a non-negative integer")),
                None => Err(format!("missing `{key}` (expected a GPT-NeoX config.json)")),
            }
        };
        let float = |keys: &[&str], default: Option<f64>| -> std::result::Result<f32, String> {
            match pick(keys) {
                Some(x) => x
                    .as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| format!("`{}` is {x}, expected a number", keys[0])),
                None => default.map(|d| d as f32).ok_or_else(|| format!("missing `{}`", keys.join("` or `"))),
            }
        };
        if let Some(mt) = v.get("model_type").and_then(|m| m.as_str()) {
            if mt != "gpt_neox" {
                return Err(format!("model_type is \"{mt}\", expected \"gpt_neox\" (Pythia)"));
            }
        }
        if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str()) {
            if act != "gelu" {
                return Err(format!("hidden_act is \"{act}\"; only exact \"gelu\" (every Pythia model) is supported"));
            }
        }
        if v.get("tie_word_embeddings").and_then(|t| t.as_bool()) == Some(true) {
            return Err("tie_word_embeddings is true; Pythia's embed_out is untied and lmscore expects it".into());
        }
        let torch_dtype = match v.get("torch_dtype").or_else(|| v.get("dtype")).and_then(|d| d.as_str()) {
            Some("float16") => Some(DType::F16),
            Some("bfloat16") => Some(DType::BF16),
            Some("float32") => Some(DType::F32),
            _ => None,
        };
        let cfg = ModelConfig {
            hidden_size: uint("hidden_size")?,
            num_layers: uint("num_hidden_layers")?,
            num_heads: uint("num_attention_heads")?,
            intermediate_size: uint("intermediate_size")?,
            vocab_size: uint("vocab_size")?,
            max_positions: uint("max_position_embeddings")?,
            layer_norm_eps: float(&["layer_norm_eps"], Some(1e-5))?,
            rotary_pct: float(&["rotary_pct", "partial_rotary_factor"], Some(1.0))?,
            rotary_base: float(&["rotary_emb_base", "rope_theta"], Some(10000.0))?,
            parallel_residual: v.get("use_parallel_residual").and_then(|p| p.as_bool()).unwrap_or(true),
            torch_dtype,
        };
        if cfg.hidden_size == 0 || cfg.num_heads == 0 || cfg.num_layers == 0 || cfg.vocab_size == 0 {
            return Err("hidden_size, num_attention_heads, num_hidden_layers and vocab_size must be positive".into());
        }
        if cfg.hidden_size % cfg.num_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_heads
            ));
        }
        if !(0.0..=1.0).contains(&cfg.rotary_pct) || cfg.rotary_ndims() % 2 != 0 {
            return Err(format!(
                "rotary_pct {} gives {} rotary dims of a {}-dim head; expected an even number",
                cfg.rotary_pct,
                cfg.rotary_ndims(),
                cfg.head_dim()
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pythia_70m() -> Value {
        json!({"model_type": "gpt_neox", "hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8,
               "intermediate_size": 2048, "vocab_size": 50304, "max_position_embeddings": 2048,
               "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": true,
               "hidden_act": "gelu", "tie_word_embeddings": false, "torch_dtype": "float16"})
    }

    #[test]
    fn pythia_70m_geometry_and_param_count() {
        let c = ModelConfig::from_json(&pythia_70m()).unwrap();
        assert_eq!((c.head_dim(), c.rotary_ndims()), (64, 16));
        assert_eq!(c.num_params(), 70_426_624);
        assert_eq!(c.torch_dtype, Some(DType::F16));
    }

    #[test]
    fn all_three_rotary_spellings_agree() {
        let old = ModelConfig::from_json(&pythia_70m()).unwrap();
        let mut new = pythia_70m();
        let o = new.as_object_mut().unwrap();
        o.remove("rotary_pct");
        o.remove("rotary_emb_base");
        o.insert("partial_rotary_factor".into(), json!(0.25));
        o.insert("rope_theta".into(), json!(10000.0));
        assert_eq!(ModelConfig::from_json(&new).unwrap(), old);
        let o = new.as_object_mut().unwrap();
        o.remove("partial_rotary_factor");
        o.remove("rope_theta");
        o.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "partial_rotary_factor": 0.25, "rope_theta": 10000.0}),
        );
        assert_eq!(ModelConfig::from_json(&new).unwrap(), old);
    }

    #[test]
    fn pythia_2_8b_has_80_dim_heads_with_20_rotary_dims() {
        let mut v = pythia_70m();
        v["hidden_size"] = json!(2560);
        v["num_attention_heads"] = json!(32);
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!((c.head_dim(), c.rotary_ndims()), (80, 20));
    }

    #[test]
    fn missing_and_mistyped_keys_are_named() {
        let mut v = pythia_70m();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(ModelConfig::from_json(&v).unwrap_err().contains("hidden_size"));
        let mut v = pythia_70m();
        v["num_attention_heads"] = json!("eight");
        assert!(ModelConfig::from_json(&v).unwrap_err().contains("num_attention_heads"));
        let mut v = pythia_70m();
        v["num_attention_heads"] = json!(7);
        assert!(ModelConfig::from_json(&v).unwrap_err().contains("multiple"));
    }
}
