// Instruction-set detection for the CPU kernels (csrc/cpu/isa.h), once per process.
#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace rbfkern {
namespace cpu {
namespace {

// The best set isa_foreach.h compiles for that this CPU runs (every feature its target string
// enables), capped by `cap` (unknown names: no cap).
Isa detect(const char* cap) {
  Isa best = kIsaDefault;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
      __builtin_cpu_supports("bmi2"))
    best = kIsaAvx2;
  if (best == kIsaAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
    best = kIsaAvx512;
#endif
  if (cap == nullptr) return best;
  Isa c = best;
  if (std::strcmp(cap, "default") == 0) c = kIsaDefault;
  else if (std::strcmp(cap, "avx2") == 0) c = kIsaAvx2;
  else if (std::strcmp(cap, "avx512") == 0) c = kIsaAvx512;
  return c < best ? c : best;
}

std::atomic<int>& state() {
  static std::atomic<int> isa{detect(std::getenv("RBFKERN_CPU_ISA"))};
  return isa;
}

}  // namespace

Isa cpu_isa() { return static_cast<Isa>(state().load(std::memory_order_relaxed)); }

const char* cpu_isa_name() {
  switch (cpu_isa()) {
    case kIsaAvx512: return "avx512";
    case kIsaAvx2: return "avx2";
    default: return "default";
  }
}

void recap_cpu_isa(const char* cap) { state().store(detect(cap), std::memory_order_relaxed); }

}  // namespace cpu
}  // namespace rbfkern
