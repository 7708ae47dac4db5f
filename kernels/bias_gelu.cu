// bias_gelu.cu: x = gelu_erf(x + b) in place, the MLP's first activation.
//
// Exact GELU, 0.5 v (1 + erf(v / sqrt 2)), as HF's "gelu" (torch.nn.functional.gelu); computed in f32.
// Shapes: x [n, c] (T), b [c] (TB, usually f32: 1-D params are kept in f32).
// Launch: 1-D grid-stride over the n*c elements, block 256, grid min(ceil(n*c/256), 2^20) (layout::grid_1d).
// Variants: bias_gelu_<T>_<TB> for every pair of f32 | f16 | bf16.

template <typename T, typename TB>
__device__ __forceinline__ void bias_gelu(T* __restrict__ x, const TB* __restrict__ b, u64 n, int c) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float v = to_f32(x[i]) + to_f32(b[i % c]);
        x[i] = from_f32<T>(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
    }
}

#define LMS_BIAS_GELU(T, TB) \
    extern "C" __global__ void bias_gelu_##T##_##TB(T* x, const TB* b, u64 n, int c) { \
        bias_gelu<T, TB>(x, b, n, c); \
    }
LMS_TYPE_PAIRS(LMS_BIAS_GELU)
