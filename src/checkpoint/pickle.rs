//! Reader for PyTorch `pytorch_model.bin` state dicts, without executing anything.
//!
//! A `torch.save` file (torch >= 1.6) is an uncompressed zip: `<archive>/data.pkl` (a pickle of the
//! state dict), `<archive>/data/<key>` (one raw storage per key), `<archive>/byteorder` (`little` or
//! `big`; absent in old files, meaning little) and some version files. Pythia's `stepN` revisions hold
//! only this format.
//!
//! `data.pkl` is run on a small pickle virtual machine that knows the opcodes torch emits for a state
//! dict (protocol 2, plus the protocol 3/4 opcodes a newer pickler could emit for the same objects) and
//! exactly these importable names:
//!
//! - `collections.OrderedDict` (called with no arguments: the state dict and the empty backward hooks),
//! - `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`,
//! - `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`,
//! - `torch.{Half,BFloat16,Float,Double,Byte,Char,Short,Int,Long,Bool}Storage` (storage types, only as
//!   the second field of a persistent id `('storage', type, key, location, numel)`).
//!
//! Nothing is ever called: each of those is interpreted, and any other name (`os.system`,
//! `builtins.eval`, ...) stops the load with an error before anything else happens. Every read is
//! bounds-checked, so a truncated or malformed file is an error naming the file, never a panic.
//!
//! Hostile pickles are bounded too: the VM's memory and work (MAX_VM_BYTES), tuple nesting (MAX_DEPTH;
//! dropping is iterative anyway), tensor rank and storage-key length; values in messages are summaries
//! of a few hundred characters. The zip is checked as Python's zipfile does (local headers against the
//! central directory, no overlapping or repeated members) and every member's CRC-32 before it is used.
//!
//! Tensors must be contiguous row-major views of their storage (what `save_pretrained` writes).
//! F16, BF16, F32 and U8 tensors carry their bytes; other storage types (I64 step counters, bool masks)
//! come back as [`DType::Other`] with no bytes, so the checkpoint loader reports them only if they are
//! asked for as weights.

use super::{clip, DType, HostTensor};
use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Cursor;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

/// All tensors of a state dict, by their state-dict names, in the order the file lists them.
pub fn load_state_dict(path: &Path) -> Result<Vec<HostTensor>> {
    let file = crate::error::open_regular(path)?;
    // SAFETY: the file is opened read-only and not modified while lmscore runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    load_from_bytes(path, &map)
}

/// Same as [`load_state_dict`] on bytes already in memory; `path` only names the file in errors.
pub fn load_from_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<HostTensor>> {
    index_state_dict(path, bytes)?.into_iter().map(|e| e.read(path, bytes)).collect()
}

/// Where one tensor's bytes lie in a `.bin` file: torch stores each storage as an uncompressed zip entry,
/// so a contiguous tensor is one byte range of the file and can be read lazily from a memory map.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range in the file (empty for dtypes lmscore does not compute with).
    pub start: usize,
    pub end: usize,
    /// Element size when the file is big-endian (bytes are swapped on read), else 1.
    pub swap: usize,
    /// The zip member holding the bytes, whose CRC-32 is checked before they are first used (None for
    /// safetensors, which carry no checksum, and for tensors with no bytes).
    pub member: Option<Arc<Member>>,
}

impl TensorEntry {
    /// The tensor's little-endian bytes out of the whole file's `bytes` (`path` names it in errors).
    pub fn read(&self, path: &Path, bytes: &[u8]) -> Result<HostTensor> {
        if let Some(m) = &self.member {
            m.verify(path, bytes)?;
        }
        let mut b = bytes[self.start..self.end].to_vec();
        if self.swap > 1 {
            b.chunks_exact_mut(self.swap).for_each(|c| c.reverse());
        }
        Ok(HostTensor {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            bytes: b,
        })
    }
}

/// One stored member of the zip, already checked against its local header. Its CRC-32 is computed the first
/// time its bytes are read, not when the file is opened: a storage can be GBs, and reading every one at open
/// and again for the weights would double the I/O of loading a large model.
#[derive(Debug)]
pub struct Member {
    name: String,
    /// Stored: not compressed, not encrypted. Only such members can be read (in place, from the map); others
    /// are refused if they are used.
    stored: bool,
    /// Byte range of the (stored) data in the file.
    start: usize,
    end: usize,
    crc: u32,
    computed: OnceLock<u32>,
}

impl Member {
    fn check_stored(&self, path: &Path) -> Result<()> {
        if !self.stored {
            return Err(Error::file(
                path,
                format!(
                    "zip entry {} is compressed or encrypted; torch.save writes stored (uncompressed) entries",
                    clip(&self.name)
                ),
            ));
        }
        Ok(())
    }

    fn verify(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let got = *self.computed.get_or_init(|| crc32(&bytes[self.start..self.end]));
        if got != self.crc {
            return Err(Error::file(
                path,
                format!(
                    "zip entry {} fails its CRC-32 check (the archive records {:08x}, its {} bytes give {got:08x}): \
                     the file is corrupt; download it again",
                    self.name,
                    self.crc,
                    self.end - self.start
                ),
            ));
        }
        Ok(())
    }

    /// The member's bytes, after checking its CRC-32.
    fn bytes<'a>(&self, path: &Path, bytes: &'a [u8]) -> Result<&'a [u8]> {
        self.check_stored(path)?;
        self.verify(path, bytes)?;
        Ok(&bytes[self.start..self.end])
    }
}

/// Parse the state dict's pickle and locate every tensor's bytes, validating the zip structure, shapes,
/// strides and storage sizes, without reading any tensor data.
pub fn index_state_dict(path: &Path, bytes: &[u8]) -> Result<Vec<TensorEntry>> {
    if !bytes.starts_with(b"PK") {
        // Legacy torch.save (before 1.6, or `_use_new_zipfile_serialization=False`) starts with a pickled
        // magic number: PROTO 2, LONG1 of 0x1950a86a20f9469cfc6c.
        let msg = if bytes.starts_with(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19") {
            "legacy PyTorch serialization (torch < 1.6 or _use_new_zipfile_serialization=False) is not supported; \
             re-save it with a recent torch or convert it to model.safetensors"
        } else {
            "not a PyTorch checkpoint: expected a zip archive holding <name>/data.pkl (torch.save format)"
        };
        return Err(Error::file(path, msg));
    }
    let members = zip_members(path, bytes)?;
    let mut pkl_names: Vec<&str> = members
        .keys()
        .map(String::as_str)
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .collect();
    pkl_names.sort_unstable();
    let pkl_name = match pkl_names.as_slice() {
        [one] => one.to_string(),
        [] => return Err(Error::file(path, "zip archive holds no data.pkl: not a torch.save checkpoint")),
        many => {
            return Err(Error::file(
                path,
                format!(
                    "zip archive holds {} data.pkl files ({}), expected one",
                    many.len(),
                    clip(&many.join(", "))
                ),
            ))
        }
    };
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let big_endian = match members.get(&format!("{prefix}byteorder")) {
        None => false,
        Some(m) => {
            let b = m.bytes(path, bytes)?;
            match std::str::from_utf8(b).map(str::trim) {
                Ok("little") => false,
                Ok("big") => true,
                _ => {
                    return Err(Error::file(
                        path,
                        format!(
                            "{prefix}byteorder holds {:?}, expected \"little\" or \"big\"",
                            clip(&String::from_utf8_lossy(b))
                        ),
                    ))
                }
            }
        }
    };
    let pkl = members[&pkl_name].bytes(path, bytes)?;
    let entries = Vm::new(pkl).run().map_err(|msg| Error::file(path, format!("{pkl_name}: {msg}")))?;

    // Each storage as first declared: a later reference must agree, or its bytes would be reinterpreted
    // (torch itself silently keeps the first declaration).
    let mut storages: HashMap<Rc<str>, Rc<StorageRef>> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let bad = |msg: String| Error::file(path, format!("tensor `{}`: {msg}", clip(&name)));
        if t.shape.len() > MAX_RANK || t.stride.len() > MAX_RANK {
            return Err(bad(format!(
                "has rank {} (stride rank {}), more than the {MAX_RANK} lmscore accepts",
                t.shape.len(),
                t.stride.len()
            )));
        }
        let st = &t.storage;
        let es = st.kind.elem_size as u64;
        let first = storages.entry(st.key.clone()).or_insert_with(|| st.clone());
        if (first.kind, first.numel) != (st.kind, st.numel) {
            return Err(bad(format!(
                "storage {} is declared as {} of {} elements, but an earlier tensor declares it as {} of {}",
                st.key, st.kind.name, st.numel, first.kind.name, first.numel
            )));
        }
        let file = format!("{prefix}data/{}", st.key);
        let member = members
            .get(&file)
            .ok_or_else(|| bad(format!("its storage file {file} is missing from the archive")))?;
        member.check_stored(path)?;
        let declared = st
            .numel
            .checked_mul(es)
            .ok_or_else(|| bad(format!("storage {} declares an impossible size", st.key)))?;
        let held = (member.end - member.start) as u64;
        if held < declared {
            return Err(bad(format!(
                "storage {file} holds {held} bytes, but data.pkl declares {} elements of {} bytes ({}); is the file truncated?",
                st.numel, es, st.kind.name
            )));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {:?} overflows", t.shape)))?;
        if numel > 1 || t.shape.is_empty() {
            check_contiguous(&t.shape, &t.stride).map_err(bad)?;
        }
        let end = t.offset.checked_add(numel).filter(|&e| e <= st.numel).ok_or_else(|| {
            bad(format!(
                "shape {:?} at storage offset {} needs {} elements, but its storage {} holds {}",
                t.shape,
                t.offset,
                t.offset.saturating_add(numel),
                st.key,
                st.numel
            ))
        })?;
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let (start, end, member) = if st.kind.dtype == DType::Other {
            (0, 0, None)
        } else {
            let base = member.start as u64;
            ((base + t.offset * es) as usize, (base + end * es) as usize, Some(member.clone()))
        };
        out.push(TensorEntry {
            name,
            dtype: st.kind.dtype,
            shape,
            start,
            end,
            swap: if big_endian { es as usize } else { 1 },
            member,
        });
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// The zip archive, checked as Python's zipfile checks it (and a little more) before any member is used:
// the zip crate alone reads a member where the central directory points, whatever is there.

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
/// General-purpose flag bits: encrypted, and "CRC and sizes follow the data" (torch writes that one, with
/// zeros in the local header).
const FLAG_ENCRYPTED: u16 = 1;
const FLAG_DATA_DESCRIPTOR: u16 = 8;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

/// Members a zip may declare: torch.save writes one per storage plus a few (hundreds for Pythia-12B). The zip
/// crate builds a record per entry before any check here runs, so a directory of millions of tiny entries
/// (a few hundred MB of file, GBs of records) is refused from the end record alone.
const MAX_ZIP_MEMBERS: u64 = 1 << 18;

/// The member count the end-of-central-directory record declares (the zip64 one when the classic field
/// overflows); None when there is no such record (the zip crate then reports the file).
fn declared_members(bytes: &[u8]) -> Option<u64> {
    let tail = bytes.len().saturating_sub(22 + 65535); // the record is 22 bytes plus a comment of at most 64 KiB
    let eocd = tail + bytes[tail..].windows(4).rposition(|w| w == b"PK\x05\x06")?;
    let count = u64::from(le16(bytes.get(eocd..eocd + 22)?, 10));
    if count != 0xffff {
        return Some(count);
    }
    // zip64: a 20-byte locator just before the record gives the offset of the zip64 record.
    let locator = bytes.get(eocd.checked_sub(20)?..eocd)?;
    if !locator.starts_with(b"PK\x06\x07") {
        return Some(count);
    }
    let at = usize::try_from(le64(locator, 8)).ok()?;
    let record = bytes.get(at..at.checked_add(56)?)?;
    record.starts_with(b"PK\x06\x06").then(|| le64(record, 32))
}

/// What the central directory says of one member.
struct CentralEntry {
    name: String,
    raw_name: Vec<u8>,
    header_start: u64,
    method: u16,
    encrypted: bool,
    size: u64,
    compressed_size: u64,
    crc: u32,
}

/// Every member of the archive by name, each checked: its local header agreeing with the central directory
/// (signature, name, method, CRC and sizes), its data inside the file and not overlapping the next member,
/// and no name listed twice.
fn zip_members(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Arc<Member>>> {
    if let Some(n) = declared_members(bytes).filter(|&n| n > MAX_ZIP_MEMBERS) {
        return Err(Error::file(
            path,
            format!("zip archive declares {n} members; a torch.save checkpoint holds one per storage (far below {MAX_ZIP_MEMBERS})"),
        ));
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Error::file(path, format!("not a readable zip archive ({e}); is it truncated or corrupt?")))?;
    check_unique_names(path, bytes, zip.central_directory_start())?;
    let mut central = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let name = zip.name_for_index(i).unwrap_or_default().to_string();
        let f = zip.by_index_raw(i).map_err(|e| {
            Error::file(
                path,
                format!("zip entry {} is unreadable ({e}); is the file truncated or corrupt?", clip(&name)),
            )
        })?;
        // The method number as recorded (the crate's enum has no stable number for it).
        let at = usize::try_from(f.central_header_start()).unwrap_or(usize::MAX);
        let method = bytes.get(at..at.saturating_add(12)).map_or(u16::MAX, |r| le16(r, 10));
        central.push(CentralEntry {
            raw_name: f.name_raw().to_vec(),
            header_start: f.header_start(),
            method,
            encrypted: f.encrypted(),
            size: f.size(),
            compressed_size: f.compressed_size(),
            crc: f.crc32(),
            name,
        });
    }
    // Where each member must end: the next local header, or the central directory.
    let mut starts: Vec<u64> = central.iter().map(|c| c.header_start).collect();
    starts.push(zip.central_directory_start());
    starts.sort_unstable();
    let mut members = HashMap::with_capacity(central.len());
    for c in central {
        let corrupt = |msg: String| Error::file(path, format!("zip entry {}: {msg}; the file is corrupt", clip(&c.name)));
        let (start, end) = local_data_range(bytes, &c).map_err(corrupt)?;
        let limit = starts[starts.partition_point(|&s| s <= c.header_start)..]
            .first()
            .copied()
            .unwrap_or(u64::MAX);
        if end > limit {
            return Err(corrupt(format!(
                "its {} bytes at offset {start} overlap the next member (at offset {limit})",
                c.compressed_size
            )));
        }
        let member = Member {
            name: c.name.clone(),
            stored: c.method == 0 && !c.encrypted && c.compressed_size == c.size,
            start: start as usize,
            end: end as usize,
            crc: c.crc,
            computed: OnceLock::new(),
        };
        members.insert(c.name, Arc::new(member));
    }
    Ok(members)
}

/// The byte range of a member's data, after checking its local header against the central directory.
fn local_data_range(bytes: &[u8], c: &CentralEntry) -> std::result::Result<(u64, u64), String> {
    let h = usize::try_from(c.header_start)
        .ok()
        .and_then(|at| bytes.get(at..))
        .filter(|h| h.len() >= 30)
        .ok_or_else(|| format!("its local header at offset {} lies past the end of the file", c.header_start))?;
    if le32(h, 0) != LOCAL_SIG {
        return Err(format!(
            "no local file header at offset {}, where the central directory points",
            c.header_start
        ));
    }
    let (flags, method, crc) = (le16(h, 6), le16(h, 8), le32(h, 14));
    let (name_len, extra_len) = (le16(h, 26) as usize, le16(h, 28) as usize);
    let name = h.get(30..30 + name_len).ok_or("its local header runs past the end of the file")?;
    if name != c.raw_name {
        return Err(format!(
            "its local header names {:?}: the central directory points at another member's header",
            clip(&String::from_utf8_lossy(name))
        ));
    }
    if method != c.method || (flags & FLAG_ENCRYPTED != 0) != c.encrypted {
        return Err(format!(
            "its local header says compression method {method}{}, the central directory method {}{}",
            if flags & FLAG_ENCRYPTED != 0 { " (encrypted)" } else { "" },
            c.method,
            if c.encrypted { " (encrypted)" } else { "" }
        ));
    }
    let extra = h
        .get(30 + name_len..30 + name_len + extra_len)
        .ok_or("its local header runs past the end of the file")?;
    let (size, csize) = local_sizes(h, extra);
    // With a data descriptor the local CRC and sizes may be left 0 (they follow the data).
    let agrees = |local: u64, central: u64| local == central || (flags & FLAG_DATA_DESCRIPTOR != 0 && local == 0);
    if !agrees(crc as u64, c.crc as u64) || !agrees(size, c.size) || !agrees(csize, c.compressed_size) {
        return Err(format!(
            "its local header says {size} bytes ({csize} in the file) with CRC {crc:08x}, the central directory {} ({}) with CRC {:08x}",
            c.size, c.compressed_size, c.crc
        ));
    }
    let start = c.header_start + 30 + name_len as u64 + extra_len as u64;
    let end = start.checked_add(c.compressed_size).filter(|&e| e <= bytes.len() as u64).ok_or_else(|| {
        format!(
            "its {} bytes at offset {start} run past the end of the file; is it truncated?",
            c.compressed_size
        )
    })?;
    Ok((start, end))
}

/// A local header's (uncompressed, compressed) sizes; 0xffffffff means they are in the zip64 extra field
/// (id 1: the uncompressed then the compressed size, 8 bytes each).
fn local_sizes(h: &[u8], mut extra: &[u8]) -> (u64, u64) {
    let (mut size, mut csize) = (le32(h, 22) as u64, le32(h, 18) as u64);
    while extra.len() >= 4 {
        let (id, len) = (le16(extra, 0), le16(extra, 2) as usize);
        let Some(data) = extra.get(4..4 + len) else { break };
        if id == 1 {
            let mut fields = data.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            if size == u32::MAX as u64 {
                size = fields.next().unwrap_or(size);
            }
            if csize == u32::MAX as u64 {
                csize = fields.next().unwrap_or(csize);
            }
        }
        extra = &extra[4 + len..];
    }
    (size, csize)
}

/// The zip crate keeps only the last of two central-directory entries with one name, so read the names from
/// the directory itself: two storages under one name would make the choice of bytes arbitrary.
fn check_unique_names(path: &Path, bytes: &[u8], dir_start: u64) -> Result<()> {
    let mut seen = HashSet::new();
    let mut at = usize::try_from(dir_start).unwrap_or(usize::MAX);
    while let Some(rec) = bytes.get(at..at.saturating_add(46)).filter(|r| le32(r, 0) == CENTRAL_SIG) {
        let (n, m, k) = (le16(rec, 28) as usize, le16(rec, 30) as usize, le16(rec, 32) as usize);
        let Some(name) = bytes.get(at + 46..at + 46 + n) else { break };
        if !seen.insert(name) {
            return Err(Error::file(
                path,
                format!(
                    "zip archive lists member {} twice; the file is corrupt",
                    clip(&String::from_utf8_lossy(name))
                ),
            ));
        }
        at += 46 + n + m + k;
    }
    Ok(())
}

/// CRC-32 (IEEE, as zip uses) on all cores: crc32fast (SIMD) over 16 MiB chunks, joined in order with its
/// `combine`, so checking a 20 GB model's storages keeps up with the disk.
fn crc32(data: &[u8]) -> u32 {
    use rayon::prelude::*;
    const CHUNK: usize = 16 << 20;
    let hash = |c: &[u8]| {
        let mut h = crc32fast::Hasher::new();
        h.update(c);
        h
    };
    data.par_chunks(CHUNK)
        .map(hash)
        .reduce(crc32fast::Hasher::new, |mut a, b| {
            a.combine(&b);
            a
        })
        .finalize()
}

/// Row-major strides for `shape`, ignoring dimensions of size 1 (their stride is arbitrary).
fn check_contiguous(shape: &[u64], stride: &[u64]) -> std::result::Result<(), String> {
    if shape.len() != stride.len() {
        return Err(format!("shape {shape:?} and stride {stride:?} have different ranks"));
    }
    let mut expect = 1u64;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expect {
            return Err(format!(
                "stride {stride:?} for shape {shape:?} is not contiguous row-major; save the tensor with .contiguous() (or convert to safetensors)"
            ));
        }
        expect = expect.saturating_mul(d);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The pickle VM.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StorageKind {
    name: &'static str,
    dtype: DType,
    elem_size: usize,
}

const STORAGES: &[StorageKind] = &[
    StorageKind {
        name: "HalfStorage",
        dtype: DType::F16,
        elem_size: 2,
    },
    StorageKind {
        name: "BFloat16Storage",
        dtype: DType::BF16,
        elem_size: 2,
    },
    StorageKind {
        name: "FloatStorage",
        dtype: DType::F32,
        elem_size: 4,
    },
    StorageKind {
        name: "ByteStorage",
        dtype: DType::U8,
        elem_size: 1,
    },
    StorageKind {
        name: "DoubleStorage",
        dtype: DType::Other,
        elem_size: 8,
    },
    StorageKind {
        name: "LongStorage",
        dtype: DType::Other,
        elem_size: 8,
    },
    StorageKind {
        name: "IntStorage",
        dtype: DType::Other,
        elem_size: 4,
    },
    StorageKind {
        name: "ShortStorage",
        dtype: DType::Other,
        elem_size: 2,
    },
    StorageKind {
        name: "CharStorage",
        dtype: DType::Other,
        elem_size: 1,
    },
    StorageKind {
        name: "BoolStorage",
        dtype: DType::Other,
        elem_size: 1,
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageKind),
}

impl Global {
    /// The whitelist: everything a state dict needs, nothing that runs code.
    fn resolve(module: &str, name: &str) -> std::result::Result<Global, String> {
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
            ("torch", s) => STORAGES
                .iter()
                .find(|k| k.name == s)
                .map(|k| Global::Storage(*k))
                .ok_or_else(|| format!("refusing to import `torch.{}`: not a storage type lmscore knows", clip(s))),
            _ => Err(format!(
                "refusing to import `{}.{}`: a state dict only needs collections.OrderedDict, \
                 torch._utils._rebuild_tensor_v2 / _rebuild_parameter and torch.*Storage (nothing is executed)",
                clip(module),
                clip(name)
            )),
        }
    }
}

#[derive(Debug)]
struct StorageRef {
    kind: StorageKind,
    key: Rc<str>,
    numel: u64,
}

#[derive(Debug)]
struct TensorDesc {
    storage: Rc<StorageRef>,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

/// A pickle value. Lists and dicts live in arenas and are referred to by index, so a memoized container
/// mutated later (SETITEMS after BINPUT) is the same object everywhere, as in Python, and nothing is copied.
/// Only tuples nest by ownership. Debug prints a bounded summary (see `show`).
#[derive(Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Tuple),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorDesc>),
}

/// The deepest tuple nesting accepted; a state dict needs 3. Deeper values are refused where they are
/// built, so nothing that walks a value (printing, dropping) can overflow the stack.
const MAX_DEPTH: u32 = 1000;

/// A tuple: items shared by every copy (DUP, memo), and its nesting depth (1 + that of its deepest item).
#[derive(Clone)]
struct Tuple {
    items: Rc<[Value]>,
    depth: u32,
}

impl std::ops::Deref for Tuple {
    type Target = [Value];
    fn deref(&self) -> &[Value] {
        &self.items
    }
}

impl Drop for Tuple {
    /// Iterative: the default drop recurses once per level of nesting. The nested tuples of a tuple about to
    /// be freed are moved onto a heap stack, so each drop below is shallow.
    fn drop(&mut self) {
        let mut orphans = Vec::new();
        self.release_items(&mut orphans);
        while let Some(mut v) = orphans.pop() {
            if let Value::Tuple(t) = &mut v {
                t.release_items(&mut orphans);
            }
        }
    }
}

impl Tuple {
    /// Move out the tuple items of this tuple if this is its last reference (else dropping it frees nothing).
    fn release_items(&mut self, out: &mut Vec<Value>) {
        if let Some(items) = Rc::get_mut(&mut self.items) {
            for v in items.iter_mut().filter(|v| matches!(v, Value::Tuple(_))) {
                out.push(std::mem::replace(v, Value::None));
            }
        }
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class or function",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// Append a summary of the value to `out`, stopping soon after it reaches SHOW_CHARS: a tuple shared by
    /// DUP or the memo prints as its full expansion, exponentially larger than the pickle.
    fn show(&self, out: &mut String, depth: u32) {
        use std::fmt::Write;
        match self {
            Value::None => out.push_str("None"),
            Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
            Value::Int(i) => write!(out, "{i}").expect("String"),
            Value::Float(x) => write!(out, "{x:?}").expect("String"),
            Value::Str(s) => write!(out, "{:?}", clip(s)).expect("String"),
            Value::Bytes(b) => write!(out, "<{} bytes>", b.len()).expect("String"),
            Value::Tuple(t) if depth == 0 => write!(out, "(<{} items>)", t.len()).expect("String"),
            Value::Tuple(t) => {
                out.push('(');
                for (i, v) in t.iter().enumerate() {
                    if out.len() > SHOW_CHARS {
                        out.push_str("...");
                        break;
                    }
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.show(out, depth - 1);
                }
                out.push_str(if t.len() == 1 { ",)" } else { ")" });
            }
            Value::List(_) => out.push_str("[...]"),
            Value::Dict(_) => out.push_str("{...}"),
            Value::Global(g) => write!(out, "{g:?}").expect("String"),
            Value::Storage(s) => write!(out, "<{} {}>", s.kind.name, s.key).expect("String"),
            Value::Tensor(_) => out.push_str("<tensor>"),
        }
    }
}

/// About how many characters of a value an error message shows.
const SHOW_CHARS: usize = 200;

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.show(&mut s, 4);
        if s.len() > SHOW_CHARS + 50 {
            let cut = (0..=SHOW_CHARS).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            s.truncate(cut);
            s.push_str("...");
        }
        f.write_str(&s)
    }
}

#[derive(Default)]
struct Dict {
    entries: Vec<(Value, Value)>,
    /// String keys -> index into `entries` (state dicts only have string keys).
    by_str: HashMap<Rc<str>, usize>,
    /// The first string key set twice: Python keeps the last value, but in a state dict it hides a tensor.
    repeated: Option<Rc<str>>,
}

type VmResult<T> = std::result::Result<T, String>;

/// The most memory the unpickler may allocate (bytes of values, containers, memo and marks, counted as they
/// are created and never given back) plus the bytes of keys hashed. A state dict needs well under a KB per
/// tensor; hostile pickles (42 MB of empty dicts, floods of DUPs, a huge string hashed again and again as a
/// key) would otherwise take many GB or hours.
const MAX_VM_BYTES: usize = 256 << 20;

/// What one heap allocation costs beyond its bytes (allocator header and rounding, Rc counts), and the
/// factor by which a hash table outgrows its entries: charged so that floods of tiny objects are counted.
const ALLOC: usize = 32;
const TABLE_SLACK: usize = 2;

/// The most dimensions a tensor may have (shapes are printed in messages and walked per tensor).
const MAX_RANK: usize = 64;

/// The longest storage key: torch numbers its storages "0", "1", ...
const MAX_KEY_LEN: usize = 256;

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    lists: Vec<Vec<Value>>,
    dicts: Vec<Dict>,
    /// Bytes charged against MAX_VM_BYTES so far.
    used: usize,
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Vm {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            lists: Vec::new(),
            dicts: Vec::new(),
            used: 0,
        }
    }

    fn charge(&mut self, bytes: usize) -> VmResult<()> {
        self.used = self.used.saturating_add(bytes);
        if self.used > MAX_VM_BYTES {
            return Err(format!(
                "unpickling needs more than {} MiB at byte {}, far more than any state dict; the file is corrupt or hostile",
                MAX_VM_BYTES >> 20,
                self.pos
            ));
        }
        Ok(())
    }

    fn take(&mut self, n: u64, what: &str) -> VmResult<&'a [u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(format!("truncated: {what} at byte {} needs {n} bytes, only {left} left", self.pos));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> VmResult<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> VmResult<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> VmResult<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> VmResult<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    /// A newline-terminated ASCII line (GLOBAL's operands).
    fn line(&mut self, what: &str) -> VmResult<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("truncated: {what} at byte {} has no terminating newline", self.pos))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| format!("{what} at byte {} is not UTF-8", self.pos))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: u64, what: &str) -> VmResult<Value> {
        let at = self.pos;
        let b = self.take(n, what)?;
        let s = std::str::from_utf8(b).map_err(|_| format!("{what} at byte {at} is not valid UTF-8"))?;
        self.charge(ALLOC + b.len())?;
        Ok(Value::Str(s.into()))
    }

    fn push(&mut self, v: Value) -> VmResult<()> {
        self.charge(size_of::<Value>())?;
        self.stack.push(v);
        Ok(())
    }
    /// A new tuple, refused if nested deeper than MAX_DEPTH.
    fn tuple(&mut self, items: Vec<Value>) -> VmResult<()> {
        let depth = 1 + items.iter().map(|v| if let Value::Tuple(t) = v { t.depth } else { 0 }).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!(
                "tuples nested more than {MAX_DEPTH} deep at byte {}; a state dict needs 3",
                self.pos
            ));
        }
        self.charge(ALLOC + items.len() * size_of::<Value>())?;
        self.push(Value::Tuple(Tuple { items: items.into(), depth }))
    }
    fn pop(&mut self, op: &str) -> VmResult<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(format!("{op} at byte {} pops from an empty stack", self.pos));
        }
        Ok(self.stack.pop().expect("non-empty"))
    }
    fn top(&mut self, op: &str) -> VmResult<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(format!("{op} at byte {} needs a value on the stack", self.pos));
        }
        Ok(self.stack.last_mut().expect("non-empty"))
    }
    fn pop_mark(&mut self, op: &str) -> VmResult<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| format!("{op} at byte {} without a MARK", self.pos))?;
        Ok(self.stack.split_off(m))
    }
    fn memo_put(&mut self, idx: u64, op: &str) -> VmResult<()> {
        let v = self.top(op)?.clone();
        self.charge(TABLE_SLACK * size_of::<(u64, Value)>())?;
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u64) -> VmResult<()> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| format!("memo entry {idx} read at byte {} was never stored", self.pos))?;
        self.push(v)
    }
    fn new_dict(&mut self) -> VmResult<Value> {
        self.charge(size_of::<Dict>() + ALLOC)?;
        self.dicts.push(Dict::default());
        Ok(Value::Dict(self.dicts.len() - 1))
    }
    fn new_list(&mut self, items: Vec<Value>) -> VmResult<()> {
        self.charge(size_of::<Vec<Value>>() + ALLOC + items.len() * size_of::<Value>())?;
        self.lists.push(items);
        self.push(Value::List(self.lists.len() - 1))
    }

    fn set_items(&mut self, dict: &Value, items: Vec<Value>, op: &str) -> VmResult<()> {
        let Value::Dict(d) = *dict else {
            return Err(format!("{op} at byte {} on a {}, expected a dict", self.pos, dict.kind()));
        };
        if items.len() % 2 != 0 {
            return Err(format!("{op} at byte {} has an odd number of keys and values", self.pos));
        }
        // An entry's memory, and the work of hashing its key (the same long string can be a key many times).
        let key_bytes: usize = items.iter().step_by(2).map(|k| if let Value::Str(s) = k { s.len() } else { 0 }).sum();
        self.charge(items.len() * TABLE_SLACK * size_of::<Value>() + key_bytes)?;
        let dict = &mut self.dicts[d];
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match &k {
                Value::Str(s) => match dict.by_str.get(s) {
                    Some(&i) => {
                        dict.repeated.get_or_insert_with(|| s.clone());
                        dict.entries[i].1 = v;
                    }
                    None => {
                        dict.by_str.insert(s.clone(), dict.entries.len());
                        dict.entries.push((k, v));
                    }
                },
                Value::Int(_) | Value::Bool(_) | Value::None | Value::Tuple(_) => dict.entries.push((k, v)),
                other => return Err(format!("{op}: a {} cannot be a dict key", other.kind())),
            }
        }
        Ok(())
    }

    fn reduce(&mut self, func: Value, args: Value) -> VmResult<Value> {
        let at = self.pos;
        let Value::Global(g) = func else {
            return Err(format!(
                "REDUCE at byte {at} calls a {}, expected an imported class or function",
                func.kind()
            ));
        };
        let Value::Tuple(args) = args else {
            return Err(format!("REDUCE at byte {at}: arguments are a {}, expected a tuple", args.kind()));
        };
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(format!(
                        "REDUCE at byte {at}: OrderedDict called with {} arguments, expected none",
                        args.len()
                    ));
                }
                self.new_dict()
            }
            Global::RebuildTensorV2 => {
                if args.len() != 6 && args.len() != 7 {
                    return Err(format!(
                        "REDUCE at byte {at}: _rebuild_tensor_v2 called with {} arguments, expected 6 or 7",
                        args.len()
                    ));
                }
                let Value::Storage(storage) = &args[0] else {
                    return Err(format!(
                        "REDUCE at byte {at}: _rebuild_tensor_v2's storage is a {}, expected a persistent storage",
                        args[0].kind()
                    ));
                };
                let offset = non_negative(&args[1], "storage offset", at)?;
                let shape = int_tuple(&args[2], "size", at)?;
                let stride = int_tuple(&args[3], "stride", at)?;
                self.charge(3 * ALLOC + size_of::<TensorDesc>() + 8 * (shape.len() + stride.len()))?;
                Ok(Value::Tensor(Rc::new(TensorDesc {
                    storage: storage.clone(),
                    offset,
                    shape,
                    stride,
                })))
            }
            Global::RebuildParameter => match args.first() {
                Some(t @ Value::Tensor(_)) if args.len() == 3 => Ok(t.clone()),
                _ => Err(format!("REDUCE at byte {at}: _rebuild_parameter expects (tensor, requires_grad, hooks)")),
            },
            Global::Storage(k) => Err(format!(
                "REDUCE at byte {at}: torch.{} may only appear in a persistent id, not be called",
                k.name
            )),
        }
    }

    fn persistent_load(&mut self, pid: Value) -> VmResult<Value> {
        let at = self.pos;
        let bad = || format!("BINPERSID at byte {at}: expected a persistent id ('storage', torch.<Type>Storage, key, location, numel)");
        let Value::Tuple(t) = pid else { return Err(bad()) };
        match &t[..] {
            [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), Value::Str(_location), numel] if &**tag == "storage" => {
                if key.len() > MAX_KEY_LEN {
                    return Err(format!(
                        "BINPERSID at byte {at}: storage key of {} bytes is longer than any torch writes ({MAX_KEY_LEN})",
                        key.len()
                    ));
                }
                if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') || key.contains("..") {
                    return Err(format!("BINPERSID at byte {at}: storage key {key:?} is not a plain name"));
                }
                let numel = non_negative(numel, "storage numel", at)?;
                self.charge(ALLOC + size_of::<StorageRef>())?;
                Ok(Value::Storage(Rc::new(StorageRef {
                    kind: *kind,
                    key: key.clone(),
                    numel,
                })))
            }
            _ => Err(bad()),
        }
    }

    /// Run to STOP; the result must be a dict of name -> tensor.
    fn run(mut self) -> VmResult<Vec<(String, TensorDesc)>> {
        loop {
            let at = self.pos;
            let op = self.u8("opcode")?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8("PROTO")?;
                    if p > 5 {
                        return Err(format!("pickle protocol {p} is newer than any lmscore knows (expected <= 5)"));
                    }
                }
                0x95 => {
                    self.u64("FRAME")?;
                }
                b'.' => {
                    let v = self.pop("STOP")?;
                    return self.finish(v);
                }
                b'(' => {
                    self.charge(size_of::<usize>())?;
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop("POP")?;
                }
                b'1' => {
                    self.pop_mark("POP_MARK")?;
                }
                b'2' => {
                    let v = self.top("DUP")?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32("BININT")? as i32;
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8("BININT1")?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16("BININT2")?;
                    self.push(Value::Int(v as i64))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8("LONG1")? as u64
                    } else {
                        self.u32("LONG4")? as u64
                    };
                    let b = self.take(n, "LONG")?;
                    if n > 8 {
                        return Err(format!("integer of {n} bytes at byte {at} does not fit in 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n as usize - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // sign-extend
                    }
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    let b = self.take(8, "BINFLOAT")?;
                    self.push(Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))))?;
                }
                b'X' => {
                    let n = self.u32("BINUNICODE")? as u64;
                    let v = self.utf8(n, "BINUNICODE")?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.u8("SHORT_BINUNICODE")? as u64;
                    let v = self.utf8(n, "SHORT_BINUNICODE")?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.u64("BINUNICODE8")?;
                    let v = self.utf8(n, "BINUNICODE8")?;
                    self.push(v)?;
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING: Python 2 str, read as text.
                    let n = if op == b'T' {
                        self.u32("BINSTRING")? as u64
                    } else {
                        self.u8("SHORT_BINSTRING")? as u64
                    };
                    let v = self.utf8(n, "BINSTRING")?;
                    self.push(v)?;
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32("BINBYTES")? as u64,
                        b'C' => self.u8("SHORT_BINBYTES")? as u64,
                        _ => self.u64("BINBYTES8")?,
                    };
                    let b = self.take(n, "BINBYTES")?;
                    self.charge(ALLOC + b.len())?;
                    self.push(Value::Bytes(b.into()))?;
                }
                b')' => self.tuple(Vec::new())?,
                b't' => {
                    let items = self.pop_mark("TUPLE")?;
                    self.tuple(items)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop("TUPLEn")?);
                    }
                    items.reverse();
                    self.tuple(items)?;
                }
                b']' => self.new_list(Vec::new())?,
                b'l' => {
                    let items = self.pop_mark("LIST")?;
                    self.new_list(items)?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop("APPEND")?]
                    } else {
                        self.pop_mark("APPENDS")?
                    };
                    self.charge(items.len() * size_of::<Value>())?;
                    match *self.top("APPEND")? {
                        Value::List(l) => self.lists[l].extend(items),
                        ref other => return Err(format!("APPEND at byte {at} on a {}, expected a list", other.kind())),
                    }
                }
                b'}' => {
                    let d = self.new_dict()?;
                    self.push(d)?;
                }
                b'd' => {
                    let items = self.pop_mark("DICT")?;
                    let d = self.new_dict()?;
                    self.set_items(&d, items, "DICT")?;
                    self.push(d)?;
                }
                b's' => {
                    let v = self.pop("SETITEM")?;
                    let k = self.pop("SETITEM")?;
                    let d = self.top("SETITEM")?.clone();
                    self.set_items(&d, vec![k, v], "SETITEM")?;
                }
                b'u' => {
                    let items = self.pop_mark("SETITEMS")?;
                    let d = self.top("SETITEMS")?.clone();
                    self.set_items(&d, items, "SETITEMS")?;
                }
                b'q' => {
                    let i = self.u8("BINPUT")? as u64;
                    self.memo_put(i, "BINPUT")?;
                }
                b'r' => {
                    let i = self.u32("LONG_BINPUT")? as u64;
                    self.memo_put(i, "LONG_BINPUT")?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i, "MEMOIZE")?;
                }
                b'h' => {
                    let i = self.u8("BINGET")? as u64;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32("LONG_BINGET")? as u64;
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = self.line("GLOBAL module")?;
                    let name = self.line("GLOBAL name")?;
                    let g = Global::resolve(module, name).map_err(|e| format!("GLOBAL at byte {at}: {e}"))?;
                    self.push(Value::Global(g))?;
                }
                0x93 => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(format!("STACK_GLOBAL at byte {at} expects two strings"));
                    };
                    let g = Global::resolve(&module, &name).map_err(|e| format!("STACK_GLOBAL at byte {at}: {e}"))?;
                    self.push(Value::Global(g))?;
                }
                b'R' => {
                    let args = self.pop("REDUCE")?;
                    let func = self.pop("REDUCE")?;
                    let v = self.reduce(func, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD: object state. The state dict's `_metadata` and tensor/parameter attributes carry
                    // nothing lmscore needs; accept them on dicts and tensors only.
                    let state = self.pop("BUILD")?;
                    match self.top("BUILD")? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => return Err(format!("BUILD at byte {at} on a {}, expected a dict or tensor", other.kind())),
                    }
                    drop(state);
                }
                b'Q' => {
                    let pid = self.pop("BINPERSID")?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} ({:?}) at byte {at}; lmscore reads only what torch.save writes for a state dict",
                        other as char
                    ))
                }
            }
        }
    }

    fn finish(self, v: Value) -> VmResult<Vec<(String, TensorDesc)>> {
        let Value::Dict(d) = v else {
            return Err(format!(
                "the pickle holds a {}, expected a state dict (a dict of name -> tensor)",
                v.kind()
            ));
        };
        let mut dicts = self.dicts;
        if let Some(name) = &dicts[d].repeated {
            return Err(format!("the state dict lists tensor `{}` twice", clip(name)));
        }
        let entries = std::mem::take(&mut dicts[d].entries);
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let Value::Str(name) = k else {
                return Err(format!("state dict has a {} key, expected tensor names", k.kind()));
            };
            let Value::Tensor(t) = v else {
                return Err(format!(
                    "state dict entry `{}` is a {}, expected a tensor (is this a full training checkpoint rather than a state dict?)",
                    clip(&name),
                    v.kind()
                ));
            };
            let t = Rc::try_unwrap(t).unwrap_or_else(|rc| TensorDesc {
                storage: rc.storage.clone(),
                offset: rc.offset,
                shape: rc.shape.clone(),
                stride: rc.stride.clone(),
            });
            out.push((name.to_string(), t));
        }
        Ok(out)
    }
}

fn non_negative(v: &Value, what: &str, at: usize) -> VmResult<u64> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        other => Err(format!("at byte {at}: {what} is {other:?}, expected a non-negative integer")),
    }
}

fn int_tuple(v: &Value, what: &str, at: usize) -> VmResult<Vec<u64>> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| non_negative(x, what, at)).collect(),
        other => Err(format!("at byte {at}: {what} is a {}, expected a tuple of integers", other.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity() {
        assert!(check_contiguous(&[2, 3], &[3, 1]).is_ok());
        assert!(check_contiguous(&[2, 3], &[1, 2]).is_err());
        assert!(check_contiguous(&[1, 3], &[99, 1]).is_ok());
        assert!(check_contiguous(&[], &[]).is_ok());
    }

    #[test]
    fn crc32_known_answers() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        // Every short length against the bytewise definition.
        let data: Vec<u8> = (0..100u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..data.len() {
            let mut c = !0u32;
            for &b in &data[..n] {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
                }
            }
            assert_eq!(crc32(&data[..n]), !c, "length {n}");
        }
        // Over several 16 MiB chunks joined in parallel, against one sequential hasher.
        let big: Vec<u8> = (0..(40u32 << 20) + 12345).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut one = crc32fast::Hasher::new();
        one.update(&big);
        assert_eq!(crc32(&big), one.finalize());
    }

    /// A value nested a million deep, built past the VM's depth check: dropping and printing it must not
    /// recurse per level (run on a small stack, where that would overflow).
    #[test]
    fn deep_values_drop_and_print_without_recursion() {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let mut v = Value::None;
                for _ in 0..1_000_000 {
                    v = Value::Tuple(Tuple {
                        items: Rc::from(vec![v.clone(), v]),
                        depth: 0,
                    });
                }
                assert!(format!("{v:?}").len() < 300);
                drop(v);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn long1_sign() {
        let data = b"\x80\x02\x8a\x01\xff.";
        let err = Vm::new(data).run().unwrap_err();
        assert!(err.contains("holds a int"), "{err}");
    }
}
