// simt.h: the CUDA dialect for kernels compiled by the CUDA stand-in (cuda-sim/), as ordinary C++.
//
// The stand-in's NVRTC (src/nvrtc.cpp) compiles the program text it is handed with g++, with this header
// forced in front (-include). Each CUDA thread is a fiber; the fiber's `Thread` record sits at the base of
// its stack, so `threadIdx` & co. are found from the stack pointer with no thread-local lookup. Everything
// that makes threads meet (barriers, warp shuffles, votes) calls back into the driver's scheduler
// (src/simt.cpp) through the `Runtime` table handed to the module when it is loaded.
//
// Two parts: the ABI shared with the driver (plain C++, also compiled into libcuda with LMS_SIMT_ABI_ONLY),
// and the CUDA dialect proper (keywords, built-in variables, intrinsics, the inline-PTX instructions the
// kernels use).
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace lms_simt {

struct Dim3 {
    unsigned x, y, z;
};

// Fiber stacks are kStackBytes long and aligned to kStackBytes; the Thread record is in their first page,
// at an offset that differs from stack to stack (stacks kStackBytes apart would otherwise put every
// record, and every stack top, in the same cache set).
constexpr size_t kStackBytes = 256 * 1024;
inline uintptr_t record_offset(uintptr_t stack_base) { return ((stack_base / kStackBytes) % 32) * 128; }

struct Thread {
    Dim3 thread_idx;
    Dim3 block_idx;
    Dim3 block_dim;
    Dim3 grid_dim;
    unsigned linear;  // thread index within the block (x fastest)
    unsigned lane;    // linear % 32
    unsigned warp;    // linear / 32
    void* dyn_smem;   // the block's dynamic shared memory (exactly the launch's size, NaN-filled)
    void* worker;     // the executor's state for the OS thread running this block (simt.cpp)
};

// What a kernel calls back into (filled by the driver, handed to lms_module_init).
struct Runtime {
    void (*syncthreads)(const char* file, int line);
    // Warp rendezvous: op is one of the WarpOp values; returns this lane's result.
    unsigned (*warp)(int op, unsigned mask, unsigned value, unsigned b, unsigned c, const char* file, int line);
    [[noreturn]] void (*trap)(const char* file, int line, const char* what);
    // Warp exchange, the rendezvous of the .sync.aligned tensor-core instructions (mma, ldmatrix): every lane
    // of `mask` deposits `bytes` (<= kExchangeBytes) from `in`; once all of them are at the same instruction
    // (`what`, file:line), each receives the 32 deposits at `out`, lane j's at out + j * bytes (zeros for
    // lanes outside the mask). Checked like a shuffle: a lane elsewhere or exited is divergence.
    void (*exchange)(unsigned mask, const void* in, void* out, unsigned bytes, const char* what, const char* file, int line);
    // cvta.to.shared: the 32-bit shared-window address of generic pointer p (see kSmem* below).
    unsigned (*smem_addr)(const void* p, const char* file, int line);
    // The host address of the `bytes` bytes at shared-window address `addr`, which must lie inside the
    // block's shared memory (static or dynamic) and be `align`-aligned: else a failure naming the kernel,
    // the thread, `what` and file:line.
    void* (*smem_ptr)(unsigned addr, unsigned bytes, unsigned align, const char* what, const char* file, int line);
    // cp.async: queue a copy of `bytes` bytes from global `src` to shared-window address `dst`, of which the
    // first `src_bytes` come from src and the rest are zeros; commit_group; wait_group `pending` (< 0:
    // wait_all). The copies are done when a wait covers them (or when the thread exits).
    void (*cp_async)(unsigned dst, const void* src, unsigned bytes, unsigned src_bytes, const char* what, const char* file, int line);
    void (*cp_async_commit)();
    void (*cp_async_wait)(int pending, const char* file, int line);
};

enum WarpOp { kShflIdx, kShflUp, kShflDown, kShflBfly, kBallot, kAny, kAll, kSyncWarp, kExchange };
constexpr unsigned kExchangeBytes = 64;

// The stand-in's shared-window addresses (what cvta.to.shared gives and .shared operands take): the block's
// dynamic shared memory at its offset in the worker's window [0, kSmemWindow), static __shared__ variables
// (the module's thread-local block) at kSmemStatic + their offset in it; a generic address outside both
// converts to kSmemNowhere, which no access accepts.
constexpr unsigned kSmemWindow = 256 * 1024;
constexpr unsigned kSmemStatic = 0x01000000u;
constexpr unsigned kSmemNowhere = 0x80000000u;

struct ParamInfo {
    unsigned size;        // sizeof the declared parameter type
    unsigned is_pointer;  // a pointer: must be null or inside a device allocation at launch
};

// One __global__ function, as the generated registration table lists it.
struct KernelEntry {
    const char* name;
    void (*invoke)(void** args);  // unpacks cuLaunchKernel's argument pointers and calls the kernel
    unsigned num_params;
    const ParamInfo* params;
    unsigned max_threads;  // __launch_bounds__'s first argument, 0 when none
};

}  // namespace lms_simt

#ifndef LMS_SIMT_ABI_ONLY
// ------------------------------------------------------------------------------------------------------
// The CUDA dialect.
#include <math.h>
#include <string.h>
#include <type_traits>
#include <utility>

static const lms_simt::Runtime* lms_rt;
extern "C" __attribute__((visibility("default"))) void lms_module_init(const lms_simt::Runtime* rt) { lms_rt = rt; }

static inline lms_simt::Thread* lms_self() {
    const uintptr_t base = (uintptr_t)__builtin_frame_address(0) & ~(uintptr_t)(lms_simt::kStackBytes - 1);
    return (lms_simt::Thread*)(base + lms_simt::record_offset(base));
}

#ifdef __LMS_SCAN__  // the front end's preprocessing pass looks for these markers
#define __global__ __lms_global__
#define __launch_bounds__(...) __lms_launch_bounds__(__VA_ARGS__)
#else
#define __global__ __attribute__((used))
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))  // placed anywhere among the specifiers, as CUDA allows
// Static __shared__ arrays: one copy per worker OS thread, and a block runs wholly on one worker.
#define __shared__ static thread_local

#define threadIdx (lms_self()->thread_idx)
#define blockIdx (lms_self()->block_idx)
#define blockDim (lms_self()->block_dim)
#define gridDim (lms_self()->grid_dim)
#define warpSize 32
// `extern __shared__ T name[];` is rewritten by the stand-in's front end into this.
#define LMS_DYNAMIC_SMEM(T) ((T*)lms_self()->dyn_smem)

struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
typedef lms_simt::Dim3 uint3;
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

template <typename To, typename From>
static inline To lms_bits(From f) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between types of one size");
    To t;
    memcpy(&t, &f, sizeof t);
    return t;
}
static inline float __int_as_float(int x) { return lms_bits<float>(x); }
static inline float __uint_as_float(unsigned x) { return lms_bits<float>(x); }
static inline int __float_as_int(float x) { return lms_bits<int>(x); }
static inline unsigned __float_as_uint(float x) { return lms_bits<unsigned>(x); }

// CUDA's min/max overloads for the integer and float types kernels mix.
#define LMS_MINMAX(T)                                            \
    static inline T min(T a, T b) { return b < a ? b : a; }     \
    static inline T max(T a, T b) { return a < b ? b : a; }
LMS_MINMAX(int)
LMS_MINMAX(unsigned)
LMS_MINMAX(long long)
LMS_MINMAX(unsigned long long)
#undef LMS_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
#define __expf(x) expf(x)  // the GPU's fast approximations are the accurate functions here
#define __logf(x) logf(x)
static inline float __fdividef(float a, float b) { return a / b; }
template <typename T> static inline T __ldg(const T* p) { return *p; }

// Every sync point is also a compiler memory barrier. The scheduler switches to other CUDA threads inside
// these calls, so memory they share (__shared__ arrays are thread_local statics whose address need never
// escape) must not be cached in registers, nor loads and stores moved, across them: as on a GPU, where
// __syncthreads orders shared-memory accesses. Without the clobbers g++ may sink a store past a barrier and
// hide a missing one.
#define LMS_COMPILER_BARRIER() asm volatile("" ::: "memory")
static inline void lms_syncthreads(const char* file, int line) {
    LMS_COMPILER_BARRIER();
    lms_rt->syncthreads(file, line);
    LMS_COMPILER_BARRIER();
}
static inline unsigned lms_warp(int op, unsigned mask, unsigned value, unsigned b, unsigned c, const char* file, int line) {
    LMS_COMPILER_BARRIER();
    const unsigned r = lms_rt->warp(op, mask, value, b, c, file, line);
    LMS_COMPILER_BARRIER();
    return r;
}
#define __syncthreads() lms_syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) (void)lms_warp(lms_simt::kSyncWarp, lms_mask_or_full(__VA_ARGS__), 0, 0, 0, __FILE__, __LINE__)
#define __threadfence_block() LMS_COMPILER_BARRIER()
#define __threadfence() LMS_COMPILER_BARRIER()
#define __trap() lms_rt->trap(__FILE__, __LINE__, "__trap()")
static inline unsigned lms_mask_or_full() { return 0xffffffffu; }
static inline unsigned lms_mask_or_full(unsigned m) { return m; }

// Shuffles, with CUDA's encoding of `width` into the PTX shfl.sync c operand (clamp | segment mask << 8).
// 4-byte values travel as one 32-bit shuffle, 8-byte values as two, as CUDA's headers do.
template <typename T>
static inline T lms_shfl(int op, unsigned mask, T v, unsigned b, unsigned c, const char* file, int line) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffle of a 4- or 8-byte value");
    if constexpr (sizeof(T) == 4) {
        return lms_bits<T>(lms_warp(op, mask, lms_bits<unsigned>(v), b, c, file, line));
    } else {
        uint2 p = lms_bits<uint2>(v);
        p.x = lms_warp(op, mask, p.x, b, c, file, line);
        p.y = lms_warp(op, mask, p.y, b, c, file, line);
        return lms_bits<T>(p);
    }
}
#define LMS_SEG(width) ((unsigned)(32 - (width)) << 8)
#define __shfl_sync(mask, v, src, ...) lms_shfl(lms_simt::kShflIdx, mask, v, src, LMS_SEG(lms_width(__VA_ARGS__)) | 0x1f, __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, d, ...) lms_shfl(lms_simt::kShflUp, mask, v, d, LMS_SEG(lms_width(__VA_ARGS__)), __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d, ...) lms_shfl(lms_simt::kShflDown, mask, v, d, LMS_SEG(lms_width(__VA_ARGS__)) | 0x1f, __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, m, ...) lms_shfl(lms_simt::kShflBfly, mask, v, m, LMS_SEG(lms_width(__VA_ARGS__)) | 0x1f, __FILE__, __LINE__)
static inline int lms_width() { return 32; }
static inline int lms_width(int w) { return w; }
// CUDA's generic -> shared address conversion (cvta.to.shared), as size_t like CUDA's own.
static inline size_t __cvta_generic_to_shared(const void* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return lms_rt->smem_addr(p, file, line);
}
#define __ballot_sync(mask, pred) lms_warp(lms_simt::kBallot, mask, (pred) ? 1u : 0u, 0, 0, __FILE__, __LINE__)
#define __any_sync(mask, pred) (int)lms_warp(lms_simt::kAny, mask, (pred) ? 1u : 0u, 0, 0, __FILE__, __LINE__)
#define __all_sync(mask, pred) (int)lms_warp(lms_simt::kAll, mask, (pred) ? 1u : 0u, 0, 0, __FILE__, __LINE__)

// ------------------------------------------------------------------------------------------------------
// Inline PTX. The front end turns `asm("op.a.b %0, %1;" : "=f"(x) : "h"(y))` into `lms_ptx::op_a_b(x, y)`
// (outputs first, by reference, in the template's operand order; `{%0, %1}` as its elements, `[%0]` as the
// address value, immediates as written) and refuses any instruction that has no function here. Each one
// implements the PTX ISA's definition of that instruction exactly. Trailing `file` / `line` parameters
// default to the asm statement's place (the call stands where the statement stood), for messages.
namespace lms_ptx {

// cvt.f32.f16: every f16 value (subnormals, inf, NaN payload) is exact in f32.
static inline void cvt_f32_f16(float& d, unsigned short a) {
    const unsigned sign = (unsigned)(a & 0x8000u) << 16;
    const unsigned exp = (a >> 10) & 0x1fu, man = a & 0x3ffu;
    unsigned bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);  // inf, or NaN with its payload
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal: normalise
        int e = -1;
        unsigned m = man;
        do {
            m <<= 1;
            ++e;
        } while ((m & 0x400u) == 0);
        bits = sign | ((unsigned)(112 - e) << 23) | ((m & 0x3ffu) << 13);
    }
    d = lms_bits<float>(bits);
}

// cvt.rn.f16.f32: round to nearest even; magnitudes past the largest f16 become inf; subnormal results are
// kept (no .ftz); a NaN becomes the canonical f16 NaN 0x7fff, as the GPU does.
static inline void cvt_rn_f16_f32(unsigned short& d, float a) {
    const unsigned u = lms_bits<unsigned>(a);
    const unsigned sign = (u >> 16) & 0x8000u;
    const unsigned ax = u & 0x7fffffffu;
    if (ax > 0x7f800000u) {
        d = 0x7fff;
        return;
    }
    if (ax >= 0x477ff000u) {  // >= 65520 rounds to inf (65504 is the largest finite f16)
        d = (unsigned short)(sign | 0x7c00u);
        return;
    }
    const int exp = (int)(ax >> 23) - 127;
    unsigned result;
    if (exp >= -14) {  // normal f16: drop 13 mantissa bits with round-to-nearest-even
        const unsigned mant = ax & 0x7fffffu;
        unsigned r = ((unsigned)(exp + 15) << 10) | (mant >> 13);
        const unsigned rest = mant & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;
        result = r;
    } else if (exp >= -25) {  // subnormal f16 (or rounds up into the smallest one)
        const unsigned mant = (ax & 0x7fffffu) | 0x800000u;
        const int shift = -exp - 14 + 13;  // 14..24
        unsigned r = mant >> shift;
        const unsigned rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (r & 1u))) ++r;
        result = r;
    } else {
        result = 0;
    }
    d = (unsigned short)(sign | result);
}

// ---- Tensor cores: mma.sync, ldmatrix, cp.async -------------------------------------------------------
// The warp-collective ones (.sync.aligned) meet through the runtime's warp exchange: each lane deposits
// its operands, gets everyone's, and computes its own part of the result from them as the PTX ISA lays the
// fragments out. Functions that are not instructions return a value (the front end lists only the `static
// inline void` functions of this namespace as instructions).

static inline float lms_f16_to_f32(unsigned short h) {
    float f;
    cvt_f32_f16(f, h);
    return f;
}
static inline float lms_bf16_to_f32(unsigned short h) { return lms_bits<float>((unsigned)h << 16); }
// Half `half` (0: bits 0-15, 1: bits 16-31) of a .b32 register holding two 16-bit elements.
static inline unsigned short lms_half(unsigned reg, unsigned half) { return (unsigned short)(reg >> (16 * half)); }

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: D = A * B + C for the warp, A 16x16, B
// 16x8, C and D 16x8 f32. Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"), with groupID g = lane >> 2, threadID_in_group t = lane % 4, element a_i in half i % 2 of
// register i / 2:
//   A: a_i at row g for i in {0, 1, 4, 5}, else g + 8; column 2t + (i & 1), + 8 for i >= 4;
//   B: b_i at row (k) 2t + (i & 1), + 8 for i >= 2; column g;
//   C, D: c_i at row g for i < 2, else g + 8; column 2t + (i & 1).
// So A[r][k] is in lane 4 (r % 8) + (k % 8) / 2, register r / 8 + 2 (k / 8), half k % 2; B[k][n] in lane
// 4n + (k % 8) / 2, register k / 8, half k % 2.
// Arithmetic: every product of two f16 (or bf16) values is exact in f32 (at most 22 significant bits; a
// bf16 product can only leave f32's range); d = c + p_0 + p_1 + ... + p_15, summed in that order in f32
// with round-to-nearest-even at each addition (no FMA: the module is built with -ffp-contract=off). The
// GPU's order and internal precision of the accumulation are unspecified; this is one f32 order.
struct LmsMmaOperands {
    unsigned a[4], b[2];
};
// Every f16 value as f32 (cvt.f32.f16 of each bit pattern), built once: the software conversion per element
// made mma the stand-in's hot spot.
static inline const float* lms_f16_table() {
    static const float* table = [] {
        float* t = new float[65536];
        for (unsigned h = 0; h < 65536; ++h) cvt_f32_f16(t[h], (unsigned short)h);
        return t;
    }();
    return table;
}
template <bool Bf16>
static inline int lms_mma_m16n8k16(float* d, const LmsMmaOperands& mine, const float* c, const char* what, const char* file,
                                   int line) {
    LmsMmaOperands all[32];
    LMS_COMPILER_BARRIER();
    lms_rt->exchange(0xffffffffu, &mine, all, sizeof mine, what, file, line);
    LMS_COMPILER_BARRIER();
    const unsigned lane = lms_self()->lane, g = lane >> 2, t = lane & 3;
    const float* f16 = lms_f16_table();
    auto value = [&](unsigned short h) { return Bf16 ? lms_bf16_to_f32(h) : f16[h]; };
    // This lane's two rows of A (g, g + 8) and two columns of B (2t, 2t + 1), converted once.
    float av[2][16], bv[2][16];
    for (unsigned k = 0; k < 16; ++k) {
        for (unsigned r = 0; r < 2; ++r) {
            const unsigned row = g + 8 * r;
            av[r][k] = value(lms_half(all[4 * (row % 8) + (k % 8) / 2].a[row / 8 + 2 * (k / 8)], k % 2));
        }
        for (unsigned n = 0; n < 2; ++n) bv[n][k] = value(lms_half(all[4 * (2 * t + n) + (k % 8) / 2].b[k / 8], k % 2));
    }
    for (unsigned i = 0; i < 4; ++i) {
        float acc = c[i];
        for (unsigned k = 0; k < 16; ++k) acc += av[i / 2][k] * bv[i & 1][k];
        d[i] = acc;
    }
    return 0;
}
static inline void mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(float& d0, float& d1, float& d2, float& d3, unsigned a0, unsigned a1,
                                                                      unsigned a2, unsigned a3, unsigned b0, unsigned b1, float c0, float c1,
                                                                      float c2, float c3, const char* file = __builtin_FILE(),
                                                                      int line = __builtin_LINE()) {
    float d[4];
    const float c[4] = {c0, c1, c2, c3};
    lms_mma_m16n8k16<false>(d, LmsMmaOperands{{a0, a1, a2, a3}, {b0, b1}}, c, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", file, line);
    d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
}
static inline void mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(float& d0, float& d1, float& d2, float& d3, unsigned a0, unsigned a1,
                                                                        unsigned a2, unsigned a3, unsigned b0, unsigned b1, float c0, float c1,
                                                                        float c2, float c3, const char* file = __builtin_FILE(),
                                                                        int line = __builtin_LINE()) {
    float d[4];
    const float c[4] = {c0, c1, c2, c3};
    lms_mma_m16n8k16<true>(d, LmsMmaOperands{{a0, a1, a2, a3}, {b0, b1}}, c, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", file, line);
    d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
}

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: Num 8x8 matrices of 16-bit elements. Row j of
// matrix i is the 16 bytes at the address lane 8i + j passes (16-byte aligned; the addresses of lanes >= 8
// Num are not used). Lane l receives in r[i] row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1 of matrix i
// (low half first); with .trans, of its transpose: elements l / 4 of rows 2 (l % 4) and 2 (l % 4) + 1.
// Each lane reads its row when it reaches the instruction (one legal order: ldmatrix orders no memory).
template <unsigned Num, bool Trans>
static inline int lms_ldmatrix(unsigned* r, unsigned addr, const char* what, const char* file, int line) {
    const unsigned lane = lms_self()->lane;
    unsigned short row[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    LMS_COMPILER_BARRIER();
    if (lane < 8 * Num) memcpy(row, lms_rt->smem_ptr(addr, 16, 16, what, file, line), 16);
    unsigned short rows[32][8];
    lms_rt->exchange(0xffffffffu, row, rows, sizeof row, what, file, line);
    LMS_COMPILER_BARRIER();
    for (unsigned i = 0; i < Num; ++i) {
        const unsigned short(*m)[8] = rows + 8 * i;
        const unsigned q = lane / 4, e = 2 * (lane % 4);
        const unsigned lo = Trans ? m[e][q] : m[q][e], hi = Trans ? m[e + 1][q] : m[q][e + 1];
        r[i] = lo | hi << 16;
    }
    return 0;
}
static inline void ldmatrix_sync_aligned_m8n8_x1_shared_b16(unsigned& r0, unsigned addr, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    unsigned r[1];
    lms_ldmatrix<1, false>(r, addr, "ldmatrix.sync.aligned.m8n8.x1.shared.b16", file, line);
    r0 = r[0];
}
static inline void ldmatrix_sync_aligned_m8n8_x1_trans_shared_b16(unsigned& r0, unsigned addr, const char* file = __builtin_FILE(),
                                                                   int line = __builtin_LINE()) {
    unsigned r[1];
    lms_ldmatrix<1, true>(r, addr, "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16", file, line);
    r0 = r[0];
}
static inline void ldmatrix_sync_aligned_m8n8_x2_shared_b16(unsigned& r0, unsigned& r1, unsigned addr, const char* file = __builtin_FILE(),
                                                             int line = __builtin_LINE()) {
    unsigned r[2];
    lms_ldmatrix<2, false>(r, addr, "ldmatrix.sync.aligned.m8n8.x2.shared.b16", file, line);
    r0 = r[0], r1 = r[1];
}
static inline void ldmatrix_sync_aligned_m8n8_x2_trans_shared_b16(unsigned& r0, unsigned& r1, unsigned addr, const char* file = __builtin_FILE(),
                                                                   int line = __builtin_LINE()) {
    unsigned r[2];
    lms_ldmatrix<2, true>(r, addr, "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", file, line);
    r0 = r[0], r1 = r[1];
}
static inline void ldmatrix_sync_aligned_m8n8_x4_shared_b16(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, unsigned addr,
                                                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    unsigned r[4];
    lms_ldmatrix<4, false>(r, addr, "ldmatrix.sync.aligned.m8n8.x4.shared.b16", file, line);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
static inline void ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, unsigned addr,
                                                                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    unsigned r[4];
    lms_ldmatrix<4, true>(r, addr, "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16", file, line);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}

// cp.async.cg.shared.global [dst], [src], cp-size{, src-size}: cp-size (16 for .cg) bytes to shared
// memory, the first src-size of them (all when absent; at most cp-size) read from global memory at src,
// the rest zeros; both addresses cp-size aligned. The copy is queued (the thread's pending cp.async
// operations, in the group the next commit_group closes) and done by the wait_group / wait_all that
// covers it, or at the thread's exit: one legal timing of an asynchronous copy, under which reading the
// destination before the wait sees the bytes that were there before.
static inline void cp_async_cg_shared_global(unsigned dst, const void* src, int cp_size, unsigned src_size = ~0u,
                                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    if (cp_size != 16) lms_rt->trap(file, line, "cp.async.cg with a cp-size other than 16");
    LMS_COMPILER_BARRIER();
    lms_rt->cp_async(dst, src, 16, src_size == ~0u ? 16u : src_size, "cp.async.cg.shared.global", file, line);
    LMS_COMPILER_BARRIER();
}
// cp.async.commit_group: the thread's uncommitted cp.async operations become one group.
static inline void cp_async_commit_group() {
    LMS_COMPILER_BARRIER();
    lms_rt->cp_async_commit();
    LMS_COMPILER_BARRIER();
}
// cp.async.wait_group N: every committed group but the N most recent is complete (N an immediate >= 0).
static inline void cp_async_wait_group(int n, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    if (n < 0) lms_rt->trap(file, line, "cp.async.wait_group with a negative count");
    LMS_COMPILER_BARRIER();
    lms_rt->cp_async_wait(n, file, line);
    LMS_COMPILER_BARRIER();
}
// cp.async.wait_all: commit_group, then wait_group 0.
static inline void cp_async_wait_all(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    LMS_COMPILER_BARRIER();
    lms_rt->cp_async_wait(-1, file, line);
    LMS_COMPILER_BARRIER();
}

}  // namespace lms_ptx

// ------------------------------------------------------------------------------------------------------
// The registration table the front end appends: LMS_KERNEL(name, max_threads) per extern "C" __global__.
namespace lms_simt {
template <typename... A, size_t... I>
static inline void call_unpacked(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}
template <auto F> struct Entry;
template <typename... A, void (*F)(A...)>
struct Entry<F> {
    static void invoke(void** args) { call_unpacked(F, args, std::index_sequence_for<A...>{}); }
    static constexpr unsigned count = sizeof...(A);
    static constexpr ParamInfo params[sizeof...(A) + 1] = {{(unsigned)sizeof(A), std::is_pointer<A>::value}..., {0, 0}};
};
static constexpr unsigned first_of(unsigned a, unsigned = 0, unsigned = 0) { return a; }
}  // namespace lms_simt
#define LMS_KERNEL(f, max_threads) \
    {#f, &lms_simt::Entry<&f>::invoke, lms_simt::Entry<&f>::count, lms_simt::Entry<&f>::params, max_threads}
#endif  // LMS_SIMT_ABI_ONLY
