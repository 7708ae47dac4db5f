// logsoftmax_gather.cu: the fused scoring kernel. For each scored row of f32 logits, one pass over the
// vocabulary computes the running max m, sum s = sum exp(x - m) (online rescaling, f32) and the first index
// of the maximum (torch.argmax semantics); then each (row, target) pair gets
//     logprob   = (logits[row, target] - m) - log(s)      (= logit - logsumexp, padding columns included)
//     is_greedy = argmax[row] == target
// Nothing of size [rows, V] is written besides the logits themselves.
//
// Kernel 1, logsoftmax_stats: logits [R, V] f32 -> m [R] f32, log_s [R] f32, argmax [R] u32.
//   Launch: grid (R), block 1024 (any multiple of 32); one block per row. Each thread scans its strided
//   subset in increasing index order (float4 loads when V % 4 == 0: rows are then 16-byte aligned), so
//   its own argmax is its first maximum; partial (m, s, arg) triples are merged with the smaller index
//   winning ties, first across a warp (shuffles), then across warps (shared memory).
// Kernel 2, logsoftmax_targets: targets [n][2] u32 (row, token) -> logprob [n] f32, greedy [n] u32.
//   Launch: 1-D, block 256, one thread per target.

struct LseState {
    float m;  // running max (starts at -FLT_MAX, not -inf, so exp(m - m') never sees inf - inf)
    float s;  // sum of exp(x - m)
    u32 arg;  // first index of the max; 0xffffffff while no element >= -FLT_MAX has been seen
};

__device__ __forceinline__ void lse_push(LseState& st, float x, u32 i) {
    // An element equal to the starting -FLT_MAX is still a maximum the state has not recorded yet (a row
    // whose maximum is exactly -FLT_MAX must report its first index, as the CPU twin does).
    if (x > st.m || (x == st.m && st.arg == 0xffffffffu)) {
        st.s = st.s * expf(st.m - x) + 1.0f;
        st.m = x;
        st.arg = i;
    } else {
        st.s += expf(x - st.m);
    }
}

__device__ __forceinline__ void lse_merge(LseState& a, float m, float s, u32 arg) {
    const float mx = fmaxf(a.m, m);
    if (m > a.m || (m == a.m && arg < a.arg)) a.arg = arg;
    a.s = a.s * expf(a.m - mx) + s * expf(m - mx);
    a.m = mx;
}

// Butterfly merge across the 32 lanes of a warp: every lane ends with the warp's (max, sum, first argmax).
__device__ __forceinline__ void lse_warp_merge(LseState& st) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m = __shfl_xor_sync(LMS_FULL_MASK, st.m, o);
        const float s = __shfl_xor_sync(LMS_FULL_MASK, st.s, o);
        const u32 a = __shfl_xor_sync(LMS_FULL_MASK, st.arg, o);
        lse_merge(st, m, s, a);
    }
}

extern "C" __global__ void logsoftmax_stats(const float* __restrict__ logits, int V, float* __restrict__ m_out,
                                            float* __restrict__ log_s_out, u32* __restrict__ arg_out) {
    __shared__ float sm_m[32], sm_s[32];
    __shared__ u32 sm_a[32];
    const float* row = logits + (u64)blockIdx.x * V;
    LseState st = {-LMS_FLT_MAX, 0.0f, 0xffffffffu};

    if ((V & 3) == 0) {
        const float4* row4 = reinterpret_cast<const float4*>(row);
        for (int j = threadIdx.x; j < V / 4; j += blockDim.x) {
            const float4 v = row4[j];
            lse_push(st, v.x, 4 * j);
            lse_push(st, v.y, 4 * j + 1);
            lse_push(st, v.z, 4 * j + 2);
            lse_push(st, v.w, 4 * j + 3);
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) lse_push(st, row[j], j);
    }

    lse_warp_merge(st);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
        sm_m[warp] = st.m;
        sm_s[warp] = st.s;
        sm_a[warp] = st.arg;
    }
    __syncthreads();
    if (warp == 0) {
        LseState t = {-LMS_FLT_MAX, 0.0f, 0xffffffffu};
        if (lane < warps) t = LseState{sm_m[lane], sm_s[lane], sm_a[lane]};
        lse_warp_merge(t);
        if (lane == 0) {
            m_out[blockIdx.x] = t.m;
            log_s_out[blockIdx.x] = logf(t.s);
            arg_out[blockIdx.x] = t.arg == 0xffffffffu ? 0u : t.arg;  // all -inf row: index 0, as the CPU
        }
    }
}

extern "C" __global__ void logsoftmax_targets(const float* __restrict__ logits, int V, const float* __restrict__ m,
                                              const float* __restrict__ log_s, const u32* __restrict__ argmax,
                                              const u32* __restrict__ targets, int n, float* __restrict__ logprob,
                                              u32* __restrict__ greedy) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const u32 row = targets[2 * i], tok = targets[2 * i + 1];
    logprob[i] = (logits[(u64)row * V + tok] - m[row]) - log_s[row];
    greedy[i] = argmax[row] == tok ? 1u : 0u;
}
