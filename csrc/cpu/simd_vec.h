// The vector type the kernels compute on, its loads and stores, and the vector arithmetic helpers
// (broadcast, horizontal sum, comparisons, exp). No include guard on purpose: simd.h includes this
// file once at the baseline target (for scalar callers such as bcos_pow.h), and isa_foreach.h
// includes it again inside each instruction set's namespace, under that set's `#pragma GCC
// target`, with RBFKERN_ISA_VEC_BYTES its register width.
//
// Why per set, twice over:
// - The width. VT<T> is one register of the set: a wider GCC vector has no machine mode there
//   (below AVX-512 there is none for 64 bytes), so GCC keeps it in memory, and a kernel's array of
//   them (a tile's accumulators) went through the stack and general registers on every FMA.
// - The code. GCC lowers a function's generic vector operations for the target the function is
//   *defined* under, before inlining: defined at the baseline, a broadcast became pieces that an
//   AVX-512 caller reassembled lane by lane. Defined inside the ISA namespace they compile to
//   single zmm / ymm instructions.
// Expects Lanes, ExpConst and ExpPoly (simd.h) to be visible.

#ifdef RBFKERN_ISA_VEC_BYTES
constexpr int kVTBytes = RBFKERN_ISA_VEC_BYTES;
#else
constexpr int kVTBytes = 16;
#endif

// VT<T>: the vector of T (V), its lane mask / integer vector (VI) and lane count (L).
template <class T>
struct VT {
  typedef typename VecOf<T, kVTBytes>::V V;
  typedef typename VecOf<T, kVTBytes>::I VI;
  static constexpr int L = kVTBytes / (int)sizeof(T);
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

// |v| lane-wise as std::abs gives it: the sign bit cleared (-0 -> +0, NaN payloads kept).
template <class V>
RBFKERN_INLINE V vabs(V v) {
  typedef typename Lanes<V>::I I;
  typedef std::conditional_t<sizeof(typename Lanes<V>::T) == 4, int32_t, int64_t> SI;
  return (V)((I)v & (I{} + std::numeric_limits<SI>::max()));
}

// Horizontal sum, OR and min in a fixed pairwise order, the same for every width: add (or, min)
// the high half into the low half until two lanes are left, so lane i meets lane i + L/2 first.
template <class V>
struct HalfOf {
  typedef typename VecOf<typename Lanes<V>::T, (int)sizeof(V) / 2>::V H;
  RBFKERN_INLINE static H lo(V v) {
    H h;
    std::memcpy(&h, &v, sizeof h);
    return h;
  }
  // The high half rotated into the low one by a shuffle in registers: a memcpy from the upper
  // bytes made GCC spill a zmm to the stack and reload its halves.
  RBFKERN_INLINE static H hi(V v) {
    typedef typename Lanes<V>::I I;
    constexpr int L = Lanes<V>::L;
    I rot;
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) rot[i] = (i + L / 2) % L;
    return lo(__builtin_shuffle(v, rot));
  }
};
template <class V>
RBFKERN_INLINE typename Lanes<V>::T vhsum(V v) {
  if constexpr (Lanes<V>::L == 2) {
    return v[0] + v[1];
  } else {
    return vhsum(HalfOf<V>::lo(v) + HalfOf<V>::hi(v));
  }
}
template <class V>
RBFKERN_INLINE typename Lanes<V>::T vor_lanes(V v) {
  if constexpr (Lanes<V>::L == 2) {
    return v[0] | v[1];
  } else {
    return vor_lanes(HalfOf<V>::lo(v) | HalfOf<V>::hi(v));
  }
}
template <class V>
RBFKERN_INLINE typename Lanes<V>::T vhmin(V v) {
  if constexpr (Lanes<V>::L == 2) {
    return v[1] < v[0] ? v[1] : v[0];
  } else {
    const auto lo = HalfOf<V>::lo(v), hi = HalfOf<V>::hi(v);
    return vhmin(hi < lo ? hi : lo);
  }
}

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


// The first min(n, L) bytes at p zero-extended into the lanes of VT<T>::VI, the rest zero (B-cos's
// argmax index maps). GCC 12 lowers __builtin_convertvector of a byte vector lane by lane, through
// general registers; the x86 sets widen in one instruction.
template <class T>
RBFKERN_INLINE typename VT<T>::VI vload_u8(const uint8_t* p, int64_t n) {
  typedef typename VT<T>::VI I;
  constexpr int L = VT<T>::L;
#if defined(RBFKERN_ISA_VEC_BYTES) && RBFKERN_ISA_VEC_BYTES >= 32 && (defined(__x86_64__) || defined(__i386__))
  __m128i b = _mm_setzero_si128();
  if (n >= L) std::memcpy(&b, p, L);  // one load; a run-time length goes through the stack
  else if (n > 0) std::memcpy(&b, p, static_cast<size_t>(n));
#if RBFKERN_ISA_VEC_BYTES == 64
  if constexpr (sizeof(T) == 4) return (I)_mm512_cvtepu8_epi32(b);
  else return (I)_mm512_cvtepu8_epi64(b);
#else
  if constexpr (sizeof(T) == 4) return (I)_mm256_cvtepu8_epi32(b);
  else return (I)_mm256_cvtepu8_epi64(b);
#endif
#else
  I v;
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) v[i] = i < n ? p[i] : 0;
  return v;
#endif
}

#if defined(RBFKERN_ISA_VEC_BYTES) && RBFKERN_ISA_VEC_BYTES == 64 && !defined(__SANITIZE_ADDRESS__)
// Partial loads and stores (the first n lanes; a load zero-fills the rest) as AVX-512 masked
// instructions: the other sets' versions (below) copy through the stack with a memcpy of run-time
// length, a libc call and a store-forwarding stall per row tail, which on short rows (a head of 10
// centres) cost more than the row's arithmetic. Masked-out lanes are neither read nor written and
// never fault (AVX-512 guarantees it on every vendor; AVX2's vmaskmov leaves faults on masked-out
// lanes to AMD's implementations, so that set keeps the copy). ASan does not instrument masked
// moves: its builds keep the copy too.
template <class T>
RBFKERN_INLINE typename VT<T>::V vload_part(const T* p, int64_t n) {
  typedef typename VT<T>::V V;
  if (n >= VT<T>::L) return vload(p);
  if (n <= 0) return V{};
  if constexpr (std::is_same<T, float>::value)
    return (V)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
  else
    return (V)_mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1u), p);
}

template <class T>
RBFKERN_INLINE void vstore_part(T* p, typename VT<T>::V v, int64_t n) {
  if (n >= VT<T>::L) {
    vstore(p, v);
    return;
  }
  if (n <= 0) return;
  if constexpr (std::is_same<T, float>::value)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
  else
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1u), (__m512d)v);
}
#else
// Partial loads and stores (the first n lanes; a load zero-fills the rest) through the stack.
template <class T>
RBFKERN_INLINE typename VT<T>::V vload_part(const T* p, int64_t n) {
  typename VT<T>::V v = {};
  if (n >= VT<T>::L) return vload(p);
  if (n > 0) std::memcpy(&v, p, sizeof(T) * (size_t)n);
  return v;
}
template <class T>
RBFKERN_INLINE void vstore_part(T* p, typename VT<T>::V v, int64_t n) {
  if (n >= VT<T>::L) {
    vstore(p, v);
    return;
  }
  if (n > 0) std::memcpy(p, &v, sizeof(T) * (size_t)n);
}
#endif
