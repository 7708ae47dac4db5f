//! What the CUDA backend asks of the device, counted as it happens: host-to-device and device-to-host
//! copies, host synchronisations, launches per op, and (while op timing is on) each launch's time from a
//! pair of CUDA events. `lmscore score --profile FILE` reports the counts of a run; the stand-in's counts
//! are real, its event times are host time (it has no GPU clock).

use crate::backend::Activity;
use cudarc::driver::{CudaEvent, CudaStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    totals: Activity,
    timing: bool,
    /// Launches whose events have not been read yet: (op, start, end).
    pending: Vec<(String, CudaEvent, CudaEvent)>,
}

pub struct Counters {
    state: Mutex<State>,
    clock: &'static str,
}

/// `Activity::clock` of op seconds measured with CUDA events on a GPU.
pub const GPU_CLOCK: &str = "CUDA events (GPU time)";

/// The start event of a timed launch, handed back to `Counters::launched`.
pub struct Timed(Option<CudaEvent>);

impl Counters {
    pub fn new(stand_in: bool) -> Self {
        Counters {
            state: Mutex::new(State::default()),
            clock: if stand_in {
                "host time of the CUDA stand-in (not GPU time)"
            } else {
                GPU_CLOCK
            },
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn h2d(&self) {
        self.state().totals.h2d_copies += 1;
    }
    pub fn d2h(&self) {
        self.state().totals.d2h_copies += 1;
    }
    pub fn synchronized(&self) {
        self.state().totals.synchronizations += 1;
    }
    /// A synchronisation after a launch under LMSCORE_CUDA_SYNC=1 (see `Activity::debug_synchronizations`).
    pub fn debug_synchronized(&self) {
        self.state().totals.debug_synchronizations += 1;
    }

    /// Before a launch: a recorded start event when timing is on.
    pub fn before_launch(&self, stream: &Arc<CudaStream>) -> Timed {
        if !self.state().timing {
            return Timed(None);
        }
        Timed(stream.record_event(None).ok())
    }

    /// After a launch (or cuBLAS call) of op `op` was queued.
    pub fn launched(&self, op: &str, stream: &Arc<CudaStream>, start: Timed) {
        let end = start.0.as_ref().and_then(|_| stream.record_event(None).ok());
        let mut s = self.state();
        s.totals.kernel_launches += 1;
        s.totals.ops.entry(op.to_string()).or_default().0 += 1;
        if let (Some(a), Some(b)) = (start.0, end) {
            s.pending.push((op.to_string(), a, b));
        }
    }

    /// Read the events of finished launches into the per-op seconds. Call only after a synchronisation
    /// (reading an event that has not completed would fail).
    pub fn settle(&self) {
        let mut s = self.state();
        let pending = std::mem::take(&mut s.pending);
        for (op, a, b) in pending {
            if let Ok(ms) = a.elapsed_ms(&b) {
                s.totals.ops.entry(op).or_default().1 += ms as f64 / 1e3;
            }
        }
    }

    pub fn set_timing(&self, on: bool) {
        self.state().timing = on;
    }

    pub fn snapshot(&self) -> Activity {
        let mut a = self.state().totals.clone();
        a.clock = self.clock;
        a
    }
}
