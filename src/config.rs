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
        // A value shown in a message: at most 80 characters of its JSON (a config may hold anything).
        fn shown(x: &Value) -> String {
            let s = x.to_string();
            match s.char_indices().nth(80) {
                Some((cut, _)) => format!("{}...", &s[..cut]),
                None => s,
            }
        }
        let rope = v.get("rope_parameters");
        let pick = |keys: &[&str]| -> Option<&Value> {
            keys.iter().find_map(|k| v.get(*k).filter(|x| !x.is_null())).or_else(|| {
                let r = rope?;
                keys.iter().find_map(|k| r.get(*k).filter(|x| !x.is_null()))
            })
        };
        let uint = |key: &str, max: u64| -> std::result::Result<usize, String> {
            match v.get(key) {
                Some(x) => match x.as_u64() {
                    Some(n) if n <= max => Ok(n as usize),
                    Some(n) => Err(format!("`{key}` is {n}, beyond any GPT-NeoX model (at most {max})")),
                    None => Err(format!("`{key}` is {}, expected a non-negative integer", shown(x))),
                },
                None => Err(format!("missing `{key}` (expected a GPT-NeoX config.json)")),
            }
        };
        // transformers' GPTNeoXConfig defaults for keys a config may leave out.
        let float = |keys: &[&str], default: f64| -> std::result::Result<f32, String> {
            match pick(keys) {
                Some(x) => match x.as_f64() {
                    Some(f) if f.is_finite() && (f as f32).is_finite() => Ok(f as f32),
                    _ => Err(format!("`{}` is {}, expected a finite number", keys[0], shown(x))),
                },
                None => Ok(default as f32),
            }
        };
        let boolean = |key: &str, default: bool| -> std::result::Result<bool, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(x) => Err(format!("`{key}` is {}, expected true or false (a JSON boolean, not a string)", shown(x))),
            }
        };
        let string = |key: &str| -> std::result::Result<Option<&str>, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(x) => Err(format!("`{key}` is {}, expected a string", shown(x))),
            }
        };
        if let Some(mt) = string("model_type")? {
            if mt != "gpt_neox" {
                return Err(format!("model_type is {}, expected \"gpt_neox\" (Pythia)", shown(&Value::from(mt))));
            }
        }
        if let Some(act) = string("hidden_act")? {
            if act != "gelu" {
                return Err(format!(
                    "hidden_act is {}; only exact \"gelu\" (every Pythia model) is supported",
                    shown(&Value::from(act))
                ));
            }
        }
        if boolean("tie_word_embeddings", false)? {
            return Err("tie_word_embeddings is true; Pythia's embed_out is untied and lmscore expects it".into());
        }
        if !boolean("attention_bias", true)? {
            return Err("attention_bias is false; every Pythia model has attention biases and lmscore expects them".into());
        }
        if v.get("rope_scaling").is_some_and(|r| !r.is_null()) {
            return Err("rope_scaling is set; Pythia uses plain rotary embeddings and lmscore supports only those".into());
        }
        if let Some(kind) = rope.and_then(|r| r.get("rope_type")).filter(|k| !k.is_null()) {
            if kind.as_str() != Some("default") {
                return Err(format!("rope_parameters.rope_type is {}; only \"default\" is supported", shown(kind)));
            }
        }
        let torch_dtype = match string("torch_dtype")?.or(string("dtype")?) {
            Some("float16") => Some(DType::F16),
            Some("bfloat16") => Some(DType::BF16),
            Some("float32") => Some(DType::F32),
            _ => None,
        };
        // Upper bounds far beyond any GPT-NeoX model; with them every size product below fits in 64 bits.
        let cfg = ModelConfig {
            hidden_size: uint("hidden_size", 1 << 20)?,
            num_layers: uint("num_hidden_layers", 1 << 12)?,
            num_heads: uint("num_attention_heads", 1 << 12)?,
            intermediate_size: uint("intermediate_size", 1 << 22)?,
            vocab_size: uint("vocab_size", 1 << 24)?,
            max_positions: match v.get("max_position_embeddings") {
                None => 2048,
                Some(_) => uint("max_position_embeddings", 1 << 24)?,
            },
            layer_norm_eps: float(&["layer_norm_eps"], 1e-5)?,
            rotary_pct: float(&["rotary_pct", "partial_rotary_factor"], 0.25)?,
            rotary_base: float(&["rotary_emb_base", "rope_theta"], 10000.0)?,
            parallel_residual: boolean("use_parallel_residual", true)?,
            torch_dtype,
        };
        if cfg.hidden_size == 0 || cfg.num_heads == 0 || cfg.num_layers == 0 || cfg.vocab_size == 0 || cfg.intermediate_size == 0 {
            return Err("hidden_size, intermediate_size, num_attention_heads, num_hidden_layers and vocab_size must be positive".into());
        }
        if cfg.max_positions == 0 {
            return Err("max_position_embeddings must be positive".into());
        }
        if cfg.hidden_size % cfg.num_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_heads
            ));
        }
        // Each of these would turn every score into NaN (or a silently different model).
        if cfg.layer_norm_eps <= 0.0 {
            return Err(format!("layer_norm_eps is {}, expected a positive number", cfg.layer_norm_eps));
        }
        if cfg.rotary_base <= 0.0 {
            return Err(format!("rotary_emb_base (rope_theta) is {}, expected a positive number", cfg.rotary_base));
        }
        if !(cfg.rotary_pct > 0.0 && cfg.rotary_pct <= 1.0) || cfg.rotary_ndims() == 0 || cfg.rotary_ndims() % 2 != 0 {
            return Err(format!(
                "rotary_pct {} gives {} rotary dims of a {}-dim head; expected 0 < rotary_pct <= 1 and an even, positive number of dims",
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
    #[test]
    fn missing_keys_take_transformers_defaults() {
        let mut v = pythia_70m();
        for k in [
            "rotary_pct",
            "rotary_emb_base",
            "layer_norm_eps",
            "use_parallel_residual",
            "max_position_embeddings",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        let c = ModelConfig::from_json(&v).unwrap();
        // GPTNeoXConfig(): rotary_pct 0.25 (not 1.0), base 10000, eps 1e-5, parallel residual, 2048 positions.
        assert_eq!(
            (c.rotary_pct, c.rotary_base, c.layer_norm_eps, c.parallel_residual, c.max_positions),
            (0.25, 10000.0, 1e-5, true, 2048)
        );
    }

    #[test]
    fn values_that_would_change_or_break_the_model_are_refused() {
        let cases: &[(&str, Value, &str)] = &[
            ("use_parallel_residual", json!("false"), "use_parallel_residual"),
            ("tie_word_embeddings", json!("false"), "tie_word_embeddings"),
            ("layer_norm_eps", json!(-1e-5), "layer_norm_eps"),
            ("layer_norm_eps", json!(0.0), "layer_norm_eps"),
            ("layer_norm_eps", json!("1e-5"), "layer_norm_eps"),
            ("rotary_emb_base", json!(0), "rotary_emb_base"),
            ("rotary_emb_base", json!(-10000), "rotary_emb_base"),
            ("rotary_emb_base", json!(1e300), "rotary_emb_base"),
            ("rotary_pct", json!(0.0), "rotary_pct"),
            ("rotary_pct", json!(1.5), "rotary_pct"),
            ("rotary_pct", json!(0.3), "rotary_pct"), // 19.2 -> 19 dims: odd
            ("num_hidden_layers", json!(1_000_000_000_000u64), "num_hidden_layers"),
            ("num_hidden_layers", json!(9_223_372_036_854_775_808u64), "num_hidden_layers"),
            ("max_position_embeddings", json!(u64::MAX), "max_position_embeddings"),
            ("max_position_embeddings", json!(0), "max_position_embeddings"),
            ("hidden_size", json!(-512), "hidden_size"),
            ("attention_bias", json!(false), "attention_bias"),
            ("rope_scaling", json!({"type": "linear", "factor": 2.0}), "rope_scaling"),
            ("model_type", json!(7), "model_type"),
        ];
        for (key, value, named) in cases {
            let mut v = pythia_70m();
            v[*key] = value.clone();
            let err = ModelConfig::from_json(&v).expect_err(&format!("{key} = {value} accepted"));
            assert!(err.contains(named), "{key} = {value}: {err}");
        }
    }

    #[test]
    fn a_huge_value_is_shown_shortened() {
        let mut v = pythia_70m();
        v["use_parallel_residual"] = json!("x".repeat(1_000_000));
        let err = ModelConfig::from_json(&v).unwrap_err();
        assert!(err.len() < 300, "{} bytes", err.len());
    }
}
