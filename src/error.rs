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
}

/// Read a whole file, naming it in the error.
pub fn read_to_string(path: impl AsRef<Path>) -> Result<String> {
    std::fs::read_to_string(path.as_ref()).map_err(|e| Error::io(path, e))
}
