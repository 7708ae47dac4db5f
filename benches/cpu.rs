//! CPU backend benches: the forward pass on a pythia-70m-shaped model (random weights), the fused
//! log-softmax gather at Pythia's vocabulary, and the planner on the real TruthfulQA requests.
//! `cargo bench --bench cpu`; criterion prints tokens/s (elements) per benchmark.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lmscore::backend::cpu::Cpu;
use lmscore::backend::Backend;
use lmscore::plan::{self, Request};
use lmscore::score::run_plan;
use lmscore::testing::{pythia_like, random_model, Rng};

/// 16 questions x 4 choices after a shared 100-token primer: the shape of a few-shot MC task.
fn mc_requests(r: &mut Rng, vocab: usize) -> Vec<Request> {
    let primer = r.tokens(100, vocab);
    (0..16)
        .flat_map(|_| {
            let context = [primer.clone(), r.tokens(30, vocab)].concat();
            (0..4)
                .map(|_| Request {
                    context: context.clone(),
                    continuation: r.tokens(8, vocab),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn forward(c: &mut Criterion) {
    let config = pythia_like(512, 6, 8, 50304, 2048); // pythia-70m
    let model = random_model(&Cpu, &config, 1).unwrap();
    let mut r = Rng(2);
    let reqs = mc_requests(&mut r, 50304);
    let mut g = c.benchmark_group("cpu_pythia70m_score");
    g.sample_size(10);
    for sharing in [true, false] {
        let plan = plan::build(&reqs, 2048, 2048, sharing).unwrap();
        // Requested tokens per second: the figure comparable with per-request engines.
        g.throughput(Throughput::Elements(plan.naive_tokens as u64));
        let name = if sharing { "prefix_tree" } else { "no_sharing" };
        g.bench_function(BenchmarkId::new(name, format!("{}_computed_tokens", plan.computed_tokens)), |b| {
            b.iter(|| run_plan(&Cpu, &model, &plan, |_| {}).unwrap())
        });
    }
    g.finish();
}

fn logsoftmax_gather(c: &mut Criterion) {
    let (rows, vocab) = (64, 50304);
    let mut r = Rng(3);
    let logits = Cpu.from_host(rows, vocab, &r.values(rows * vocab, 30.0)).unwrap();
    let targets: Vec<(u32, u32)> = (0..rows as u32).map(|i| (i, r.below(vocab) as u32)).collect();
    let mut g = c.benchmark_group("cpu_logsoftmax_gather");
    g.throughput(Throughput::Bytes((rows * vocab * 4) as u64));
    g.bench_function("64x50304", |b| b.iter(|| Cpu.logsoftmax_gather_host(&logits, &targets).unwrap()));
    g.finish();
}

fn planner(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/derived/requests/truthfulqa.jsonl");
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("SKIPPED planner bench: {path} not found");
        return;
    };
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<u32>>();
    let mut reqs = vec![];
    for line in text.lines() {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in ["mc1_continuation_ids", "mc2_continuation_ids"] {
            for cont in doc[key].as_array().unwrap() {
                reqs.push(Request {
                    context: ids(&doc["context_ids"]),
                    continuation: ids(cont),
                });
            }
        }
    }
    let mut g = c.benchmark_group("planner");
    g.sample_size(10);
    g.throughput(Throughput::Elements(reqs.len() as u64));
    g.bench_function("truthfulqa_mc1_mc2_9996_requests", |b| {
        b.iter(|| plan::build(&reqs, 2048, 4096, true).unwrap())
    });
    g.finish();
}

criterion_group!(benches, forward, logsoftmax_gather, planner);
criterion_main!(benches);
