// common.cu: the prelude the backend prepends to every other kernel file before NVRTC compiles it
// (NVRTC has no libc headers; these kernels include nothing, so no CUDA include path is needed either).
//
// Element types: `float` (f32), and two 16-bit storage types, `f16` (IEEE half) and `bf16` (bfloat16), as
// plain structs converted with PTX `cvt` / bit operations. This keeps every kernel independent of
// cuda_fp16.h / cuda_bf16.h (which pull in CCCL's <nv/target>, absent from some NVRTC installs).
// Arithmetic is always done in f32: load with to_f32, compute, store with from_f32<T>.
//
// Kernel names: each op file defines templates and instantiates them with the LMS_* macros below as
// extern "C" functions named `<op>_<type>` or `<op>_<type>_<type>` (e.g. `layernorm_f32_f16`), which is
// how the Rust side (src/backend/cuda/) finds them.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef float f32;
struct __align__(2) f16 { unsigned short bits; };
struct __align__(2) bf16 { unsigned short bits; };

#define LMS_INF __int_as_float(0x7f800000)
#define LMS_FLT_MAX 3.402823466e+38f
#define LMS_FULL_MASK 0xffffffffu

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));  // round to nearest even, overflow -> inf
    return r;
}
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    // Round to nearest even on the upper 16 bits; NaN stays a (quiet) NaN.
    u32 u = __float_as_uint(x);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (unsigned short)((u >> 16) | 0x40u);
        return r;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = (unsigned short)(u >> 16);
    return r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(LMS_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(LMS_FULL_MASK, v, o));
    return v;
}

// Sum of `v` over the whole block, returned to every thread. blockDim.x must be a multiple of 32 (<= 1024);
// `scratch` is 32 floats of shared memory. Safe to call repeatedly with the same scratch (the leading
// barrier keeps a fast warp from overwriting values a slow warp is still reading).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum(lane < warps ? scratch[lane] : 0.f);
}

// Instantiation helpers: X(T) for each element type, X(A, B) for each ordered pair.
#define LMS_TYPES(X) X(f32) X(f16) X(bf16)
#define LMS_TYPE_PAIRS(X) \
    X(f32, f32) X(f32, f16) X(f32, bf16) \
    X(f16, f32) X(f16, f16) X(f16, bf16) \
    X(bf16, f32) X(bf16, f16) X(bf16, bf16)

// ---- Tensor cores (sm_80+): mma.sync, ldmatrix, cp.async ------------------------------------------------
// Warp-level matrix products for attention. Fragment layouts are the PTX ISA's ("Matrix Fragments for
// mma.m16n8k16 with floating point type"), with g = groupID = lane >> 2 and t = threadID_in_group = lane & 3.
// A .b32 register holds two 16-bit elements, the lower-indexed one in its low half.
//   A (16x16, .row: A[m][k]), a[4]:  a[0] = A[g][2t, 2t+1]    a[1] = A[g+8][2t, 2t+1]
//                                     a[2] = A[g][2t+8, 2t+9]  a[3] = A[g+8][2t+8, 2t+9]
//   B (16x8, .col: B[k][n]), b[2]:   b[0] = B[2t, 2t+1][g]    b[1] = B[2t+8, 2t+9][g]
//   C, D (16x8 f32), c[4]:           c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// mma and ldmatrix are .sync.aligned: all 32 lanes of the warp execute the same instruction together, so
// never call them under a lane-dependent condition.

// The 32-bit shared-window address of a pointer into shared memory (what .shared operands take).
__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// D = A * B + C with f16 inputs and f32 accumulation (d may alias c).
__device__ __forceinline__ void mma_m16n8k16_f16_f32(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%10, %11, %12, %13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                   "f"(c[3]));
}
// The same with bf16 inputs.
__device__ __forceinline__ void mma_m16n8k16_bf16_f32(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%10, %11, %12, %13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                   "f"(c[3]));
}

// ldmatrix: 1, 2 or 4 8x8 matrices of 16-bit elements from shared memory. Lane l passes the address of row
// l % 8 of matrix l / 8 (16 contiguous bytes, 16-byte aligned; .x1 reads lanes 0-7's addresses, .x2 lanes
// 0-15's, the others' are ignored). r[i] of lane l gets row l / 4, elements 2 * (l % 4) and +1 of matrix i:
// for a row-major 16x16 tile, x4 with lane l pointing at row l % 16, column 8 * (l / 16) gives A's a[4].
// B's b[2] comes from an [n][k] tile (row n, k contiguous) by x2 with lane l at row l % 8, column
// 8 * ((l / 8) % 2); the .trans forms deliver the transpose (elements 2 * (l % 4), +1 of column l / 4),
// so from a [k][n] tile (row k) x2.trans with lane l at row l % 16 gives b[2] too.
__device__ __forceinline__ void ldmatrix_x1(u32 r[1], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(smem_u32(smem)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x2(u32 r[2], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(smem))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x1_trans(u32 r[1], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(smem_u32(smem)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x2_trans(u32 r[2], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(smem))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem))
                 : "memory");
}

// cp.async: 16 bytes from global to shared memory without passing through registers (.cg: cached in L2
// only). Both addresses 16-byte aligned. The copy is complete only after a wait that covers its group:
// issue copies, cp_async_commit() them as one group, and cp_async_wait<N>() until at most N of the most
// recent groups are still in flight (then __syncthreads before other threads read the data).
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" : : "r"(smem_u32(smem_dst)), "l"(gmem_src) : "memory");
}
// Zero-fill form (src-size operand): copies the 16 bytes when `valid`, else reads nothing and writes 16
// zero bytes, for rows past the end of a tensor (gmem_src is not dereferenced then).
__device__ __forceinline__ void cp_async_16_zfill(void* smem_dst, const void* gmem_src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :
                 : "r"(smem_u32(smem_dst)), "l"(gmem_src), "r"(valid ? 16u : 0u)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" : : : "memory"); }
// Wait until at most N of this thread's committed groups are pending.
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" : : "n"(N) : "memory"); }
// Wait for all of this thread's copies, committed or not.
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" : : : "memory"); }
