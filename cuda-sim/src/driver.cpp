// driver.cpp: the stand-in for libcuda.so.1 (the CUDA driver API, the subset cudarc calls), on the CPU.
//
// The device is shaped like an H100 SXM (compute capability 9.0, 132 SMs, 80 GB, 227 KB opt-in shared
// memory per block). What is faithful, and what each piece checks:
//   - device memory is host memory: each allocation is its own mapping with a PROT_NONE guard page on each
//     side, the data placed so that it ends (16-byte aligned) at the back guard page; the bytes between the
//     front guard and the data, and the < 16 bytes after it, are a pad filled with 0xA5 and checked after
//     every launch that received the allocation; the data itself is filled with 0xFF (a NaN in f32, f16 and
//     bf16) so that reading uninitialised memory shows up. Freed memory stays mapped PROT_NONE for a while
//     (use after free faults). CUDA_SIM_MEMORY_BYTES sets the device's memory size (out-of-memory paths);
//   - streams run in order; every operation executes when it is enqueued, which is one legal order of what
//     the documentation promises (async copies from pageable memory are synchronous there too; the
//     stream-ordered pool's cuMemFreeAsync frees at that point of the stream);
//   - a context must be current for memory, module and launch calls (CUDA_ERROR_INVALID_CONTEXT otherwise),
//     as with the real driver;
//   - modules are the stand-in NVRTC's images (a shared object compiled from the program text); kernels run
//     on the SIMT executor (simt.cpp) under each schedule of CUDA_SIM_SCHEDULES, and with more than one
//     schedule the outputs must be bit-identical across them;
//   - launch checks as the driver makes them: block <= 1024 threads (x, y <= 1024, z <= 64), grid limits,
//     __launch_bounds__, dynamic shared memory within the function's limit (48 KB unless raised with
//     cuFuncSetAttribute, never above the opt-in maximum), arguments as the kernel declares them (with the
//     `extra` buffer form, its size must match; pointer arguments must be null or device addresses);
//   - a fault, trap, divergence or deadlock in a kernel is a sticky error, as on a GPU: every later call
//     returns it. cuGetErrorString returns the driver's text followed by the stand-in's description.
#include "exec.h"
#include "sim.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
struct CUctx_st;
struct CUstream_st;
struct CUevent_st;
struct CUmod_st;
struct CUfunc_st;
struct CUmemPoolHandle_st;
typedef CUctx_st* CUcontext;
typedef CUstream_st* CUstream;
typedef CUevent_st* CUevent;
typedef CUmod_st* CUmodule;
typedef CUfunc_st* CUfunction;
typedef CUmemPoolHandle_st* CUmemoryPool;
typedef void (*CUhostFn)(void*);

enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_UNKNOWN = 999,
};

namespace {

using cusim::Schedule;

constexpr size_t kPage = 4096;
constexpr int kMaxSmemDefault = 48 * 1024;
constexpr int kMaxSmemOptin = 227 * 1024;  // sm_90: 232448 bytes
constexpr unsigned char kPadByte = 0xA5, kPoisonByte = 0xFF;
constexpr size_t kQuarantineBytes = 256u << 20;

// ---- errors ----------------------------------------------------------------------------------------------

std::string hex64(unsigned long long v) {
    char b[32];
    snprintf(b, sizeof b, "0x%llx", v);
    return b;
}


std::mutex g_mu;  // guards everything below that is not thread-local
bool g_initialised = false;
CUresult g_sticky = CUDA_SUCCESS;  // a kernel fault poisons the context for good
std::string g_sticky_msg;
thread_local CUresult tl_detail_code = CUDA_SUCCESS;
thread_local std::string tl_detail, tl_error_string;

// Report `code` with a description: kept for cuGetErrorString on this thread and printed to stderr.
CUresult fail(CUresult code, const std::string& msg) {
    tl_detail_code = code;
    tl_detail = msg;
    fprintf(stderr, "cuda-sim: %s\n", msg.c_str());
    return code;
}

CUresult fault(CUresult code, const std::string& msg) {
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (g_sticky == CUDA_SUCCESS) {
            g_sticky = code;
            g_sticky_msg = msg;
        }
    }
    return fail(code, msg);
}

CUresult sticky() {
    std::lock_guard<std::mutex> lock(g_mu);
    return g_sticky;
}

// ---- device ----------------------------------------------------------------------------------------------

const char* kDeviceName = "NVIDIA H100 80GB HBM3 (lmscore CUDA stand-in on the CPU)";

size_t memory_limit() {
    static const size_t limit = [] {
        const char* v = getenv("CUDA_SIM_MEMORY_BYTES");
        return v && *v ? (size_t)strtoull(v, nullptr, 10) : (size_t)85520809984ull;  // 79.6 GiB, as an H100 80GB
    }();
    return limit;
}

int device_attribute(int attr, bool* known) {
    *known = true;
    switch (attr) {
        case 1: return 1024;                   // MAX_THREADS_PER_BLOCK
        case 2: return 1024;                   // MAX_BLOCK_DIM_X
        case 3: return 1024;                   // MAX_BLOCK_DIM_Y
        case 4: return 64;                     // MAX_BLOCK_DIM_Z
        case 5: return 2147483647;             // MAX_GRID_DIM_X
        case 6: return 65535;                  // MAX_GRID_DIM_Y
        case 7: return 65535;                  // MAX_GRID_DIM_Z
        case 8: return kMaxSmemDefault;        // MAX_SHARED_MEMORY_PER_BLOCK
        case 9: return 65536;                  // TOTAL_CONSTANT_MEMORY
        case 10: return 32;                    // WARP_SIZE
        case 12: return 65536;                 // MAX_REGISTERS_PER_BLOCK
        case 13: return 1980000;               // CLOCK_RATE (kHz)
        case 16: return 132;                   // MULTIPROCESSOR_COUNT
        case 19: return 1;                     // CAN_MAP_HOST_MEMORY
        case 31: return 1;                     // CONCURRENT_KERNELS
        case 36: return 2619000;               // MEMORY_CLOCK_RATE (kHz)
        case 37: return 5120;                  // GLOBAL_MEMORY_BUS_WIDTH (bits)
        case 38: return 50 * 1024 * 1024;      // L2_CACHE_SIZE
        case 39: return 2048;                  // MAX_THREADS_PER_MULTIPROCESSOR
        case 40: return 3;                     // ASYNC_ENGINE_COUNT
        case 41: return 1;                     // UNIFIED_ADDRESSING
        case 75: return 9;                     // COMPUTE_CAPABILITY_MAJOR
        case 76: return 0;                     // COMPUTE_CAPABILITY_MINOR
        case 81: return 228 * 1024;            // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 82: return 65536;                 // MAX_REGISTERS_PER_MULTIPROCESSOR
        case 95: return 1;                     // COOPERATIVE_LAUNCH
        case 97: return kMaxSmemOptin;         // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 106: return 32;                   // MAX_BLOCKS_PER_MULTIPROCESSOR
        case 111: return 1024;                 // RESERVED_SHARED_MEMORY_PER_BLOCK
        case 115: return 1;                    // MEMORY_POOLS_SUPPORTED
    }
    *known = false;
    return 0;
}

struct CtxState {
    int retains = 0;
};
CtxState g_primary;
CUcontext primary_handle() { return (CUcontext)&g_primary; }
thread_local CUcontext tl_current = nullptr;

CUresult need_ctx() {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (tl_current != primary_handle() || g_primary.retains <= 0)
        return fail(CUDA_ERROR_INVALID_CONTEXT, "no CUDA context is current on this thread (cuCtxSetCurrent first)");
    return sticky();
}

// ---- memory ----------------------------------------------------------------------------------------------

struct Allocation {
    char* region;
    size_t region_bytes;
    uintptr_t data;
    size_t size;
    bool freed = false;
};

std::map<uintptr_t, Allocation> g_allocs;  // by data address
std::deque<uintptr_t> g_quarantine;
size_t g_used = 0, g_quarantined = 0;

// [guard page][pad][data: size rounded up to 16][guard page]: the data ends at the back guard page.
size_t data_offset(size_t size) {
    const size_t rounded = (size + 15) & ~(size_t)15;
    return kPage + ((kPage - rounded % kPage) % kPage);
}

CUresult allocate(CUdeviceptr* out, size_t size, const char* api) {
    if (!out) return fail(CUDA_ERROR_INVALID_VALUE, std::string(api) + ": null result pointer");
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_used + size > memory_limit() || size > memory_limit()) {
        tl_detail_code = CUDA_ERROR_OUT_OF_MEMORY;
        tl_detail = std::string(api) + ": " + std::to_string(size) + " bytes asked for, " +
                    std::to_string(memory_limit() - g_used) + " of " + std::to_string(memory_limit()) + " free";
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    const size_t rounded = (size + 15) & ~(size_t)15;
    const size_t off = data_offset(size);
    const size_t region_bytes = off + rounded + kPage;
    char* region = (char*)mmap(nullptr, region_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (region == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    mprotect(region, kPage, PROT_NONE);
    mprotect(region + region_bytes - kPage, kPage, PROT_NONE);
    char* data = region + off;
    memset(region + kPage, kPadByte, off - kPage);
    memset(data, kPoisonByte, size);
    memset(data + size, kPadByte, rounded - size);
    g_allocs[(uintptr_t)data] = Allocation{region, region_bytes, (uintptr_t)data, size};
    g_used += size;
    *out = (CUdeviceptr)(uintptr_t)data;
    return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr p, const char* api) {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_allocs.find((uintptr_t)p);
    if (p == 0) return CUDA_SUCCESS;
    if (it == g_allocs.end() || it->second.freed) {
        tl_detail_code = CUDA_ERROR_INVALID_VALUE;
        tl_detail = std::string(api) + ": " + hex64(p) + " is not the start of a live allocation";
        return CUDA_ERROR_INVALID_VALUE;
    }
    Allocation& a = it->second;
    a.freed = true;
    g_used -= a.size;
    mprotect(a.region, a.region_bytes, PROT_NONE);  // use after free faults
    g_quarantine.push_back(a.data);
    g_quarantined += a.region_bytes;
    while (g_quarantined > kQuarantineBytes && !g_quarantine.empty()) {
        auto old = g_allocs.find(g_quarantine.front());
        g_quarantine.pop_front();
        if (old == g_allocs.end()) continue;
        g_quarantined -= old->second.region_bytes;
        munmap(old->second.region, old->second.region_bytes);
        g_allocs.erase(old);
    }
    return CUDA_SUCCESS;
}

// The live allocation holding [p, p + bytes), or null; call with g_mu held.
const Allocation* find_locked(uintptr_t p, size_t bytes) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    const Allocation& a = it->second;
    if (a.freed || p < a.data || p + bytes > a.data + a.size || p + bytes < p) return nullptr;
    return &a;
}

std::string describe_locked(uintptr_t addr) {
    char buf[256];
    for (const auto& [data, a] : g_allocs) {
        const uintptr_t lo = (uintptr_t)a.region, hi = lo + a.region_bytes;
        if (addr < lo || addr >= hi) continue;
        if (a.freed) {
            snprintf(buf, sizeof buf, "inside a freed allocation of %zu bytes at 0x%lx (use after free)", a.size, (unsigned long)data);
        } else if (addr >= data + a.size) {
            snprintf(buf, sizeof buf, "%zu bytes past the end of an allocation of %zu bytes at 0x%lx",
                     (size_t)(addr - (data + a.size)) + 1, a.size, (unsigned long)data);
        } else if (addr < data) {
            snprintf(buf, sizeof buf, "%zu bytes before the start of an allocation of %zu bytes at 0x%lx",
                     (size_t)(data - addr), a.size, (unsigned long)data);
        } else {
            snprintf(buf, sizeof buf, "byte %zu of an allocation of %zu bytes at 0x%lx", (size_t)(addr - data), a.size, (unsigned long)data);
        }
        return buf;
    }
    return addr < 65536 ? "a null (or near-null) pointer" : "not a device address (no allocation, live or freed, is near it)";
}

// "" when [p, p + bytes) lies inside one live allocation, else why not; call with g_mu held.
std::string outside_allocation_locked(uintptr_t p, size_t bytes) {
    if (find_locked(p, bytes)) return "";
    return std::to_string(bytes) + " bytes at " + hex64(p) + " are not inside one live allocation (" + describe_locked(p) + ")";
}

CUresult check_range(CUdeviceptr p, size_t bytes, const char* api, const char* what) {
    std::lock_guard<std::mutex> lock(g_mu);
    const std::string why = outside_allocation_locked((uintptr_t)p, bytes);
    if (why.empty()) return CUDA_SUCCESS;
    tl_detail_code = CUDA_ERROR_INVALID_VALUE;
    tl_detail = std::string(api) + ": the " + what + " range: " + why;
    fprintf(stderr, "cuda-sim: %s\n", tl_detail.c_str());
    return CUDA_ERROR_INVALID_VALUE;
}

// ---- modules and functions ----------------------------------------------------------------------------------

struct Function;
struct Module {
    void* dl = nullptr;
    std::string path;
    std::map<std::string, Function*> functions;
};
struct Function {
    const lms_simt::KernelEntry* entry;
    Module* module;
    int max_dynamic_smem = kMaxSmemDefault;
};
std::set<Module*> g_modules;
std::set<Function*> g_functions;

using cusim::cache_dir;
using cusim::mkdirs;

// ---- schedules ------------------------------------------------------------------------------------------

std::vector<Schedule> g_schedules;
int g_workers = 2;

std::string read_env_config() {
    const char* s = getenv("CUDA_SIM_SCHEDULES");
    std::string err = cusim::parse_schedules(s ? s : "forward", g_schedules);
    if (!err.empty()) return "CUDA_SIM_SCHEDULES: " + err;
    const char* t = getenv("CUDA_SIM_THREADS");
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    g_workers = t && *t ? std::max(1, atoi(t)) : (int)std::min(hw, 4u);
    return "";
}

// The environment is read once, on first use: cuInit or a test hook, whichever comes first (a hook's
// setting must survive a later cuInit). Call with g_mu held.
std::string configure_from_env() {
    static bool configured = false;
    static std::string error;
    if (!configured) {
        configured = true;
        error = read_env_config();
    }
    return error;
}

// The distinct live allocations the launch's pointer arguments point into (snapshots, pad checks).
std::vector<const Allocation*> argument_allocations(const lms_simt::KernelEntry* e, void** args) {
    std::vector<const Allocation*> out;
    std::lock_guard<std::mutex> lock(g_mu);
    for (unsigned i = 0; i < e->num_params; ++i) {
        if (!e->params[i].is_pointer) continue;
        uintptr_t p;
        memcpy(&p, args[i], sizeof p);
        const Allocation* a = p ? find_locked(p, 0) : nullptr;
        if (a && std::find(out.begin(), out.end(), a) == out.end()) out.push_back(a);
    }
    return out;
}

std::string pad_damage(const Allocation& a) {
    const char* front = a.region + kPage;
    const char* data = (const char*)a.data;
    for (const char* p = front; p < data; ++p)
        if ((unsigned char)*p != kPadByte)
            return std::to_string(data - p) + " bytes before the start of an allocation of " + std::to_string(a.size) + " bytes";
    const char* end = a.region + a.region_bytes - kPage;
    for (const char* p = end - 1; p >= data + a.size; --p)
        if ((unsigned char)*p != kPadByte)
            return std::to_string(p - (data + a.size) + 1) + " bytes past the end of an allocation of " + std::to_string(a.size) + " bytes";
    return "";
}

std::string first_difference(const std::vector<char>& x, const std::vector<char>& y) {
    for (size_t i = 0; i < x.size(); ++i) {
        if (x[i] == y[i]) continue;
        const size_t w = i & ~(size_t)3;
        float fx = 0, fy = 0;
        if (w + 4 <= x.size()) {
            memcpy(&fx, &x[w], 4);
            memcpy(&fy, &y[w], 4);
        }
        char b[160];
        snprintf(b, sizeof b, "byte %zu (the 4-byte word there: %.9g vs %.9g as f32)", i, fx, fy);
        return b;
    }
    return "";
}

CUresult run_launch(Function* fn, void** args, lms_simt::Dim3 grid, lms_simt::Dim3 block, size_t smem) {
    const lms_simt::KernelEntry* e = fn->entry;
    const std::string kname = std::string("kernel ") + e->name;
    std::vector<const Allocation*> allocs = argument_allocations(e, args);
    std::vector<std::vector<char>> snapshot, first;
    const bool multi = g_schedules.size() > 1;
    auto save = [&](std::vector<std::vector<char>>& to) {
        to.clear();
        for (const Allocation* a : allocs) to.emplace_back((const char*)a->data, (const char*)a->data + a->size);
    };
    if (multi) save(snapshot);
    for (size_t s = 0; s < g_schedules.size(); ++s) {
        if (s > 0)
            for (size_t i = 0; i < allocs.size(); ++i) memcpy((void*)allocs[i]->data, snapshot[i].data(), snapshot[i].size());
        cusim::Launch L{e, args, grid, block, smem, g_schedules[s], g_workers};
        std::string err = cusim::run_grid(L);
        if (!err.empty()) {
            if (multi) err += " [schedule " + g_schedules[s].name() + "]";
            return fault(cusim::last_failure_was_fault() ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_ERROR_LAUNCH_FAILED, err);
        }
        for (const Allocation* a : allocs) {
            std::string d = pad_damage(*a);
            if (!d.empty()) return fault(CUDA_ERROR_ILLEGAL_ADDRESS, kname + " wrote " + d + " (a device buffer it was passed)");
        }
        if (!multi) continue;
        if (s == 0) {
            save(first);
            continue;
        }
        for (size_t i = 0; i < allocs.size(); ++i) {
            std::vector<char> now((const char*)allocs[i]->data, (const char*)allocs[i]->data + allocs[i]->size);
            if (now != first[i])
                return fault(CUDA_ERROR_LAUNCH_FAILED,
                             kname + ": schedules " + g_schedules[0].name() + " and " + g_schedules[s].name() +
                                 " give different results in a buffer of " + std::to_string(allocs[i]->size) +
                                 " bytes at " + hex64(allocs[i]->data) + ", first at " + first_difference(first[i], now) +
                                 ": the kernel depends on the order of its threads between sync points (a race)");
        }
    }
    return CUDA_SUCCESS;
}

struct Event {
    std::chrono::steady_clock::time_point t;
    bool recorded = false;
};
struct Stream {
    int unused = 0;
};
struct Pool {
    unsigned long long release_threshold = 0;
};
Pool g_pool;

}  // namespace

// ---- what the other stand-in libraries use (sim.h) ------------------------------------------------------------

namespace cusim {
std::string describe_address(uintptr_t addr) {
    std::unique_lock<std::mutex> lock(g_mu, std::try_to_lock);
    if (!lock.owns_lock()) return "(allocation table busy)";
    return describe_locked(addr);
}
}  // namespace cusim

extern "C" {

extern const char lms_sim_identity[];
const char lms_sim_identity[] = "lmscore CUDA stand-in (cuda-sim) driver";

int lms_sim_check_range(const void* p, size_t bytes, char* why, size_t why_len) {
    std::lock_guard<std::mutex> lock(g_mu);
    const std::string d = outside_allocation_locked((uintptr_t)p, bytes);
    if (d.empty()) return 0;
    if (why && why_len) snprintf(why, why_len, "%s", d.c_str());
    return 1;
}

void lms_sim_fault(const char* msg) { fault(CUDA_ERROR_ILLEGAL_ADDRESS, msg ? msg : "device fault"); }

int lms_sim_faulted(void) { return sticky() != CUDA_SUCCESS; }

const char* lms_sim_fault_message(void) {
    std::lock_guard<std::mutex> lock(g_mu);
    static thread_local std::string copy;
    copy = g_sticky_msg;
    return copy.c_str();
}

int lms_sim_threads(void) { return g_workers; }

// Test hooks of the stand-in's own tests (tests/cuda_sim.rs); a real driver has no way back from a fault.
int lms_sim_set_schedules(const char* spec) {
    std::vector<Schedule> s;
    if (!cusim::parse_schedules(spec ? spec : "", s).empty()) return 1;
    std::lock_guard<std::mutex> lock(g_mu);
    configure_from_env();  // now, so that cuInit does not overwrite this setting later
    g_schedules = s;
    return 0;
}
void lms_sim_reset_fault(void) {
    std::lock_guard<std::mutex> lock(g_mu);
    g_sticky = CUDA_SUCCESS;
    g_sticky_msg.clear();
}
const char* lms_sim_last_error(void) { return tl_detail.c_str(); }

// ---- initialisation, device, context ------------------------------------------------------------------------

CUresult cuInit(unsigned flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_initialised) {
        std::string err = configure_from_env();
        if (!err.empty()) {
            tl_detail_code = CUDA_ERROR_INVALID_VALUE;
            tl_detail = err;
            fprintf(stderr, "cuda-sim: %s\n", err.c_str());
            return CUDA_ERROR_INVALID_VALUE;
        }
        g_initialised = true;
    }
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = 13000;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* n) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    *n = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", kDeviceName);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    bool known;
    const int value = device_attribute(attr, &known);
    *v = value;  // attributes the stand-in does not model read as 0 (unsupported), as on a device without them
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    *bytes = memory_limit();
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    static const unsigned char id[16] = {'l', 'm', 's', 'c', 'o', 'r', 'e', '-', 'c', 'u', 'd', 'a', '-', 's', 'i', 'm'};
    memcpy(uuid, id, 16);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid_v2(uuid, d); }

CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice d) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(g_mu);
    ++g_primary.retains;
    *ctx = primary_handle();
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_primary.retains <= 0) return CUDA_ERROR_INVALID_CONTEXT;
    --g_primary.retains;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext ctx) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx && ctx != primary_handle()) return CUDA_ERROR_INVALID_CONTEXT;
    tl_current = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* ctx) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = tl_current;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* d) {
    if (CUresult r = need_ctx()) return r;
    *d = 0;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void) { return need_ctx(); }

// ---- streams and events ------------------------------------------------------------------------------------

CUresult cuStreamCreate(CUstream* s, unsigned flags) {
    if (CUresult r = need_ctx()) return r;
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = (CUstream) new Stream();
    return CUDA_SUCCESS;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int priority) { return cuStreamCreate(s, flags); }
CUresult cuStreamDestroy_v2(CUstream s) {
    delete (Stream*)s;
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream s) { return need_ctx(); }
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned flags) { return need_ctx(); }
CUresult cuStreamQuery(CUstream s) { return need_ctx(); }
CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void* data) {
    if (CUresult r = need_ctx()) return r;
    if (fn) fn(data);
    return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent* e, unsigned flags) {
    if (CUresult r = need_ctx()) return r;
    *e = (CUevent) new Event();
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy_v2(CUevent e) {
    delete (Event*)e;
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent e, CUstream s) {
    if (CUresult r = need_ctx()) return r;
    ((Event*)e)->t = std::chrono::steady_clock::now();
    ((Event*)e)->recorded = true;
    return CUDA_SUCCESS;
}
CUresult cuEventSynchronize(CUevent e) { return need_ctx(); }
CUresult cuEventQuery(CUevent e) { return sticky(); }
// Host time between the two records: the stand-in has no GPU clock (what it measures is CPU time).
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    if (CUresult r = need_ctx()) return r;
    if (!((Event*)a)->recorded || !((Event*)b)->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(((Event*)b)->t - ((Event*)a)->t).count();
    return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }

// ---- memory ----------------------------------------------------------------------------------------------

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (CUresult r = need_ctx()) return r;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    return allocate(p, bytes, "cuMemAlloc");
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream s) {
    if (CUresult r = need_ctx()) return r;
    return allocate(p, bytes, "cuMemAllocAsync");
}
CUresult cuMemAllocFromPoolAsync(CUdeviceptr* p, size_t bytes, CUmemoryPool pool, CUstream s) { return cuMemAllocAsync(p, bytes, s); }
CUresult cuMemFree_v2(CUdeviceptr p) {
    if (CUresult r = need_ctx()) return r;
    return release(p, "cuMemFree");
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    if (CUresult r = need_ctx()) return r;
    return release(p, "cuMemFreeAsync");
}
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    if (CUresult r = need_ctx()) return r;
    std::lock_guard<std::mutex> lock(g_mu);
    *free_bytes = memory_limit() - g_used;
    *total = memory_limit();
    return CUDA_SUCCESS;
}

CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned flags) {
    if (CUresult r = need_ctx()) return r;
    *p = aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }
CUresult cuMemFreeHost(void* p) {
    free(p);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    if (CUresult r = need_ctx()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (CUresult r = check_range(dst, n, "cuMemcpyHtoD", "destination")) return r;
    memcpy((void*)(uintptr_t)dst, src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) { return cuMemcpyHtoD_v2(dst, src, n); }
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    if (CUresult r = need_ctx()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (CUresult r = check_range(src, n, "cuMemcpyDtoH", "source")) return r;
    memcpy(dst, (const void*)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) { return cuMemcpyDtoH_v2(dst, src, n); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (CUresult r = need_ctx()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (CUresult r = check_range(src, n, "cuMemcpyDtoD", "source")) return r;
    if (CUresult r = check_range(dst, n, "cuMemcpyDtoD", "destination")) return r;
    memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return cuMemcpyDtoD_v2(dst, src, n); }
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    if (CUresult r = need_ctx()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (CUresult r = check_range(dst, n, "cuMemsetD8", "destination")) return r;
    memset((void*)(uintptr_t)dst, v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) { return cuMemsetD8_v2(dst, v, n); }
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, size_t n) {
    if (CUresult r = need_ctx()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (CUresult r = check_range(dst, n * 4, "cuMemsetD32", "destination")) return r;
    for (size_t i = 0; i < n; ++i) memcpy((char*)(uintptr_t)dst + 4 * i, &v, 4);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream s) { return cuMemsetD32_v2(dst, v, n); }

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice d) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *pool = (CUmemoryPool)&g_pool;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetMemPool(CUmemoryPool* pool, CUdevice d) { return cuDeviceGetDefaultMemPool(pool, d); }
CUresult cuMemPoolSetAttribute(CUmemoryPool pool, int attr, void* value) {
    if (pool != (CUmemoryPool)&g_pool || !value) return CUDA_ERROR_INVALID_VALUE;
    if (attr == 4) memcpy(&g_pool.release_threshold, value, 8);  // RELEASE_THRESHOLD (u64)
    return CUDA_SUCCESS;
}
CUresult cuMemPoolGetAttribute(CUmemoryPool pool, int attr, void* value) {
    if (pool != (CUmemoryPool)&g_pool || !value) return CUDA_ERROR_INVALID_VALUE;
    unsigned long long v = 0;
    if (attr == 4) v = g_pool.release_threshold;
    if (attr == 5 || attr == 7) {
        std::lock_guard<std::mutex> lock(g_mu);
        v = g_used;
    }
    if (attr >= 4 && attr <= 8) memcpy(value, &v, 8);
    else memset(value, 0, 4);
    return CUDA_SUCCESS;
}
CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) { return CUDA_SUCCESS; }

// ---- modules ----------------------------------------------------------------------------------------------

// The image is the stand-in NVRTC's: "LMSSIM01", u64 payload size, 16 hex digits of the program hash, then
// the shared object. PTX text and real cubins (ELF for a GPU) are refused with a message saying so.
CUresult cuModuleLoadData(CUmodule* out, const void* image) {
    if (CUresult r = need_ctx()) return r;
    if (!out || !image) return CUDA_ERROR_INVALID_VALUE;
    const char* img = (const char*)image;
    if (memcmp(img, "LMSSIM01", 8) != 0) {
        if (memcmp(img, "\x7f" "ELF", 4) == 0)
            return fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: a GPU cubin; the stand-in runs only images of its own NVRTC (is the real libnvrtc first on the library path?)");
        return fail(CUDA_ERROR_INVALID_PTX, "cuModuleLoadData: PTX cannot be run by the stand-in (it loads the cubins of its own NVRTC: compile for sm_XY)");
    }
    uint64_t size;
    memcpy(&size, img + 8, 8);
    const std::string hash(img + 16, 16);
    const std::string dir = cache_dir();
    mkdirs(dir);
    const std::string path = dir + "/module-" + hash + ".so";
    struct stat st;
    if (stat(path.c_str(), &st) != 0 || (uint64_t)st.st_size != size) {
        const std::string tmp = path + ".tmp." + std::to_string(getpid()) + "." + std::to_string((uintptr_t)&st);
        FILE* f = fopen(tmp.c_str(), "wb");
        if (!f || fwrite(img + 32, 1, size, f) != size) {
            if (f) fclose(f);
            unlink(tmp.c_str());
            return fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: cannot write the module to " + tmp);
        }
        fclose(f);
        rename(tmp.c_str(), path.c_str());
    }
    void* dl = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!dl) return fail(CUDA_ERROR_INVALID_IMAGE, std::string("cuModuleLoadData: dlopen failed: ") + dlerror());
    auto init = (void (*)(const lms_simt::Runtime*))dlsym(dl, "lms_module_init");
    auto entries = (const lms_simt::KernelEntry*)dlsym(dl, "lms_kernels");
    if (!init || !entries) {
        dlclose(dl);
        return fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: the image has no kernel table");
    }
    init(cusim::runtime());
    auto* m = new Module{dl, path, {}};
    for (const lms_simt::KernelEntry* e = entries; e->name; ++e) m->functions[e->name] = new Function{e, m};
    std::lock_guard<std::mutex> lock(g_mu);
    g_modules.insert(m);
    for (auto& [name, f] : m->functions) g_functions.insert(f);
    *out = (CUmodule)m;
    return CUDA_SUCCESS;
}

CUresult cuModuleLoad(CUmodule* out, const char* fname) {
    FILE* f = fopen(fname, "rb");
    if (!f) return CUDA_ERROR_INVALID_VALUE;
    std::vector<char> bytes;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + n);
    fclose(f);
    bytes.push_back(0);
    return cuModuleLoadData(out, bytes.data());
}

CUresult cuModuleUnload(CUmodule mod) {
    auto* m = (Module*)mod;
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_modules.count(m)) return CUDA_ERROR_INVALID_HANDLE;
    for (auto& [name, f] : m->functions) {
        g_functions.erase(f);
        delete f;
    }
    g_modules.erase(m);
    // The shared object stays loaded: kernel code must not vanish under a launch on another thread.
    delete m;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* out, CUmodule mod, const char* name) {
    if (CUresult r = need_ctx()) return r;
    auto* m = (Module*)mod;
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_modules.count(m)) return CUDA_ERROR_INVALID_HANDLE;
    auto it = m->functions.find(name ? name : "");
    if (it == m->functions.end()) {
        tl_detail_code = CUDA_ERROR_NOT_FOUND;
        tl_detail = std::string("cuModuleGetFunction: no extern \"C\" __global__ function named ") + (name ? name : "(null)");
        return CUDA_ERROR_NOT_FOUND;
    }
    *out = (CUfunction)it->second;
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction f, int attr, int value) {
    if (CUresult r = need_ctx()) return r;
    auto* fn = (Function*)f;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (!g_functions.count(fn)) return CUDA_ERROR_INVALID_HANDLE;
    }
    if (attr == 8) {  // MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || value > kMaxSmemOptin)
            return fail(CUDA_ERROR_INVALID_VALUE, std::string("cuFuncSetAttribute(") + fn->entry->name +
                                                      ", MAX_DYNAMIC_SHARED_SIZE_BYTES, " + std::to_string(value) +
                                                      "): above the device's opt-in maximum of " + std::to_string(kMaxSmemOptin));
        fn->max_dynamic_smem = value;
        return CUDA_SUCCESS;
    }
    if (attr == 9) return CUDA_SUCCESS;  // PREFERRED_SHARED_MEMORY_CARVEOUT: a hint
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuFuncGetAttribute(int* v, int attr, CUfunction f) {
    if (CUresult r = need_ctx()) return r;
    auto* fn = (Function*)f;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (!g_functions.count(fn)) return CUDA_ERROR_INVALID_HANDLE;
    }
    switch (attr) {
        case 0: *v = fn->entry->max_threads ? (int)fn->entry->max_threads : 1024; return CUDA_SUCCESS;
        case 5: case 6: *v = 90; return CUDA_SUCCESS;  // PTX / binary version
        case 8: *v = fn->max_dynamic_smem; return CUDA_SUCCESS;
        case 1: case 2: case 3: case 4: *v = 0; return CUDA_SUCCESS;  // no GPU registers or local memory here
    }
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuFuncSetCacheConfig(CUfunction f, int config) { return need_ctx(); }

// ---- launches ----------------------------------------------------------------------------------------------

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream stream, void** params, void** extra) {
    if (CUresult r = need_ctx()) return r;
    auto* fn = (Function*)f;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (!g_functions.count(fn)) return CUDA_ERROR_INVALID_HANDLE;
    }
    const lms_simt::KernelEntry* e = fn->entry;
    const std::string k = std::string("cuLaunchKernel(") + e->name + "): ";
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (bx == 0 || by == 0 || bz == 0 || gx == 0 || gy == 0 || gz == 0)
        return fail(CUDA_ERROR_INVALID_VALUE, k + "a grid or block dimension is 0");
    if (bx > 1024 || by > 1024 || bz > 64 || threads > 1024)
        return fail(CUDA_ERROR_INVALID_VALUE, k + "block (" + std::to_string(bx) + "," + std::to_string(by) + "," +
                                                  std::to_string(bz) + ") exceeds 1024 threads / (1024, 1024, 64)");
    if (gy > 65535 || gz > 65535 || gx > 2147483647u)
        return fail(CUDA_ERROR_INVALID_VALUE, k + "grid (" + std::to_string(gx) + "," + std::to_string(gy) + "," +
                                                  std::to_string(gz) + ") exceeds (2^31-1, 65535, 65535)");
    if (e->max_threads && threads > e->max_threads)
        return fail(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, k + std::to_string(threads) + " threads per block, but __launch_bounds__ allows " +
                                                            std::to_string(e->max_threads));
    if ((int)smem > fn->max_dynamic_smem)
        return fail(CUDA_ERROR_INVALID_VALUE, k + std::to_string(smem) + " bytes of dynamic shared memory requested, the function's limit is " +
                                                  std::to_string(fn->max_dynamic_smem) +
                                                  (fn->max_dynamic_smem == kMaxSmemDefault ? " (raise it with cuFuncSetAttribute)" : ""));

    // Arguments: an array of pointers to each value, or one packed buffer (`extra`) whose size must match the
    // kernel's parameter list laid out with each parameter at its natural alignment.
    std::vector<void*> from_extra;
    if (extra) {
        void* buf = nullptr;
        size_t size = 0;
        bool have_size = false;
        for (void** p = extra; *p != (void*)0; p += 2) {
            if (*p == (void*)1) buf = p[1];
            else if (*p == (void*)2) {
                size = *(size_t*)p[1];
                have_size = true;
            } else {
                return fail(CUDA_ERROR_INVALID_VALUE, k + "unknown key in the extra array");
            }
        }
        size_t off = 0;
        for (unsigned i = 0; i < e->num_params; ++i) {
            const size_t a = std::min<size_t>(e->params[i].size, 8);
            off = (off + a - 1) / a * a;
            from_extra.push_back((char*)buf + off);
            off += e->params[i].size;
        }
        if (!buf || !have_size || size != off)
            return fail(CUDA_ERROR_INVALID_VALUE, k + "the argument buffer holds " + std::to_string(size) + " bytes, the kernel's " +
                                                      std::to_string(e->num_params) + " parameters take " + std::to_string(off));
        params = from_extra.data();
    } else if (e->num_params > 0 && !params) {
        return fail(CUDA_ERROR_INVALID_VALUE, k + "no arguments for a kernel of " + std::to_string(e->num_params) + " parameters");
    }
    for (unsigned i = 0; i < e->num_params; ++i) {
        if (!e->params[i].is_pointer) continue;
        uintptr_t p;
        memcpy(&p, params[i], sizeof p);
        std::lock_guard<std::mutex> lock(g_mu);
        if (p != 0 && !find_locked(p, 0))
            return fail(CUDA_ERROR_INVALID_VALUE, k + "argument " + std::to_string(i) + " is declared a pointer but " + hex64(p) +
                                                      " is not a device address (" + describe_locked(p) + ")");
    }
    return run_launch(fn, params, {gx, gy, gz}, {bx, by, bz}, smem);
}

// ---- errors ----------------------------------------------------------------------------------------------

static const char* code_name(CUresult r) {
    switch (r) {
        case CUDA_SUCCESS: return "CUDA_SUCCESS";
        case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
        case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
        case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
        case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
        case CUDA_ERROR_INVALID_PTX: return "CUDA_ERROR_INVALID_PTX";
        case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
        case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
        case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
        case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    }
    return "CUDA_ERROR_UNKNOWN";
}

static const char* code_text(CUresult r) {
    switch (r) {
        case CUDA_SUCCESS: return "no error";
        case CUDA_ERROR_INVALID_VALUE: return "invalid argument";
        case CUDA_ERROR_OUT_OF_MEMORY: return "out of memory";
        case CUDA_ERROR_NOT_INITIALIZED: return "initialization error";
        case CUDA_ERROR_INVALID_DEVICE: return "invalid device ordinal";
        case CUDA_ERROR_INVALID_IMAGE: return "device kernel image is invalid";
        case CUDA_ERROR_INVALID_CONTEXT: return "invalid device context";
        case CUDA_ERROR_INVALID_PTX: return "a PTX JIT compilation failed";
        case CUDA_ERROR_INVALID_HANDLE: return "invalid resource handle";
        case CUDA_ERROR_NOT_FOUND: return "named symbol not found";
        case CUDA_ERROR_NOT_READY: return "device not ready";
        case CUDA_ERROR_ILLEGAL_ADDRESS: return "an illegal memory access was encountered";
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
        case CUDA_ERROR_LAUNCH_FAILED: return "unspecified launch failure";
        case CUDA_ERROR_NOT_SUPPORTED: return "operation not supported";
    }
    return "unknown error";
}

CUresult cuGetErrorName(CUresult r, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = code_name(r);
    return CUDA_SUCCESS;
}

// The driver's text, then what the stand-in knows of the last failure with this code (on this thread, or
// the sticky fault).
CUresult cuGetErrorString(CUresult r, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    std::string detail;
    if (r == tl_detail_code && !tl_detail.empty()) {
        detail = tl_detail;
    } else {
        std::lock_guard<std::mutex> lock(g_mu);
        if (r == g_sticky) detail = g_sticky_msg;
    }
    tl_error_string = std::string(code_text(r)) + (detail.empty() ? "" : " [cuda-sim: " + detail + "]");
    *s = tl_error_string.c_str();
    return CUDA_SUCCESS;
}

}  // extern "C"
