//! A Hugging Face model directory: `config.json`, the weights (single or sharded safetensors, or PyTorch
//! `pytorch_model.bin` pickles as Pythia's `stepN` revisions hold), and `tokenizer.json`.
//!
//! Tensors are read lazily by name from memory-mapped files (safetensors and `.bin` alike: torch stores
//! each storage uncompressed, so a tensor is a byte range of the file). Headers and pickles are validated
//! when the checkpoint is opened, so a truncated or corrupt file is reported then, naming the file; a `.bin`
//! storage's CRC-32 is checked when it is first read, before any of its bytes is used.
//!
//! Every tensor must be listed once: twice in one safetensors header or state dict, in two shards, or in a
//! shard other than the one a sharded index assigns it to is an error (a reader would pick one silently).

mod pickle;
mod tensor;

pub use pickle::load_state_dict as load_pickle_state_dict;
pub use tensor::{DType, HostTensor};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `s`, cut to a few hundred bytes for an error message: names and strings come from the file and can be
/// megabytes long.
fn clip(s: &str) -> Cow<'_, str> {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return Cow::Borrowed(s);
    }
    let cut = (0..=MAX).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    Cow::Owned(format!("{}... ({} bytes)", &s[..cut], s.len()))
}

/// One memory-mapped weights file and where each of its tensors lies in it.
struct Shard {
    path: PathBuf,
    /// Kept open to re-check its size before each read: reading a mapped page past the end of a file that
    /// was truncated after mapping raises SIGBUS, which nothing can catch.
    file: std::fs::File,
    /// When mapped.
    stamp: FileStamp,
    map: memmap2::Mmap,
    tensors: HashMap<String, pickle::TensorEntry>,
}

/// A file's length and modification time: what changes when it is rewritten or truncated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<std::time::SystemTime>,
}

impl From<&std::fs::Metadata> for FileStamp {
    fn from(m: &std::fs::Metadata) -> Self {
        FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
        }
    }
}

fn file_stamp(file: &std::fs::File, path: &Path) -> Result<FileStamp> {
    file.metadata().map(|m| FileStamp::from(&m)).map_err(|e| Error::io(path, e))
}

impl Shard {
    /// An error, instead of a SIGBUS or stale bytes later, if the file changed on disk since it was mapped
    /// (a sweep's next checkpoint re-downloaded, a file rewritten under a running job).
    fn check_unchanged(&self) -> Result<()> {
        let now = file_stamp(&self.file, &self.path)?;
        if now != self.stamp {
            return Err(Error::file(
                &self.path,
                format!(
                    "changed on disk while lmscore was reading it (was {} bytes, now {}): was it rewritten or re-downloaded?",
                    self.stamp.len, now.len
                ),
            ));
        }
        Ok(())
    }
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
        let weights = weight_files(&dir)?;
        let mut shards: Vec<Shard> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for file in &weights.files {
            let shard = open_shard(file)?;
            for name in shard.tensors.keys() {
                if let Some(&j) = index.get(name) {
                    return Err(Error::tensor(
                        clip(name),
                        format!(
                            "is in both {} and {}: a tensor must be in one shard",
                            shards[j].path.display(),
                            file.display()
                        ),
                    ));
                }
                if let Some((index_path, map)) = &weights.index {
                    let listed = match map.get(name) {
                        Some(f) if f == file => None,
                        Some(f) => Some(format!("assigns it to {}", f.display())),
                        None => Some("does not list it".to_string()),
                    };
                    if let Some(listed) = listed {
                        return Err(Error::tensor(
                            clip(name),
                            format!("is in {}, but {} {listed}", file.display(), index_path.display()),
                        ));
                    }
                }
                index.insert(name.clone(), shards.len());
            }
            shards.push(shard);
        }
        if let Some((index_path, map)) = &weights.index {
            if let Some((name, file)) = map.iter().find(|(name, _)| !index.contains_key(*name)) {
                return Err(Error::tensor(
                    clip(name),
                    format!("{} assigns it to {}, which does not hold it", index_path.display(), file.display()),
                ));
            }
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
        shard.check_unchanged()?;
        entry.read(&shard.path, &shard.map)
    }
}

/// The weight files of a model directory, in shard order, and for a sharded checkpoint its index file and
/// `weight_map` (tensor name -> shard file).
struct WeightFiles {
    files: Vec<PathBuf>,
    index: Option<(PathBuf, HashMap<String, PathBuf>)>,
}

fn weight_files(dir: &Path) -> Result<WeightFiles> {
    let single = |file: PathBuf| WeightFiles {
        files: vec![file],
        index: None,
    };
    let safetensors = dir.join("model.safetensors");
    if safetensors.exists() {
        return Ok(single(safetensors));
    }
    for index_name in ["model.safetensors.index.json", "pytorch_model.bin.index.json"] {
        let index = dir.join(index_name);
        if index.exists() {
            return shard_files(&index);
        }
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.exists() {
        return Ok(single(bin));
    }
    Err(Error::file(dir, format!("no weights found: expected {WEIGHT_FILES}")))
}

/// A sharded checkpoint's index: the files its `weight_map` names, each once, in first-seen order, and the map.
fn shard_files(index: &Path) -> Result<WeightFiles> {
    /// The index with its `weight_map` entries in file order, repeats kept (a JSON map keeps only the last).
    #[derive(serde::Deserialize)]
    struct IndexFile {
        weight_map: Option<Entries<serde_json::Value>>,
    }
    let text = crate::error::read_to_string(index)?;
    let v: IndexFile = serde_json::from_str(&text).map_err(|e| Error::file(index, format!("not valid JSON: {e}")))?;
    let entries = v
        .weight_map
        .ok_or_else(|| Error::file(index, "expected an object `weight_map` of tensor name -> shard file"))?
        .0;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut map = HashMap::with_capacity(entries.len());
    for (tensor, file) in entries {
        let tensor_c = clip(&tensor);
        let file = file
            .as_str()
            .ok_or_else(|| Error::file(index, format!("weight_map[{tensor_c}] is not a file name")))?;
        if file.contains('/') || file.contains("..") {
            return Err(Error::file(
                index,
                format!("weight_map[{tensor_c}] = {:?} points outside the model directory", clip(file)),
            ));
        }
        let path = dir.join(file);
        if !path.exists() {
            return Err(Error::file(&path, format!("missing: named as a shard by {}", index.display())));
        }
        if !files.contains(&path) {
            files.push(path.clone());
        }
        if let Some(first) = map.insert(tensor.clone(), path) {
            return Err(Error::file(
                index,
                format!("weight_map lists tensor `{}` twice (in {} and {file})", clip(&tensor), first.display()),
            ));
        }
    }
    if files.is_empty() {
        return Err(Error::file(index, "weight_map is empty"));
    }
    Ok(WeightFiles {
        files,
        index: Some((index.to_path_buf(), map)),
    })
}

/// A JSON object's entries in file order, repeated keys kept: serde_json's maps keep only the last of a
/// repeated key, and a tensor listed twice must be an error, not a silent choice.
struct Entries<T>(Vec<(String, T)>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Entries<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<Entries<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(e) = m.next_entry()? {
                    entries.push(e);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// Memory-map a weights file and index its tensors: safetensors by its header, `.bin` by its pickle.
/// Truncated or corrupt files are reported here, naming the file.
fn open_shard(path: &Path) -> Result<Shard> {
    let file = crate::error::open_regular(path)?;
    let stamp = file_stamp(&file, path)?;
    // SAFETY: the file is opened read-only; a change on disk is detected before each tensor is read.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let entries = if path.extension().is_some_and(|e| e == "safetensors") {
        index_safetensors(path, &map)?
    } else {
        pickle::index_state_dict(path, &map)?
    };
    let mut tensors = HashMap::with_capacity(entries.len());
    for e in entries {
        // The readers report repeats themselves; this keeps any later reader from choosing silently.
        if let Some(e) = tensors.insert(e.name.clone(), e) {
            return Err(Error::file(path, format!("holds tensor `{}` twice", clip(&e.name))));
        }
    }
    Ok(Shard {
        path: path.to_path_buf(),
        file,
        stamp,
        map,
        tensors,
    })
}

fn index_safetensors(path: &Path, bytes: &[u8]) -> Result<Vec<pickle::TensorEntry>> {
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file ({e}); is it truncated or corrupt?")))?;
    // The crate keeps only the last of a repeated tensor name (and its layout checks can still pass), so
    // read the header's names once more.
    let names: Entries<serde::de::IgnoredAny> =
        serde_json::from_slice(&bytes[8..8 + header_len]).map_err(|e| Error::file(path, format!("safetensors header is not a JSON object ({e})")))?;
    let mut seen = std::collections::HashSet::with_capacity(names.0.len());
    if let Some((name, _)) = names.0.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(Error::file(path, format!("safetensors header lists tensor `{}` twice", clip(name))));
    }
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
                member: None,
            }
        })
        .collect())
}
