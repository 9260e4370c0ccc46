// Compiles one family's kernels once per instruction set (see csrc/cpu/isa.h). Use, at file scope:
//
//   #define RBFKERN_ISA_FAMILY rbf                     // namespace rbfkern::cpu::rbf
//   #define RBFKERN_ISA_KERNELS "cpu/rbf_kernels.h"    // the kernels file
//   #include "cpu/isa_foreach.h"
//
// The kernels file lands in rbfkern::cpu::<family>::isa_avx512, isa_avx2 and isa_default (on
// other architectures the first two are aliases of the last), each compiled under its own
// `#pragma GCC target`, with `constexpr int kVecBytes` (64, 32, 16) the width of that set's
// vector registers in scope. Helpers from headers included before (simd.h: always_inline) are
// inlined into each and compiled for its set. No include guard on purpose.
#ifndef RBFKERN_ISA_FAMILY
#error "define RBFKERN_ISA_FAMILY and RBFKERN_ISA_KERNELS before including cpu/isa_foreach.h"
#endif

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,f16c,popcnt,lzcnt,prefer-vector-width=512")
namespace rbfkern {
namespace cpu {
namespace RBFKERN_ISA_FAMILY {
namespace isa_avx512 {
constexpr int kVecBytes = 64;
namespace simd {  // the vector helpers compiled for this set (simd_vec.h explains why)
using namespace ::rbfkern::simd;  // NOLINT(build/namespaces): types, loads, stores, sizes
#include "cpu/simd_vec.h"  // NOLINT(build/include)
}  // namespace simd
#include RBFKERN_ISA_KERNELS  // NOLINT(build/include)
}  // namespace isa_avx512
}  // namespace RBFKERN_ISA_FAMILY
}  // namespace cpu
}  // namespace rbfkern
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c,popcnt,lzcnt")
namespace rbfkern {
namespace cpu {
namespace RBFKERN_ISA_FAMILY {
namespace isa_avx2 {
constexpr int kVecBytes = 32;
namespace simd {  // the vector helpers compiled for this set (simd_vec.h explains why)
using namespace ::rbfkern::simd;  // NOLINT(build/namespaces): types, loads, stores, sizes
#include "cpu/simd_vec.h"  // NOLINT(build/include)
}  // namespace simd
#include RBFKERN_ISA_KERNELS  // NOLINT(build/include)
}  // namespace isa_avx2
}  // namespace RBFKERN_ISA_FAMILY
}  // namespace cpu
}  // namespace rbfkern
#pragma GCC pop_options
#endif

namespace rbfkern {
namespace cpu {
namespace RBFKERN_ISA_FAMILY {
namespace isa_default {
constexpr int kVecBytes = 16;
namespace simd {  // the vector helpers compiled for this set (simd_vec.h explains why)
using namespace ::rbfkern::simd;  // NOLINT(build/namespaces): types, loads, stores, sizes
#include "cpu/simd_vec.h"  // NOLINT(build/include)
}  // namespace simd
#include RBFKERN_ISA_KERNELS  // NOLINT(build/include)
}  // namespace isa_default
#if !(defined(__x86_64__) || defined(__i386__))
namespace isa_avx512 = isa_default;
namespace isa_avx2 = isa_default;
#endif
}  // namespace RBFKERN_ISA_FAMILY
}  // namespace cpu
}  // namespace rbfkern

#undef RBFKERN_ISA_FAMILY
#undef RBFKERN_ISA_KERNELS
