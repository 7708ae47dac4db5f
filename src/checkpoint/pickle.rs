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
//! Tensors must be contiguous row-major views of their storage (what `save_pretrained` writes).
//! F16, BF16, F32 and U8 tensors carry their bytes; other storage types (I64 step counters, bool masks)
//! come back as [`DType::Other`] with no bytes, so the checkpoint loader reports them only if they are
//! asked for as weights.

use super::{DType, HostTensor};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::rc::Rc;

/// All tensors of a state dict, by their state-dict names, in the order the file lists them.
pub fn load_state_dict(path: &Path) -> Result<Vec<HostTensor>> {
    let file = crate::error::open_regular(path)?;
    // SAFETY: the file is opened read-only and not modified while lmscore runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    load_from_bytes(path, &map)
}

/// Same as [`load_state_dict`] on bytes already in memory; `path` only names the file in errors.
pub fn load_from_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<HostTensor>> {
    Ok(index_state_dict(path, bytes)?.into_iter().map(|e| e.read(bytes)).collect())
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
}

impl TensorEntry {
    /// The tensor's little-endian bytes out of the whole file's `bytes`.
    pub fn read(&self, bytes: &[u8]) -> HostTensor {
        let mut b = bytes[self.start..self.end].to_vec();
        if self.swap > 1 {
            b.chunks_exact_mut(self.swap).for_each(|c| c.reverse());
        }
        HostTensor {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            bytes: b,
        }
    }
}

/// Parse the state dict's pickle and locate every tensor's bytes, validating shapes, strides and storage
/// sizes, without copying any tensor data.
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
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Error::file(path, format!("not a readable zip archive ({e}); is it truncated or corrupt?")))?;
    let pkl_names: Vec<String> = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(str::to_string)
        .collect();
    let pkl_name = match pkl_names.as_slice() {
        [one] => one.clone(),
        [] => return Err(Error::file(path, "zip archive holds no data.pkl: not a torch.save checkpoint")),
        many => {
            return Err(Error::file(
                path,
                format!("zip archive holds {} data.pkl files ({}), expected one", many.len(), many.join(", ")),
            ))
        }
    };
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let big_endian = match stored_entry(path, bytes, &mut zip, &format!("{prefix}byteorder"))? {
        None => false,
        Some(b) => match std::str::from_utf8(b).map(str::trim) {
            Ok("little") => false,
            Ok("big") => true,
            _ => {
                return Err(Error::file(
                    path,
                    format!("{prefix}byteorder holds {:?}, expected \"little\" or \"big\"", String::from_utf8_lossy(b)),
                ))
            }
        },
    };
    let pkl = stored_entry(path, bytes, &mut zip, &pkl_name)?.ok_or_else(|| Error::file(path, format!("{pkl_name} is missing")))?;
    let entries = Vm::new(pkl).run().map_err(|msg| Error::file(path, format!("{pkl_name}: {msg}")))?;

    let mut storages: HashMap<Rc<str>, &[u8]> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let bad = |msg: String| Error::file(path, format!("tensor `{name}`: {msg}"));
        let st = &t.storage;
        let es = st.kind.elem_size as u64;
        let data = match storages.get(&st.key) {
            Some(d) => *d,
            None => {
                let file = format!("{prefix}data/{}", st.key);
                let d =
                    stored_entry(path, bytes, &mut zip, &file)?.ok_or_else(|| bad(format!("its storage file {file} is missing from the archive")))?;
                let declared = st
                    .numel
                    .checked_mul(es)
                    .ok_or_else(|| bad(format!("storage {} declares an impossible size", st.key)))?;
                if (d.len() as u64) < declared {
                    return Err(bad(format!(
                        "storage {file} holds {} bytes, but data.pkl declares {} elements of {} bytes ({}); is the file truncated?",
                        d.len(),
                        st.numel,
                        es,
                        st.kind.name
                    )));
                }
                storages.insert(st.key.clone(), d);
                d
            }
        };
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
        // Offset of the storage within the file: `data` is a sub-slice of `bytes`.
        let base = data.as_ptr() as usize - bytes.as_ptr() as usize;
        let (start, end) = if st.kind.dtype == DType::Other {
            (0, 0)
        } else {
            (base + (t.offset * es) as usize, base + (end * es) as usize)
        };
        out.push(TensorEntry {
            name,
            dtype: st.kind.dtype,
            shape,
            start,
            end,
            swap: if big_endian { es as usize } else { 1 },
        });
    }
    Ok(out)
}

/// The bytes of one uncompressed zip entry, straight from the archive; None if there is no such entry.
fn stored_entry<'a>(path: &Path, bytes: &'a [u8], zip: &mut zip::ZipArchive<Cursor<&'a [u8]>>, name: &str) -> Result<Option<&'a [u8]>> {
    let Some(i) = zip.index_for_name(name) else { return Ok(None) };
    let f = zip
        .by_index_raw(i)
        .map_err(|e| Error::file(path, format!("zip entry {name} is unreadable ({e}); is the file truncated?")))?;
    if f.compression() != zip::CompressionMethod::Stored || f.encrypted() {
        return Err(Error::file(
            path,
            format!("zip entry {name} is compressed or encrypted; torch.save writes stored (uncompressed) entries"),
        ));
    }
    let start = f.data_start();
    let end = start
        .checked_add(f.size())
        .filter(|&e| e <= bytes.len() as u64 && f.compressed_size() == f.size());
    match end {
        Some(end) => Ok(Some(&bytes[start as usize..end as usize])),
        None => Err(Error::file(
            path,
            format!(
                "zip entry {name} ({} bytes at offset {start}) runs past the end of the file; is it truncated?",
                f.size()
            ),
        )),
    }
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
                .ok_or_else(|| format!("refusing to import `torch.{s}`: not a storage type lmscore knows")),
            _ => Err(format!(
                "refusing to import `{module}.{name}`: a state dict only needs collections.OrderedDict, \
                 torch._utils._rebuild_tensor_v2 / _rebuild_parameter and torch.*Storage (nothing is executed)"
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
#[derive(Clone, Debug)]
#[allow(dead_code)] // payloads of Bool/Float/Bytes are only shown through Debug in error messages
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorDesc>),
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
}

#[derive(Default)]
struct Dict {
    entries: Vec<(Value, Value)>,
    /// String keys -> index into `entries` (state dicts only have string keys).
    by_str: HashMap<Rc<str>, usize>,
}

type VmResult<T> = std::result::Result<T, String>;

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    lists: Vec<Vec<Value>>,
    dicts: Vec<Dict>,
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
        }
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
        Ok(Value::Str(s.into()))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
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
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u64) -> VmResult<()> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| format!("memo entry {idx} read at byte {} was never stored", self.pos))?;
        self.push(v);
        Ok(())
    }

    fn set_items(&mut self, dict: &Value, items: Vec<Value>, op: &str) -> VmResult<()> {
        let Value::Dict(d) = *dict else {
            return Err(format!("{op} at byte {} on a {}, expected a dict", self.pos, dict.kind()));
        };
        if items.len() % 2 != 0 {
            return Err(format!("{op} at byte {} has an odd number of keys and values", self.pos));
        }
        let dict = &mut self.dicts[d];
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match &k {
                Value::Str(s) => match dict.by_str.get(s) {
                    Some(&i) => dict.entries[i].1 = v,
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
                self.dicts.push(Dict::default());
                Ok(Value::Dict(self.dicts.len() - 1))
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
                if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') || key.contains("..") {
                    return Err(format!("BINPERSID at byte {at}: storage key {key:?} is not a plain name"));
                }
                let numel = non_negative(numel, "storage numel", at)?;
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
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop("POP")?;
                }
                b'1' => {
                    self.pop_mark("POP_MARK")?;
                }
                b'2' => {
                    let v = self.top("DUP")?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32("BININT")? as i32;
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8("BININT1")?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16("BININT2")?;
                    self.push(Value::Int(v as i64));
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
                    self.push(Value::Int(v));
                }
                b'G' => {
                    let b = self.take(8, "BINFLOAT")?;
                    self.push(Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))));
                }
                b'X' => {
                    let n = self.u32("BINUNICODE")? as u64;
                    let v = self.utf8(n, "BINUNICODE")?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.u8("SHORT_BINUNICODE")? as u64;
                    let v = self.utf8(n, "SHORT_BINUNICODE")?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.u64("BINUNICODE8")?;
                    let v = self.utf8(n, "BINUNICODE8")?;
                    self.push(v);
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING: Python 2 str, read as text.
                    let n = if op == b'T' {
                        self.u32("BINSTRING")? as u64
                    } else {
                        self.u8("SHORT_BINSTRING")? as u64
                    };
                    let v = self.utf8(n, "BINSTRING")?;
                    self.push(v);
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32("BINBYTES")? as u64,
                        b'C' => self.u8("SHORT_BINBYTES")? as u64,
                        _ => self.u64("BINBYTES8")?,
                    };
                    let b = self.take(n, "BINBYTES")?;
                    self.push(Value::Bytes(b.into()));
                }
                b')' => self.push(Value::Tuple(Rc::from(Vec::new()))),
                b't' => {
                    let items = self.pop_mark("TUPLE")?;
                    self.push(Value::Tuple(items.into()));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop("TUPLEn")?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items.into()));
                }
                b']' => {
                    self.lists.push(Vec::new());
                    self.push(Value::List(self.lists.len() - 1));
                }
                b'l' => {
                    let items = self.pop_mark("LIST")?;
                    self.lists.push(items);
                    self.push(Value::List(self.lists.len() - 1));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop("APPEND")?]
                    } else {
                        self.pop_mark("APPENDS")?
                    };
                    match *self.top("APPEND")? {
                        Value::List(l) => self.lists[l].extend(items),
                        ref other => return Err(format!("APPEND at byte {at} on a {}, expected a list", other.kind())),
                    }
                }
                b'}' => {
                    self.dicts.push(Dict::default());
                    self.push(Value::Dict(self.dicts.len() - 1));
                }
                b'd' => {
                    let items = self.pop_mark("DICT")?;
                    self.dicts.push(Dict::default());
                    let d = Value::Dict(self.dicts.len() - 1);
                    self.set_items(&d, items, "DICT")?;
                    self.push(d);
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
                    self.push(Value::Global(g));
                }
                0x93 => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(format!("STACK_GLOBAL at byte {at} expects two strings"));
                    };
                    let g = Global::resolve(&module, &name).map_err(|e| format!("STACK_GLOBAL at byte {at}: {e}"))?;
                    self.push(Value::Global(g));
                }
                b'R' => {
                    let args = self.pop("REDUCE")?;
                    let func = self.pop("REDUCE")?;
                    let v = self.reduce(func, args)?;
                    self.push(v);
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
                    self.push(v);
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
        let entries = std::mem::take(&mut dicts[d].entries);
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let Value::Str(name) = k else {
                return Err(format!("state dict has a {} key, expected tensor names", k.kind()));
            };
            let Value::Tensor(t) = v else {
                return Err(format!(
                    "state dict entry `{name}` is a {}, expected a tensor (is this a full training checkpoint rather than a state dict?)",
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
        other => Err(format!("REDUCE at byte {at}: {what} is {other:?}, expected a non-negative integer")),
    }
}

fn int_tuple(v: &Value, what: &str, at: usize) -> VmResult<Vec<u64>> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| non_negative(x, what, at)).collect(),
        other => Err(format!("REDUCE at byte {at}: {what} is a {}, expected a tuple of integers", other.kind())),
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
    fn long1_sign() {
        let data = b"\x80\x02\x8a\x01\xff.";
        let err = Vm::new(data).run().unwrap_err();
        assert!(err.contains("holds a int"), "{err}");
    }
}
