// Branch-free double-precision log / exp / pow for the B-cos power (B != 1, 2), written as
// scalar code with no calls or branches (quiet comparisons, which GCC may if-convert without
// -fno-trapping-math) so GCC vectorises the pixel loops that inline them
// (csrc/cpu/bcos.cpp compiles those loops once per instruction set).
//
// Valid for positive normal finite x (the B-cos argument is |cos| + 1e-6 >= 1e-6, so only
// inf / NaN fall outside); callers flag anything else and recompute it with std::pow. Relative error ~1e-15 (float64), so the
// float32 kernels, which evaluate in double, round to the correctly rounded float almost always.
// No include guard on purpose: the kernel section of bcos.cpp includes this once per ISA
// namespace (all functions are inline).
#include <cstdint>
#include <cstring>

#ifndef RBFKERN_BCOS_INLINE
#define RBFKERN_BCOS_INLINE inline __attribute__((always_inline))
#endif

namespace bpow {

RBFKERN_BCOS_INLINE int64_t bits(double d) {
  return __builtin_bit_cast(int64_t, d);
}

RBFKERN_BCOS_INLINE double from_bits(int64_t i) {
  return __builtin_bit_cast(double, i);
}

// 1.5 * 2^52: adding it to a double of magnitude < 2^51 leaves round(v) in the low mantissa bits,
// and from_bits(bits(magic) + k) - magic turns a small int64 k into a double without a cvt.
constexpr double kMagic = 6755399441055744.0;
constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;

// log(x): x = m 2^k with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(f / (2 + f)), f = m - 1,
// as an odd series in s = f / (2 + f), |s| <= 0.1716 (s^2 <= 0.0295; 11 terms < 1e-17).
RBFKERN_BCOS_INLINE double log_pos(double x) {
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

// exp(y): y = k ln2 + r, |r| <= ln2 / 2, Taylor to r^13 (< 1e-17 relative), 2^k from the
// exponent bits. y < -708 -> 0, y > 709 -> inf.
RBFKERN_BCOS_INLINE double exp_any(double y) {
  const double lo = -708.0, hi = 709.0;
  const bool under = __builtin_isless(y, lo), over = __builtin_isgreater(y, hi);
  y = under ? lo : (over ? hi : y);
  const double v = y * 1.44269504088896340736 + kMagic;
  const int64_t k = bits(v) - bits(kMagic);
  const double kd = v - kMagic;
  const double r = (y - kd * kLn2Hi) - kd * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const double res = p * from_bits((k + 1023) << 52);
  return res * (under ? 0.0 : (over ? __builtin_inf() : 1.0));
}

// 1 when x is outside the range pow_pos handles (NaN, inf, 0, subnormal), else 0; callers sum it
// over a row (an integer reduction keeps the loop vectorisable) and redo such rows.
RBFKERN_BCOS_INLINE int64_t out_of_range(double x) { return __builtin_isgreaterequal(x, 2.2250738585072014e-308) & __builtin_islessequal(x, 1.7976931348623157e308) ? 0 : 1; }

// x^e for x in the valid range (garbage outside it; see out_of_range).
RBFKERN_BCOS_INLINE double pow_pos(double x, double e) { return exp_any(e * log_pos(x)); }

}  // namespace bpow
