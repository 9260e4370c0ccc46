// RBF backward, diag metric, in one pass over the pairs: gx and the centre sums from the same
// difference. Included by rbf_kernels.h (per instruction set, inside its namespace: uses its
// grad_tile and diag_w); no include guard on purpose.
//
// Per pair and vector of d: diff = x - c_j, gd = G diff, then
//     gx += w_j gd,   S1_j += gd,   S2_j += gd diff          (gc = -2 w S1, gw = S2)
// a multiply, two FMAs and two adds. The two-pass backward (backward_diag) computes diff twice
// and takes five multiplier slots (two for gx, three for S1 and S2), and builds G twice.
//
// Work split: row blocks of kJointRB rows in a fixed number of chunks (from N only); each chunk
// owns double partials of S1, S2 and gsigma for a group of centres, summed in chunk order at the
// end. Centres go in groups so that those partials stay within kJointPartialBytes; between groups
// gx keeps its running sums (in the gx output, in T), so no result depends on the thread count.

constexpr int64_t kJointRB = 128;  // rows per block: S1 / S2 summed in T over a block
constexpr int64_t kJointJB = 32;   // centres per inner block: their c, w, S1, S2 stay in L1 over the rows
// Centres per micro-kernel step: two interleaved chains of sums where 32 vector registers hold
// them next to kMicroRows rows of x and gx, one with 16 registers.
constexpr int kJointK = kVecBytes == 64 ? 2 : 1;
constexpr int64_t kJointPartialBytes = int64_t(64) << 20;  // all chunks' double partials of a group
constexpr int64_t kJointGroupMax = 1024;                   // centres per group at most

// Whether the joint pass takes this backward: a diag metric, gx and a centre gradient asked for,
// and enough row blocks to share between threads (a shape rule, so the bits never depend on the
// thread count). Fewer rows: the two passes, whose second splits the centres.
inline bool joint_backward(int64_t N, bool want_gx, bool want_centre) {
  return want_gx && want_centre && N >= 8 * kJointRB;
}

// Chunks of row blocks: a power of two (even shares for 2, 4, 8 or 16 threads) of four to eight
// row blocks each, at most 16 (each chunk's partials are filled, flushed into and summed once).
inline int64_t joint_chunks(int64_t N) {
  const int64_t nrb = simd::cdiv(N, kJointRB);
  int64_t nch = 1;
  while (nch < 16 && 8 * nch <= nrb) nch *= 2;
  return nch;
}

// Centres per group: the most (a multiple of 16) whose chunk partials fit.
inline int64_t joint_group(int64_t C, int64_t Dq, int64_t nch) {
  const int64_t per_centre = nch * (2 * Dq + 1) * (int64_t)sizeof(double);
  const int64_t fit = std::max<int64_t>(16, kJointPartialBytes / per_centre / 16 * 16);
  return std::min({fit, kJointGroupMax, simd::round_up(C, 16)});
}

// R rows x K centres at one vector of d. x, acc: the rows' x and running gx (registers); cq, wq:
// the centres' c and w at this vector ([j][L]); G: [R][ldg] from the first centre; s1, s2: the
// centres' float sums at this vector ([j][L]), updated in place. Each centre's sums take R
// dependent adds; K > 1 interleaves independent chains.
template <class T, int R, int K, bool WANT_S2>
RBFKERN_INLINE void bwd_joint_micro(const typename VT<T>::V (&x)[R], typename VT<T>::V (&acc)[R], const T* cq,
                                    const T* wq, const T* G, int64_t ldg, T* s1, T* s2) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  V c[K], w[K], S1[K], S2[K];
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k) {
    c[k] = vload(cq + k * L);
    w[k] = vload(wq + k * L);
    S1[k] = vload(s1 + k * L);
    S2[k] = WANT_S2 ? vload(s2 + k * L) : vbcast<T>(T(0));
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      const V diff = x[r] - c[k];
      const V gd = vbcast<T>(G[r * ldg + k]) * diff;
      acc[r] += w[k] * gd;
      S1[k] += gd;
      if (WANT_S2) S2[k] += gd * diff;
    }
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k) {
    vstore(s1 + k * L, S1[k]);
    if (WANT_S2) vstore(s2 + k * L, S2[k]);
  }
}

// One row block of a group: gx's running sums and the block's float S1 / S2 ([q][cg][L]).
template <class T, int R, bool WANT_S2>
static void bwd_joint_rows(const T* xp, int64_t Dq, int64_t nr, const T* cK, const T* wK, int64_t C, int64_t j0,
                           int64_t cg, const T* Gt, int64_t ldg, T* GX, T* s1, T* s2) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t nq = Dq / L;
  for (int64_t q = 0; q < nq; ++q)
    for (int64_t k0 = 0; k0 < cg; k0 += kJointJB) {
      const int64_t nc = std::min(kJointJB, cg - k0);
      const T* cq = cK + (q * C + j0 + k0) * L;
      const T* wq = wK + (q * C + j0 + k0) * L;
      T* s1q = s1 + (q * cg + k0) * L;
      T* s2q = WANT_S2 ? s2 + (q * cg + k0) * L : nullptr;
      int64_t r0 = 0;
      auto run = [&](auto rows_tag) {
        constexpr int RR = decltype(rows_tag)::value;
        V x[RR], acc[RR];
#pragma GCC unroll 16
        for (int r = 0; r < RR; ++r) {
          x[r] = vload(xp + (r0 + r) * Dq + q * L);
          acc[r] = vload(GX + (r0 + r) * Dq + q * L);
        }
        const T* G = Gt + r0 * ldg + k0;
        int64_t k = 0;
        for (; k + kJointK <= nc; k += kJointK)
          bwd_joint_micro<T, RR, kJointK, WANT_S2>(x, acc, cq + k * L, wq + k * L, G + k, ldg, s1q + k * L,
                                             WANT_S2 ? s2q + k * L : nullptr);
        for (; k < nc; ++k)
          bwd_joint_micro<T, RR, 1, WANT_S2>(x, acc, cq + k * L, wq + k * L, G + k, ldg, s1q + k * L,
                                             WANT_S2 ? s2q + k * L : nullptr);
#pragma GCC unroll 16
        for (int r = 0; r < RR; ++r) vstore(GX + (r0 + r) * Dq + q * L, acc[r]);
      };
      for (; r0 + R <= nr; r0 += R) run(std::integral_constant<int, R>());
      for (; r0 < nr; ++r0) run(std::integral_constant<int, 1>());
    }
}

// acc[i] += a[i], i < n.
RBFKERN_INLINE void add_to(double* __restrict acc, const double* __restrict a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += a[i];
}

// A block's float sums s ([q][cg][L]) added to the double partials p ([cg][Dq]), then zeroed.
template <class T>
static void flush_sums(T* __restrict s, double* __restrict p, int64_t cg, int64_t Dq) {
  constexpr int L = VT<T>::L;
  for (int64_t q = 0; q < Dq / L; ++q)
    for (int64_t jj = 0; jj < cg; ++jj) {
      T* a = s + (q * cg + jj) * L;
      double* pa = p + jj * Dq + q * L;
#pragma GCC unroll 16
      for (int i = 0; i < L; ++i) pa[i] += (double)a[i];
    }
  std::fill(s, s + cg * Dq, T(0));
}

template <class T>
static void backward_diag_joint(const RbfProblem<T>& p, const ActParams<T>& A, const T* xp, int64_t Dq,
                                const std::vector<T>& cK, const std::vector<T>& wK, const T* r2, const T* ga,
                                const T* gr, T* gx, T* gc, T* gmetric, T* gsigma, int nthreads) {
  constexpr int R = kMicroRows;
  constexpr int64_t RB = kJointRB;
  const int64_t N = p.N, C = p.C, D = p.D;
  const int64_t nrb = simd::cdiv(N, RB), nch = joint_chunks(N);
  const int64_t CG = joint_group(C, Dq, nch), ngroup = simd::cdiv(C, CG);
  const bool want_gw = gmetric != nullptr, shared = p.metric_shared;
  const bool want_dsig = gsigma != nullptr && ga != nullptr && rbf_kind_uses_sigma(A.kind);
  // Per chunk: S1 [CG][Dq], S2 [CG][Dq] (if gw), gsigma [CG].
  const int64_t off_g = CG * Dq * (want_gw ? 2 : 1), per = off_g + CG;
  std::vector<double> part((size_t)(nch * per)), gw_shared(want_gw && shared ? (size_t)D : 0, 0.0);
  std::vector<double> s2_group(want_gw && shared ? (size_t)(CG * D) : 0);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> Gt((size_t)(RB * CG)), St(want_dsig ? (size_t)(RB * CG) : 0), GX((size_t)(RB * Dq));
    std::vector<T> s1((size_t)(CG * Dq), T(0)), s2(want_gw ? (size_t)(CG * Dq) : 0, T(0));
    std::vector<double> a1((size_t)D), a2(want_gw ? (size_t)D : 0);
    for (int64_t grp = 0; grp < ngroup; ++grp) {
      const int64_t j0 = grp * CG, cg = std::min(CG, C - j0);
      const bool first = grp == 0, last = grp + 1 == ngroup;
#pragma omp for schedule(dynamic, 1)
      for (int64_t ch = 0; ch < nch; ++ch) {
        double* pS1 = part.data() + ch * per;
        double* pS2 = pS1 + CG * Dq;
        double* pG = pS1 + off_g;
        std::fill(pS1, pS1 + per, 0.0);
        const int64_t rb_end = (ch + 1) * nrb / nch;
        for (int64_t rb = ch * nrb / nch; rb < rb_end; ++rb) {
          const int64_t n0 = rb * RB, nr = std::min(RB, N - n0);
          const int64_t o = n0 * C + j0;
          grad_tile(A, j0, 1, nr, cg, r2 + o, ga ? ga + o : nullptr, gr ? gr + o : nullptr, C, Gt.data(),
                    want_dsig ? St.data() : nullptr, CG);
          if (want_dsig)
            for (int64_t n = 0; n < nr; ++n)
              for (int64_t jj = 0; jj < cg; ++jj) pG[jj] += (double)St[(size_t)(n * CG + jj)];
          // gx's running sums of the earlier groups (unscaled), else 0
          for (int64_t n = 0; n < nr; ++n) {
            T* g = GX.data() + n * Dq;
            if (!first) std::copy(gx + (n0 + n) * D, gx + (n0 + n + 1) * D, g);
            std::fill(g + (first ? 0 : D), g + Dq, T(0));
          }
          if (want_gw)
            bwd_joint_rows<T, R, true>(xp + n0 * Dq, Dq, nr, cK.data(), wK.data(), C, j0, cg, Gt.data(), CG,
                                       GX.data(), s1.data(), s2.data());
          else
            bwd_joint_rows<T, R, false>(xp + n0 * Dq, Dq, nr, cK.data(), wK.data(), C, j0, cg, Gt.data(), CG,
                                        GX.data(), s1.data(), nullptr);
          for (int64_t n = 0; n < nr; ++n) {
            const T* g = GX.data() + n * Dq;
            T* out = gx + (n0 + n) * D;
            for (int64_t d = 0; d < D; ++d) out[d] = last ? T(2) * g[d] : g[d];
          }
          // The block's float sums ([q][cg][L]) into the chunk's double partials ([cg][Dq]).
          flush_sums(s1.data(), pS1, cg, Dq);
          if (want_gw) flush_sums(s2.data(), pS2, cg, Dq);
        }
      }  // implicit barrier: the group's chunk partials are complete
      // The group's centres: chunk partials summed in chunk order (each chunk's rows contiguous).
#pragma omp for schedule(static)
      for (int64_t jj = 0; jj < cg; ++jj) {
        const int64_t j = j0 + jj;
        std::fill(a1.begin(), a1.end(), 0.0);
        std::fill(a2.begin(), a2.end(), 0.0);
        for (int64_t ch = 0; ch < nch; ++ch) {
          const double* pc = part.data() + ch * per + jj * Dq;
          add_to(a1.data(), pc, D);
          if (want_gw) add_to(a2.data(), pc + CG * Dq, D);
        }
        for (int64_t d = 0; d < D; ++d) {
          if (gc) gc[j * D + d] = (T)(-2.0 * (double)diag_w(p, j, d) * a1[(size_t)d]);
          if (want_gw) {
            if (shared)
              s2_group[(size_t)(jj * D + d)] = a2[(size_t)d];
            else
              gmetric[j * D + d] = (T)a2[(size_t)d];
          }
        }
        if (want_dsig) {
          double s = 0.0;
          for (int64_t ch = 0; ch < nch; ++ch) s += part[(size_t)(ch * per + off_g + jj)];
          gsigma[j] = (T)s;
        }
      }  // implicit barrier
      if (want_gw && shared) {  // one metric for all centres: summed over them in order, per d
#pragma omp for schedule(static)
        for (int64_t d = 0; d < D; ++d)
          for (int64_t jj = 0; jj < cg; ++jj) gw_shared[(size_t)d] += s2_group[(size_t)(jj * D + d)];
      }  // implicit barrier before the next group reuses the partials
    }
  }
  if (want_gw && shared)
    for (int64_t d = 0; d < D; ++d) gmetric[d] = (T)gw_shared[(size_t)d];
  if (gsigma && !want_dsig) std::fill(gsigma, gsigma + C, T(0));
}
