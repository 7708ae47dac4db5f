// residual_add.cu: x += a + b (GPT-NeoX parallel residual: x + attn + mlp), or x += a when b is null.
//
// Shapes: x [n, c] (TX, normally the f32 residual stream), a and b [n, c] (TA, the GEMM output dtype).
// a + b is summed in f32 first and added to x once, like the CPU oracle.
// Launch: 1-D grid-stride over the n*c elements, block 256.
// Variants: residual_add_<TX>_<TA> for every pair of f32 | f16 | bf16.

template <typename TX, typename TA>
__device__ __forceinline__ void residual_add(TX* __restrict__ x, const TA* __restrict__ a,
                                             const TA* __restrict__ b, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float s = to_f32(a[i]);
        if (b != 0) s += to_f32(b[i]);
        x[i] = from_f32<TX>(to_f32(x[i]) + s);
    }
}

#define LMS_RESIDUAL_ADD(TX, TA) \
    extern "C" __global__ void residual_add_##TX##_##TA(TX* x, const TA* a, const TA* b, u64 n) { \
        residual_add<TX, TA>(x, a, b, n); \
    }
LMS_TYPE_PAIRS(LMS_RESIDUAL_ADD)
