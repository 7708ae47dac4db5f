// layernorm.cu: y = (x - mean) / sqrt(var + eps) * w + b over each row, statistics in f32.
//
// Shapes: x [n, c] (TX), w [c] f32, b [c] f32, y [n, c] (TY). Typically TX = f32 (the residual stream) and
// TY = the GEMM input dtype. Two passes over the row (mean, then the centred variance), like the CPU oracle
// and torch: the one-pass E[x^2] - E[x]^2 form loses digits when |mean| >> std.
// Launch: grid (n), block 256 (any multiple of 32 up to 1024); one block per row, threads stride over the
// columns; rows are re-read from L1/L2 rather than cached in shared memory so any c works.
// Variants: layernorm_<TX>_<TY> for every pair of f32 | f16 | bf16.

template <typename TX, typename TY>
__device__ __forceinline__ void layernorm(const TX* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ b, TY* __restrict__ y, int c, float eps) {
    __shared__ float scratch[32];
    const TX* xr = x + (u64)blockIdx.x * c;
    TY* yr = y + (u64)blockIdx.x * c;

    float s = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) s += to_f32(xr[i]);
    const float mean = block_sum(s, scratch) / (float)c;

    float v = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float d = to_f32(xr[i]) - mean;
        v += d * d;
    }
    const float var = block_sum(v, scratch) / (float)c;
    const float inv = 1.0f / sqrtf(var + eps);  // IEEE sqrt and division (NVRTC's defaults), as the CPU

    for (int i = threadIdx.x; i < c; i += blockDim.x)
        yr[i] = from_f32<TY>((to_f32(xr[i]) - mean) * inv * w[i] + b[i]);
}

#define LMS_LAYERNORM(TX, TY) \
    extern "C" __global__ void layernorm_##TX##_##TY(const TX* x, const float* w, const float* b, TY* y, \
                                                     int c, float eps) { \
        layernorm<TX, TY>(x, w, b, y, c, eps); \
    }
LMS_TYPE_PAIRS(LMS_LAYERNORM)
