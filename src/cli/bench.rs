//! `lmscore bench`: CPU scoring throughput against the GEMM rate of the same machine, in one run.

use clap::Args as ClapArgs;
use lmscore::backend::cpu::Cpu;
use lmscore::backend::Backend;
use lmscore::bench::{gemm_reference, measure, shape, truthfulqa_like};
use lmscore::{Error, Result};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model geometries, comma-separated: 14m, 31m, 70m, 160m, 410m, or HIDDEN:LAYERS:HEADS[:VOCAB] (random weights).
    #[arg(long, default_value = "70m,160m")]
    pub shape: String,
    /// TruthfulQA-like questions (each with a context and MC1 + MC2 answer sets after a shared primer).
    #[arg(long, default_value_t = 20)]
    pub questions: usize,
    /// Tokens of the primer every question shares (TruthfulQA's 6-shot prompt is about 300).
    #[arg(long, default_value_t = 300)]
    pub primer: usize,
    /// Token budget of a packed batch (the CPU default).
    #[arg(long, default_value_t = 2048)]
    pub max_batch_tokens: usize,
    /// Scoring runs; the fastest is reported.
    #[arg(long, default_value_t = 2)]
    pub reps: usize,
    /// CPU thread counts to measure, comma-separated (default: 1 and every core).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = if args.threads.is_empty() { vec![1, cores] } else { args.threads.clone() };
    threads.dedup();
    for spec in args.shape.split(',') {
        for &n in &threads {
            if n == 0 {
                return Err(Error::invalid("--threads must be at least 1"));
            }
            // A pool of its own per measurement: the GEMM and every parallel loop run on its n threads.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| Error::invalid(format!("--threads {n}: {e}")))?;
            pool.install(|| bench_one(&args, spec))?;
            println!();
        }
    }
    Ok(())
}

fn bench_one(args: &Args, spec: &str) -> Result<()> {
    let c = shape(spec)?;
    let requests = truthfulqa_like(args.questions, args.primer, c.vocab_size, 3);
    eprintln!("scoring {} requests on a random {spec} model ({})...", requests.len(), Cpu.describe());
    let m = measure(&c, &requests, args.max_batch_tokens, args.reps)?;
    eprintln!("measuring the GEMM at the model's shapes...");
    let gemm = gemm_reference(&c, &m.flops, args.max_batch_tokens)?;
    let achieved = m.rate();
    println!(
        "shape {spec}: hidden {}, {} layers, {} heads, vocab {}; {}",
        c.hidden_size,
        c.num_layers,
        c.num_heads,
        c.vocab_size,
        Cpu.describe()
    );
    println!(
        "plan: {} requests, {} tokens requested, {} computed, {} scored rows, {} batches",
        requests.len(),
        m.plan.naive_tokens,
        m.plan.computed_tokens,
        m.plan.scored_rows,
        m.plan.batches.len()
    );
    println!(
        "FLOPs: {:.3} T (body {:.3}, attention {:.3}, LM head {:.3})",
        m.flops.total() * 1e-12,
        m.flops.body * 1e-12,
        m.flops.attention * 1e-12,
        m.flops.lm_head * 1e-12
    );
    println!("GEMM rates (wall clock; per CPU-second in brackets):");
    for (what, rate) in &gemm.shapes {
        println!("  {what}: {:.1} GFLOP/s [{:.1}]", rate.wall * 1e-9, rate.cpu * 1e-9);
    }
    println!(
        "  this workload's FLOP mix at those rates: {:.1} GFLOP/s [{:.1}]",
        gemm.rate.wall * 1e-9,
        gemm.rate.cpu * 1e-9
    );
    println!(
        "scoring: {:.3} s wall, {:.3} s CPU: {:.1} GFLOP/s = {:.1}% of the GEMM rate [{:.1} per CPU-second = {:.1}%]",
        m.wall_seconds,
        m.cpu_seconds,
        achieved.wall * 1e-9,
        100.0 * achieved.wall / gemm.rate.wall,
        achieved.cpu * 1e-9,
        100.0 * achieved.cpu / gemm.rate.cpu
    );
    println!(
        "  {:.0} computed tokens/s, {:.0} requested tokens/s (wall)",
        m.plan.computed_tokens as f64 / m.wall_seconds,
        m.plan.naive_tokens as f64 / m.wall_seconds
    );
    println!("time per op (wall):");
    let profiled: f64 = m.ops.iter().map(|o| o.1).sum();
    for (op, s) in m.ops.iter().filter(|o| o.1 > 0.0) {
        println!("  {:<32} {:>8.3} s  {:>5.1}%", op.name(), s, 100.0 * s / m.wall_seconds);
    }
    let glue = m.wall_seconds - profiled;
    println!(
        "  {:<32} {:>8.3} s  {:>5.1}%",
        "outside the ops (plan glue)",
        glue,
        100.0 * glue / m.wall_seconds
    );
    Ok(())
}
