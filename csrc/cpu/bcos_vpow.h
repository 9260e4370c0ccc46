// The B-cos power t^e = exp(e log t) over a row of doubles, vectorised by hand. Part of the kernel
// section of bcos_kernels.h (compiled once per instruction set, so the vector types lower to that
// set); no include guard on purpose. Written as scalar code inside the pixel loops, GCC 12 left
// those loops scalar (vexp after the bit manipulation of log's argument: "no vectype" for the
// loads), about 5x slower; the loops gather t in a block and call pow_row.

// log(x) of a vector of positive normal finite doubles: x = m 2^k with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(f / (2 + f)), f = m - 1, as an odd series in s = f / (2 + f), |s| <= 0.1716
// (s^2 <= 0.0295; 11 terms < 1e-17).
RBFKERN_INLINE simd::VT<double>::V vlog_pos(simd::VT<double>::V x) {
  typedef simd::VT<double>::V V;
  typedef simd::VT<double>::VI I;
  const I b = __builtin_bit_cast(I, x);
  const I e = ((b >> 52) & 0x7ff) - 1023;
  const V m1 = __builtin_bit_cast(V, (b & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);  // [1, 2)
  const I big = m1 > 1.41421356237309504880;  // -1 in the lanes to halve
  const V m = big ? m1 * 0.5 : m1;
  const V magic = simd::vbcast(bpow::kMagic);
  const V k = __builtin_bit_cast(V, __builtin_bit_cast(I, magic) + (e - big)) - magic;
  const V f = m - 1.0, s = f / (2.0 + f), z = s * s;
  V p = simd::vbcast(1.0 / 23);
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
  const V lm = 2.0 * s + 2.0 * s * z * p;  // 2 s kept apart for accuracy
  return k * bpow::kLn2Hi + (lm + k * bpow::kLn2Lo);
}

// t[i] = t[i]^e for i < n: relative error ~1e-15 for t in range, garbage outside it (callers flag
// those with bpow::out_of_range and redo them with std::pow).
inline void pow_row(double* t, int64_t n, double e) {
  constexpr int64_t L = simd::VT<double>::L;
  for (int64_t i = 0; i < n; i += L) {
    simd::VT<double>::V v = simd::vload_part(t + i, n - i);
    v = n - i < L ? (v > 0.0 ? v : 1.0) : v;  // the tail's empty lanes: any valid value
    simd::vstore_part(t + i, simd::vexp(e * vlog_pos(v)), n - i);
  }
}
