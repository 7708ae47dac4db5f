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
