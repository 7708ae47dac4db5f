// gather_rows.cu: dst[i, :] = src[rows[i], :], dtype-agnostic (rows are moved as 16- or 32-bit words).
//
// Used to pick the scored rows before the final LayerNorm / LM head, and to fill the K/V cache with whole
// qkv rows. Shapes: src [n, w] words, rows [r] u32 (checked < n on the host), dst [r, w] words, where
// w = row bytes / word size. The host picks the u32 variant when the row size is a multiple of 4 bytes
// (device buffers are 256-byte aligned, so every row is then 4-byte aligned), else the u16 one.
// Launch: grid (r), block 256; threads stride over the words of one row.
// Variants: gather_rows_u16, gather_rows_u32.

template <typename W>
__device__ __forceinline__ void gather_rows(const W* __restrict__ src, const u32* __restrict__ rows,
                                            W* __restrict__ dst, int w) {
    const W* s = src + (u64)rows[blockIdx.x] * w;
    W* d = dst + (u64)blockIdx.x * w;
    for (int i = threadIdx.x; i < w; i += blockDim.x) d[i] = s[i];
}

extern "C" __global__ void gather_rows_u16(const unsigned short* src, const u32* rows, unsigned short* dst, int w) {
    gather_rows<unsigned short>(src, rows, dst, w);
}
extern "C" __global__ void gather_rows_u32(const u32* src, const u32* rows, u32* dst, int w) {
    gather_rows<u32>(src, rows, dst, w);
}
