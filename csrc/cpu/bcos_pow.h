// The scalar parts of the B-cos power (B != 1, 2): the constants of its log and the range check.
// The power itself runs on vectors (bcos_vpow.h, in the kernel section: GCC 12 does not
// vectorise a loop around a scalar log + exp). Valid for positive normal finite arguments (the
// B-cos argument is |cos| + 1e-6 >= 1e-6, so only inf / NaN fall outside); callers flag anything
// else with out_of_range and recompute it with std::pow. Relative error ~1e-15 (float64), so the
// float32 kernels, which evaluate in double, round to the correctly rounded float almost always.
#pragma once

#include <cstdint>

#include "cpu/simd.h"

namespace rbfkern {
namespace cpu {
namespace bpow {

// bit_cast<double>(bit_cast<int64>(kMagic) + k) - kMagic turns a small int64 k into a double
// without a cvt.
constexpr double kMagic = simd::ExpConst<double>::magic;
constexpr double kLn2Hi = simd::ExpConst<double>::ln2hi, kLn2Lo = simd::ExpConst<double>::ln2lo;

// 1 when x is outside the range pow_row (bcos_vpow.h) handles (NaN, inf, 0, subnormal), else 0; callers sum it
// over a row (an integer reduction keeps the loop vectorisable) and redo such rows.
RBFKERN_INLINE int64_t out_of_range(double x) { return __builtin_isgreaterequal(x, 2.2250738585072014e-308) & __builtin_islessequal(x, 1.7976931348623157e308) ? 0 : 1; }

}  // namespace bpow
}  // namespace cpu
}  // namespace rbfkern
