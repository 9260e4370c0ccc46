// Branch-free double-precision log and pow for the B-cos power (B != 1, 2), written as scalar
// code with no calls or branches (quiet comparisons, which GCC may if-convert without
// -fno-trapping-math) so GCC vectorises the pixel loops of bcos_kernels.h that inline them; exp
// is simd::vexp.
//
// Valid for positive normal finite x (the B-cos argument is |cos| + 1e-6 >= 1e-6, so only
// inf / NaN fall outside); callers flag anything else and recompute it with std::pow. Relative
// error ~1e-15 (float64), so the float32 kernels, which evaluate in double, round to the
// correctly rounded float almost always.
#pragma once

#include <cstdint>

#include "cpu/simd.h"

namespace rbfkern {
namespace cpu {
namespace bpow {

RBFKERN_INLINE int64_t bits(double d) {
  return __builtin_bit_cast(int64_t, d);
}

RBFKERN_INLINE double from_bits(int64_t i) {
  return __builtin_bit_cast(double, i);
}

// from_bits(bits(kMagic) + k) - kMagic turns a small int64 k into a double without a cvt.
constexpr double kMagic = simd::ExpConst<double>::magic;
constexpr double kLn2Hi = simd::ExpConst<double>::ln2hi, kLn2Lo = simd::ExpConst<double>::ln2lo;

// log(x): x = m 2^k with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(f / (2 + f)), f = m - 1,
// as an odd series in s = f / (2 + f), |s| <= 0.1716 (s^2 <= 0.0295; 11 terms < 1e-17).
RBFKERN_INLINE double log_pos(double x) {
  const int64_t b = bits(x);
  const int64_t e = ((b >> 52) & 0x7ff) - 1023;
  double m = from_bits((b & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);  // [1, 2)
  const bool big = __builtin_isgreater(m, 1.41421356237309504880);
  m *= big ? 0.5 : 1.0;  // a select of constants: nothing conditional to speculate
  const double k = (from_bits(bits(kMagic) + e) - kMagic) + (big ? 1.0 : 0.0);
  const double f = m - 1.0, s = f / (2.0 + f), z = s * s;
  double p = 1.0 / 23;
  p = p * z + 1.0 / 21;
  p = p * z + 1.0 / 19;
  p = p * z + 1.0 / 17;
  p = p * z + 1.0 / 15;
  p = p * z + 1.0 / 13;
  p = p * z + 1.0 / 11;
  p = p * z + 1.0 / 9;
  p = p * z + 1.0 / 7;
  p = p * z + 1.0 / 5;
  p = p * z + 1.0 / 3;
  // log m = 2 s + 2 s^3 p(z) = f - (f - 2 s) + ...; keep 2 s separate for accuracy.
  const double lm = 2.0 * s + 2.0 * s * z * p;
  return k * kLn2Hi + (lm + k * kLn2Lo);
}

// 1 when x is outside the range pow_pos handles (NaN, inf, 0, subnormal), else 0; callers sum it
// over a row (an integer reduction keeps the loop vectorisable) and redo such rows.
RBFKERN_INLINE int64_t out_of_range(double x) { return __builtin_isgreaterequal(x, 2.2250738585072014e-308) & __builtin_islessequal(x, 1.7976931348623157e308) ? 0 : 1; }

// x^e for x in the valid range (garbage outside it; see out_of_range).
RBFKERN_INLINE double pow_pos(double x, double e) { return simd::vexp(e * log_pos(x)); }

}  // namespace bpow
}  // namespace cpu
}  // namespace rbfkern
