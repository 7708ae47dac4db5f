//! A Hugging Face model directory: `config.json`, the weights (single or sharded safetensors, or PyTorch
//! `pytorch_model.bin` pickles as Pythia's `stepN` revisions hold), and `tokenizer.json`.
//!
//! Tensors are read lazily by name from memory-mapped files (safetensors and `.bin` alike: torch stores
//! each storage uncompressed, so a tensor is a byte range of the file). Headers and pickles are validated
//! when the checkpoint is opened, so a truncated or corrupt file is reported then, naming the file.

mod pickle;
mod tensor;

pub use pickle::load_state_dict as load_pickle_state_dict;
pub use tensor::{DType, HostTensor};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One memory-mapped weights file and where each of its tensors lies in it.
struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    tensors: HashMap<String, pickle::TensorEntry>,
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    shards: Vec<Shard>,
    /// tensor name -> index into `shards`
    index: HashMap<String, usize>,
}

const WEIGHT_FILES: &str = "model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json";

impl Checkpoint {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::file(
                &dir,
                "model directory not found (expected a Hugging Face model directory with config.json)",
            ));
        }
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::file(&config_path, "missing: every model directory needs config.json"));
        }
        let config = ModelConfig::from_file(&config_path)?;
        let files = weight_files(&dir)?;
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for file in files {
            let shard = open_shard(&file)?;
            for name in shard.tensors.keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(shard);
        }
        Ok(Checkpoint { dir, config, shards, index })
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Every tensor name the checkpoint holds, in no particular order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Dtype the weights are stored in (that of `gpt_neox.embed_in.weight`).
    pub fn stored_dtype(&self) -> Result<DType> {
        Ok(self.tensor("gpt_neox.embed_in.weight")?.dtype)
    }

    /// Read one tensor and check its shape.
    pub fn tensor_with_shape(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.tensor(name)?;
        if t.shape != shape {
            return Err(Error::tensor(
                name,
                format!("has shape {:?}, expected {:?} from config.json", t.shape, shape),
            ));
        }
        match t.dtype {
            DType::F16 | DType::BF16 | DType::F32 => Ok(t),
            other => Err(Error::tensor(name, format!("has dtype {}, expected F16, BF16 or F32", other.name()))),
        }
    }

    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let &i = self.index.get(name).ok_or_else(|| {
            Error::tensor(
                name,
                format!(
                    "missing from the checkpoint in {} (is this a GPT-NeoX / Pythia model?)",
                    self.dir.display()
                ),
            )
        })?;
        let shard = &self.shards[i];
        let entry = &shard.tensors[name];
        if entry.dtype == DType::Other {
            return Err(Error::tensor(
                name,
                format!("in {} has a dtype lmscore cannot read (expected F16, BF16 or F32)", shard.path.display()),
            ));
        }
        Ok(entry.read(&shard.map))
    }
}

/// The weight files of a model directory, in shard order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    for index_name in ["model.safetensors.index.json", "pytorch_model.bin.index.json"] {
        let index = dir.join(index_name);
        if index.exists() {
            return shard_files(&index);
        }
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.exists() {
        return Ok(vec![bin]);
    }
    Err(Error::file(dir, format!("no weights found: expected {WEIGHT_FILES}")))
}

/// Files named by a sharded checkpoint's `weight_map`, each once, in first-seen order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = crate::error::read_to_string(index)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(index, "expected an object `weight_map` of tensor name -> shard file"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| Error::file(index, format!("weight_map[{tensor}] is not a file name")))?;
        if file.contains('/') || file.contains("..") {
            return Err(Error::file(
                index,
                format!("weight_map[{tensor}] = {file:?} points outside the model directory"),
            ));
        }
        let path = dir.join(file);
        if !path.exists() {
            return Err(Error::file(&path, format!("missing: named as a shard by {}", index.display())));
        }
        if !files.contains(&path) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::file(index, "weight_map is empty"));
    }
    Ok(files)
}

/// Memory-map a weights file and index its tensors: safetensors by its header, `.bin` by its pickle.
/// Truncated or corrupt files are reported here, naming the file.
fn open_shard(path: &Path) -> Result<Shard> {
    let file = crate::error::open_regular(path)?;
    // SAFETY: the file is opened read-only and not modified while lmscore runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let entries = if path.extension().is_some_and(|e| e == "safetensors") {
        index_safetensors(path, &map)?
    } else {
        pickle::index_state_dict(path, &map)?
    };
    let tensors = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
    Ok(Shard {
        path: path.to_path_buf(),
        map,
        tensors,
    })
}

fn index_safetensors(path: &Path, bytes: &[u8]) -> Result<Vec<pickle::TensorEntry>> {
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file ({e}); is it truncated or corrupt?")))?;
    let data_start = 8 + header_len;
    Ok(meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let dtype = match info.dtype {
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::U8 => DType::U8,
                _ => DType::Other,
            };
            let (start, end) = (data_start + info.data_offsets.0, data_start + info.data_offsets.1);
            pickle::TensorEntry {
                name,
                dtype,
                shape: info.shape.clone(),
                start,
                end,
                swap: 1,
            }
        })
        .collect())
}
