// fiber_x86_64.S: the stand-in's context switch between CUDA-thread fibers (x86-64 System V).
//
//   void lms_fiber_switch(void** save_sp, void* load_sp);
//
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save_sp, loads
// load_sp and restores the same set from there. Caller-saved registers need no saving: the switch is an
// ordinary call. MXCSR and the x87 control word are not switched (fldcw alone cost more than the rest):
// kernels never change rounding modes, so every fiber shares the worker's. swapcontext would also save
// the signal mask (two syscalls a switch); a fiber switch here is a few nanoseconds.
//
// A new fiber's stack is prepared by the scheduler (simt.cpp, Fiber::init) so that the first switch to it
// "returns" into lms_fiber_start with r12 = argument and r13 = entry function.
    .text
    .globl lms_fiber_switch
    .hidden lms_fiber_switch
    .type lms_fiber_switch, @function
lms_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lms_fiber_switch, .-lms_fiber_switch

    .globl lms_fiber_start
    .hidden lms_fiber_start
    .type lms_fiber_start, @function
lms_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2                     // the entry function never returns: it switches away for good
    .size lms_fiber_start, .-lms_fiber_start

    .section .note.GNU-stack,"",@progbits
