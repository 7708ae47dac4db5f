// embedding.cu: out[t, :] = table[ids[t], :], widened to f32.
//
// The residual stream is kept in f32 on every dtype (the weights and GEMM inputs are f16/bf16): this is
// where it starts. Shapes: table [V, h] (T = f32 | f16 | bf16), ids [n] u32 (checked < V on the host),
// out [n, h] f32.
// Launch: grid (n), block 256; each block copies one row, threads stride over the h columns (coalesced).
// Variants: embedding_f32, embedding_f16, embedding_bf16.

template <typename T>
__device__ __forceinline__ void embedding(const T* __restrict__ table, const u32* __restrict__ ids,
                                          float* __restrict__ out, int h) {
    const u64 t = blockIdx.x;
    const T* src = table + (u64)ids[t] * h;
    float* dst = out + t * h;
    for (int c = threadIdx.x; c < h; c += blockDim.x) dst[c] = to_f32(src[c]);
}

#define LMS_EMBEDDING(T) \
    extern "C" __global__ void embedding_##T(const T* table, const u32* ids, float* out, int h) { \
        embedding<T>(table, ids, out, h); \
    }
LMS_TYPES(LMS_EMBEDDING)
