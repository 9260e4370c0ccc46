// Vector helpers shared by the CPU kernels: GCC vector types, loads and stores, a fixed-order
// horizontal sum, one vectorised exp, size arithmetic.
//
// The fixed-width types and the constants live here; the vector type the kernels compute on (VT:
// as wide as one register of the instruction set), its loads and stores and the helpers that do
// vector arithmetic live in simd_vec.h, which isa_foreach.h compiles again inside each
// instruction set's namespace (see its comment for why): 64 bytes (one zmm) under AVX-512, 32
// (one ymm) under AVX2, 16 (one xmm / NEON register) at the baseline.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // masked partial loads / stores of the AVX-512 set (simd_vec.h)
#endif

#define RBFKERN_INLINE inline __attribute__((always_inline))

namespace rbfkern {
namespace simd {

// Every vector width a kernel uses, by name: GCC drops the vector attribute of a typedef that
// depends on a template parameter when it is passed on as a template argument.
typedef float f32x16 __attribute__((vector_size(64)));
typedef double f64x8 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef int64_t i64x8 __attribute__((vector_size(64)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef int64_t i64x4 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef double f64x2 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef int64_t i64x2 __attribute__((vector_size(16)));
typedef float f32x2 __attribute__((vector_size(8)));
typedef int32_t i32x2 __attribute__((vector_size(8)));

// VecOf<T, B>: the vector of T in B bytes (V) and its same-width integer vector (I).
template <class T, int B>
struct VecOf;
#define RBFKERN_VEC_OF(T, B, VTYPE, ITYPE) \
  template <>                              \
  struct VecOf<T, B> {                     \
    typedef VTYPE V;                       \
    typedef ITYPE I;                       \
  };
RBFKERN_VEC_OF(float, 64, f32x16, i32x16)
RBFKERN_VEC_OF(double, 64, f64x8, i64x8)
RBFKERN_VEC_OF(float, 32, f32x8, i32x8)
RBFKERN_VEC_OF(double, 32, f64x4, i64x4)
RBFKERN_VEC_OF(float, 16, f32x4, i32x4)
RBFKERN_VEC_OF(double, 16, f64x2, i64x2)
RBFKERN_VEC_OF(float, 8, f32x2, i32x2)
RBFKERN_VEC_OF(int32_t, 64, i32x16, i32x16)
RBFKERN_VEC_OF(int64_t, 64, i64x8, i64x8)
RBFKERN_VEC_OF(int32_t, 32, i32x8, i32x8)
RBFKERN_VEC_OF(int64_t, 32, i64x4, i64x4)
RBFKERN_VEC_OF(int32_t, 16, i32x4, i32x4)
RBFKERN_VEC_OF(int64_t, 16, i64x2, i64x2)
RBFKERN_VEC_OF(int32_t, 8, i32x2, i32x2)
#undef RBFKERN_VEC_OF

// Lane type (T), same-width integer vector (I) and lane count (L) of a vector, or of a scalar double.
template <class V>
struct Lanes {
  typedef std::remove_cv_t<std::remove_reference_t<decltype(V{}[0])>> T;
  typedef typename VecOf<T, (int)sizeof(V)>::I I;
  static constexpr int L = (int)(sizeof(V) / sizeof(T));
};
template <>
struct Lanes<double> {
  typedef double T;
  typedef int64_t I;
  static constexpr int L = 1;
};

// ---------------------------------------------------------------------------------------------
// exp, branch-free, on a vector (any width) or on a scalar double in a loop GCC vectorises
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
