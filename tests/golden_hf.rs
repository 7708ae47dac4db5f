//! The CPU backend against the independent oracle: HF transformers (float32, eager attention) on the
//! committed fixture checkpoints made by `scripts/make_fixtures.py`. Per-token log-probs within 1e-4 nats,
//! per-request sums within 1e-4 nats per token, identical greedy flags. Covers fp16 / bf16 / f32 weights,
//! single and sharded safetensors, PyTorch .bin (single and sharded), head dims 8-80, rotary dims 2-20,
//! parallel and sequential residuals, Pythia's legacy buffers, and lm-eval's left truncation.

use lmscore::checkpoint::Checkpoint;
use lmscore::engine::{Engine, EngineOptions};
use lmscore::plan::Request;
use lmscore::tokenizer::{PairEncoding, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;

const TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id array").iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn golden(name: &str) -> Value {
    let path = fixtures().join(format!("goldens/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Score every golden of `golden_name` on checkpoint `model_name`; returns the worst per-token difference.
fn check(model_name: &str, golden_name: &str) -> f64 {
    let g = golden(golden_name);
    let ckpt = Checkpoint::open(fixtures().join("models").join(model_name)).unwrap();
    let opts = EngineOptions::default();
    let engine = Engine::load(&ckpt, &opts).unwrap();
    let mut worst: f64 = 0.0;

    // Sequences: position t predicts ids[t+1]. One request per position (the prefix tree computes each
    // sequence once whatever the number of requests).
    for (si, s) in g["sequences"].as_array().unwrap().iter().enumerate() {
        let seq = ids(&s["ids"]);
        let expected: Vec<f64> = s["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let greedy: Vec<bool> = s["greedy"].as_array().unwrap().iter().map(|x| x.as_bool().unwrap()).collect();
        let reqs: Vec<Request> = (1..seq.len())
            .map(|t| Request {
                context: seq[..t].to_vec(),
                continuation: vec![seq[t]],
            })
            .collect();
        let (scores, stats) = engine.score(&reqs, &opts, |_, _| {}).unwrap();
        assert_eq!(
            stats.computed_tokens,
            seq.len().saturating_sub(1),
            "{model_name}: sequence {si} computed once"
        );
        for (t, (got, want)) in scores.iter().zip(&expected).enumerate() {
            let d = (got.logprob - want).abs();
            worst = worst.max(d);
            assert!(
                d <= TOL,
                "{model_name}: sequence {si} position {t}: lmscore {} vs HF {want} (|Δ| {d:.2e})",
                got.logprob
            );
            assert_eq!(got.is_greedy, greedy[t], "{model_name}: sequence {si} position {t}: greedy flag");
        }
    }

    // Requests, all in one call so the planner shares their prefixes.
    let rows = g["requests"].as_array().unwrap();
    let reqs: Vec<Request> = rows
        .iter()
        .map(|r| Request {
            context: ids(&r["context_ids"]),
            continuation: ids(&r["continuation_ids"]),
        })
        .collect();
    let (scores, _) = engine.score(&reqs, &opts, |_, _| {}).unwrap();
    for (i, (got, r)) in scores.iter().zip(rows).enumerate() {
        let want = r["logprob"].as_f64().unwrap();
        let n = reqs[i].continuation.len();
        let d = (got.logprob - want).abs();
        worst = worst.max(d / n as f64);
        assert!(
            d <= TOL * n as f64,
            "{model_name}: request {i}: lmscore {} vs HF {want} (|Δ| {d:.2e}, {n} tokens)",
            got.logprob
        );
        assert_eq!(got.is_greedy, r["is_greedy"].as_bool().unwrap(), "{model_name}: request {i}: greedy flag");
        assert_eq!(got.n_tokens, n);
    }
    println!("{model_name}: worst per-token |Δ| vs HF = {worst:.2e} nats");
    worst
}

#[test]
fn neox_hd80_fp16_with_legacy_buffers() {
    check("neox-hd80", "neox-hd80");
}

#[test]
fn neox_hd64_bf16_sharded_safetensors_new_config_keys() {
    check("neox-hd64", "neox-hd64");
}

#[test]
fn neox_hd64_pytorch_bin_single_and_sharded() {
    for twin in golden("neox-hd64")["same_weights"].as_array().unwrap() {
        check(twin.as_str().unwrap(), "neox-hd64");
    }
}

#[test]
fn neox_seq_f32_sequential_residual() {
    check("neox-seq", "neox-seq");
}

#[test]
fn pythia_tiny_full_vocab() {
    check("pythia-tiny", "pythia-tiny");
    check("pythia-tiny-b", "pythia-tiny-b");
}

/// The text rows of the golden file were tokenised by HF `tokenizers` the lm-eval 0.4 way; ours must agree.
#[test]
fn text_requests_tokenise_like_lm_eval() {
    let g = golden("pythia-tiny");
    let tok = Tokenizer::from_file(&fixtures().join("models/pythia-tiny/tokenizer.json")).unwrap();
    let mut n = 0;
    for r in g["requests"].as_array().unwrap() {
        let (Some(c), Some(k)) = (r["context"].as_str(), r["continuation"].as_str()) else {
            continue;
        };
        let (ctx, cont) = tok.encode_pair(c, k, PairEncoding::Joint).unwrap();
        assert_eq!((ctx, cont), (ids(&r["context_ids"]), ids(&r["continuation_ids"])), "{c:?} + {k:?}");
        n += 1;
    }
    assert!(n >= 10, "expected text rows in the golden file, found {n}");
}
