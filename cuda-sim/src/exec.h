// exec.h: the driver's view of the SIMT executor (simt.cpp), which runs one kernel launch on CPU fibers.
#pragma once
#define LMS_SIMT_ABI_ONLY
#include "simt.h"

#include <cstdint>
#include <string>
#include <vector>

namespace cusim {

// The order in which runnable threads of a block are resumed between sync points.
//   forward: round robin in thread order (each thread runs to its next sync point, then the next thread);
//   reverse: round robin from the last thread down;
//   greedy:  always the lowest runnable thread, so warp 0 runs ahead to its next block barrier before warp 1
//            starts: the order that exposes a reduction missing its leading barrier;
//   shuffle: a seeded random runnable thread each time.
enum class ScheduleKind { Forward, Reverse, Greedy, Shuffle };

struct Schedule {
    ScheduleKind kind = ScheduleKind::Forward;
    uint64_t seed = 0;
    std::string name() const;
};

// Parses "forward,reverse,greedy,shuffle:7" (CUDA_SIM_SCHEDULES); an unknown word is an error message.
std::string parse_schedules(const std::string& spec, std::vector<Schedule>& out);

struct Launch {
    const lms_simt::KernelEntry* entry;
    void** args;
    lms_simt::Dim3 grid, block;
    size_t dyn_smem;
    Schedule schedule;
    int workers;  // OS threads the blocks are spread over
};

// Runs every block of the launch. "" on success, else why it failed (divergence, deadlock, trap, or a
// memory fault described with describe_address), naming the kernel, block, thread and file:line.
std::string run_grid(const Launch& launch);

// Whether the last failure of run_grid was a memory fault (CUDA_ERROR_ILLEGAL_ADDRESS) rather than a
// trap / divergence / deadlock (CUDA_ERROR_LAUNCH_FAILED).
bool last_failure_was_fault();

// The Runtime table handed to every loaded module.
const lms_simt::Runtime* runtime();

// Implemented by driver.cpp: what lies at a host address (which allocation, how far past its end, freed...).
std::string describe_address(uintptr_t addr);

}  // namespace cusim
