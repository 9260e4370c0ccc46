// Vector helpers shared by the CPU kernels: GCC vector types of 64 bytes (16 float / 8 double
// lanes), loads and stores, a fixed-order horizontal sum, one vectorised exp, size arithmetic.
//
// Types, loads and stores live here; the helpers that do vector arithmetic live in simd_vec.h,
// which isa_foreach.h compiles again inside each instruction set's namespace (see its comment
// for why). There a 64-byte vector is one zmm register, two ymm or four xmm.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // masked partial loads / stores of the AVX-512 set (simd_vec.h)
#endif

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

// Integer ceiling division and round-up for non-negative sizes.
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

// The vector helpers at the baseline target (kernels use their per-ISA copy: isa_foreach.h).
#include "cpu/simd_vec.h"  // NOLINT(build/include)

}  // namespace simd
}  // namespace rbfkern
