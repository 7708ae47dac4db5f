//! Test infrastructure: the tensor-core instructions of the CPU stand-in for the CUDA driver and NVRTC
//! (cuda-sim/), as kernels/common.cu wraps them for the attention kernels: `mma.sync.aligned.m16n8k16`
//! (f16 and bf16, f32 accumulation), `ldmatrix` (x1 / x2 / x4, plain and .trans) and `cp.async` (with the
//! zero-fill form, commit_group, wait_group, wait_all). Each case compiles small kernels with
//! kernels/common.cu prepended (as the backend does) and checks them against values computed here from the
//! PTX ISA's definitions (fragment tables, matrix products), never from cuda-sim's code:
//!
//!  1. mma f16 / bf16: a 16x32 by 32x8 product plus C, fragments built from global memory by the ISA
//!     tables, against a plain matrix product (bit for bit against the stand-in's documented f32 order,
//!     and within f32 rounding of an f64 product); a kernel with two fragment registers swapped gets a
//!     wrong product;
//!  2. ldmatrix: every variant, rows scattered over static shared memory, against the fragments the ISA
//!     describes; unused lanes' addresses are ignored;
//!  3. ldmatrix feeding mma, the way attention uses them (A row-major, B as [k][n] through .trans and as
//!     [n][k] without): the plain product again;
//!  4. cp.async: the copy and the zero fill land when a wait covers their group, not before (a kernel that
//!     reads before waiting sees the old bytes);
//!  5. what must fail does, naming the kernel, the instruction and its common.cu line: an mma in half a
//!     warp, lanes at two different mma instructions, an mma in a block smaller than a warp, ldmatrix rows
//!     past the end of shared memory / misaligned / outside shared memory, cp.async from outside any
//!     allocation or to a misaligned destination;
//!  6. the same kernels compile with the real NVRTC and ptxas for sm_80 and sm_90 (in a child process whose
//!     library path leaves the stand-in out; skipped without the real NVRTC unless LMSCORE_REQUIRE_NVRTC=1).
//!
//! The correctness cases run every launch under the schedules forward, reverse, greedy and shuffle:7 at
//! once (the stand-in fails a launch whose outputs differ between them); the failure cases run under each.
//! Schedules and the sticky fault are process-wide, so every test holds one lock.
//!
//! Runs only where the stand-in is on the library path (`eval "$(bash scripts/cuda-sim.sh)"` sets
//! LMSCORE_CUDA_SIM); otherwise prints SKIPPED, or fails when LMSCORE_REQUIRE_CUDA=1:
//!
//!     LMSCORE_REQUIRE_CUDA=1 cargo test --release --test cuda_sim_mma

mod common;

use common::sim::{describe, expect_err, launch, launch_config, Sim, ALL_SCHEDULES, EVERY_SCHEDULE_AT_ONCE};
use common::Rng;
use cudarc::driver::sys::CUresult;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::{bf16, f16};
use lmscore::backend::cuda::kernels;

// ---- Helpers (the stand-in's harness is common/sim.rs) ----

/// The NVRTC program for a test kernel file: kernels/common.cu, then the file, as the backend compiles an op
/// file (kernels::program_source).
fn program(body: &str) -> String {
    assert!(body.starts_with("#line 1 \"t.cu\"\n"));
    let prelude = kernels::source(kernels::PRELUDE).expect("kernels/common.cu is embedded");
    format!("#line 1 \"{}.cu\"\n{prelude}\n{body}", kernels::PRELUDE)
}

/// "common.cu:N", N the line of kernels/common.cu holding the one asm statement of `instruction`.
fn common_line(instruction: &str) -> String {
    let prelude = kernels::source(kernels::PRELUDE).unwrap();
    let needle = format!("asm volatile(\"{instruction} ");
    let hits: Vec<usize> = prelude
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(&needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "kernels/common.cu must hold exactly one asm statement of {instruction}");
    format!("common.cu:{}", hits[0])
}

/// The mma cases launch one-dimensional grids of one-dimensional blocks.
fn cfg(grid: u32, block: u32, smem: u32) -> LaunchConfig {
    launch_config((grid, 1, 1), (block, 1, 1), smem)
}

// ---- The reference: the PTX ISA's m16n8k16 fragments and a plain matrix product ----

/// Element type of an mma: its 16-bit encoding of an f32 (round to nearest) and its exact f32 value.
#[derive(Clone, Copy, Debug)]
enum Elem {
    F16,
    Bf16,
}

impl Elem {
    fn bits(self, x: f32) -> u16 {
        match self {
            Elem::F16 => f16::from_f32(x).to_bits(),
            Elem::Bf16 => bf16::from_f32(x).to_bits(),
        }
    }
    fn value(self, bits: u16) -> f32 {
        match self {
            Elem::F16 => f16::from_bits(bits).to_f32(),
            Elem::Bf16 => bf16::from_bits(bits).to_f32(),
        }
    }
}

/// Random 16-bit elements in [-a, a), as their bits.
fn random_bits(rng: &mut Rng, elem: Elem, n: usize, a: f32) -> Vec<u16> {
    (0..n).map(|_| elem.bits(rng.sym(a))).collect()
}

/// D = A (m x k, row-major) * B (k x n, row-major) + C (m x n, row-major), in f32: for each element,
/// acc = c, then acc += a[i][kk] * b[kk][j] for kk = 0, 1, ..., k-1, each product and sum rounded to f32.
/// The products of two f16 or bf16 values are exact in f32 (here), so this is the order cuda-sim/README.md
/// documents for mma: one f32 summation order of the unspecified one a GPU uses.
fn product_f32_order(elem: Elem, a: &[u16], b: &[u16], c: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut d = c.to_vec();
    for i in 0..m {
        for j in 0..n {
            let mut acc = c[i * n + j];
            for kk in 0..k {
                acc += elem.value(a[i * k + kk]) * elem.value(b[kk * n + j]);
            }
            d[i * n + j] = acc;
        }
    }
    d
}

/// The same product in f64 (the exact value, near enough).
fn product_f64(elem: Elem, a: &[u16], b: &[u16], c: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    (0..m * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            c[ij] as f64
                + (0..k)
                    .map(|kk| elem.value(a[i * k + kk]) as f64 * elem.value(b[kk * n + j]) as f64)
                    .sum::<f64>()
        })
        .collect()
}

/// Checks `got` against the plain product: bit for bit against `product_f32_order`, and within the f32
/// rounding bound of a k-term sum (k * 2^-24 * sum |terms|) of the f64 product.
fn check_product(what: &str, elem: Elem, got: &[f32], a: &[u16], b: &[u16], c: &[f32], dims: (usize, usize, usize)) {
    let (m, k, n) = dims;
    let want = product_f32_order(elem, a, b, c, m, k, n);
    let exact = product_f64(elem, a, b, c, m, k, n);
    for ij in 0..m * n {
        let (i, j) = (ij / n, ij % n);
        let scale: f64 = c[ij].abs() as f64
            + (0..k)
                .map(|kk| (elem.value(a[i * k + kk]) as f64 * elem.value(b[kk * n + j]) as f64).abs())
                .sum::<f64>();
        let bound = (k + 1) as f64 * scale * f32::EPSILON as f64 / 2.0;
        assert!(
            (got[ij] as f64 - exact[ij]).abs() <= bound,
            "{what}: D[{i}][{j}] = {} but the product is {} (bound {bound:e})",
            got[ij],
            exact[ij]
        );
        assert_eq!(
            got[ij].to_bits(),
            want[ij].to_bits(),
            "{what}: D[{i}][{j}] = {} but the f32 sum in k order is {}",
            got[ij],
            want[ij]
        );
    }
}

// ---- 1. mma.sync m16n8k16 against a matrix product ----

const MMA_SRC: &str = r##"#line 1 "t.cu"
// One warp per problem: D (16x8) = A (16x32, row-major) * B (32x8, row-major: B[k][n]) + C (16x8), as two
// m16n8k16 steps accumulating in place (d aliases c). The fragments are built from global memory by the
// PTX ISA tables (g = lane >> 2, t = lane & 3; a register holds the lower-indexed element in its low half).
// swap != 0 swaps a[1] and a[2]: a wrong fragment order.
template <typename T> __device__ __forceinline__ u32 pack(T lo, T hi) { return (u32)lo.bits | (u32)hi.bits << 16; }

template <typename T, bool Bf16>
__device__ __forceinline__ void mma_k32(const T* A, const T* B, const float* C, float* D, int swap) {
    const int lane = threadIdx.x & 31, problem = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    A += problem * 16 * 32;
    B += problem * 32 * 8;
    C += problem * 16 * 8;
    D += problem * 16 * 8;
    const int g = lane >> 2, t = lane & 3;
    float acc[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    for (int k0 = 0; k0 < 32; k0 += 16) {
        u32 a[4], b[2];
        a[0] = pack(A[g * 32 + k0 + 2 * t], A[g * 32 + k0 + 2 * t + 1]);
        a[1] = pack(A[(g + 8) * 32 + k0 + 2 * t], A[(g + 8) * 32 + k0 + 2 * t + 1]);
        a[2] = pack(A[g * 32 + k0 + 2 * t + 8], A[g * 32 + k0 + 2 * t + 9]);
        a[3] = pack(A[(g + 8) * 32 + k0 + 2 * t + 8], A[(g + 8) * 32 + k0 + 2 * t + 9]);
        b[0] = pack(B[(k0 + 2 * t) * 8 + g], B[(k0 + 2 * t + 1) * 8 + g]);
        b[1] = pack(B[(k0 + 2 * t + 8) * 8 + g], B[(k0 + 2 * t + 9) * 8 + g]);
        if (swap) {
            const u32 x = a[1];
            a[1] = a[2];
            a[2] = x;
        }
        if (Bf16) mma_m16n8k16_bf16_f32(acc, a, b, acc);
        else mma_m16n8k16_f16_f32(acc, a, b, acc);
    }
    D[g * 8 + 2 * t] = acc[0];
    D[g * 8 + 2 * t + 1] = acc[1];
    D[(g + 8) * 8 + 2 * t] = acc[2];
    D[(g + 8) * 8 + 2 * t + 1] = acc[3];
}
extern "C" __global__ void mma_f16(const f16* A, const f16* B, const float* C, float* D, int swap) {
    mma_k32<f16, false>(A, B, C, D, swap);
}
extern "C" __global__ void mma_bf16(const bf16* A, const bf16* B, const float* C, float* D, int swap) {
    mma_k32<bf16, true>(A, B, C, D, swap);
}
"##;

#[test]
fn mma_f16_and_bf16_match_a_matrix_product() {
    let Some(sim) = Sim::new("mma_f16_and_bf16_match_a_matrix_product") else {
        return;
    };
    let m = sim.module(&program(MMA_SRC));
    // 3 blocks of 2 warps: 6 independent problems.
    let (blocks, threads) = (3u32, 64u32);
    let problems = (blocks * threads / 32) as usize;
    let (mm, kk, nn) = (16usize, 32usize, 8usize);
    sim.schedules(EVERY_SCHEDULE_AT_ONCE);
    for (elem, name, seed) in [(Elem::F16, "mma_f16", 1u64), (Elem::Bf16, "mma_bf16", 2u64)] {
        let f = m.load_function(name).unwrap();
        let mut rng = Rng::new(seed);
        let a = random_bits(&mut rng, elem, problems * mm * kk, 2.0);
        let b = random_bits(&mut rng, elem, problems * kk * nn, 2.0);
        let c = rng.vec(problems * mm * nn, 4.0);
        let (d_a, d_b, d_c) = (
            sim.stream.clone_htod(&a).unwrap(),
            sim.stream.clone_htod(&b).unwrap(),
            sim.stream.clone_htod(&c).unwrap(),
        );
        let mut d_d = sim.stream.alloc_zeros::<f32>(problems * mm * nn).unwrap();
        let run = |swap: i32, d_d: &mut cudarc::driver::CudaSlice<f32>| {
            launch!(sim, f, cfg(blocks, threads, 0), &d_a, &d_b, &d_c, &mut *d_d, &swap).unwrap_or_else(|e| panic!("{name}: {}", describe(&e)));
            sim.stream.clone_dtoh(d_d).unwrap()
        };
        let got = run(0, &mut d_d);
        for p in 0..problems {
            check_product(
                &format!("{name}, problem {p}"),
                elem,
                &got[p * mm * nn..(p + 1) * mm * nn],
                &a[p * mm * kk..(p + 1) * mm * kk],
                &b[p * kk * nn..(p + 1) * kk * nn],
                &c[p * mm * nn..(p + 1) * mm * nn],
                (mm, kk, nn),
            );
        }
        // The deliberate defect: a[1] and a[2] swapped puts A's rows 8-15 (columns 0-7 of each k step) where
        // rows 0-7 (columns 8-15) belong, and back: no row of D is A * B + C any more.
        let wrong = run(1, &mut d_d);
        let want = product_f32_order(elem, &a[..mm * kk], &b[..kk * nn], &c[..mm * nn], mm, kk, nn);
        let differ = (0..mm * nn).filter(|&ij| wrong[ij].to_bits() != want[ij].to_bits()).count();
        assert!(
            differ >= 120,
            "{name} with a[1], a[2] swapped: only {differ} of 128 outputs differ from A * B + C"
        );
    }
}

// ---- 2. ldmatrix delivers the ISA's fragments ----

const LDMATRIX_SRC: &str = r##"#line 1 "t.cu"
// Variant v (0-2: x1, x2, x4; 3-5: the same .trans); lane l passes &tile[offs[32 v + l]], or, where that is
// -1 (a lane whose address the instruction does not use), an address in the decoy rows of dynamic shared
// memory. Each lane writes its registers to out[4 (32 v + l) + i].
extern "C" __global__ void ldm(const unsigned short* tile_in, const int* offs, u32* out) {
    __shared__ __align__(16) unsigned short tile[32 * 16];
    extern __shared__ __align__(16) unsigned short decoy[];
    const int lane = threadIdx.x;
    for (int i = lane; i < 32 * 16; i += 32) tile[i] = tile_in[i];
    for (int i = lane; i < 8 * 8; i += 32) decoy[i] = 0xdddd;
    __syncwarp();
    for (int v = 0; v < 6; ++v) {
        const int off = offs[32 * v + lane];
        const void* p = off >= 0 ? (const void*)&tile[off] : (const void*)&decoy[(lane % 8) * 8];
        u32 r[4] = {0, 0, 0, 0};
        switch (v) {
            case 0: ldmatrix_x1(r, p); break;
            case 1: ldmatrix_x2(r, p); break;
            case 2: ldmatrix_x4(r, p); break;
            case 3: ldmatrix_x1_trans(r, p); break;
            case 4: ldmatrix_x2_trans(r, p); break;
            default: ldmatrix_x4_trans(r, p); break;
        }
        for (int i = 0; i < 4; ++i) out[4 * (32 * v + lane) + i] = r[i];
    }
}
"##;

#[test]
fn ldmatrix_delivers_the_ptx_fragments() {
    let Some(sim) = Sim::new("ldmatrix_delivers_the_ptx_fragments") else {
        return;
    };
    let m = sim.module(&program(LDMATRIX_SRC));
    let f = m.load_function("ldm").unwrap();
    // A 32 x 16 tile of distinct 16-bit values; every 8x8 matrix is 8 consecutive rows of one 8-column half.
    let tile: Vec<u16> = (0..512u32).map(|e| ((e * 37 + 11) & 0xffff) as u16).collect();
    let mut rng = Rng::new(3);
    let mut offs = vec![-1i32; 6 * 32];
    for v in 0..6 {
        let num = [1, 2, 4][v % 3];
        for i in 0..num {
            // Matrix i: tile rows r0..r0+8 (not in order: row j of the matrix is tile row r0 + perm(j)),
            // columns c0..c0+8.
            let (r0, c0) = (rng.below(25) as i32, 8 * rng.below(2) as i32);
            let shift = rng.below(8) as i32;
            for j in 0..8 {
                offs[32 * v + 8 * i + j] = (r0 + (j as i32 + shift) % 8) * 16 + c0;
            }
        }
    }
    let d_tile = sim.stream.clone_htod(&tile).unwrap();
    let d_offs = sim.stream.clone_htod(&offs).unwrap();
    let mut d_out = sim.stream.alloc_zeros::<u32>(6 * 32 * 4).unwrap();
    sim.schedules(EVERY_SCHEDULE_AT_ONCE);
    launch!(sim, f, cfg(1, 32, 8 * 8 * 2), &d_tile, &d_offs, &mut d_out).unwrap_or_else(|e| panic!("ldm: {}", describe(&e)));
    let out = sim.stream.clone_dtoh(&d_out).unwrap();
    for v in 0..6 {
        let (num, trans) = ([1, 2, 4][v % 3], v >= 3);
        // PTX ISA: row j of matrix i is the 8 elements at the address of lane 8i + j; lane l receives row
        // l / 4, elements 2 (l % 4) and 2 (l % 4) + 1 (low half first), of the matrix or, with .trans, of its
        // transpose.
        let elem = |i: usize, row: usize, col: usize| tile[offs[32 * v + 8 * i + row] as usize + col] as u32;
        for lane in 0..32 {
            for i in 0..4 {
                let got = out[4 * (32 * v + lane) + i];
                let want = if i >= num {
                    0
                } else if trans {
                    elem(i, 2 * (lane % 4), lane / 4) | elem(i, 2 * (lane % 4) + 1, lane / 4) << 16
                } else {
                    elem(i, lane / 4, 2 * (lane % 4)) | elem(i, lane / 4, 2 * (lane % 4) + 1) << 16
                };
                assert_eq!(
                    got,
                    want,
                    "ldmatrix x{num}{}: lane {lane} r[{i}] = {got:#010x}, the ISA says {want:#010x}",
                    if trans { ".trans" } else { "" }
                );
            }
        }
    }
}

// ---- 3. ldmatrix feeding mma, as attention uses them ----

const LDMATRIX_MMA_SRC: &str = r##"#line 1 "t.cu"
// A (16x16 row-major), B as [k][n] (16x8 row-major: V in P * V) and as [n][k] (8x16 row-major: K in Q * K^T)
// go through shared memory; A's fragment by ldmatrix_x4 (lane l: row l % 16, column 8 (l / 16)), B's by
// ldmatrix_x2_trans from [k][n] (lane l: row k = l % 16) and by ldmatrix_x2 from [n][k] (lane l: row n = l % 8,
// column k = 8 ((l / 8) % 2)). D = A * B through each, no C.
extern "C" __global__ void ldm_mma(const f16* A, const f16* Bkn, const f16* Bnk, float* D) {
    __shared__ __align__(16) f16 sA[16 * 16];
    __shared__ __align__(16) f16 sBkn[16 * 8];
    extern __shared__ __align__(16) f16 sBnk[];  // 8 * 16
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) sA[i] = A[i];
    for (int i = lane; i < 128; i += 32) sBkn[i] = Bkn[i], sBnk[i] = Bnk[i];
    __syncwarp();
    u32 a[4], b1[2], b2[2];
    ldmatrix_x4(a, &sA[(lane % 16) * 16 + 8 * (lane / 16)]);
    ldmatrix_x2_trans(b1, &sBkn[(lane % 16) * 8]);
    ldmatrix_x2(b2, &sBnk[(lane % 8) * 16 + 8 * ((lane / 8) % 2)]);
    const float zero[4] = {0.f, 0.f, 0.f, 0.f};
    float d1[4], d2[4];
    mma_m16n8k16_f16_f32(d1, a, b1, zero);
    mma_m16n8k16_f16_f32(d2, a, b2, zero);
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + (i & 1);
        D[row * 8 + col] = d1[i];
        D[128 + row * 8 + col] = d2[i];
    }
}
"##;

#[test]
fn ldmatrix_feeds_mma_as_the_fragment_tables_say() {
    let Some(sim) = Sim::new("ldmatrix_feeds_mma_as_the_fragment_tables_say") else {
        return;
    };
    let m = sim.module(&program(LDMATRIX_MMA_SRC));
    let f = m.load_function("ldm_mma").unwrap();
    let mut rng = Rng::new(4);
    let a = random_bits(&mut rng, Elem::F16, 256, 3.0);
    let bkn = random_bits(&mut rng, Elem::F16, 128, 3.0);
    let bnk: Vec<u16> = (0..128).map(|nk| bkn[(nk % 16) * 8 + nk / 16]).collect(); // Bnk[n][k] = Bkn[k][n]
    let (d_a, d_bkn, d_bnk) = (
        sim.stream.clone_htod(&a).unwrap(),
        sim.stream.clone_htod(&bkn).unwrap(),
        sim.stream.clone_htod(&bnk).unwrap(),
    );
    let mut d_d = sim.stream.alloc_zeros::<f32>(256).unwrap();
    sim.schedules(EVERY_SCHEDULE_AT_ONCE);
    launch!(sim, f, cfg(1, 32, 128 * 2), &d_a, &d_bkn, &d_bnk, &mut d_d).unwrap_or_else(|e| panic!("ldm_mma: {}", describe(&e)));
    let d = sim.stream.clone_dtoh(&d_d).unwrap();
    let zero = vec![0f32; 128];
    check_product("ldmatrix_x2_trans of B[k][n]", Elem::F16, &d[..128], &a, &bkn, &zero, (16, 16, 8));
    check_product("ldmatrix_x2 of B[n][k]", Elem::F16, &d[128..], &a, &bkn, &zero, (16, 16, 8));
}

// ---- 4. cp.async ----

const CP_ASYNC_SRC: &str = r##"#line 1 "t.cu"
// Thread t issues four 16-byte copies: chunk 0 (group 0), chunk 1 zero-filled when t >= n_valid (group 1;
// its source then lies past the end of src, never read), chunk 2 and a static one (both never committed).
// It records its four destinations before any wait, after wait_group 1, after wait_group 0 and after
// wait_all: snap[((4 blockIdx.x + step) * n + t) * 4 + j].
extern "C" __global__ void cpa(const uint4* src, uint4* snap, int n_valid) {
    extern __shared__ uint4 dyn[];  // 3 per thread
    __shared__ uint4 st[64];
    const int t = threadIdx.x, n = blockDim.x;
    st[t].x = st[t].y = st[t].z = st[t].w = 0x57a71c00u + t;
    cp_async_16(&dyn[3 * t], &src[t]);
    cp_async_commit();
    cp_async_16_zfill(&dyn[3 * t + 1], t < n_valid ? &src[n + t] : &src[1000000 + t], t < n_valid);
    cp_async_commit();
    cp_async_16(&dyn[3 * t + 2], &src[2 * n + t]);
    cp_async_16(&st[t], &src[3 * n + t]);
    for (int step = 0; step < 4; ++step) {
        if (step == 1) cp_async_wait<1>();
        if (step == 2) cp_async_wait<0>();
        if (step == 3) cp_async_wait_all();
        uint4* s = &snap[((4 * blockIdx.x + step) * n + t) * 4];
        s[0] = dyn[3 * t], s[1] = dyn[3 * t + 1], s[2] = dyn[3 * t + 2], s[3] = st[t];
    }
}
"##;

#[test]
fn cp_async_copies_and_zero_fills_when_a_wait_covers_them() {
    let Some(sim) = Sim::new("cp_async_copies_and_zero_fills_when_a_wait_covers_them") else {
        return;
    };
    let m = sim.module(&program(CP_ASYNC_SRC));
    let f = m.load_function("cpa").unwrap();
    let (n, n_valid) = (64usize, 40i32);
    let mut rng = Rng::new(5);
    let src: Vec<u32> = (0..4 * n * 4).map(|_| rng.next_u64() as u32).collect();
    let d_src = sim.stream.clone_htod(&src).unwrap();
    let blocks = 2usize;
    let mut d_snap = sim.stream.alloc_zeros::<u32>(blocks * 4 * n * 4 * 4).unwrap();
    sim.schedules(EVERY_SCHEDULE_AT_ONCE);
    launch!(sim, f, cfg(blocks as u32, n as u32, (3 * n * 16) as u32), &d_src, &mut d_snap, &n_valid)
        .unwrap_or_else(|e| panic!("cpa: {}", describe(&e)));
    let snap = sim.stream.clone_dtoh(&d_snap).unwrap();
    let chunk = |i: usize| src[4 * i..4 * i + 4].to_vec();
    for (block, t) in (0..blocks).flat_map(|b| (0..n).map(move |t| (b, t))) {
        // What each destination holds when the copies into it are not yet done: dynamic shared memory's
        // poison (0xff bytes), and the static chunk's own pattern.
        let old = [vec![u32::MAX; 4], vec![u32::MAX; 4], vec![u32::MAX; 4], vec![0x57a71c00 + t as u32; 4]];
        let new = [
            chunk(t),
            if (t as i32) < n_valid { chunk(n + t) } else { vec![0; 4] },
            chunk(2 * n + t),
            chunk(3 * n + t),
        ];
        // Copies land when a wait covers their group: group 0 at wait_group 1, group 1 at wait_group 0, the
        // uncommitted ones at wait_all (wait_group covers only committed groups). On a GPU a copy may land
        // any time before its wait; the stand-in takes the latest, so a read before the wait sees the old bytes.
        let done_at = [1, 2, 3, 3];
        for step in 0..4 {
            for j in 0..4 {
                let at = (((4 * block + step) * n + t) * 4 + j) * 4;
                let want = if step >= done_at[j] { &new[j] } else { &old[j] };
                assert_eq!(&snap[at..at + 4], &want[..], "block {block}, thread {t}, destination {j}, step {step}");
            }
        }
    }
}

// ---- 5. What must fail ----

const FAIL_SRC: &str = r##"#line 1 "t.cu"
__device__ __forceinline__ void operands(u32 a[4], u32 b[2], float c[4]) {
    for (int i = 0; i < 4; ++i) a[i] = 0x3c003c00u, c[i] = 0.f;
    b[0] = b[1] = 0x3c003c00u;
}
extern "C" __global__ void mma_half_warp(float* out) {
    u32 a[4], b[2];
    float c[4], d[4] = {0.f, 0.f, 0.f, 0.f};
    operands(a, b, c);
    if ((threadIdx.x & 31) < 16) mma_m16n8k16_f16_f32(d, a, b, c);
    out[threadIdx.x] = d[0];
}
extern "C" __global__ void mma_two_kinds(float* out) {
    u32 a[4], b[2];
    float c[4], d[4];
    operands(a, b, c);
    if ((threadIdx.x & 31) < 16) mma_m16n8k16_f16_f32(d, a, b, c);
    else mma_m16n8k16_bf16_f32(d, a, b, c);
    out[threadIdx.x] = d[0];
}
extern "C" __global__ void mma_small_block(float* out) {
    u32 a[4], b[2];
    float c[4], d[4];
    operands(a, b, c);
    mma_m16n8k16_f16_f32(d, a, b, c);
    out[threadIdx.x] = d[0];
}
// mode 0: lane 31's row starts at the end of the block's dynamic shared memory; 1: lane 3's row starts 8
// bytes into a row (misaligned); 2: lane 5 passes a global address.
extern "C" __global__ void ldm_bad(float* out, int mode) {
    extern __shared__ __align__(16) unsigned short rows[];  // 32 rows of 8
    const int lane = threadIdx.x;
    const void* p = &rows[lane * 8];
    if (mode == 0 && lane == 31) p = &rows[32 * 8];
    if (mode == 1 && lane == 3) p = &rows[lane * 8 + 4];
    if (mode == 2 && lane == 5) p = out;
    u32 r[4];
    ldmatrix_x4(r, p);
    out[lane] = __uint_as_float(r[0]);
}
// mode 0: thread 7 copies from past the end of src; 1: thread 2's destination is 8 bytes off alignment.
extern "C" __global__ void cpa_bad(const uint4* src, float* out, int mode) {
    extern __shared__ __align__(16) unsigned char buf[];
    const int t = threadIdx.x;
    const uint4* from = mode == 0 && t == 7 ? src + 4096 : src + t;
    unsigned char* to = mode == 1 && t == 2 ? buf + 16 * t + 8 : buf + 16 * t;
    cp_async_16(to, from);
    cp_async_wait_all();
    out[t] = (float)buf[16 * t];
}
"##;

#[test]
fn misuse_is_an_error_naming_the_instruction_and_line() {
    let Some(sim) = Sim::new("misuse_is_an_error_naming_the_instruction_and_line") else {
        return;
    };
    let m = sim.module(&program(FAIL_SRC));
    let mma_f16 = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32";
    let mma_bf16 = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
    let ldm_x4 = "ldmatrix.sync.aligned.m8n8.x4.shared.b16";
    let cp = "cp.async.cg.shared.global";
    let (mma_f16_at, mma_bf16_at, ldm_at) = (common_line(mma_f16), common_line(mma_bf16), common_line(ldm_x4));
    // cp_async_16's statement (the zero-fill one shares its instruction).
    let cp_at = {
        let prelude = kernels::source(kernels::PRELUDE).unwrap();
        let i = prelude
            .lines()
            .position(|l| l.contains("asm volatile(\"cp.async.cg.shared.global [%0], [%1], 16;\""))
            .unwrap();
        format!("common.cu:{}", i + 1)
    };
    let mut out = sim.stream.alloc_zeros::<f32>(64).unwrap();
    let src = sim.stream.alloc_zeros::<u32>(4 * 64).unwrap();
    let (failed, illegal) = (CUresult::CUDA_ERROR_LAUNCH_FAILED, CUresult::CUDA_ERROR_ILLEGAL_ADDRESS);
    for spec in ALL_SCHEDULES {
        sim.schedules(spec);

        let f = m.load_function("mma_half_warp").unwrap();
        let msg = expect_err(
            &format!("mma in half a warp, {spec}"),
            launch!(sim, f, cfg(1, 32, 0), &mut out),
            failed,
            &["kernel mma_half_warp", mma_f16, &mma_f16_at],
        );
        assert!(msg.contains("exited") || msg.contains("divergent"), "{msg}");
        sim.recover();

        let f = m.load_function("mma_two_kinds").unwrap();
        expect_err(
            &format!("two mma kinds in one warp, {spec}"),
            launch!(sim, f, cfg(1, 32, 0), &mut out),
            failed,
            &["kernel mma_two_kinds", "divergent warp 0", mma_f16, mma_bf16, &mma_f16_at, &mma_bf16_at],
        );
        sim.recover();

        let f = m.load_function("mma_small_block").unwrap();
        expect_err(
            &format!("mma in a 16-thread block, {spec}"),
            launch!(sim, f, cfg(1, 16, 0), &mut out),
            failed,
            &["kernel mma_small_block", mma_f16, "needs all 32 lanes", "16 threads"],
        );
        sim.recover();

        let f = m.load_function("ldm_bad").unwrap();
        for (mode, parts) in [
            (0i32, vec!["thread 31", "past its end", "512 bytes of dynamic shared memory"]),
            (1, vec!["thread 3", "misaligned"]),
            (2, vec!["thread 5", "outside shared memory"]),
        ] {
            let mut want = vec!["kernel ldm_bad", ldm_x4, &ldm_at];
            want.extend(parts);
            expect_err(
                &format!("ldm_bad mode {mode}, {spec}"),
                launch!(sim, f, cfg(1, 32, 512), &mut out, &mode),
                illegal,
                &want,
            );
            sim.recover();
        }

        let f = m.load_function("cpa_bad").unwrap();
        for (mode, parts) in [
            (0i32, vec!["thread 7", "global source", "not inside one live allocation"]),
            (1, vec!["thread 2", "misaligned"]),
        ] {
            let mut want = vec!["kernel cpa_bad", cp, &cp_at];
            want.extend(parts);
            expect_err(
                &format!("cpa_bad mode {mode}, {spec}"),
                launch!(sim, f, cfg(1, 32, 512), &src, &mut out, &mode),
                illegal,
                &want,
            );
            sim.recover();
        }
    }
    // The context works again, and the same kernels run when used correctly.
    sim.schedules("forward");
    let f = m.load_function("mma_small_block").unwrap();
    launch!(sim, f, cfg(1, 32, 0), &mut out).unwrap();
    let got = sim.stream.clone_dtoh(&out).unwrap();
    assert!(got[..32].iter().all(|&x| x == 16.0), "ones(16x16) * ones(16x8) = 16: {got:?}");
    let f = m.load_function("ldm_bad").unwrap();
    launch!(sim, f, cfg(1, 32, 512), &mut out, &3i32).unwrap();
}

// ---- 6. The real NVRTC and ptxas accept the same kernels ----

#[test]
fn the_test_kernels_compile_with_the_real_nvrtc() {
    let test = "the_test_kernels_compile_with_the_real_nvrtc";
    if kernels::nvrtc_is_stand_in() {
        // Run again in a child that loads the real NVRTC (or none).
        let out = common::rerun_without_cuda_stand_in(test);
        common::visible(&String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "{test} against the real NVRTC (library path without the CUDA stand-in) failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    if !common::nvrtc_or_skip(test) {
        return;
    }
    let (major, minor) = kernels::nvrtc_version().unwrap();
    // Each file and the instructions its PTX must hold (NVRTC keeps what the kernels use).
    let mma_f16 = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32";
    let mma_bf16 = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
    let ldm = |v: &str| format!("ldmatrix.sync.aligned.m8n8.{v}.shared.b16");
    let sources: [(&str, &str, Vec<String>); 5] = [
        ("mma", MMA_SRC, vec![mma_f16.into(), mma_bf16.into()]),
        (
            "ldmatrix",
            LDMATRIX_SRC,
            ["x1", "x2", "x4", "x1.trans", "x2.trans", "x4.trans"].iter().map(|v| ldm(v)).collect(),
        ),
        (
            "ldmatrix_mma",
            LDMATRIX_MMA_SRC,
            vec![ldm("x4"), ldm("x2.trans"), ldm("x2"), mma_f16.into()],
        ),
        (
            "cp_async",
            CP_ASYNC_SRC,
            [
                "cp.async.cg.shared.global [%r",
                "], 16;",
                "], 16, %r",
                "cp.async.commit_group;",
                "cp.async.wait_group 1;",
                "cp.async.wait_group 0;",
                "cp.async.wait_all;",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "fail",
            FAIL_SRC,
            vec![mma_f16.into(), mma_bf16.into(), ldm("x4"), "cp.async.wait_all;".into()],
        ),
    ];
    let mut failures = vec![];
    for (name, body, instructions) in &sources {
        for arch in ["sm_80", "sm_90"] {
            match kernels::compile_source(name, &program(body), arch, &[]) {
                Ok(c) => {
                    if c.cubin.as_ref().is_none_or(|b| b.is_empty()) {
                        failures.push(format!("{name} ({arch}): no cubin"));
                    }
                    for ins in instructions {
                        if !c.ptx.contains(ins.as_str()) {
                            failures.push(format!("{name} ({arch}): `{ins}` is not in the PTX"));
                        }
                    }
                }
                Err(e) => failures.push(format!("{name} ({arch}): {e}")),
            }
        }
    }
    common::visible(&format!(
        "cuda_sim_mma: {} test kernel files compile with NVRTC {major}.{minor} for sm_80 and sm_90",
        sources.len()
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
