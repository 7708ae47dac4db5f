//! A loaded model on a chosen device, and the one call every front end uses: score these requests.

use crate::backend::cpu::Cpu;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Activity, Backend};
use crate::checkpoint::{Checkpoint, DType};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::{self, Request};
use crate::score::{locate_non_finite, run_plan, RequestScore};

/// The backend a model runs on. Which CUDA device is [`EngineOptions::cuda_ordinal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

/// A `--device` value: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`, the N-th (0-based) CUDA device this process
/// sees (with `CUDA_VISIBLE_DEVICES` set, the N-th of the devices it lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    pub kind: Device,
    /// The CUDA device ordinal; 0 for the CPU.
    pub ordinal: usize,
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        const EXPECTED: &str = "expected cpu, cuda or cuda:N (N the 0-based number of a CUDA device; cuda = cuda:0)";
        let (kind, ordinal) = match s.split_once(':') {
            None if s == "cpu" => (Device::Cpu, 0),
            None if s == "cuda" => (Device::Cuda, 0),
            Some(("cuda", n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                let n = n.parse().map_err(|_| format!("cuda:{n}: device number out of range"))?;
                (Device::Cuda, n)
            }
            Some(("cuda", n)) => return Err(format!("cuda:{n}: `{n}` is not a device number; {EXPECTED}")),
            Some(("cpu", _)) => return Err("the CPU takes no device number: use cpu".into()),
            _ => return Err(EXPECTED.into()),
        };
        Ok(DeviceSpec { kind, ordinal })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda => write!(f, "cuda:{}", self.ordinal),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub device: Device,
    /// Which CUDA device (`--device cuda:N`); unused on the CPU.
    pub cuda_ordinal: usize,
    /// Compute precision; None = the checkpoint's stored dtype (CPU always computes in f32).
    pub dtype: Option<DType>,
    /// Token budget of one packed batch; None = the device default.
    pub max_batch_tokens: Option<usize>,
    /// Context window; None = `max_position_embeddings`.
    pub max_length: Option<usize>,
    /// Share common prefixes between requests (the prefix tree). Off = each request computed on its own.
    pub sharing: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: Device::Cpu,
            cuda_ordinal: 0,
            dtype: None,
            max_batch_tokens: None,
            max_length: None,
            sharing: true,
        }
    }
}

pub enum Engine {
    Cpu(Cpu, Model<Cpu>),
    Cuda(CudaBackend, Model<CudaBackend>),
}

/// What a scoring call did, for reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PlanStats {
    pub naive_tokens: usize,
    pub computed_tokens: usize,
    pub scored_rows: usize,
    pub batches: usize,
    pub seconds: f64,
    /// What the backend did during the run (copies, synchronisations, launches per op): `score --profile`.
    #[serde(skip)]
    pub activity: Activity,
}

impl PlanStats {
    pub fn sharing_ratio(&self) -> f64 {
        self.naive_tokens as f64 / self.computed_tokens.max(1) as f64
    }
    /// Requested tokens per second of wall time (naive tokens: the figure comparable with per-request engines).
    pub fn tokens_per_second(&self) -> f64 {
        self.naive_tokens as f64 / self.seconds.max(1e-9)
    }
}

impl EngineOptions {
    /// The device as `--device` spells it: `cpu` or `cuda:N`.
    pub fn device_spec(&self) -> DeviceSpec {
        DeviceSpec {
            kind: self.device,
            ordinal: if self.device == Device::Cuda { self.cuda_ordinal } else { 0 },
        }
    }
}

impl Engine {
    pub fn load(ckpt: &Checkpoint, opts: &EngineOptions) -> Result<Self> {
        match opts.device {
            Device::Cpu => {
                if matches!(opts.dtype, Some(DType::F16) | Some(DType::BF16)) {
                    return Err(Error::invalid("the CPU backend computes in f32 only; use --dtype f32 or --device cuda"));
                }
                Ok(Engine::Cpu(Cpu, Model::load(&Cpu, ckpt)?))
            }
            Device::Cuda => {
                // Device first: without one, the error is "no CUDA driver/device found ...".
                crate::backend::cuda::check_available()?;
                let (n, count) = (opts.cuda_ordinal, crate::backend::cuda::device_count()?);
                if n >= count {
                    let visible = match std::env::var("CUDA_VISIBLE_DEVICES") {
                        Ok(v) => format!("CUDA_VISIBLE_DEVICES={v:?}"),
                        Err(_) => "CUDA_VISIBLE_DEVICES is not set".into(),
                    };
                    return Err(Error::Cuda(format!(
                        "--device cuda:{n}: {count} CUDA device{} present (cuda:0{}); {visible}, and devices are numbered from 0 among the visible ones",
                        if count == 1 { " is" } else { "s are" },
                        if count > 1 { format!(" to cuda:{}", count - 1) } else { String::new() }
                    )));
                }
                let dtype = match opts.dtype {
                    Some(d) => d,
                    None => ckpt.stored_dtype()?,
                };
                let b = CudaBackend::new(n, dtype)?;
                let m = Model::load(&b, ckpt)?;
                Ok(Engine::Cuda(b, m))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu(b, _) => b.describe(),
            Engine::Cuda(b, _) => b.describe(),
        }
    }

    pub fn config(&self) -> &crate::config::ModelConfig {
        match self {
            Engine::Cpu(_, m) => &m.config,
            Engine::Cuda(_, m) => &m.config,
        }
    }

    /// Everything the backend has counted so far (see `Activity`).
    pub fn activity(&self) -> Activity {
        match self {
            Engine::Cpu(b, _) => b.activity(),
            Engine::Cuda(b, _) => b.activity(),
        }
    }

    /// Time every op from now on (CUDA: a pair of events per launch; CPU: wall time per op).
    pub fn time_ops(&self, on: bool) {
        match self {
            Engine::Cpu(b, _) => b.time_ops(on),
            Engine::Cuda(b, _) => b.time_ops(on),
        }
    }

    pub fn default_batch_tokens(&self) -> usize {
        match self {
            Engine::Cpu(..) => 2048,
            // No [T, T] buffer anywhere (flash attention), so the budget only bounds activations.
            Engine::Cuda(..) => 8192,
        }
    }

    /// Plan and score `requests`; results in request order. `on_progress(batch_tokens, total_tokens)` after
    /// each batch, counting computed tokens.
    pub fn score(
        &self,
        requests: &[Request],
        opts: &EngineOptions,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<(Vec<RequestScore>, PlanStats)> {
        let max_len = opts.max_length.unwrap_or(self.config().max_positions);
        if max_len == 0 {
            return Err(Error::invalid("--max-length must be at least 1"));
        }
        if max_len > self.config().max_positions {
            return Err(Error::invalid(format!(
                "--max-length {max_len} exceeds the model's max_position_embeddings {}",
                self.config().max_positions
            )));
        }
        let budget = opts.max_batch_tokens.unwrap_or_else(|| self.default_batch_tokens());
        let plan = plan::build(requests, max_len, budget, opts.sharing)?;
        let start = std::time::Instant::now();
        let total = plan.computed_tokens;
        let on_batch = |tokens| on_progress(tokens, total);
        let before = self.activity();
        let scores = match self {
            Engine::Cpu(b, m) => run_plan(b, m, &plan, on_batch),
            Engine::Cuda(b, m) => run_plan(b, m, &plan, on_batch),
        };
        let scores = match scores {
            Err(Error::NonFinite { request, detail }) => {
                let located = match self {
                    Engine::Cpu(b, m) => locate_non_finite(b, m, &requests[request], max_len),
                    Engine::Cuda(b, m) => locate_non_finite(b, m, &requests[request], max_len),
                };
                let detail = match located {
                    Ok(place) => format!("{detail}; {place}"),
                    Err(e) => format!("{detail} (locating it failed: {e})"),
                };
                return Err(Error::NonFinite { request, detail });
            }
            other => other?,
        };
        let stats = PlanStats {
            naive_tokens: plan.naive_tokens,
            computed_tokens: plan.computed_tokens,
            scored_rows: plan.scored_rows,
            batches: plan.batches.len(),
            seconds: start.elapsed().as_secs_f64(),
            activity: self.activity().since(&before),
        };
        Ok((scores, stats))
    }
}

/// Run the CPU work on `n` threads (the process-wide rayon pool the CPU backend and its GEMMs use). Once per
/// process, before anything is scored.
pub fn use_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("--threads must be at least 1"));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| Error::invalid(format!("--threads {n}: {e}")))
}

/// Threads the CPU work runs on (what `--threads` set, else every core).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// A progress bar over `total` computed tokens on stderr; hidden when stderr is not a terminal.
pub fn token_progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} tokens [{elapsed} < {eta}, {per_sec}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}
