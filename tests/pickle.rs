//! The PyTorch `.bin` reader: files written by torch must read back bit for bit; hostile or broken files
//! must be refused with an error that names the file, never executed and never a panic.

mod common;

use common::model_files::zip_bytes;
use lmscore::checkpoint::{load_pickle_state_dict, Checkpoint, DType, HostTensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn by_name(ts: Vec<HostTensor>) -> HashMap<String, HostTensor> {
    ts.into_iter().map(|t| (t.name.clone(), t)).collect()
}

/// Every tensor of a safetensors file: (dtype name, shape, bytes).
fn read_safetensors(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, format!("{:?}", v.dtype()), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn dtype_name(d: DType) -> &'static str {
    d.name()
}

// ---------------------------------------------------------------------------------------------------
// Files written by torch.save

#[test]
fn torch_written_state_dict_matches_safetensors_twin() {
    let dir = fixtures().join("pickle");
    let ts = load_pickle_state_dict(&dir.join("mixed.bin")).unwrap();
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["layer.weight", "layer.bias", "param", "mask", "step", "flags", "row2", "empty", "scalar"],
        "state-dict order"
    );
    let ts = by_name(ts);
    let twin = read_safetensors(&dir.join("mixed.safetensors"));
    assert_eq!(twin.len(), 7);
    for (name, dtype, shape, bytes) in twin {
        let t = &ts[&name];
        assert_eq!(dtype_name(t.dtype), dtype, "{name} dtype");
        assert_eq!(t.shape, shape, "{name} shape");
        assert_eq!(t.bytes, bytes, "{name} bytes");
    }
    // Storage-offset view: row 2 of layer.weight, the same bytes.
    let w = &ts["layer.weight"];
    assert_eq!(ts["row2"].bytes, w.bytes[2 * 3 * 2..3 * 3 * 2]);
    // Non-float storages come back as Other with no bytes; scalars have an empty shape.
    assert_eq!(ts["step"].dtype, DType::Other);
    assert!(ts["step"].shape.is_empty() && ts["step"].bytes.is_empty());
    assert_eq!(ts["flags"].dtype, DType::Other);
    assert_eq!(ts["mask"].shape, [1, 1, 3, 3]);
    assert_eq!(ts["empty"].shape, [0, 7]);
    assert_eq!(ts["scalar"].to_f32().unwrap(), [f32::NEG_INFINITY]);
}

#[test]
fn non_contiguous_tensor_is_refused() {
    let path = fixtures().join("pickle/transposed.bin");
    let e = load_pickle_state_dict(&path).unwrap_err().to_string();
    assert!(e.contains("transposed.bin") && e.contains("`w`") && e.contains("not contiguous"), "{e}");
}

/// The model fixtures made by scripts/make_fixtures.py: the same weights as `neox-hd64` (bf16 safetensors),
/// saved as one pytorch_model.bin and as two .bin shards with an index. Every tensor of the safetensors
/// twin must come back bit for bit; the .bin files also hold Pythia's legacy buffers.
#[test]
fn bin_checkpoints_equal_their_safetensors_twin() {
    let models = fixtures().join("models");
    let twin = Checkpoint::open(models.join("neox-hd64")).unwrap();
    let twin_names = safetensors_names(&models.join("neox-hd64"));
    assert!(twin_names.len() > 10);
    for dir in ["neox-hd64-bin", "neox-hd64-bin-sharded"] {
        let ck = Checkpoint::open(models.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        for name in &twin_names {
            let (a, b) = (twin.tensor(name).unwrap(), ck.tensor(name).unwrap_or_else(|e| panic!("{dir}: {e}")));
            assert_eq!((a.dtype, &a.shape), (b.dtype, &b.shape), "{dir}: {name}");
            assert!(a.bytes == b.bytes, "{dir}: {name} differs from the safetensors twin");
        }
        assert_eq!(ck.stored_dtype().unwrap(), DType::BF16);
        // Legacy buffers are there too (and ignored by the model loader).
        let mask = ck.tensor("gpt_neox.layers.0.attention.bias").unwrap();
        assert_eq!((mask.dtype, mask.shape.as_slice()), (DType::U8, &[1, 1, 256, 256][..]));
        assert_tril(&mask, 256);
    }
}

/// pythia-tiny-b: fp16 pytorch_model.bin only, like a Pythia `stepN` revision.
#[test]
fn pythia_tiny_b_reads() {
    let dir = fixtures().join("models/pythia-tiny-b");
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.stored_dtype().unwrap(), DType::F16);
    let c = &ck.config;
    let ts = by_name(load_pickle_state_dict(&dir.join("pytorch_model.bin")).unwrap());
    for (name, t) in &ts {
        if t.dtype != DType::U8 {
            assert_eq!(t.dtype, DType::F16, "{name}");
            assert!(
                t.to_f32().unwrap().iter().all(|x| x.is_finite() || name.ends_with("masked_bias")),
                "{name}"
            );
        }
    }
    let emb = &ts["gpt_neox.embed_in.weight"];
    assert_eq!(emb.shape, [c.vocab_size, c.hidden_size]);
    assert_tril(&ts["gpt_neox.layers.0.attention.bias"], 64);
    // The whole model loads through the engine path.
    lmscore::engine::Engine::load(&ck, &Default::default()).unwrap();
}

fn safetensors_names(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            names.extend(read_safetensors(&p).into_iter().map(|t| t.0));
        }
    }
    names.sort();
    names
}

fn assert_tril(t: &HostTensor, n: usize) {
    assert_eq!(t.bytes.len(), n * n);
    for i in 0..n {
        for j in 0..n {
            assert_eq!(t.bytes[i * n + j], (j <= i) as u8, "tril[{i},{j}]");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Hand-made hostile and broken files

fn write_tmp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn unicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

/// BININT for what fits in an i32, LONG1 (8 bytes) beyond, as pickle does.
fn int(i: u64) -> Vec<u8> {
    if i <= i32::MAX as u64 {
        let mut v = vec![b'J'];
        v.extend((i as u32).to_le_bytes());
        v
    } else {
        let mut v = vec![0x8a, 8];
        v.extend(i.to_le_bytes()); // positive below 2^63: the top bit is clear
        v
    }
}

fn int_tuple(xs: &[u64]) -> Vec<u8> {
    let mut v = vec![b'('];
    for &x in xs {
        v.extend(int(x));
    }
    v.push(b't');
    v
}

struct T<'a> {
    name: &'a str,
    storage: &'a str,
    key: &'a str,
    numel: u64,
    offset: u64,
    shape: &'a [u64],
    stride: &'a [u64],
}

/// A [2, 3] f16 tensor `w` filling its 6-element storage "0": vary only what a test is about.
const HALF_2X3: T<'static> = T {
    name: "w",
    storage: "HalfStorage",
    key: "0",
    numel: 6,
    offset: 0,
    shape: &[2, 3],
    stride: &[3, 1],
};

/// A protocol-2 pickle of an OrderedDict of tensors, the way torch.save writes it.
fn state_dict_pickle(ts: &[T]) -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)R(".to_vec();
    for t in ts {
        p.extend(unicode(t.name));
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        p.extend(unicode("storage"));
        p.extend(format!("ctorch\n{}\n", t.storage).as_bytes());
        p.extend(unicode(t.key));
        p.extend(unicode("cpu"));
        p.extend(int(t.numel));
        p.extend(b"tQ");
        p.extend(int(t.offset));
        p.extend(int_tuple(t.shape));
        p.extend(int_tuple(t.stride));
        p.extend(b"\x89h\x00)Rt"); // requires_grad=False, OrderedDict(), close args
        p.push(b'R');
    }
    p.extend(b"u.");
    p
}

fn half_tensor_zip(t: T, storage_bytes: usize) -> Vec<u8> {
    let pkl = state_dict_pickle(&[t]);
    let data = vec![0x3cu8; storage_bytes];
    zip_bytes(&[("archive/data.pkl", &pkl), ("archive/byteorder", b"little"), ("archive/data/0", &data)])
}

fn err_of(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write_tmp(&dir, name, bytes);
    let e = load_pickle_state_dict(&p).expect_err("must be refused").to_string();
    assert!(e.contains(name), "error does not name the file: {e}");
    e
}

#[test]
fn handmade_state_dict_reads() {
    // The builder itself is right: a well-formed file reads back.
    let t = HALF_2X3;
    let dir = tempfile::tempdir().unwrap();
    let p = write_tmp(&dir, "ok.bin", &half_tensor_zip(t, 12));
    let ts = load_pickle_state_dict(&p).unwrap();
    assert_eq!(
        (ts[0].name.as_str(), ts[0].dtype, ts[0].shape.as_slice(), ts[0].bytes.len()),
        ("w", DType::F16, &[2, 3][..], 12)
    );
}

#[test]
fn global_os_system_is_refused_not_run() {
    let marker = std::env::temp_dir().join(format!("lmscore-pwned-{}", std::process::id()));
    let mut pkl = b"\x80\x02cos\nsystem\nq\x00".to_vec();
    pkl.extend(unicode(&format!("touch {}", marker.display())));
    pkl.extend(b"\x85R.");
    let e = err_of("evil.bin", &zip_bytes(&[("archive/data.pkl", &pkl)]));
    assert!(e.contains("os.system") && e.contains("refusing"), "{e}");
    assert!(!marker.exists(), "the pickle was executed");
    // Same through STACK_GLOBAL (protocol 4) and builtins.eval.
    let mut pkl = b"\x80\x04".to_vec();
    pkl.extend(unicode("builtins"));
    pkl.extend(unicode("eval"));
    pkl.extend(b"\x93");
    pkl.extend(unicode("1+1"));
    pkl.extend(b"\x85R.");
    let e = err_of("evil4.bin", &zip_bytes(&[("archive/data.pkl", &pkl)]));
    assert!(e.contains("builtins.eval"), "{e}");
    // A torch name that is not a storage type.
    let e = err_of("evil5.bin", &zip_bytes(&[("archive/data.pkl", b"\x80\x02ctorch\nload\n)R.")]));
    assert!(e.contains("torch.load"), "{e}");
}

#[test]
fn truncated_files_are_refused() {
    let good = std::fs::read(fixtures().join("pickle/mixed.bin")).unwrap();
    for cut in [10, good.len() / 2, good.len() - 10] {
        let e = err_of("cut.bin", &good[..cut]);
        assert!(e.contains("truncated") || e.contains("zip"), "cut at {cut}: {e}");
    }
    // A complete zip whose data.pkl stops early, at every length.
    let t = HALF_2X3;
    let pkl = state_dict_pickle(&[t]);
    for cut in 0..pkl.len() {
        let e = err_of(
            "cutpkl.bin",
            &zip_bytes(&[("archive/data.pkl", &pkl[..cut]), ("archive/data/0", &[0; 12])]),
        );
        assert!(e.contains("data.pkl"), "cut at {cut}: {e}");
    }
    // Storage shorter than declared.
    let t = HALF_2X3;
    let e = err_of("shortstorage.bin", &half_tensor_zip(t, 11));
    assert!(e.contains("truncated") && e.contains("`w`"), "{e}");
}

#[test]
fn zip_without_data_pkl_is_refused() {
    let e = err_of("nopkl.bin", &zip_bytes(&[("archive/data/0", &[0; 4]), ("archive/version", b"3\n")]));
    assert!(e.contains("no data.pkl"), "{e}");
    let e = err_of("notzip.bin", b"hello, this is not a checkpoint");
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
    let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
    let e = err_of("legacy.bin", legacy);
    assert!(e.contains("legacy"), "{e}");
}

#[test]
fn shape_beyond_storage_is_refused() {
    let t = T { shape: &[3, 3], ..HALF_2X3 };
    let e = err_of("big.bin", &half_tensor_zip(t, 12));
    assert!(e.contains("`w`") && e.contains("needs 9 elements"), "{e}");
    let t = T {
        offset: 4,
        shape: &[3],
        stride: &[1],
        ..HALF_2X3
    };
    let e = err_of("offset.bin", &half_tensor_zip(t, 12));
    assert!(e.contains("offset 4"), "{e}");
    // Shapes whose product overflows u64.
    let t = T {
        shape: &[1 << 40, 1 << 40, 3],
        stride: &[1, 1, 1],
        ..HALF_2X3
    };
    let e = err_of("overflow.bin", &half_tensor_zip(t, 12));
    assert!(e.contains("`w`"), "{e}");
}

#[test]
fn non_contiguous_and_missing_storage_are_refused() {
    let t = T { stride: &[1, 2], ..HALF_2X3 };
    let e = err_of("strided.bin", &half_tensor_zip(t, 12));
    assert!(e.contains("not contiguous"), "{e}");
    let t = T { key: "7", ..HALF_2X3 };
    let e = err_of("nostorage.bin", &half_tensor_zip(t, 12));
    assert!(e.contains("archive/data/7 is missing"), "{e}");
    let t = T {
        name: "w",
        storage: "../../etc",
        key: "0",
        numel: 6,
        offset: 0,
        shape: &[2],
        stride: &[1],
    };
    let e = err_of("badtype.bin", &half_tensor_zip(t, 12));
    assert!(e.contains("refusing"), "{e}");
    let t = T {
        name: "w",
        storage: "HalfStorage",
        key: "../0",
        numel: 6,
        offset: 0,
        shape: &[2],
        stride: &[1],
    };
    let e = err_of("badkey.bin", &half_tensor_zip(t, 12));
    assert!(e.contains("not a plain name"), "{e}");
}

#[test]
fn unknown_opcodes_are_refused() {
    for (op, what) in [(b'i', "0x69"), (0xffu8, "0xff"), (b'c' + 100, "0xc7")] {
        let pkl = [0x80, 0x02, op, b'.'];
        let e = err_of("op.bin", &zip_bytes(&[("archive/data.pkl", &pkl)]));
        assert!(e.contains("unsupported pickle opcode") && e.contains(what), "{e}");
    }
    // Stack and memo abuse: pops from an empty stack, reads of unset memo slots, non-dict results.
    for pkl in [
        &b"\x80\x02R."[..],
        b"\x80\x02h\x05.",
        b"\x80\x02t.",
        b"\x80\x02K\x01.",
        b"\x80\x02}(K\x01u.",
        b"\x80\x02]K\x01s.",
        b"\x80\x09.",
    ] {
        err_of("abuse.bin", &zip_bytes(&[("archive/data.pkl", pkl)]));
    }
}

#[test]
fn big_endian_storages_are_swapped() {
    let t = T {
        name: "w",
        storage: "FloatStorage",
        key: "0",
        numel: 2,
        offset: 0,
        shape: &[2],
        stride: &[1],
    };
    let pkl = state_dict_pickle(&[t]);
    let data: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    let dir = tempfile::tempdir().unwrap();
    let p = write_tmp(
        &dir,
        "be.bin",
        &zip_bytes(&[("archive/data.pkl", &pkl), ("archive/byteorder", b"big"), ("archive/data/0", &data)]),
    );
    assert_eq!(load_pickle_state_dict(&p).unwrap()[0].to_f32().unwrap(), [1.5, -2.0]);
}

/// Random byte corruption of a real torch file: every outcome is Ok or an error naming the file, never a
/// panic. Raw corruption is mostly caught by the zip checks (CRC-32, headers); to reach the pickle VM, most
/// iterations corrupt data.pkl and re-zip it with fresh CRCs.
#[test]
fn corrupted_files_never_panic() {
    let good = std::fs::read(fixtures().join("pickle/mixed.bin")).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&good)).unwrap();
    let members: Vec<(String, Vec<u8>)> = (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut data).unwrap();
            (f.name().to_string(), data)
        })
        .collect();
    let pkl_index = members.iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap();
    let seed: u64 = std::env::var("LMSCORE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0006);
    println!("seed {seed} (set LMSCORE_SEED to reproduce)");
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fuzz.bin");
    let (mut ok, mut refused) = (0, 0);
    for i in 0..400 {
        let bytes = if i % 4 == 0 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = next() as usize % bytes.len();
                bytes[at] = next() as u8;
            }
            bytes
        } else {
            let mut pkl = members[pkl_index].1.clone();
            for _ in 0..1 + next() % 4 {
                let at = 2 + next() as usize % (pkl.len() - 2);
                pkl[at] = next() as u8;
            }
            let entries: Vec<(&str, &[u8])> = members
                .iter()
                .enumerate()
                .map(|(j, (n, d))| (n.as_str(), if j == pkl_index { &pkl[..] } else { &d[..] }))
                .collect();
            zip_bytes(&entries)
        };
        std::fs::write(&p, &bytes).unwrap();
        match load_pickle_state_dict(&p) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().contains("fuzz.bin"), "iteration {i}: {e}");
                refused += 1;
            }
        }
    }
    println!("{ok} read, {refused} refused");
    assert!(refused > 100);
}
