// cast.cu: elementwise dtype conversion y[i] = (TY) x[i], through f32.
//
// Used where an op receives a tensor in another dtype than it computes in (e.g. an f32 activation fed to an
// f16 GEMM, or a 1-D parameter made with from_host that must be f32). Shapes: x, y [n].
// Launch: 1-D grid-stride over n, block 256.
// Variants: cast_<TX>_<TY> for every pair of f32 | f16 | bf16.

template <typename TX, typename TY>
__device__ __forceinline__ void cast(const TX* __restrict__ x, TY* __restrict__ y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = from_f32<TY>(to_f32(x[i]));
}

#define LMS_CAST(TX, TY) \
    extern "C" __global__ void cast_##TX##_##TY(const TX* x, TY* y, u64 n) { cast<TX, TY>(x, y, n); }
LMS_TYPE_PAIRS(LMS_CAST)
