//! Criterion benches of every CUDA op at Pythia shapes (70m, 1.4b, 2.8b (head dim 80), 12b; random weights,
//! one packed batch of 2048 tokens, f16); attention on tensor cores against the f32 CUDA-core kernel on a
//! causal sequence and on TruthfulQA-shaped trees; and end-to-end groups: 70m, 1.4b and 12b-shaped models
//! with random weights generated on the device, scoring TruthfulQA-shaped requests (a shared 500-token
//! context, 4-13 answers per question) in 8,192-token batches, each printing computed (context) tokens/s
//! and the fraction of the FLOP limit (2 x parameters per computed token at the device's dense f16 peak).
//!
//! Throughput units: memory-bound ops report bytes (criterion prints GiB/s; compare with the DRAM peak
//! printed at start, e.g. H100 SXM ~3.35 TB/s, H200 ~4.8 TB/s); GEMMs and attention report FLOPs as
//! "elements" (criterion's Gelem/s = GFLOP/s; dense f16 tensor-core peak ~990 TFLOP/s on H100 SXM);
//! the end-to-end group reports requested tokens ("elements") per second.
//!
//! `cargo test` runs it in criterion's test mode on tiny shapes (see `Shapes`). LMSCORE_BENCH_ONLY=a,b sets up
//! and runs only the named groups (see `wanted`). Without a CUDA device it
//! prints a skip message and exits 0 (1 under LMSCORE_REQUIRE_CUDA=1). Build without running:
//! `cargo bench --no-run`; run on a GPU host: `cargo bench --bench kernels` (or the copied binary with
//! `--bench`, see docs/gpu.md).

use criterion::{BenchmarkId, Criterion, Throughput};
use lmscore::backend::cuda::{CudaBackend, CudaLayout, CudaTensor};
use lmscore::backend::{AttnSegment, AttnShape, Backend, BatchLayout};
use lmscore::checkpoint::DType;
use lmscore::config::ModelConfig;
use lmscore::model::{Layer, Model};
use lmscore::plan::{self, Request};
use lmscore::score::run_plan;
use std::time::Duration;

/// (name, hidden, heads, d_ff, vocab) of a benchmarked size.
type Size = (&'static str, usize, usize, usize, usize);
/// (name, layers, hidden, heads, d_ff, vocab, questions) of an end-to-end model.
type EndToEnd = (&'static str, usize, usize, usize, usize, usize, u32);

/// What is benched: Pythia's shapes under `--bench` (`cargo bench`), or tiny ones (head dims 32 and 80)
/// without it (`cargo test` runs this bench in criterion's test mode: each bench once) or with
/// LMSCORE_BENCH_SMOKE=1: seconds on the CPU stand-in, so a bench that fails does so in CI, before a
/// GPU's time is spent on it.
struct Shapes {
    sizes: Vec<Size>,
    /// Tokens in the packed batch of the per-op benches.
    tokens: usize,
    /// Scored rows per LM-head chunk (model::LOGIT_CHUNK_ROWS).
    chunk_rows: usize,
    /// mc_layout's (primer tokens, questions).
    mc: (u32, u32),
    /// truthfulqa_layout's (cached keys, rows).
    truthfulqa: (u32, u32),
    end_to_end: Vec<EndToEnd>,
    /// The end-to-end requests' shared context and batch budget.
    shared_context: u32,
    batch_tokens: usize,
}

impl Shapes {
    fn pick() -> Shapes {
        let measuring = std::env::args().any(|a| a == "--bench");
        if !measuring || std::env::var("LMSCORE_BENCH_SMOKE").is_ok_and(|v| v == "1") {
            return Shapes {
                sizes: vec![("smoke-hd32", 64, 2, 256, 1000), ("smoke-hd80", 160, 2, 640, 1000)],
                tokens: 96,
                chunk_rows: 32,
                mc: (40, 3),
                truthfulqa: (24, 160),
                end_to_end: vec![("smoke", 2, 128, 2, 512, 1000, 6)],
                shared_context: 30,
                batch_tokens: 256,
            };
        }
        Shapes {
            sizes: vec![
                ("70m", 512, 8, 2048, 50304),
                ("1.4b", 2048, 16, 8192, 50304),
                ("2.8b", 2560, 32, 10240, 50304),
                ("12b", 5120, 40, 20480, 50688),
            ],
            tokens: 2048,
            chunk_rows: 512,
            mc: (512, 32),
            truthfulqa: (400, 8192),
            end_to_end: vec![
                ("70m", 6, 512, 8, 2048, 50304, 817),
                ("1.4b", 24, 2048, 16, 8192, 50304, 400),
                ("12b", 36, 5120, 40, 20480, 50688, 100),
            ],
            shared_context: 500,
            batch_tokens: 8192,
        }
    }
}

/// Dense f16 tensor-core peak (TFLOP/s, f32 accumulation, no sparsity) of the GPU named `name`, from the
/// vendors' data sheets; LMSCORE_PEAK_TFLOPS overrides it.
fn dense_f16_peak_tflops(name: &str) -> Option<f64> {
    if let Some(v) = std::env::var("LMSCORE_PEAK_TFLOPS").ok().and_then(|v| v.parse().ok()) {
        return Some(v);
    }
    let n = name.to_ascii_uppercase();
    [
        ("H200", 989.4),
        ("H100 PCIE", 756.0),
        ("H100", 989.4),
        ("A100", 312.0),
        ("L40S", 362.0),
        ("A10", 125.0),
    ]
    .iter()
    .find(|(k, _)| n.contains(k))
    .map(|&(_, v)| v)
}
/// A [rows, cols] activation in [-a, a), generated on the device in `dtype` (its own seed stream, apart
/// from the weights').
fn activation(gpu: &CudaBackend, rows: usize, cols: usize, a: f32, seed: u64, dtype: DType) -> CudaTensor {
    gpu.random(rows, cols, dtype, (seed << 40) | (1 << 63), 0.0, a)
        .expect("random activation")
}

/// A [rows, cols] weight in [-0.02, 0.02) in the compute dtype, generated on the device (no host generator,
/// no upload: the 12b shapes' weights are 100M+ values each, and this bench runs on short GPU leases).
fn weight(gpu: &CudaBackend, rows: usize, cols: usize, seed: u64) -> CudaTensor {
    gpu.random(rows, cols, gpu.dtype(), seed << 40, 0.0, 0.02).expect("random weight")
}

/// A 1-D parameter [1, n] in [-1, 1), f32 as the backend keeps them.
fn param(gpu: &CudaBackend, n: usize, seed: u64) -> CudaTensor {
    gpu.random(1, n, DType::F32, seed << 40, 0.0, 1.0).expect("random parameter")
}

fn one_segment(t: usize) -> BatchLayout {
    BatchLayout {
        positions: (0..t as u32).collect(),
        segments: vec![AttnSegment {
            q_start: 0,
            q_len: t as u32,
            ancestors: vec![],
        }],
        past_len: 0,
    }
}

/// A multiple-choice batch: `questions` questions, each a 48-token context under a shared `primer`-token
/// primer with 4 choices of 8 tokens (the tree attention's real shape).
fn mc_layout(primer: u32, questions: u32) -> BatchLayout {
    let mut segments = vec![AttnSegment {
        q_start: 0,
        q_len: primer,
        ancestors: vec![],
    }];
    let mut row = primer;
    for _ in 0..questions {
        segments.push(AttnSegment {
            q_start: row,
            q_len: 48,
            ancestors: vec![(0, primer)],
        });
        let ctx = row;
        row += 48;
        for _ in 0..4 {
            segments.push(AttnSegment {
                q_start: row,
                q_len: 8,
                ancestors: vec![(0, primer), (ctx, 48)],
            });
            row += 8;
        }
    }
    with_positions(segments, 0)
}

/// TruthfulQA's tree in one batch: `past` cached primer keys, then questions of 20-40 tokens, each followed
/// by 4-13 answers of 2-16 tokens (their ancestors: the primer and the question), `rows` rows in all.
fn truthfulqa_layout(past: u32, rows: u32) -> BatchLayout {
    let mut segments = vec![];
    let (mut row, mut q) = (0u32, 0u32);
    while row < rows {
        let q_len = (20 + (q * 7) % 21).min(rows - row);
        segments.push(AttnSegment {
            q_start: row,
            q_len,
            ancestors: vec![(0, past)],
        });
        let question = (past + row, q_len);
        row += q_len;
        for a in 0..4 + (q * 5) % 10 {
            if row >= rows {
                break;
            }
            let a_len = (2 + (q * 3 + a * 11) % 15).min(rows - row);
            segments.push(AttnSegment {
                q_start: row,
                q_len: a_len,
                ancestors: vec![(0, past), question],
            });
            row += a_len;
        }
        q += 1;
    }
    with_positions(segments, past as usize)
}

/// Median seconds of `f` over 5 runs (after one warm-up), then one line: achieved TFLOP/s for `flops` and
/// the fraction of the device's dense f16 peak (criterion's Gelem/s is the same GFLOP/s figure).
fn print_tflops(gpu: &CudaBackend, what: &str, flops: u64, mut f: impl FnMut()) {
    f();
    sync(gpu);
    let mut secs: Vec<f64> = (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            sync(gpu);
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    let tflops = flops as f64 / secs[2] / 1e12;
    let peak = dense_f16_peak_tflops(gpu.device_name());
    println!(
        "{what}: {:.3} ms, {tflops:.1} TFLOP/s{}",
        secs[2] * 1e3,
        peak.map_or(" (dense f16 peak unknown: set LMSCORE_PEAK_TFLOPS)".into(), |p| format!(
            " = {:.1}% of the dense f16 peak {p:.0}",
            100.0 * tflops / p
        ))
    );
}

/// A tree layout of `segments` over `past` cached keys: each row's position is its ancestors' length plus its
/// offset in its segment.
fn with_positions(segments: Vec<AttnSegment>, past: usize) -> BatchLayout {
    let rows: u32 = segments.iter().map(|s| s.q_len).sum();
    let mut positions = vec![0u32; rows as usize];
    for s in &segments {
        let start: u32 = s.ancestors.iter().map(|a| a.1).sum();
        for i in 0..s.q_len {
            positions[(s.q_start + i) as usize] = start + i;
        }
    }
    BatchLayout {
        positions,
        segments,
        past_len: past,
    }
}

/// Attention FLOPs of a layout: 2 GEMM-like products (q.k and p.v) of 2 FLOPs per multiply-add.
fn attention_flops(l: &BatchLayout, h: usize) -> u64 {
    let mut keys = 0u64;
    for s in &l.segments {
        let anc: u64 = s.ancestors.iter().map(|a| a.1 as u64).sum();
        for i in 0..s.q_len as u64 {
            keys += anc + i + 1;
        }
    }
    4 * keys * h as u64
}

/// Whether bench group `name` runs: every group, or those LMSCORE_BENCH_ONLY names (a comma list such as
/// `end_to_end,attention`). Unlike criterion's filter, a group left out here is not even set up, and its
/// extra figures (the attention TFLOP/s lines, the end-to-end tokens/s) are not measured: what a short
/// GPU lease wants (scripts/gpu-run.sh runs the groups in stages this way).
fn wanted(name: &str) -> bool {
    match std::env::var("LMSCORE_BENCH_ONLY") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|g| g.trim() == name),
        _ => true,
    }
}

/// Flags `cargo test -- ...` hands to every test binary that criterion does not take (it would stop
/// with a usage error and fail the whole `cargo test`).
const LIBTEST_ONLY_FLAGS: [&str; 11] = [
    "--test-threads",
    "--skip",
    "--include-ignored",
    "--report-time",
    "--ensure-time",
    "--shuffle",
    "--shuffle-seed",
    "--logfile",
    "--force-run-in-process",
    "--exclude-should-panic",
    "-q",
];

fn sync(gpu: &CudaBackend) {
    gpu.synchronize().expect("synchronize");
}

fn bench_sizes(c: &mut Criterion, gpu: &CudaBackend, shapes: &Shapes) {
    let (tokens, chunk) = (shapes.tokens, shapes.chunk_rows);
    for &(size, h, heads, ff, vocab) in &shapes.sizes {
        let hd = h / heads;
        let shape = AttnShape {
            heads,
            head_dim: hd,
            rotary_ndims: hd / 4,
            rotary_base: 10000.0,
        };
        let layout_host = one_segment(tokens);
        let layout: CudaLayout = gpu.prepare(&layout_host, &[]).expect("prepare").0;
        let x32 = activation(gpu, tokens, h, 1.0, 1, DType::F32);
        let x16 = activation(gpu, tokens, h, 1.0, 2, gpu.dtype());
        let (ln_w, ln_b) = (param(gpu, h, 3), param(gpu, h, 4));
        let e = gpu.dtype().size() as u64;

        if wanted("layernorm") {
            let mut g = c.benchmark_group(format!("layernorm/{size}"));
            g.throughput(Throughput::Bytes((tokens * h) as u64 * (4 + e)));
            g.bench_function(BenchmarkId::new("f32->f16", format!("{tokens}x{h}")), |b| {
                b.iter(|| {
                    let y = gpu.layernorm(&x32, &ln_w, &ln_b, 1e-5).unwrap();
                    sync(gpu);
                    y
                })
            });
            g.finish();
        }

        if wanted("linear") {
            let mut g = c.benchmark_group(format!("linear/{size}"));
            for (name, n, k) in [("qkv", 3 * h, h), ("fc1", ff, h), ("fc2", h, ff)] {
                let w = weight(gpu, n, k, 5);
                let bias = param(gpu, n, 6);
                let x = activation(gpu, tokens, k, 1.0, 7, gpu.dtype());
                g.throughput(Throughput::Elements(2 * (tokens * n * k) as u64));
                g.bench_function(BenchmarkId::new(name, format!("{tokens}x{k} x {n}x{k}^T (FLOP)")), |b| {
                    b.iter(|| {
                        let y = gpu.linear(&x, &w, Some(&bias)).unwrap();
                        sync(gpu);
                        y
                    })
                });
            }
            g.finish();
        }

        if wanted("bias_gelu") {
            let mut g = c.benchmark_group(format!("bias_gelu/{size}"));
            let mut hidden = activation(gpu, tokens, ff, 2.0, 8, gpu.dtype());
            let b1 = param(gpu, ff, 9);
            g.throughput(Throughput::Bytes((tokens * ff) as u64 * 2 * e));
            g.bench_function(BenchmarkId::from_parameter(format!("{tokens}x{ff}")), |b| {
                b.iter(|| {
                    gpu.bias_gelu(&mut hidden, &b1).unwrap();
                    sync(gpu)
                })
            });
            g.finish();
        }

        if wanted("residual_add") {
            let mut g = c.benchmark_group(format!("residual_add/{size}"));
            let mut x = activation(gpu, tokens, h, 1.0, 10, DType::F32);
            let a = activation(gpu, tokens, h, 1e-3, 11, gpu.dtype());
            g.throughput(Throughput::Bytes((tokens * h) as u64 * (8 + 2 * e)));
            g.bench_function(BenchmarkId::from_parameter(format!("{tokens}x{h}")), |b| {
                b.iter(|| {
                    gpu.residual_add(&mut x, &a, Some(&x16)).unwrap();
                    sync(gpu)
                })
            });
            g.finish();
        }

        // The parallel residual's passes around the two output projections, as the forward pass ran them
        // before (2 layernorms, 2 biased GEMMs each pre-filling and casting an f32 buffer, a residual add
        // reading both outputs) and as it runs them now (both layernorms and both biases in one read of x,
        // the GEMMs accumulating straight into it). Same GEMMs in both; FLOPs are the two GEMMs'.
        if wanted("parallel_residual") {
            let mut g = c.benchmark_group(format!("parallel_residual/{size}"));
            let (dense_w, fc2_w) = (weight(gpu, h, h, 16), weight(gpu, h, ff, 17));
            let (dense_b, fc2_b) = (param(gpu, h, 18), param(gpu, h, 19));
            let attn = activation(gpu, tokens, h, 1.0, 20, gpu.dtype());
            let gelu = activation(gpu, tokens, ff, 1.0, 21, gpu.dtype());
            let mut resid = activation(gpu, tokens, h, 1.0, 22, DType::F32);
            g.throughput(Throughput::Elements(2 * (tokens * h * (h + ff)) as u64));
            g.bench_function(BenchmarkId::new("separate passes", format!("{tokens}x{h}, d_ff {ff}")), |b| {
                b.iter(|| {
                    let a_in = gpu.layernorm(&resid, &ln_w, &ln_b, 1e-5).unwrap();
                    let m_in = gpu.layernorm(&resid, &ln_w, &ln_b, 1e-5).unwrap();
                    let a = gpu.linear(&attn, &dense_w, Some(&dense_b)).unwrap();
                    let m = gpu.linear(&gelu, &fc2_w, Some(&fc2_b)).unwrap();
                    gpu.residual_add(&mut resid, &a, Some(&m)).unwrap();
                    sync(gpu);
                    (a_in, m_in)
                })
            });
            g.bench_function(
                BenchmarkId::new("fused (parallel_norms + beta=1)", format!("{tokens}x{h}, d_ff {ff}")),
                |b| {
                    b.iter(|| {
                        let norms = gpu
                            .parallel_norms(&mut resid, (&ln_w, &ln_b), (&ln_w, &ln_b), 1e-5, (&dense_b, &fc2_b))
                            .unwrap();
                        gpu.linear_accumulate(&mut resid, &attn, &dense_w).unwrap();
                        gpu.linear_accumulate(&mut resid, &gelu, &fc2_w).unwrap();
                        sync(gpu);
                        norms
                    })
                },
            );
            g.finish();
        }

        // The attention's input projection as the forward pass ran it before (bias pre-filled into an f32
        // buffer, GEMM with beta = 1, a cast; then an in-place rotary pass, not timed here, so "before" is a
        // lower bound) and as it runs it now (GEMM into f32, one epilogue adding the bias, rotating, rounding).
        if wanted("qkv_projection") {
            let mut g = c.benchmark_group(format!("qkv_projection/{size}"));
            let (qkv_w, qkv_b) = (weight(gpu, 3 * h, h, 12), param(gpu, 3 * h, 14));
            g.throughput(Throughput::Elements(2 * (tokens * 3 * h * h) as u64));
            let id = |name| BenchmarkId::new(name, format!("{tokens}x{h} x {}x{h}^T, rot {} (FLOP)", 3 * h, shape.rotary_ndims));
            g.bench_function(id("before: bias pre-fill + GEMM + cast"), |b| {
                b.iter(|| {
                    let y = gpu.linear(&x16, &qkv_w, Some(&qkv_b)).unwrap();
                    sync(gpu);
                    y
                })
            });
            g.bench_function(id("now: GEMM + qkv_rotary epilogue"), |b| {
                b.iter(|| {
                    let y = gpu.qkv_rotary(&x16, &qkv_w, &qkv_b, &layout, shape).unwrap();
                    sync(gpu);
                    y
                })
            });
            g.finish();
        }

        if wanted("attention") {
            let mut g = c.benchmark_group(format!("attention/{size}"));
            for (name, l) in [
                (&*format!("causal {tokens}"), layout_host.clone()),
                (
                    &*format!("multiple choice (primer {} + {} questions x 4)", shapes.mc.0, shapes.mc.1),
                    mc_layout(shapes.mc.0, shapes.mc.1),
                ),
                (
                    &*format!("TruthfulQA-shaped ({} cached, {} rows)", shapes.truthfulqa.0, shapes.truthfulqa.1),
                    truthfulqa_layout(shapes.truthfulqa.0, shapes.truthfulqa.1),
                ),
            ] {
                let t = l.tokens();
                let qkv = activation(gpu, t, 3 * h, 1.0, 13, gpu.dtype());
                let past = (l.past_len > 0).then(|| activation(gpu, l.past_len, 3 * h, 1.0, 23, gpu.dtype()));
                let dl = gpu.prepare(&l, &[]).expect("prepare").0;
                let flops = attention_flops(&l, h);
                g.throughput(Throughput::Elements(flops));
                for (kernel, tensor_cores) in [("tensor cores", true), ("f32 CUDA cores", false)] {
                    if gpu.use_tensor_core_attention(tensor_cores) != tensor_cores {
                        continue; // pre-Ampere: no tensor-core kernel
                    }
                    let id = BenchmarkId::new(format!("{name}, {kernel}"), format!("{t} rows, {heads}x{hd} (FLOP)"));
                    g.bench_function(id, |b| {
                        b.iter(|| {
                            let o = gpu.attention(&qkv, past.as_ref(), &dl, shape).unwrap();
                            sync(gpu);
                            o
                        })
                    });
                    print_tflops(gpu, &format!("attention/{size} {name}, {kernel}"), flops, || {
                        gpu.attention(&qkv, past.as_ref(), &dl, shape).unwrap();
                    });
                }
                gpu.use_tensor_core_attention(true);
            }
            g.finish();
        }

        // Shared by the embedding, lm_head and logsoftmax_gather groups.
        let table = weight(gpu, vocab, h, 24);
        let xr = activation(gpu, chunk, h, 1.0, 15, gpu.dtype());
        if wanted("embedding") {
            let mut g = c.benchmark_group(format!("embedding/{size}"));
            let ids: Vec<u32> = (0..tokens as u32).map(|i| (i * 7919) % vocab as u32).collect();
            let ids = gpu.index(&ids).expect("ids");
            g.throughput(Throughput::Bytes((tokens * h) as u64 * (e + 4)));
            g.bench_function(BenchmarkId::from_parameter(format!("{tokens} ids x {h}")), |b| {
                b.iter(|| {
                    let y = gpu.embedding(&table, &ids).unwrap();
                    sync(gpu);
                    y
                })
            });
            g.finish();
        }

        if wanted("gather_rows") {
            let mut g = c.benchmark_group(format!("gather_rows/{size}"));
            let rows = gpu.index(&(0..chunk as u32).map(|i| i * 3).collect::<Vec<_>>()).expect("rows");
            g.throughput(Throughput::Bytes((chunk * h) as u64 * 8));
            g.bench_function(BenchmarkId::from_parameter(format!("{chunk} of {tokens}x{h} f32")), |b| {
                b.iter(|| {
                    let y = gpu.gather_rows(&x32, &rows).unwrap();
                    sync(gpu);
                    y
                })
            });
            g.finish();
        }

        if wanted("lm_head") {
            let mut g = c.benchmark_group(format!("lm_head/{size}"));
            g.throughput(Throughput::Elements(2 * (chunk * vocab * h) as u64));
            g.bench_function(BenchmarkId::from_parameter(format!("{chunk}x{h} x {vocab}x{h}^T -> f32 (FLOP)")), |b| {
                b.iter(|| {
                    let y = gpu.lm_head(&xr, &table).unwrap();
                    sync(gpu);
                    y
                })
            });
            g.finish();
        }

        if wanted("logsoftmax_gather") {
            let mut g = c.benchmark_group(format!("logsoftmax_gather/{size}"));
            let logits = gpu.lm_head(&xr, &table).expect("logits");
            let targets: Vec<(u32, u32)> = (0..chunk as u32).flat_map(|r| [(r, (r * 31) % vocab as u32), (r, 7)]).collect();
            g.throughput(Throughput::Bytes((chunk * vocab) as u64 * 4));
            g.bench_function(
                BenchmarkId::from_parameter(format!("{chunk}x{vocab} f32, {} targets", targets.len())),
                |b| b.iter(|| gpu.logsoftmax_gather_host(&logits, &targets).unwrap()),
            );
            g.finish();
        }
    }
}

/// A Pythia-shaped model with random weights generated on the device (`CudaBackend::random`: no host
/// generator, no upload; 12b in f16 is 24 GB), in the backend's dtype; 1-D parameters near 1 (LayerNorm
/// weights) or near 0 (biases), 2-D weights of scale 0.02 as Pythia's initialisation.
fn random_model(gpu: &CudaBackend, layers: usize, h: usize, heads: usize, ff: usize, vocab: usize) -> Model<CudaBackend> {
    let config = ModelConfig::from_json(&serde_json::json!({
        "model_type": "gpt_neox", "hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": ff, "vocab_size": vocab, "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
        "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true
    }))
    .expect("config");
    // (rows, cols, offset, scale) -> values offset + [-scale, scale): 2-D weights in the compute dtype,
    // 1-D parameters in f32 as the backend keeps them.
    let mut seed = 0u64;
    let mut next = |rows: usize, cols: usize, offset: f32, scale: f32| {
        seed += 1;
        let dtype = if rows == 1 { DType::F32 } else { gpu.dtype() };
        gpu.random(rows, cols, dtype, seed << 40, offset, scale).expect("random weights")
    };
    let layers = (0..layers)
        .map(|_| Layer {
            ln1_w: next(1, h, 1.0, 0.1),
            ln1_b: next(1, h, 0.0, 0.1),
            ln2_w: next(1, h, 1.0, 0.1),
            ln2_b: next(1, h, 0.0, 0.1),
            qkv_w: next(3 * h, h, 0.0, 0.02),
            qkv_b: next(1, 3 * h, 0.0, 0.1),
            dense_w: next(h, h, 0.0, 0.02),
            dense_b: next(1, h, 0.0, 0.1),
            fc1_w: next(ff, h, 0.0, 0.02),
            fc1_b: next(1, ff, 0.0, 0.1),
            fc2_w: next(h, ff, 0.0, 0.02),
            fc2_b: next(1, h, 0.0, 0.1),
        })
        .collect();
    Model {
        embed_in: next(vocab, h, 0.0, 1.0),
        layers,
        final_ln_w: next(1, h, 1.0, 0.1),
        final_ln_b: next(1, h, 0.0, 0.1),
        embed_out: next(vocab, h, 0.0, 0.02),
        config,
    }
}

/// TruthfulQA-shaped requests: `questions` questions under one shared `shared`-token context, each of
/// 20-40 tokens with 4-13 answers of 2-16 tokens.
fn mc_requests(shared: u32, questions: u32, vocab: u32) -> Vec<Request> {
    let primer: Vec<u32> = (0..shared).map(|i| (i * 13 + 1) % vocab).collect();
    let mut reqs = vec![];
    for q in 0..questions {
        let mut ctx = primer.clone();
        ctx.extend((0..20 + (q * 7) % 21).map(|i| (q * 101 + i * 7 + 3) % vocab));
        for c in 0..4 + (q * 5) % 10 {
            reqs.push(Request {
                context: ctx.clone(),
                continuation: (0..2 + (q * 3 + c * 11) % 15).map(|i| (q * 17 + c * 5 + i + 11) % vocab).collect(),
            });
        }
    }
    reqs
}

fn bench_end_to_end(c: &mut Criterion, gpu: &CudaBackend, shapes: &Shapes) {
    if !wanted("end_to_end") {
        return;
    }
    // The questions fill a few batches of `batch_tokens`.
    for &(name, layers, h, heads, ff, vocab, questions) in &shapes.end_to_end {
        let model = random_model(gpu, layers, h, heads, ff, vocab);
        let params = model.config.num_params() as f64;
        let reqs = mc_requests(shapes.shared_context, questions, vocab as u32);
        let naive: usize = reqs.iter().map(|r| r.context.len() + r.continuation.len()).sum();
        let mut g = c.benchmark_group(format!("end_to_end/{name}-shaped"));
        for (how, sharing) in [("prefix sharing", true), ("no sharing", false)] {
            // The unshared plan of the large models only repeats the same batches, longer.
            let small = matches!(name, "70m" | "smoke");
            if !(sharing || small) {
                continue;
            }
            let p = plan::build(&reqs, 2048, shapes.batch_tokens, sharing).expect("plan");
            // Throughput in FLOPs of the FLOP limit (2 x params per computed token): criterion's Gelem/s.
            let flops = 2.0 * params * p.computed_tokens as f64;
            g.throughput(Throughput::Elements(flops as u64));
            let id = BenchmarkId::new(
                how,
                format!(
                    "{} requests, {naive} requested tokens, {} computed, {} batches",
                    reqs.len(),
                    p.computed_tokens,
                    p.batches.len()
                ),
            );
            g.bench_function(id, |b| b.iter(|| run_plan(gpu, &model, &p, |_| {}).unwrap()));
            let t = std::time::Instant::now();
            run_plan(gpu, &model, &p, |_| {}).unwrap();
            let secs = t.elapsed().as_secs_f64();
            let peak = dense_f16_peak_tflops(gpu.device_name());
            println!(
                "end_to_end/{name}-shaped {how}: {:.0} computed (context) tokens/s, {:.0} requested tokens/s, {:.1} TFLOP/s at \
                 2 x {:.2e} params per token{}",
                p.computed_tokens as f64 / secs,
                naive as f64 / secs,
                flops / secs / 1e12,
                params,
                peak.map_or(String::new(), |pk| format!(
                    " = {:.1}% of the FLOP limit at {pk:.0} TFLOP/s",
                    100.0 * flops / secs / 1e12 / pk
                ))
            );
        }
        g.finish();
    }
}

fn main() {
    let libtest_flag = std::env::args()
        .skip(1)
        .find(|a| LIBTEST_ONLY_FLAGS.iter().any(|f| a == f || a.starts_with(&format!("{f}="))));
    if let Some(flag) = libtest_flag {
        println!("SKIPPED: {flag} is a libtest flag this criterion bench does not take (run it alone: cargo test --release --bench kernels)");
        return;
    }
    // libtest takes several name filters, criterion one (flags with values only come with --bench).
    let measuring = std::env::args().any(|a| a == "--bench");
    let filters = std::env::args().skip(1).filter(|a| !a.starts_with('-')).count();
    if !measuring && filters > 1 {
        println!("SKIPPED: {filters} name filters; this criterion bench takes one (run it alone: cargo test --release --bench kernels)");
        return;
    }
    let gpu = match lmscore::backend::cuda::check_available().and_then(|_| CudaBackend::new(0, DType::F16)) {
        Ok(g) => g,
        Err(e) if std::env::var("LMSCORE_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            eprintln!("FAILED: no CUDA device ({e}) and LMSCORE_REQUIRE_CUDA=1");
            std::process::exit(1);
        }
        Err(e) => {
            println!("SKIPPED: no CUDA device ({e}): the kernel benches need a GPU");
            return;
        }
    };
    if lmscore::backend::cuda::kernels::nvrtc_is_stand_in() {
        println!("NOTE: the CUDA stand-in (cuda-sim): every time below is a CPU's, no figure is a GPU's");
    }
    let ctx = gpu.context();
    let attr = |a| ctx.attribute(a).unwrap_or(0) as f64;
    use cudarc::driver::sys::CUdevice_attribute as A;
    // DDR: two transfers per clock. The attribute is in kHz and bits.
    let peak_gbs = attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE) * 1e3 * 2.0 * attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH) / 8.0 / 1e9;
    println!(
        "device: {} ({} SMs); theoretical DRAM peak {:.0} GB/s = {:.0} GiB/s (memory clock x bus width x 2); \
         dense f16 tensor peak {}",
        gpu.describe(),
        attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        peak_gbs,
        peak_gbs * 1e9 / (1u64 << 30) as f64,
        dense_f16_peak_tflops(gpu.device_name()).map_or("unknown (set LMSCORE_PEAK_TFLOPS)".into(), |p| format!("{p:.0} TFLOP/s"))
    );
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let shapes = Shapes::pick();
    bench_sizes(&mut c, &gpu, &shapes);
    bench_end_to_end(&mut c, &gpu, &shapes);
    c.final_summary();
}
