//! Test infrastructure: checks the CPU cuBLAS stand-in (cuda-sim/src/cublas.cpp, built by
//! scripts/cuda-sim.sh) against cuBLAS's documented `cublasGemmEx` semantics, so a CUDA backend that passes
//! on the stand-in is checked against cuBLAS, not against a copy of its own mistakes.
//!
//! The reference below is written straight from the cuBLAS documentation (column-major,
//! C = alpha op(A) op(B) + beta C, element (i, j) of X at X[i + j*ld]) with f64 accumulation; nothing is
//! shared with src/backend/cuda. It covers every transa x transb, every type combination the stand-in
//! supports for CUBLAS_COMPUTE_32F, leading dimensions larger than the rows (NaN in the padding, which must
//! neither leak into C nor be overwritten in C), awkward shapes, alpha != 1 and beta in {0 (NaN-filled C),
//! 1, 0.5}; then a deliberately wrong transa that the comparison must reject, the exact call lmscore's
//! `gemm` makes, rounding-once cases with exact bits, determinism across the threaded split, pointer mode
//! DEVICE, the handle API, argument validation, and last (it makes the context's fault sticky) a B extent
//! running past its allocation.
//!
//! Tolerance per element: the f32 accumulation bound (k + 3) 2^-24 (|alpha| sum|a||b| + |beta c|) (k
//! products and sums, plus the epilogue's multiply-add), plus half an ulp of the output type for the single
//! final rounding (and half the smallest subnormal step, for results near zero).
//!
//! Runs only where the stand-in is on the library path (`eval "$(bash scripts/cuda-sim.sh)"` sets
//! LMSCORE_CUDA_SIM); otherwise prints SKIPPED, or fails when LMSCORE_REQUIRE_CUDA=1.

mod common;

use cudarc::cublas::{result, sys};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::{bf16, f16};
use std::ffi::{c_void, CStr};
use std::io::Write;
use std::sync::Arc;

use sys::cublasOperation_t::{CUBLAS_OP_C, CUBLAS_OP_N, CUBLAS_OP_T};
use sys::cublasStatus_t as St;

// ---- Element types ----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    F16,
    BF16,
    F32,
}

impl Ty {
    fn size(self) -> usize {
        match self {
            Ty::F32 => 4,
            _ => 2,
        }
    }
    fn cuda(self) -> sys::cudaDataType {
        match self {
            Ty::F16 => sys::cudaDataType::CUDA_R_16F,
            Ty::BF16 => sys::cudaDataType::CUDA_R_16BF,
            Ty::F32 => sys::cudaDataType::CUDA_R_32F,
        }
    }
    /// Appends `x` (already representable, or rounded to nearest even) in this type's encoding.
    fn push(self, x: f32, out: &mut Vec<u8>) {
        match self {
            Ty::F16 => out.extend_from_slice(&f16::from_f32(x).to_bits().to_le_bytes()),
            Ty::BF16 => out.extend_from_slice(&bf16::from_f32(x).to_bits().to_le_bytes()),
            Ty::F32 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
    fn get(self, bytes: &[u8], idx: usize) -> f32 {
        let s = self.size();
        let b = &bytes[idx * s..idx * s + s];
        match self {
            Ty::F16 => f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            Ty::BF16 => bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            Ty::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }
    fn round(self, x: f32) -> f32 {
        match self {
            Ty::F16 => f16::from_f32(x).to_f32(),
            Ty::BF16 => bf16::from_f32(x).to_f32(),
            Ty::F32 => x,
        }
    }
    /// Unit roundoff: half an ulp relative to the value.
    fn u(self) -> f64 {
        match self {
            Ty::F16 => 2f64.powi(-11),
            Ty::BF16 => 2f64.powi(-8),
            Ty::F32 => 2f64.powi(-24),
        }
    }
    /// Half the smallest subnormal step (the absolute rounding error near zero).
    fn tiny(self) -> f64 {
        match self {
            Ty::F16 => 2f64.powi(-25),
            Ty::BF16 => 2f64.powi(-134),
            Ty::F32 => 2f64.powi(-150),
        }
    }
}

// ---- Seeded data ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A column-major rows x cols matrix with leading dimension `ld` as the device holds it: exactly its
/// extent, (cols - 1) * ld + rows elements, with NaN in the padding rows (rows..ld of each column).
struct Mat {
    ty: Ty,
    ld: usize,
    bytes: Vec<u8>,
}

impl Mat {
    fn new(ty: Ty, rows: usize, cols: usize, ld: usize, mut f: impl FnMut(usize, usize) -> f32) -> Mat {
        assert!(ld >= rows.max(1));
        let len = if rows == 0 || cols == 0 { 0 } else { (cols - 1) * ld + rows };
        let mut bytes = Vec::with_capacity(len * ty.size());
        for idx in 0..len {
            let (i, j) = (idx % ld, idx / ld);
            ty.push(if i < rows { f(i, j) } else { f32::NAN }, &mut bytes);
        }
        Mat { ty, ld, bytes }
    }
    fn random(ty: Ty, rows: usize, cols: usize, ld: usize, rng: &mut Rng) -> Mat {
        Mat::new(ty, rows, cols, ld, |_, _| ty.round(rng.uniform()))
    }
    /// Element X[idx] of the stored array (the documentation's indexing: X[i + j*ld]).
    fn at(&self, idx: usize) -> f64 {
        self.ty.get(&self.bytes, idx) as f64
    }
}

// ---- The reference, from the cuBLAS documentation ----

struct Case {
    ta: sys::cublasOperation_t,
    tb: sys::cublasOperation_t,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
}

/// C = alpha op(A) op(B) + beta C with op(A) m x k, op(B) k x n: op(A)(i, p) = A[i + p*lda] for N and
/// A[p + i*lda] for T / C (real data), op(B)(p, j) = B[p + j*ldb] for N and B[j + p*ldb] for T. C is not
/// read when beta == 0. Returns (value, error bound before the output rounding) per element of the m x n
/// result, column-major with ld m.
fn reference(c: &Case, a: &Mat, b: &Mat, c0: &Mat) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(c.m * c.n);
    let gamma = (c.k as f64 + 3.0) * 2f64.powi(-24);
    for j in 0..c.n {
        for i in 0..c.m {
            let (mut s, mut sabs) = (0f64, 0f64);
            for p in 0..c.k {
                let x = if c.ta == CUBLAS_OP_N { a.at(i + p * a.ld) } else { a.at(p + i * a.ld) };
                let y = if c.tb == CUBLAS_OP_N { b.at(p + j * b.ld) } else { b.at(j + p * b.ld) };
                s += x * y;
                sabs += (x * y).abs();
            }
            let mut v = c.alpha as f64 * s;
            let mut mag = (c.alpha as f64).abs() * sabs;
            if c.beta != 0.0 {
                let cij = c0.at(i + j * c0.ld);
                v += c.beta as f64 * cij;
                mag += (c.beta as f64 * cij).abs();
            }
            out.push((v, gamma * mag));
        }
    }
    out
}

/// Ok when every element of `got` (C as read back) is within tolerance of the reference and the padding
/// rows of C kept their bytes; otherwise the worst element, described.
fn compare(what: &str, c: &Case, refv: &[(f64, f64)], c0: &Mat, got: &[u8]) -> Result<(), String> {
    let ty = c0.ty;
    let mut worst: Option<(f64, String)> = None;
    for j in 0..c.n {
        for i in 0..c.m {
            let (r, e) = refv[i + j * c.m];
            let v = ty.get(got, i + j * c0.ld) as f64;
            let tol = e + ty.u() * (r.abs() + e) + ty.tiny();
            let err = (v - r).abs();
            if err.is_nan() || err > tol {
                let excess = if err.is_nan() { f64::INFINITY } else { err / tol };
                if worst.as_ref().is_none_or(|w| excess > w.0) {
                    worst = Some((
                        excess,
                        format!("C({i}, {j}) = {v:e}, reference {r:e}, |error| {err:e} > tolerance {tol:e}"),
                    ));
                }
            }
        }
    }
    // The padding rows m..ldc of C belong to nobody: the GEMM must leave them alone.
    let s = ty.size();
    for idx in 0..got.len() / s {
        if idx % c0.ld >= c.m && got[idx * s..idx * s + s] != c0.bytes[idx * s..idx * s + s] {
            return Err(format!(
                "{what}: C padding element {idx} (row {} of ldc {}) was overwritten",
                idx % c0.ld,
                c0.ld
            ));
        }
    }
    match worst {
        None => Ok(()),
        Some((_, msg)) => Err(format!("{what}: {msg}")),
    }
}

// ---- Device plumbing ----

struct Sim {
    stream: Arc<CudaStream>,
    handle: sys::cublasHandle_t,
}

impl Sim {
    fn upload(&self, m: &Mat) -> CudaSlice<u8> {
        // Never a zero-byte allocation: a 1-byte buffer stands in for an empty matrix.
        if m.bytes.is_empty() {
            return self.stream.clone_htod(&[0u8]).expect("upload");
        }
        self.stream.clone_htod(&m.bytes).expect("upload")
    }

    fn download(&self, d: &CudaSlice<u8>) -> Vec<u8> {
        self.stream.clone_dtoh(d).expect("download")
    }

    /// `gemm_raw` on whole device buffers: A, B and C given as (buffer, type, leading dimension).
    #[allow(clippy::too_many_arguments)]
    fn gemm_slices(
        &self,
        ta: sys::cublasOperation_t,
        tb: sys::cublasOperation_t,
        mnk: (i32, i32, i32),
        alpha: f32,
        (a, aty, lda): (&CudaSlice<u8>, Ty, i32),
        (b, bty, ldb): (&CudaSlice<u8>, Ty, i32),
        beta: f32,
        (c, cty, ldc): (&mut CudaSlice<u8>, Ty, i32),
        compute: sys::cublasComputeType_t,
    ) -> St {
        let (pa, _ga) = a.device_ptr(&self.stream);
        let (pb, _gb) = b.device_ptr(&self.stream);
        let (pc, _gc) = c.device_ptr_mut(&self.stream);
        self.gemm_raw(ta, tb, mnk, alpha, (pa, aty, lda), (pb, bty, ldb), beta, (pc, cty, ldc), compute)
    }

    /// cublasGemmEx through cudarc with CUBLAS_COMPUTE_32F; returns the status.
    #[allow(clippy::too_many_arguments)]
    fn gemm_raw(
        &self,
        ta: sys::cublasOperation_t,
        tb: sys::cublasOperation_t,
        (m, n, k): (i32, i32, i32),
        alpha: f32,
        (a, aty, lda): (u64, Ty, i32),
        (b, bty, ldb): (u64, Ty, i32),
        beta: f32,
        (c, cty, ldc): (u64, Ty, i32),
        compute: sys::cublasComputeType_t,
    ) -> St {
        // SAFETY: the pointers are device allocations (or deliberately bad ones the stand-in must reject
        // before touching them); alpha and beta are host floats (pointer mode HOST).
        let r = unsafe {
            result::gemm_ex(
                self.handle,
                ta,
                tb,
                m,
                n,
                k,
                &alpha as *const f32 as *const c_void,
                a as *const c_void,
                aty.cuda(),
                lda,
                b as *const c_void,
                bty.cuda(),
                ldb,
                &beta as *const f32 as *const c_void,
                c as *mut c_void,
                cty.cuda(),
                ldc,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        };
        match r {
            Ok(()) => St::CUBLAS_STATUS_SUCCESS,
            Err(result::CublasError(s)) => s,
        }
    }

    /// Runs case `c` on the stand-in with matrices a, b, c0 (as uploaded) and returns C read back.
    fn gemm(&self, c: &Case, a: &Mat, b: &Mat, c0: &Mat) -> Result<Vec<u8>, St> {
        let (da, db, mut dc) = (self.upload(a), self.upload(b), self.upload(c0));
        let st = {
            self.gemm_slices(
                c.ta,
                c.tb,
                (c.m as i32, c.n as i32, c.k as i32),
                c.alpha,
                (&da, a.ty, a.ld as i32),
                (&db, b.ty, b.ld as i32),
                c.beta,
                (&mut dc, c0.ty, c0.ld as i32),
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            )
        };
        if st != St::CUBLAS_STATUS_SUCCESS {
            return Err(st);
        }
        Ok(self.download(&dc))
    }
}

fn op_name(op: sys::cublasOperation_t) -> &'static str {
    match op {
        CUBLAS_OP_N => "N",
        CUBLAS_OP_T => "T",
        _ => "C",
    }
}

/// Stored shape of A (rows, cols) for op(A) m x k, and of B for op(B) k x n.
fn a_shape(ta: sys::cublasOperation_t, m: usize, k: usize) -> (usize, usize) {
    if ta == CUBLAS_OP_N {
        (m, k)
    } else {
        (k, m)
    }
}
fn b_shape(tb: sys::cublasOperation_t, k: usize, n: usize) -> (usize, usize) {
    if tb == CUBLAS_OP_N {
        (k, n)
    } else {
        (n, k)
    }
}

/// C prefilled for a given beta: NaN when beta == 0 (cuBLAS must not read it), random otherwise; NaN in
/// the padding either way.
fn c_init(ty: Ty, m: usize, n: usize, ldc: usize, beta: f32, rng: &mut Rng) -> Mat {
    if beta == 0.0 {
        Mat::new(ty, m, n, ldc, |_, _| f32::NAN)
    } else {
        Mat::random(ty, m, n, ldc, rng)
    }
}

fn skip_or_sim() -> Option<Sim> {
    if !common::stand_in_or_skip("cuda_sim_cublas") {
        return None;
    }
    let ctx = CudaContext::new(0).expect("CudaContext::new(0) on the stand-in");
    let stream = ctx.default_stream();
    let handle = result::create_handle().expect("cublasCreate_v2");
    // SAFETY: a live handle and the context's stream.
    unsafe { result::set_stream(handle, stream.cu_stream() as sys::cudaStream_t) }.expect("cublasSetStream_v2");
    Some(Sim { stream, handle })
}

const TYPE_COMBOS: [(Ty, Ty); 5] = [
    (Ty::F16, Ty::F16),
    (Ty::F16, Ty::F32),
    (Ty::BF16, Ty::BF16),
    (Ty::BF16, Ty::F32),
    (Ty::F32, Ty::F32),
];

/// Everything in one test, in order: the last section makes the context's fault sticky.
#[test]
fn cublas_stand_in_matches_the_documented_gemm() {
    let Some(sim) = skip_or_sim() else { return };
    let mut rng = Rng(0x005e_edc0_b1a5);

    handle_api(&sim);
    documented_semantics(&sim, &mut rng);
    transposition_mistake_is_detected(&sim, &mut rng);
    lmscore_backend_call(&sim, &mut rng);
    rounds_once(&sim);
    threaded_split_is_deterministic(&sim, &mut rng);
    device_pointer_mode(&sim, &mut rng);
    edge_shapes(&sim, &mut rng);
    invalid_arguments(&sim, &mut rng);
    // Last: a sticky fault.
    out_of_range_b_faults(&sim, &mut rng);
}

fn handle_api(sim: &Sim) {
    // SAFETY: plain getters/setters on a live handle with valid out-pointers.
    unsafe {
        let mut v = 0i32;
        assert_eq!(sys::cublasGetVersion_v2(sim.handle, &mut v), St::CUBLAS_STATUS_SUCCESS);
        assert!((130000..140000).contains(&v), "cublasGetVersion_v2 = {v}, expected a 13.x version");

        let mut s: sys::cudaStream_t = std::ptr::null_mut();
        assert_eq!(sys::cublasGetStream_v2(sim.handle, &mut s), St::CUBLAS_STATUS_SUCCESS);
        assert_eq!(
            s,
            sim.stream.cu_stream() as sys::cudaStream_t,
            "cublasGetStream_v2 returns the stream set"
        );

        let mut mode = sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_DEVICE;
        assert_eq!(sys::cublasGetPointerMode_v2(sim.handle, &mut mode), St::CUBLAS_STATUS_SUCCESS);
        assert_eq!(
            mode,
            sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_HOST,
            "the default pointer mode is HOST"
        );

        let mut math = sys::cublasMath_t::CUBLAS_PEDANTIC_MATH;
        assert_eq!(sys::cublasGetMathMode(sim.handle, &mut math), St::CUBLAS_STATUS_SUCCESS);
        assert_eq!(math, sys::cublasMath_t::CUBLAS_DEFAULT_MATH);
        assert_eq!(
            sys::cublasSetMathMode(sim.handle, sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH),
            St::CUBLAS_STATUS_SUCCESS
        );
        assert_eq!(sys::cublasGetMathMode(sim.handle, &mut math), St::CUBLAS_STATUS_SUCCESS);
        assert_eq!(math, sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH);
        assert_eq!(
            sys::cublasSetMathMode(sim.handle, sys::cublasMath_t::CUBLAS_DEFAULT_MATH),
            St::CUBLAS_STATUS_SUCCESS
        );

        // A user workspace must be 256-byte aligned; null resets to the default pool.
        assert_eq!(
            sys::cublasSetWorkspace_v2(sim.handle, 8 as *mut c_void, 1024),
            St::CUBLAS_STATUS_INVALID_VALUE
        );
        assert_eq!(sys::cublasSetWorkspace_v2(sim.handle, std::ptr::null_mut(), 0), St::CUBLAS_STATUS_SUCCESS);

        let name = CStr::from_ptr(sys::cublasGetStatusName(St::CUBLAS_STATUS_INVALID_VALUE));
        assert_eq!(name.to_str().unwrap(), "CUBLAS_STATUS_INVALID_VALUE");
        let text = CStr::from_ptr(sys::cublasGetStatusString(St::CUBLAS_STATUS_EXECUTION_FAILED));
        assert!(!text.to_bytes().is_empty());
    }
}

/// Every transa x transb x type combination x shape x (alpha, beta), padded leading dimensions.
fn documented_semantics(sim: &Sim, rng: &mut Rng) {
    let shapes = [(7, 5, 13), (33, 17, 64), (1, 1, 1), (4, 9, 3)];
    let ops = [CUBLAS_OP_N, CUBLAS_OP_T];
    let scalars = [(1.0f32, 0.0f32), (-1.25, 1.0), (0.75, 0.5)];
    let mut cases = 0;
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        for &ta in &ops {
            for &tb in &ops {
                for &(ab, cty) in &TYPE_COMBOS {
                    for (ci, &(alpha, beta)) in scalars.iter().enumerate() {
                        // Padding on some operands, tight leading dimensions on others.
                        let pad = |x: usize| (si + ci + x) % 3;
                        let (ar, ac) = a_shape(ta, m, k);
                        let (br, bc) = b_shape(tb, k, n);
                        let a = Mat::random(ab, ar, ac, ar + pad(0), rng);
                        let b = Mat::random(ab, br, bc, br + pad(1), rng);
                        let c0 = c_init(cty, m, n, m + pad(2), beta, rng);
                        let case = Case {
                            ta,
                            tb,
                            m,
                            n,
                            k,
                            alpha,
                            beta,
                        };
                        let what = format!(
                            "gemm {}{} m={m} n={n} k={k} {ab:?}->{cty:?} alpha={alpha} beta={beta} lda={} ldb={} ldc={}",
                            op_name(ta),
                            op_name(tb),
                            a.ld,
                            b.ld,
                            c0.ld
                        );
                        let got = sim.gemm(&case, &a, &b, &c0).unwrap_or_else(|st| panic!("{what}: status {st:?}"));
                        compare(&what, &case, &reference(&case, &a, &b, &c0), &c0, &got).unwrap();
                        cases += 1;
                    }
                }
            }
        }
    }
    // CUBLAS_OP_C is the transpose for real data, and cublasSgemm_v2 is GemmEx in f32.
    for &(ta, tb) in &[(CUBLAS_OP_C, CUBLAS_OP_N), (CUBLAS_OP_N, CUBLAS_OP_C), (CUBLAS_OP_C, CUBLAS_OP_C)] {
        let (m, n, k) = (6, 11, 10);
        let (ar, ac) = a_shape(ta, m, k);
        let (br, bc) = b_shape(tb, k, n);
        let a = Mat::random(Ty::BF16, ar, ac, ar + 1, rng);
        let b = Mat::random(Ty::BF16, br, bc, br + 2, rng);
        let c0 = c_init(Ty::F32, m, n, m, 0.5, rng);
        let case = Case {
            ta,
            tb,
            m,
            n,
            k,
            alpha: 2.0,
            beta: 0.5,
        };
        let what = format!("gemm {}{} (CUBLAS_OP_C on real data)", op_name(ta), op_name(tb));
        let got = sim.gemm(&case, &a, &b, &c0).unwrap_or_else(|st| panic!("{what}: status {st:?}"));
        compare(&what, &case, &reference(&case, &a, &b, &c0), &c0, &got).unwrap();
        cases += 1;
    }
    for &(ta, tb) in &[
        (CUBLAS_OP_N, CUBLAS_OP_N),
        (CUBLAS_OP_T, CUBLAS_OP_N),
        (CUBLAS_OP_N, CUBLAS_OP_T),
        (CUBLAS_OP_T, CUBLAS_OP_T),
    ] {
        let (m, n, k) = (9, 7, 21);
        let (ar, ac) = a_shape(ta, m, k);
        let (br, bc) = b_shape(tb, k, n);
        let a = Mat::random(Ty::F32, ar, ac, ar + 2, rng);
        let b = Mat::random(Ty::F32, br, bc, br + 1, rng);
        let c0 = c_init(Ty::F32, m, n, m + 3, 1.0, rng);
        let case = Case {
            ta,
            tb,
            m,
            n,
            k,
            alpha: 0.5,
            beta: 1.0,
        };
        let (da, db, mut dc) = (sim.upload(&a), sim.upload(&b), sim.upload(&c0));
        let (alpha, beta) = (case.alpha, case.beta);
        let st = {
            let (pa, _ga) = da.device_ptr(&sim.stream);
            let (pb, _gb) = db.device_ptr(&sim.stream);
            let (pc, _gc) = dc.device_ptr_mut(&sim.stream);
            // SAFETY: device buffers of the extents given; host scalars.
            unsafe {
                sys::cublasSgemm_v2(
                    sim.handle,
                    ta,
                    tb,
                    m as i32,
                    n as i32,
                    k as i32,
                    &alpha,
                    pa as *const f32,
                    a.ld as i32,
                    pb as *const f32,
                    b.ld as i32,
                    &beta,
                    pc as *mut f32,
                    c0.ld as i32,
                )
            }
        };
        let what = format!("cublasSgemm_v2 {}{}", op_name(ta), op_name(tb));
        assert_eq!(st, St::CUBLAS_STATUS_SUCCESS, "{what}");
        compare(&what, &case, &reference(&case, &a, &b, &c0), &c0, &sim.download(&dc)).unwrap();
        cases += 1;
    }
    let _ = writeln!(std::io::stderr(), "cuda_sim_cublas: {cases} GEMMs match the documented semantics");
}

/// The comparison is not vacuous: calling with transa flipped (valid shapes for both, m == k, so lda
/// works either way) on non-symmetric data must be caught; likewise transb.
fn transposition_mistake_is_detected(sim: &Sim, rng: &mut Rng) {
    let (m, n, k) = (9, 5, 9);
    for &ty in &[Ty::F16, Ty::F32] {
        let a = Mat::random(ty, m, k, m + 2, rng);
        let b = Mat::random(ty, k, n, k + 1, rng);
        let c0 = c_init(Ty::F32, m, n, m, 0.0, rng);
        let right = Case {
            ta: CUBLAS_OP_N,
            tb: CUBLAS_OP_N,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
        };
        let refv = reference(&right, &a, &b, &c0);
        let good = sim.gemm(&right, &a, &b, &c0).expect("gemm NN");
        compare("NN", &right, &refv, &c0, &good).expect("the correct call must match");

        let flipped = Case { ta: CUBLAS_OP_T, ..right };
        let bad = sim.gemm(&flipped, &a, &b, &c0).expect("gemm TN");
        let verdict = compare("TN against the NN reference", &right, &refv, &c0, &bad);
        assert!(verdict.is_err(), "a flipped transa ({ty:?}) was not detected: the comparison is vacuous");

        // transb: square op(B) (k == n) so ldb is valid both ways.
        let (n2, k2) = (6, 6);
        let a2 = Mat::random(ty, m, k2, m, rng);
        let b2 = Mat::random(ty, k2, n2, k2 + 3, rng);
        let c2 = c_init(Ty::F32, m, n2, m, 0.0, rng);
        let right = Case {
            ta: CUBLAS_OP_N,
            tb: CUBLAS_OP_N,
            m,
            n: n2,
            k: k2,
            alpha: 1.0,
            beta: 0.0,
        };
        let refv = reference(&right, &a2, &b2, &c2);
        let bad = sim.gemm(&Case { tb: CUBLAS_OP_T, ..right }, &a2, &b2, &c2).expect("gemm NT");
        assert!(
            compare("NT against the NN reference", &right, &refv, &c2, &bad).is_err(),
            "a flipped transb ({ty:?}) was not detected"
        );
    }
}

/// lmscore's `gemm` (src/backend/cuda/mod.rs): row-major Y[M, N] (+)= X[M, K] . W[N, K]^T issued as
/// gemm(T, N, m = N, n = M, k = K, A = W lda K, B = X ldb K, C = Y ldc N), checked against a plain
/// row-major product (here with a bias pre-filled in Y and beta = 1, as the linear layers do, and beta = 0
/// as the LM head does).
fn lmscore_backend_call(sim: &Sim, rng: &mut Rng) {
    let (mm, kk, nn) = (6usize, 48usize, 40usize);
    for &(ab, yty) in &TYPE_COMBOS {
        for &beta in &[1.0f32, 0.0] {
            let x: Vec<f32> = (0..mm * kk).map(|_| ab.round(rng.uniform())).collect(); // X[r][p] = x[r*K + p]
            let w: Vec<f32> = (0..nn * kk).map(|_| ab.round(rng.uniform())).collect(); // W[c][p] = w[c*K + p]
            let bias: Vec<f32> = (0..nn).map(|_| yty.round(rng.uniform())).collect();
            // Row-major buffers are exactly what lmscore hands over; as column-major matrices they are
            // W: K x N (ld K), X: K x M (ld K), Y: N x M (ld N).
            let wm = Mat::new(ab, kk, nn, kk, |p, c| w[c * kk + p]);
            let xm = Mat::new(ab, kk, mm, kk, |p, r| x[r * kk + p]);
            let y0 = Mat::new(yty, nn, mm, nn, |c, _| if beta == 0.0 { f32::NAN } else { bias[c] });
            let (dw, dx, mut dy) = (sim.upload(&wm), sim.upload(&xm), sim.upload(&y0));
            let st = {
                sim.gemm_slices(
                    CUBLAS_OP_T,
                    CUBLAS_OP_N,
                    (nn as i32, mm as i32, kk as i32),
                    1.0,
                    (&dw, ab, kk as i32),
                    (&dx, ab, kk as i32),
                    beta,
                    (&mut dy, yty, nn as i32),
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                )
            };
            let what = format!("lmscore gemm {ab:?}->{yty:?} beta={beta}");
            assert_eq!(st, St::CUBLAS_STATUS_SUCCESS, "{what}");
            let got = sim.download(&dy);
            let gamma = (kk as f64 + 3.0) * 2f64.powi(-24);
            for r in 0..mm {
                for c in 0..nn {
                    let (mut s, mut sabs) = (0f64, 0f64);
                    for p in 0..kk {
                        let t = x[r * kk + p] as f64 * w[c * kk + p] as f64;
                        s += t;
                        sabs += t.abs();
                    }
                    let b = if beta == 0.0 { 0.0 } else { bias[c] as f64 };
                    let (want, e) = (s + b, gamma * (sabs + b.abs()));
                    let v = yty.get(&got, r * nn + c) as f64; // row-major Y[r][c]
                    let tol = e + yty.u() * (want.abs() + e) + yty.tiny();
                    assert!(
                        (v - want).abs() <= tol,
                        "{what}: Y[{r}][{c}] = {v:e}, row-major product {want:e}, tolerance {tol:e}"
                    );
                }
            }
        }
    }
}

/// The output is rounded once, from f32: acc = 2^-11 + 2^-23 (two exact products), beta = 1 with C = 1.0.
/// Exactly 1 + 2^-11 + 2^-23 rounds up to 1 + 2^-10 in f16 (0x3C01). Rounding acc to f16 first (2^-11),
/// then the sum (1 + 2^-11, a tie to even) gives 1.0 (0x3C00). Likewise in bf16 with 2^-8 + 2^-20.
fn rounds_once(sim: &Sim) {
    struct Probe {
        ty: Ty,
        p1: (f32, f32),
        p2: (f32, f32),
    }
    let probes = [
        Probe {
            ty: Ty::F16,
            p1: (2f32.powi(-11), 1.0),
            p2: (2f32.powi(-12), 2f32.powi(-11)),
        },
        Probe {
            ty: Ty::BF16,
            p1: (2f32.powi(-8), 1.0),
            p2: (2f32.powi(-10), 2f32.powi(-10)),
        },
    ];
    for pr in &probes {
        let ty = pr.ty;
        // op(A) = [a1 a2] (1 x 2), op(B) = [b1; b2] (2 x 1), C = [1.0].
        let a = Mat::new(ty, 1, 2, 1, |_, p| if p == 0 { pr.p1.0 } else { pr.p2.0 });
        let b = Mat::new(ty, 2, 1, 2, |p, _| if p == 0 { pr.p1.1 } else { pr.p2.1 });
        assert_eq!(
            ty.get(&a.bytes, 1) as f64 * ty.get(&b.bytes, 1) as f64,
            pr.p2.0 as f64 * pr.p2.1 as f64,
            "inputs must be exact"
        );
        let c0 = Mat::new(ty, 1, 1, 1, |_, _| 1.0);
        let case = Case {
            ta: CUBLAS_OP_N,
            tb: CUBLAS_OP_N,
            m: 1,
            n: 1,
            k: 2,
            alpha: 1.0,
            beta: 1.0,
        };
        let got = sim.gemm(&case, &a, &b, &c0).expect("rounding probe");
        let got_bits = u16::from_le_bytes([got[0], got[1]]);
        let acc = pr.p1.0 as f64 * pr.p1.1 as f64 + pr.p2.0 as f64 * pr.p2.1 as f64;
        let (once, twice) = match ty {
            Ty::F16 => (
                f16::from_f64(acc + 1.0).to_bits(),
                f16::from_f64(f16::from_f64(acc).to_f64() + 1.0).to_bits(),
            ),
            _ => (
                bf16::from_f64(acc + 1.0).to_bits(),
                bf16::from_f64(bf16::from_f64(acc).to_f64() + 1.0).to_bits(),
            ),
        };
        assert_ne!(once, twice, "{ty:?}: the probe must tell one rounding from two");
        assert_eq!(
            got_bits, once,
            "{ty:?}: C = {got_bits:#06x}, rounded once {once:#06x} (rounded twice {twice:#06x})"
        );
    }
}

/// A GEMM big enough for the stand-in's threaded path (m n k > 4M) gives the same bits as the same GEMM
/// issued one column at a time (each far below the threshold): the summation order is fixed per element.
fn threaded_split_is_deterministic(sim: &Sim, rng: &mut Rng) {
    let (m, n, k) = (160usize, 136usize, 260usize);
    let a = Mat::random(Ty::F16, k, m, k, rng); // transa = T, as lmscore calls it
    let b = Mat::random(Ty::F16, k, n, k + 1, rng);
    let c0 = c_init(Ty::F32, m, n, m + 1, 0.5, rng);
    let case = Case {
        ta: CUBLAS_OP_T,
        tb: CUBLAS_OP_N,
        m,
        n,
        k,
        alpha: 1.0,
        beta: 0.5,
    };
    let whole = sim.gemm(&case, &a, &b, &c0).expect("big gemm");
    compare("big threaded gemm", &case, &reference(&case, &a, &b, &c0), &c0, &whole).unwrap();

    let (da, db, mut dc) = (sim.upload(&a), sim.upload(&b), sim.upload(&c0));
    {
        let (pa, _ga) = da.device_ptr(&sim.stream);
        let (pb, _gb) = db.device_ptr(&sim.stream);
        let (pc, _gc) = dc.device_ptr_mut(&sim.stream);
        for j in 0..n {
            // Column j of B and C start inside their allocations: j*ldb and j*ldc elements in.
            let st = sim.gemm_raw(
                CUBLAS_OP_T,
                CUBLAS_OP_N,
                (m as i32, 1, k as i32),
                1.0,
                (pa, Ty::F16, k as i32),
                (pb + (j * b.ld * 2) as u64, Ty::F16, b.ld as i32),
                0.5,
                (pc + (j * c0.ld * 4) as u64, Ty::F32, c0.ld as i32),
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC,
            );
            assert_eq!(st, St::CUBLAS_STATUS_SUCCESS, "column {j}");
        }
    }
    let by_column = sim.download(&dc);
    assert!(whole == by_column, "the threaded GEMM and the column-by-column GEMM differ in their bits");
}

/// Pointer mode DEVICE: alpha and beta are read from device memory.
fn device_pointer_mode(sim: &Sim, rng: &mut Rng) {
    let (m, n, k) = (5, 4, 19);
    let a = Mat::random(Ty::F32, k, m, k, rng);
    let b = Mat::random(Ty::F32, k, n, k, rng);
    let c0 = c_init(Ty::F32, m, n, m, 0.5, rng);
    let case = Case {
        ta: CUBLAS_OP_T,
        tb: CUBLAS_OP_N,
        m,
        n,
        k,
        alpha: -2.0,
        beta: 0.5,
    };
    let scal = sim.stream.clone_htod(&[case.alpha, case.beta]).expect("scalars");
    let (da, db, mut dc) = (sim.upload(&a), sim.upload(&b), sim.upload(&c0));
    let st = {
        let (ps, _gs) = scal.device_ptr(&sim.stream);
        let (pa, _ga) = da.device_ptr(&sim.stream);
        let (pb, _gb) = db.device_ptr(&sim.stream);
        let (pc, _gc) = dc.device_ptr_mut(&sim.stream);
        // SAFETY: device buffers of the extents given; alpha, beta are device floats in pointer mode DEVICE.
        unsafe {
            assert_eq!(
                sys::cublasSetPointerMode_v2(sim.handle, sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_DEVICE),
                St::CUBLAS_STATUS_SUCCESS
            );
            let st = sys::cublasGemmEx(
                sim.handle,
                CUBLAS_OP_T,
                CUBLAS_OP_N,
                m as i32,
                n as i32,
                k as i32,
                ps as *const c_void,
                pa as *const c_void,
                Ty::F32.cuda(),
                k as i32,
                pb as *const c_void,
                Ty::F32.cuda(),
                k as i32,
                (ps + 4) as *const c_void,
                pc as *mut c_void,
                Ty::F32.cuda(),
                m as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            );
            assert_eq!(
                sys::cublasSetPointerMode_v2(sim.handle, sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_HOST),
                St::CUBLAS_STATUS_SUCCESS
            );
            st
        }
    };
    assert_eq!(st, St::CUBLAS_STATUS_SUCCESS, "gemm in pointer mode DEVICE");
    compare("pointer mode DEVICE", &case, &reference(&case, &a, &b, &c0), &c0, &sim.download(&dc)).unwrap();
}

/// m == 0 or n == 0: nothing happens. k == 0: C = beta C (C = 0, not NaN, when beta == 0).
fn edge_shapes(sim: &Sim, rng: &mut Rng) {
    let c0 = Mat::random(Ty::F16, 4, 3, 5, rng);
    let a = Mat::random(Ty::F16, 4, 2, 4, rng);
    let b = Mat::random(Ty::F16, 2, 3, 2, rng);
    for (m, n) in [(0usize, 3usize), (4, 0)] {
        let case = Case {
            ta: CUBLAS_OP_N,
            tb: CUBLAS_OP_N,
            m,
            n,
            k: 2,
            alpha: 1.0,
            beta: 0.0,
        };
        // Leading dimensions stay those of the full matrices (valid for the empty ones too).
        let (da, db, mut dc) = (sim.upload(&a), sim.upload(&b), sim.upload(&c0));
        let st = {
            sim.gemm_slices(
                case.ta,
                case.tb,
                (m as i32, n as i32, 2),
                1.0,
                (&da, Ty::F16, 4),
                (&db, Ty::F16, 2),
                0.0,
                (&mut dc, Ty::F16, 5),
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            )
        };
        assert_eq!(st, St::CUBLAS_STATUS_SUCCESS, "m={m} n={n}");
        assert!(sim.download(&dc) == c0.bytes, "an empty GEMM (m={m}, n={n}) changed C");
    }
    for beta in [0.0f32, 0.5] {
        let (m, n) = (4usize, 3usize);
        let c0 = c_init(Ty::F16, m, n, 5, beta, rng);
        let a = Mat::random(Ty::F16, m, 1, m, rng); // never read: k == 0
        let b = Mat::random(Ty::F16, 1, n, 1, rng);
        let case = Case {
            ta: CUBLAS_OP_N,
            tb: CUBLAS_OP_N,
            m,
            n,
            k: 0,
            alpha: 1.0,
            beta,
        };
        let (da, db, mut dc) = (sim.upload(&a), sim.upload(&b), sim.upload(&c0));
        let st = {
            sim.gemm_slices(
                CUBLAS_OP_N,
                CUBLAS_OP_N,
                (m as i32, n as i32, 0),
                1.0,
                (&da, Ty::F16, m as i32),
                (&db, Ty::F16, 1),
                beta,
                (&mut dc, Ty::F16, 5),
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            )
        };
        assert_eq!(st, St::CUBLAS_STATUS_SUCCESS, "k=0 beta={beta}");
        let what = format!("k = 0, beta = {beta}");
        compare(&what, &case, &reference(&case, &a, &b, &c0), &c0, &sim.download(&dc)).unwrap();
    }
}

/// Host-side validation: INVALID_VALUE for bad sizes and leading dimensions, NOT_SUPPORTED for compute
/// types / type combinations outside CUBLAS_COMPUTE_32F's list, NOT_INITIALIZED for a null handle. None
/// of these touches memory (so they use valid buffers and leave no fault behind).
fn invalid_arguments(sim: &Sim, rng: &mut Rng) {
    let (m, n, k) = (8usize, 6usize, 10usize);
    let a = Mat::random(Ty::F16, m, k, m, rng);
    let b = Mat::random(Ty::F16, k, n, k, rng);
    let c0 = Mat::random(Ty::F16, m, n, m, rng);
    let (da, db, mut dc) = (sim.upload(&a), sim.upload(&b), sim.upload(&c0));
    {
        let (pa, _ga) = da.device_ptr(&sim.stream);
        let (pb, _gb) = db.device_ptr(&sim.stream);
        let (pc, _gc) = dc.device_ptr_mut(&sim.stream);
        let c32 = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let call = |ta, tb, mnk, lda, ldb, ldc, aty, cty, compute| {
            sim.gemm_raw(ta, tb, mnk, 1.0, (pa, aty, lda), (pb, Ty::F16, ldb), 0.0, (pc, cty, ldc), compute)
        };
        use St::{CUBLAS_STATUS_INVALID_VALUE as INVALID, CUBLAS_STATUS_NOT_SUPPORTED as UNSUPPORTED};
        let checks: Vec<(&str, St)> = vec![
            (
                "valid call",
                call(CUBLAS_OP_N, CUBLAS_OP_N, (mi, ni, ki), mi, ki, mi, Ty::F16, Ty::F16, c32),
            ),
            (
                "lda < m (transa N)",
                call(CUBLAS_OP_N, CUBLAS_OP_N, (mi, ni, ki), mi - 1, ki, mi, Ty::F16, Ty::F16, c32),
            ),
            (
                "lda < k (transa T)",
                call(CUBLAS_OP_T, CUBLAS_OP_N, (mi, ni, ki), ki - 1, ki, mi, Ty::F16, Ty::F16, c32),
            ),
            (
                "ldb < k (transb N)",
                call(CUBLAS_OP_N, CUBLAS_OP_N, (mi, ni, ki), mi, ki - 1, mi, Ty::F16, Ty::F16, c32),
            ),
            (
                "ldb < n (transb T)",
                call(CUBLAS_OP_N, CUBLAS_OP_T, (mi, ni, ki), mi, ni - 1, mi, Ty::F16, Ty::F16, c32),
            ),
            (
                "ldc < m",
                call(CUBLAS_OP_N, CUBLAS_OP_N, (mi, ni, ki), mi, ki, mi - 1, Ty::F16, Ty::F16, c32),
            ),
            (
                "lda = 0 with m = 0",
                call(CUBLAS_OP_N, CUBLAS_OP_N, (0, ni, ki), 0, ki, 1, Ty::F16, Ty::F16, c32),
            ),
            ("m < 0", call(CUBLAS_OP_N, CUBLAS_OP_N, (-1, ni, ki), mi, ki, mi, Ty::F16, Ty::F16, c32)),
            ("n < 0", call(CUBLAS_OP_N, CUBLAS_OP_N, (mi, -3, ki), mi, ki, mi, Ty::F16, Ty::F16, c32)),
            ("k < 0", call(CUBLAS_OP_N, CUBLAS_OP_N, (mi, ni, -1), mi, ki, mi, Ty::F16, Ty::F16, c32)),
            (
                "A f32 with B f16",
                call(CUBLAS_OP_N, CUBLAS_OP_N, (mi, ni, ki), mi, ki, mi, Ty::F32, Ty::F32, c32),
            ),
            (
                "f16 inputs, bf16 C",
                call(CUBLAS_OP_N, CUBLAS_OP_N, (mi, ni, ki), mi, ki, mi, Ty::F16, Ty::BF16, c32),
            ),
            (
                "CUBLAS_COMPUTE_16F",
                call(
                    CUBLAS_OP_N,
                    CUBLAS_OP_N,
                    (mi, ni, ki),
                    mi,
                    ki,
                    mi,
                    Ty::F16,
                    Ty::F16,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_16F,
                ),
            ),
        ];
        let expected = [
            St::CUBLAS_STATUS_SUCCESS,
            INVALID,
            INVALID,
            INVALID,
            INVALID,
            INVALID,
            INVALID,
            INVALID,
            INVALID,
            INVALID,
            UNSUPPORTED,
            UNSUPPORTED,
            UNSUPPORTED,
        ];
        for ((what, got), want) in checks.iter().zip(expected) {
            assert_eq!(*got, want, "{what}");
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: a null handle is rejected before anything is read.
        let st = unsafe {
            sys::cublasGemmEx(
                std::ptr::null_mut(),
                CUBLAS_OP_N,
                CUBLAS_OP_N,
                mi,
                ni,
                ki,
                &alpha as *const f32 as *const c_void,
                pa as *const c_void,
                Ty::F16.cuda(),
                mi,
                pb as *const c_void,
                Ty::F16.cuda(),
                ki,
                &beta as *const f32 as *const c_void,
                pc as *mut c_void,
                Ty::F16.cuda(),
                mi,
                c32,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        };
        assert_eq!(st, St::CUBLAS_STATUS_NOT_INITIALIZED, "null handle");
    }
}

/// B's extent ((n - 1) ldb + k elements) runs past its allocation (k n elements, ldb = k + 1): the
/// stand-in must refuse before touching memory, fail with EXECUTION_FAILED and record a sticky fault, so
/// later GEMMs fail, the driver reports the error and cublasDestroy_v2 surfaces it. Run last.
fn out_of_range_b_faults(sim: &Sim, rng: &mut Rng) {
    let (m, n, k) = (5usize, 4usize, 7usize);
    let a = Mat::random(Ty::F32, m, k, m, rng);
    let b_tight = Mat::random(Ty::F32, k, n, k, rng); // k n elements
    let c0 = Mat::random(Ty::F32, m, n, m, rng);
    let (da, db, mut dc) = (sim.upload(&a), sim.upload(&b_tight), sim.upload(&c0));
    let (st, st_after) = {
        let c32 = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let st = sim.gemm_slices(
            CUBLAS_OP_N,
            CUBLAS_OP_N,
            (m as i32, n as i32, k as i32),
            1.0,
            (&da, Ty::F32, m as i32),
            (&db, Ty::F32, k as i32 + 1),
            0.0,
            (&mut dc, Ty::F32, m as i32),
            c32,
        );
        // A valid call after the fault fails too: the error is sticky.
        let after = sim.gemm_slices(
            CUBLAS_OP_N,
            CUBLAS_OP_N,
            (m as i32, n as i32, k as i32),
            1.0,
            (&da, Ty::F32, m as i32),
            (&db, Ty::F32, k as i32),
            0.0,
            (&mut dc, Ty::F32, m as i32),
            c32,
        );
        (st, after)
    };
    assert_eq!(st, St::CUBLAS_STATUS_EXECUTION_FAILED, "B extent past its allocation");
    assert_eq!(st_after, St::CUBLAS_STATUS_EXECUTION_FAILED, "a GEMM after a sticky fault");
    assert!(sim.stream.synchronize().is_err(), "the driver must report the sticky fault");
    // SAFETY: the handle is live; it is freed even though the status reports the fault.
    let st = unsafe { sys::cublasDestroy_v2(sim.handle) };
    assert_eq!(st, St::CUBLAS_STATUS_INTERNAL_ERROR, "cublasDestroy_v2 after a fault");
    let _ = writeln!(std::io::stderr(), "cuda_sim_cublas: an out-of-range B faulted as expected");
}
