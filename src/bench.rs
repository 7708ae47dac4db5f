//! `lmscore bench`: how close CPU scoring runs to this machine's f32 GEMM rate, measured in one run.
//!
//! 1. The achievable rate: the backend's own GEMM (`cpu::x_wt_plus_b`) on the model's shapes — the four body
//!    matrices at a full batch of rows and the LM head at a full chunk of scored rows — weighted by how many
//!    FLOPs of each the workload needs.
//! 2. The workload: a random checkpoint of the chosen shape scoring TruthfulQA-like request trees (a shared
//!    primer, a context per question, two sets of 4-13 answers: MC1 and MC2).
//! 3. FLOPs the plan implies (counted from its batches, not estimated): 2 x weights per computed token in the
//!    body, 4 x h per (query, key) pair per layer in attention, 2 x h x V per distinct scored row in the LM
//!    head. Achieved GFLOP/s and its fraction of the GEMM rate, plus the time per op.

use crate::backend::cpu::{profile, x_wt_plus_b, Cpu, CpuTensor};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::LOGIT_CHUNK_ROWS;
use crate::plan::{self, Plan, Request};
use crate::testing::{pythia_like, random_model, Rng};
use std::time::Instant;

/// A named Pythia geometry (`70m`, `160m`, ...) or `HIDDEN:LAYERS:HEADS[:VOCAB]`.
pub fn shape(spec: &str) -> Result<ModelConfig> {
    let known = |h, l, n| pythia_like(h, l, n, 50304, 2048);
    Ok(match spec {
        "14m" => known(128, 6, 4),
        "31m" => known(256, 6, 8),
        "70m" => known(512, 6, 8),
        "160m" => known(768, 12, 12),
        "410m" => known(1024, 24, 16),
        custom => {
            let parts: Vec<usize> = custom
                .split(':')
                .map(|p| {
                    p.parse()
                        .map_err(|_| Error::invalid(format!("--shape {custom}: expected e.g. 160m or 768:12:12[:50304]")))
                })
                .collect::<Result<_>>()?;
            match parts[..] {
                [h, l, n] if h > 0 && l > 0 && n > 0 && h % n == 0 => known(h, l, n),
                [h, l, n, v] if h > 0 && l > 0 && n > 0 && v > 0 && h % n == 0 => pythia_like(h, l, n, v, 2048),
                _ => {
                    return Err(Error::invalid(format!(
                        "--shape {custom}: expected HIDDEN:LAYERS:HEADS[:VOCAB], heads dividing hidden"
                    )))
                }
            }
        }
    })
}

/// TruthfulQA-like requests: a `primer`-token prompt shared by every question, a 12-28 token question
/// context, then MC1's and MC2's answers (4-13 each, 4-16 tokens).
pub fn truthfulqa_like(questions: usize, primer: usize, vocab: usize, seed: u64) -> Vec<Request> {
    let mut r = Rng(seed);
    let primer = r.tokens(primer, vocab);
    let mut out = vec![];
    for _ in 0..questions {
        let question_len = 12 + r.below(17);
        let context = [primer.clone(), r.tokens(question_len, vocab)].concat();
        for _set in 0..2 {
            let answers = 4 + r.below(10);
            for _ in 0..answers {
                let n = 4 + r.below(13);
                out.push(Request {
                    context: context.clone(),
                    continuation: r.tokens(n, vocab),
                });
            }
        }
    }
    out
}

/// FLOPs a plan implies, by part.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flops {
    pub body: f64,
    pub attention: f64,
    pub lm_head: f64,
}

impl Flops {
    pub fn total(&self) -> f64 {
        self.body + self.attention + self.lm_head
    }
}

pub fn plan_flops(plan: &Plan, c: &ModelConfig) -> Flops {
    let (h, f, v, l) = (c.hidden_size as f64, c.intermediate_size as f64, c.vocab_size as f64, c.num_layers as f64);
    let mut key_pairs = 0f64; // (query, key) pairs over all batches, one layer
    for b in &plan.batches {
        for s in &b.layout.segments {
            let ancestors: f64 = s.ancestors.iter().map(|&(_, n)| n as f64).sum();
            let q = s.q_len as f64;
            key_pairs += q * ancestors + q * (q + 1.0) / 2.0;
        }
    }
    Flops {
        body: 2.0 * (4.0 * h * h + 2.0 * h * f) * l * plan.computed_tokens as f64,
        attention: 4.0 * h * key_pairs * l,
        lm_head: 2.0 * h * v * plan.scored_rows as f64,
    }
}

/// Wall and CPU seconds (all threads of the process) since `start`, read together.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall: Instant,
    cpu: f64,
}

/// CPU seconds this process has used, all threads (user + system).
fn process_cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

impl Clock {
    pub fn start() -> Self {
        Clock {
            wall: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }
    /// (wall, CPU) seconds since start.
    pub fn elapsed(&self) -> (f64, f64) {
        (self.wall.elapsed().as_secs_f64(), process_cpu_seconds() - self.cpu)
    }
}

/// A FLOP rate measured both ways: per second of wall time (the figure that counts) and per CPU-second of
/// the process, all threads (less sensitive to other load on a shared machine, but blind to idle threads).
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub wall: f64,
    pub cpu: f64,
}

/// The GEMM's rate on one [m, k] x [n, k]^T shape: the fastest of several runs after a warm-up.
fn gemm_rate(m: usize, k: usize, n: usize, bias: bool, rng: &mut Rng) -> Result<Rate> {
    let x = CpuTensor::new(m, k, rng.values(m * k, 1.0));
    let w = CpuTensor::new(n, k, rng.values(n * k, 0.05));
    let b = bias.then(|| CpuTensor::new(1, n, rng.values(n, 0.1)));
    let flops = 2.0 * (m * k * n) as f64;
    let reps = ((2e10 / flops) as usize).clamp(2, 20); // ~0.2-2 s per shape on one core
    x_wt_plus_b(&x, &w, b.as_ref())?;
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let clock = Clock::start();
        std::hint::black_box(x_wt_plus_b(&x, &w, b.as_ref())?);
        let (wall, cpu) = clock.elapsed();
        best = (best.0.min(wall), best.1.min(cpu));
    }
    Ok(Rate {
        wall: flops / best.0,
        cpu: flops / best.1.max(1e-9),
    })
}

pub struct GemmReference {
    /// (what, rate) per shape.
    pub shapes: Vec<(String, Rate)>,
    /// The rate the workload's FLOP mix would run at if every FLOP ran at its GEMM's rate.
    pub rate: Rate,
}

/// The achievable rate for `flops`: body matrices at `batch_rows` rows, the LM head at a full logits chunk.
/// Attention is counted at the body's rate: its products are matrix products too.
pub fn gemm_reference(c: &ModelConfig, flops: &Flops, batch_rows: usize) -> Result<GemmReference> {
    let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let mut rng = Rng(7);
    let mut shapes = vec![];
    let mut body = (0.0, 0.0); // seconds for one token through one layer, (wall, cpu)
    for (what, k, n) in [("qkv", h, 3 * h), ("dense", h, h), ("fc1", h, f), ("fc2", f, h)] {
        let rate = gemm_rate(batch_rows, k, n, true, &mut rng)?;
        let flops = 2.0 * (k * n) as f64;
        body = (body.0 + flops / rate.wall, body.1 + flops / rate.cpu);
        shapes.push((format!("{what} [{batch_rows} x {k}] x [{k} x {n}]"), rate));
    }
    let head_rows = LOGIT_CHUNK_ROWS;
    let head = gemm_rate(head_rows, h, v, false, &mut rng)?;
    shapes.push((format!("LM head [{head_rows} x {h}] x [{h} x {v}]"), head));
    let per_layer_token = 2.0 * (4 * h * h + 2 * h * f) as f64;
    let mix = |body_seconds: f64, head_rate: f64| {
        let seconds = (flops.body + flops.attention) * body_seconds / per_layer_token + flops.lm_head / head_rate;
        flops.total() / seconds
    };
    Ok(GemmReference {
        shapes,
        rate: Rate {
            wall: mix(body.0, head.wall),
            cpu: mix(body.1, head.cpu),
        },
    })
}

pub struct Measured {
    pub plan: Plan,
    pub flops: Flops,
    /// Of the fastest run (by wall time).
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    /// (op, wall seconds) in that run.
    pub ops: Vec<(profile::Op, f64)>,
}

impl Measured {
    pub fn rate(&self) -> Rate {
        Rate {
            wall: self.flops.total() / self.wall_seconds,
            cpu: self.flops.total() / self.cpu_seconds.max(1e-9),
        }
    }
}

/// Score `requests` on a random model of shape `c` (the fastest of `reps` runs), recording time per op.
pub fn measure(c: &ModelConfig, requests: &[Request], batch_tokens: usize, reps: usize) -> Result<Measured> {
    let model = random_model(&Cpu, c, 1)?;
    let plan = plan::build(requests, c.max_positions, batch_tokens, true)?;
    let flops = plan_flops(&plan, c);
    crate::score::run_plan(&Cpu, &model, &plan, |_| {})?; // warm-up: page in weights, size allocations
    let mut best: Option<(f64, f64, Vec<(profile::Op, f64)>)> = None;
    for _ in 0..reps.max(1) {
        profile::enable(true);
        let clock = Clock::start();
        std::hint::black_box(crate::score::run_plan(&Cpu, &model, &plan, |_| {})?);
        let (wall, cpu) = clock.elapsed();
        profile::enable(false);
        if best.as_ref().is_none_or(|b| wall < b.0) {
            best = Some((wall, cpu, profile::seconds()));
        }
    }
    let (wall_seconds, cpu_seconds, ops) = best.expect("at least one run");
    Ok(Measured {
        plan,
        flops,
        wall_seconds,
        cpu_seconds,
        ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_are_counted_from_the_plan() {
        // One request of 3 context + 2 continuation tokens: 4 computed tokens in one segment (the last token is
        // never input), query i sees i + 1 keys (1 + 2 + 3 + 4 = 10 pairs), and 2 scored rows.
        let c = pythia_like(8, 2, 2, 11, 64);
        let plan = plan::build(
            &[Request {
                context: vec![1, 2, 3],
                continuation: vec![4, 5],
            }],
            64,
            64,
            true,
        )
        .unwrap();
        let f = plan_flops(&plan, &c);
        let (h, ff, v, l) = (8.0, 32.0, 11.0, 2.0);
        assert_eq!(f.body, 2.0 * (4.0 * h * h + 2.0 * h * ff) * l * 4.0);
        assert_eq!(f.attention, 4.0 * h * 10.0 * l);
        assert_eq!(f.lm_head, 2.0 * h * v * 2.0);
    }

    #[test]
    fn shapes_by_name_and_by_numbers() {
        assert_eq!(shape("160m").unwrap().hidden_size, 768);
        let c = shape("96:3:4:1000").unwrap();
        assert_eq!((c.hidden_size, c.num_layers, c.num_heads, c.vocab_size), (96, 3, 4, 1000));
        assert!(shape("96:3:5").is_err() && shape("big").is_err() && shape("0:1:1").is_err());
    }
}
