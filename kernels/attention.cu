// attention.cu: flash-style tree attention over a packed batch, f32 scores / softmax / accumulation.
//
// Inputs (row-major): qkv [T, 3*H*hd] (T = f32 | f16 | bf16; per head h a [q | k | v] block at column
// h*3*hd, rotary already applied), past [P, 3*H*hd] (cached qkv rows of earlier batches; any pointer when
// P = 0). Output: out [T, H*hd] (same dtype), heads merged head-major as HF does.
//
// Key index space: k < P is past row k, k >= P is batch row k - P. A query row q of segment S sees every
// key of S's ancestor ranges (fully) and S's own keys P + S.q_start ..= P + q (causally). Nothing of size
// [T, T] is formed: each block streams its keys through shared memory in tiles of 32 with an online
// softmax (running max m, running sum l, rescaled f32 accumulator o), as in FlashAttention, but on CUDA
// cores: q.k is accumulated in f32 (Pythia's large q/k biases would overflow an f16 accumulator).
//
// Work split: the host cuts every segment into query tiles of 16 rows (never crossing a segment, so all
// rows of a tile share the same key ranges) and launches grid (tiles, H), block 128 = 4 warps; warp w owns
// the tile's rows 4w .. 4w+3. Per key tile:
//   - all 128 threads load K and V of 32 keys into shared memory (as f32, coalesced along hd);
//   - scores: lane j computes q_r . k_j for the warp's 4 rows (K stored with an odd row stride, so the 32
//     lanes reading column d of 32 different keys hit 32 different banks; q is a broadcast read);
//   - per row: tile max and sum by warp shuffles, rescale o, then o += p_j v_j with p_j shuffled from
//     lane j; lane l owns output dims l, l + 32, ..., so the V reads are conflict-free too.
// Table arguments (uploaded once per batch by `prepare`):
//   tiles [n_tiles][4] u32: (first batch row, rows in tile <= 16, segment's first batch row, segment index)
//   seg_off [S + 1] u32: segment s's ancestor ranges are ranges[seg_off[s] .. seg_off[s + 1]]
//   ranges [..][2] u32: (first key index, key count), root first
// Shared memory (dynamic): Qs [16][hd] + Ks [32][hd|1] + Vs [32][hd] floats: 25.7 KB at hd 80,
// 41 KB at hd 128, 82 KB at hd 256 (the host raises the kernel's dynamic shared-memory limit past 48 KB).
// Variants: attention_<T>_d<DPL> for T in f32 | f16 | bf16 and DPL (output dims per lane) in 1, 2, 3, 4, 8:
// DPL = ceil(hd / 32), so every hd <= 256 runs (32 -> 1, 64 -> 2, 80 and 96 -> 3, 128 -> 4, 256 -> 8).

#define ATT_WARPS 4
#define ATT_ROWS_PER_WARP 4
#define ATT_TILE_Q (ATT_WARPS * ATT_ROWS_PER_WARP)
#define ATT_TILE_K 32
// At least 4 resident blocks per SM: caps registers at 128/thread. Without a minimum, ptxas (CUDA 13.0)
// picked 56 registers for the f16/f32 d4 variants on sm_90 and spilled; with it, every variant fits
// without spills (96-126 registers; the compile test prints the counts and fails on any spill).
#define ATT_MIN_BLOCKS 4

template <typename T, int DPL>
__device__ __forceinline__ void attention(const T* __restrict__ qkv, const T* __restrict__ past, T* __restrict__ out,
                                          const u32* __restrict__ tiles, const u32* __restrict__ seg_off,
                                          const u32* __restrict__ ranges, u32 past_len, int heads, int hd,
                                          float scale) {
    extern __shared__ float smem[];
    const int ks = hd | 1;  // odd row stride of the K tile: bank-conflict-free column reads
    float* Qs = smem;                      // [ATT_TILE_Q][hd]
    float* Ks = Qs + ATT_TILE_Q * hd;      // [ATT_TILE_K][ks]
    float* Vs = Ks + ATT_TILE_K * ks;      // [ATT_TILE_K][hd]

    const u32 tile = blockIdx.x;
    const int head = blockIdx.y;
    const u32 q_row0 = tiles[4 * tile], q_rows = tiles[4 * tile + 1];
    const u32 seg_start = tiles[4 * tile + 2], seg = tiles[4 * tile + 3];
    const u64 ld = (u64)3 * heads * hd;  // row stride of qkv and past
    const int q_off = head * 3 * hd, k_off = q_off + hd, v_off = q_off + 2 * hd;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    // This tile's query rows -> shared memory (zeros past the tile's last row).
    for (int i = threadIdx.x; i < ATT_TILE_Q * hd; i += blockDim.x) {
        const int r = i / hd, d = i - r * hd;
        Qs[i] = (u32)r < q_rows ? to_f32(qkv[(u64)(q_row0 + r) * ld + q_off + d]) : 0.f;
    }

    float m[ATT_ROWS_PER_WARP], l[ATT_ROWS_PER_WARP], o[ATT_ROWS_PER_WARP][DPL];
#pragma unroll
    for (int r = 0; r < ATT_ROWS_PER_WARP; ++r) {
        m[r] = -LMS_INF;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) o[r][i] = 0.f;
    }

    const u32 anc_begin = seg_off[seg], n_ranges = seg_off[seg + 1] - anc_begin + 1;
    for (u32 ri = 0; ri < n_ranges; ++ri) {
        // Ancestor ranges are seen whole; the last range is the segment's own keys, seen causally and only
        // up to the tile's last row.
        const bool own = ri == n_ranges - 1;
        const u32 k_start = own ? past_len + seg_start : ranges[2 * (anc_begin + ri)];
        const u32 k_len = own ? q_row0 + q_rows - seg_start : ranges[2 * (anc_begin + ri) + 1];

        for (u32 kb = 0; kb < k_len; kb += ATT_TILE_K) {
            const int n = (int)min((u32)ATT_TILE_K, k_len - kb);
            __syncthreads();  // the previous K/V tile is consumed (and, first time round, Qs is written)
            for (int i = threadIdx.x; i < ATT_TILE_K * hd; i += blockDim.x) {
                const int j = i / hd, d = i - j * hd;
                float kv = 0.f, vv = 0.f;
                if (j < n) {
                    const u32 key = k_start + kb + j;
                    const T* row = key < past_len ? past + (u64)key * ld : qkv + (u64)(key - past_len) * ld;
                    kv = to_f32(row[k_off + d]);
                    vv = to_f32(row[v_off + d]);
                }
                Ks[j * ks + d] = kv;
                Vs[j * hd + d] = vv;
            }
            __syncthreads();

            // Scores of this lane's key against the warp's rows.
            float s[ATT_ROWS_PER_WARP];
#pragma unroll
            for (int r = 0; r < ATT_ROWS_PER_WARP; ++r) s[r] = 0.f;
            const float* krow = Ks + lane * ks;
            const float* q0 = Qs + warp * ATT_ROWS_PER_WARP * hd;
            for (int d = 0; d < hd; ++d) {
                const float kd = krow[d];
#pragma unroll
                for (int r = 0; r < ATT_ROWS_PER_WARP; ++r) s[r] += q0[r * hd + d] * kd;
            }

            // Online softmax update per row (every branch below is uniform across the warp).
            const u32 key = k_start + kb + lane;
            float p[ATT_ROWS_PER_WARP];
#pragma unroll
            for (int r = 0; r < ATT_ROWS_PER_WARP; ++r) {
                p[r] = 0.f;
                const u32 qi = warp * ATT_ROWS_PER_WARP + r;
                if (qi >= q_rows) continue;
                const bool visible = lane < n && (!own || key <= past_len + q_row0 + qi);
                const float sc = visible ? s[r] * scale : -LMS_INF;
                const float tmax = warp_max(sc);
                if (tmax == -LMS_INF) continue;  // no visible key for this row in this tile
                const float m_new = fmaxf(m[r], tmax);
                const float corr = expf(m[r] - m_new);  // 0 on the first visible tile (m = -inf)
                p[r] = visible ? expf(sc - m_new) : 0.f;
                l[r] = l[r] * corr + warp_sum(p[r]);
                m[r] = m_new;
#pragma unroll
                for (int i = 0; i < DPL; ++i) o[r][i] *= corr;
            }

            // o += p_j * v_j over the tile's keys.
            for (int j = 0; j < n; ++j) {
                float v[DPL];
#pragma unroll
                for (int i = 0; i < DPL; ++i) {
                    const int d = lane + 32 * i;
                    v[i] = d < hd ? Vs[j * hd + d] : 0.f;
                }
#pragma unroll
                for (int r = 0; r < ATT_ROWS_PER_WARP; ++r) {
                    const float pj = __shfl_sync(LMS_FULL_MASK, p[r], j);
#pragma unroll
                    for (int i = 0; i < DPL; ++i) o[r][i] += pj * v[i];
                }
            }
        }
    }

    // Normalise and store. Every row sees at least its own key, so l > 0.
#pragma unroll
    for (int r = 0; r < ATT_ROWS_PER_WARP; ++r) {
        const u32 qi = warp * ATT_ROWS_PER_WARP + r;
        if (qi >= q_rows) continue;
        const float inv = 1.0f / l[r];
        T* dst = out + (u64)(q_row0 + qi) * heads * hd + (u64)head * hd;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) dst[d] = from_f32<T>(o[r][i] * inv);
        }
    }
}

#define LMS_ATTENTION_D(T, DPL) \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32, ATT_MIN_BLOCKS) attention_##T##_d##DPL( \
        const T* qkv, const T* past, T* out, const u32* tiles, const u32* seg_off, const u32* ranges, \
        u32 past_len, int heads, int hd, float scale) { \
        attention<T, DPL>(qkv, past, out, tiles, seg_off, ranges, past_len, heads, hd, scale); \
    }
#define LMS_ATTENTION(T) \
    LMS_ATTENTION_D(T, 1) LMS_ATTENTION_D(T, 2) LMS_ATTENTION_D(T, 3) LMS_ATTENTION_D(T, 4) LMS_ATTENTION_D(T, 8)
LMS_TYPES(LMS_ATTENTION)
