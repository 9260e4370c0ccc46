// Vector helpers shared by the CPU kernels: GCC vector types of 64 bytes (16 float / 8 double
// lanes), loads and stores, a fixed-order horizontal sum, one vectorised exp, size arithmetic.
//
// Everything here is always_inline and compiled at the baseline target; inlined into a kernel
// that isa_foreach.h compiles for AVX-512 (AVX2, baseline) it becomes AVX-512 (AVX2, SSE) code:
// a 64-byte vector is one zmm register, two ymm or four xmm.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#define RBFKERN_INLINE inline __attribute__((always_inline))

namespace rbfkern {
namespace simd {

typedef float f32x16 __attribute__((vector_size(64)));
typedef double f64x8 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef int64_t i64x8 __attribute__((vector_size(64)));

// VT<T>: the vector of T (V), its lane mask / integer vector (VI) and lane count (L).
template <class T>
struct VT;
template <>
struct VT<float> {
  typedef f32x16 V;
  typedef i32x16 VI;
  static constexpr int L = 16;
};
template <>
struct VT<double> {
  typedef f64x8 V;
  typedef i64x8 VI;
  static constexpr int L = 8;
};

template <class T>
RBFKERN_INLINE typename VT<T>::V vload(const T* p) {
  typename VT<T>::V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
RBFKERN_INLINE void vstore(T* p, typename VT<T>::V v) {
  std::memcpy(p, &v, sizeof v);
}
template <class T>
RBFKERN_INLINE typename VT<T>::V vbcast(T s) {
  return s - typename VT<T>::V{};  // folds to one broadcast (0 + s would not: signed zeros)
}
// Load n <= L elements, zero-filling the rest.
template <class T>
RBFKERN_INLINE typename VT<T>::V vload_part(const T* p, int64_t n) {
  typename VT<T>::V v = {};
  if (n >= VT<T>::L) return vload(p);
  std::memcpy(&v, p, sizeof(T) * (size_t)n);
  return v;
}
template <class T>
RBFKERN_INLINE void vstore_part(T* p, typename VT<T>::V v, int64_t n) {
  if (n >= VT<T>::L) {
    vstore(p, v);
    return;
  }
  std::memcpy(p, &v, sizeof(T) * (size_t)n);
}
// Horizontal sum, fixed pairwise order.
RBFKERN_INLINE float vhsum(f32x16 v) {
  f32x16 s = v + __builtin_shuffle(v, i32x16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  s = s + __builtin_shuffle(s, i32x16{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  s = s + __builtin_shuffle(s, i32x16{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  return s[0] + s[1];
}
RBFKERN_INLINE double vhsum(f64x8 v) {
  f64x8 s = v + __builtin_shuffle(v, i64x8{4, 5, 6, 7, 0, 1, 2, 3});
  s = s + __builtin_shuffle(s, i64x8{2, 3, 0, 1, 6, 7, 4, 5});
  return s[0] + s[1];
}

// ---------------------------------------------------------------------------------------------
// exp, branch-free, on a vector (f32x16, f64x8) or on a scalar double in a loop GCC vectorises
// (the B-cos power). Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, Taylor polynomial (float:
// to r^7, double: to r^13; error well below 1 ulp before rounding), 2^k from the exponent bits.
// Below `lo` the result is 0 (no subnormals), above `hi` inf, NaN stays NaN.
// ---------------------------------------------------------------------------------------------
template <class T>
struct ExpConst;
template <>
struct ExpConst<float> {
  static constexpr float lo = -87.0f, hi = 88.0f, log2e = 1.44269504088896341f;
  static constexpr float magic = 12582912.0f;  // 1.5 * 2^23: v + magic keeps round(v) in the low bits
  static constexpr float ln2hi = 0.693359375f, ln2lo = -2.12194440e-4f;
  static constexpr int mant = 23, bias = 127;
};
template <>
struct ExpConst<double> {
  static constexpr double lo = -708.0, hi = 709.0, log2e = 1.4426950408889634074;
  static constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
  static constexpr int mant = 52, bias = 1023;
};

// Lane type (T) and same-width integer type (I) of a vector, or of a scalar double.
template <class V>
struct Lanes;
template <>
struct Lanes<double> {
  typedef double T;
  typedef int64_t I;
};
template <>
struct Lanes<f32x16> {
  typedef float T;
  typedef i32x16 I;
};
template <>
struct Lanes<f64x8> {
  typedef double T;
  typedef i64x8 I;
};

// Quiet comparisons: on scalars `<` may trap on NaN, which keeps GCC from if-converting the loop.
RBFKERN_INLINE bool lanes_less(double a, double b) { return __builtin_isless(a, b); }
RBFKERN_INLINE bool lanes_greater(double a, double b) { return __builtin_isgreater(a, b); }
template <class V>
RBFKERN_INLINE typename Lanes<V>::I lanes_less(V a, typename Lanes<V>::T b) {
  return a < b;
}
template <class V>
RBFKERN_INLINE typename Lanes<V>::I lanes_greater(V a, typename Lanes<V>::T b) {
  return a > b;
}
template <class V>
RBFKERN_INLINE V splat(typename Lanes<V>::T s) {
  if constexpr (std::is_floating_point<V>::value) return s;
  else return s - V{};
}

// Taylor coefficients of exp, highest first: 1/7! .. 1 for float, 1/13! .. 1 for double.
template <class T>
struct ExpPoly;
template <>
struct ExpPoly<float> {
  static constexpr int n = 8;
  static constexpr float c[n] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
};
template <>
struct ExpPoly<double> {
  static constexpr int n = 14;
  static constexpr double c[n] = {1.0 / 6227020800.0, 1.0 / 479001600, 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880,
                                  1.0 / 40320, 1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0};
};

// Horner, highest coefficient first.
template <class V>
RBFKERN_INLINE V exp_poly(V r) {
  typedef ExpPoly<typename Lanes<V>::T> C;
  V p = splat<V>(C::c[0]);
#pragma GCC unroll 16
  for (int i = 1; i < C::n; ++i) p = p * r + C::c[i];
  return p;
}

// NONPOS: the caller guarantees x <= 0 (or NaN), so the overflow clamp is left out.
template <class V, bool NONPOS = false>
RBFKERN_INLINE V vexp(V x) {
  typedef typename Lanes<V>::T T;
  typedef typename Lanes<V>::I I;
  typedef ExpConst<T> K;
  const auto under = lanes_less(x, K::lo);
  x = under ? splat<V>(K::lo) : x;
  auto over = under;
  if (!NONPOS) {
    over = lanes_greater(x, K::hi);
    x = over ? splat<V>(K::hi) : x;
  }
  const V v = x * K::log2e + K::magic;
  const I k = __builtin_bit_cast(I, v) - __builtin_bit_cast(I, splat<V>(K::magic));
  const V kd = v - K::magic;
  V r = x - kd * K::ln2hi;
  r = r - kd * K::ln2lo;
  V scale;
  if constexpr (std::is_floating_point<V>::value)  // unsigned: no signed shift for UBSan to flag
    scale = __builtin_bit_cast(V, static_cast<uint64_t>(k + K::bias) << K::mant);
  else
    scale = __builtin_bit_cast(V, (k + K::bias) << K::mant);
  const V res = exp_poly(r) * scale;
  // a select of constants, multiplied in: nothing conditional left for a scalar loop to branch on
  V fix = under ? splat<V>(T(0)) : splat<V>(T(1));
  if (!NONPOS) fix = over ? splat<V>(__builtin_inf()) : fix;
  return res * fix;
}

// exp(x) for x <= 0: the RBF activations.
template <class V>
RBFKERN_INLINE V vexp_nonpos(V x) {
  return vexp<V, true>(x);
}

// Integer ceiling division and round-up for non-negative sizes.
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

}  // namespace simd
}  // namespace rbfkern
