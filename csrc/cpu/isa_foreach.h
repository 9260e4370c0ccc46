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
// inlined into each and compiled for its set. The block each set gets is cpu/isa_block.h. No include
// guard on purpose.
#ifndef RBFKERN_ISA_FAMILY
#error "define RBFKERN_ISA_FAMILY and RBFKERN_ISA_KERNELS before including cpu/isa_foreach.h"
#endif

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,f16c,popcnt,lzcnt,prefer-vector-width=512")
#define RBFKERN_ISA_NAME isa_avx512
#define RBFKERN_ISA_VEC_BYTES 64
#include "cpu/isa_block.h"  // NOLINT(build/include)
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c,popcnt,lzcnt")
#define RBFKERN_ISA_NAME isa_avx2
#define RBFKERN_ISA_VEC_BYTES 32
#include "cpu/isa_block.h"  // NOLINT(build/include)
#pragma GCC pop_options
#endif

#define RBFKERN_ISA_NAME isa_default
#define RBFKERN_ISA_VEC_BYTES 16
#include "cpu/isa_block.h"  // NOLINT(build/include)
#if !(defined(__x86_64__) || defined(__i386__))
namespace rbfkern {
namespace cpu {
namespace RBFKERN_ISA_FAMILY {
namespace isa_avx512 = isa_default;
namespace isa_avx2 = isa_default;
}  // namespace RBFKERN_ISA_FAMILY
}  // namespace cpu
}  // namespace rbfkern
#endif

#undef RBFKERN_ISA_FAMILY
#undef RBFKERN_ISA_KERNELS
