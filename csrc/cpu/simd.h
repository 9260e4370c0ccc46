// Shared SIMD and threading helpers for the CPU kernels.
//
// The wheel is built without -march=native. Each kernel TU compiles its hot code once per
// instruction set (AVX-512, AVX2+FMA, baseline) under `#pragma GCC target` and picks one at
// run time with cpu_isa(). Kernels use GCC vector extensions of 64 bytes (16 float / 8 double
// lanes): on AVX-512 they map to zmm registers, on AVX2 to pairs of ymm, on the baseline to
// four xmm.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace rbfkern {
namespace simd {

typedef float f32x16 __attribute__((vector_size(64)));
typedef double f64x8 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef int64_t i64x8 __attribute__((vector_size(64)));

enum Isa : int { kIsaDefault = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

// The best instruction set this CPU supports, capped by RBFKERN_CPU_ISA (default|avx2|avx512)
// when set, so tests can exercise every clone on one machine.
inline int detect_isa() {
  int best = kIsaDefault;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = kIsaAvx2;
  if (best == kIsaAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
    best = kIsaAvx512;
#endif
  const char* env = std::getenv("RBFKERN_CPU_ISA");
  if (env != nullptr) {
    int cap = best;
    if (std::strcmp(env, "default") == 0) cap = kIsaDefault;
    else if (std::strcmp(env, "avx2") == 0) cap = kIsaAvx2;
    else if (std::strcmp(env, "avx512") == 0) cap = kIsaAvx512;
    if (cap < best) best = cap;
  }
  return best;
}

// Integer ceiling division and round-up for non-negative sizes.
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

}  // namespace simd
}  // namespace rbfkern
