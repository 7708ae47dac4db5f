//! "Never a silent wrong number": a damaged or hostile checkpoint is an error naming the file (and tensor),
//! never a score from the wrong bytes, a panic, a signal, or a run out of memory or time.
//!
//! - `.bin` zip integrity: CRC-32 of every member read, local headers against the central directory,
//!   duplicate and overlapping members;
//! - hostile `data.pkl` through the CLI in a child process bounded to 1 GiB of address space and 10 s:
//!   exponential DUP-shared values in messages, deep nesting, memory and work floods;
//! - tensors listed twice or in the wrong place: sharded indexes, safetensors headers, state dicts.

mod common;

use common::model_files::{copy_model, fixture_model as fixture, loglikelihood_command, zip_bytes};
use lmscore::checkpoint::{load_pickle_state_dict, Checkpoint};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The error of opening `dir` and reading every float tensor it holds (CRCs are checked on read).
fn open_and_read_all(dir: &Path) -> Result<(), String> {
    let ck = Checkpoint::open(dir).map_err(|e| e.to_string())?;
    let names: Vec<String> = ck.tensor_names().map(String::from).collect();
    assert!(names.len() > 10, "{}", dir.display());
    for name in names {
        match ck.tensor(&name) {
            Err(e) if e.to_string().contains("dtype lmscore cannot read") => {} // I64 buffers: no bytes read
            r => drop(r.map_err(|e| e.to_string())?),
        }
    }
    Ok(())
}

const GOOD_ROW: &str = r#"{"id": "a", "context_ids": [1, 2, 3], "continuation_ids": [4, 5]}"#;

/// `lmscore loglikelihood` on `model` in a child limited to 1 GiB of address space, killed after 10 s.
/// Asserts it ended by itself with an exit code (no signal, so no stack overflow or failed allocation),
/// printed no panic and a bounded stderr; returns (success, stderr).
fn score_bounded(model: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, GOOD_ROW).unwrap();
    let stderr_path = dir.path().join("stderr");
    let started = Instant::now();
    // A file, not a pipe, for stderr: a message of gigabytes must not block the child.
    let mut child = loglikelihood_command("ulimit -v 1048576", model, &input, &dir.path().join("out.jsonl"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("lmscore ran for more than 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let len = std::fs::metadata(&stderr_path).unwrap().len();
    let mut head = vec![0u8; len.min(4096) as usize];
    std::io::Read::read_exact(&mut std::fs::File::open(&stderr_path).unwrap(), &mut head).unwrap();
    let stderr = String::from_utf8_lossy(&head).to_string();
    assert!(status.code().is_some(), "lmscore was killed by a signal ({status:?}); stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "lmscore panicked:\n{stderr}");
    assert!(len < 16 << 10, "stderr is {len} bytes; it starts:\n{stderr}");
    (status.success(), stderr)
}

/// A model directory: neox-hd64-bin's config.json and `bin` as its pytorch_model.bin.
fn model_with_bin(bin: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("neox-hd64-bin").join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), bin).unwrap();
    dir
}

fn expect_cli_error(bin: &[u8], needles: &[&str]) {
    let dir = model_with_bin(bin);
    let (ok, stderr) = score_bounded(dir.path());
    assert!(!ok, "expected failure, got success; stderr:\n{stderr}");
    for n in ["pytorch_model.bin"].iter().chain(needles) {
        assert!(stderr.contains(n), "error should mention {n:?}; got:\n{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Building and patching zips and pickles

fn le16(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}
fn le32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}
fn put32(b: &mut [u8], at: usize, v: usize) {
    b[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
}

/// Offset of the central-directory record of member `name`.
fn central(zip: &[u8], name: &str) -> usize {
    let eocd = (0..zip.len() - 21).rev().find(|&i| zip[i..i + 4] == *b"PK\x05\x06").unwrap();
    let mut at = le32(zip, eocd + 16);
    for _ in 0..le16(zip, eocd + 10) {
        let n = le16(zip, at + 28);
        if &zip[at + 46..at + 46 + n] == name.as_bytes() {
            return at;
        }
        at += 46 + n + le16(zip, at + 30) + le16(zip, at + 32);
    }
    panic!("no member {name}");
}

/// Offset of the local header of member `name`.
fn local(zip: &[u8], name: &str) -> usize {
    le32(zip, central(zip, name) + 42)
}

/// Byte range of member `name`'s data.
fn data_range(zip: &[u8], name: &str) -> std::ops::Range<usize> {
    let h = local(zip, name);
    let start = h + 30 + le16(zip, h + 26) + le16(zip, h + 28);
    start..start + le32(zip, central(zip, name) + 24)
}

fn unicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

/// The persistent id of a 6-element HalfStorage `key`, then BINPERSID.
fn storage(key: &str) -> Vec<u8> {
    let mut p = b"(".to_vec();
    p.extend(unicode("storage"));
    p.extend(b"ctorch\nHalfStorage\n");
    p.extend(unicode(key));
    p.extend(unicode("cpu"));
    p.extend(b"K\x06tQ");
    p
}

/// `_rebuild_tensor_v2(storage(key), <offset>, (2, 3), (3, 1), False, None)` with the offset's pickle given.
fn tensor_with_offset(key: &str, offset: &[u8]) -> Vec<u8> {
    let mut p = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    p.extend(storage(key));
    p.extend(offset);
    p.extend(b"K\x02K\x03\x86K\x03K\x01\x86\x89NtR");
    p
}

/// A protocol-2 pickle of an OrderedDict of [2, 3] f16 tensors: (name, pickled tensor).
fn state_dict(tensors: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    for (name, t) in tensors {
        p.extend(unicode(name));
        p.extend(t);
    }
    p.extend(b"u.");
    p
}

fn tensor(key: &str) -> Vec<u8> {
    tensor_with_offset(key, b"K\x00")
}

const HALVES: [u8; 12] = [0x00, 0x3c, 0x00, 0x40, 0x00, 0x42, 0x00, 0x44, 0x00, 0x45, 0x00, 0x46]; // 1..6
const OTHER_HALVES: [u8; 12] = [0xbc; 12]; // -1.18 six times

/// Two tensors `a` (storage 0) and `b` (storage 1) with different values.
fn two_tensor_zip() -> Vec<u8> {
    let pkl = state_dict(&[("a", tensor("0")), ("b", tensor("1"))]);
    zip_bytes(&[
        ("archive/data.pkl", &pkl),
        ("archive/byteorder", b"little"),
        ("archive/data/0", &HALVES),
        ("archive/data/1", &OTHER_HALVES),
        ("archive/version", b"3\n"),
    ])
}

fn err_of(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let e = load_pickle_state_dict(&p).expect_err("must be refused").to_string();
    assert!(e.contains(name), "error does not name the file: {e}");
    e
}

// ---------------------------------------------------------------------------------------------------
// Zip integrity

#[test]
fn handmade_two_tensor_zip_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ok.bin");
    std::fs::write(&p, two_tensor_zip()).unwrap();
    let ts = load_pickle_state_dict(&p).unwrap();
    assert_eq!(ts[0].to_f32().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(ts[1].bytes, OTHER_HALVES);
}

/// A zeroed region inside a storage of a real torch file scored a different number with exit 0.
#[test]
fn zeroed_storage_region_fails_its_crc() {
    let dir = copy_model("neox-hd64-bin");
    let path = dir.path().join("pytorch_model.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    // The largest storage: the embedding or the unembedding, used by every score.
    let names: Vec<String> = zip::ZipArchive::new(std::io::Cursor::new(&bytes))
        .unwrap()
        .file_names()
        .map(String::from)
        .collect();
    let biggest = names
        .iter()
        .filter(|n| n.contains("/data/"))
        .max_by_key(|n| data_range(&bytes, n).len())
        .unwrap()
        .clone();
    let r = data_range(&bytes, &biggest);
    let mid = r.start + r.len() / 2;
    bytes[mid..mid + 256].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let e = open_and_read_all(dir.path()).expect_err("a corrupt storage must not be read");
    assert!(e.contains("pytorch_model.bin") && e.contains(&biggest) && e.contains("CRC"), "{e}");
    let (ok, stderr) = score_bounded(dir.path());
    assert!(!ok && stderr.contains("pytorch_model.bin") && stderr.contains("CRC"), "{stderr}");
}

/// data.pkl itself is checked before it is run: an edited tensor name is not read back as the new name.
#[test]
fn edited_data_pkl_fails_its_crc() {
    let mut bytes = two_tensor_zip();
    let r = data_range(&bytes, "archive/data.pkl");
    let at = r.start + bytes[r.clone()].windows(6).position(|w| w == b"X\x01\x00\x00\x00b").unwrap();
    bytes[at + 5] = b'c';
    let e = err_of("pkl.bin", &bytes);
    assert!(e.contains("archive/data.pkl") && e.contains("CRC"), "{e}");
}

/// A central-directory entry pointing at another member's local header (with that member's CRC, so only
/// the name can tell): `b` would silently read `a`'s values.
#[test]
fn central_entry_pointing_at_another_members_header_is_refused() {
    let mut bytes = two_tensor_zip();
    let (c1, c0) = (central(&bytes, "archive/data/1"), central(&bytes, "archive/data/0"));
    let (off0, crc0) = (le32(&bytes, c0 + 42), le32(&bytes, c0 + 16));
    put32(&mut bytes, c1 + 42, off0);
    put32(&mut bytes, c1 + 16, crc0);
    let e = err_of("alias.bin", &bytes);
    assert!(
        e.contains("archive/data/1") && e.contains("local header") && e.contains("archive/data/0"),
        "{e}"
    );
}

#[test]
fn local_header_disagreeing_with_the_central_directory_is_refused() {
    let good = two_tensor_zip();
    let h = local(&good, "archive/data/1");
    // Signature.
    let mut bytes = good.clone();
    bytes[h] = b'X';
    let e = err_of("sig.bin", &bytes);
    assert!(e.contains("archive/data/1"), "{e}");
    // Compression method: the local header says deflate.
    let mut bytes = good.clone();
    bytes[h + 8] = 8;
    let e = err_of("method.bin", &bytes);
    assert!(e.contains("archive/data/1") && e.contains("local header"), "{e}");
    // Sizes.
    for field in [18, 22] {
        let mut bytes = good.clone();
        put32(&mut bytes, h + field, 10);
        let e = err_of("size.bin", &bytes);
        assert!(e.contains("archive/data/1") && e.contains("local header"), "field {field}: {e}");
    }
    // CRC.
    let mut bytes = good.clone();
    bytes[h + 14] ^= 1;
    let e = err_of("crc.bin", &bytes);
    assert!(e.contains("archive/data/1") && e.contains("local header"), "{e}");
}

/// A compressed member is refused when it is used, and ignored when it is not (as before).
#[test]
fn compressed_members_are_refused_only_when_used() {
    let good = two_tensor_zip();
    let deflated = |name: &str| {
        let mut bytes = good.clone();
        for at in [central(&bytes, name) + 10, local(&bytes, name) + 8] {
            bytes[at] = 8;
        }
        bytes
    };
    let e = err_of("deflated.bin", &deflated("archive/data/1"));
    assert!(e.contains("archive/data/1") && e.contains("compressed"), "{e}");
    let e = err_of("deflated.bin", &deflated("archive/data.pkl"));
    assert!(e.contains("archive/data.pkl") && e.contains("compressed"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("unused.bin");
    std::fs::write(&p, deflated("archive/version")).unwrap();
    assert_eq!(load_pickle_state_dict(&p).unwrap().len(), 2);
}

/// Two members of one name: which one a reader takes is arbitrary, so neither is taken.
#[test]
fn member_listed_twice_is_refused() {
    let mut bytes = two_tensor_zip();
    for at in [central(&bytes, "archive/data/1") + 46, local(&bytes, "archive/data/1") + 30] {
        bytes[at + "archive/data/".len()] = b'0';
    }
    let e = err_of("twice.bin", &bytes);
    assert!(e.contains("archive/data/0") && e.contains("twice"), "{e}");
}

/// A member whose (consistently enlarged) size runs into the next member's header.
#[test]
fn overlapping_members_are_refused() {
    let mut bytes = two_tensor_zip();
    let (c, h) = (central(&bytes, "archive/data/0"), local(&bytes, "archive/data/0"));
    for at in [c + 20, c + 24, h + 18, h + 22] {
        put32(&mut bytes, at, 40);
    }
    let e = err_of("overlap.bin", &bytes);
    assert!(e.contains("archive/data/0") && e.contains("overlap"), "{e}");
}

/// Two tensors naming one storage with different types would reinterpret its bytes (torch keeps the first).
#[test]
fn storage_declared_with_two_types_is_refused() {
    let half = tensor("0");
    let at = half.windows(11).position(|w| w == b"HalfStorage").unwrap();
    let float = [&half[..at], b"FloatStorage", &half[at + 11..]].concat();
    let pkl = state_dict(&[("a", tensor("0")), ("b", float)]);
    let e = err_of("twotypes.bin", &zip_bytes(&[("archive/data.pkl", &pkl), ("archive/data/0", &[0; 24])]));
    assert!(e.contains("`b`") && e.contains("storage 0"), "{e}");
}

// ---------------------------------------------------------------------------------------------------
// Hostile data.pkl through the CLI

fn bin_of(pkl: &[u8]) -> Vec<u8> {
    zip_bytes(&[("archive/data.pkl", pkl), ("archive/data/0", &HALVES)])
}

/// t = None; 40 times t = (t, t): 200 bytes whose value printed in full is 2^40 `None`s.
#[test]
fn dup_shared_tuples_in_a_message_are_bounded() {
    let mut dag = b"N".to_vec();
    for _ in 0..40 {
        dag.extend(b"2\x86");
    }
    let pkl = state_dict(&[("w", tensor_with_offset("0", &dag))]);
    assert!(pkl.len() < 300);
    expect_cli_error(&bin_of(&pkl), &["storage offset"]);
    // The same through the library, and as a storage's numel.
    let e = err_of("dag.bin", &bin_of(&pkl));
    assert!(e.len() < 1000 && e.contains("..."), "{e}");
    let mut pid = b"(".to_vec();
    pid.extend(unicode("storage"));
    pid.extend(b"ctorch\nHalfStorage\n");
    pid.extend(unicode("0"));
    pid.extend(unicode("cpu"));
    pid.extend(&dag);
    pid.extend(b"tQ.");
    let e = err_of("dagnumel.bin", &bin_of(&[b"\x80\x02".as_slice(), &pid].concat()));
    assert!(e.len() < 1000 && e.contains("numel"), "{e}");
}

fn deep_tuple(depth: usize) -> Vec<u8> {
    let mut p = b"N".to_vec();
    p.resize(1 + depth, 0x85); // TUPLE1
    p
}

/// 1M nested TUPLE1s (1 MB) overflowed the stack when the value was dropped.
#[test]
fn deeply_nested_tuples_are_refused_without_overflow() {
    let pkl = [b"\x80\x02".as_slice(), &deep_tuple(1_000_000), b"."].concat();
    expect_cli_error(&bin_of(&pkl), &["nested"]);
    // 100k deep as a storage offset overflowed the stack when printed.
    let pkl = state_dict(&[("w", tensor_with_offset("0", &deep_tuple(100_000)))]);
    expect_cli_error(&bin_of(&pkl), &["nested"]);
}

/// 42 MB of empty dicts needed > 6 GB; a flood of DUPs of one value, ~1 GB per 40 MB.
#[test]
fn object_floods_are_refused_within_bounded_memory() {
    let mut pkl = b"\x80\x02".to_vec();
    pkl.resize(42 << 20, b'}');
    pkl.push(b'.');
    expect_cli_error(&bin_of(&pkl), &["data.pkl", "MiB"]);
    let mut pkl = b"\x80\x02N".to_vec();
    pkl.resize(42 << 20, b'2');
    pkl.push(b'.');
    expect_cli_error(&bin_of(&pkl), &["data.pkl", "MiB"]);
}

/// A 16 MB string memoized once and used again and again: as a dict key (hashed each time) or as a
/// storage key (scanned each time) it is a few bytes of pickle per 16 MB of work.
#[test]
fn repeated_work_on_one_big_value_is_bounded() {
    let big = "a".repeat(16 << 20);
    let mut pkl = b"\x80\x02".to_vec();
    pkl.extend(unicode(&big));
    pkl.extend(b"q\x00}");
    for _ in 0..250_000 {
        pkl.extend(b"h\x00Ns");
    }
    pkl.push(b'.');
    expect_cli_error(&bin_of(&pkl), &["data.pkl"]);

    let mut pkl = b"\x80\x02(".to_vec();
    pkl.extend(unicode("storage"));
    pkl.extend(b"ctorch\nHalfStorage\n");
    pkl.extend(unicode(&big));
    pkl.extend(unicode("cpu"));
    pkl.extend(b"K\x06tq\x01");
    for _ in 0..250_000 {
        pkl.extend(b"h\x01Q0");
    }
    pkl.extend(b"}.");
    expect_cli_error(&bin_of(&pkl), &["data.pkl", "storage key"]);
}

/// A 100k-element tuple memoized and used as a tensor's size: ranks are bounded, so are the messages
/// that print shapes.
#[test]
fn huge_rank_is_refused() {
    let mut ones = b"(".to_vec();
    for _ in 0..100_000 {
        ones.extend(b"K\x01");
    }
    ones.extend(b"t");
    let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    p.extend(unicode("w"));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend(storage("0"));
    p.extend(b"K\x00");
    p.extend(&ones);
    p.extend(b"q\x09h\x09\x89NtRu.");
    let e = err_of("rank.bin", &bin_of(&p));
    assert!(e.len() < 1000 && e.contains("`w`") && e.contains("rank"), "{e}");
}

// ---------------------------------------------------------------------------------------------------
// Tensors listed twice or in the wrong place

#[test]
fn tensor_twice_in_one_state_dict_is_refused() {
    let pkl = state_dict(&[("a", tensor("0")), ("a", tensor("1"))]);
    let bytes = zip_bytes(&[("archive/data.pkl", &pkl), ("archive/data/0", &HALVES), ("archive/data/1", &OTHER_HALVES)]);
    let e = err_of("dup.bin", &bytes);
    assert!(e.contains("`a`") && e.contains("twice"), "{e}");
}

#[test]
fn tensor_twice_in_one_safetensors_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("neox-seq").join("config.json"), dir.path().join("config.json")).unwrap();
    // Same bytes, two shapes: the safetensors crate keeps the last and its layout checks pass.
    let header = br#"{"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},"w":{"dtype":"F16","shape":[3,2],"data_offsets":[0,12]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(HALVES);
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    let e = Checkpoint::open(dir.path()).err().expect("must be refused").to_string();
    assert!(e.contains("model.safetensors") && e.contains("`w`") && e.contains("twice"), "{e}");
}

const BIN_INDEX: &str = "pytorch_model.bin.index.json";
const SHARD1: &str = "pytorch_model-00001-of-00002.bin";
const SHARD2: &str = "pytorch_model-00002-of-00002.bin";
const EMBED: &str = "gpt_neox.embed_in.weight";

fn edit_index(dir: &Path, name: &str, edit: impl FnOnce(String) -> String) {
    let p = dir.join(name);
    let text = std::fs::read_to_string(&p).unwrap();
    let new = edit(text.clone());
    assert_ne!(new, text, "the edit changed nothing");
    std::fs::write(&p, new).unwrap();
}

fn open_err(dir: &Path) -> String {
    Checkpoint::open(dir).err().expect("must be refused").to_string()
}

#[test]
fn index_listing_a_tensor_twice_is_refused() {
    let dir = copy_model("neox-hd64-bin-sharded");
    let line = format!("\"{EMBED}\": \"{SHARD1}\",");
    edit_index(dir.path(), BIN_INDEX, |t| {
        t.replace(&line, &format!("{line}\n    \"{EMBED}\": \"{SHARD2}\","))
    });
    let e = open_err(dir.path());
    assert!(e.contains(BIN_INDEX) && e.contains(EMBED) && e.contains("twice"), "{e}");
}

#[test]
fn index_assigning_a_tensor_to_the_wrong_shard_is_refused() {
    let dir = copy_model("neox-hd64-bin-sharded");
    edit_index(dir.path(), BIN_INDEX, |t| {
        t.replace(&format!("\"{EMBED}\": \"{SHARD1}\""), &format!("\"{EMBED}\": \"{SHARD2}\""))
    });
    let e = open_err(dir.path());
    assert!(e.contains(EMBED) && e.contains(SHARD1) && e.contains(SHARD2), "{e}");
}

#[test]
fn index_listing_a_tensor_no_shard_holds_is_refused() {
    let dir = copy_model("neox-hd64-bin-sharded");
    edit_index(dir.path(), BIN_INDEX, |t| {
        t.replace("\"weight_map\": {", &format!("\"weight_map\": {{\n    \"ghost.weight\": \"{SHARD2}\","))
    });
    let e = open_err(dir.path());
    assert!(e.contains("ghost.weight") && e.contains(SHARD2), "{e}");
    // And a shard holding a tensor the index does not list.
    let dir = copy_model("neox-hd64-bin-sharded");
    edit_index(dir.path(), BIN_INDEX, |t| t.replace(&format!("\"{EMBED}\": \"{SHARD1}\","), ""));
    let e = open_err(dir.path());
    assert!(e.contains(EMBED) && e.contains(SHARD1) && e.contains("does not list"), "{e}");
}

/// The same tensor in two safetensors shards: the later one silently won.
#[test]
fn tensor_in_two_shards_is_refused() {
    use safetensors::tensor::TensorView;
    let dir = copy_model("neox-hd64");
    let (s1, s2) = (
        dir.path().join("model-00001-of-00002.safetensors"),
        dir.path().join("model-00002-of-00002.safetensors"),
    );
    let b1 = std::fs::read(&s1).unwrap();
    let b2 = std::fs::read(&s2).unwrap();
    let (t1, t2) = (
        safetensors::SafeTensors::deserialize(&b1).unwrap(),
        safetensors::SafeTensors::deserialize(&b2).unwrap(),
    );
    let embed = t1.tensor(EMBED).unwrap();
    let mut views: Vec<(String, TensorView)> = t2.tensors();
    views.push((EMBED.to_string(), embed));
    std::fs::write(&s2, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains(EMBED) && e.contains("model-00001-of-00002.safetensors") && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

/// The fixtures themselves pass every check (torch's own zips use data descriptors: local CRC and sizes 0).
#[test]
fn fixtures_pass_every_check() {
    for m in ["neox-hd64", "neox-hd64-bin", "neox-hd64-bin-sharded", "pythia-tiny-b"] {
        open_and_read_all(&fixture(m)).unwrap_or_else(|e| panic!("{m}: {e}"));
    }
    let (ok, stderr) = score_bounded(&fixture("neox-hd64-bin"));
    assert!(ok, "{stderr}");
}

#[test]
fn a_zip_declaring_hundreds_of_thousands_of_members_is_refused_before_they_are_read() {
    let names: Vec<String> = (0..300_000).map(|i| format!("a/{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    expect_cli_error(&zip_bytes(&entries), &["declares 300000 members"]);
}

#[test]
fn a_weights_file_truncated_after_opening_is_an_error_not_a_sigbus() {
    // Reading a mapped page past the new end of a truncated file raises SIGBUS, which would kill the whole
    // process (a sweep included): each read first checks the file is as it was when mapped.
    for (model, file) in [("pythia-tiny", "model.safetensors"), ("neox-hd64-bin", "pytorch_model.bin")] {
        let dir = copy_model(model);
        let ck = Checkpoint::open(dir.path()).unwrap();
        let weights = std::fs::OpenOptions::new().write(true).open(dir.path().join(file)).unwrap();
        weights.set_len(4096).unwrap();
        let err = ck.tensor("embed_out.weight").err().expect("read a truncated file").to_string();
        assert!(err.contains(file) && err.contains("changed on disk"), "{model}: {err}");
    }
}
