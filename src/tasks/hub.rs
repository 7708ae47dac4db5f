//! Finding a task's data file: the local data directory first, then the Hugging Face cache, then (unless
//! `--offline`) a download from the Hub dataset the task came from. Files whose SOURCE.md gives a sha256 are
//! checked against it; a mismatch is a warning on stderr, not an error (a user may knowingly run a
//! different version of a dataset).

use crate::error::{Error, Result};
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

/// Where one data file of a task lives, and where it can be fetched from.
#[derive(Clone, Copy, Debug)]
pub struct DataFile {
    /// Folder under the data directory (the layout of `shared/data`).
    pub dir: &'static str,
    /// File name inside that folder (the official release name).
    pub file: &'static str,
    /// Expected sha256 of the full file, when SOURCE.md gives one.
    pub sha256: Option<&'static str>,
    pub hub: Option<HubSource>,
}

/// A Hugging Face dataset repository holding the file.
#[derive(Clone, Copy, Debug)]
pub struct HubSource {
    pub repo: &'static str,
    /// Pinned revision. The commit hashes of these datasets could not be looked up from the machine this was
    /// written on (no network), so this is the branch name; the sha256 check below is what pins the content.
    pub revision: &'static str,
    /// The split the harness loads; used to pick the file when the repository does not use the release name.
    pub split: &'static str,
}

/// The revision every Hub download asks for (see [`HubSource::revision`]).
pub const HUB_REVISION: &str = "main";

/// A data directory holding this marker file is a hand-made subset (the bundled `data/sample/`): its files
/// are not checked against the full files' sha256.
pub const SAMPLE_MARKER: &str = "SAMPLE.md";

impl DataFile {
    pub fn local_path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.dir).join(self.file)
    }
}

/// Resolve `df` to a readable local path: `data_dir/dir/file`, else the HF cache, else a Hub download.
pub fn resolve(df: &DataFile, data_dir: &Path, offline: bool) -> Result<PathBuf> {
    let local = df.local_path(data_dir);
    if local.is_file() {
        if !data_dir.join(SAMPLE_MARKER).exists() {
            verify_sha256(&local, df.sha256);
        }
        return Ok(local);
    }
    let how_to_supply = || {
        let mut s = format!("place the file at {}", local.display());
        if let Some(sha) = df.sha256 {
            s.push_str(&format!(" (expected sha256 {sha}; see {}/SOURCE.md)", df.dir));
        }
        s.push_str(", or pass --data-dir pointing at a directory laid out like shared/data");
        s
    };
    let Some(hub) = df.hub else {
        return Err(Error::file(
            &local,
            format!("data file not found, and it has no Hub copy lmscore can read; {}", how_to_supply()),
        ));
    };
    let repo = Repo::with_revision(hub.repo.to_string(), RepoType::Dataset, hub.revision.to_string());
    // The HF cache, under every name the file may have in the repository.
    let cache = hf_cache();
    let cache_repo = cache.repo(repo.clone());
    for name in candidate_names(df, &hub) {
        if let Some(p) = cache_repo.get(&name) {
            verify_sha256(&p, df.sha256);
            return Ok(p);
        }
    }
    let env_offline = crate::hub::env_offline();
    if offline || env_offline {
        return Err(Error::file(
            &local,
            format!(
                "data file not found locally nor in the Hugging Face cache ({}); {} is set, so the Hub dataset `{}` (revision {}) was not tried; {}",
                cache.path().display(),
                if offline { "--offline" } else { "HF_HUB_OFFLINE" },
                hub.repo,
                hub.revision,
                how_to_supply()
            ),
        ));
    }
    match download(&repo, df, &hub) {
        Ok(p) => {
            verify_sha256(&p, df.sha256);
            Ok(p)
        }
        Err(why) => Err(Error::file(
            &local,
            format!(
                "data file not found locally; tried the Hugging Face Hub dataset `{}` (revision {}, split `{}`): {why}; {}",
                hub.repo,
                hub.revision,
                hub.split,
                how_to_supply()
            ),
        )),
    }
}

/// The standard Hugging Face cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
fn hf_cache() -> hf_hub::Cache {
    match std::env::var("HF_HUB_CACHE") {
        Ok(p) if !p.is_empty() => hf_hub::Cache::new(PathBuf::from(p)),
        _ => hf_hub::Cache::from_env(),
    }
}

/// Names the file may have inside the Hub repository: the release name, then the usual split file names.
fn candidate_names(df: &DataFile, hub: &HubSource) -> Vec<String> {
    vec![
        df.file.to_string(),
        format!("{}.jsonl", hub.split),
        format!("data/{}.jsonl", hub.split),
        format!("{}.json", hub.split),
        format!("data/{}.json", hub.split),
    ]
}

fn download(repo: &Repo, df: &DataFile, hub: &HubSource) -> std::result::Result<PathBuf, String> {
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(hf_cache()).with_progress(false);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| format!("cannot start the Hub client: {e}"))?;
    let api_repo = api.repo(repo.clone());
    let info = api_repo.info().map_err(|e| format!("cannot list the repository: {e}"))?;
    let files: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let name = pick_file(&files, df, hub)?;
    eprintln!("downloading {name} from Hugging Face dataset {} ...", hub.repo);
    api_repo.get(&name).map_err(|e| format!("download of `{name}` failed: {e}"))
}

/// Choose the file to download from a repository listing: the release name, else a JSON(L) file of the
/// split, else the only JSON(L) file. Parquet-only repositories are reported (lmscore reads JSON Lines only).
fn pick_file(files: &[String], df: &DataFile, hub: &HubSource) -> std::result::Result<String, String> {
    let is_json = |f: &&String| f.ends_with(".jsonl") || f.ends_with(".json");
    let json: Vec<&String> = files
        .iter()
        .filter(is_json)
        .filter(|f| !f.contains("dataset_info") && !f.ends_with("README.json"))
        .collect();
    if let Some(f) = files.iter().find(|f| f.rsplit('/').next() == Some(df.file)) {
        return Ok(f.clone());
    }
    let of_split: Vec<&&String> = json
        .iter()
        .filter(|f| f.rsplit('/').next().is_some_and(|n| n.contains(hub.split)))
        .collect();
    if of_split.len() == 1 {
        return Ok((*of_split[0]).clone());
    }
    if json.len() == 1 {
        return Ok(json[0].clone());
    }
    let parquet: Vec<&String> = files.iter().filter(|f| f.ends_with(".parquet")).collect();
    if !parquet.is_empty() {
        return Err(format!(
            "the repository holds Parquet files ({}), which lmscore does not read; convert the `{}` split to JSON Lines (e.g. `datasets.load_dataset(...)[\"{}\"].to_json(...)`)",
            parquet.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            hub.split,
            hub.split
        ));
    }
    Err(format!(
        "no JSON Lines file for split `{}` among its files ({})",
        hub.split,
        files.join(", ")
    ))
}

/// Warn on stderr when `path`'s sha256 differs from `expected`.
pub fn verify_sha256(path: &Path, expected: Option<&str>) {
    let Some(expected) = expected else { return };
    let Ok(bytes) = std::fs::read(path) else { return };
    let got = sha256_hex(&bytes);
    if !got.eq_ignore_ascii_case(expected) {
        eprintln!(
            "warning: {}: sha256 {got} differs from the expected {expected} (the official release); scores may not be comparable with the paper",
            path.display()
        );
    }
}

/// SHA-256 (FIPS 180-4) of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
        0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
        0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
        0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
        0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
        0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    let mut w = [0u32; 64];
    for block in msg.chunks_exact(64) {
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let long = vec![b'a'; 1000];
        assert_eq!(sha256_hex(&long), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
    }
}
