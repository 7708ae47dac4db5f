// qkv_rotary.cu: the epilogue of the attention's qkv projection: bias, NeoX rotary embedding, one rounding.
//
// Why: the qkv GEMM writes its f32 accumulator with no bias; this kernel reads it once, adds the bias in
// f32, rotates q and k in f32 and rounds once to the compute dtype. Per element: 4 bytes written by the
// GEMM, 4 read + 2 written here (~10), where a bias pre-fill, the GEMM with beta = 1, a cast and an in-place
// rotary pass moved ~19 and rounded the rotated dims twice.
//
// qkv row layout (HF GPT-NeoX): per head a block [q | k | v] of hd values each, at column head*3*hd.
// For q and k of every head, the first R = rotary_ndims dims rotate in pairs (i, i + R/2), i < R/2:
//     y[i]       = x[i] cos(a) - x[i + R/2] sin(a)
//     y[i + R/2] = x[i + R/2] cos(a) + x[i] sin(a),     x = acc + bias, a = position * inv_freq[i]
// with inv_freq[i] = 1 / base^(2i / R) recomputed here in f32 (as HF; never the checkpoint's fp16 copy).
// Dims R..hd of q and k, and all of v, are acc + bias rounded.
// Shapes: acc [n, 3*heads*hd] f32, bias [3*heads*hd] f32, positions [n] u32, qkv [n, 3*heads*hd] (T).
// Launch: grid (n) (a block per row), block 256; each thread writes its own columns of the row (reading the
// pair partner of a rotated column), so no thread reads what another writes. The angle is recomputed for
// both columns of a pair: the kernel is bound by memory, not by powf / sincosf.
// Variants: qkv_rotary_f32, qkv_rotary_f16, qkv_rotary_bf16.

template <typename T>
__device__ __forceinline__ void qkv_rotary(const float* __restrict__ acc, const float* __restrict__ bias,
                                           const u32* __restrict__ positions, T* __restrict__ qkv, int heads,
                                           int hd, int rot, float base) {
    const int cols = 3 * heads * hd, half = rot / 2;
    const u64 row = blockIdx.x;
    const float* x = acc + row * cols;
    T* y = qkv + row * cols;
    const float position = (float)positions[row];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const int in_head = c % (3 * hd);  // column inside the head's [q | k | v] block
        const int i = in_head % hd;        // dim inside q, k or v
        float v = x[c] + bias[c];
        if (in_head < 2 * hd && i < rot) {
            const bool first = i < half;
            const int pair = first ? c + half : c - half;
            const int freq = first ? i : i - half;
            const float inv_freq = 1.0f / powf(base, (float)(2 * freq) / (float)rot);
            float sn, cs;
            sincosf(position * inv_freq, &sn, &cs);
            const float other = x[pair] + bias[pair];
            v = first ? v * cs - other * sn : v * cs + other * sn;
        }
        y[c] = from_f32<T>(v);
    }
}

#define LMS_QKV_ROTARY(T) \
    extern "C" __global__ void qkv_rotary_##T(const float* acc, const float* bias, const u32* positions, T* qkv, \
                                              int heads, int hd, int rot, float base) { \
        qkv_rotary<T>(acc, bias, positions, qkv, heads, hd, rot, base); \
    }
LMS_TYPES(LMS_QKV_ROTARY)
