// One instruction set's copy of a family's kernels: isa_foreach.h includes this file once per set,
// inside that set's `#pragma GCC target`, with RBFKERN_ISA_NAME (the namespace: isa_avx512,
// isa_avx2, isa_default) and RBFKERN_ISA_VEC_BYTES (its vector width in bytes) defined. No include
// guard on purpose.
namespace rbfkern {
namespace cpu {
namespace RBFKERN_ISA_FAMILY {
namespace RBFKERN_ISA_NAME {
constexpr int kVecBytes = RBFKERN_ISA_VEC_BYTES;
namespace simd {  // the vector helpers compiled for this set (simd_vec.h explains why)
using namespace ::rbfkern::simd;  // NOLINT(build/namespaces): types, loads, stores, sizes
#include "cpu/simd_vec.h"  // NOLINT(build/include)
// A vector wider than the set's registers has no machine mode, and GCC keeps it in memory.
static_assert(sizeof(VT<float>::V) == kVecBytes && sizeof(VT<double>::V) == kVecBytes,
              "VT must be one register of the instruction set");
}  // namespace simd
#include RBFKERN_ISA_KERNELS  // NOLINT(build/include)
}  // namespace RBFKERN_ISA_NAME
}  // namespace RBFKERN_ISA_FAMILY
}  // namespace cpu
}  // namespace rbfkern

#undef RBFKERN_ISA_NAME
#undef RBFKERN_ISA_VEC_BYTES
