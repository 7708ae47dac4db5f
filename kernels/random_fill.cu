// random_fill.cu: deterministic pseudo-random values on the device, for benches that need a model's
// worth of weights without a download or a host-side generator (a 12b-shaped model is 24 GB in f16).
//
// out[i] = offset + a * (2 u - 1), u = the top 24 bits of splitmix64(seed + i) / 2^24 (so in [offset - a,
// offset + a)), rounded once to T.
// The same function in Rust (`backend::cuda::random_value`) is its CPU twin.
// Launch: 1-D grid-stride (any grid); n elements of T.
// Variants: random_fill_<T> for f32 | f16 | bf16.

__device__ __forceinline__ u64 splitmix64(u64 x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

template <typename T>
__device__ __forceinline__ void random_fill(T* __restrict__ out, u64 n, u64 seed, float offset, float a) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float u = (float)(u32)(splitmix64(seed + i) >> 40) * (1.0f / 16777216.0f);
        out[i] = from_f32<T>(fmaf(a, 2.0f * u - 1.0f, offset));  // one rounding, on every device
    }
}

#define LMS_RANDOM_FILL(T) \
    extern "C" __global__ void random_fill_##T(T* out, u64 n, u64 seed, float offset, float a) { \
        random_fill<T>(out, n, seed, offset, a); \
    }
LMS_TYPES(LMS_RANDOM_FILL)
