//! Checkpoint specs and where their files come from: the Hugging Face Hub (through the `hf-hub` crate,
//! sharing the standard HF cache with Python tools) or a local directory.
//!
//! Spec syntax:
//! - `EleutherAI/pythia-160m@step2000`: a Hub model id and a revision (branch, tag or commit; default
//!   `main`). Pythia's `stepN` branches hold only `pytorch_model.bin`.
//! - `NAME@REV=DIR`: a local Hugging Face model directory, recorded in results as model NAME at
//!   revision REV (default `main`), e.g. `pythia-160m@step2000=/data/pythia-160m/step2000`.
//!
//! Cache location, as huggingface_hub resolves it: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. `HF_ENDPOINT` and `HF_TOKEN` (or
//! the token file `huggingface-cli login` writes) are honoured.
//!
//! Files fetched per checkpoint: `config.json`, `tokenizer.json` and the weights, in the order of
//! preference `model.safetensors`, `model.safetensors.index.json` + its shards, `pytorch_model.bin`,
//! `pytorch_model.bin.index.json` + its shards. A checkpoint already complete in the cache is used
//! without touching the network; `--offline` never touches it and says what is missing.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Where a checkpoint's files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Hub repository (`model` is its id).
    Hub,
    /// A local model directory.
    Local(PathBuf),
}

/// One checkpoint of a sweep: a model at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSpec {
    /// Hub id (`EleutherAI/pythia-160m`) or the NAME of a local spec.
    pub model: String,
    pub revision: String,
    pub source: Source,
}

impl std::fmt::Display for CheckpointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Hub => write!(f, "{}@{}", self.model, self.revision),
            Source::Local(d) => write!(f, "{}@{}={}", self.model, self.revision, d.display()),
        }
    }
}

fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.contains("..")
}

/// A Hub repo id: `name` or `org/name`, letters, digits, `-`, `_`, `.`.
fn valid_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    (1..=2).contains(&parts.len()) && parts.iter().all(|p| valid_name_part(p))
}

/// A revision: a branch, tag or commit (branches may contain `/`, e.g. `refs/pr/1`).
fn valid_revision(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !s.split('/').any(|p| p.is_empty() || p == "." || p == "..")
}

impl CheckpointSpec {
    /// Parse `HUB_ID[@REV]` or `NAME[@REV]=DIR`.
    pub fn parse(spec: &str) -> Result<CheckpointSpec> {
        let spec = spec.trim();
        let bad = |why: &str| {
            Error::invalid(format!(
                "checkpoint `{spec}`: {why}; expected HUB_ID[@REVISION] (e.g. EleutherAI/pythia-160m@step2000) or NAME[@REVISION]=DIR"
            ))
        };
        let (name_rev, dir) = match spec.split_once('=') {
            Some((l, d)) => (l, Some(d)),
            None => (spec, None),
        };
        let (model, revision) = match name_rev.split_once('@') {
            Some((m, r)) => (m, r),
            None => (name_rev, "main"),
        };
        if model.is_empty() {
            return Err(bad("empty model name"));
        }
        if !valid_revision(revision) {
            return Err(bad(&format!("revision `{revision}` is not a branch, tag or commit name")));
        }
        match dir {
            Some(dir) => {
                if dir.is_empty() {
                    return Err(bad("empty directory after `=`"));
                }
                if model.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad(&format!("name `{model}` contains whitespace")));
                }
                Ok(CheckpointSpec {
                    model: model.into(),
                    revision: revision.into(),
                    source: Source::Local(PathBuf::from(dir)),
                })
            }
            None => {
                if !valid_repo_id(model) {
                    return Err(bad(&format!("`{model}` is not a Hub model id (ORG/NAME)")));
                }
                Ok(CheckpointSpec {
                    model: model.into(),
                    revision: revision.into(),
                    source: Source::Hub,
                })
            }
        }
    }

    /// Parse a comma-separated list.
    pub fn parse_list(list: &str) -> Result<Vec<CheckpointSpec>> {
        let specs: Vec<CheckpointSpec> = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(CheckpointSpec::parse)
            .collect::<Result<_>>()?;
        if specs.is_empty() {
            return Err(Error::invalid("--checkpoints: expected at least one checkpoint"));
        }
        Ok(specs)
    }
}

#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// Never touch the network: only the local cache and local directories.
    pub offline: bool,
    /// Cache directory; None = the standard one (see the module docs).
    pub cache_dir: Option<PathBuf>,
    /// Let hf-hub draw its own download bars.
    pub progress: bool,
}

/// `HF_HUB_OFFLINE=1` (or `true`): the Hugging Face convention for "never touch the network", honoured for
/// checkpoints and task data alike, as `--offline` is.
pub fn env_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The standard Hugging Face hub cache directory.
pub fn default_cache_dir() -> Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var("HF_HUB_CACHE") {
        return Ok(p);
    }
    if let Some(p) = var("HF_HOME") {
        return Ok(p.join("hub"));
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return Ok(p.join("huggingface").join("hub"));
    }
    if let Some(p) = var("HOME") {
        return Ok(p.join(".cache").join("huggingface").join("hub"));
    }
    Err(Error::invalid("cannot locate the Hugging Face cache: set HF_HUB_CACHE or HF_HOME"))
}

/// The weight layouts a checkpoint may have, in order of preference: (index or single file).
const LAYOUTS: [(&str, bool); 4] = [
    ("model.safetensors", false),
    ("model.safetensors.index.json", true),
    ("pytorch_model.bin", false),
    ("pytorch_model.bin.index.json", true),
];

/// A local directory holding the checkpoint's config.json, tokenizer.json and weights, downloading what is
/// missing unless offline.
pub fn resolve(spec: &CheckpointSpec, opts: &HubOptions) -> Result<PathBuf> {
    match &spec.source {
        Source::Local(dir) => {
            if !dir.is_dir() {
                return Err(Error::file(
                    dir,
                    format!("checkpoint {}@{}: local model directory not found", spec.model, spec.revision),
                ));
            }
            Ok(dir.clone())
        }
        Source::Hub => {
            let cache = match &opts.cache_dir {
                Some(c) => c.clone(),
                None => default_cache_dir()?,
            };
            match resolve_cached(spec, &cache) {
                Ok(dir) => Ok(dir),
                Err(missing) if opts.offline || env_offline() => Err(Error::file(
                    &cache,
                    format!(
                        "{}: {}@{} is not complete in the Hugging Face cache: {missing}. Run once online to download it, \
                         or give a local directory as NAME@REV=DIR",
                        if opts.offline { "--offline" } else { "HF_HUB_OFFLINE is set" },
                        spec.model,
                        spec.revision
                    ),
                )),
                Err(_) => download(spec, &cache, opts),
            }
        }
    }
}

/// `models--ORG--NAME` in the cache.
fn repo_cache_dir(cache: &Path, model: &str) -> PathBuf {
    cache.join(format!("models--{}", model.replace('/', "--")))
}

/// The snapshot directory of a cached checkpoint, if every file it needs is there; else what is missing.
pub fn resolve_cached(spec: &CheckpointSpec, cache: &Path) -> std::result::Result<PathBuf, String> {
    let repo = repo_cache_dir(cache, &spec.model);
    if !repo.is_dir() {
        return Err(format!("nothing cached for {} ({} does not exist)", spec.model, repo.display()));
    }
    let is_commit = spec.revision.len() == 40 && spec.revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        spec.revision.clone()
    } else {
        let r = repo.join("refs").join(&spec.revision);
        match std::fs::read_to_string(&r) {
            Ok(c) => c.trim().to_string(),
            Err(_) => {
                return Err(format!(
                    "revision {} was never downloaded ({} does not exist)",
                    spec.revision,
                    r.display()
                ))
            }
        }
    };
    if commit.is_empty() || commit.contains(['/', '\\']) || commit.contains("..") {
        return Err(format!("the cache's ref for {} is not a commit hash", spec.revision));
    }
    let snap = repo.join("snapshots").join(&commit);
    let mut missing = Vec::new();
    for f in ["config.json", "tokenizer.json"] {
        if !snap.join(f).is_file() {
            missing.push(f.to_string());
        }
    }
    match cached_weights(&snap) {
        Ok(_) => {}
        Err(m) => missing.push(m),
    }
    if missing.is_empty() {
        Ok(snap)
    } else {
        Err(format!("missing {} in {}", missing.join(", "), snap.display()))
    }
}

/// The weight files present in `dir`, or what is missing.
fn cached_weights(dir: &Path) -> std::result::Result<Vec<String>, String> {
    for (name, is_index) in LAYOUTS {
        let p = dir.join(name);
        if !p.is_file() {
            continue;
        }
        if !is_index {
            return Ok(vec![name.to_string()]);
        }
        let shards = index_shards(&p).map_err(|e| e.to_string())?;
        let absent: Vec<&String> = shards.iter().filter(|s| !dir.join(s).is_file()).collect();
        if absent.is_empty() {
            let mut files = vec![name.to_string()];
            files.extend(shards);
            return Ok(files);
        }
        return Err(format!(
            "shards {} of {name}",
            absent.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    Err(format!("weights (one of {})", LAYOUTS.map(|l| l.0).join(", ")))
}

/// Shard file names named by a `*.index.json`, each once, in first-seen order.
pub fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = crate::error::read_to_string(index)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(index, "expected an object `weight_map`"))?;
    let mut out: Vec<String> = Vec::new();
    for (tensor, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| Error::file(index, format!("weight_map[{tensor}] is not a file name")))?;
        if f.contains(['/', '\\']) || f.contains("..") || f.is_empty() {
            return Err(Error::file(
                index,
                format!("weight_map[{tensor}] = {f:?} points outside the model directory"),
            ));
        }
        if !out.iter().any(|o| o == f) {
            out.push(f.to_string());
        }
    }
    Ok(out)
}

/// Download what the checkpoint needs into the cache (files already there are not downloaded again).
fn download(spec: &CheckpointSpec, cache: &Path, opts: &HubOptions) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let what = format!("{}@{}", spec.model, spec.revision);
    let hub_err = |file: &str, e: hf_hub::api::sync::ApiError| {
        Error::invalid(format!(
            "downloading {file} of {what} from the Hugging Face Hub failed: {e}. \
             (No network? Use --offline with a populated cache ({}), or a local NAME@REV=DIR.)",
            cache.display()
        ))
    };
    let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf())).with_progress(opts.progress);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| hub_err("(setup)", e))?;
    let repo = api.repo(Repo::with_revision(spec.model.clone(), RepoType::Model, spec.revision.clone()));
    let info = repo.info().map_err(|e| hub_err("the file list", e))?;
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let (weights, is_index) = LAYOUTS.iter().find(|(n, _)| listed.contains(n)).copied().ok_or_else(|| {
        Error::invalid(format!(
            "{what} on the Hub has no weights: expected one of {} (it lists {})",
            LAYOUTS.map(|l| l.0).join(", "),
            listed.join(", ")
        ))
    })?;
    for required in ["config.json", "tokenizer.json"] {
        if !listed.contains(&required) {
            return Err(Error::invalid(format!("{what} on the Hub has no {required}")));
        }
    }
    let config = repo.get("config.json").map_err(|e| hub_err("config.json", e))?;
    repo.get("tokenizer.json").map_err(|e| hub_err("tokenizer.json", e))?;
    let first = repo.get(weights).map_err(|e| hub_err(weights, e))?;
    if is_index {
        for shard in index_shards(&first)? {
            repo.get(&shard).map_err(|e| hub_err(&shard, e))?;
        }
    }
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::file(&config, "downloaded file has no parent directory"))?;
    Ok(dir)
}

/// The checkpoints of "Emergent inabilities?" (2023): 8 Pythia sizes x 8 steps, size-major.
pub fn emergent_inabilities_checkpoints() -> Vec<CheckpointSpec> {
    const SIZES: [&str; 8] = ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"];
    const STEPS: [u32; 8] = [2000, 4000, 8000, 16000, 32000, 64000, 128000, 143000];
    SIZES
        .iter()
        .flat_map(|s| {
            STEPS.iter().map(move |n| CheckpointSpec {
                model: format!("EleutherAI/pythia-{s}"),
                revision: format!("step{n}"),
                source: Source::Hub,
            })
        })
        .collect()
}
