// Register-blocked GEMM tile shared by the RBF forward's GEMM-form pass (rbf_kernels.h), the kNN
// candidate search (knn_kernels.h) and B-cos's linear forward for few outputs (bcos_kernels.h,
// through bcos_linear.h). Included inside those kernels files, so it is compiled
// once per instruction set with them (csrc/cpu/isa_foreach.h); no include guard on purpose.
//
//   tile[r][:] = sum_k a[r * lda + k] * bp[k * P + :]     r < R, P = NV * L lanes
//
// a: R rows of a row-major matrix, each element broadcast; bp: a packed panel [K][P]. With
// ksplit < K the sums over k < ksplit go to tile and those over k >= ksplit to tile2. Two-level
// summation: each block of kb consecutive k is summed from zero by sequential FMAs, then the block
// sums are added in order, so the rounding error is at most gemm_error_factor(K, kb) * sum |a b|
// (gamma_kb + gamma_{K/kb}, about (kb + K/kb) u) rather than gamma_K = K u of one running sum.
// Fixed order: the result depends on nothing but the operands.

// Tile shape per instruction set (a VT vector is one register): R x NV accumulators plus NV panel
// vectors and a broadcast must fit the register file (32 zmm under AVX-512, else 16).
constexpr int kGemmNV = 2;
constexpr int kGemmR = kVecBytes == 64 ? 12 : 6;
// The one-vector tile, for panels of at most L columns (a head of 10 centres): a two-vector tile
// there computes more padding lanes than centres.
constexpr int kGemmR1 = 2 * kGemmR;

// The row stride of a copy of a tile's rows (or of any rows read together): n rounded up to whole
// cache lines, an odd number of them. Rows a multiple of 4 KiB apart all fall into one L1 set and
// evict each other; an odd number of lines apart, a tile's rows fall into distinct sets.
template <class T>
constexpr int64_t gemm_row_ld(int64_t n) {
  constexpr int64_t line = 64 / (int64_t)sizeof(T);
  return (n + line - 1) / line * line | line;
}

template <class T, int R, int NV>
RBFKERN_INLINE void gemm_tile(const T* a, int64_t lda, const T* bp, int64_t K, int64_t kb, int64_t ksplit, T* tile,
                              T* tile2) {
  typedef typename simd::VT<T>::V V;
  constexpr int L = simd::VT<T>::L, P = NV * L;
  // A loop over rows left partly rolled indexes acc at run time, and GCC keeps it in memory.
  static_assert(R <= 32 && NV <= 4, "the unroll pragmas below cover the whole tile");
  for (int64_t k0 = 0; k0 < K;) {
    const int64_t k1 = std::min(k0 < ksplit ? ksplit : K, k0 + kb);
    T* out = k0 < ksplit ? tile : tile2;
    const bool first = k0 == 0 || k0 == ksplit;
    V acc[R][NV];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = simd::vbcast<T>(T(0));
    for (int64_t k = k0; k < k1; ++k) {
      V b[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) b[v] = simd::vload(bp + k * P + v * L);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const V ab = simd::vbcast<T>(a[r * lda + k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] += ab * b[v];
      }
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        T* t = out + r * P + v * L;
        simd::vstore(t, first ? acc[r][v] : V(simd::vload(t) + acc[r][v]));
      }
    k0 = k1;
  }
}

// Whether any lane of a comparison result (0 / -1 lanes) is set.
template <class VI>
RBFKERN_INLINE bool vany(VI m) {
  return simd::vor_lanes(m) != 0;
}

// The lanes of a comparison result (0 / -1 lanes) as bits (lane i -> bit i), to visit only the set
// lanes: a branch per lane mispredicts on the scattered lanes of a sparse mask.
template <class VI>
RBFKERN_INLINE uint32_t lane_bits(VI m) {
  typedef typename std::remove_reference<decltype(m[0])>::type I;
  constexpr int L = sizeof(VI) / sizeof(I);
  VI pw;
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) pw[i] = I(1) << i;
  return (uint32_t)simd::vor_lanes(m & pw);
}

// The relative factor g with |computed - exact| <= g * sum_k |a_k b_k| for gemm_tile's sum of K
// products in blocks of kb (exact: of the operands as stored), u the unit roundoff of T:
// gamma_kb + gamma_nb + gamma_kb gamma_nb (nb = ceil(K / kb)), one more u per product where the
// instruction set has no FMA (a rounded product), and 1 % slack for the second-order terms.
template <class T>
inline double gemm_error_factor(int64_t K, int64_t kb) {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  const auto gamma = [u](double n) { return n * u / (1.0 - n * u); };
  const double nb = (double)simd::cdiv(K, kb), gk = gamma((double)std::min(K, kb) + 1.0), gb = gamma(nb);
  return 1.01 * (gk + gb + gk * gb);
}
