// simt.cpp: the stand-in's SIMT executor. Runs a kernel launch block by block; the threads of a block are
// cooperative fibers on one OS thread, switched only at sync points (barriers, warp shuffles and votes), in
// the order a Schedule picks. Blocks are spread over `workers` OS threads.
//
// What it checks, each failure a message naming the kernel, block, thread(s) and the file:line of the sync
// points involved:
//   - a warp operation is a rendezvous of exactly the lanes in its mask, all at the same operation (same
//     file:line, same mask); a lane of the mask that is at a block barrier, at another warp operation, or
//     has exited, is divergence (on a GPU: undefined behaviour or a hang);
//   - __syncthreads() is reached by every thread of the block at the same file:line; a thread that exits
//     while others wait at a barrier, or a barrier reached after some thread exited, is an error;
//   - no runnable thread left while some have not finished: a deadlock, reported with where each one waits;
//   - the tensor-core instructions' warp exchange (mma, ldmatrix) is a rendezvous of all 32 lanes at the
//     same instruction, checked like a shuffle; shared-window addresses (ldmatrix, cp.async) must lie in the
//     block's static or dynamic shared memory and be aligned; cp.async sources must lie in a device
//     allocation;
//   - memory faults (guard pages around device allocations, dynamic shared memory and fiber stacks) are
//     caught by a SIGSEGV/SIGBUS handler and reported with the address described by the driver and, where
//     addr2line can tell, the kernel source line; SIGFPE (an integer division by zero) likewise.
#include "exec.h"
#include "sim.h"

#include <dlfcn.h>
#include <link.h>
#include <signal.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>

extern "C" void lms_fiber_switch(void** save_sp, void* load_sp);
extern "C" void lms_fiber_start();

namespace cusim {
namespace {

using lms_simt::Dim3;
using lms_simt::kStackBytes;
using lms_simt::Thread;

constexpr size_t kPage = 4096;
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kSmemCapacity = 256 * 1024;  // > the 227 KB opt-in maximum of sm_90

enum class State { Runnable, AtBarrier, AtWarp, Done };

struct Site {
    const char* file = "?";
    int line = 0;
};

const char* op_name(int op) {
    switch (op) {
        case lms_simt::kShflIdx: return "__shfl_sync";
        case lms_simt::kShflUp: return "__shfl_up_sync";
        case lms_simt::kShflDown: return "__shfl_down_sync";
        case lms_simt::kShflBfly: return "__shfl_xor_sync";
        case lms_simt::kBallot: return "__ballot_sync";
        case lms_simt::kAny: return "__any_sync";
        case lms_simt::kAll: return "__all_sync";
        case lms_simt::kSyncWarp: return "__syncwarp";
        case lms_simt::kExchange: return "warp exchange";
    }
    return "warp operation";
}

struct Fiber {
    void* sp = nullptr;
    State state = State::Runnable;
    Site site;         // where it waits (or exited)
    int op = -1;       // warp op it waits at
    unsigned mask = 0;
    unsigned value = 0, b = 0, c = 0;  // its warp-op operands
    unsigned result = 0;
    const char* name = "";      // the warp op's name in messages (op_name, or the instruction of an exchange)
    const void* xin = nullptr;  // an exchange's deposit and where the 32 deposits go
    void* xout = nullptr;
};

// A cp.async copy not yet done: `bytes` bytes to dst, the first src_bytes from src, the rest zeros.
struct CpAsync {
    char* dst;
    const char* src;
    unsigned bytes, src_bytes;
    unsigned group;  // the commit_group count of its thread when it was issued: the group it belongs to
};

// A warp operation some lanes have reached and others have not yet.
struct WarpGroup {
    int op = 0;
    unsigned mask = 0, arrived = 0;
    Site site;
    const char* name = "";
    unsigned bytes = 0;  // an exchange's deposit size
};

// The open warp operations of one warp: several at once when their masks are disjoint (two half-warps
// shuffling independently is legal since Volta), usually one.
struct Warp {
    WarpGroup groups[32];
    unsigned count = 0;
    WarpGroup* group_of(unsigned lane) {
        for (unsigned i = 0; i < count; ++i)
            if (groups[i].mask >> lane & 1) return &groups[i];
        return nullptr;
    }
    void close(WarpGroup* g) { *g = groups[--count]; }
};

// Everything one OS worker needs to run blocks: fiber stacks, the dynamic shared-memory window, the
// per-block scheduling state, and the jump buffer the fault handler returns through.
struct Worker {
    char* stacks = nullptr;  // kMaxThreads stacks of kStackBytes, each aligned to kStackBytes
    char* smem_end = nullptr;  // the first byte of the guard page after the dynamic shared-memory window
    char* smem = nullptr;      // the current block's dynamic shared memory
    char* alt_stack = nullptr;
    void* sched_sp = nullptr;

    const Launch* launch = nullptr;
    Dim3 block_idx{};
    unsigned n = 0;  // threads in the block
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<unsigned char> gathered;  // the 32 deposits of the exchange being completed (one warp at a time)
    unsigned cur = 0;
    uint64_t runnable[kMaxThreads / 64] = {};
    unsigned at_barrier = 0, done = 0;
    Site barrier_site;
    uint64_t rng = 0;
    std::string error;
    // cp.async: each thread's pending copies and how many groups it has committed.
    std::vector<CpAsync> cp_pending[kMaxThreads];
    unsigned cp_groups[kMaxThreads] = {};
    // Static __shared__ memory: the module's thread-local block on this worker ([lo, hi); found on first
    // use in a block, lo == 0 until then or when the module has none).
    uintptr_t static_lo = 0, static_hi = 0;

    volatile sig_atomic_t in_kernel = 0;
    sigjmp_buf jmp;
    uintptr_t fault_addr = 0, fault_pc = 0;
    int fault_sig = 0;

    Worker();
    Thread* record(unsigned t) const {
        const uintptr_t base = (uintptr_t)stacks + (size_t)t * kStackBytes;
        return (Thread*)(base + lms_simt::record_offset(base));
    }
    void set_runnable(unsigned t, bool on) {
        if (on)
            runnable[t >> 6] |= 1ull << (t & 63);
        else
            runnable[t >> 6] &= ~(1ull << (t & 63));
    }
};

thread_local Worker* tl_worker = nullptr;

// Whether the last failure of run_grid was a memory fault (see last_failure_was_fault).
std::atomic<bool> g_last_was_fault{false};

Worker& worker() {
    if (!tl_worker) tl_worker = new Worker();  // lives as long as its thread; the pool threads never exit
    return *tl_worker;
}

Worker::Worker() {
    // Stacks: [Thread record page][guard page][stack growing down to the record's guard].
    const size_t bytes = kMaxThreads * kStackBytes + kStackBytes;
    char* raw = (char*)mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) {
        perror("cuda-sim: mmap of fiber stacks");
        abort();
    }
    stacks = (char*)(((uintptr_t)raw + kStackBytes - 1) & ~(uintptr_t)(kStackBytes - 1));
    for (unsigned t = 0; t < kMaxThreads; ++t) mprotect(stacks + (size_t)t * kStackBytes + kPage, kPage, PROT_NONE);
    // Dynamic shared memory: a window that ends at a guard page, so a block's buffer can end exactly there.
    char* s = (char*)mmap(nullptr, kSmemCapacity + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) {
        perror("cuda-sim: mmap of shared memory");
        abort();
    }
    smem_end = s + kSmemCapacity;
    mprotect(smem_end, kPage, PROT_NONE);
    // The fault handler runs on its own stack (a fiber's may be the one that overflowed).
    alt_stack = (char*)mmap(nullptr, 64 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    stack_t ss{};
    ss.ss_sp = alt_stack;
    ss.ss_size = 64 * 1024;
    sigaltstack(&ss, nullptr);
    fibers.resize(kMaxThreads);
    warps.resize(kMaxThreads / 32);
    gathered.resize(32 * lms_simt::kExchangeBytes);
}

// ---- messages ---------------------------------------------------------------------------------------

std::string fmt_dim(const Dim3& d) {
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

std::string hex(unsigned v) {
    char b[16];
    snprintf(b, sizeof b, "0x%08x", v);
    return b;
}

std::string where(const Site& s) { return std::string(s.file) + ":" + std::to_string(s.line); }

std::string position(const Fiber& f) {
    switch (f.state) {
        case State::Runnable: return "running";
        case State::AtBarrier: return "at __syncthreads (" + where(f.site) + ")";
        case State::AtWarp: return "at " + std::string(f.name) + " (" + where(f.site) + ", mask " + hex(f.mask) + ")";
        case State::Done: return "exited";
    }
    return "?";
}

std::string prefix(const Worker& w) {
    return "kernel " + std::string(w.launch->entry->name) + ", block " + fmt_dim(w.block_idx) + ": ";
}

// "threads 0-31 at X; threads 32-63 exited": consecutive threads at the same position share a line.
std::string positions(const Worker& w) {
    std::ostringstream out;
    unsigned start = 0;
    for (unsigned t = 1; t <= w.n; ++t) {
        if (t < w.n && position(w.fibers[t]) == position(w.fibers[start])) continue;
        if (start) out << "; ";
        out << (t - start == 1 ? "thread " + std::to_string(start)
                               : "threads " + std::to_string(start) + "-" + std::to_string(t - 1))
            << " " << position(w.fibers[start]);
        start = t;
    }
    return out.str();
}

// ---- scheduling -------------------------------------------------------------------------------------

[[noreturn, gnu::noinline, gnu::cold]] void fail_and_leave(Worker& w, const std::string& msg) {
    if (w.error.empty()) w.error = prefix(w) + msg;
    Fiber& f = w.fibers[w.cur];
    for (;;) lms_fiber_switch(&f.sp, w.sched_sp);  // the scheduler never resumes a failed block
}

// The failure message is built in a cold, out-of-line lambda: the sync paths stay small and fast.
#define LMS_FAIL(w, ...) [&]() __attribute__((noinline, cold, noreturn)) { fail_and_leave(w, __VA_ARGS__); }()

int next_runnable(Worker& w);

// The current fiber stops (its state already says why): hand the OS thread straight to the next runnable
// fiber the schedule picks, or back to the scheduler when there is none (finished, or a deadlock).
void yield(Worker& w) {
    Fiber& me = w.fibers[w.cur];
    const int next = next_runnable(w);
    if (next < 0) {
        lms_fiber_switch(&me.sp, w.sched_sp);
        return;
    }
    w.cur = (unsigned)next;
    lms_fiber_switch(&me.sp, w.fibers[next].sp);
}

// The executor state of the calling fiber, from its Thread record (no thread-local lookup).
inline Worker& current_worker() {
    const uintptr_t base = (uintptr_t)__builtin_frame_address(0) & ~(uintptr_t)(kStackBytes - 1);
    return *(Worker*)((Thread*)(base + lms_simt::record_offset(base)))->worker;
}

int next_runnable(Worker& w) {
    const unsigned words = (w.n + 63) / 64;
    auto first_from = [&](unsigned from) -> int {  // first runnable >= from, cyclically
        unsigned wi = from / 64;
        uint64_t bits = w.runnable[wi] & (~0ull << (from % 64));
        for (unsigned i = 0; i <= words; ++i) {  // words + 1 visits: the starting word's low bits come last
            if (bits) return (int)(wi * 64 + __builtin_ctzll(bits));
            wi = wi + 1 == words ? 0 : wi + 1;
            bits = w.runnable[wi];
        }
        return -1;
    };
    switch (w.launch->schedule.kind) {
        case ScheduleKind::Forward: return first_from(w.cur + 1 == w.n ? 0 : w.cur + 1);
        case ScheduleKind::Greedy: return first_from(0);
        case ScheduleKind::Shuffle: {
            w.rng = w.rng * 6364136223846793005ull + 1442695040888963407ull;
            return first_from((unsigned)((w.rng >> 33) % w.n));
        }
        case ScheduleKind::Reverse: {  // last runnable < cur, cyclically
            unsigned wi = w.cur / 64;
            uint64_t bits = w.runnable[wi] & ((1ull << (w.cur % 64)) - 1);
            for (unsigned i = 0; i <= words; ++i) {
                if (bits) return (int)(wi * 64 + 63 - __builtin_clzll(bits));
                wi = wi == 0 ? words - 1 : wi - 1;
                bits = w.runnable[wi];
            }
            return -1;
        }
    }
    return -1;
}

void cp_async_complete(Worker& w, unsigned t, unsigned groups);

void fiber_main(void* arg) {
    Worker& w = *(Worker*)arg;
    w.launch->entry->invoke(w.launch->args);
    cp_async_complete(w, w.cur, ~0u);  // copies still in flight land in shared memory nobody reads any more
    // The thread has exited: nobody may be waiting for it.
    Fiber& f = w.fibers[w.cur];
    const unsigned lane = w.cur % 32, warp = w.cur / 32;
    if (const WarpGroup* g = w.warps[warp].group_of(lane))
        LMS_FAIL(w, "thread " + std::to_string(w.cur) + " exited while lanes of its warp wait for it at " +
                              g->name + " (" + where(g->site) + ", mask " + hex(g->mask) + "); " + positions(w));
    if (w.at_barrier)
        LMS_FAIL(w, "thread " + std::to_string(w.cur) + " exited while threads wait at __syncthreads (" +
                              where(w.barrier_site) + "): " + positions(w));
    f.state = State::Done;
    f.site = Site{"exit", 0};
    w.set_runnable(w.cur, false);
    ++w.done;
    for (;;) yield(w);  // never resumed
}

// Prepare thread t's stack so the first switch to it enters fiber_main(&w) through lms_fiber_start: the
// six callee-saved registers lms_fiber_switch pops (r15 first), then the return address, leaving the
// stack 16-byte aligned at lms_fiber_start's call as the ABI wants.
void init_fiber(Worker& w, unsigned t) {
    // Stack tops staggered by 64-byte lines over 64 KB, for the same cache-set reason as record_offset.
    char* top = w.stacks + (size_t)(t + 1) * kStackBytes - (t * 17 % 1024) * 64;
    uint64_t* sp = (uint64_t*)(top - 72);
    sp[0] = 0;                                  // r15
    sp[1] = 0;                                  // r14
    sp[2] = (uint64_t)(void*)&fiber_main;       // r13: entry
    sp[3] = (uint64_t)(void*)&w;                // r12: argument
    sp[4] = 0;                                  // rbx
    sp[5] = 0;                                  // rbp
    sp[6] = (uint64_t)(void*)&lms_fiber_start;  // return address of the first switch
    w.fibers[t] = Fiber{};
    w.fibers[t].sp = sp;
}

// ---- the Runtime callbacks ----------------------------------------------------------------------------

void rt_syncthreads(const char* file, int line) {
    Worker& w = current_worker();
    Fiber& f = w.fibers[w.cur];
    const Site site{file, line};
    const unsigned lane = w.cur % 32;
    if (const WarpGroup* g = w.warps[w.cur / 32].group_of(lane))
        LMS_FAIL(w, "thread " + std::to_string(w.cur) + " reached __syncthreads (" + where(site) +
                              ") while lanes of its warp wait for it at " + g->name + " (" + where(g->site) + "); " +
                              positions(w));
    if (w.done)
        LMS_FAIL(w, "thread " + std::to_string(w.cur) + " reached __syncthreads (" + where(site) +
                              ") after threads of the block exited: " + positions(w));
    if (w.at_barrier && (strcmp(w.barrier_site.file, file) != 0 || w.barrier_site.line != line))
        LMS_FAIL(w, "divergent barriers: thread " + std::to_string(w.cur) + " at __syncthreads (" + where(site) +
                              ") while others wait at __syncthreads (" + where(w.barrier_site) + "): " + positions(w));
    if (w.at_barrier == 0) w.barrier_site = site;
    ++w.at_barrier;
    if (w.at_barrier == w.n) {  // the last one in releases everybody and runs on
        for (unsigned t = 0; t < w.n; ++t) {
            if (w.fibers[t].state == State::AtBarrier) {
                w.fibers[t].state = State::Runnable;
                w.set_runnable(t, true);
            }
        }
        w.at_barrier = 0;
        return;
    }
    f.state = State::AtBarrier;
    f.site = site;
    w.set_runnable(w.cur, false);
    yield(w);
}

// PTX shfl.sync: which lane's value lane `lane` reads, or -1 for its own (pval false).
int shfl_source(int op, unsigned lane, unsigned b, unsigned c) {
    const unsigned bval = b & 0x1f, cval = c & 0x1f, segmask = (c >> 8) & 0x1f;
    const int max_lane = (int)((lane & segmask) | (cval & ~segmask));
    const int min_lane = (int)(lane & segmask);
    int j = 0;
    bool pval = false;
    switch (op) {
        case lms_simt::kShflUp: j = (int)lane - (int)bval; pval = j >= max_lane; break;
        case lms_simt::kShflDown: j = (int)lane + (int)bval; pval = j <= max_lane; break;
        case lms_simt::kShflBfly: j = (int)(lane ^ bval); pval = j <= max_lane; break;
        default: j = min_lane | (int)(bval & ~segmask); pval = j <= max_lane; break;
    }
    return pval ? j : (int)lane;
}

// All lanes of group g have arrived: compute every lane's result.
void complete(Worker& w, unsigned warp, const WarpGroup& g) {
    Fiber* lanes = &w.fibers[warp * 32];
    if (g.op == lms_simt::kExchange) {  // gather the deposits once, then hand every lane all 32
        unsigned char* all = w.gathered.data();
        for (unsigned l = 0; l < 32; ++l) {
            if (g.mask >> l & 1)
                memcpy(all + l * g.bytes, lanes[l].xin, g.bytes);
            else
                memset(all + l * g.bytes, 0, g.bytes);
        }
        for (unsigned l = 0; l < 32; ++l)
            if (g.mask >> l & 1) memcpy(lanes[l].xout, all, 32 * g.bytes);
        return;
    }
    unsigned vote = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (g.mask >> l & 1 && lanes[l].value) vote |= 1u << l;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(g.mask >> l & 1)) continue;
        Fiber& f = lanes[l];
        switch (g.op) {
            case lms_simt::kBallot: f.result = vote; break;
            case lms_simt::kAny: f.result = vote != 0; break;
            case lms_simt::kAll: f.result = vote == g.mask; break;
            case lms_simt::kSyncWarp: f.result = 0; break;
            default: {
                const int j = shfl_source(g.op, l, f.b, f.c);
                if (!(g.mask >> j & 1)) {
                    w.cur = warp * 32 + l;
                    LMS_FAIL(w, "lane " + std::to_string(l) + " of warp " + std::to_string(warp) + " at " +
                                          g.name + " (" + where(g.site) + ") reads lane " + std::to_string(j) +
                                          ", which is not in the mask " + hex(g.mask) + " (undefined in PTX shfl.sync)");
                }
                f.result = lanes[j].value;
            }
        }
    }
}

// Lane w.cur joins its warp's open operation (op, name, mask, bytes, site), or opens it, after checking that
// this is no divergence; returns the group. The caller then records its operands and calls arrive().
[[gnu::always_inline]] inline WarpGroup* join(Worker& w, int op, const char* name, unsigned mask, unsigned bytes, const Site& site) {
    const unsigned me = w.cur, lane = me % 32, warp = me / 32;
    auto here = [&] { return std::string(name) + " (" + where(site) + ", mask " + hex(mask) + ")"; };
    if (!(mask >> lane & 1))
        LMS_FAIL(w, "lane " + std::to_string(lane) + " of warp " + std::to_string(warp) + " calls " + here() +
                              " with a mask that does not include itself");
    const unsigned warp_lanes = std::min(32u, w.n - warp * 32);
    const unsigned exists = warp_lanes == 32 ? 0xffffffffu : (1u << warp_lanes) - 1;
    if (mask & ~exists) {
        if (op == lms_simt::kExchange)
            LMS_FAIL(w, "lane " + std::to_string(lane) + " of warp " + std::to_string(warp) + " executes " + here() +
                                  ", which needs all 32 lanes of the warp (.sync.aligned), but the block's " + std::to_string(w.n) +
                                  " threads give warp " + std::to_string(warp) + " only " + std::to_string(warp_lanes));
        LMS_FAIL(w, "lane " + std::to_string(lane) + " of warp " + std::to_string(warp) + " calls " + here() +
                              ": the mask names lanes past the block's " + std::to_string(w.n) + " threads");
    }
    Warp& wp = w.warps[warp];
    WarpGroup* gp = wp.group_of(lane);
    if (gp) {
        const WarpGroup& g = *gp;
        const bool same_site = g.site.line == site.line && (g.site.file == site.file || strcmp(g.site.file, site.file) == 0);
        const bool same_op = g.op == op && (op != lms_simt::kExchange || (g.bytes == bytes && strcmp(g.name, name) == 0));
        if (!same_op || g.mask != mask || (!same_site && op != lms_simt::kSyncWarp))
            LMS_FAIL(w, "divergent warp " + std::to_string(warp) + ": lane " + std::to_string(lane) + " at " + here() +
                                  " while lanes wait at " + g.name + " (" + where(g.site) + ", mask " + hex(g.mask) +
                                  "); " + positions(w));
    } else {
        for (unsigned i = 0; i < wp.count; ++i) {  // a new group must not claim lanes another one waits for
            const WarpGroup& o = wp.groups[i];
            if (o.mask & mask)
                LMS_FAIL(w, "divergent warp " + std::to_string(warp) + ": lane " + std::to_string(lane) + " at " + here() +
                                      ", whose mask overlaps lanes waiting at " + o.name + " (" + where(o.site) +
                                      ", mask " + hex(o.mask) + "); " + positions(w));
        }
        gp = &wp.groups[wp.count++];
        *gp = WarpGroup{op, mask, 0, site, name, bytes};
        // Every other lane of the mask must be able to come: not at a barrier, not exited. (A lane that goes
        // to a barrier or exits later is caught there, by rt_syncthreads and fiber_main.)
        for (unsigned l = 0; l < 32; ++l) {
            if (!(mask >> l & 1) || l == lane) continue;
            const Fiber& o = w.fibers[warp * 32 + l];
            if (o.state == State::AtBarrier || o.state == State::Done)
                LMS_FAIL(w, "divergent warp " + std::to_string(warp) + ": lane " + std::to_string(lane) + " at " + here() +
                                      " waits for lane " + std::to_string(l) + ", which is " + position(o) + "; " + positions(w));
        }
    }
    Fiber& f = w.fibers[me];
    f.op = op;
    f.name = name;
    f.mask = mask;
    f.site = site;
    return gp;
}

// Lane w.cur has arrived at group gp: the last lane in completes the operation and runs on; the others wait.
[[gnu::always_inline]] inline void arrive(Worker& w, WarpGroup* gp) {
    const unsigned me = w.cur, lane = me % 32, warp = me / 32, mask = gp->mask;
    Warp& wp = w.warps[warp];
    gp->arrived |= 1u << lane;
    if (gp->arrived == mask) {
        complete(w, warp, *gp);
        wp.close(gp);
        for (unsigned l = 0; l < 32; ++l) {
            if (!(mask >> l & 1) || l == lane) continue;
            w.fibers[warp * 32 + l].state = State::Runnable;
            w.set_runnable(warp * 32 + l, true);
        }
        // A lane alone in its mask (a spin loop on __syncwarp(1u << lane)) lets the others run.
        if (mask == 1u << lane) yield(w);
        return;
    }
    w.fibers[me].state = State::AtWarp;
    w.set_runnable(me, false);
    yield(w);
}

unsigned rt_warp(int op, unsigned mask, unsigned value, unsigned b, unsigned c, const char* file, int line) {
    Worker& w = current_worker();
    WarpGroup* gp = join(w, op, op_name(op), mask, 0, Site{file, line});
    Fiber& f = w.fibers[w.cur];
    f.value = value;
    f.b = b;
    f.c = c;
    arrive(w, gp);
    return w.fibers[w.cur].result;
}

void rt_exchange(unsigned mask, const void* in, void* out, unsigned bytes, const char* what, const char* file, int line) {
    Worker& w = current_worker();
    if (bytes > lms_simt::kExchangeBytes)
        LMS_FAIL(w, "thread " + std::to_string(w.cur) + ": " + what + " (" + file + ":" + std::to_string(line) + ") exchanges " +
                              std::to_string(bytes) + " bytes per lane, more than the stand-in's " +
                              std::to_string(lms_simt::kExchangeBytes));
    WarpGroup* gp = join(w, lms_simt::kExchange, what, mask, bytes, Site{file, line});
    Fiber& f = w.fibers[w.cur];
    f.xin = in;
    f.xout = out;
    arrive(w, gp);
}

// ---- shared-window addresses and cp.async ---------------------------------------------------------------

struct TlsQuery {
    uintptr_t pc;
    uintptr_t lo = 0, hi = 0;
};

int find_tls(struct dl_phdr_info* info, size_t, void* data) {
    TlsQuery& q = *(TlsQuery*)data;
    bool holds_pc = false;
    size_t tls_bytes = 0;
    for (unsigned i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        const uintptr_t start = info->dlpi_addr + ph.p_vaddr;
        if (ph.p_type == PT_LOAD && q.pc >= start && q.pc < start + ph.p_memsz) holds_pc = true;
        if (ph.p_type == PT_TLS) tls_bytes = ph.p_memsz;
    }
    if (!holds_pc) return 0;
    if (info->dlpi_tls_data && tls_bytes) {  // this OS thread's copy of the module's thread-local block
        q.lo = (uintptr_t)info->dlpi_tls_data;
        q.hi = q.lo + tls_bytes;
    }
    return 1;
}

// The static __shared__ variables of the running kernel's module on this worker: its thread-local block
// (simt.h makes __shared__ `static thread_local`; nothing else in a module is thread-local).
void static_shared(Worker& w, uintptr_t& lo, uintptr_t& hi) {
    if (!w.static_lo) {
        TlsQuery q{(uintptr_t)(void*)w.launch->entry->invoke};
        dl_iterate_phdr(find_tls, &q);
        w.static_lo = q.lo;
        w.static_hi = q.hi;
    }
    lo = w.static_lo;
    hi = w.static_hi;
}

uintptr_t window_base(const Worker& w) { return (uintptr_t)w.smem_end - lms_simt::kSmemWindow; }

unsigned rt_smem_addr(const void* p, const char* file, int line) {
    Worker& w = current_worker();
    const uintptr_t a = (uintptr_t)p;
    const uintptr_t dyn = (uintptr_t)w.smem;
    if (a >= dyn && a <= dyn + w.launch->dyn_smem) return (unsigned)(a - window_base(w));
    uintptr_t lo, hi;
    static_shared(w, lo, hi);
    if (lo && a >= lo && a <= hi) return lms_simt::kSmemStatic + (unsigned)(a - lo);
    return lms_simt::kSmemNowhere;  // not shared memory: any access through it fails (undefined in PTX)
}

std::string hex_addr(uintptr_t v) {
    char b[32];
    snprintf(b, sizeof b, "0x%lx", (unsigned long)v);
    return b;
}

// The host address of [addr, addr + bytes) of the block's shared memory, or "" in `why`.
char* resolve_smem(Worker& w, unsigned addr, unsigned bytes, std::string& why) {
    const uint64_t end = (uint64_t)addr + bytes;
    const uintptr_t dyn = (uintptr_t)w.smem;
    const uint64_t dyn_lo = dyn - window_base(w), dyn_hi = dyn_lo + w.launch->dyn_smem;
    if (addr < lms_simt::kSmemStatic) {  // the dynamic window (and past its end)
        if (addr >= dyn_lo && end <= dyn_hi) return (char*)(window_base(w) + addr);
        why = addr >= dyn_lo ? "byte " + std::to_string(addr - dyn_lo) + " of the block's " + std::to_string(w.launch->dyn_smem) +
                                   " bytes of dynamic shared memory (past its end)"
                             : "before the start of the block's dynamic shared memory";
        return nullptr;
    }
    uintptr_t lo, hi;
    static_shared(w, lo, hi);
    if (addr >= lms_simt::kSmemStatic && addr < lms_simt::kSmemNowhere && lo) {
        const uint64_t off = addr - lms_simt::kSmemStatic;
        if (end - lms_simt::kSmemStatic <= hi - lo) return (char*)(lo + off);
        why = "byte " + std::to_string(off) + " of the module's " + std::to_string(hi - lo) + " bytes of static shared memory (past its end)";
        return nullptr;
    }
    why = addr >= lms_simt::kSmemNowhere ? "an address converted from a generic address outside shared memory"
                                         : "not in the block's shared memory";
    return nullptr;
}

[[noreturn, gnu::noinline, gnu::cold]] void smem_fail(Worker& w, unsigned addr, unsigned bytes, const char* what, const char* file,
                                                     int line, const std::string& why) {
    g_last_was_fault = true;
    fail_and_leave(w, "thread " + std::to_string(w.cur) + " " + fmt_dim(w.record(w.cur)->thread_idx) + ": " + what + " at " + file + ":" +
                          std::to_string(line) + ": shared address " + hex_addr(addr) + " (" + std::to_string(bytes) + " bytes): " + why);
}

void* rt_smem_ptr(unsigned addr, unsigned bytes, unsigned align, const char* what, const char* file, int line) {
    Worker& w = current_worker();
    std::string why;
    char* p = resolve_smem(w, addr, bytes, why);
    if (!p) smem_fail(w, addr, bytes, what, file, line, why);
    if (align > 1 && (uintptr_t)p % align)
        smem_fail(w, addr, bytes, what, file, line, "not " + std::to_string(align) + "-byte aligned (misaligned address)");
    return p;
}

void rt_cp_async(unsigned dst, const void* src, unsigned bytes, unsigned src_bytes, const char* what, const char* file, int line) {
    Worker& w = current_worker();
    char* d = (char*)rt_smem_ptr(dst, bytes, bytes, what, file, line);
    auto fail = [&](const std::string& why) __attribute__((noinline, cold, noreturn)) {
        g_last_was_fault = true;
        fail_and_leave(w, "thread " + std::to_string(w.cur) + " " + fmt_dim(w.record(w.cur)->thread_idx) + ": " + what + " at " + file +
                              ":" + std::to_string(line) + ": " + why);
    };
    if (src_bytes > bytes)
        fail("src-size " + std::to_string(src_bytes) + " is larger than cp-size " + std::to_string(bytes) + " (undefined in PTX)");
    if (src_bytes > 0) {
        if ((uintptr_t)src % bytes)
            fail("global source " + hex_addr((uintptr_t)src) + " is not " + std::to_string(bytes) + "-byte aligned (misaligned address)");
        char why[512];
        if (lms_sim_check_range(src, src_bytes, why, sizeof why)) fail(std::string("global source: ") + why);
    }
    w.cp_pending[w.cur].push_back(CpAsync{d, (const char*)src, bytes, src_bytes, w.cp_groups[w.cur]});
}

void rt_cp_async_commit() {
    Worker& w = current_worker();
    ++w.cp_groups[w.cur];
}

// Do thread t's pending copies of the groups before `groups` (~0u: all of them, committed or not), in order.
void cp_async_complete(Worker& w, unsigned t, unsigned groups) {
    std::vector<CpAsync>& q = w.cp_pending[t];
    size_t kept = 0;
    for (size_t i = 0; i < q.size(); ++i) {
        const CpAsync& c = q[i];
        if (groups != ~0u && c.group >= groups) {
            q[kept++] = c;
            continue;
        }
        memcpy(c.dst, c.src, c.src_bytes);
        memset(c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
    q.resize(kept);
}

void rt_cp_async_wait(int pending, const char* file, int line) {
    Worker& w = current_worker();
    const unsigned t = w.cur;
    if (pending < 0) {  // wait_all: commit, then wait for everything
        ++w.cp_groups[t];
        cp_async_complete(w, t, ~0u);
        return;
    }
    const unsigned n = (unsigned)pending;
    if (w.cp_groups[t] > n) cp_async_complete(w, t, w.cp_groups[t] - n);
}

[[noreturn]] void rt_trap(const char* file, int line, const char* what) {
    Worker& w = current_worker();
    LMS_FAIL(w, "thread " + std::to_string(w.cur) + " executed " + what + " at " + file + ":" + std::to_string(line));
}

const lms_simt::Runtime kRuntime = {rt_syncthreads, rt_warp,     rt_trap,           rt_exchange,     rt_smem_addr,
                                    rt_smem_ptr,    rt_cp_async, rt_cp_async_commit, rt_cp_async_wait};

// ---- faults -------------------------------------------------------------------------------------------

struct sigaction old_segv, old_bus, old_fpe;

void on_fault(int sig, siginfo_t* info, void* uctx) {
    Worker* w = tl_worker;
    if (!w || !w->in_kernel) {  // not ours: let the previous disposition have it
        struct sigaction* old = sig == SIGSEGV ? &old_segv : sig == SIGBUS ? &old_bus : &old_fpe;
        sigaction(sig, old, nullptr);
        return;  // the instruction faults again, now under the old handler
    }
    w->fault_sig = sig;
    w->fault_addr = (uintptr_t)info->si_addr;
    w->fault_pc = (uintptr_t)((ucontext_t*)uctx)->uc_mcontext.gregs[REG_RIP];
    siglongjmp(w->jmp, 1);
}

void install_handlers() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa{};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &old_segv);
        sigaction(SIGBUS, &sa, &old_bus);
        sigaction(SIGFPE, &sa, &old_fpe);
    });
}

// "attention.cu:123" for a program counter inside a loaded kernel module (addr2line on the module file).
std::string source_line(uintptr_t pc) {
    Dl_info info{};
    if (!dladdr((void*)pc, &info) || !info.dli_fname) return "";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "addr2line -e '%s' 0x%lx 2>/dev/null", info.dli_fname,
             (unsigned long)(pc - (uintptr_t)info.dli_fbase));
    FILE* p = popen(cmd, "r");
    if (!p) return "";
    char line[512] = {0};
    const bool got = fgets(line, sizeof line, p) != nullptr;
    pclose(p);
    std::string s = got ? std::string(line) : "";
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    if (s.empty() || s[0] == '?') return "";
    const size_t slash = s.rfind('/');
    return slash == std::string::npos ? s : s.substr(slash + 1);
}

std::string describe_fault(Worker& w) {
    std::string what;
    const uintptr_t a = w.fault_addr;
    const uintptr_t smem_lo = (uintptr_t)w.smem_end - kSmemCapacity, smem_hi = (uintptr_t)w.smem_end;
    const uintptr_t st_lo = (uintptr_t)w.stacks, st_hi = st_lo + (size_t)kMaxThreads * kStackBytes;
    if (w.fault_sig == SIGFPE) {
        what = "arithmetic exception (integer division by zero)";
    } else if (a >= smem_hi && a < smem_hi + kPage) {
        what = "shared memory access at byte " + std::to_string(a - (uintptr_t)w.smem) +
               " of the block's " + std::to_string(w.launch->dyn_smem) + " bytes of dynamic shared memory (past its end)";
    } else if (a >= smem_lo && a < smem_hi) {
        what = "shared memory access before the start of the block's dynamic shared memory";
    } else if (a >= st_lo && a < st_hi) {
        what = "stack overflow of a CUDA thread (its " + std::to_string(kStackBytes / 1024) + " KB fiber stack)";
    } else {
        what = "illegal memory access at 0x" + [&] {
            char b[32];
            snprintf(b, sizeof b, "%lx", (unsigned long)a);
            return std::string(b);
        }() + ": " + describe_address(a);
    }
    const std::string src = source_line(w.fault_pc);
    return prefix(w) + "thread " + std::to_string(w.cur) + " " + fmt_dim(w.record(w.cur)->thread_idx) + ": " + what +
           (src.empty() ? "" : " (at " + src + ")");
}

// ---- blocks and grids -----------------------------------------------------------------------------------

// Run one block to completion. "" or the failure.
std::string run_block(Worker& w, const Launch& L, Dim3 bidx, unsigned block_linear) {
    w.launch = &L;
    w.block_idx = bidx;
    w.n = L.block.x * L.block.y * L.block.z;
    w.error.clear();
    w.at_barrier = 0;
    w.done = 0;
    w.rng = L.schedule.seed * 0x9e3779b97f4a7c15ull + block_linear + 1;
    std::fill(std::begin(w.runnable), std::end(w.runnable), 0);
    for (auto& wp : w.warps) wp.count = 0;
    for (unsigned t = 0; t < w.n; ++t) {
        w.cp_pending[t].clear();
        w.cp_groups[t] = 0;
    }
    w.static_lo = w.static_hi = 0;

    // Dynamic shared memory: exactly the launch's size, ending at the guard page (rounded down to 16 bytes
    // for alignment; the <16 slack bytes are checked after the block), filled with NaN bytes.
    char* smem = (char*)(((uintptr_t)w.smem_end - L.dyn_smem) & ~(uintptr_t)15);
    memset(smem, 0xff, (size_t)(w.smem_end - smem));
    w.smem = smem;

    for (unsigned t = 0; t < w.n; ++t) {
        Thread* r = w.record(t);
        r->thread_idx = Dim3{t % L.block.x, (t / L.block.x) % L.block.y, t / (L.block.x * L.block.y)};
        r->block_idx = bidx;
        r->block_dim = L.block;
        r->grid_dim = L.grid;
        r->linear = t;
        r->lane = t % 32;
        r->warp = t / 32;
        r->dyn_smem = smem;
        r->worker = &w;
        init_fiber(w, t);
        w.set_runnable(t, true);
    }

    w.cur = w.n - 1;  // so forward order starts at thread 0 and reverse at the last thread
    if (L.schedule.kind == ScheduleKind::Reverse) w.cur = 0;
    if (sigsetjmp(w.jmp, 1)) {
        w.in_kernel = 0;
        g_last_was_fault = true;
        return describe_fault(w);
    }
    w.in_kernel = 1;
    // Fibers hand over to each other (yield); the scheduler gets control back only when none can run.
    for (;;) {
        const int t = next_runnable(w);
        if (t < 0) break;
        w.cur = (unsigned)t;
        lms_fiber_switch(&w.sched_sp, w.fibers[t].sp);
        if (!w.error.empty()) {
            w.in_kernel = 0;
            return w.error;
        }
    }
    w.in_kernel = 0;
    if (w.done != w.n) return prefix(w) + "deadlock: no thread can run; " + positions(w);
    for (char* p = w.smem_end - 1; p >= smem + L.dyn_smem; --p) {
        if ((unsigned char)*p != 0xff) {
            g_last_was_fault = true;
            return prefix(w) + "shared memory written " + std::to_string(p - smem - L.dyn_smem + 1) +
                   " byte(s) past the end of the block's " + std::to_string(L.dyn_smem) + " bytes of dynamic shared memory";
        }
    }
    return "";
}

// A small pool of OS threads that run blocks; the calling thread is worker 0.
struct Pool {
    std::mutex mu;
    std::condition_variable cv, done_cv;
    std::function<void()> job;
    uint64_t generation = 0;
    unsigned started = 0, running = 0;

    void run(unsigned helpers, const std::function<void()>& f) {
        std::unique_lock<std::mutex> lock(mu);
        while (started < helpers) {
            ++started;
            std::thread([this] { loop(); }).detach();
        }
        job = f;
        running = started;  // every pool thread runs the job once; work() returns when no block is left
        ++generation;
        cv.notify_all();
        lock.unlock();
        f();
        lock.lock();
        done_cv.wait(lock, [&] { return running == 0; });
        job = nullptr;
    }

    void loop() {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lock(mu);
        for (;;) {
            cv.wait(lock, [&] { return generation != seen && running > 0; });
            seen = generation;
            auto f = job;
            lock.unlock();
            f();
            lock.lock();
            if (--running == 0) done_cv.notify_all();
        }
    }
};

}  // namespace

std::string Schedule::name() const {
    switch (kind) {
        case ScheduleKind::Forward: return "forward";
        case ScheduleKind::Reverse: return "reverse";
        case ScheduleKind::Greedy: return "greedy";
        case ScheduleKind::Shuffle: return "shuffle:" + std::to_string(seed);
    }
    return "?";
}

std::string parse_schedules(const std::string& spec, std::vector<Schedule>& out) {
    out.clear();
    std::stringstream ss(spec);
    std::string word;
    while (std::getline(ss, word, ',')) {
        if (word.empty()) continue;
        Schedule s;
        if (word == "forward") {
            s.kind = ScheduleKind::Forward;
        } else if (word == "reverse") {
            s.kind = ScheduleKind::Reverse;
        } else if (word == "greedy") {
            s.kind = ScheduleKind::Greedy;
        } else if (word.rfind("shuffle", 0) == 0) {
            s.kind = ScheduleKind::Shuffle;
            s.seed = word.size() > 8 && word[7] == ':' ? strtoull(word.c_str() + 8, nullptr, 10) : 1;
        } else {
            return "unknown schedule '" + word + "' (expected forward, reverse, greedy or shuffle[:SEED])";
        }
        out.push_back(s);
    }
    if (out.empty()) out.push_back(Schedule{});
    return "";
}

std::string run_grid(const Launch& L) {
    install_handlers();
    g_last_was_fault = false;
    const uint64_t blocks = (uint64_t)L.grid.x * L.grid.y * L.grid.z;
    std::atomic<uint64_t> next{0};
    std::mutex err_mu;
    std::string first_error;
    uint64_t first_error_block = UINT64_MAX;
    auto work = [&] {
        Worker& w = worker();
        for (;;) {
            const uint64_t b = next.fetch_add(1);
            if (b >= blocks) return;
            {
                std::lock_guard<std::mutex> lock(err_mu);
                if (!first_error.empty()) return;
            }
            const Dim3 bidx{(unsigned)(b % L.grid.x), (unsigned)(b / L.grid.x % L.grid.y), (unsigned)(b / ((uint64_t)L.grid.x * L.grid.y))};
            std::string e = run_block(w, L, bidx, (unsigned)b);
            if (!e.empty()) {
                std::lock_guard<std::mutex> lock(err_mu);
                if (b < first_error_block) {
                    first_error = e;
                    first_error_block = b;
                }
                return;
            }
        }
    };
    const unsigned helpers = blocks > 1 && L.workers > 1 ? (unsigned)std::min<uint64_t>(L.workers - 1, blocks - 1) : 0;
    if (helpers == 0) {
        work();
    } else {
        // Never destroyed: its threads wait on its condition variable until the process ends, and destroying
        // a condition variable with waiters blocks (glibc) at exit.
        static Pool* pool = new Pool();
        static std::mutex* pool_mu = new std::mutex();  // one grid at a time uses the pool
        std::lock_guard<std::mutex> lock(*pool_mu);
        pool->run(helpers, work);
    }
    return first_error;
}

bool last_failure_was_fault() { return g_last_was_fault; }

const lms_simt::Runtime* runtime() { return &kRuntime; }

}  // namespace cusim
