// Run-time choice of the instruction set the CPU kernels run with.
//
// The wheel is built without -march=native. Each family's kernels (csrc/cpu/<family>_kernels.h)
// are compiled once per instruction set by isa_foreach.h, into the namespaces isa_avx512,
// isa_avx2 and isa_default of the family; the family's entry points (<family>.cpp) pick one
// namespace per call with RBFKERN_PICK_ISA. The choice is made once per process: the best set
// this CPU supports, capped by the environment variable RBFKERN_CPU_ISA (default | avx2 |
// avx512) so tests can run every set on one machine. Results never depend on the thread count.
#pragma once

namespace rbfkern {
namespace cpu {

enum Isa : int { kIsaDefault = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

// The instruction set of this process (detected on the first call, then cached).
Isa cpu_isa();
// "avx512", "avx2" or "default".
const char* cpu_isa_name();
// Re-detect with `cap` in place of RBFKERN_CPU_ISA (null: no cap). Only for the standalone C++
// test (csrc/tests), which runs every set in one process; never while a kernel runs.
void recap_cpu_isa(const char* cap);

// The entry of the process's instruction set.
template <class F>
F pick_isa(F avx512, F avx2, F base) {
  switch (cpu_isa()) {
    case kIsaAvx512: return avx512;
    case kIsaAvx2: return avx2;
    default: return base;
  }
}

}  // namespace cpu
}  // namespace rbfkern

// The process's instruction set's instance of FN, a function of the kernels file that
// isa_foreach.h compiled for FAMILY: RBFKERN_PICK_ISA(rbf, forward<T>)(args...).
#define RBFKERN_PICK_ISA(FAMILY, FN)                                                        \
  ::rbfkern::cpu::pick_isa(&::rbfkern::cpu::FAMILY::isa_avx512::FN, &::rbfkern::cpu::FAMILY::isa_avx2::FN, \
                           &::rbfkern::cpu::FAMILY::isa_default::FN)
