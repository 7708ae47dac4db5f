//! Output files: checked before any work starts, written so that a failure never leaves a half-written
//! file or a stray temporary behind.
//!
//! ```no_run
//! # fn main() -> lmscore::Result<()> {
//! use lmscore::output::{check_distinct, OutputTarget};
//! let out = OutputTarget::check("scores.jsonl")?; // at start-up: parent writable, not a directory...
//! check_distinct(&[&out], &[std::path::Path::new("requests.jsonl")])?; // not an input, not another output
//! // ... the run ...
//! out.write_atomically(|w| w.write_all(b"{\"id\": 0}\n"))?;
//! # Ok(()) }
//! ```
//!
//! What a path means:
//! - `-` is stdout;
//! - a regular file (or no file yet) is written to a hidden temporary beside it (`.NAME.PID.N.tmp`, unique per
//!   process and call, created with `create_new`) and renamed over it, so readers see the old or the new
//!   file, never a mix; the temporary is removed if anything fails;
//! - a symlink is followed: the file it names is replaced, the link stays;
//! - a character device or FIFO (`/dev/null`, a named pipe) and `/dev/stdout`, `/dev/fd/N` (links through
//!   `/proc`) are opened and written in place, never renamed over;
//! - directories, block devices and sockets are refused.

use crate::error::{Error, Result};
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One output path, checked at start-up; write it with [`OutputTarget::write_atomically`].
#[derive(Debug)]
pub struct OutputTarget {
    /// As the user gave it (for messages).
    given: PathBuf,
    dest: Dest,
    /// (device, inode) of what is there now, if anything.
    id: Option<(u64, u64)>,
}

#[derive(Debug)]
enum Dest {
    Stdout,
    /// `/dev/stderr` or the file stderr goes to: written through the process's own stderr.
    Stderr,
    /// A device or FIFO: opened and written where it is.
    InPlace(PathBuf),
    /// A regular file or none yet, at this resolved path (symlinks followed): temporary file + rename.
    Replace(PathBuf),
}

fn file_id(m: &Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

fn fd_metadata(fd: BorrowedFd) -> Option<Metadata> {
    File::from(fd.try_clone_to_owned().ok()?).metadata().ok()
}

fn stdout_id() -> Option<(u64, u64)> {
    fd_metadata(std::io::stdout().as_fd()).map(|m| file_id(&m))
}

impl OutputTarget {
    /// Check `path` as an output before any work starts: `-` (stdout), or a file whose parent directory
    /// exists and is writable, or a character device / FIFO. Symlinks are resolved here.
    pub fn check(path: impl AsRef<Path>) -> Result<OutputTarget> {
        let given = path.as_ref().to_path_buf();
        if given.as_os_str() == "-" {
            return Ok(OutputTarget {
                given,
                dest: Dest::Stdout,
                id: stdout_id(),
            });
        }
        if given.as_os_str().is_empty() {
            return Err(Error::invalid("an output path is empty: give a file name, or `-` for stdout"));
        }
        let fail = |msg: String| Error::file(&given, msg);
        if given.as_os_str().as_bytes().ends_with(b"/") {
            return Err(fail("ends with `/`: expected a file name, not a directory".into()));
        }
        let mut path = given.clone();
        for _ in 0..40 {
            let Some(name) = path.file_name() else {
                return Err(fail("is a directory; expected a file to write".into()));
            };
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let dir = parent
                .canonicalize()
                .map_err(|e| fail(format!("cannot write into directory {}: {e}", parent.display())))?;
            if !dir.is_dir() {
                return Err(fail(format!("cannot write into {}: not a directory", parent.display())));
            }
            let full = dir.join(name);
            let meta = match std::fs::symlink_metadata(&full) {
                Err(e) if e.kind() == ErrorKind::NotFound => return Self::replace(given, full, None),
                Err(e) => return Err(Error::io(&given, e)),
                Ok(m) => m,
            };
            if meta.is_file() {
                return Self::replace(given, full, Some(file_id(&meta)));
            }
            if !meta.file_type().is_symlink() {
                return Self::in_place(given, full, &meta);
            }
            if dir.starts_with("/proc") {
                // /dev/stdout, /dev/fd/N: a link to an open file (a pipe, a tty...), not to a path.
                let meta = std::fs::metadata(&full).map_err(|e| Error::io(&given, e))?;
                return Self::in_place(given, full, &meta);
            }
            let target = std::fs::read_link(&full).map_err(|e| Error::io(&given, e))?;
            path = dir.join(target); // an absolute target replaces `dir`
        }
        Err(fail("too many levels of symbolic links".into()))
    }

    fn replace(given: PathBuf, full: PathBuf, id: Option<(u64, u64)>) -> Result<OutputTarget> {
        // Writable? Create (and at once remove) a temporary the way the write will.
        let (dir, name) = (full.parent().unwrap_or(Path::new("/")), full.file_name().unwrap_or_default());
        TempFile::create(dir, name).map_err(|e| Error::file(&given, format!("cannot create files in directory {}: {e}", dir.display())))?;
        Ok(OutputTarget {
            given,
            dest: Dest::Replace(full),
            id,
        })
    }

    fn in_place(given: PathBuf, full: PathBuf, meta: &Metadata) -> Result<OutputTarget> {
        let t = meta.file_type();
        let refused = if t.is_dir() {
            "a directory"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_socket() {
            "a socket"
        } else {
            ""
        };
        if !refused.is_empty() {
            return Err(Error::file(
                &given,
                format!("is {refused}; expected a file, a character device, a FIFO, or `-` for stdout"),
            ));
        }
        // Our own stdout or stderr (`/dev/stdout`, even when `>` sends it to a file; the terminal): write
        // through the open descriptor, so that nothing printed before is truncated or overwritten.
        let id = Some(file_id(meta));
        let dest = if id == stdout_id() {
            Dest::Stdout
        } else if id == fd_metadata(std::io::stderr().as_fd()).map(|m| file_id(&m)) {
            Dest::Stderr
        } else {
            Dest::InPlace(full)
        };
        Ok(OutputTarget { given, dest, id })
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.given
    }

    /// Whether this output goes to stdout (`-`, `/dev/stdout`, or the file stdout is redirected to).
    pub fn is_stdout(&self) -> bool {
        matches!(self.dest, Dest::Stdout)
    }

    fn same_as(&self, other: &OutputTarget) -> bool {
        let location = |t: &OutputTarget| match &t.dest {
            Dest::Stdout => PathBuf::from("-"),
            Dest::Stderr => PathBuf::from("/dev/stderr"),
            Dest::InPlace(p) | Dest::Replace(p) => p.clone(),
        };
        (self.id.is_some() && self.id == other.id) || location(self) == location(other)
    }

    /// Write the output: `write` gets a buffered writer. A file is written to a temporary beside it and
    /// renamed over it only once everything was written and synced; on any error the temporary is removed
    /// and the old file is left as it was.
    pub fn write_atomically(&self, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
        let err = |e| Error::io(&self.given, e);
        match &self.dest {
            Dest::Stdout => {
                let mut out = std::io::stdout().lock();
                write(&mut out).and_then(|()| out.flush()).map_err(err)
            }
            Dest::Stderr => {
                let mut out = std::io::stderr().lock();
                write(&mut out).and_then(|()| out.flush()).map_err(err)
            }
            Dest::InPlace(path) => {
                let file = OpenOptions::new().write(true).truncate(true).open(path).map_err(err)?;
                let mut w = BufWriter::new(file);
                write(&mut w).and_then(|()| w.flush()).map_err(err)
            }
            Dest::Replace(path) => {
                let (dir, name) = (path.parent().unwrap_or(Path::new("/")), path.file_name().unwrap_or_default());
                let mut tmp = TempFile::create(dir, name)
                    .map_err(|e| Error::file(&self.given, format!("cannot create a temporary file in {}: {e}", dir.display())))?;
                if let Ok(old) = std::fs::metadata(path) {
                    // Keep the replaced file's permissions; best effort.
                    let _ = tmp.file.set_permissions(old.permissions());
                }
                let mut w = BufWriter::new(&tmp.file);
                write(&mut w).and_then(|()| w.flush()).map_err(err)?;
                drop(w);
                tmp.file.sync_all().map_err(err)?;
                std::fs::rename(&tmp.path, path).map_err(err)?;
                tmp.committed = true;
                Ok(())
            }
        }
    }

    /// [`write_atomically`](Self::write_atomically) of a byte string.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.write_atomically(|w| w.write_all(bytes))
    }
}

/// Check and write one file in one go (for outputs that need no start-up check, e.g. files in a fresh
/// report directory).
pub fn write_file(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    OutputTarget::check(path)?.write_bytes(bytes)
}

/// Refuse outputs that are the same file as one another or as an input (compared by resolved path and by
/// device + inode, so symlinks and hard links are caught). An input directory stands for the files directly
/// in it (a model directory); `-` as an input is stdin.
pub fn check_distinct(outputs: &[&OutputTarget], inputs: &[&Path]) -> Result<()> {
    let mut input_files: Vec<(PathBuf, (u64, u64))> = vec![];
    for &input in inputs {
        if input.as_os_str() == "-" {
            // Only a regular file can be overwritten (a terminal may well be stdin and stdout at once).
            let stdin = fd_metadata(std::io::stdin().as_fd()).filter(Metadata::is_file);
            input_files.extend(stdin.map(|m| (PathBuf::from("stdin"), file_id(&m))));
        } else if input.is_dir() {
            for entry in std::fs::read_dir(input).into_iter().flatten().flatten() {
                let p = entry.path();
                input_files.extend(std::fs::metadata(&p).ok().filter(Metadata::is_file).map(|m| (p, file_id(&m))));
            }
        } else {
            input_files.extend(std::fs::metadata(input).ok().map(|m| (input.to_path_buf(), file_id(&m))));
        }
    }
    for (i, out) in outputs.iter().enumerate() {
        if let Some(other) = outputs[..i].iter().find(|o| o.same_as(out)) {
            return Err(Error::file(
                &out.given,
                format!(
                    "is also given as another output ({}): each output needs its own file",
                    other.given.display()
                ),
            ));
        }
        if let Some((input, _)) = input_files.iter().find(|(_, id)| Some(*id) == out.id) {
            return Err(Error::file(
                &out.given,
                format!("is the same file as the input {}: writing it would destroy the input", input.display()),
            ));
        }
    }
    Ok(())
}

/// A temporary file that is removed when dropped unless `committed`.
struct TempFile {
    path: PathBuf,
    file: File,
    committed: bool,
}

impl TempFile {
    /// `DIR/.NAME.PID.N.tmp`, N counting up within the process; never an existing file.
    fn create(dir: &Path, name: &OsStr) -> std::io::Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let stem = &name.as_bytes()[..name.len().min(200)]; // room for the suffix within NAME_MAX
        for _ in 0..1000 {
            let mut tmp = OsString::from(".");
            tmp.push(OsStr::from_bytes(stem));
            tmp.push(format!(".{}.{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
            let path = dir.join(tmp);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        committed: false,
                    })
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue, // left by a dead process with our pid
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(ErrorKind::AlreadyExists, "no free temporary file name"))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
