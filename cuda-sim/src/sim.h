// sim.h: what the stand-in libraries share. libcuda.so.1 (driver.cpp) owns device memory, contexts and
// the sticky-fault state; libcublas.so.13 (cublas.cpp) links against it and uses these C functions to
// validate the device ranges a GEMM touches, exactly as a real cuBLAS kernel would fault on a bad pointer.
//
// Device memory is host memory: a CUdeviceptr is the host address of the allocation's first byte, so the
// other libraries may read and write through it directly once the range has been checked.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// 0 when [p, p + bytes) lies inside one live device allocation (bytes == 0: p must still be inside or at
// the end of one). Otherwise non-zero, with a sentence naming the address and the nearest allocation
// written to why (NUL-terminated, truncated to why_len).
int lms_sim_check_range(const void* p, size_t bytes, char* why, size_t why_len);

// Record a device fault as a faulting kernel would: the message is kept, and every later driver call of
// the context returns CUDA_ERROR_ILLEGAL_ADDRESS (a "sticky" error) until the process ends.
void lms_sim_fault(const char* msg);

// Non-zero once a sticky fault has been recorded; lms_sim_fault_message() is its text ("" before).
int lms_sim_faulted(void);
const char* lms_sim_fault_message(void);

// Stand-in worker threads a library may use for its own parallel loops (CUDA_SIM_THREADS, default 2).
int lms_sim_threads(void);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
#include <cstdlib>
#include <string>
#include <sys/stat.h>

namespace cusim {
// Where compiled kernel modules are kept (the NVRTC stand-in writes them, the driver loads them):
// CUDA_SIM_CACHE, else $XDG_CACHE_HOME/lmscore/cuda-sim, else ~/.cache/lmscore/cuda-sim.
inline std::string cache_dir() {
    if (const char* d = getenv("CUDA_SIM_CACHE"); d && *d) return d;
    if (const char* x = getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/lmscore/cuda-sim";
    if (const char* h = getenv("HOME"); h && *h) return std::string(h) + "/.cache/lmscore/cuda-sim";
    return "/tmp/lmscore-cuda-sim";
}

// mkdir -p.
inline void mkdirs(const std::string& path) {
    for (size_t i = 1; i <= path.size(); ++i)
        if (i == path.size() || path[i] == '/') mkdir(path.substr(0, i).c_str(), 0755);
}
}  // namespace cusim
#endif
