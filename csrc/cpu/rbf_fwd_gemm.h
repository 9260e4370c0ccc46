// RBF forward, none / diag metric, in the GEMM form with a certified error bound per pair and a
// difference-form recompute of the pairs that fail it. Included by rbf_kernels.h (per instruction
// set, inside its namespace: uses its sinks and pack helpers); no include guard on purpose.
//
// Both sides are first shifted by mu, the mean of the centres (r2 does not change; the GEMM form's
// cancellation then scales with the spread of the data, not its distance from the origin):
// x' = x - mu, c' = c - mu, X = sum_d w x'^2, C_j = sum_d w_j c'^2 and
//     r2 = X - 2 sum_d w x' c' + C_j.
// Shared metric (none, or one w): K = D, one GEMM of x' with the panel -2 w c', X per row.
// Per-centre w: K = 2D, rows [x', x'^2] times the panel [-2 w_j c'_j ; w_j], the two halves summed
// apart (gemm_tile's split), so X is per pair. 2 FMAs per (n, j, d) instead of the difference
// form's sub, mul, FMA; 1 instead of 2-3 for a shared metric.
//
// Error bound (rounding analysis in the comments of gemm_fwd_bound): the computed r2^ satisfies
//     |r2^ - r2| <= tau r2^   whenever   alpha r2^ >= xi X^ + zeta C^_j + theta,
// with tau = max(128, 2 (D + 3)) u: at most twice the difference form's own worst-case bound
// (D + 3) u r2 (u the unit roundoff). Pairs that fail (x near c_j relative to |x'|^2 + |c'_j|^2,
// non-finite or tiny values) are recomputed in the difference form (diff_pair). Each pair's value
// depends only on its own operands and the fixed tiling, never on the thread count.

// The smallest D that takes the GEMM form (below it the difference form costs no more).
constexpr int64_t kGemmFwdMinD = 16;

// Constants of the acceptance test (see the file comment), for T, D and the summation blocks.
struct GemmFwdBound {
  double alpha, xi, zeta, theta;
};

template <class T>
inline GemmFwdBound gemm_fwd_bound(int64_t D, int64_t kb, bool per_centre) {
  const double u = std::numeric_limits<T>::epsilon() / 2, u64 = std::numeric_limits<double>::epsilon() / 2;
  const double tau = std::max(128.0, 2.0 * (double)(D + 3)) * u;
  // Sources, each a multiple of X' = sum w x'^2, C' = sum w c'^2 (exact, of the shifted operands):
  //  shift rounding x' = fl(x - mu):           u (r2 + 2 X' + 2 C')  (|x'-c' - (x-c)| <= u(|x'|+|c'|))
  //  panel rounding fl(w c'):                   u (X' + C')           (2|w x' c'| <= w x'^2 + w c'^2)
  //  cross GEMM, blocks of kb:                  gc (1 + u) (X' + C')
  //  X^: per-centre the square half of the GEMM gx = gc (1 + u) + u, shared a double sum rounded ux
  //  C^_j: a double sum rounded:                ux C'
  //  t = fl(S + X^), r2^ = fl(t + C^):          u |t| <= u (2 X' + C'), u r2^
  // so |r2^ - r2| <= u r2 + 2.01 u r2^ + (gc' + gx + 5u) X' + (gc' + ux + 4u) C'; with r2 <= r2^ + E,
  // X' <= X^ / (1 - gx), C' <= C^ / (1 - ux), the acceptance test below implies E <= tau r2^.
  // The 5 % slack covers the test's own rounding and the second-order terms.
  const double gc = gemm_error_factor<T>(D, kb) * (1 + u);
  const double ux = u + (double)(D + 3) * u64;
  const double gx = per_centre ? gc + u : ux;
  GemmFwdBound b;
  b.alpha = (1 - u) * tau - 2.01 * u;
  b.xi = 1.05 * (gc + gx + 6 * u) / (1 - gx - u);
  b.zeta = 1.05 * (gc + ux + 4 * u) / (1 - ux);
  // Underflow: gradual underflow adds an absolute error of at most half the smallest subnormal
  // per rounding; 4 (2K + 8) of them, against the relative test.
  b.theta = 4.0 * (4.0 * (double)D + 8.0) * (double)std::numeric_limits<T>::denorm_min() / tau;
  return b;
}

// Summation block of the GEMM form: the longest of 64, 32, 16, 8 whose acceptance test still
// passes pairs with r2 >= 3/4 (X + C) (xi + zeta <= 3/4 alpha), so that well-separated pairs are
// not recomputed. Longer blocks cost less (each block ends with a load-add-store of the tile) but
// loosen the bound (gamma_kb + gamma_{D/kb}).
template <class T>
inline int64_t gemm_fwd_block(int64_t D, bool per_centre) {
  for (int64_t kb = 64; kb > 8; kb /= 2) {
    const GemmFwdBound b = gemm_fwd_bound<T>(D, kb, per_centre);
    if (b.xi + b.zeta <= 0.75 * b.alpha) return kb;
  }
  return 8;
}

// The difference form of one pair, vectorised over d (fixed lane order, then vhsum's fixed order):
// the pairs that fail the test are a few percent of all pairs for clustered data, and a scalar
// loop over d would cost more than the whole GEMM.
template <class T, bool DIAG>
RBFKERN_INLINE T diff_pair(const T* x, const T* c, const T* w, int64_t D) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  V acc = vbcast<T>(T(0));
  for (int64_t d = 0; d < D; d += L) {
    const int64_t m = std::min<int64_t>(L, D - d);
    const V t = vload_part(x + d, m) - vload_part(c + d, m);
    if (DIAG) acc += (t * vload_part(w + d, m)) * t;
    else acc += t * t;
  }
  return vhsum(acc);
}

// VT<double>::L elements of p widened to double.
template <class T>
RBFKERN_INLINE typename VT<double>::V widen(const T* p) {
  typedef typename VT<double>::V VD;
  if constexpr (std::is_same<T, double>::value) {
    return vload(p);
  } else {
    typedef typename simd::VecOf<float, (int)sizeof(VD) / 2>::V FH;
    FH h;
    std::memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, VD);
  }
}

// sum_d w_d o_d^2 in double (ws null: w = 1), a vector of lanes at a time: a scalar loop is one
// chain of dependent FMAs per row, which cost more than the row's share of the GEMM.
template <class T>
RBFKERN_INLINE double weighted_sq_sum(const T* o, const T* ws, int64_t D) {
  typedef typename VT<double>::V VD;
  constexpr int64_t LD = VT<double>::L;
  VD acc = {};
  int64_t d = 0;
  if (ws) {
    for (; d + LD <= D; d += LD) {
      const VD v = widen(o + d);
      acc += widen(ws + d) * v * v;
    }
  } else {
    for (; d + LD <= D; d += LD) {
      const VD v = widen(o + d);
      acc += v * v;
    }
  }
  double s = vhsum(acc);
  for (; d < D; ++d) s += (ws ? (double)ws[d] : 1.0) * (double)o[d] * (double)o[d];
  return s;
}

// x rows [n0, n0 + nr) shifted into the first K of each row of dst [rows][ld] (per-centre:
// [x', x'^2]), zero padded to `rows`, and, for a shared metric, X = sum w x'^2 per row (ws null:
// w = 1; per-centre the GEMM's second half gives X per pair, and xn is left alone).
template <class T>
static void pack_rows_shifted(const RbfProblem<T>& p, const T* mu, bool per_centre, int64_t n0, int64_t nr,
                              int64_t rows, int64_t K, int64_t ld, T* dst, T* xn) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t D = p.D;
  const T* ws = p.metric_kind == kMetricDiag && p.metric_shared ? p.metric : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    T* o = dst + r * ld;
    if (r >= nr) {
      std::fill(o, o + K, T(0));
      xn[r] = T(0);
      continue;
    }
    const T* x = p.x + (n0 + r) * D;
    for (int64_t d = 0; d < D; d += L) {
      const int64_t m = std::min<int64_t>(L, D - d);
      const V v = vload_part(x + d, m) - vload_part(mu + d, m);
      vstore_part(o + d, v, m);
      if (per_centre) vstore_part(o + D + d, v * v, m);
    }
    if (per_centre) continue;
    xn[r] = (T)weighted_sq_sum(o, ws, D);
  }
}

// One thread's pass over row tiles and panels: the GEMM tile, the acceptance test, the difference
// form for the pairs that fail it, then the sink.
template <class T, bool DIAG, class Sink>
struct GemmFwdTiles {
  typedef typename VT<T>::V V;
  typedef typename VT<T>::VI VI;
  static constexpr int L = VT<T>::L;
  const RbfProblem<T>& p;
  int64_t K, kb, ksplit;
  T alpha, xi;
  const T *ws, *cn, *gam;     // shared weights (null: none / per centre); per centre C^, zeta C^ + theta
  const T* xs;                 // packed rows of the block, ld apart
  int64_t ld;
  const T* xn;                 // shared metric: X per packed row
  T *tile, *tile2;             // kGemmR1 * L == kGemmR * kGemmNV * L elements each
  Sink* sink;

  // Rows [r0, r0 + R) of the block starting at row n0 (nr rows) against the panel b of NV vectors,
  // centres [j0, j0 + nc).
  template <int NV, int R>
  void run(int64_t n0, int64_t nr, int64_t r0, int64_t j0, int64_t nc, const T* b) {
    constexpr int P = NV * L;
    const bool per_centre = ksplit < K;
    const T big = std::numeric_limits<T>::max();
    gemm_tile<T, R, NV>(xs + r0 * ld, ld, b, K, kb, ksplit, tile, tile2);
    const int64_t rv = std::min<int64_t>(R, nr - r0);
    VI bad[R * NV];
    VI any_bad = {};
    for (int64_t r = 0; r < rv; ++r) {
      const V xb = vbcast<T>(xn[(size_t)(r0 + r)]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const V X = per_centre ? vload(tile2 + r * P + v * L) : xb;
        const V t = vload(tile + r * P + v * L) + X;
        const V r2v = t + vload(cn + j0 + v * L);
        const V rhs = xi * X + vload(gam + j0 + v * L);
        const VI m = ~((alpha * r2v >= rhs) & (r2v <= big));
        bad[r * NV + v] = m;
        any_bad |= m;
        vstore(tile + r * P + v * L, r2v);
      }
    }
    // The pairs that failed the test: the difference form.
    const int64_t D = p.D;
    for (int64_t r = 0; vany(any_bad) && r < rv; ++r) {
      const int64_t n = n0 + r0 + r;
      for (int v = 0; v < NV; ++v) {
        for (uint32_t m = lane_bits(bad[r * NV + v]); m != 0; m &= m - 1) {
          const int64_t i = v * L + __builtin_ctz(m);
          if (i >= nc) break;  // padding centres (lanes in increasing order)
          const int64_t j = j0 + i;
          tile[(size_t)(r * P + i)] = diff_pair<T, DIAG>(p.x + n * D, p.centers + j * D,
                                                         DIAG ? (ws ? ws : p.metric + j * D) : nullptr, D);
        }
      }
    }
    sink->put(n0 + r0, rv, j0, nc, tile, P);
  }
};

// Panels of kGemmNV vectors (P2 lanes), and where the last P2 columns hold at most L centres a last
// panel of one vector, with its own taller tile (kGemmR1 rows): a head of 10 centres, or C = 40
// under AVX-512 (32 + 8), would otherwise compute more padding lanes than centres in that panel.
// Each lane's sum runs over the same k in the same order whatever the tile, so the panels, the
// tiles and the row blocks change the speed, never a value.
template <class T, bool DIAG, class Sink>
static void forward_gemm(const RbfProblem<T>& p, const Sink& sink0, int nthreads) {
  constexpr int L = VT<T>::L, R2 = kGemmR, P2 = kGemmNV * L, R1 = kGemmR1;
  static_assert(R1 % R2 == 0 && R1 * L <= R2 * P2, "the one-vector tile fits the tile buffers");
  const int64_t N = p.N, C = p.C, D = p.D;
  const int64_t nfull = C % P2 != 0 && C % P2 <= L ? C / P2 : simd::cdiv(C, P2);  // panels of P2
  const bool tail = nfull * P2 < C;                                                // one of L
  // Rows per block: up to 8 tiles, fewer where that leaves a thread without a block.
  const int64_t RB = std::min<int64_t>(8 * R2, simd::round_up(simd::cdiv(N, std::max(nthreads, 1)), R1));
  const bool per_centre = DIAG && !p.metric_shared;
  const int64_t K = per_centre ? 2 * D : D, kb = gemm_fwd_block<T>(D, per_centre);
  const GemmFwdBound bd = gemm_fwd_bound<T>(D, kb, per_centre);
  // mu: the mean of the centres, in double, in centre order.
  std::vector<T> mu((size_t)D);
  for (int64_t d = 0; d < D; ++d) {
    double s = 0.0;
    for (int64_t j = 0; j < C; ++j) s += (double)p.centers[j * D + d];
    mu[(size_t)d] = (T)(s / (double)C);
  }
  // Panels [K][P] of -2 w c' (and w); per centre C^ and zeta C^ + theta, padded to the panels.
  const int64_t ncols = nfull * P2 + (tail ? L : 0);
  std::vector<T> bp((size_t)(ncols * K), T(0)), cn((size_t)ncols, T(0)), gam((size_t)ncols, T(0));
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t j = 0; j < C; ++j) {
    const bool in_tail = j >= nfull * P2;
    const int64_t P = in_tail ? L : P2, first = in_tail ? nfull * P2 : (j / P2) * P2;
    T* b = bp.data() + first * K + (j - first);
    double s = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      const T w = DIAG ? diag_w(p, j, d) : T(1);
      const T c = p.centers[j * D + d] - mu[(size_t)d];
      b[d * P] = T(-2) * (w * c);
      if (per_centre) b[(D + d) * P] = w;
      s += (double)w * (double)c * (double)c;
    }
    cn[(size_t)j] = (T)s;
    gam[(size_t)j] = (T)(bd.zeta * (double)cn[(size_t)j] + bd.theta);
  }
  const int64_t nrb = simd::cdiv(N, RB);
#pragma omp parallel num_threads(nthreads)
  {
    // The packed rows an odd number of cache lines apart (at K = 1024 floats they would be 4 KiB).
    const int64_t ldx = gemm_row_ld<T>(K);
    std::vector<T> xs((size_t)(RB * ldx)), xn((size_t)RB), tile((size_t)(R2 * P2)), tile2((size_t)(R2 * P2));
    Sink sink = sink0;
    GemmFwdTiles<T, DIAG, Sink> t{p, K, kb, per_centre ? D : K, (T)bd.alpha, (T)bd.xi,
                                  DIAG && p.metric_shared ? p.metric : nullptr, cn.data(), gam.data(),
                                  xs.data(), ldx, xn.data(), tile.data(), tile2.data(), &sink};
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t n0 = rb * RB, nr = std::min(RB, N - n0);
      sink.begin(n0, nr);
      pack_rows_shifted(p, mu.data(), per_centre, n0, nr, simd::round_up(nr, tail ? R1 : R2), K, ldx, xs.data(),
                        xn.data());
      // Row tiles outside, panels inside: the tile's R rows of x stay in L1 while the panels
      // stream from L2 (one sequential stream the prefetcher follows).
      for (int64_t r0 = 0; r0 < nr; r0 += R2)
        for (int64_t pn = 0; pn < nfull; ++pn)
          t.template run<kGemmNV, R2>(n0, nr, r0, pn * P2, std::min<int64_t>(P2, C - pn * P2), bp.data() + pn * P2 * K);
      for (int64_t r0 = 0; tail && r0 < nr; r0 += R1)
        t.template run<1, R1>(n0, nr, r0, nfull * P2, C - nfull * P2, bp.data() + nfull * P2 * K);
      sink.end(n0, nr);
    }
  }
}
