//! Criterion benches of every CUDA op at Pythia shapes (70m, 1.4b, 12b; random weights, one packed batch of
//! 2048 tokens, f16), and an end-to-end group: tokens per second scored by a 70m-shaped random model on a
//! multiple-choice workload.
//!
//! Throughput units: memory-bound ops report bytes (criterion prints GiB/s; compare with the DRAM peak
//! printed at start, e.g. H100 SXM ~3.35 TB/s, H200 ~4.8 TB/s); GEMMs and attention report FLOPs as
//! "elements" (criterion's Gelem/s = GFLOP/s; dense f16 tensor-core peak ~990 TFLOP/s on H100 SXM);
//! the end-to-end group reports requested tokens ("elements") per second.
//!
//! Without a CUDA device the bench prints a skip message and exits 0. Build without running:
//! `cargo bench --no-run`; run on a GPU host: `cargo bench --bench kernels` (or the copied binary with
//! `--bench`, see docs/gpu.md).

use criterion::{BenchmarkId, Criterion, Throughput};
use lmscore::backend::cuda::{CudaBackend, CudaLayout, CudaTensor};
use lmscore::backend::{AttnSegment, AttnShape, Backend, BatchLayout};
use lmscore::checkpoint::{DType, HostTensor};
use lmscore::config::ModelConfig;
use lmscore::model::{Layer, Model};
use lmscore::plan::{self, Request};
use lmscore::score::run_plan;
use std::time::Duration;

/// (name, hidden, heads, d_ff, vocab) of the benchmarked Pythia sizes.
const SIZES: [(&str, usize, usize, usize, usize); 3] = [
    ("70m", 512, 8, 2048, 50304),
    ("1.4b", 2048, 16, 8192, 50304),
    ("12b", 5120, 40, 20480, 50688),
];
/// Tokens in the packed batch.
const T: usize = 2048;
/// Scored rows per LM-head chunk (model::LOGIT_CHUNK_ROWS).
const R: usize = 512;

/// Cheap deterministic values in [-a, a) (an LCG: generating 100M+ weights must not dominate the bench).
fn values(n: usize, a: f32, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

fn weight(gpu: &CudaBackend, rows: usize, cols: usize, seed: u64) -> CudaTensor {
    gpu.upload(&HostTensor::from_f32("w", vec![rows, cols], &values(rows * cols, 0.02, seed)))
        .expect("upload")
}

fn param(gpu: &CudaBackend, n: usize, seed: u64) -> CudaTensor {
    gpu.upload(&HostTensor::from_f32("p", vec![n], &values(n, 1.0, seed))).expect("upload")
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

/// A multiple-choice batch: 32 questions, each a 48-token context under a shared 512-token primer with
/// 4 choices of 8 tokens (the tree attention's real shape).
fn mc_layout() -> BatchLayout {
    let mut segments = vec![AttnSegment {
        q_start: 0,
        q_len: 512,
        ancestors: vec![],
    }];
    let mut row = 512u32;
    for _ in 0..32 {
        segments.push(AttnSegment {
            q_start: row,
            q_len: 48,
            ancestors: vec![(0, 512)],
        });
        let ctx = row;
        row += 48;
        for _ in 0..4 {
            segments.push(AttnSegment {
                q_start: row,
                q_len: 8,
                ancestors: vec![(0, 512), (ctx, 48)],
            });
            row += 8;
        }
    }
    let mut positions = vec![0u32; row as usize];
    for s in &segments {
        let start: u32 = s.ancestors.iter().map(|a| a.1).sum();
        for i in 0..s.q_len {
            positions[(s.q_start + i) as usize] = start + i;
        }
    }
    BatchLayout {
        positions,
        segments,
        past_len: 0,
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

fn sync(gpu: &CudaBackend) {
    gpu.synchronize().expect("synchronize");
}

fn bench_sizes(c: &mut Criterion, gpu: &CudaBackend) {
    for &(size, h, heads, ff, vocab) in &SIZES {
        let hd = h / heads;
        let shape = AttnShape {
            heads,
            head_dim: hd,
            rotary_ndims: hd / 4,
            rotary_base: 10000.0,
        };
        let layout_host = one_segment(T);
        let layout: CudaLayout = gpu.prepare(&layout_host, &[]).expect("prepare").0;
        let x32 = gpu.from_host_as(T, h, &values(T * h, 1.0, 1), DType::F32).expect("x");
        let x16 = gpu.from_host(T, h, &values(T * h, 1.0, 2)).expect("x");
        let (ln_w, ln_b) = (param(gpu, h, 3), param(gpu, h, 4));
        let e = gpu.dtype().size() as u64;

        let mut g = c.benchmark_group(format!("layernorm/{size}"));
        g.throughput(Throughput::Bytes((T * h) as u64 * (4 + e)));
        g.bench_function(BenchmarkId::new("f32->f16", format!("{T}x{h}")), |b| {
            b.iter(|| {
                let y = gpu.layernorm(&x32, &ln_w, &ln_b, 1e-5).unwrap();
                sync(gpu);
                y
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("linear/{size}"));
        for (name, n, k) in [("qkv", 3 * h, h), ("fc1", ff, h), ("fc2", h, ff)] {
            let w = weight(gpu, n, k, 5);
            let bias = param(gpu, n, 6);
            let x = gpu.from_host(T, k, &values(T * k, 1.0, 7)).expect("x");
            g.throughput(Throughput::Elements(2 * (T * n * k) as u64));
            g.bench_function(BenchmarkId::new(name, format!("{T}x{k} x {n}x{k}^T (FLOP)")), |b| {
                b.iter(|| {
                    let y = gpu.linear(&x, &w, Some(&bias)).unwrap();
                    sync(gpu);
                    y
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("bias_gelu/{size}"));
        let mut hidden = gpu.from_host(T, ff, &values(T * ff, 2.0, 8)).expect("hidden");
        let b1 = param(gpu, ff, 9);
        g.throughput(Throughput::Bytes((T * ff) as u64 * 2 * e));
        g.bench_function(BenchmarkId::from_parameter(format!("{T}x{ff}")), |b| {
            b.iter(|| {
                gpu.bias_gelu(&mut hidden, &b1).unwrap();
                sync(gpu)
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("residual_add/{size}"));
        let mut x = gpu.from_host_as(T, h, &values(T * h, 1.0, 10), DType::F32).expect("x");
        let a = gpu.from_host(T, h, &values(T * h, 1e-3, 11)).expect("a");
        g.throughput(Throughput::Bytes((T * h) as u64 * (8 + 2 * e)));
        g.bench_function(BenchmarkId::from_parameter(format!("{T}x{h}")), |b| {
            b.iter(|| {
                gpu.residual_add(&mut x, &a, Some(&x16)).unwrap();
                sync(gpu)
            })
        });
        g.finish();

        // The parallel residual's passes around the two output projections, as the forward pass ran them
        // before (2 layernorms, 2 biased GEMMs each pre-filling and casting an f32 buffer, a residual add
        // reading both outputs) and as it runs them now (both layernorms and both biases in one read of x,
        // the GEMMs accumulating straight into it). Same GEMMs in both; FLOPs are the two GEMMs'.
        let mut g = c.benchmark_group(format!("parallel_residual/{size}"));
        let (dense_w, fc2_w) = (weight(gpu, h, h, 16), weight(gpu, h, ff, 17));
        let (dense_b, fc2_b) = (param(gpu, h, 18), param(gpu, h, 19));
        let attn = gpu.from_host(T, h, &values(T * h, 1.0, 20)).expect("attn");
        let gelu = gpu.from_host(T, ff, &values(T * ff, 1.0, 21)).expect("gelu");
        let mut resid = gpu.from_host_as(T, h, &values(T * h, 1.0, 22), DType::F32).expect("x");
        g.throughput(Throughput::Elements(2 * (T * h * (h + ff)) as u64));
        g.bench_function(BenchmarkId::new("separate passes", format!("{T}x{h}, d_ff {ff}")), |b| {
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
        g.bench_function(BenchmarkId::new("fused (parallel_norms + beta=1)", format!("{T}x{h}, d_ff {ff}")), |b| {
            b.iter(|| {
                let norms = gpu
                    .parallel_norms(&mut resid, (&ln_w, &ln_b), (&ln_w, &ln_b), 1e-5, (&dense_b, &fc2_b))
                    .unwrap();
                gpu.linear_accumulate(&mut resid, &attn, &dense_w).unwrap();
                gpu.linear_accumulate(&mut resid, &gelu, &fc2_w).unwrap();
                sync(gpu);
                norms
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("rotary/{size}"));
        let mut qkv = gpu.from_host(T, 3 * h, &values(T * 3 * h, 1.0, 12)).expect("qkv");
        // Read + write of the rotated dims of q and k.
        g.throughput(Throughput::Bytes((T * heads * 2 * shape.rotary_ndims) as u64 * 2 * e));
        g.bench_function(
            BenchmarkId::from_parameter(format!("{T} rows, {heads}x{hd}, rot {}", shape.rotary_ndims)),
            |b| {
                b.iter(|| {
                    gpu.rotary(&mut qkv, &layout, shape).unwrap();
                    sync(gpu)
                })
            },
        );
        g.finish();

        let mut g = c.benchmark_group(format!("attention/{size}"));
        for (name, l) in [
            ("causal 2048", layout_host.clone()),
            ("multiple choice (primer + 32 questions x 4)", mc_layout()),
        ] {
            let t = l.tokens();
            let qkv = gpu.from_host(t, 3 * h, &values(t * 3 * h, 1.0, 13)).expect("qkv");
            let dl = gpu.prepare(&l, &[]).expect("prepare").0;
            g.throughput(Throughput::Elements(attention_flops(&l, h)));
            g.bench_function(BenchmarkId::new(name, format!("{t} rows, {heads}x{hd} (FLOP)")), |b| {
                b.iter(|| {
                    let o = gpu.attention(&qkv, None, &dl, shape).unwrap();
                    sync(gpu);
                    o
                })
            });
        }
        g.finish();

        let table = weight(gpu, vocab, h, 14);
        let ids: Vec<u32> = (0..T as u32).map(|i| (i * 7919) % vocab as u32).collect();
        let ids = gpu.index(&ids).expect("ids");
        let mut g = c.benchmark_group(format!("embedding/{size}"));
        g.throughput(Throughput::Bytes((T * h) as u64 * (e + 4)));
        g.bench_function(BenchmarkId::from_parameter(format!("{T} ids x {h}")), |b| {
            b.iter(|| {
                let y = gpu.embedding(&table, &ids).unwrap();
                sync(gpu);
                y
            })
        });
        g.finish();

        let rows = gpu.index(&(0..R as u32).map(|i| i * 3).collect::<Vec<_>>()).expect("rows");
        let mut g = c.benchmark_group(format!("gather_rows/{size}"));
        g.throughput(Throughput::Bytes((R * h) as u64 * 8));
        g.bench_function(BenchmarkId::from_parameter(format!("{R} of {T}x{h} f32")), |b| {
            b.iter(|| {
                let y = gpu.gather_rows(&x32, &rows).unwrap();
                sync(gpu);
                y
            })
        });
        g.finish();

        let xr = gpu.from_host(R, h, &values(R * h, 1.0, 15)).expect("x");
        let mut g = c.benchmark_group(format!("lm_head/{size}"));
        g.throughput(Throughput::Elements(2 * (R * vocab * h) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{R}x{h} x {vocab}x{h}^T -> f32 (FLOP)")), |b| {
            b.iter(|| {
                let y = gpu.lm_head(&xr, &table).unwrap();
                sync(gpu);
                y
            })
        });
        g.finish();

        let logits = gpu.lm_head(&xr, &table).expect("logits");
        let targets: Vec<(u32, u32)> = (0..R as u32).flat_map(|r| [(r, (r * 31) % vocab as u32), (r, 7)]).collect();
        let mut g = c.benchmark_group(format!("logsoftmax_gather/{size}"));
        g.throughput(Throughput::Bytes((R * vocab) as u64 * 4));
        g.bench_function(BenchmarkId::from_parameter(format!("{R}x{vocab} f32, {} targets", targets.len())), |b| {
            b.iter(|| gpu.logsoftmax_gather_host(&logits, &targets).unwrap())
        });
        g.finish();
    }
}

/// A 70m-shaped model (6 layers, h 512, 8 heads, V 50304) with random weights, in the backend's dtype.
fn random_70m(gpu: &CudaBackend) -> Model<CudaBackend> {
    let config = ModelConfig::from_json(&serde_json::json!({
        "model_type": "gpt_neox", "hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8,
        "intermediate_size": 2048, "vocab_size": 50304, "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
        "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true
    }))
    .expect("70m config");
    let (h, f, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let mut seed = 100;
    let mut w = |r: usize, c: usize| {
        seed += 1;
        weight(gpu, r, c, seed)
    };
    let layers = (0..config.num_layers)
        .map(|i| Layer {
            ln1_w: param(gpu, h, 1000 + i as u64),
            ln1_b: param(gpu, h, 1100 + i as u64),
            ln2_w: param(gpu, h, 1200 + i as u64),
            ln2_b: param(gpu, h, 1300 + i as u64),
            qkv_w: w(3 * h, h),
            qkv_b: param(gpu, 3 * h, 1400 + i as u64),
            dense_w: w(h, h),
            dense_b: param(gpu, h, 1500 + i as u64),
            fc1_w: w(f, h),
            fc1_b: param(gpu, f, 1600 + i as u64),
            fc2_w: w(h, f),
            fc2_b: param(gpu, h, 1700 + i as u64),
        })
        .collect();
    Model {
        embed_in: w(v, h),
        layers,
        final_ln_w: param(gpu, h, 2000),
        final_ln_b: param(gpu, h, 2001),
        embed_out: w(v, h),
        config,
    }
}

/// 256 questions x 4 choices: a 64-token context each, 8-token choices, all under a 256-token primer
/// (TruthfulQA-like sharing).
fn mc_requests() -> Vec<Request> {
    let primer: Vec<u32> = (0..256).map(|i| (i * 13 + 1) % 50000).collect();
    let mut reqs = vec![];
    for q in 0..256u32 {
        let mut ctx = primer.clone();
        ctx.extend((0..64).map(|i| (q * 101 + i * 7 + 3) % 50000));
        for c in 0..4u32 {
            reqs.push(Request {
                context: ctx.clone(),
                continuation: (0..8).map(|i| (q * 17 + c * 5 + i + 11) % 50000).collect(),
            });
        }
    }
    reqs
}

fn bench_end_to_end(c: &mut Criterion, gpu: &CudaBackend) {
    let model = random_70m(gpu);
    let reqs = mc_requests();
    let naive: usize = reqs.iter().map(|r| r.context.len() + r.continuation.len()).sum();
    let mut g = c.benchmark_group("end_to_end/70m-shaped");
    g.throughput(Throughput::Elements(naive as u64));
    for (name, sharing) in [("prefix sharing", true), ("no sharing", false)] {
        let p = plan::build(&reqs, 2048, 8192, sharing).expect("plan");
        g.bench_function(
            BenchmarkId::new(
                name,
                format!("{} requests, {naive} requested tokens, {} computed", reqs.len(), p.computed_tokens),
            ),
            |b| b.iter(|| run_plan(gpu, &model, &p, |_| {}).unwrap()),
        );
    }
    g.finish();
}

fn main() {
    let gpu = match lmscore::backend::cuda::check_available().and_then(|_| CudaBackend::new(0, DType::F16)) {
        Ok(g) => g,
        Err(e) => {
            println!("SKIPPED: no CUDA device ({e}): the kernel benches need a GPU");
            return;
        }
    };
    let ctx = gpu.context();
    let attr = |a| ctx.attribute(a).unwrap_or(0) as f64;
    use cudarc::driver::sys::CUdevice_attribute as A;
    // DDR: two transfers per clock. The attribute is in kHz and bits.
    let peak_gbs = attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE) * 1e3 * 2.0 * attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH) / 8.0 / 1e9;
    println!(
        "device: {} ({} SMs); theoretical DRAM peak {:.0} GB/s = {:.0} GiB/s (memory clock x bus width x 2); \
         dense f16 tensor peak ~990 TFLOP/s on H100 SXM, ~756 on H100 PCIe",
        gpu.describe(),
        attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        peak_gbs,
        peak_gbs * 1e9 / (1u64 << 30) as f64
    );
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_sizes(&mut c, &gpu);
    bench_end_to_end(&mut c, &gpu);
    c.final_summary();
}
