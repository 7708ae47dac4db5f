// rotary.cu: NeoX rotary embedding (rotate-half), in place on the fused qkv rows.
//
// qkv row layout (HF GPT-NeoX): per head h a block [q | k | v] of hd values each, at column h*3*hd.
// For q and k of every head, the first R = rotary_ndims dims rotate in pairs (i, i + R/2), i < R/2:
//     x[i]       = x[i] cos(a) - x[i + R/2] sin(a)
//     x[i + R/2] = x[i + R/2] cos(a) + x[i] sin(a),     a = position * inv_freq[i]
// with inv_freq[i] = 1 / base^(2i / R) recomputed here in f32 (as HF; never the checkpoint's fp16 copy).
// Dims R..hd and v pass through. Positions come from the batch layout (one u32 per row).
// Shapes: qkv [n, 3*heads*hd] (T), positions [n] u32.
// Launch: 1-D grid-stride over n * heads * 2 * (R/2) work items (row, head, q|k, pair), block 256.
// Variants: rotary_f32, rotary_f16, rotary_bf16.

template <typename T>
__device__ __forceinline__ void rotary(T* __restrict__ qkv, const u32* __restrict__ positions, u64 items,
                                       int heads, int hd, int rot, float base) {
    const int half = rot / 2;
    for (u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x; idx < items; idx += (u64)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        u64 rest = idx / half;
        const int part = (int)(rest % 2);  // 0 = q, 1 = k
        rest /= 2;
        const int head = (int)(rest % heads);
        const u64 row = rest / heads;

        const float inv_freq = 1.0f / powf(base, (float)(2 * i) / (float)rot);
        float sn, cs;
        sincosf((float)positions[row] * inv_freq, &sn, &cs);

        T* x = qkv + row * (u64)(3 * heads * hd) + (u64)head * 3 * hd + (u64)part * hd;
        const float x1 = to_f32(x[i]), x2 = to_f32(x[i + half]);
        x[i] = from_f32<T>(x1 * cs - x2 * sn);
        x[i + half] = from_f32<T>(x2 * cs + x1 * sn);
    }
}

#define LMS_ROTARY(T) \
    extern "C" __global__ void rotary_##T(T* qkv, const u32* positions, u64 items, int heads, int hd, int rot, \
                                          float base) { \
        rotary<T>(qkv, positions, items, heads, hd, rot, base); \
    }
LMS_TYPES(LMS_ROTARY)
