// broadcast_rows.cu: y[r, :] = b[:] for every row r.
//
// Why: `linear` adds its bias by pre-filling the output with the broadcast bias and running the GEMM with
// beta = 1 (C = A B + C), so the bias is added in the GEMM's f32 epilogue and the output is rounded once.
// Shapes: b [c] (TB), y [n, c] (TY).
// Launch: 1-D grid-stride over the n*c elements, block 256.
// Variants: broadcast_rows_<TB>_<TY> for every pair of f32 | f16 | bf16.

template <typename TB, typename TY>
__device__ __forceinline__ void broadcast_rows(const TB* __restrict__ b, TY* __restrict__ y, u64 n, int c) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = from_f32<TY>(to_f32(b[i % c]));
}

#define LMS_BROADCAST_ROWS(TB, TY) \
    extern "C" __global__ void broadcast_rows_##TB##_##TY(const TB* b, TY* y, u64 n, int c) { \
        broadcast_rows<TB, TY>(b, y, n, c); \
    }
LMS_TYPE_PAIRS(LMS_BROADCAST_ROWS)
