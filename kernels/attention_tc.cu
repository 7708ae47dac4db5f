// attention_tc.cu: tree attention on tensor cores (f16 / bf16), the same packed layout and results as
// attention.cu (the f32 CUDA-core kernel, kept for --dtype f32 and as the reference).
//
// Inputs (row-major): qkv [T, 3*H*HD] (per head a [q | k | v] block at column h*3*HD, rotary applied),
// past [P, 3*H*HD] (any pointer when P = 0). Output: out [T, H*HD]. Key index space: k < P is past row k,
// k >= P is batch row k - P.
//
// Work split: grid (tiles, H), block 128 = 4 warps. A query tile holds up to 64 consecutive batch rows
// that share one ancestor list: rows of one segment, or of several sibling segments (the answers of one
// question), so a 2-token answer does not occupy a tile of its own. Warp w owns rows 16w .. 16w+15; a warp
// without valid rows, or whose rows all precede a key tile of the tile's own keys, skips the arithmetic.
// A query row r sees every key of the tile's ancestor ranges and the batch keys seg_start(r) ..= r.
//
// Per key tile of 64 keys (K and V double-buffered in shared memory, loaded with cp.async one tile ahead):
//   S = Q K^T   mma.m16n8k16 (f32 accumulate): A = Q rows (ldmatrix), B = K rows (ldmatrix: row-major K
//               is the col-major B the instruction wants);
//   online softmax in f32 per row (running max m and sum l; Pythia's large q/k biases need f32 scores);
//   O += P V    P rounded to the input type and re-used in registers as the A fragment (the C fragment
//               of S has the A layout), B = V rows (ldmatrix.trans).
// Fragment layouts are the PTX ISA's (g = lane / 4, t = lane % 4): an S / O accumulator of 16 x 8 holds
// rows g and g + 8, columns 2t and 2t + 1.
//
// Tables (uploaded once per batch by `prepare`):
//   tiles [n][4] u32: (first batch row, rows <= 64, first batch row of the tile's own keys, segment index
//                      of the tile's ancestor list)
//   seg_off, ranges: as attention.cu (segment s's ancestor ranges are ranges[seg_off[s] .. seg_off[s+1]])
//   row_seg [T] u32: first batch row of each row's segment (its own keys start there)
// Shared memory (dynamic): Q [64][HD+8] + K [2][64][HD+8] + V [2][64][HD+8] of T: the 8-element pad keeps
// ldmatrix's eight 16-byte row reads in distinct banks. 46 KB at HD 64, 56 KB at 80, 87 KB at 128,
// 169 KB at 256.
// Variants: attention_tc_<T>_hd<HD> for T in f16 | bf16 and HD in 32, 64, 80, 128, 256 (HD % 16 == 0 and
// HD / 8 even, so every shape needs no padding). The row strides 3*H*HD and H*HD must keep rows 16-byte
// aligned (HD % 8 == 0 does).

#define ATC_WARPS 4
#define ATC_BM 64  // query rows per tile (16 per warp)
#define ATC_BN 64  // keys per key tile

template <typename T> struct AtcMma;
template <> struct AtcMma<f16> {
    static __device__ __forceinline__ void run(float d[4], const u32 a[4], const u32 b[2]) { mma_m16n8k16_f16_f32(d, a, b, d); }
    // Two f32 values as a packed pair (low half = first), rounded to nearest even.
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        return (u32)from_f32<f16>(lo).bits | ((u32)from_f32<f16>(hi).bits << 16);
    }
};
template <> struct AtcMma<bf16> {
    static __device__ __forceinline__ void run(float d[4], const u32 a[4], const u32 b[2]) { mma_m16n8k16_bf16_f32(d, a, b, d); }
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        return (u32)from_f32<bf16>(lo).bits | ((u32)from_f32<bf16>(hi).bits << 16);
    }
};

// Issue the copy of key tile [k0, k0 + 64) of range ending at k_end (exclusive) into Kb / Vb: keys past
// the end are zero-filled (their scores are masked).
template <typename T, int HD>
__device__ __forceinline__ void atc_load_kv(T* Kb, T* Vb, const T* qkv, const T* past, u32 past_len, u64 ld,
                                            int k_off, u32 k0, u32 k_end) {
    constexpr int S = HD + 8, CHUNKS = HD / 8;  // 16-byte chunks per row
    for (int i = threadIdx.x; i < ATC_BN * CHUNKS; i += ATC_WARPS * 32) {
        const int r = i / CHUNKS, c = (i - r * CHUNKS) * 8;
        const u32 k = k0 + r;
        const bool valid = k < k_end;
        const T* row = valid ? (k < past_len ? past + (u64)k * ld : qkv + (u64)(k - past_len) * ld) : qkv;
        cp_async_16_zfill(Kb + r * S + c, row + k_off + c, valid);
        cp_async_16_zfill(Vb + r * S + c, row + k_off + HD + c, valid);
    }
}

template <typename T, int HD>
__device__ __forceinline__ void attention_tc(const T* __restrict__ qkv, const T* __restrict__ past, T* __restrict__ out,
                                             const u32* __restrict__ tiles, const u32* __restrict__ seg_off,
                                             const u32* __restrict__ ranges, const u32* __restrict__ row_seg,
                                             u32 past_len, int heads, float scale) {
    constexpr int S = HD + 8, KSTEPS = HD / 16, NB = HD / 8;
    extern __shared__ unsigned char atc_smem[];
    T* Qs = (T*)atc_smem;          // [64][S]
    T* Ks = Qs + ATC_BM * S;       // [2][64][S]
    T* Vs = Ks + 2 * ATC_BN * S;   // [2][64][S]

    const u32 tile = blockIdx.x;
    const int head = blockIdx.y;
    const u32 q_row0 = tiles[4 * tile], q_rows = tiles[4 * tile + 1];
    const u32 own_start = tiles[4 * tile + 2], seg = tiles[4 * tile + 3];
    const u64 ld = (u64)3 * heads * HD;
    const int q_off = head * 3 * HD, k_off = q_off + HD;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;

    // Key ranges: the ancestors, then the tile's own batch keys [own_start, last row].
    const u32 r_first = seg_off[seg], n_ranges = seg_off[seg + 1] - r_first + 1;
    auto range = [&](u32 i, u32& start, u32& end) {
        if (i + 1 < n_ranges) {
            start = ranges[2 * (r_first + i)];
            end = start + ranges[2 * (r_first + i) + 1];
        } else {
            start = past_len + own_start;
            end = past_len + q_row0 + q_rows;
        }
    };

    // Q of this tile (rows past the tile zero-filled), and the first key tile.
    for (int i = threadIdx.x; i < ATC_BM * (HD / 8); i += ATC_WARPS * 32) {
        const int r = i / (HD / 8), c = (i - r * (HD / 8)) * 8;
        const bool valid = (u32)r < q_rows;
        cp_async_16_zfill(Qs + r * S + c, qkv + (u64)(q_row0 + (valid ? r : 0)) * ld + q_off + c, valid);
    }
    u32 ri = 0, k0 = 0, k_end = 0;
    range(0, k0, k_end);
    while (k0 >= k_end && ri + 1 < n_ranges) range(++ri, k0, k_end);  // skip empty ranges
    atc_load_kv<T, HD>(Ks, Vs, qkv, past, past_len, ld, k_off, k0, k_end);
    cp_async_commit();

    // This warp's rows (batch rows, and whether each of its two rows per thread is inside the tile).
    const u32 w_row0 = warp * 16;
    const bool warp_active = w_row0 < q_rows;
    const u32 row_a = q_row0 + w_row0 + g, row_b = row_a + 8;
    const bool valid_a = w_row0 + g < q_rows, valid_b = w_row0 + g + 8 < q_rows;
    const u32 seg_a = valid_a ? row_seg[row_a] : 0, seg_b = valid_b ? row_seg[row_b] : 0;
    const u32 w_last = q_row0 + min(q_rows, w_row0 + 16) - 1;  // last valid batch row of the warp

    float o[NB][4];
#pragma unroll
    for (int n = 0; n < NB; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m_a = -LMS_INF, m_b = -LMS_INF, l_a = 0.f, l_b = 0.f;  // per-thread partial sums l

    for (int buf = 0;; buf ^= 1) {
        // Next key tile: the rest of this range, else the next non-empty range.
        u32 n_ri = ri, n_k0 = k0 + ATC_BN, n_end = k_end;
        while (n_k0 >= n_end && n_ri + 1 < n_ranges) range(++n_ri, n_k0, n_end);
        const bool more = n_k0 < n_end;
        if (more) {
            atc_load_kv<T, HD>(Ks + (buf ^ 1) * ATC_BN * S, Vs + (buf ^ 1) * ATC_BN * S, qkv, past, past_len, ld, k_off, n_k0, n_end);
            cp_async_commit();
            cp_async_wait<1>();  // the current tile (and Q) have landed; the next may still be in flight
        } else {
            cp_async_wait_all();
        }
        __syncthreads();

        const bool own = ri + 1 == n_ranges;
        // Own keys are batch rows k - P; a warp whose rows all precede this tile's first key sees none.
        const bool skip = !warp_active || k0 >= k_end || (own && k0 - past_len > w_last);
        if (!skip) {
            const T* Kb = Ks + buf * ATC_BN * S;
            const T* Vb = Vs + buf * ATC_BN * S;
            // S = Q K^T for the warp's 16 rows x 64 keys: s[n] is the 16 x 8 block of keys 8n .. 8n+7.
            float s[ATC_BN / 8][4];
#pragma unroll
            for (int n = 0; n < ATC_BN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; ++kk) {
                u32 a[4];  // matrices: rows 0-7 | 8-15 of dims 16kk.., then the same of dims 16kk+8..
                ldmatrix_x4(a, Qs + (w_row0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * S + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int n = 0; n < ATC_BN / 8; n += 2) {
                    u32 b[4];  // keys 8n.. (dims 16kk.., 16kk+8..), then keys 8n+8.. (same dims)
                    ldmatrix_x4(b, Kb + ((n + (lane >> 4)) * 8 + (lane & 7)) * S + kk * 16 + ((lane >> 3) & 1) * 8);
                    AtcMma<T>::run(s[n], a, b);
                    AtcMma<T>::run(s[n + 1], a, b + 2);
                }
            }
            // Scale and mask: column 2t + c of block n is key k0 + 8n + 2t + c.
            float mx_a = -LMS_INF, mx_b = -LMS_INF;
#pragma unroll
            for (int n = 0; n < ATC_BN / 8; ++n) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const u32 k = k0 + 8 * n + 2 * t + c;
                    bool vis_a = k < k_end && valid_a, vis_b = k < k_end && valid_b;
                    if (own) {
                        const u32 kb = k - past_len;  // batch row of the key
                        vis_a = vis_a && kb >= seg_a && kb <= row_a;
                        vis_b = vis_b && kb >= seg_b && kb <= row_b;
                    }
                    s[n][c] = vis_a ? s[n][c] * scale : -LMS_INF;
                    s[n][2 + c] = vis_b ? s[n][2 + c] * scale : -LMS_INF;
                    mx_a = fmaxf(mx_a, s[n][c]);
                    mx_b = fmaxf(mx_b, s[n][2 + c]);
                }
            }
            // The four threads of a row group hold its 64 columns between them.
            mx_a = fmaxf(mx_a, __shfl_xor_sync(LMS_FULL_MASK, mx_a, 1));
            mx_a = fmaxf(mx_a, __shfl_xor_sync(LMS_FULL_MASK, mx_a, 2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(LMS_FULL_MASK, mx_b, 1));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(LMS_FULL_MASK, mx_b, 2));
            const float new_a = fmaxf(m_a, mx_a), new_b = fmaxf(m_b, mx_b);
            // A row with no visible key yet keeps m = -inf: its p are 0 and nothing is rescaled.
            const float base_a = new_a == -LMS_INF ? 0.f : new_a, base_b = new_b == -LMS_INF ? 0.f : new_b;
            const float corr_a = expf(m_a - base_a), corr_b = expf(m_b - base_b);
            m_a = new_a;
            m_b = new_b;
            l_a *= corr_a;
            l_b *= corr_b;
#pragma unroll
            for (int n = 0; n < NB; ++n) {
                o[n][0] *= corr_a;
                o[n][1] *= corr_a;
                o[n][2] *= corr_b;
                o[n][3] *= corr_b;
            }
#pragma unroll
            for (int n = 0; n < ATC_BN / 8; ++n) {
                s[n][0] = expf(s[n][0] - base_a);
                s[n][1] = expf(s[n][1] - base_a);
                s[n][2] = expf(s[n][2] - base_b);
                s[n][3] = expf(s[n][3] - base_b);
                l_a += s[n][0] + s[n][1];
                l_b += s[n][2] + s[n][3];
            }
            // O += P V, 16 keys per step: P's C fragments of key blocks 2j, 2j+1 are the A fragment.
#pragma unroll
            for (int j = 0; j < ATC_BN / 16; ++j) {
                const u32 a[4] = {AtcMma<T>::pack(s[2 * j][0], s[2 * j][1]), AtcMma<T>::pack(s[2 * j][2], s[2 * j][3]),
                                  AtcMma<T>::pack(s[2 * j + 1][0], s[2 * j + 1][1]),
                                  AtcMma<T>::pack(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
                for (int n = 0; n < NB; n += 2) {
                    u32 b[4];  // V keys 16j.. | 16j+8.. of dims 8n.., then the same of dims 8n+8.. (transposed)
                    ldmatrix_x4_trans(b, Vb + (16 * j + ((lane >> 3) & 1) * 8 + (lane & 7)) * S + (n + (lane >> 4)) * 8);
                    AtcMma<T>::run(o[n], a, b);
                    AtcMma<T>::run(o[n + 1], a, b + 2);
                }
            }
        }
        if (!more) break;
        __syncthreads();  // every warp is done with this buffer before the load after next overwrites it
        ri = n_ri;
        k0 = n_k0;
        k_end = n_end;
    }

    // Sum l over the row's four threads, normalise, store (pairs of columns 2t, 2t + 1).
    l_a += __shfl_xor_sync(LMS_FULL_MASK, l_a, 1);
    l_a += __shfl_xor_sync(LMS_FULL_MASK, l_a, 2);
    l_b += __shfl_xor_sync(LMS_FULL_MASK, l_b, 1);
    l_b += __shfl_xor_sync(LMS_FULL_MASK, l_b, 2);
    if (!warp_active) return;
    const u64 ldo = (u64)heads * HD;
    const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
#pragma unroll
    for (int n = 0; n < NB; ++n) {
        const int col = head * HD + 8 * n + 2 * t;
        if (valid_a) {
            T* p = out + (u64)row_a * ldo + col;
            p[0] = from_f32<T>(o[n][0] * inv_a);
            p[1] = from_f32<T>(o[n][1] * inv_a);
        }
        if (valid_b) {
            T* p = out + (u64)row_b * ldo + col;
            p[0] = from_f32<T>(o[n][2] * inv_b);
            p[1] = from_f32<T>(o[n][3] * inv_b);
        }
    }
}

#define LMS_ATTENTION_TC(T, HD) \
    extern "C" __global__ void __launch_bounds__(ATC_WARPS * 32) attention_tc_##T##_hd##HD( \
        const T* qkv, const T* past, T* out, const u32* tiles, const u32* seg_off, const u32* ranges, \
        const u32* row_seg, u32 past_len, int heads, float scale) { \
        attention_tc<T, HD>(qkv, past, out, tiles, seg_off, ranges, row_seg, past_len, heads, scale); \
    }
#define LMS_ATTENTION_TC_DIMS(T) \
    LMS_ATTENTION_TC(T, 32) LMS_ATTENTION_TC(T, 64) LMS_ATTENTION_TC(T, 80) LMS_ATTENTION_TC(T, 128) \
    LMS_ATTENTION_TC(T, 256)
LMS_ATTENTION_TC_DIMS(f16)
LMS_ATTENTION_TC_DIMS(bf16)
