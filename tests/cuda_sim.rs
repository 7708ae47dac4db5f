//! Test infrastructure: the semantics suite of the CPU stand-in for the CUDA driver and NVRTC (cuda-sim/,
//! built by scripts/cuda-sim.sh). The CUDA backend's own tests run on the stand-in, so a stand-in that is
//! more forgiving than a GPU (or wrong in a different way) would let kernel bugs through. Each case here
//! pins one promise of the stand-in to an exact value or to the key parts of its error message, with the
//! expected values computed in Rust from the CUDA programming guide / PTX ISA definitions (never from
//! cuda-sim/src/simt.cpp), so every case can fail:
//!
//!  1. `__syncthreads` block reductions are exact at block sizes 32, 96, 1024 and with a 3-D block and grid
//!     (threadIdx / blockIdx / blockDim / gridDim in all three dimensions);
//!  2. `__syncthreads` is a real barrier under every schedule (and without it the same kernel is wrong);
//!  3. the "missing leading barrier" bug of a twice-called block_sum is exposed by the greedy schedule,
//!     and running two schedules at once turns it into a launch failure;
//!  4. shuffles follow PTX shfl.sync (idx / up / down / bfly, every width, out-of-segment sources), also
//!     for 64-bit values;
//!  5. votes (`__ballot_sync`, `__any_sync`, `__all_sync`) with full and partial masks;
//!  6. divergence (warp and block level) is an error naming the kernel and the `t.cu:LINE` of the sync
//!     points, never a hang;
//!  7. dynamic shared memory: NaN-filled before each block, bounded at the launch's size, limited to 48 KB
//!     unless raised, never above 227 KB;
//!  8. launch checks: block / grid limits, `__launch_bounds__`, pointer arguments that are not device
//!     addresses;
//!  9. global memory faults: one past the end, writes into the pad after an odd-sized allocation, use
//!     after free;
//! 10. inline PTX `cvt.rn.f16.f32` / `cvt.f32.f16` bit-exact against the `half` crate, and an unknown PTX
//!     instruction is a compile error;
//! 11. NVRTC / module basics: compile errors in NVRTC's `t.cu(LINE): error` form, missing functions, PTX
//!     text refused;
//! 12. out of memory under CUDA_SIM_MEMORY_BYTES (in a child process: the size is read once).
//!
//! Schedules and the sticky fault are process-wide, so every test holds one lock and restores the default
//! schedule and clears the fault when done. Deliberate faults are cleared with the stand-in's test hook
//! `lms_sim_reset_fault` (a real driver has no way back).
//!
//! Runs only where the stand-in is on the library path (`eval "$(bash scripts/cuda-sim.sh)"` sets
//! LMSCORE_CUDA_SIM); otherwise prints SKIPPED, or fails when LMSCORE_REQUIRE_CUDA=1:
//!
//!     LMSCORE_REQUIRE_CUDA=1 cargo test --release --test cuda_sim -- --test-threads 1

mod common;

// `cfg`: every launch below names its grid and block in full, so the short name keeps them on one line.
use common::sim::{compile, describe, expect_err, launch, launch_config as cfg, Sim, ALL_SCHEDULES};
use cudarc::driver::sys::{CUfunction_attribute_enum, CUresult};
use cudarc::driver::{CudaContext, CudaFunction, DriverError, PushKernelArg};
use cudarc::nvrtc::Ptx;
use half::f16;
use std::sync::mpsc;
use std::time::Duration;

// ---- Helpers (the stand-in's harness is common/sim.rs) ----

/// The t.cu line number of the one source line containing `marker` (line 0 of the text is `#line 1 "t.cu"`).
fn line_of(src: &str, marker: &str) -> usize {
    let hits: Vec<usize> = src.lines().enumerate().filter(|(_, l)| l.contains(marker)).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "marker {marker} must be on exactly one line");
    assert!(src.starts_with("#line 1 \"t.cu\"\n"));
    hits[0]
}

/// Aborts the process (with a message) if not dropped within `secs`: a hang must fail, not stall CI.
struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

fn watchdog(what: &str, secs: u64) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let what = what.to_string();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
            eprintln!("HANG: {what} did not finish within {secs} s (the stand-in must fail fast, never hang)");
            std::process::abort();
        }
    });
    Watchdog(tx)
}

// ---- 1. Barriers: block reductions at every block shape ----

const REDUCE_SRC: &str = r##"#line 1 "t.cu"
// A shared-memory tree reduction over any block shape (up to 1024 threads): one unsigned sum per block,
// and every thread's coordinates, so both the barrier and the built-in variables are checked.
extern "C" __global__ void block_reduce(unsigned* sums, unsigned* ids, unsigned* dims) {
    __shared__ unsigned s[1024];
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned v = (threadIdx.x + 1u) + 7u * (threadIdx.y + 1u) + 131u * (threadIdx.z + 1u) + 100003u * b;
    ids[2 * (b * n + t)] = threadIdx.x | threadIdx.y << 10 | threadIdx.z << 20;
    ids[2 * (b * n + t) + 1] = blockIdx.x | blockIdx.y << 8 | blockIdx.z << 16;
    if (t == 0 && b == 0) {
        dims[0] = blockDim.x; dims[1] = blockDim.y; dims[2] = blockDim.z;
        dims[3] = gridDim.x; dims[4] = gridDim.y; dims[5] = gridDim.z;
    }
    s[t] = v;
    __syncthreads();
    for (unsigned stride = 1; stride < n; stride *= 2) {
        if (t % (2 * stride) == 0 && t + stride < n) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) sums[b] = s[0];
}
"##;

#[test]
fn barriers_make_block_reductions_exact_at_every_block_shape() {
    let Some(sim) = Sim::new("barriers_make_block_reductions_exact_at_every_block_shape") else {
        return;
    };
    let m = sim.module(REDUCE_SRC);
    let f = m.load_function("block_reduce").unwrap();
    type Dim3 = (u32, u32, u32);
    let shapes: [(Dim3, Dim3); 4] = [
        ((3, 1, 1), (32, 1, 1)),
        ((2, 1, 1), (96, 1, 1)),
        ((2, 1, 1), (1024, 1, 1)),
        ((2, 3, 2), (8, 4, 2)),
    ];
    // Every schedule at once: the stand-in also checks that they agree bit for bit.
    sim.schedules("forward,reverse,greedy,shuffle:7");
    for (grid, block) in shapes {
        let n = (block.0 * block.1 * block.2) as usize;
        let blocks = (grid.0 * grid.1 * grid.2) as usize;
        let mut sums = sim.stream.alloc_zeros::<u32>(blocks).unwrap();
        let mut ids = sim.stream.alloc_zeros::<u32>(2 * blocks * n).unwrap();
        let mut dims = sim.stream.alloc_zeros::<u32>(6).unwrap();
        launch!(sim, f, cfg(grid, block, 0), &mut sums, &mut ids, &mut dims).unwrap_or_else(|e| panic!("block {block:?}: {}", describe(&e)));
        let (sums, ids, dims) = (
            sim.stream.clone_dtoh(&sums).unwrap(),
            sim.stream.clone_dtoh(&ids).unwrap(),
            sim.stream.clone_dtoh(&dims).unwrap(),
        );
        assert_eq!(
            dims,
            vec![block.0, block.1, block.2, grid.0, grid.1, grid.2],
            "blockDim / gridDim for block {block:?}"
        );
        for (bz, by, bx) in itertools3(grid.2, grid.1, grid.0) {
            let b = (bx + grid.0 * (by + grid.1 * bz)) as usize;
            let mut want = 0u32;
            for (tz, ty, tx) in itertools3(block.2, block.1, block.0) {
                let t = (tx + block.0 * (ty + block.1 * tz)) as usize;
                want = want.wrapping_add((tx + 1) + 7 * (ty + 1) + 131 * (tz + 1) + 100003 * b as u32);
                assert_eq!(
                    ids[2 * (b * n + t)],
                    tx | ty << 10 | tz << 20,
                    "threadIdx of thread {t} of block {b}, block {block:?}"
                );
                assert_eq!(ids[2 * (b * n + t) + 1], bx | by << 8 | bz << 16, "blockIdx of block {b}, grid {grid:?}");
            }
            assert_eq!(sums[b], want, "sum of block {b}, block {block:?}");
        }
    }
}

/// (z, y, x) over a box, x fastest.
fn itertools3(z: u32, y: u32, x: u32) -> impl Iterator<Item = (u32, u32, u32)> {
    (0..z).flat_map(move |k| (0..y).flat_map(move |j| (0..x).map(move |i| (k, j, i))))
}

// ---- 2. __syncthreads is a real barrier ----

const NEIGHBOUR_SRC: &str = r##"#line 1 "t.cu"
// Each thread publishes its value, then reads its neighbour's: right only if the barrier holds everybody.
extern "C" __global__ void neighbour(const unsigned* in, unsigned* out, int sync) {
    __shared__ unsigned s[1024];
    const unsigned n = blockDim.x, t = threadIdx.x, base = blockIdx.x * n;
    s[t] = in[base + t];
    if (sync) __syncthreads();
    out[base + t] = s[(t + 1) % n];
}
"##;

#[test]
fn syncthreads_is_a_real_barrier_under_every_schedule() {
    let Some(sim) = Sim::new("syncthreads_is_a_real_barrier_under_every_schedule") else {
        return;
    };
    let m = sim.module(NEIGHBOUR_SRC);
    let f = m.load_function("neighbour").unwrap();
    let (blocks, n) = (2usize, 256usize);
    let run = |seed: u32, sync: i32| -> (Vec<u32>, Vec<u32>) {
        let input: Vec<u32> = (0..(blocks * n) as u32)
            .map(|i| seed.wrapping_mul(1_000_003).wrapping_add(i * 7))
            .collect();
        let d_in = sim.stream.clone_htod(&input).unwrap();
        let mut d_out = sim.stream.alloc_zeros::<u32>(blocks * n).unwrap();
        launch!(sim, f, cfg((blocks as u32, 1, 1), (n as u32, 1, 1), 0), &d_in, &mut d_out, &sync).unwrap();
        let want = (0..blocks * n).map(|i| input[i / n * n + (i % n + 1) % n]).collect();
        (sim.stream.clone_dtoh(&d_out).unwrap(), want)
    };
    for (k, spec) in ALL_SCHEDULES
        .iter()
        .chain(&["shuffle:12345", "forward,reverse,greedy,shuffle:3"])
        .enumerate()
    {
        sim.schedules(spec);
        let (got, want) = run(k as u32 + 1, 1);
        assert_eq!(got, want, "neighbour exchange with __syncthreads under {spec}");
    }
    // The control: without the barrier each thread runs to its end before the next starts (forward), so it
    // reads a neighbour slot not yet written this launch.
    sim.schedules("forward");
    let (got, want) = run(99, 0);
    let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    assert!(
        wrong >= blocks * (n - 1),
        "without __syncthreads the exchange must be wrong under forward; {wrong} wrong"
    );
}

// ---- 3. The missing leading barrier of a twice-called block_sum ----

const BLOCK_SUM_SRC: &str = r##"#line 1 "t.cu"
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// kernels/common.cu's block_sum; kLeading = false drops the leading barrier (the bug).
template <bool kLeading>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (kLeading) __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum(lane < warps ? scratch[lane] : 0.f);
}
template <bool kLeading>
__device__ void two_sums(const float* x, float* out) {
    __shared__ float scratch[32];
    const float a = block_sum<kLeading>(x[threadIdx.x], scratch);
    const float b = block_sum<kLeading>(x[blockDim.x + threadIdx.x], scratch);
    out[threadIdx.x] = a;
    out[blockDim.x + threadIdx.x] = b;
}
extern "C" __global__ void two_sums_fixed(const float* x, float* out) { two_sums<true>(x, out); }
extern "C" __global__ void two_sums_buggy(const float* x, float* out) { two_sums<false>(x, out); }
"##;

#[test]
fn missing_leading_barrier_is_exposed_by_the_greedy_schedule() {
    let Some(sim) = Sim::new("missing_leading_barrier_is_exposed_by_the_greedy_schedule") else {
        return;
    };
    let m = sim.module(BLOCK_SUM_SRC);
    let (fixed, buggy) = (m.load_function("two_sums_fixed").unwrap(), m.load_function("two_sums_buggy").unwrap());
    let n = 128usize;
    let x: Vec<f32> = (0..n).map(|t| t as f32).chain((0..n).map(|t| 1000.0 + t as f32)).collect();
    let (sum_a, sum_b) = (x[..n].iter().sum::<f32>(), x[n..].iter().sum::<f32>());
    let want: Vec<f32> = std::iter::repeat_n(sum_a, n).chain(std::iter::repeat_n(sum_b, n)).collect();
    let d_x = sim.stream.clone_htod(&x).unwrap();
    let run = |f: &CudaFunction| -> Result<Vec<f32>, DriverError> {
        let mut out = sim.stream.alloc_zeros::<f32>(2 * n)?;
        launch!(sim, *f, cfg((1, 1, 1), (n as u32, 1, 1), 0), &d_x, &mut out)?;
        sim.stream.clone_dtoh(&out)
    };
    sim.schedules("forward");
    assert_eq!(run(&buggy).unwrap(), want, "the buggy block_sum happens to be right under forward");
    sim.schedules("greedy");
    let got = run(&buggy).unwrap();
    assert_ne!(
        got, want,
        "greedy must expose the missing leading barrier (warp 0 overwrites scratch before warp 1 reads it)"
    );
    for spec in ALL_SCHEDULES {
        sim.schedules(spec);
        assert_eq!(run(&fixed).unwrap(), want, "block_sum with its leading barrier under {spec}");
    }
    sim.schedules("forward,greedy");
    assert_eq!(run(&fixed).unwrap(), want);
    expect_err(
        "buggy block_sum under forward,greedy",
        run(&buggy),
        CUresult::CUDA_ERROR_LAUNCH_FAILED,
        &["kernel two_sums_buggy", "schedules forward and greedy", "give different results"],
    );
    sim.recover();
}

// ---- 4. Shuffles vs PTX shfl.sync ----

const SHFL_SRC: &str = r##"#line 1 "t.cu"
// Case c: op (0 idx, 1 up, 2 down, 3 xor), its lane / delta / mask argument and its width.
extern "C" __global__ void shfl_cases(const int* ops, const int* args, const int* widths, int ncases, unsigned* out) {
    const unsigned t = threadIdx.x;
    const unsigned v = t * 17u + 3u;
    for (int c = 0; c < ncases; ++c) {
        const int a = args[c], w = widths[c];
        unsigned r = 0;
        switch (ops[c]) {
            case 0: r = __shfl_sync(0xffffffffu, v, a, w); break;
            case 1: r = __shfl_up_sync(0xffffffffu, v, (unsigned)a, w); break;
            case 2: r = __shfl_down_sync(0xffffffffu, v, (unsigned)a, w); break;
            case 3: r = __shfl_xor_sync(0xffffffffu, v, a, w); break;
        }
        out[c * blockDim.x + t] = r;
    }
}
// 8-byte values travel as two 32-bit shuffles; both halves must come from the same lane.
extern "C" __global__ void shfl64(unsigned long long* o64, double* od) {
    const unsigned t = threadIdx.x;
    const unsigned long long v = ((unsigned long long)(t * 977u + 1u) << 32) | (t * 31u + 5u);
    const double d = t * 1.5 + 0.25;
    o64[t * 3 + 0] = __shfl_xor_sync(0xffffffffu, v, 5);
    o64[t * 3 + 1] = __shfl_down_sync(0xffffffffu, v, 3, 8);
    o64[t * 3 + 2] = __shfl_sync(0xffffffffu, v, 37, 16);
    od[t * 2 + 0] = __shfl_up_sync(0xffffffffu, d, 3, 8);
    od[t * 2 + 1] = __shfl_sync(0xffffffffu, d, 7);
}
"##;

#[derive(Clone, Copy, Debug)]
enum Shfl {
    Idx,
    Up,
    Down,
    Xor,
}

/// The lane whose value `lane` receives, from the CUDA programming guide's definitions: the warp is cut
/// into segments of `width` lanes; idx reads lane `src mod width` of its own segment (src taken modulo
/// width: for a power-of-two width that is also what shfl.sync's b[4:0] gives for negative src);
/// up / down read `lane -/+ delta` if that stays inside the segment, else keep their own value; xor reads
/// `lane ^ mask` unless that lies in a later segment (then its own value; earlier segments are readable).
fn shfl_src(op: Shfl, arg: i32, width: u32, lane: u32) -> u32 {
    let seg = lane / width * width;
    match op {
        Shfl::Idx => seg + arg.rem_euclid(width as i32) as u32,
        Shfl::Up => {
            if lane - seg >= arg as u32 {
                lane - arg as u32
            } else {
                lane
            }
        }
        Shfl::Down => {
            if lane - seg + (arg as u32) < width {
                lane + arg as u32
            } else {
                lane
            }
        }
        Shfl::Xor => {
            let s = lane ^ arg as u32;
            if s < seg + width {
                s
            } else {
                lane
            }
        }
    }
}

#[test]
fn shuffles_follow_ptx_shfl_sync() {
    let Some(sim) = Sim::new("shuffles_follow_ptx_shfl_sync") else { return };
    let m = sim.module(SHFL_SRC);
    let mut cases: Vec<(Shfl, i32, u32)> = Vec::new();
    for width in [32, 16, 8, 4] {
        for src in [0, 3, 5, 15, 17, 31, 37, 63, -1] {
            cases.push((Shfl::Idx, src, width));
        }
    }
    for width in [32, 8] {
        for delta in [1, 3, 16] {
            cases.push((Shfl::Up, delta, width));
            cases.push((Shfl::Down, delta, width));
        }
    }
    for width in [16, 32] {
        for mask in [1, 5, 16] {
            cases.push((Shfl::Xor, mask, width));
        }
    }
    let n = 64usize; // two warps: a shuffle must stay inside its own warp
    let ops: Vec<i32> = cases.iter().map(|c| c.0 as i32).collect();
    let args: Vec<i32> = cases.iter().map(|c| c.1).collect();
    let widths: Vec<i32> = cases.iter().map(|c| c.2 as i32).collect();
    let (d_ops, d_args, d_widths) = (
        sim.stream.clone_htod(&ops).unwrap(),
        sim.stream.clone_htod(&args).unwrap(),
        sim.stream.clone_htod(&widths).unwrap(),
    );
    let f = m.load_function("shfl_cases").unwrap();
    let f64k = m.load_function("shfl64").unwrap();
    for spec in ALL_SCHEDULES {
        sim.schedules(spec);
        let mut out = sim.stream.alloc_zeros::<u32>(cases.len() * n).unwrap();
        let ncases = cases.len() as i32;
        launch!(sim, f, cfg((1, 1, 1), (n as u32, 1, 1), 0), &d_ops, &d_args, &d_widths, &ncases, &mut out).unwrap();
        let out = sim.stream.clone_dtoh(&out).unwrap();
        for (c, &(op, arg, width)) in cases.iter().enumerate() {
            for t in 0..n as u32 {
                let src = t / 32 * 32 + shfl_src(op, arg, width, t % 32);
                assert_eq!(
                    out[c * n + t as usize],
                    src * 17 + 3,
                    "{op:?} arg {arg} width {width}: thread {t} must read thread {src} ({spec})"
                );
            }
        }

        let mut o64 = sim.stream.alloc_zeros::<u64>(n * 3).unwrap();
        let mut od = sim.stream.alloc_zeros::<f64>(n * 2).unwrap();
        launch!(sim, f64k, cfg((1, 1, 1), (n as u32, 1, 1), 0), &mut o64, &mut od).unwrap();
        let (o64, od) = (sim.stream.clone_dtoh(&o64).unwrap(), sim.stream.clone_dtoh(&od).unwrap());
        let v64 = |t: u32| ((t * 977 + 1) as u64) << 32 | (t * 31 + 5) as u64;
        let vd = |t: u32| t as f64 * 1.5 + 0.25;
        for t in 0..n as u32 {
            let (base, lane) = (t / 32 * 32, t % 32);
            let i = t as usize;
            assert_eq!(o64[3 * i], v64(base + shfl_src(Shfl::Xor, 5, 32, lane)), "u64 xor 5, thread {t} ({spec})");
            assert_eq!(
                o64[3 * i + 1],
                v64(base + shfl_src(Shfl::Down, 3, 8, lane)),
                "u64 down 3 width 8, thread {t} ({spec})"
            );
            assert_eq!(
                o64[3 * i + 2],
                v64(base + shfl_src(Shfl::Idx, 37, 16, lane)),
                "u64 idx 37 width 16, thread {t} ({spec})"
            );
            assert_eq!(
                od[2 * i],
                vd(base + shfl_src(Shfl::Up, 3, 8, lane)),
                "f64 up 3 width 8, thread {t} ({spec})"
            );
            assert_eq!(od[2 * i + 1], vd(base + 7), "f64 idx 7, thread {t} ({spec})");
        }
    }
}

// ---- 5. Votes ----

const VOTE_SRC: &str = r##"#line 1 "t.cu"
extern "C" __global__ void votes(unsigned* out) {
    const unsigned t = threadIdx.x, lane = t & 31, full = 0xffffffffu;
    unsigned* o = out + t * 8;
    o[0] = __ballot_sync(full, lane % 3 == 0 || t == 40);
    o[1] = __any_sync(full, t == 40);
    o[2] = __all_sync(full, t != 50);
    o[3] = __any_sync(full, t > 1000);
    if (lane < 16) {  // a partial mask: only lanes 0-15 take part
        o[4] = __ballot_sync(0xffffu, lane % 5 == 0 || t == 39);
        o[5] = __any_sync(0xffffu, t == 7);
        o[6] = __all_sync(0xffffu, t != 45);
        o[7] = __ballot_sync(0xffffu, 1);
    } else {
        o[4] = o[5] = o[6] = o[7] = 0xdeadbeefu;
    }
}
"##;

#[test]
fn votes_with_full_and_partial_masks() {
    let Some(sim) = Sim::new("votes_with_full_and_partial_masks") else {
        return;
    };
    let m = sim.module(VOTE_SRC);
    let f = m.load_function("votes").unwrap();
    let n = 64u32;
    // The guide: ballot sets bit l for each lane l of the mask whose predicate is non-zero; any / all
    // reduce the predicate over the lanes of the mask.
    let ballot = |warp: u32, mask: u32, pred: &dyn Fn(u32) -> bool| {
        (0..32)
            .filter(|&l| mask >> l & 1 == 1 && pred(warp * 32 + l))
            .fold(0u32, |b, l| b | 1 << l)
    };
    let any = |warp: u32, mask: u32, pred: &dyn Fn(u32) -> bool| (ballot(warp, mask, pred) != 0) as u32;
    let all = |warp: u32, mask: u32, pred: &dyn Fn(u32) -> bool| (ballot(warp, mask, pred) == mask) as u32;
    for spec in ALL_SCHEDULES {
        sim.schedules(spec);
        let mut out = sim.stream.alloc_zeros::<u32>(n as usize * 8).unwrap();
        launch!(sim, f, cfg((1, 1, 1), (n, 1, 1), 0), &mut out).unwrap();
        let out = sim.stream.clone_dtoh(&out).unwrap();
        for t in 0..n {
            let (w, lane) = (t / 32, t % 32);
            let full = u32::MAX;
            let mut want = vec![
                ballot(w, full, &|u| u % 32 % 3 == 0 || u == 40),
                any(w, full, &|u| u == 40),
                all(w, full, &|u| u != 50),
                any(w, full, &|u| u > 1000),
            ];
            if lane < 16 {
                want.extend([
                    ballot(w, 0xffff, &|u| u % 32 % 5 == 0 || u == 39),
                    any(w, 0xffff, &|u| u == 7),
                    all(w, 0xffff, &|u| u != 45),
                    ballot(w, 0xffff, &|_| true),
                ]);
            } else {
                want.extend([0xdeadbeef; 4]);
            }
            assert_eq!(&out[t as usize * 8..t as usize * 8 + 8], &want[..], "votes of thread {t} ({spec})");
        }
        // The expectations themselves are not trivial.
        assert_eq!(out[0], 0x4924_9249);
        assert_eq!(out[32 * 8], 0x4924_9349);
        assert_eq!((out[4], out[32 * 8 + 4]), (0x8421, 0x84a1));
    }
}

// ---- Disjoint warp groups: two half-warps, each converged on its own mask ----

const HALVES_SRC: &str = r##"#line 1 "t.cu"
// Legal since Volta: each half-warp shuffles among itself, with its own mask, at the same time.
extern "C" __global__ void half_warp_sums(const float* x, float* out) {
    const unsigned t = threadIdx.x, lane = t & 31;
    const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    float v = x[t];
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o, 16);
    out[t] = v;
}
"##;

#[test]
fn disjoint_half_warp_groups_are_legal() {
    let Some(sim) = Sim::new("disjoint_half_warp_groups_are_legal") else {
        return;
    };
    let m = sim.module(HALVES_SRC);
    let f = m.load_function("half_warp_sums").unwrap();
    let n = 64usize;
    let x: Vec<f32> = (0..n).map(|t| t as f32).collect();
    let want: Vec<f32> = (0..n).map(|t| (t / 16 * 16..t / 16 * 16 + 16).map(|u| u as f32).sum()).collect();
    let d_x = sim.stream.clone_htod(&x).unwrap();
    for spec in ALL_SCHEDULES {
        sim.schedules(spec);
        let mut out = sim.stream.alloc_zeros::<f32>(n).unwrap();
        let r = launch!(sim, f, cfg((1, 1, 1), (n as u32, 1, 1), 0), &d_x, &mut out);
        if let Err(e) = r {
            sim.recover();
            panic!("half-warp sums with disjoint masks under {spec}: {}", describe(&e));
        }
        assert_eq!(sim.stream.clone_dtoh(&out).unwrap(), want, "half-warp sums under {spec}");
    }
}

// ---- 6. Divergence is an error, never a hang ----

const DIVERGE_SRC: &str = r##"#line 1 "t.cu"
extern "C" __global__ void div_shfl(float* out) {
    float v = threadIdx.x;
    if ((threadIdx.x & 31) < 16) {
        v = __shfl_xor_sync(0xffffffffu, v, 1);  // @SHFL_A
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 2);  // @SHFL_B
    }
    out[threadIdx.x] = v;
}
extern "C" __global__ void div_branch_barrier(float* out) {
    if (threadIdx.x < 64) {
        __syncthreads();  // @BRANCH_BAR
    }
    out[threadIdx.x] = 1.f;
}
extern "C" __global__ void div_early_return(const float* x, float* out) {
    if (x[threadIdx.x] < 0.f) return;
    __syncthreads();  // @EARLY_BAR
    out[threadIdx.x] = x[threadIdx.x];
}
// Thread 0 waits at the block barrier for lanes 1-31, which wait at __syncwarp for thread 0: a deadlock
// on a GPU.
extern "C" __global__ void div_cycle(float* out) {
    if (threadIdx.x == 0) {
        __syncthreads();  // @CYCLE_BAR
    } else {
        __syncwarp();  // @CYCLE_WARP
    }
    out[threadIdx.x] = 1.f;
}
"##;

#[test]
fn divergence_is_an_error_never_a_hang() {
    let Some(sim) = Sim::new("divergence_is_an_error_never_a_hang") else {
        return;
    };
    let m = sim.module(DIVERGE_SRC);
    let at = |marker: &str| format!("t.cu:{}", line_of(DIVERGE_SRC, marker));
    let x: Vec<f32> = (0..128).map(|t| if t < 32 { -1.0 } else { t as f32 }).collect();
    let d_x = sim.stream.clone_htod(&x).unwrap();
    let mut out = sim.stream.alloc_zeros::<f32>(128).unwrap();
    let failed = CUresult::CUDA_ERROR_LAUNCH_FAILED;
    for spec in ALL_SCHEDULES {
        sim.schedules(spec);
        let _dog = watchdog(&format!("the divergence cases under {spec}"), 120);

        // (a) lanes 0-15 at one shuffle, lanes 16-31 at another.
        let f = m.load_function("div_shfl").unwrap();
        let r = launch!(sim, f, cfg((1, 1, 1), (32, 1, 1), 0), &mut out);
        expect_err(
            &format!("(a) split shuffle, {spec}"),
            r,
            failed,
            &["kernel div_shfl", "divergent warp 0", "__shfl_xor_sync", &at("@SHFL_A"), &at("@SHFL_B")],
        );
        sim.recover();

        // (b) a barrier inside `if (threadIdx.x < 64)` of a 128-thread block.
        let f = m.load_function("div_branch_barrier").unwrap();
        let r = launch!(sim, f, cfg((1, 1, 1), (128, 1, 1), 0), &mut out);
        expect_err(
            &format!("(b) barrier in a branch, {spec}"),
            r,
            failed,
            &["kernel div_branch_barrier", "__syncthreads", &at("@BRANCH_BAR"), "exited"],
        );
        sim.recover();

        // (c) threads 0-31 return before a barrier the others reach.
        let f = m.load_function("div_early_return").unwrap();
        let r = launch!(sim, f, cfg((1, 1, 1), (128, 1, 1), 0), &d_x, &mut out);
        expect_err(
            &format!("(c) early return, {spec}"),
            r,
            failed,
            &["kernel div_early_return", "__syncthreads", &at("@EARLY_BAR"), "exited"],
        );
        sim.recover();

        // (d) the block barrier and a warp barrier waiting for each other.
        let f = m.load_function("div_cycle").unwrap();
        let r = launch!(sim, f, cfg((1, 1, 1), (32, 1, 1), 0), &mut out);
        expect_err(
            &format!("(d) barrier / __syncwarp cycle, {spec}"),
            r,
            failed,
            &["kernel div_cycle", "__syncthreads", "__syncwarp", &at("@CYCLE_BAR"), &at("@CYCLE_WARP")],
        );
        sim.recover();
    }
    // After all that, the context works again (the faults were cleared) and a correct launch runs.
    sim.schedules("forward");
    let f = m.load_function("div_early_return").unwrap();
    let ok: Vec<f32> = (0..128).map(|t| t as f32).collect();
    let d_ok = sim.stream.clone_htod(&ok).unwrap();
    launch!(sim, f, cfg((1, 1, 1), (128, 1, 1), 0), &d_ok, &mut out).unwrap();
    assert_eq!(sim.stream.clone_dtoh(&out).unwrap(), ok);
}

#[test]
fn kernel_failures_are_sticky_until_reset() {
    let Some(sim) = Sim::new("kernel_failures_are_sticky_until_reset") else {
        return;
    };
    let m = sim.module(DIVERGE_SRC);
    let f = m.load_function("div_shfl").unwrap();
    let mut out = sim.stream.alloc_zeros::<f32>(32).unwrap();
    let r = launch!(sim, f, cfg((1, 1, 1), (32, 1, 1), 0), &mut out);
    expect_err("split shuffle", r, CUresult::CUDA_ERROR_LAUNCH_FAILED, &["kernel div_shfl"]);
    // Like a GPU: every later call fails with the same error, describing the first failure.
    expect_err(
        "a copy after the fault",
        sim.stream.clone_dtoh(&out),
        CUresult::CUDA_ERROR_LAUNCH_FAILED,
        &["kernel div_shfl"],
    );
    expect_err(
        "an allocation after the fault",
        sim.stream.alloc_zeros::<f32>(4),
        CUresult::CUDA_ERROR_LAUNCH_FAILED,
        &[],
    );
    sim.recover();
    assert_eq!(sim.stream.clone_dtoh(&out).unwrap().len(), 32);
    // The schedule hook refuses what CUDA_SIM_SCHEDULES would refuse.
    assert_ne!(sim.try_schedules("forward,sideways"), 0, "an unknown schedule must be refused");
}

// ---- 7. Shared memory ----

const SMEM_SRC: &str = r##"#line 1 "t.cu"
extern "C" __global__ void smem_fresh(unsigned* out) {
    extern __shared__ float dyn[];
    const unsigned t = threadIdx.x;
    out[blockIdx.x * blockDim.x + t] = __float_as_uint(dyn[t]);  // never written in this block
    dyn[t] = 1.0f + t;  // what the next block on this worker would see if the memory were not refilled
}
extern "C" __global__ void smem_poke(int i, float* out) {
    extern __shared__ float dyn[];
    dyn[i] = 2.0f;
    out[0] = dyn[i];
}
extern "C" __global__ void smem_big(int n, unsigned* out) {
    extern __shared__ unsigned char big[];
    big[n - 1] = 7;
    out[0] = big[n - 1] + big[0];
}
"##;

#[test]
fn dynamic_shared_memory_is_poisoned_bounded_and_limited() {
    let Some(sim) = Sim::new("dynamic_shared_memory_is_poisoned_bounded_and_limited") else {
        return;
    };
    let m = sim.module(SMEM_SRC);
    let fault = CUresult::CUDA_ERROR_ILLEGAL_ADDRESS;

    // NaN bytes before each block: 8 blocks over the stand-in's workers, so some worker runs several.
    let f = m.load_function("smem_fresh").unwrap();
    let mut out = sim.stream.alloc_zeros::<u32>(8 * 32).unwrap();
    launch!(sim, f, cfg((8, 1, 1), (32, 1, 1), 32 * 4), &mut out).unwrap();
    let got = sim.stream.clone_dtoh(&out).unwrap();
    assert!(
        got.iter().all(|&b| b == 0xffff_ffff),
        "unwritten dynamic shared memory must read as 0xffffffff: {got:x?}"
    );

    // Bounded at exactly the launch's size.
    let f = m.load_function("smem_poke").unwrap();
    let mut out = sim.stream.alloc_zeros::<f32>(1).unwrap();
    launch!(sim, f, cfg((1, 1, 1), (1, 1, 1), 64), &15i32, &mut out).unwrap();
    assert_eq!(sim.stream.clone_dtoh(&out).unwrap(), vec![2.0]);
    let r = launch!(sim, f, cfg((1, 1, 1), (1, 1, 1), 64), &16i32, &mut out);
    expect_err(
        "one float past 64 bytes of dynamic shared memory",
        r,
        fault,
        &["kernel smem_poke", "dynamic shared memory", "past its end"],
    );
    sim.recover();
    // A size that is not a multiple of 16: the write lands in the alignment slack, checked after the block.
    let r = launch!(sim, f, cfg((1, 1, 1), (1, 1, 1), 20), &5i32, &mut out);
    let msg = describe(&r.expect_err("one float past 20 bytes of dynamic shared memory"));
    for part in ["kernel smem_poke", "past the end of the block's 20 bytes of dynamic shared memory"] {
        assert!(
            msg.contains(part),
            "write past 20 bytes of dynamic shared memory: the message lacks {part:?}:\n{msg}"
        );
    }
    sim.recover();

    // 48 KB unless raised; never above the 227 KB opt-in maximum.
    let f = m.load_function("smem_big").unwrap();
    let mut out = sim.stream.alloc_zeros::<u32>(1).unwrap();
    let n49k = 49 * 1024;
    let r = launch!(sim, f, cfg((1, 1, 1), (1, 1, 1), n49k as u32), &n49k, &mut out);
    expect_err(
        "49 KB of dynamic shared memory, limit not raised",
        r,
        CUresult::CUDA_ERROR_INVALID_VALUE,
        &["50176 bytes", "raise it with cuFuncSetAttribute"],
    );
    assert!(
        sim.last_error().contains("raise it with cuFuncSetAttribute"),
        "lms_sim_last_error: {}",
        sim.last_error()
    );
    let attr = CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    f.set_attribute(attr, 100 * 1024).expect("raising the limit to 100 KB");
    assert_eq!(f.get_attribute(attr).unwrap(), 100 * 1024);
    launch!(sim, f, cfg((1, 1, 1), (1, 1, 1), n49k as u32), &n49k, &mut out).unwrap();
    assert_eq!(
        sim.stream.clone_dtoh(&out).unwrap(),
        vec![7 + 255],
        "big[0] is a NaN byte, big[n-1] was written"
    );
    let over = 100 * 1024 + 1;
    let r = launch!(sim, f, cfg((1, 1, 1), (1, 1, 1), over as u32), &over, &mut out);
    expect_err(
        "one byte over the raised limit",
        r,
        CUresult::CUDA_ERROR_INVALID_VALUE,
        &["the function's limit is 102400"],
    );
    expect_err(
        "raising above 227 KB",
        f.set_attribute(attr, 232_449),
        CUresult::CUDA_ERROR_INVALID_VALUE,
        &["232448"],
    );
    f.set_attribute(attr, 232_448).expect("raising the limit to exactly 227 KB");
    let max = 232_448;
    launch!(sim, f, cfg((1, 1, 1), (1, 1, 1), max as u32), &max, &mut out).unwrap();
    assert_eq!(sim.stream.clone_dtoh(&out).unwrap(), vec![7 + 255]);
}

// ---- 8. Launch checks ----

const LAUNCH_SRC: &str = r##"#line 1 "t.cu"
extern "C" __global__ void plain(float* out) {
    if (blockIdx.x + blockIdx.y + blockIdx.z == 0) out[threadIdx.x] = 1.f;
}
extern "C" __global__ void __launch_bounds__(64) bounded(float* out) { out[threadIdx.x] = 2.f; }
extern "C" __global__ void takes_ptr(int n, float* p) {
    if (n > 0) p[0] = n;
}
"##;

#[test]
fn launch_checks_refuse_what_a_gpu_refuses() {
    let Some(sim) = Sim::new("launch_checks_refuse_what_a_gpu_refuses") else {
        return;
    };
    let m = sim.module(LAUNCH_SRC);
    let bad = CUresult::CUDA_ERROR_INVALID_VALUE;
    let plain = m.load_function("plain").unwrap();
    let mut out = sim.stream.alloc_zeros::<f32>(1024).unwrap();
    // The limits themselves are fine.
    launch!(sim, plain, cfg((1, 1, 1), (1024, 1, 1), 0), &mut out).expect("1024 threads");
    launch!(sim, plain, cfg((1, 1, 1), (1, 1, 64), 0), &mut out).expect("block z 64");
    launch!(sim, plain, cfg((1, 65535, 1), (1, 1, 1), 0), &mut out).expect("grid y 65535");
    // One past them is not.
    expect_err(
        "block of 1025 threads",
        launch!(sim, plain, cfg((1, 1, 1), (1025, 1, 1), 0), &mut out),
        bad,
        &["cuLaunchKernel(plain)", "(1025,1,1)"],
    );
    expect_err(
        "block z 65",
        launch!(sim, plain, cfg((1, 1, 1), (1, 1, 65), 0), &mut out),
        bad,
        &["(1,1,65)"],
    );
    expect_err(
        "block 32x32x2",
        launch!(sim, plain, cfg((1, 1, 1), (32, 32, 2), 0), &mut out),
        bad,
        &["exceeds 1024 threads"],
    );
    expect_err(
        "grid y 65536",
        launch!(sim, plain, cfg((1, 65536, 1), (1, 1, 1), 0), &mut out),
        bad,
        &["grid (1,65536,1)"],
    );
    expect_err(
        "grid z 65536",
        launch!(sim, plain, cfg((1, 1, 65536), (1, 1, 1), 0), &mut out),
        bad,
        &["grid (1,1,65536)"],
    );
    expect_err(
        "a zero block dimension",
        launch!(sim, plain, cfg((1, 1, 1), (0, 1, 1), 0), &mut out),
        bad,
        &["is 0"],
    );

    let bounded = m.load_function("bounded").unwrap();
    launch!(sim, bounded, cfg((1, 1, 1), (64, 1, 1), 0), &mut out).expect("64 threads within __launch_bounds__(64)");
    expect_err(
        "128 threads past __launch_bounds__(64)",
        launch!(sim, bounded, cfg((1, 1, 1), (128, 1, 1), 0), &mut out),
        CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
        &["cuLaunchKernel(bounded)", "128 threads per block", "__launch_bounds__ allows 64"],
    );

    let takes_ptr = m.load_function("takes_ptr").unwrap();
    let one = cfg((1, 1, 1), (1, 1, 1), 0);
    let five = 5u64;
    let msg = expect_err(
        "5 as a float*",
        launch!(sim, takes_ptr, one, &1i32, &five),
        bad,
        &["argument 1", "0x5", "not a device address"],
    );
    assert!(
        sim.last_error().contains("argument 1"),
        "lms_sim_last_error after {msg}: {}",
        sim.last_error()
    );
    let host = [0f32; 16];
    let host_ptr = host.as_ptr() as u64;
    expect_err(
        "a host pointer as a float*",
        launch!(sim, takes_ptr, one, &1i32, &host_ptr),
        bad,
        &["argument 1", "not a device address"],
    );
    launch!(sim, takes_ptr, one, &0i32, &0u64).expect("a null pointer argument is allowed");
    launch!(sim, takes_ptr, one, &3i32, &mut out).unwrap();
    assert_eq!(sim.stream.clone_dtoh(&out).unwrap()[0], 3.0);
}

// ---- 9. Global memory faults ----

const MEM_SRC: &str = r##"#line 1 "t.cu"
extern "C" __global__ void read_at(const float* x, int i, float* out) {
    out[0] = x[i];  // @READ_AT
}
extern "C" __global__ void poke_byte(unsigned char* p, int i) { p[i] = 1; }
extern "C" __global__ void read_addr(unsigned long long a, float* out) { out[0] = *(const float*)a; }
"##;

#[test]
fn global_memory_faults_are_caught_and_described() {
    let Some(sim) = Sim::new("global_memory_faults_are_caught_and_described") else {
        return;
    };
    let m = sim.module(MEM_SRC);
    let fault = CUresult::CUDA_ERROR_ILLEGAL_ADDRESS;
    let one = cfg((1, 1, 1), (1, 1, 1), 0);

    // One past the end of 16 floats: the data ends at a guard page.
    let read_at = m.load_function("read_at").unwrap();
    let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
    let d_x = sim.stream.clone_htod(&x).unwrap();
    let mut out = sim.stream.alloc_zeros::<f32>(1).unwrap();
    launch!(sim, read_at, one, &d_x, &15i32, &mut out).unwrap();
    assert_eq!(sim.stream.clone_dtoh(&out).unwrap(), vec![7.5]);
    let msg = expect_err(
        "x[16] of 16 floats",
        launch!(sim, read_at, one, &d_x, &16i32, &mut out),
        fault,
        &[
            "kernel read_at",
            "illegal memory access",
            "1 bytes past the end of an allocation of 64 bytes",
        ],
    );
    sim.recover();
    if !msg.contains(&format!("t.cu:{}", line_of(MEM_SRC, "@READ_AT"))) {
        eprintln!("note: the fault message names no source line (addr2line): {msg}");
    }

    // A write into the pad after a 10-byte allocation (inside its 16-byte rounding): found after the launch.
    let poke = m.load_function("poke_byte").unwrap();
    let mut p = sim.stream.alloc_zeros::<u8>(10).unwrap();
    launch!(sim, poke, one, &mut p, &9i32).unwrap();
    assert_eq!(sim.stream.clone_dtoh(&p).unwrap(), vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    expect_err(
        "p[12] of 10 bytes",
        launch!(sim, poke, one, &mut p, &12i32),
        fault,
        &["kernel poke_byte wrote", "3 bytes past the end of an allocation of 10 bytes"],
    );
    sim.recover();
    // Past the rounding: the guard page itself.
    expect_err(
        "p[16] of 10 bytes",
        launch!(sim, poke, one, &mut p, &16i32),
        fault,
        &["kernel poke_byte", "past the end of an allocation of 10 bytes"],
    );
    sim.recover();

    // Use after free: refused at launch when passed as a pointer, a fault when the kernel dereferences it.
    sim.ctx.bind_to_thread().unwrap();
    // SAFETY: a raw allocation, freed once; only its address is used afterwards (the point of the case).
    let freed = unsafe {
        let ptr = cudarc::driver::result::malloc_sync(64).unwrap();
        cudarc::driver::result::free_sync(ptr).unwrap();
        ptr
    };
    let r = launch!(sim, read_at, one, &freed, &0i32, &mut out);
    let msg = describe(&r.expect_err("a freed pointer passed as const float*"));
    assert!(msg.contains("use after free"), "a freed pointer argument: {msg}");
    sim.recover();
    let read_addr = m.load_function("read_addr").unwrap();
    expect_err(
        "dereferencing a freed address",
        launch!(sim, read_addr, one, &freed, &mut out),
        fault,
        &[
            "kernel read_addr",
            "illegal memory access",
            "freed allocation of 64 bytes",
            "use after free",
        ],
    );
    sim.recover();
    // A double free is refused (not a fault: the context stays usable).
    // SAFETY: `freed` is no live allocation; the stand-in must refuse it.
    let r = unsafe { cudarc::driver::result::free_sync(freed) };
    expect_err(
        "a double free",
        r,
        CUresult::CUDA_ERROR_INVALID_VALUE,
        &["cuMemFree", "is not the start of a live allocation"],
    );
    launch!(sim, read_at, one, &d_x, &3i32, &mut out).unwrap();
    assert_eq!(sim.stream.clone_dtoh(&out).unwrap(), vec![1.5]);
}

#[test]
fn double_free_names_the_address_in_hex() {
    let Some(sim) = Sim::new("double_free_names_the_address_in_hex") else {
        return;
    };
    sim.ctx.bind_to_thread().unwrap();
    // SAFETY: a raw allocation freed twice on purpose; the second free must be refused.
    let (ptr, r) = unsafe {
        let ptr = cudarc::driver::result::malloc_sync(32).unwrap();
        cudarc::driver::result::free_sync(ptr).unwrap();
        (ptr, cudarc::driver::result::free_sync(ptr))
    };
    expect_err(
        "a double free",
        r,
        CUresult::CUDA_ERROR_INVALID_VALUE,
        &[&format!("cuMemFree: {ptr:#x} is not the start")],
    );
}

// ---- 10. Inline PTX ----

const PTX_SRC: &str = r##"#line 1 "t.cu"
// kernels/common.cu's two conversions.
struct __align__(2) f16 { unsigned short bits; };
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));  // round to nearest even, overflow -> inf
    return r;
}
extern "C" __global__ void h2f(const f16* in, unsigned* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = __float_as_uint(to_f32(in[i]));
}
extern "C" __global__ void f2h(const float* in, unsigned short* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = from_f32<f16>(in[i]).bits;
}
"##;

const BAD_PTX_SRC: &str = r##"#line 1 "t.cu"
extern "C" __global__ void madlo(unsigned* out, unsigned a, unsigned b, unsigned c) {
    unsigned d;
    asm("mad.lo.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // @MAD
    out[0] = d;
}
"##;

/// f32 values for the f32 -> f16 conversion: every f16 value, every halfway point between neighbours (and
/// the f32 values either side of it), the overflow threshold, zeros, f32 subnormals, NaNs, and random bits.
fn f32_probes() -> Vec<f32> {
    let mut xs = Vec::new();
    for h in 0..=u16::MAX {
        let f = f16::from_bits(h);
        if !f.is_finite() {
            continue;
        }
        let x = f.to_f32();
        xs.push(x);
        let up = f16::from_bits(h + 1).to_f32(); // next larger magnitude (inf after 65504)
        let mid = if up.is_finite() { (x + up) / 2.0 } else { 65520.0f32.copysign(x) };
        for m in [mid, f32::from_bits(mid.to_bits() - 1), f32::from_bits(mid.to_bits() + 1)] {
            xs.push(m);
        }
    }
    for bits in [
        0u32,
        0x8000_0000,
        1,
        2,
        0x007f_ffff,
        0x8000_0001,
        0x0040_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7f7f_ffff,
    ] {
        xs.push(f32::from_bits(bits));
    }
    for nan in [0x7fc0_0000u32, 0x7f80_0001, 0xffff_ffff, 0x7fbf_ffff, 0xffc0_0001] {
        xs.push(f32::from_bits(nan));
    }
    for x in [
        65504.0f32,
        65519.0,
        65519.996,
        65520.0,
        65520.004,
        65536.0,
        1e10,
        2f32.powi(-25),
        3.0 * 2f32.powi(-25),
        2f32.powi(-26),
        2f32.powi(-24),
    ] {
        for s in [x, -x] {
            xs.extend([s, f32::from_bits(s.to_bits() + 1), f32::from_bits(s.to_bits() - 1)]);
        }
    }
    let mut state = 0x5eed_1234u64;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u32
    };
    for _ in 0..60_000 {
        xs.push(f32::from_bits(next())); // any bits
        let b = next(); // exponent in and around the f16 range
        xs.push(f32::from_bits((b & 0x807f_ffff) | ((97 + (b >> 23) % 50) << 23)));
    }
    xs
}

#[test]
fn inline_ptx_cvt_is_bit_exact_and_unknown_instructions_are_refused() {
    let Some(sim) = Sim::new("inline_ptx_cvt_is_bit_exact_and_unknown_instructions_are_refused") else {
        return;
    };
    let m = sim.module(PTX_SRC);
    let grid = cfg((8, 1, 1), (256, 1, 1), 0);
    let is_nan16 = |b: u16| b & 0x7c00 == 0x7c00 && b & 0x03ff != 0;

    // f16 -> f32, all 65536 patterns.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let d_in = sim.stream.clone_htod(&all).unwrap();
    let mut d_out = sim.stream.alloc_zeros::<u32>(all.len()).unwrap();
    let n = all.len() as i32;
    let h2f = m.load_function("h2f").unwrap();
    launch!(sim, h2f, grid, &d_in, &mut d_out, &n).unwrap();
    let got = sim.stream.clone_dtoh(&d_out).unwrap();
    for (&h, &g) in all.iter().zip(&got) {
        let want = f16::from_bits(h).to_f32();
        if is_nan16(h) {
            assert!(f32::from_bits(g).is_nan(), "cvt.f32.f16 of NaN {h:#06x} gave {g:#010x}");
        } else {
            assert_eq!(g, want.to_bits(), "cvt.f32.f16 of {h:#06x}: {} vs half's {want}", f32::from_bits(g));
        }
    }

    // f32 -> f16, round to nearest even.
    let xs = f32_probes();
    assert!(xs.len() > 300_000, "{} probes", xs.len());
    let d_in = sim.stream.clone_htod(&xs).unwrap();
    let mut d_out = sim.stream.alloc_zeros::<u16>(xs.len()).unwrap();
    let n = xs.len() as i32;
    let f2h = m.load_function("f2h").unwrap();
    launch!(sim, f2h, grid, &d_in, &mut d_out, &n).unwrap();
    let got = sim.stream.clone_dtoh(&d_out).unwrap();
    let mut mismatches = Vec::new();
    for (&x, &g) in xs.iter().zip(&got) {
        let want = f16::from_f32(x).to_bits();
        let ok = if x.is_nan() { is_nan16(g) } else { g == want };
        if !ok {
            mismatches.push(format!("{x:e} ({:#010x}): cvt.rn.f16.f32 {g:#06x}, half {want:#06x}", x.to_bits()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} f32 -> f16 conversions differ, first: {:?}",
        mismatches.len(),
        xs.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    // Spot checks that pin the rounding rule independently of `half`.
    let spot = |x: f32| got[xs.iter().position(|&v| v.to_bits() == x.to_bits()).unwrap()];
    assert_eq!(spot(65504.0), 0x7bff);
    assert_eq!(spot(65519.996), 0x7bff);
    assert_eq!(spot(65520.0), 0x7c00, "65520 rounds (to even) to inf");
    assert_eq!(spot(2f32.powi(-25)), 0x0000, "half the smallest subnormal rounds to even (0)");
    assert_eq!(spot(3.0 * 2f32.powi(-25)), 0x0002, "1.5 smallest subnormals round to even (2)");
    assert_eq!(spot(-0.0), 0x8000);

    // An instruction simt.h does not implement: a compile error naming it and the line.
    let log = compile(BAD_PTX_SRC).expect_err("mad.lo.u32 must not compile on the stand-in");
    let line = format!("t.cu({}): error", line_of(BAD_PTX_SRC, "@MAD"));
    assert!(
        log.contains("mad.lo.u32") && log.contains(&line),
        "the log must name mad.lo.u32 and {line}:\n{log}"
    );
    assert!(log.contains("NVRTC_ERROR_COMPILATION"), "{log}");
}

// ---- 11. Module and NVRTC basics ----

const SYNTAX_ERROR_SRC: &str = r##"#line 1 "t.cu"
extern "C" __global__ void broken(float* out) {
    float x = 1.f;
    out[0] = x * ;  // @SYNTAX
}
"##;

#[test]
fn nvrtc_and_module_basics() {
    let Some(sim) = Sim::new("nvrtc_and_module_basics") else { return };
    let log = compile(SYNTAX_ERROR_SRC).expect_err("a syntax error must not compile");
    let line = format!("t.cu({}): error", line_of(SYNTAX_ERROR_SRC, "@SYNTAX"));
    assert!(log.contains(&line), "the log must be in NVRTC form, {line}:\n{log}");

    let m = sim.module(LAUNCH_SRC);
    assert!(m.load_function("plain").is_ok());
    expect_err(
        "a missing function",
        m.load_function("no_such_kernel"),
        CUresult::CUDA_ERROR_NOT_FOUND,
        &["no_such_kernel"],
    );

    let ptx = ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k()\n{\n    ret;\n}\n";
    expect_err(
        "PTX text",
        sim.ctx.load_module(Ptx::from_src(ptx)),
        CUresult::CUDA_ERROR_INVALID_PTX,
        &["PTX"],
    );
}

// ---- 12. Out of memory (a child process: CUDA_SIM_MEMORY_BYTES is read once) ----

const OOM_CHILD: &str = "LMSCORE_CUDA_SIM_OOM_CHILD";

#[test]
fn out_of_memory_under_a_small_device() {
    let Some(sim) = Sim::new("out_of_memory_under_a_small_device") else {
        return;
    };
    drop(sim);
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", "oom_child", "--nocapture", "--test-threads", "1"])
        .env(OOM_CHILD, "1")
        .env("CUDA_SIM_MEMORY_BYTES", "1000000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning the test binary as a child");
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the out-of-memory child did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the out-of-memory child failed:\n{text}");
    assert!(text.contains("OOM-CHILD-OK total=1000000"), "the child did not run its checks:\n{text}");
}

/// Runs only as the child of `out_of_memory_under_a_small_device`.
#[test]
fn oom_child() {
    if std::env::var(OOM_CHILD).as_deref() != Ok("1") {
        return;
    }
    let ctx = CudaContext::new(0).expect("CudaContext::new(0) on the stand-in");
    let stream = ctx.default_stream();
    let (free, total) = ctx.mem_get_info().unwrap();
    assert_eq!((free, total), (1_000_000, 1_000_000), "mem_get_info under CUDA_SIM_MEMORY_BYTES=1000000");
    assert_eq!(ctx.total_mem().unwrap(), 1_000_000);
    expect_err(
        "2 MB on a 1 MB device",
        stream.alloc_zeros::<u8>(2_000_000),
        CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        &["out of memory"],
    );
    let half_mb = stream.alloc_zeros::<u8>(500_000).expect("500 KB on a 1 MB device");
    assert_eq!(ctx.mem_get_info().unwrap(), (500_000, 1_000_000));
    expect_err(
        "another 600 KB",
        stream.alloc_zeros::<u8>(600_000),
        CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        &["out of memory"],
    );
    drop(half_mb);
    stream.synchronize().unwrap();
    assert_eq!(ctx.mem_get_info().unwrap().0, 1_000_000, "freed memory is free again");
    println!("OOM-CHILD-OK total={total}");
}
