// Fused CPU kernels for the Mahalanobis RBF op: r2 = |x - c|^2_M and f(r2), forward and backward.
// The contract is csrc/cpu/rbf.h; rbf.cpp compiles this file once per instruction set
// (csrc/cpu/isa_foreach.h) and its entry points call forward / backward of one of them.
// No include guard on purpose.
//
// Always the difference form (x - c first, never x^2 - 2xc + c^2); (N,C,D) is never built.
//
// Kernel plan (diag / none metric):
//   forward   rows in blocks of 64 (parallel) x centres in panels of 2 vectors packed transposed
//             [d][centre]; micro-kernel 8 rows x 2 vectors of centres, loop over d.
//   backward  pass 1, parallel over row blocks: gx = 2 sum_j G w (x - c), vectorised over d,
//             micro-kernel 8 rows x 1 vector of d, loop over all centres.
//             pass 2, parallel over blocks of 16 centres: S1 = sum_n G (x - c), S2 = sum_n G (x-c)^2
//             vectorised over d, micro-kernel 4 centres x 1 vector of d, loop over rows; partial
//             sums of each 256-row block go into double accumulators.
// Tril metric: u = diff^T L vectorised over k (rows of L packed with the upper triangle zeroed),
//   gx via L^T packed likewise, gL as a rank-N update Diff^T diag(G) U, lower triangle only.
// G (and df/dsigma) is recomputed from the saved r2 inside each tile; it never goes to memory.
// Every block's work is independent of the thread count, and cross-block sums (shared metrics)
// run in block order, so results are bitwise identical for any nthreads.

using simd::VT;
using simd::vbcast;
using simd::vexp_nonpos;
using simd::vhsum;
using simd::vload;
using simd::vload_part;
using simd::vstore;
using simd::vstore_part;

// ---------------------------------------------------------------------------------------------
// Activations: per-centre parameters, forward f(r2), backward G and grad_act * df/dsigma
// ---------------------------------------------------------------------------------------------
template <class T>
struct ActParams {
  int kind = -1;
  T a = 0, a2 = 0;
  std::vector<T> p0, p1;  // per centre, see make_act_params
};

template <class T>
static ActParams<T> make_act_params(const RbfProblem<T>& p) {
  ActParams<T> A;
  A.kind = p.kind;
  A.a = (T)p.shape;
  A.a2 = (T)(p.shape * p.shape);
  if (!rbf_kind_uses_sigma(p.kind)) return A;
  A.p0.resize((size_t)p.C);
  A.p1.resize((size_t)p.C);
  for (int64_t j = 0; j < p.C; ++j) {
    const double s = (double)p.sigma[j];
    const double s2 = s * s, s3 = s2 * s;
    switch (p.kind) {
      case kGaussian: A.p0[j] = (T)(-0.5 / s2); A.p1[j] = (T)(1.0 / s3); break;
      case kLogistic:
      case kInverseQuadratic:
      case kQuadratic: A.p0[j] = (T)(1.0 / s2); A.p1[j] = (T)(2.0 / s3); break;
      case kInverseMultiquadric:
      case kMultiquadric: A.p0[j] = (T)s2; A.p1[j] = (T)(2.0 * s); break;
      default: break;
    }
  }
  return A;
}

// Vectorised activations (gaussian, logistic, inverse quadratic, quadratic).
template <class T>
RBFKERN_INLINE typename VT<T>::V act_vec(int kind, typename VT<T>::V r2, typename VT<T>::V p0, T a2) {
  typedef typename VT<T>::V V;
  switch (kind) {
    case kGaussian: return vexp_nonpos(r2 * p0);
    case kLogistic: {
      const V z = (r2 - a2) * p0;
      const V e = vexp_nonpos(z > 0 ? -z : z);  // exp(-|z|) never overflows
      const V inv = T(1) / (T(1) + e);
      return z > 0 ? e * inv : inv;
    }
    case kInverseQuadratic: return T(1) / (T(1) + r2 * p0);
    default: return T(1) - r2 * p0;  // kQuadratic
  }
}
// Sets dfdr2, and dfds (df/dsigma) when want_ds.
template <class T>
RBFKERN_INLINE void dact_vec(int kind, typename VT<T>::V r2, typename VT<T>::V p0, typename VT<T>::V p1,
                         T a2, typename VT<T>::V& dfdr2, typename VT<T>::V& dfds) {
  typedef typename VT<T>::V V;
  switch (kind) {
    case kGaussian: {
      const V f = vexp_nonpos(r2 * p0);
      dfdr2 = f * p0;
      dfds = f * r2 * p1;
      return;
    }
    case kLogistic: {
      const V t = r2 - a2;
      const V z = t * p0;
      const V e = vexp_nonpos(z > 0 ? -z : z);
      const V inv = T(1) / (T(1) + e);
      const V ff = e * inv * inv;  // f (1 - f)
      dfdr2 = -ff * p0;
      dfds = ff * t * p1;
      return;
    }
    case kInverseQuadratic: {
      const V f = T(1) / (T(1) + r2 * p0);
      dfdr2 = -(f * f) * p0;
      dfds = f * f * r2 * p1;
      return;
    }
    default:  // kQuadratic
      dfdr2 = -p0;
      dfds = r2 * p1;
      return;
  }
}
static constexpr bool kind_is_vec(int kind) {
  return kind == kGaussian || kind == kLogistic || kind == kInverseQuadratic || kind == kQuadratic;
}

// Scalar activations (linear, thin plate, (inverse) multiquadric): libm accuracy.
template <class T>
RBFKERN_INLINE T act_scalar(int kind, T r2, T p0, T a) {
  switch (kind) {
    case kLinear: return std::sqrt(r2);
    case kThinPlate: return r2 > T(0) ? T(0.5) * r2 * std::log(r2) : T(0);
    case kInverseMultiquadric: return std::pow(r2 + p0, -a);
    default: return std::pow(r2 + p0, a);  // kMultiquadric
  }
}
template <class T>
RBFKERN_INLINE void dact_scalar(int kind, T r2, T p0, T p1, T a, T& dfdr2, T& dfds) {
  switch (kind) {
    case kLinear:
      dfdr2 = r2 > T(0) ? T(0.5) / std::sqrt(r2) : T(0);
      dfds = 0;
      return;
    case kThinPlate:
      dfdr2 = r2 > T(0) ? T(0.5) * (std::log(r2) + T(1)) : T(0);
      dfds = 0;
      return;
    case kInverseMultiquadric: {
      const T b = r2 + p0;
      dfdr2 = -a * std::pow(b, -a) / b;
      dfds = dfdr2 * p1;
      return;
    }
    default: {  // kMultiquadric
      const T b = r2 + p0;
      dfdr2 = a * std::pow(b, a) / b;
      dfds = dfdr2 * p1;
      return;
    }
  }
}

// act[i] = f(r2[i]) for one row segment; p0 points at the segment's first centre.
template <class T, int KIND>
static void act_seg(const ActParams<T>& A, const T* p0, int64_t len, const T* r2, T* act) {
  constexpr int L = VT<T>::L;
  if (kind_is_vec(KIND)) {
    for (int64_t i = 0; i < len; i += L) {
      const int64_t n = std::min<int64_t>(L, len - i);
      vstore_part(act + i, act_vec<T>(KIND, vload_part(r2 + i, n), vload_part(p0 + i, n), A.a2), n);
    }
    return;
  }
  for (int64_t i = 0; i < len; ++i) act[i] = act_scalar<T>(KIND, r2[i], p0 ? p0[i] : T(0), A.a);
}

// act = f(r2) for `rows` rows of all C centres (row stride C).
template <class T>
static void act_rows(const ActParams<T>& A, int64_t rows, int64_t C, const T* r2, T* act) {
  const T* p0 = A.p0.empty() ? nullptr : A.p0.data();
#define RBF_ACT_CASE(K) \
  case K:               \
    for (int64_t r = 0; r < rows; ++r) act_seg<T, K>(A, p0, C, r2 + r * C, act + r * C); \
    return;
  switch (A.kind) {
    RBF_ACT_CASE(kLinear)
    RBF_ACT_CASE(kGaussian)
    RBF_ACT_CASE(kThinPlate)
    RBF_ACT_CASE(kLogistic)
    RBF_ACT_CASE(kInverseMultiquadric)
    RBF_ACT_CASE(kMultiquadric)
    RBF_ACT_CASE(kInverseQuadratic)
    RBF_ACT_CASE(kQuadratic)
    default: return;
  }
#undef RBF_ACT_CASE
}

// G[i] = ga[i] * df/dr2 + gr[i] and, when S is non-null, S[i] = ga[i] * df/dsigma, for one
// segment. PSTRIDE: entry i belongs to centre p0 + i (a row segment); else all entries belong to
// centre p0[0] (a gathered column). ga is non-null here.
template <class T, int KIND, bool PSTRIDE>
RBFKERN_INLINE void grad_seg(const ActParams<T>& A, const T* p0, const T* p1, int64_t len, const T* r2,
                         const T* ga, const T* gr, T* G, T* S) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  if (kind_is_vec(KIND)) {
    for (int64_t i = 0; i < len; i += L) {
      const int64_t n = std::min<int64_t>(L, len - i);
      const V vp0 = PSTRIDE ? vload_part(p0 + i, n) : vbcast<T>(p0[0]);
      const V vp1 = PSTRIDE ? vload_part(p1 + i, n) : vbcast<T>(p1[0]);
      V dfdr2, dfds;
      dact_vec<T>(KIND, vload_part(r2 + i, n), vp0, vp1, A.a2, dfdr2, dfds);
      const V g = vload_part(ga + i, n);
      V out = g * dfdr2;
      if (gr) out += vload_part(gr + i, n);
      vstore_part(G + i, out, n);
      if (S) vstore_part(S + i, V(g * dfds), n);
    }
    return;
  }
  for (int64_t i = 0; i < len; ++i) {
    const int64_t jp = PSTRIDE ? i : 0;
    T dfdr2, dfds;
    dact_scalar<T>(KIND, r2[i], p0 ? p0[jp] : T(0), p1 ? p1[jp] : T(0), A.a, dfdr2, dfds);
    G[i] = ga[i] * dfdr2 + (gr ? gr[i] : T(0));
    if (S) S[i] = ga[i] * dfds;
  }
}

// G (and S = grad_act * df/dsigma, if S) for a tile of `rows` x `cols` entries whose first
// column is centre j0 (pstride 1), or for a gathered column of `rows` entries of centre j0
// (pstride 0, cols = 1, all lds 1). Source row stride lds, destination row stride ldd.
template <class T>
static void grad_tile(const ActParams<T>& A, int64_t j0, int pstride, int64_t rows, int64_t cols, const T* r2,
                      const T* ga, const T* gr, int64_t lds, T* G, T* S, int64_t ldd) {
  if (ga == nullptr || A.kind == kKindNone) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < cols; ++i) {
        G[r * ldd + i] = gr ? gr[r * lds + i] : T(0);
        if (S) S[r * ldd + i] = T(0);
      }
    return;
  }
  const T* p0 = A.p0.empty() ? nullptr : A.p0.data() + j0;
  const T* p1 = A.p1.empty() ? nullptr : A.p1.data() + j0;
#define RBF_GRAD_CASE(K)                                                                              \
  case K:                                                                                             \
    if (pstride == 0) {                                                                               \
      grad_seg<T, K, false>(A, p0, p1, rows, r2, ga, gr, G, S);                                       \
    } else {                                                                                          \
      for (int64_t r = 0; r < rows; ++r)                                                              \
        grad_seg<T, K, true>(A, p0, p1, cols, r2 + r * lds, ga + r * lds, gr ? gr + r * lds : nullptr, \
                             G + r * ldd, S ? S + r * ldd : nullptr);                                 \
    }                                                                                                 \
    return;
  switch (A.kind) {
    RBF_GRAD_CASE(kLinear)
    RBF_GRAD_CASE(kGaussian)
    RBF_GRAD_CASE(kThinPlate)
    RBF_GRAD_CASE(kLogistic)
    RBF_GRAD_CASE(kInverseMultiquadric)
    RBF_GRAD_CASE(kMultiquadric)
    RBF_GRAD_CASE(kInverseQuadratic)
    RBF_GRAD_CASE(kQuadratic)
    default: return;
  }
#undef RBF_GRAD_CASE
}

// ---------------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------------
// x rows [n0, n0+nr) into dst [rows][ld] (ld >= D), zero padding columns >= D and rows >= nr.
template <class T>
static void pack_rows(const T* x, int64_t D, int64_t n0, int64_t nr, int64_t rows, int64_t ld,
                      T* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    T* o = dst + r * ld;
    if (r < nr) {
      std::memcpy(o, x + (n0 + r) * D, sizeof(T) * (size_t)D);
      std::fill(o + D, o + ld, T(0));
    } else {
      std::fill(o, o + ld, T(0));
    }
  }
}

// Per-centre diag weights (C,D) or shared (D,) -> value at (j,d).
template <class T>
RBFKERN_INLINE T diag_w(const RbfProblem<T>& p, int64_t j, int64_t d) {
  return p.metric_shared ? p.metric[d] : p.metric[j * p.D + d];
}

// Tril factor of centre j (or the shared one), packed as rows [d][Dq] with k > d zeroed (Lr) and
// as columns [k][Dq] with d < k zeroed (LT[k][d] = L[d][k]).
template <class T>
static void pack_tril(const RbfProblem<T>& p, int64_t Dq, std::vector<T>& Lr, std::vector<T>* LT) {
  const int64_t D = p.D;
  const int64_t nmat = p.metric_shared ? 1 : p.C;
  Lr.assign((size_t)(nmat * D * Dq), T(0));
  if (LT) LT->assign((size_t)(nmat * D * Dq), T(0));
  for (int64_t m = 0; m < nmat; ++m) {
    const T* Lm = p.metric + m * D * D;
    T* lr = Lr.data() + m * D * Dq;
    for (int64_t d = 0; d < D; ++d)
      for (int64_t k = 0; k <= d; ++k) lr[d * Dq + k] = Lm[d * D + k];
    if (LT) {
      T* lt = LT->data() + m * D * Dq;
      for (int64_t d = 0; d < D; ++d)
        for (int64_t k = 0; k <= d; ++k) lt[k * Dq + d] = Lm[d * D + k];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward, diag / none metric
// ---------------------------------------------------------------------------------------------
// r2 for R rows x P = 2L centres. xs: R rows of stride D. cT, wT: panel [D][P].
template <class T, int R, bool DIAG>
RBFKERN_INLINE void fwd_diag_micro(const T* xs, int64_t D, const T* cT, const T* wT, T* tile) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L, P = 2 * L;
  V acc0[R], acc1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = vbcast<T>(T(0));
  for (int64_t d = 0; d < D; ++d) {
    const V c0 = vload(cT + d * P), c1 = vload(cT + d * P + L);
    V w0 = {}, w1 = {};
    if (DIAG) {
      w0 = vload(wT + d * P);
      w1 = vload(wT + d * P + L);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V xb = vbcast<T>(xs[r * D + d]);
      const V t0 = xb - c0, t1 = xb - c1;
      if (DIAG) {
        acc0[r] += (t0 * w0) * t0;
        acc1[r] += (t1 * w1) * t1;
      } else {
        acc0[r] += t0 * t0;
        acc1[r] += t1 * t1;
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    vstore(tile + r * P, acc0[r]);
    vstore(tile + r * P + L, acc1[r]);
  }
}

template <class T, bool DIAG>
static void forward_diag(const RbfProblem<T>& p, const ActParams<T>& A, T* act, T* r2, int nthreads) {
  constexpr int L = VT<T>::L, P = 2 * L, R = 8;
  constexpr int64_t RB = 64;  // rows per block (multiple of R)
  const int64_t N = p.N, C = p.C, D = p.D;
  const int64_t npanel = simd::cdiv(C, P);
  // centres packed transposed per panel: cT[panel][d][P]; padded centres are 0 (not stored).
  std::vector<T> cT((size_t)(npanel * D * P), T(0)), wT(DIAG ? (size_t)(npanel * D * P) : 0, T(0));
  for (int64_t j = 0; j < C; ++j) {
    const int64_t pb = (j / P) * D * P, jj = j % P;
    for (int64_t d = 0; d < D; ++d) {
      cT[(size_t)(pb + d * P + jj)] = p.centers[j * D + d];
      if (DIAG) wT[(size_t)(pb + d * P + jj)] = diag_w(p, j, d);
    }
  }
  const int64_t nrb = simd::cdiv(N, RB);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> xs((size_t)(RB * std::max<int64_t>(D, 1))), tile((size_t)(R * P));
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t n0 = rb * RB, nr = std::min(RB, N - n0);
      const int64_t rows = simd::round_up(nr, R);
      pack_rows(p.x, D, n0, nr, rows, D, xs.data());
      for (int64_t pn = 0; pn < npanel; ++pn) {
        const int64_t j0 = pn * P, nc = std::min<int64_t>(P, C - j0);
        const T* cp = cT.data() + pn * D * P;
        const T* wp = DIAG ? wT.data() + pn * D * P : nullptr;
        for (int64_t r0 = 0; r0 < rows; r0 += R) {
          fwd_diag_micro<T, R, DIAG>(xs.data() + r0 * D, D, cp, wp, tile.data());
          const int64_t rv = std::min<int64_t>(R, nr - r0);
          for (int64_t r = 0; r < rv; ++r)
            std::memcpy(r2 + (n0 + r0 + r) * C + j0, tile.data() + r * P, sizeof(T) * (size_t)nc);
        }
      }
      if (act) act_rows(A, nr, C, r2 + n0 * C, act + n0 * C);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward, tril metric
// ---------------------------------------------------------------------------------------------
// u[r][v] = sum_{d >= k0} dif[r][d] * Lr[d][k0 + v*L ...], for R rows (stride ldd) and NV vectors
// of k starting at k0.
template <class T, int R, int NV>
RBFKERN_INLINE void tril_u_micro(const T* dif, int64_t ldd, int64_t D, const T* Lr, int64_t Dq,
                             int64_t k0, typename VT<T>::V (&u)[R][2]) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) u[r][v] = vbcast<T>(T(0));
  // L[d][k] = 0 for k > d: rows d < k0 + L only reach the first vector.
  const int64_t dsplit = NV == 2 ? std::min<int64_t>(D, k0 + L) : k0;
  for (int64_t d = k0; d < dsplit; ++d) {
    const V l0 = vload(Lr + d * Dq + k0);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) u[r][0] += vbcast<T>(dif[r * ldd + d]) * l0;
  }
  for (int64_t d = dsplit; d < D; ++d) {
    V l[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) l[v] = vload(Lr + d * Dq + k0 + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V db = vbcast<T>(dif[r * ldd + d]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) u[r][v] += db * l[v];
    }
  }
}

// dif[r][0..Dq) = xs[r] - c (both zero padded beyond D).
template <class T>
RBFKERN_INLINE void diff_rows(const T* xs, const T* c, int64_t rows, int64_t Dq, T* dif) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < Dq; d += L) vstore(dif + r * Dq + d, V(vload(xs + r * Dq + d) - vload(c + d)));
}

// Tril kernels with rows in the vector lanes: a block of rows is held transposed (DT[d][n]), so
// u_k = sum_{d >= k} dif_d L[d][k] costs exactly D(D+1)/2 vector FMAs per L rows, each with one
// broadcast of L[d][k], and r2 = sum_k u_k^2 needs no horizontal sum. D is padded to Dk (a
// multiple of kTrilKB) with zero rows/columns of L.
constexpr int kTrilKB = 8;  // k (or d) indices per micro-kernel
constexpr int kTrilRV = 2;  // row vectors per micro-kernel
constexpr int64_t kTrilRB = 64;  // rows per block (multiple of kTrilRV * L for float and double)
constexpr int64_t kTrilFlush = 4;  // row blocks summed in T before a double accumulation (backward)

// u[kk][rv] = sum_{d >= k0+kk} DT[d][rv*L ..] Lk[d][k0+kk], KB k's x RV row vectors.
// DT: [Dk][ldn]; Lk: [Dk][Dk], lower triangle, zero padded.
template <class T, int RV, int KB>
RBFKERN_INLINE void trilT_u_micro(const T* DT, int64_t ldn, const T* Lk, int64_t Dk, int64_t k0,
                              typename VT<T>::V (&u)[KB][RV]) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
#pragma GCC unroll 16
  for (int kk = 0; kk < KB; ++kk)
#pragma GCC unroll 4
    for (int rv = 0; rv < RV; ++rv) u[kk][rv] = vbcast<T>(T(0));
  // Diagonal block d in [k0, k0+KB): only k <= d (compile-time triangle).
#pragma GCC unroll 16
  for (int dd = 0; dd < KB; ++dd) {
    const T* lrow = Lk + (k0 + dd) * Dk + k0;
    V dv[RV];
#pragma GCC unroll 4
    for (int rv = 0; rv < RV; ++rv) dv[rv] = vload(DT + (k0 + dd) * ldn + rv * L);
#pragma GCC unroll 16
    for (int kk = 0; kk <= dd; ++kk) {
      const V l = vbcast<T>(lrow[kk]);
#pragma GCC unroll 4
      for (int rv = 0; rv < RV; ++rv) u[kk][rv] += dv[rv] * l;
    }
  }
  for (int64_t d = k0 + KB; d < Dk; ++d) {
    const T* lrow = Lk + d * Dk + k0;
    V dv[RV];
#pragma GCC unroll 4
    for (int rv = 0; rv < RV; ++rv) dv[rv] = vload(DT + d * ldn + rv * L);
#pragma GCC unroll 16
    for (int kk = 0; kk < KB; ++kk) {
      const V l = vbcast<T>(lrow[kk]);
#pragma GCC unroll 4
      for (int rv = 0; rv < RV; ++rv) u[kk][rv] += dv[rv] * l;
    }
  }
}

// GXT[d0+dd][rv] += sum_{k <= d0+dd} Lk[d0+dd][k] WT[k][rv], KB d's x RV row vectors.
template <class T, int RV, int KB>
RBFKERN_INLINE void trilT_gx_micro(const T* WT, T* GXT, int64_t ldn, const T* Lk, int64_t Dk, int64_t d0) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  V acc[KB][RV];
#pragma GCC unroll 16
  for (int dd = 0; dd < KB; ++dd)
#pragma GCC unroll 4
    for (int rv = 0; rv < RV; ++rv) acc[dd][rv] = vload(GXT + (d0 + dd) * ldn + rv * L);
  for (int64_t k = 0; k < d0; ++k) {
    V w[RV];
#pragma GCC unroll 4
    for (int rv = 0; rv < RV; ++rv) w[rv] = vload(WT + k * ldn + rv * L);
#pragma GCC unroll 16
    for (int dd = 0; dd < KB; ++dd) {
      const V l = vbcast<T>(Lk[(d0 + dd) * Dk + k]);
#pragma GCC unroll 4
      for (int rv = 0; rv < RV; ++rv) acc[dd][rv] += w[rv] * l;
    }
  }
  // Diagonal block k in [d0, d0+KB): only d >= k.
#pragma GCC unroll 16
  for (int kk = 0; kk < KB; ++kk) {
    V w[RV];
#pragma GCC unroll 4
    for (int rv = 0; rv < RV; ++rv) w[rv] = vload(WT + (d0 + kk) * ldn + rv * L);
#pragma GCC unroll 16
    for (int dd = kk; dd < KB; ++dd) {
      const V l = vbcast<T>(Lk[(d0 + dd) * Dk + d0 + kk]);
#pragma GCC unroll 4
      for (int rv = 0; rv < RV; ++rv) acc[dd][rv] += w[rv] * l;
    }
  }
#pragma GCC unroll 16
  for (int dd = 0; dd < KB; ++dd)
#pragma GCC unroll 4
    for (int rv = 0; rv < RV; ++rv) vstore(GXT + (d0 + dd) * ldn + rv * L, acc[dd][rv]);
}

// GL[k0+kk][(dv0+v)*L ..] += sum_{n < rows} WT[k0+kk][n] DR[n][(dv0+v)*L ..], KB k's x NDV vectors
// of d. GL: [Dk][Dq].
template <class T, int KB, int NDV>
RBFKERN_INLINE void trilT_gl_micro(const T* WT, int64_t ldn, const T* DR, int64_t Dq, int64_t rows, int64_t k0,
                               int64_t dv0, T* GL) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  V acc[KB][NDV];
#pragma GCC unroll 16
  for (int kk = 0; kk < KB; ++kk)
#pragma GCC unroll 2
    for (int v = 0; v < NDV; ++v) acc[kk][v] = vload(GL + (k0 + kk) * Dq + (dv0 + v) * L);
  for (int64_t n = 0; n < rows; ++n) {
    V dv[NDV];
#pragma GCC unroll 2
    for (int v = 0; v < NDV; ++v) dv[v] = vload(DR + n * Dq + (dv0 + v) * L);
#pragma GCC unroll 16
    for (int kk = 0; kk < KB; ++kk) {
      const V w = vbcast<T>(WT[(k0 + kk) * ldn + n]);
#pragma GCC unroll 2
      for (int v = 0; v < NDV; ++v) acc[kk][v] += w * dv[v];
    }
  }
#pragma GCC unroll 16
  for (int kk = 0; kk < KB; ++kk)
#pragma GCC unroll 2
    for (int v = 0; v < NDV; ++v) vstore(GL + (k0 + kk) * Dq + (dv0 + v) * L, acc[kk][v]);
}

// Factors packed [m][Dk][Dk], lower triangle only, zero padded; centres packed [C][Dc], zero padded.
template <class T>
static void pack_tril_sq(const RbfProblem<T>& p, int64_t Dk, std::vector<T>& Lk) {
  const int64_t D = p.D, nmat = p.metric_shared ? 1 : p.C;
  Lk.assign((size_t)(nmat * Dk * Dk), T(0));
  for (int64_t m = 0; m < nmat; ++m)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t k = 0; k <= d; ++k) Lk[(size_t)((m * Dk + d) * Dk + k)] = p.metric[(m * D + d) * D + k];
}
template <class T>
static std::vector<T> pack_centres(const RbfProblem<T>& p, int64_t Dc) {
  std::vector<T> cp((size_t)(p.C * Dc), T(0));
  for (int64_t j = 0; j < p.C; ++j) std::memcpy(cp.data() + j * Dc, p.centers + j * p.D, sizeof(T) * (size_t)p.D);
  return cp;
}
// XT[d][n] = x[n0+n][d] (x rows of stride ldx) for n < nr, d < D; zero up to Dk rows and ldn columns.
template <class T>
static void pack_rows_T(const T* x, int64_t ldx, int64_t D, int64_t n0, int64_t nr, int64_t Dk, int64_t ldn,
                        T* XT) {
  std::fill(XT, XT + Dk * ldn, T(0));
  for (int64_t n = 0; n < nr; ++n)
    for (int64_t d = 0; d < D; ++d) XT[d * ldn + n] = x[(n0 + n) * ldx + d];
}
// DT[d][n] = XT[d][n] - c[d] for d < Dk, n < rows (rows a multiple of L).
template <class T>
RBFKERN_INLINE void diff_T(const T* XT, const T* c, int64_t Dk, int64_t ldn, int64_t rows, T* DT) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  for (int64_t d = 0; d < Dk; ++d) {
    const V cb = vbcast<T>(c[d]);
    for (int64_t n = 0; n < rows; n += L) vstore(DT + d * ldn + n, V(vload(XT + d * ldn + n) - cb));
  }
}

template <class T>
static void forward_tril(const RbfProblem<T>& p, const ActParams<T>& A, T* act, T* r2, int nthreads) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L, KB = kTrilKB, RV = kTrilRV;
  constexpr int64_t RB = kTrilRB;
  const int64_t N = p.N, C = p.C, D = p.D;
  const int64_t Dk = simd::round_up(D, KB);
  std::vector<T> Lk;
  pack_tril_sq<T>(p, Dk, Lk);
  const std::vector<T> cp = pack_centres(p, Dk);
  const int64_t nrb = simd::cdiv(N, RB);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> XT((size_t)(Dk * RB)), DT((size_t)(Dk * RB)), s((size_t)RB);
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t n0 = rb * RB, nr = std::min(RB, N - n0);
      const int64_t rows = simd::round_up(nr, RV * L);
      pack_rows_T(p.x, D, D, n0, nr, Dk, RB, XT.data());
      for (int64_t j = 0; j < C; ++j) {
        const T* Lj = Lk.data() + (p.metric_shared ? 0 : j * Dk * Dk);
        diff_T(XT.data(), cp.data() + j * Dk, Dk, RB, rows, DT.data());
        for (int64_t r0 = 0; r0 < rows; r0 += RV * L) {
          V acc[RV], u[KB][RV];
#pragma GCC unroll 4
          for (int rv = 0; rv < RV; ++rv) acc[rv] = vbcast<T>(T(0));
          for (int64_t k0 = 0; k0 < Dk; k0 += KB) {
            trilT_u_micro<T, RV, KB>(DT.data() + r0, RB, Lj, Dk, k0, u);
#pragma GCC unroll 16
            for (int kk = 0; kk < KB; ++kk)
#pragma GCC unroll 4
              for (int rv = 0; rv < RV; ++rv) acc[rv] += u[kk][rv] * u[kk][rv];
          }
#pragma GCC unroll 4
          for (int rv = 0; rv < RV; ++rv) vstore(s.data() + r0 + rv * L, acc[rv]);
        }
        for (int64_t n = 0; n < nr; ++n) r2[(n0 + n) * C + j] = s[n];
      }
      if (act) act_rows(A, nr, C, r2 + n0 * C, act + n0 * C);
    }
  }
}

template <class T>
void forward(const RbfProblem<T>& p, T* act, T* r2, int nthreads) {
  if (p.N <= 0 || p.C <= 0) return;
  const ActParams<T> A = make_act_params(p);
  if (p.kind == kKindNone) act = nullptr;
  switch (p.metric_kind) {
    case kMetricDiag: forward_diag<T, true>(p, A, act, r2, nthreads); break;
    case kMetricTril: forward_tril<T>(p, A, act, r2, nthreads); break;
    default: forward_diag<T, false>(p, A, act, r2, nthreads); break;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, diag / none metric
// ---------------------------------------------------------------------------------------------
// gx for R rows x one vector of d: acc[r] = sum_j G[r][j] w[j] (x[r] - c[j]).
// xs: R rows (stride ldx) at this d-vector; cq, wq: [C][L] for this d-vector; Gt: [R][ldg].
template <class T, int R, bool DIAG>
RBFKERN_INLINE void bwd_gx_micro(const T* xs, int64_t ldx, const T* cq, const T* wq, const T* Gt,
                             int64_t ldg, int64_t C, typename VT<T>::V (&acc)[R]) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  V xr[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    xr[r] = vload(xs + r * ldx);
    acc[r] = vbcast<T>(T(0));
  }
  for (int64_t j = 0; j < C; ++j) {
    const V c = vload(cq + j * L);
    V w = {};
    if (DIAG) w = vload(wq + j * L);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V g = vbcast<T>(Gt[r * ldg + j]);
      if (DIAG)
        acc[r] += (g * w) * (xr[r] - c);
      else
        acc[r] += g * (xr[r] - c);
    }
  }
}

// S1[k] = sum_n G[n][k] (x[n] - c[k]), S2[k] = sum_n G[n][k] (x[n] - c[k])^2 for K centres and one
// vector of d. xs: rows of stride ldx at this d-vector; Gt: [n][ldg] starting at the first centre.
template <class T, int K, bool WANT_S2>
RBFKERN_INLINE void bwd_gc_micro(const T* xs, int64_t ldx, int64_t nn, const typename VT<T>::V (&c)[K],
                             const T* Gt, int64_t ldg, typename VT<T>::V (&S1)[K],
                             typename VT<T>::V (&S2)[K]) {
  typedef typename VT<T>::V V;
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) S1[k] = S2[k] = vbcast<T>(T(0));
  for (int64_t n = 0; n < nn; ++n) {
    const V xv = vload(xs + n * ldx);
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) {
      const V g = vbcast<T>(Gt[n * ldg + k]);
      const V diff = xv - c[k];
      // Two independent fmas, so S1 rounds the same with or without S2.
      S1[k] += g * diff;
      if (WANT_S2) S2[k] += g * (diff * diff);
    }
  }
}

template <class T, bool DIAG>
static void backward_diag(const RbfProblem<T>& p, const ActParams<T>& A, const T* xp, int64_t Dq,
                          const T* r2, const T* ga, const T* gr, T* gx, T* gc, T* gmetric,
                          T* gsigma, int nthreads) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t N = p.N, C = p.C, D = p.D;
  const int64_t nq = Dq / L;
  // centres (and weights) packed per d-vector: cK[q][j][L], zero for d >= D.
  std::vector<T> cK((size_t)(nq * C * L), T(0)), wK(DIAG ? (size_t)(nq * C * L) : 0, T(0));
  for (int64_t j = 0; j < C; ++j)
    for (int64_t d = 0; d < D; ++d) {
      const size_t o = (size_t)(((d / L) * C + j) * L + d % L);
      cK[o] = p.centers[j * D + d];
      if (DIAG) wK[o] = diag_w(p, j, d);
    }

  // Pass 1: gx, parallel over row blocks.
  if (gx) {
    constexpr int R = 8;
    constexpr int64_t RB = 64;
    const int64_t nrb = simd::cdiv(N, RB);
#pragma omp parallel num_threads(nthreads)
    {
      std::vector<T> xs((size_t)(RB * Dq)), Gt((size_t)(RB * std::max<int64_t>(C, 1)));
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < nrb; ++rb) {
        const int64_t n0 = rb * RB, nr = std::min(RB, N - n0);
        const int64_t rows = simd::round_up(nr, R);
        pack_rows(xp, Dq, n0, nr, rows, Dq, xs.data());
        grad_tile(A, 0, 1, nr, C, r2 + n0 * C, ga ? ga + n0 * C : nullptr, gr ? gr + n0 * C : nullptr, C,
                  Gt.data(), (T*)nullptr, C);
        std::fill(Gt.data() + nr * C, Gt.data() + rows * C, T(0));
        for (int64_t q = 0; q < nq; ++q) {
          const int64_t d0 = q * L, nd = std::min<int64_t>(L, D - d0);
          for (int64_t r0 = 0; r0 < rows; r0 += R) {
            V acc[R];
            bwd_gx_micro<T, R, DIAG>(xs.data() + r0 * Dq + d0, Dq, cK.data() + q * C * L,
                                     DIAG ? wK.data() + q * C * L : nullptr, Gt.data() + r0 * C, C, C,
                                     acc);
            const int64_t rv = std::min<int64_t>(R, nr - r0);
            for (int64_t r = 0; r < rv; ++r) vstore_part(gx + (n0 + r0 + r) * D + d0, V(acc[r] * T(2)), nd);
          }
        }
      }
    }
  }

  // Pass 2: gc, gmetric, gsigma, parallel over super-blocks of centres. G is computed for a
  // whole row block x super-block at once (contiguous row segments of r2 / grad_act), then each
  // block of KB centres runs its micro-kernels on it.
  const bool want_gw = DIAG && gmetric != nullptr;
  if (!(gc || want_gw || gsigma)) return;
  constexpr int K = 4;
  constexpr int64_t KB = 16, NB = 128;  // KB multiple of K
  const int64_t CS = std::min<int64_t>(256, simd::round_up(simd::cdiv(C, 4), KB));  // from C only
  const int64_t nkb = simd::cdiv(C, KB), ncs = simd::cdiv(C, CS);
  const bool shared_gw = want_gw && p.metric_shared;
  std::vector<double> partial(shared_gw ? (size_t)(nkb * D) : 0, 0.0);
  const bool want_dsig = gsigma != nullptr && ga != nullptr && rbf_kind_uses_sigma(A.kind);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> Gt((size_t)(NB * CS)), St(want_dsig ? (size_t)(NB * CS) : 0);
    std::vector<double> acc1((size_t)(CS * Dq)), acc2(want_gw ? (size_t)(CS * Dq) : 0), gs((size_t)CS);
#pragma omp for schedule(static)
    for (int64_t cs = 0; cs < ncs; ++cs) {
      const int64_t c0 = cs * CS, ncc = std::min(CS, C - c0);
      const int64_t ncc_pad = simd::round_up(ncc, KB);
      std::fill(acc1.begin(), acc1.end(), 0.0);
      std::fill(acc2.begin(), acc2.end(), 0.0);
      std::fill(gs.begin(), gs.end(), 0.0);
      for (int64_t n0 = 0; n0 < N; n0 += NB) {
        const int64_t nn = std::min(NB, N - n0);
        const int64_t o = n0 * C + c0;
        grad_tile(A, c0, 1, nn, ncc, r2 + o, ga ? ga + o : nullptr, gr ? gr + o : nullptr, C, Gt.data(),
                  want_dsig ? St.data() : nullptr, CS);
        if (ncc < ncc_pad)
          for (int64_t n = 0; n < nn; ++n) std::fill(Gt.data() + n * CS + ncc, Gt.data() + n * CS + ncc_pad, T(0));
        if (want_dsig)
          for (int64_t n = 0; n < nn; ++n) {
            const T* st = St.data() + n * CS;
            for (int64_t k = 0; k < ncc; ++k) gs[k] += (double)st[k];
          }
        if (!(gc || want_gw)) continue;
        for (int64_t q = 0; q < nq; ++q) {
          for (int64_t k0 = 0; k0 < ncc; k0 += K) {
            V c[K], S1[K], S2[K];
#pragma GCC unroll 16
            for (int k = 0; k < K; ++k)
              c[k] = (c0 + k0 + k < C) ? vload(cK.data() + (q * C + c0 + k0 + k) * L) : vbcast<T>(T(0));
            if (want_gw)
              bwd_gc_micro<T, K, true>(xp + n0 * Dq + q * L, Dq, nn, c, Gt.data() + k0, CS, S1, S2);
            else
              bwd_gc_micro<T, K, false>(xp + n0 * Dq + q * L, Dq, nn, c, Gt.data() + k0, CS, S1, S2);
            for (int k = 0; k < K && k0 + k < ncc; ++k) {
              double* a1 = acc1.data() + (k0 + k) * Dq + q * L;
              for (int i = 0; i < L; ++i) a1[i] += (double)S1[k][i];
              if (want_gw) {
                double* a2 = acc2.data() + (k0 + k) * Dq + q * L;
                for (int i = 0; i < L; ++i) a2[i] += (double)S2[k][i];
              }
            }
          }
        }
      }
      for (int64_t k = 0; k < ncc; ++k) {
        const int64_t j = c0 + k;
        const double* a1 = acc1.data() + k * Dq;
        if (gc)
          for (int64_t d = 0; d < D; ++d)
            gc[j * D + d] = (T)(-2.0 * (DIAG ? (double)diag_w(p, j, d) : 1.0) * a1[d]);
        if (want_gw) {
          const double* a2 = acc2.data() + k * Dq;
          if (!p.metric_shared)
            for (int64_t d = 0; d < D; ++d) gmetric[j * D + d] = (T)a2[d];
          else  // per-KB-block partials, summed over the block's centres in order
            for (int64_t d = 0; d < D; ++d) partial[(size_t)((j / KB) * D + d)] += a2[d];
        }
        if (gsigma) gsigma[j] = (T)gs[k];
      }
    }
  }
  if (shared_gw) {
    for (int64_t d = 0; d < D; ++d) {
      double s = 0.0;
      for (int64_t kb = 0; kb < nkb; ++kb) s += partial[(size_t)(kb * D + d)];
      gmetric[d] = (T)s;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, tril metric
// ---------------------------------------------------------------------------------------------
// U[r][k] = sum_{d >= k} dif[r][d] L[d][k] for `rows` rows (multiple of R), scaled per row by
// scale[r] (nullptr: 1).
template <class T, int R>
static void tril_u_rows(const T* dif, int64_t rows, int64_t D, int64_t Dq, const T* Lj, const T* scale,
                        T* U) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t nq = Dq / L;
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    V u[R][2];
    for (int64_t kv = 0; kv < nq; kv += 2) {
      const int nv = (nq - kv >= 2) ? 2 : 1;
      if (nv == 2)
        tril_u_micro<T, R, 2>(dif + r0 * Dq, Dq, D, Lj, Dq, kv * L, u);
      else
        tril_u_micro<T, R, 1>(dif + r0 * Dq, Dq, D, Lj, Dq, kv * L, u);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const T s = scale ? scale[r0 + r] : T(1);
        for (int v = 0; v < nv; ++v) vstore(U + (r0 + r) * Dq + (kv + v) * L, V(u[r][v] * s));
      }
    }
  }
}

// GX[r][d] += sum_{k <= d} W[r][k] L[d][k] for R rows and NV vectors of d from dv0; LT[k][d].
template <class T, int R, int NV>
RBFKERN_INLINE void tril_gx_micro(const T* W, T* GX, int64_t Dq, int64_t D, const T* LT, int64_t dv0) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  V acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = vload(GX + r * Dq + dv0 + v * L);
  // LT[k][d] = 0 for d < k: columns k >= dv0 + L only reach the second vector.
  const int64_t kmax = std::min<int64_t>(D, dv0 + NV * L);
  const int64_t ksplit = NV == 2 ? std::min<int64_t>(kmax, dv0 + L) : kmax;
  for (int64_t k = 0; k < ksplit; ++k) {
    V l[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) l[v] = vload(LT + k * Dq + dv0 + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V wb = vbcast<T>(W[r * Dq + k]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] += wb * l[v];
    }
  }
  for (int64_t k = ksplit; k < kmax; ++k) {
    const V l1 = vload(LT + k * Dq + dv0 + (NV - 1) * L);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][NV - 1] += vbcast<T>(W[r * Dq + k]) * l1;
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) vstore(GX + r * Dq + dv0 + v * L, acc[r][v]);
}

// acc[d][k] = sum_n dif[n][d0+d] W[n][k0 + ...] for DR rows of d and NV vectors of k.
template <class T, int DR, int NV>
RBFKERN_INLINE void tril_gl_micro(const T* dif, const T* W, int64_t Dq, int64_t nn, int64_t d0, int64_t k0,
                              typename VT<T>::V (&acc)[DR][2]) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
#pragma GCC unroll 16
  for (int i = 0; i < DR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = vbcast<T>(T(0));
  for (int64_t n = 0; n < nn; ++n) {
    V w[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) w[v] = vload(W + n * Dq + k0 + v * L);
#pragma GCC unroll 16
    for (int i = 0; i < DR; ++i) {
      const V db = vbcast<T>(dif[n * Dq + d0 + i]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] += db * w[v];
    }
  }
}

template <class T>
static void backward_tril(const RbfProblem<T>& p, const ActParams<T>& A, const T* xp, int64_t Dq,
                          const T* r2, const T* ga, const T* gr, T* gx, T* gc, T* gmetric, T* gsigma,
                          int nthreads) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  const int64_t N = p.N, C = p.C, D = p.D;
  const int64_t nq = Dq / L;
  std::vector<T> Lr, LT;
  pack_tril<T>(p, Dq, Lr, gx ? &LT : nullptr);
  std::vector<T> cp((size_t)(C * Dq), T(0));
  for (int64_t j = 0; j < C; ++j) std::memcpy(cp.data() + j * Dq, p.centers + j * D, sizeof(T) * (size_t)D);
  auto Lof = [&](const std::vector<T>& M, int64_t j) { return M.data() + (p.metric_shared ? 0 : j * D * Dq); };

  // Pass 1: gx, parallel over row blocks. gx[n] = sum_j 2 G[n][j] L_j u_nj.
  if (gx) {
    constexpr int R = 6;
    constexpr int64_t RB = 48;
    const int64_t nrb = simd::cdiv(N, RB);
#pragma omp parallel num_threads(nthreads)
    {
      std::vector<T> xs((size_t)(RB * Dq)), dif((size_t)(RB * Dq)), W((size_t)(RB * Dq)),
          GX((size_t)(RB * Dq)), Gt((size_t)(RB * std::max<int64_t>(C, 1))), gcol((size_t)RB);
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < nrb; ++rb) {
        const int64_t n0 = rb * RB, nr = std::min(RB, N - n0);
        const int64_t rows = simd::round_up(nr, R);
        pack_rows(xp, Dq, n0, nr, rows, Dq, xs.data());
        grad_tile(A, 0, 1, nr, C, r2 + n0 * C, ga ? ga + n0 * C : nullptr, gr ? gr + n0 * C : nullptr, C,
                  Gt.data(), (T*)nullptr, C);
        std::fill(GX.begin(), GX.end(), T(0));
        for (int64_t j = 0; j < C; ++j) {
          for (int64_t r = 0; r < rows; ++r) gcol[r] = r < nr ? T(2) * Gt[r * C + j] : T(0);
          diff_rows(xs.data(), cp.data() + j * Dq, rows, Dq, dif.data());
          tril_u_rows<T, R>(dif.data(), rows, D, Dq, Lof(Lr, j), gcol.data(), W.data());
          const T* LTj = Lof(LT, j);
          for (int64_t r0 = 0; r0 < rows; r0 += R)
            for (int64_t dv = 0; dv < nq; dv += 2) {
              if (nq - dv >= 2)
                tril_gx_micro<T, R, 2>(W.data() + r0 * Dq, GX.data() + r0 * Dq, Dq, D, LTj, dv * L);
              else
                tril_gx_micro<T, R, 1>(W.data() + r0 * Dq, GX.data() + r0 * Dq, Dq, D, LTj, dv * L);
            }
        }
        for (int64_t r = 0; r < nr; ++r) std::memcpy(gx + (n0 + r) * D, GX.data() + r * Dq, sizeof(T) * (size_t)D);
      }
    }
  }

  // Pass 2: gc, gL, gsigma, parallel over blocks of centres.
  if (!(gc || gmetric || gsigma)) return;
  constexpr int R = 6, DR = 8;
  constexpr int64_t KB = 4, NB = 192;  // NB multiple of R
  const int64_t nkb = simd::cdiv(C, KB);
  const int64_t DD = D * Dq;
  const bool shared = p.metric_shared;
  std::vector<double> partial((gmetric && shared) ? (size_t)(nkb * DD) : 0, 0.0);
  const bool want_dsig = gsigma != nullptr && ga != nullptr && rbf_kind_uses_sigma(A.kind);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> dif((size_t)(NB * Dq)), W((size_t)(NB * Dq)), r2c((size_t)NB), gac((size_t)NB),
        grc((size_t)NB), Gc((size_t)NB), Sc((size_t)NB), Ssum((size_t)Dq);
    std::vector<double> gL(gmetric ? (size_t)DD : 0), S((size_t)Dq);
#pragma omp for schedule(static)
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t j0 = kb * KB, nk = std::min(KB, C - j0);
      if (gmetric) std::fill(gL.begin(), gL.end(), 0.0);
      for (int64_t j = j0; j < j0 + nk; ++j) {
        if (gmetric && !shared) std::fill(gL.begin(), gL.end(), 0.0);
        std::fill(S.begin(), S.end(), 0.0);
        double gs = 0.0;
        const T* Lj = Lof(Lr, j);
        for (int64_t n0 = 0; n0 < N; n0 += NB) {
          const int64_t nn = std::min(NB, N - n0);
          const int64_t rows = simd::round_up(nn, R);
          for (int64_t n = 0; n < nn; ++n) {
            const int64_t o = (n0 + n) * C + j;
            r2c[n] = r2[o];
            if (ga) gac[n] = ga[o];
            if (gr) grc[n] = gr[o];
          }
          grad_tile(A, j, 0, nn, 1, r2c.data(), ga ? gac.data() : nullptr, gr ? grc.data() : nullptr, 1,
                    Gc.data(), want_dsig ? Sc.data() : nullptr, 1);
          if (want_dsig)
            for (int64_t n = 0; n < nn; ++n) gs += (double)Sc[n];
          if (!(gc || gmetric)) continue;
          std::fill(Gc.data() + nn, Gc.data() + rows, T(0));
          // dif rows straight from the padded x (rows beyond nn read as zero G, but must exist).
          for (int64_t n = 0; n < rows; ++n) {
            const T* xr = xp + (n0 + std::min(n, nn - 1)) * Dq;
            for (int64_t d = 0; d < Dq; d += L)
              vstore(dif.data() + n * Dq + d, V(vload(xr + d) - vload(cp.data() + j * Dq + d)));
          }
          tril_u_rows<T, R>(dif.data(), rows, D, Dq, Lj, Gc.data(), W.data());  // W = G u
          // S += sum_n W[n]
          for (int64_t kv = 0; kv < nq; ++kv) {
            V s = vbcast<T>(T(0));
            for (int64_t n = 0; n < nn; ++n) s += vload(W.data() + n * Dq + kv * L);
            vstore(Ssum.data() + kv * L, s);
          }
          for (int64_t k = 0; k < D; ++k) S[k] += (double)Ssum[k];
          // gL[d][k] += sum_n dif[n][d] W[n][k], k <= d
          if (gmetric) {
            for (int64_t d0 = 0; d0 < D; d0 += DR) {
              const int64_t nkv = simd::cdiv(std::min<int64_t>(D, d0 + DR), L);
              for (int64_t kv = 0; kv < nkv; kv += 2) {
                V acc[DR][2];
                const int nv = (nkv - kv >= 2) ? 2 : 1;
                if (nv == 2)
                  tril_gl_micro<T, DR, 2>(dif.data(), W.data(), Dq, nn, d0, kv * L, acc);
                else
                  tril_gl_micro<T, DR, 1>(dif.data(), W.data(), Dq, nn, d0, kv * L, acc);
                for (int i = 0; i < DR && d0 + i < D; ++i)
                  for (int v = 0; v < nv; ++v) {
                    double* g = gL.data() + (d0 + i) * Dq + (kv + v) * L;
                    for (int t = 0; t < L; ++t) g[t] += (double)acc[i][v][t];
                  }
              }
            }
          }
        }
        if (gc) {
          const T* Lm = p.metric + (shared ? 0 : j * D * D);
          for (int64_t d = 0; d < D; ++d) {
            double s = 0.0;
            for (int64_t k = 0; k <= d; ++k) s += (double)Lm[d * D + k] * S[k];
            gc[j * D + d] = (T)(-2.0 * s);
          }
        }
        if (gmetric && !shared) {
          T* gm = gmetric + j * D * D;
          for (int64_t d = 0; d < D; ++d)
            for (int64_t k = 0; k < D; ++k) gm[d * D + k] = k <= d ? (T)(2.0 * gL[d * Dq + k]) : T(0);
        }
        if (gsigma) gsigma[j] = (T)gs;
      }
      if (gmetric && shared) std::copy(gL.begin(), gL.end(), partial.begin() + kb * DD);
    }
  }
  if (gmetric && shared) {
    for (int64_t d = 0; d < D; ++d)
      for (int64_t k = 0; k < D; ++k) {
        double s = 0.0;
        if (k <= d)
          for (int64_t kb = 0; kb < nkb; ++kb) s += partial[(size_t)(kb * DD + d * Dq + k)];
        gmetric[d * D + k] = (T)(2.0 * s);
      }
  }
}

// Tril backward in one pass over row blocks, rows in lanes (see trilT_u_micro). Per row block and
// centre j: W = G u (u computed once), gx += 2 L_j W, S_j += sum_n W, gL_j += sum_n dif_n W_n.
// Row blocks are grouped into a fixed number of chunks (from N only); each chunk owns double
// partials of S, gL and gsigma, summed in chunk order at the end, so the result does not depend
// on the thread count. Returns false (nothing written) when those partials would be too large;
// the caller then uses backward_tril (parallel over centres).
template <class T>
static bool backward_tril_rows(const RbfProblem<T>& p, const ActParams<T>& A, const T* xp, int64_t Dq,
                               const T* r2, const T* ga, const T* gr, T* gx, T* gc, T* gmetric, T* gsigma,
                               int nthreads) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L, KB = kTrilKB, RV = kTrilRV;
  constexpr int64_t RB = kTrilRB;
  const int64_t N = p.N, C = p.C, D = p.D;
  const int64_t Dk = simd::round_up(D, KB), Dc = std::max(Dk, Dq);
  const int64_t nrb = simd::cdiv(N, RB);
  const int64_t nch = std::min<int64_t>(8, simd::cdiv(nrb, 4));
  const bool shared = p.metric_shared;
  const int64_t nmat = shared ? 1 : C;
  const bool want_dsig = gsigma != nullptr && ga != nullptr && rbf_kind_uses_sigma(A.kind);
  // Per-chunk partials: gL [nmat][Dk][Dq] (k-major, d in lanes), S [C][Dk], gsigma [C].
  const int64_t szL = gmetric ? nmat * Dk * Dq : 0, szS = gc ? C * Dk : 0, szG = want_dsig ? C : 0;
  const int64_t per = szL + szS + szG;
  if ((double)nch * (double)per * sizeof(double) > 96.0 * (1 << 20)) return false;
  std::vector<T> Lk;
  pack_tril_sq<T>(p, Dk, Lk);
  const std::vector<T> cp = pack_centres(p, Dc);
  std::vector<double> part((size_t)(nch * per));
  const bool want_gl = gmetric != nullptr;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> XT((size_t)(Dk * RB)), DT((size_t)(Dk * RB)), WT((size_t)(Dk * RB)),
        GXT(gx ? (size_t)(Dk * RB) : 0), DR(want_gl ? (size_t)(RB * Dq) : 0), Gt((size_t)(RB * C)),
        GT((size_t)(C * RB)), St(want_dsig ? (size_t)(RB * C) : 0), GLf((size_t)szL);
    std::vector<T> Sv(gc ? (size_t)(Dk * L) : 0);  // lane sums of W per k
#pragma omp for schedule(dynamic, 1)
    for (int64_t ch = 0; ch < nch; ++ch) {
      double* pL = part.data() + ch * per;
      double* pS = pL + szL;
      double* pG = pS + szS;
      std::fill(pL, pL + per, 0.0);
      std::fill(GLf.begin(), GLf.end(), T(0));
      auto flush_gl = [&]() {
        for (int64_t i = 0; i < szL; ++i) pL[i] += (double)GLf[(size_t)i];
        std::fill(GLf.begin(), GLf.end(), T(0));
      };
      const int64_t rb_end = (ch + 1) * nrb / nch;
      for (int64_t rb = ch * nrb / nch; rb < rb_end; ++rb) {
        const int64_t n0 = rb * RB, nr = std::min(RB, N - n0);
        const int64_t rows = simd::round_up(nr, RV * L);
        pack_rows_T(xp, Dq, D, n0, nr, Dk, RB, XT.data());
        grad_tile(A, 0, 1, nr, C, r2 + n0 * C, ga ? ga + n0 * C : nullptr, gr ? gr + n0 * C : nullptr, C,
                  Gt.data(), want_dsig ? St.data() : nullptr, C);
        for (int64_t j = 0; j < C; ++j) {
          for (int64_t n = 0; n < rows; ++n) GT[j * RB + n] = n < nr ? Gt[n * C + j] : T(0);
          if (want_dsig) {
            double s = 0.0;
            for (int64_t n = 0; n < nr; ++n) s += (double)St[n * C + j];
            pG[j] += s;
          }
        }
        if (gx) std::fill(GXT.begin(), GXT.end(), T(0));
        for (int64_t j = 0; j < C; ++j) {
          const T* Lj = Lk.data() + (shared ? 0 : j * Dk * Dk);
          const T* cj = cp.data() + j * Dc;
          diff_T(XT.data(), cj, Dk, RB, rows, DT.data());
          if (gc) std::fill(Sv.begin(), Sv.end(), T(0));
          // W = G u, and the lane sums of W for S.
          for (int64_t r0 = 0; r0 < rows; r0 += RV * L) {
            V g[RV], u[KB][RV];
#pragma GCC unroll 4
            for (int rv = 0; rv < RV; ++rv) g[rv] = vload(GT.data() + j * RB + r0 + rv * L);
            for (int64_t k0 = 0; k0 < Dk; k0 += KB) {
              trilT_u_micro<T, RV, KB>(DT.data() + r0, RB, Lj, Dk, k0, u);
#pragma GCC unroll 16
              for (int kk = 0; kk < KB; ++kk)
#pragma GCC unroll 4
                for (int rv = 0; rv < RV; ++rv) {
                  const V w = u[kk][rv] * g[rv];
                  vstore(WT.data() + (k0 + kk) * RB + r0 + rv * L, w);
                  if (gc) vstore(Sv.data() + (k0 + kk) * L, V(vload(Sv.data() + (k0 + kk) * L) + w));
                }
            }
          }
          if (gc)
            for (int64_t k = 0; k < D; ++k) pS[j * Dk + k] += (double)vhsum(vload(Sv.data() + k * L));
          if (gx)
            for (int64_t r0 = 0; r0 < rows; r0 += RV * L)
              for (int64_t d0 = 0; d0 < Dk; d0 += KB)
                trilT_gx_micro<T, RV, KB>(WT.data() + r0, GXT.data() + r0, RB, Lj, Dk, d0);
          if (want_gl) {
            // dif rows (row-major, padded to Dq) for the d-lane gL kernel; padding rows have W = 0.
            for (int64_t n = 0; n < rows; ++n)
              for (int64_t d = 0; d < Dq; d += L) {
                const V xv = n < nr ? vload(xp + (n0 + n) * Dq + d) : vbcast<T>(T(0));
                vstore(DR.data() + n * Dq + d, V(xv - vload(cj + d)));
              }
            T* gLj = GLf.data() + (shared ? 0 : j * Dk * Dq);
            const int64_t nqv = Dq / L;
            for (int64_t k0 = 0; k0 < Dk; k0 += KB)
              for (int64_t dv = k0 / L; dv < nqv; dv += 2) {
                if (nqv - dv >= 2)
                  trilT_gl_micro<T, KB, 2>(WT.data(), RB, DR.data(), Dq, rows, k0, dv, gLj);
                else
                  trilT_gl_micro<T, KB, 1>(WT.data(), RB, DR.data(), Dq, rows, k0, dv, gLj);
              }
            // gL sums kTrilFlush x RB terms in T (centres of a shared factor, else row blocks),
            // then goes to the double partial.
            if (shared && ((j + 1) % kTrilFlush == 0 || j + 1 == C)) flush_gl();
          }
        }
        if (want_gl && !shared && ((rb + 1) % kTrilFlush == 0 || rb + 1 == rb_end)) flush_gl();
        if (gx)
          for (int64_t n = 0; n < nr; ++n)
            for (int64_t d = 0; d < D; ++d) gx[(n0 + n) * D + d] = T(2) * GXT[d * RB + n];
      }
    }
  }
  // Chunk partials, summed in chunk order.
  if (gmetric) {
    const int64_t DD = D * D;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t m = 0; m < nmat; ++m) {
      T* gm = gmetric + m * DD;
      for (int64_t d = 0; d < D; ++d)
        for (int64_t k = 0; k < D; ++k) {
          double s = 0.0;
          if (k <= d)
            for (int64_t ch = 0; ch < nch; ++ch) s += part[(size_t)(ch * per + (m * Dk + k) * Dq + d)];
          gm[d * D + k] = (T)(2.0 * s);
        }
    }
  }
  if (gc || want_dsig) {
    std::vector<double> S((size_t)D);
    for (int64_t j = 0; j < C; ++j) {
      if (gc) {
        for (int64_t k = 0; k < D; ++k) {
          double s = 0.0;
          for (int64_t ch = 0; ch < nch; ++ch) s += part[(size_t)(ch * per + szL + j * Dk + k)];
          S[(size_t)k] = s;
        }
        const T* Lm = p.metric + (shared ? 0 : j * D * D);
        for (int64_t d = 0; d < D; ++d) {
          double s = 0.0;
          for (int64_t k = 0; k <= d; ++k) s += (double)Lm[d * D + k] * S[(size_t)k];
          gc[j * D + d] = (T)(-2.0 * s);
        }
      }
      if (want_dsig) {
        double s = 0.0;
        for (int64_t ch = 0; ch < nch; ++ch) s += part[(size_t)(ch * per + szL + szS + j)];
        gsigma[j] = (T)s;
      }
    }
  }
  if (gsigma && !want_dsig) std::fill(gsigma, gsigma + C, T(0));
  return true;
}

template <class T>
void backward(const RbfProblem<T>& p, const T* r2, const T* ga, const T* gr, T* gx, T* gc, T* gmetric,
              T* gsigma, int nthreads) {
  const int64_t N = p.N, C = p.C, D = p.D;
  if (p.metric_kind == kMetricNone) gmetric = nullptr;
  const int64_t gm_size = p.metric_kind == kMetricDiag ? (p.metric_shared ? D : C * D)
                                                       : (p.metric_shared ? D * D : C * D * D);
  // Degenerate sizes: everything is zero.
  if (N <= 0 || C <= 0 || D <= 0) {
    if (gx) std::fill(gx, gx + N * D, T(0));
    if (gc) std::fill(gc, gc + C * D, T(0));
    if (gmetric) std::fill(gmetric, gmetric + gm_size, T(0));
    if (gsigma) std::fill(gsigma, gsigma + C, T(0));
    return;
  }
  if (p.kind == kKindNone) ga = nullptr;
  const ActParams<T> A = make_act_params(p);
  constexpr int L = VT<T>::L;
  const int64_t Dq = simd::round_up(D, L);
  // x padded to a whole number of vectors per row (only copied when D is not a multiple of L).
  std::vector<T> xpad;
  const T* xp = p.x;
  if (Dq != D) {
    xpad.resize((size_t)(N * Dq));
    T* xw = xpad.data();
    const T* x = p.x;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t n = 0; n < N; ++n) {
      std::memcpy(xw + n * Dq, x + n * D, sizeof(T) * (size_t)D);
      std::fill(xw + n * Dq + D, xw + (n + 1) * Dq, T(0));
    }
    xp = xpad.data();
  }
  switch (p.metric_kind) {
    case kMetricDiag: backward_diag<T, true>(p, A, xp, Dq, r2, ga, gr, gx, gc, gmetric, gsigma, nthreads); break;
    case kMetricTril:
      if (!backward_tril_rows<T>(p, A, xp, Dq, r2, ga, gr, gx, gc, gmetric, gsigma, nthreads))
        backward_tril<T>(p, A, xp, Dq, r2, ga, gr, gx, gc, gmetric, gsigma, nthreads);
      break;
    default: backward_diag<T, false>(p, A, xp, Dq, r2, ga, gr, gx, gc, nullptr, gsigma, nthreads); break;
  }
}
