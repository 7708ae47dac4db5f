// cublas.cpp: test infrastructure, not part of lmscore. The CPU stand-in for libcublas.so.13, built by
// scripts/cuda-sim.sh so the CUDA backend can run its GEMMs without a GPU (see cuda-sim/README.md).
//
// It exports the few cuBLAS 13 entry points lmscore (through cudarc 0.19.10, "cuda-13000" bindings) calls,
// with the real C ABI: the enum values below are copied from cudarc's src/cublas/sys/mod.rs, since no CUDA
// header is installed where this is built. Device memory is host memory (sim.h) and streams run
// synchronously at enqueue, so cublasGemmEx computes its result right away on the calling thread (and a
// few helper threads), after checking with libcuda's stand-in that every byte it will touch lies inside a
// live allocation, the way a real kernel would fault on a bad pointer.
//
// Numerics, chosen to match what cuBLAS documents for CUBLAS_COMPUTE_32F, and to be reproducible:
// - f16 / bf16 inputs are widened to f32 exactly (both are subsets of f32);
// - products are accumulated in f32 (the compute type), in a fixed order per output element: four
//   interleaved partial sums (element p goes to sum p % 4), combined as (s0 + s1) + (s2 + s3), then the
//   k % 4 tail added in order. The order does not depend on blocking or thread count, so the same
//   inputs give the same bits however the work is split;
// - the epilogue is alpha * acc + beta * C in f32 (C widened exactly), and that f32 value is rounded to
//   C's type once, round-to-nearest-even (f16 overflow -> inf, NaN stays NaN);
// - beta == 0 means C is not read (cuBLAS documents this: NaN or garbage in C must not propagate);
// - no FMA is requested (the build uses the baseline x86-64 target), so every product is rounded to f32
//   before the add; a GPU fuses them, which is within the f32 error bound the tests allow.
#include "sim.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <thread>
#include <vector>

// ---- The cuBLAS 13 ABI: typedefs and enum values (cudarc-0.19.10/src/cublas/sys/mod.rs, cuda-13000) ----

typedef int cublasStatus_t;
enum : int {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
};

typedef int cublasOperation_t;
enum : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2, CUBLAS_OP_CONJG = 3 };

typedef int cublasMath_t;
enum : int {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_TENSOR_OP_MATH = 1,
    CUBLAS_PEDANTIC_MATH = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
    CUBLAS_FP32_EMULATED_BF16X9_MATH = 4,
    CUBLAS_FP64_EMULATED_FIXEDPOINT_MATH = 8,
    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16,
};

typedef int cublasPointerMode_t;
enum : int { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 };

typedef int cudaDataType;
enum : int { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };

typedef int cublasComputeType_t;
enum : int { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69 };

typedef int cublasGemmAlgo_t;
enum : int {
    CUBLAS_GEMM_DFALT = -1,
    CUBLAS_GEMM_ALGO23 = 23,
    CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99,
    CUBLAS_GEMM_ALGO15_TENSOR_OP = 115,
    CUBLAS_GEMM_AUTOTUNE = 999,
};

typedef struct CUstream_st* cudaStream_t;

// The handle: cuBLAS keeps this state per handle; the stand-in needs none of it to compute (streams are
// synchronous), but keeps it so the getters return what was set.
struct cublasContext {
    cudaStream_t stream = nullptr;
    cublasMath_t math_mode = CUBLAS_DEFAULT_MATH;
    cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
};
typedef cublasContext* cublasHandle_t;

// Reported by cublasGetVersion_v2: major * 10000 + minor * 100 + patch, a 13.1 library.
static const int kVersion = 130100;

// ---- f16 / bf16 <-> f32 ----

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
static inline float bits_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Exact: every f16 is an f32. Subnormals are normalised; inf and NaN keep their payload (NaN stays NaN).
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        // m * 2^-24, exact in f32 (m < 2^10).
        return bits_f32(sign | f32_bits(float(m) * (1.0f / 16777216.0f)));
    }
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

// Round to nearest, ties to even, in integer arithmetic (independent of the FPU rounding mode).
static inline uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) {
        if (x > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((x >> 13) & 0x3ffu));  // quiet NaN
        return uint16_t(sign | 0x7c00u);                                                // inf
    }
    // 65520 = halfway between 65504 (largest f16) and 65536; the tie goes to the even 65536 = inf.
    if (x >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
    if (x >= 0x38800000u) {  // f16 normal range (>= 2^-14)
        uint32_t r = x + 0xfffu + ((x >> 13) & 1u);  // RNE at bit 13; a carry bumps the exponent correctly
        return uint16_t(sign | ((r - 0x38000000u) >> 13));  // rebias 127 -> 15
    }
    if (x <= 0x33000000u) return sign;  // <= 2^-25: rounds to zero (2^-25 itself is a tie to even 0)
    // f16 subnormal: the value in units of 2^-24 is mant * 2^(e - 126), with a shift of 14..24.
    uint32_t e = x >> 23;
    uint32_t mant = (x & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;
    uint32_t q = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;  // q == 0x400 is the smallest normal: encoded right
    return uint16_t(sign | q);
}

static inline float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

static inline uint16_t f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x0040u);  // quiet NaN, never inf
    // RNE at bit 16; overflow carries into the exponent and gives inf, as it should.
    return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static inline size_t type_size(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }

static const char* type_name(cudaDataType t) {
    switch (t) {
        case CUDA_R_32F: return "CUDA_R_32F";
        case CUDA_R_16F: return "CUDA_R_16F";
        case CUDA_R_16BF: return "CUDA_R_16BF";
        default: return "unsupported type";
    }
}

static inline float load_f32(const void* base, cudaDataType t, size_t idx) {
    if (t == CUDA_R_32F) {
        float v;
        std::memcpy(&v, static_cast<const char*>(base) + idx * 4, 4);
        return v;
    }
    uint16_t h;
    std::memcpy(&h, static_cast<const char*>(base) + idx * 2, 2);
    return t == CUDA_R_16F ? f16_to_f32(h) : bf16_to_f32(h);
}

static inline void store_f32(void* base, cudaDataType t, size_t idx, float v) {
    if (t == CUDA_R_32F) {
        std::memcpy(static_cast<char*>(base) + idx * 4, &v, 4);
        return;
    }
    uint16_t h = t == CUDA_R_16F ? f32_to_f16(v) : f32_to_bf16(v);
    std::memcpy(static_cast<char*>(base) + idx * 2, &h, 2);
}

// ---- The GEMM kernel ----

// Four f32 lanes (GCC vector extension): each lane is an independent IEEE f32 accumulator, so this is the
// "several accumulators" loop written out explicitly: it compiles to SSE on the baseline target without
// -ffast-math, and the summation order stays exactly the one described at the top of the file.
typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float* p) {
    v4f v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// The fixed per-element reduction: lanes combined as (s0 + s1) + (s2 + s3), then the tail in order.
static inline float finish(v4f s, const float* a, const float* b, int k4, int k) {
    float acc = (s[0] + s[1]) + (s[2] + s[3]);
    for (int p = k4; p < k; p++) acc += a[p] * b[p];
    return acc;
}

// dot(a, b) of length k in the fixed order.
static inline float dot1(const float* a, const float* b, int k) {
    int k4 = k & ~3;
    v4f s = {0, 0, 0, 0};
    for (int p = 0; p < k4; p += 4) s += load4(a + p) * load4(b + p);
    return finish(s, a, b, k4, k);
}

// A 2 x 4 block of dot products (rows a0, a1 of op(A); columns b0..b3 of op(B)): the same per-element
// order as dot1, but each loaded vector is reused 2 or 4 times, which is where the speed comes from.
static inline void dot2x4(const float* a0, const float* a1, const float* const b[4], int k, float out[2][4]) {
    int k4 = k & ~3;
    v4f s00 = {0, 0, 0, 0}, s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00, s12 = s00, s13 = s00;
    for (int p = 0; p < k4; p += 4) {
        v4f x0 = load4(a0 + p), x1 = load4(a1 + p);
        v4f y0 = load4(b[0] + p), y1 = load4(b[1] + p), y2 = load4(b[2] + p), y3 = load4(b[3] + p);
        s00 += x0 * y0;
        s01 += x0 * y1;
        s02 += x0 * y2;
        s03 += x0 * y3;
        s10 += x1 * y0;
        s11 += x1 * y1;
        s12 += x1 * y2;
        s13 += x1 * y3;
    }
    out[0][0] = finish(s00, a0, b[0], k4, k);
    out[0][1] = finish(s01, a0, b[1], k4, k);
    out[0][2] = finish(s02, a0, b[2], k4, k);
    out[0][3] = finish(s03, a0, b[3], k4, k);
    out[1][0] = finish(s10, a1, b[0], k4, k);
    out[1][1] = finish(s11, a1, b[1], k4, k);
    out[1][2] = finish(s12, a1, b[2], k4, k);
    out[1][3] = finish(s13, a1, b[3], k4, k);
}

struct Gemm {
    bool ta, tb;  // op(A) = A^T, op(B) = B^T
    int m, n, k;
    float alpha, beta;
    const void* A;
    cudaDataType at;
    int64_t lda;
    const void* B;
    cudaDataType bt;
    int64_t ldb;
    void* C;
    cudaDataType ct;
    int64_t ldc;
};

// Column and row blocks: packed op(B) columns and op(A) rows are (kNB + kMB) * k floats per thread, so
// the scratch stays small for any m, n while the A block is reused across kNB columns.
static const int kNB = 64;
static const int kMB = 64;

static inline void epilogue(const Gemm& g, int i, int j, float acc) {
    size_t idx = size_t(i) + size_t(j) * size_t(g.ldc);
    float out = g.alpha * acc;
    if (g.beta != 0.0f) out += g.beta * load_f32(g.C, g.ct, idx);  // beta == 0: C is not read
    store_f32(g.C, g.ct, idx, out);
}

// Computes columns [j0, j1) of C.
static void gemm_columns(const Gemm& g, int j0, int j1) {
    const int k = g.k;
    std::vector<float> bp(size_t(kNB) * size_t(k)), ap(size_t(kMB) * size_t(k));
    for (int jb = j0; jb < j1; jb += kNB) {
        int nb = std::min(kNB, j1 - jb);
        // op(B)(p, j) = B[p + j*ldb] (N) or B[j + p*ldb] (T), packed as bp[jj*k + p].
        for (int jj = 0; jj < nb; jj++) {
            float* dst = bp.data() + size_t(jj) * k;
            int64_t j = jb + jj;
            if (!g.tb) {
                for (int p = 0; p < k; p++) dst[p] = load_f32(g.B, g.bt, size_t(p + j * g.ldb));
            } else {
                for (int p = 0; p < k; p++) dst[p] = load_f32(g.B, g.bt, size_t(j + int64_t(p) * g.ldb));
            }
        }
        for (int ib = 0; ib < g.m; ib += kMB) {
            int mb = std::min(kMB, g.m - ib);
            // op(A)(i, p) = A[i + p*lda] (N) or A[p + i*lda] (T), packed as ap[ii*k + p].
            for (int ii = 0; ii < mb; ii++) {
                float* dst = ap.data() + size_t(ii) * k;
                int64_t i = ib + ii;
                if (!g.ta) {
                    for (int p = 0; p < k; p++) dst[p] = load_f32(g.A, g.at, size_t(i + int64_t(p) * g.lda));
                } else {
                    for (int p = 0; p < k; p++) dst[p] = load_f32(g.A, g.at, size_t(p + i * g.lda));
                }
            }
            int jj = 0;
            for (; jj + 4 <= nb; jj += 4) {
                const float* b[4] = {bp.data() + size_t(jj) * k, bp.data() + size_t(jj + 1) * k,
                                     bp.data() + size_t(jj + 2) * k, bp.data() + size_t(jj + 3) * k};
                int ii = 0;
                for (; ii + 2 <= mb; ii += 2) {
                    float out[2][4];
                    dot2x4(ap.data() + size_t(ii) * k, ap.data() + size_t(ii + 1) * k, b, k, out);
                    for (int r = 0; r < 2; r++)
                        for (int c = 0; c < 4; c++) epilogue(g, ib + ii + r, jb + jj + c, out[r][c]);
                }
                for (; ii < mb; ii++)
                    for (int c = 0; c < 4; c++)
                        epilogue(g, ib + ii, jb + jj + c, dot1(ap.data() + size_t(ii) * k, b[c], k));
            }
            for (; jj < nb; jj++)
                for (int ii = 0; ii < mb; ii++)
                    epilogue(g, ib + ii, jb + jj, dot1(ap.data() + size_t(ii) * k, bp.data() + size_t(jj) * k, k));
        }
    }
}

// Above this many multiply-adds the columns of C are split across lms_sim_threads() threads; below it a
// thread start costs more than it saves.
static const double kParallelWork = 4.0 * 1024 * 1024;

static void run_gemm(const Gemm& g) {
    if (g.k == 0) {
        // No products: C = beta * C (C not read when beta == 0), rounded once.
        for (int j = 0; j < g.n; j++)
            for (int i = 0; i < g.m; i++) {
                size_t idx = size_t(i) + size_t(j) * size_t(g.ldc);
                store_f32(g.C, g.ct, idx, g.beta == 0.0f ? 0.0f : g.beta * load_f32(g.C, g.ct, idx));
            }
        return;
    }
    int threads = lms_sim_threads();
    double work = double(g.m) * double(g.n) * double(g.k);
    if (threads <= 1 || work <= kParallelWork || g.n < 2) {
        gemm_columns(g, 0, g.n);
        return;
    }
    threads = std::min(threads, g.n);
    // Contiguous column ranges, whole 4-column groups where possible; disjoint columns of C are disjoint
    // memory (ldc >= m), so the threads never write the same bytes.
    std::vector<std::thread> pool;
    int per = (g.n + threads - 1) / threads;
    per = (per + 3) & ~3;
    for (int j0 = per; j0 < g.n; j0 += per) pool.emplace_back(gemm_columns, std::cref(g), j0, std::min(g.n, j0 + per));
    gemm_columns(g, 0, std::min(g.n, per));
    for (auto& t : pool) t.join();
}

// ---- Validation shared by cublasGemmEx and cublasSgemm_v2 ----

static bool valid_op(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

// The combinations cuBLAS documents for CUBLAS_COMPUTE_32F with real f16 / bf16 / f32 data.
static bool supported_types(cudaDataType at, cudaDataType bt, cudaDataType ct) {
    if (at != bt) return false;
    switch (at) {
        case CUDA_R_16F: return ct == CUDA_R_16F || ct == CUDA_R_32F;
        case CUDA_R_16BF: return ct == CUDA_R_16BF || ct == CUDA_R_32F;
        case CUDA_R_32F: return ct == CUDA_R_32F;
        default: return false;
    }
}

static bool check(const char* fn, const char* what, const void* p, size_t bytes, const std::string& desc) {
    char why[512];
    why[0] = 0;
    if (lms_sim_check_range(p, bytes, why, sizeof why) == 0) return true;
    char addr[64];
    std::snprintf(addr, sizeof addr, "%p", p);
    std::string msg = std::string(fn) + ": " + what + " " + desc + " at " + addr + " (" + std::to_string(bytes) +
                      " bytes): " + why;
    lms_sim_fault(msg.c_str());
    return false;
}

// Byte extent of a column-major rows x cols matrix with leading dimension ld: (cols-1)*ld + rows elements.
static size_t extent(int rows, int cols, int64_t ld, cudaDataType t) {
    return (size_t(cols - 1) * size_t(ld) + size_t(rows)) * type_size(t);
}

static std::string matrix_desc(int rows, int cols, int64_t ld, cudaDataType t, const char* op) {
    return "[" + std::to_string(rows) + " x " + std::to_string(cols) + ", ld " + std::to_string(ld) + ", " +
           type_name(t) + (op ? std::string(", op ") + op : std::string()) + "]";
}

static cublasStatus_t gemm_entry(const char* fn, cublasHandle_t handle, cublasOperation_t transa,
                                 cublasOperation_t transb, int m, int n, int k, const void* alpha, const void* A,
                                 cudaDataType at, int lda, const void* B, cudaDataType bt, int ldb, const void* beta,
                                 void* C, cudaDataType ct, int ldc, cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    // Host-side argument checks, in the order cuBLAS documents them: nothing is launched on failure.
    if (!valid_op(transa) || !valid_op(transb)) return CUBLAS_STATUS_INVALID_VALUE;
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;  // C == T for real data
    if (lda < std::max(1, ta ? k : m)) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldb < std::max(1, tb ? n : k)) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldc < std::max(1, m)) return CUBLAS_STATUS_INVALID_VALUE;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!supported_types(at, bt, ct)) return CUBLAS_STATUS_NOT_SUPPORTED;
    bool algo_ok = (algo >= CUBLAS_GEMM_DFALT && algo <= CUBLAS_GEMM_ALGO23) ||
                   (algo >= CUBLAS_GEMM_DEFAULT_TENSOR_OP && algo <= CUBLAS_GEMM_ALGO15_TENSOR_OP) ||
                   algo == CUBLAS_GEMM_AUTOTUNE;
    if (!algo_ok) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;  // an empty C: no kernel is launched
    // A launch after a sticky fault fails, as every launch in a faulted context does.
    if (lms_sim_faulted()) return CUBLAS_STATUS_EXECUTION_FAILED;

    Gemm g;
    g.ta = ta;
    g.tb = tb;
    g.m = m;
    g.n = n;
    g.k = k;
    // alpha and beta: host floats, or (pointer mode DEVICE) floats in device memory, read like the kernel would.
    if (handle->pointer_mode == CUBLAS_POINTER_MODE_DEVICE) {
        if (!check(fn, "alpha", alpha, 4, "[device scalar]") || !check(fn, "beta", beta, 4, "[device scalar]"))
            return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    std::memcpy(&g.alpha, alpha, 4);
    std::memcpy(&g.beta, beta, 4);
    g.A = A;
    g.at = at;
    g.lda = lda;
    g.B = B;
    g.bt = bt;
    g.ldb = ldb;
    g.C = C;
    g.ct = ct;
    g.ldc = ldc;

    // Every byte the kernel touches, checked before any is touched. A and B are read only when k > 0.
    const char* opa = ta ? "T" : "N";
    const char* opb = tb ? "T" : "N";
    if (k > 0) {
        int ar = ta ? k : m, ac = ta ? m : k;
        int br = tb ? n : k, bc = tb ? k : n;
        if (!check(fn, "A", A, extent(ar, ac, lda, at), matrix_desc(ar, ac, lda, at, opa)) ||
            !check(fn, "B", B, extent(br, bc, ldb, bt), matrix_desc(br, bc, ldb, bt, opb)))
            return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    if (!check(fn, "C", C, extent(m, n, ldc, ct), matrix_desc(m, n, ldc, ct, nullptr)))
        return CUBLAS_STATUS_EXECUTION_FAILED;

    try {
        run_gemm(g);
    } catch (const std::bad_alloc&) {
        return CUBLAS_STATUS_ALLOC_FAILED;
    } catch (...) {
        return CUBLAS_STATUS_INTERNAL_ERROR;  // e.g. std::system_error from a thread start
    }
    return CUBLAS_STATUS_SUCCESS;
}

// ---- Exported API ----

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    // cuBLAS cannot initialise in a context that has already faulted (its setup allocations fail).
    if (lms_sim_faulted()) return CUBLAS_STATUS_NOT_INITIALIZED;
    cublasHandle_t h = new (std::nothrow) cublasContext();
    if (!h) return CUBLAS_STATUS_ALLOC_FAILED;
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    // The real library synchronises and frees its resources here, which surfaces a sticky fault.
    return lms_sim_faulted() ? CUBLAS_STATUS_INTERNAL_ERROR : CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetVersion_v2(cublasHandle_t handle, int* version) {
    (void)handle;  // cuBLAS accepts a null handle here
    if (!version) return CUBLAS_STATUS_INVALID_VALUE;
    *version = kVersion;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    // cuBLAS documents that setting a stream resets a user workspace to the default workspace pool.
    handle->workspace = nullptr;
    handle->workspace_bytes = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    int base = mode & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (!(base >= CUBLAS_DEFAULT_MATH && base <= CUBLAS_FP32_EMULATED_BF16X9_MATH) &&
        base != CUBLAS_FP64_EMULATED_FIXEDPOINT_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    // Kept for cublasGetMathMode only: every mode computes in exact f32 here (no TF32 / reduced precision).
    handle->math_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->math_mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) return CUBLAS_STATUS_INVALID_VALUE;
    handle->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t* mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->pointer_mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t workspaceSizeInBytes) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    // cuBLAS requires a user workspace aligned to 256 bytes. The stand-in never uses it.
    if (workspace && (reinterpret_cast<uintptr_t>(workspace) % 256) != 0) return CUBLAS_STATUS_INVALID_VALUE;
    handle->workspace = workspace;
    handle->workspace_bytes = workspace ? workspaceSizeInBytes : 0;
    return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
        default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

const char* cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "success";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
        case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
        case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
        case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
        case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
        default: return "unknown error";
    }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    return gemm_entry("cublasGemmEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
                      Ctype, ldc, computeType, algo);
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                              int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                              const float* beta, float* C, int ldc) {
    return gemm_entry("cublasSgemm_v2", handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F,
                      ldb, beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DFALT);
}

}  // extern "C"
