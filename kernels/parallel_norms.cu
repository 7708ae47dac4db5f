// parallel_norms.cu: the start of a GPT-NeoX parallel-residual layer, x + attn(ln1(x)) + mlp(ln2(x)), from
// one read of the residual row:
//   a = ln1(x), m = ln2(x)          (the attention and MLP inputs, rounded once to TY)
//   x += bias_attn + bias_mlp       (f32, in place: the dense and dense_4h_to_h biases)
// after which the attention and MLP output projections accumulate straight into x (GEMM beta = 1, f32
// output): no [T, h] attention / MLP outputs, no bias or residual-add passes.
//
// Shapes: x [n, c] f32 (the residual stream), w1 b1 w2 b2 bias_attn bias_mlp [c] f32, a m [n, c] (TY).
// Statistics as layernorm.cu (two passes: mean, then the centred variance, in f32): ln1 and ln2 share them,
// so a and m are bit-identical to two separate layernorms. The row is re-read from L1/L2, not DRAM.
// Launch: grid (n), block 256 (any multiple of 32 up to 1024).
// Variants: parallel_norms_<TY> for f32 | f16 | bf16.

template <typename TY>
__device__ __forceinline__ void parallel_norms(float* __restrict__ x, const float* __restrict__ w1,
                                               const float* __restrict__ b1, const float* __restrict__ w2,
                                               const float* __restrict__ b2, const float* __restrict__ bias_attn,
                                               const float* __restrict__ bias_mlp, TY* __restrict__ a,
                                               TY* __restrict__ m, int c, float eps) {
    __shared__ float scratch[32];
    const u64 row = (u64)blockIdx.x * c;
    float* xr = x + row;

    float s = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, scratch) / (float)c;

    float v = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float d = xr[i] - mean;
        v += d * d;
    }
    const float var = block_sum(v, scratch) / (float)c;
    const float inv = 1.0f / sqrtf(var + eps);  // IEEE sqrt and division, as layernorm.cu and the CPU

    // Each element is read and rewritten by one thread only, after every thread's statistics are final
    // (block_sum ends in a barrier).
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float xi = xr[i];
        const float n = (xi - mean) * inv;
        a[row + i] = from_f32<TY>(n * w1[i] + b1[i]);
        m[row + i] = from_f32<TY>(n * w2[i] + b2[i]);
        xr[i] = xi + bias_attn[i] + bias_mlp[i];
    }
}

#define LMS_PARALLEL_NORMS(TY) \
    extern "C" __global__ void parallel_norms_##TY(float* x, const float* w1, const float* b1, const float* w2, \
                                                   const float* b2, const float* bias_attn, const float* bias_mlp, \
                                                   TY* a, TY* m, int c, float eps) { \
        parallel_norms<TY>(x, w1, b1, w2, b2, bias_attn, bias_mlp, a, m, c, eps); \
    }
LMS_TYPES(LMS_PARALLEL_NORMS)
