//! One error type for the whole crate. Every message names the file, tensor or row at fault and
//! what was expected, so a user can fix their input without reading the source.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS refused a file operation.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A whole file is wrong: bad JSON, bad header, wrong layout.
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// One row of a line-oriented file (JSONL, TSV) is wrong. `line` is 1-based.
    #[error("{path}:{line}: {msg}")]
    Row { path: PathBuf, line: usize, msg: String },
    /// A checkpoint tensor is missing or has the wrong shape / dtype.
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    /// The CUDA driver, NVRTC, cuBLAS or a kernel failed (including out-of-memory).
    #[error("CUDA: {0}")]
    Cuda(String),
    /// The model produced a NaN or infinite log-likelihood for a request (0-based, in the order given to
    /// the engine): never written as a score. `detail` says which token, and where it first went wrong.
    #[error("request {request}: {detail}")]
    NonFinite { request: usize, detail: String },
    /// Anything else the user asked for that cannot be done (bad flag combination, sequence too long...).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn row(path: impl AsRef<Path>, line: usize, msg: impl Into<String>) -> Self {
        Error::Row {
            path: path.as_ref().to_path_buf(),
            line,
            msg: msg.into(),
        }
    }
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    /// A `NonFinite` error names its request by index; a front end replaces that with what the user knows
    /// of it (a row's id and line, a task's document and choice). Other errors pass through.
    pub fn naming_request(self, name: impl FnOnce(usize) -> String) -> Self {
        match self {
            Error::NonFinite { request, detail } => Error::Invalid(format!("{}: {detail}", name(request))),
            other => other,
        }
    }
}

/// The most bytes a metadata file (config.json, a shard index, tokenizer.json) may hold: real ones are
/// a few MB. Without a bound, `/dev/zero` given as `config.json` is read until memory runs out.
pub const MAX_METADATA_BYTES: u64 = 64 << 20;

/// The most bytes a task data or results file read whole may hold.
pub const MAX_DATA_BYTES: u64 = 512 << 20;

/// Open `path` for reading, refusing anything but a regular file (a FIFO would block forever, a
/// device never ends). Symlinks are followed.
pub fn open_regular(path: impl AsRef<Path>) -> Result<std::fs::File> {
    let path = path.as_ref();
    let not_regular = |meta: &std::fs::Metadata| {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, FIFO or socket)"
        };
        Error::file(path, format!("is {kind}; expected a regular file"))
    };
    // Checked before opening too: opening a FIFO for reading blocks until a writer appears.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok(file)
}

/// Read a whole regular file of at most `max_bytes`, naming it in the error.
pub fn read_bounded(path: impl AsRef<Path>, max_bytes: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let path = path.as_ref();
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    // Read one byte past the bound: a file that grows while being read is still caught.
    file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::file(
            path,
            format!("is larger than {} MiB, far more than such a file holds", max_bytes >> 20),
        ));
    }
    Ok(bytes)
}

/// Read a whole UTF-8 regular file of at most `max_bytes`, naming it in the error.
pub fn read_to_string_bounded(path: impl AsRef<Path>, max_bytes: u64) -> Result<String> {
    let path = path.as_ref();
    String::from_utf8(read_bounded(path, max_bytes)?).map_err(|e| Error::file(path, format!("is not UTF-8 text: {e}")))
}

/// Read a whole metadata file (config, index, tokenizer), bounded by [`MAX_METADATA_BYTES`].
pub fn read_to_string(path: impl AsRef<Path>) -> Result<String> {
    read_to_string_bounded(path, MAX_METADATA_BYTES)
}
