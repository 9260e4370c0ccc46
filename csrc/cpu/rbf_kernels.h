// Fused CPU kernels for the Mahalanobis RBF op: r2 = |x - c|^2_M and f(r2), forward and backward.
// The contract is csrc/cpu/rbf.h; rbf.cpp compiles this file once per instruction set
// (csrc/cpu/isa_foreach.h) and its entry points call forward / backward of one of them.
// No include guard on purpose.
//
// The difference form (x - c first), or for the none / diag forward the GEMM form x^2 - 2xc + c^2
// wherever a certified bound shows it is as exact (rbf_fwd_gemm.h); (N,C,D) is never built.
//
// Kernel plan (diag / none metric):
//   forward   D >= kGemmFwdMinD: the GEMM form with a certified bound per pair, failing pairs in
//             the difference form (rbf_fwd_gemm.h). Smaller D, the difference form:
//             rows in blocks of 64 (parallel) x centres in panels of 2 vectors packed transposed
//             [d][centre]; micro-kernel kMicroRows rows x 2 vectors of centres, loop over d.
//   backward  diag metric with gx and a centre gradient wanted, at least 1024 rows: one pass
//             over the pairs for all gradients (rbf_bwd_joint.h). Otherwise two passes:
//             pass 1, parallel over row blocks: gx = 2 sum_j G w (x - c), vectorised over d,
//             micro-kernel kMicroRows rows x 1 vector of d, loop over all centres.
//             pass 2, parallel over blocks of 16 centres: S1 = sum_n G (x - c), S2 = sum_n G (x-c)^2
//             vectorised over d, micro-kernel 4 centres x 1 vector of d, loop over rows; partial
//             sums of each 256-row block go into double accumulators.
// Tril metric: rows in the vector lanes (a row block held transposed), u = (x - c_j) L_j once per
//   row block and centre, in the backward for all four gradients (gL lower triangle only);
//   centres in groups that bound the backward's partials (backward_tril).
// G (and df/dsigma) is recomputed from the saved r2 inside each tile; it never goes to memory.
// Every block's work is independent of the thread count, and cross-block sums (shared metrics)
// run in block order, so results are bitwise identical for any nthreads.

using simd::VT;
using simd::vbcast;
using simd::vexp_nonpos;
using simd::vhmin;
using simd::vhsum;
using simd::vload;
using simd::vload_part;
using simd::vstore;
using simd::vstore_part;

// Rows per micro-kernel where its accumulators and operands must fit the register file: 32
// vector registers under AVX-512, 16 below.
constexpr int kMicroRows = kVecBytes == 64 ? 8 : 4;

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

#include "cpu/gemm_tile.h"      // NOLINT(build/include): per instruction set, like this file

// ---------------------------------------------------------------------------------------------
// Where the forward kernels put r2 (one copy per thread; rows come in blocks, begin .. end):
// R2Rows writes the (N, C) matrix and the activation, NearestRows keeps each row's nearest
// centre (rbf_nearest), so k-means assignment never writes (N, C); MinWithRows (rbf_min_with)
// writes min(floor, r2) for k-means++ seeding.
// ---------------------------------------------------------------------------------------------
template <class T>
struct R2Rows {
  T* r2;   // null: the activation alone; a row block's r2 is kept in blk, not written out
  T* act;  // null: r2 only
  const ActParams<T>* A;
  int64_t C;
  std::vector<T> blk;  // this thread's copy (the activation alone): r2 of rows [n0, n0 + nr)
  int64_t n0 = 0;
  T* row(int64_t n) { return r2 ? r2 + n * C : blk.data() + (n - n0) * C; }
  void begin(int64_t n, int64_t nr) {
    n0 = n;
    if (!r2) blk.resize((size_t)(nr * C));
  }
  // rv rows from row n, centres [j0, j0 + nc): row r at tile + r * ld.
  void put(int64_t n, int64_t rv, int64_t j0, int64_t nc, const T* tile, int64_t ld) {
    for (int64_t r = 0; r < rv; ++r) std::memcpy(row(n + r) + j0, tile + r * ld, sizeof(T) * (size_t)nc);
  }
  // Centre j for rows [n, n + nr): s[r].
  void put_col(int64_t n, int64_t nr, int64_t j, const T* s) {
    for (int64_t r = 0; r < nr; ++r) row(n + r)[j] = s[r];
  }
  // Into a separate buffer: computed in place, a row's masked tail store would stall the next
  // row's overlapping load (no store forwarding), 20% slower at C = 10.
  void end(int64_t n, int64_t nr) {
    if (act) act_rows(*A, nr, C, row(n), act + n * C);
  }
};

// torch.min's order: a smaller value first, NaN before any number, then the smaller index.
template <class T>
RBFKERN_INLINE bool nearer(T v, int64_t j, T best, int64_t bj) {
  if (std::isnan(v)) return !std::isnan(best) || j < bj;
  if (std::isnan(best)) return false;
  return v < best || (v == best && j < bj);
}

template <class T>
struct NearestRows {
  int64_t* label;
  T* min_r2;
  std::vector<T> bv;
  std::vector<int64_t> bj;
  int64_t n0 = 0;
  void begin(int64_t n, int64_t nr) {
    n0 = n;
    bv.assign((size_t)nr, std::numeric_limits<T>::infinity());
    bj.assign((size_t)nr, std::numeric_limits<int64_t>::max());
  }
  RBFKERN_INLINE void offer(int64_t n, int64_t j, T v) {
    const size_t r = (size_t)(n - n0);
    if (nearer(v, j, bv[r], bj[r])) {
      bv[r] = v;
      bj[r] = j;
    }
  }
  // Per row: the lane-wise minimum of the tile's vectors, its smallest value m, and the first lane
  // equal to m (the smallest index of the tile's minimum). Rows with a NaN take the scalar order.
  // Whole vectors are read: ld is a multiple of L, and nc <= 64 (the kernels' tiles are P = NV L
  // wide, at most 32).
  void put(int64_t n, int64_t rv, int64_t j0, int64_t nc, const T* tile, int64_t ld) {
    typedef typename VT<T>::V V;
    typedef typename VT<T>::VI VI;
    constexpr int L = VT<T>::L;
    VI lane;
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) lane[i] = i;
    const V inf = vbcast<T>(std::numeric_limits<T>::infinity());
    for (int64_t r = 0; r < rv; ++r) {
      const T* t = tile + r * ld;
      V mn = inf;
      VI nan = {};
      for (int64_t i0 = 0; i0 < nc; i0 += L) {
        const V v = vload(t + i0);
        const VI in = lane < (int)std::min<int64_t>(L, nc - i0);  // lanes past nc do not count
        nan |= in & (v != v);
        mn = (in & (v < mn)) ? v : mn;
      }
      if (vany(nan)) {
        for (int64_t i = 0; i < nc; ++i) offer(n + r, j0 + i, t[i]);
        continue;
      }
      const T m = vhmin(mn);
      const size_t b = (size_t)(n + r - n0);
      if (!(m <= bv[b])) continue;  // cannot win (equal values may win on the index)
      uint64_t hit = 0;  // no branch per vector: which vector holds m is a coin toss
      for (int64_t i0 = 0; i0 < nc; i0 += L)
        hit |= (uint64_t)lane_bits((lane < (int)std::min<int64_t>(L, nc - i0)) & (vload(t + i0) == vbcast<T>(m))) << i0;
      const int i = __builtin_ctzll(hit);
      offer(n + r, j0 + i, t[i]);  // the lane's own value (m may differ in the sign of a zero)
    }
  }
  void put_col(int64_t n, int64_t nr, int64_t j, const T* s) {
    for (int64_t r = 0; r < nr; ++r) offer(n + r, j, s[r]);
  }
  void end(int64_t n, int64_t nr) {
    std::memcpy(label + n, bj.data(), sizeof(int64_t) * (size_t)nr);
    std::memcpy(min_r2 + n, bv.data(), sizeof(T) * (size_t)nr);
  }
};

// out[n][j] = min(floor[n], r2[n][j]) in double, NaN as torch.minimum (either NaN gives NaN):
// k-means++ seeding's distances to the nearest centre if candidate j joins.
template <class T>
struct MinWithRows {
  const double* floor;
  double* out;
  int64_t C;
  void begin(int64_t, int64_t) {}
  RBFKERN_INLINE static double min_nan(double v, double f) { return (v < f || v != v) ? v : f; }
  void put(int64_t n, int64_t rv, int64_t j0, int64_t nc, const T* tile, int64_t ld) {
    for (int64_t r = 0; r < rv; ++r) {
      const double f = floor[n + r];
      double* o = out + (n + r) * C + j0;
      for (int64_t i = 0; i < nc; ++i) o[i] = min_nan((double)tile[r * ld + i], f);
    }
  }
  void put_col(int64_t n, int64_t nr, int64_t j, const T* s) {
    for (int64_t r = 0; r < nr; ++r) out[(n + r) * C + j] = min_nan((double)s[r], floor[n + r]);
  }
  void end(int64_t, int64_t) {}
};

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

template <class T, bool DIAG, class Sink>
static void forward_diag(const RbfProblem<T>& p, const Sink& sink0, int nthreads) {
  constexpr int L = VT<T>::L, P = 2 * L, R = kMicroRows;
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
    Sink sink = sink0;
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t n0 = rb * RB, nr = std::min(RB, N - n0);
      const int64_t rows = simd::round_up(nr, R);
      sink.begin(n0, nr);
      pack_rows(p.x, D, n0, nr, rows, D, xs.data());
      for (int64_t pn = 0; pn < npanel; ++pn) {
        const int64_t j0 = pn * P, nc = std::min<int64_t>(P, C - j0);
        const T* cp = cT.data() + pn * D * P;
        const T* wp = DIAG ? wT.data() + pn * D * P : nullptr;
        for (int64_t r0 = 0; r0 < rows; r0 += R) {
          fwd_diag_micro<T, R, DIAG>(xs.data() + r0 * D, D, cp, wp, tile.data());
          sink.put(n0 + r0, std::min<int64_t>(R, nr - r0), j0, nc, tile.data(), P);
        }
      }
      sink.end(n0, nr);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward, tril metric
// ---------------------------------------------------------------------------------------------
// Tril kernels with rows in the vector lanes: a block of rows is held transposed (DT[d][n]), so
// u_k = sum_{d >= k} dif_d L[d][k] costs exactly D(D+1)/2 vector FMAs per L rows, each with one
// broadcast of L[d][k], and r2 = sum_k u_k^2 needs no horizontal sum. D is padded to Dk (a
// multiple of kTrilKB) with zero rows/columns of L.
constexpr int kTrilKB = 8;  // k (or d) indices per micro-kernel
constexpr int kTrilRV = kVecBytes == 64 ? 2 : 1;  // row vectors per micro-kernel (KB x RV accumulators)
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

template <class T, class Sink>
static void forward_tril(const RbfProblem<T>& p, const Sink& sink0, int nthreads) {
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
    Sink sink = sink0;
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t n0 = rb * RB, nr = std::min(RB, N - n0);
      const int64_t rows = simd::round_up(nr, RV * L);
      sink.begin(n0, nr);
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
        sink.put_col(n0, nr, j, s.data());
      }
      sink.end(n0, nr);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward, diag / none metric, GEMM form (D >= kGemmFwdMinD)
// ---------------------------------------------------------------------------------------------
#include "cpu/rbf_fwd_gemm.h"   // NOLINT(build/include)

template <class T, class Sink>
static void forward_into(const RbfProblem<T>& p, const Sink& sink, int nthreads) {
  const bool gemm = p.D >= kGemmFwdMinD;
  switch (p.metric_kind) {
    case kMetricDiag:
      if (gemm) forward_gemm<T, true>(p, sink, nthreads);
      else forward_diag<T, true>(p, sink, nthreads);
      break;
    case kMetricTril: forward_tril<T>(p, sink, nthreads); break;
    default:
      if (gemm) forward_gemm<T, false>(p, sink, nthreads);
      else forward_diag<T, false>(p, sink, nthreads);
      break;
  }
}

template <class T>
void forward(const RbfProblem<T>& p, T* act, T* r2, int nthreads) {
  if (p.N <= 0 || p.C <= 0) return;
  const ActParams<T> A = make_act_params(p);
  forward_into(p, R2Rows<T>{r2, p.kind == kKindNone ? nullptr : act, &A, p.C, {}}, nthreads);
}

template <class T>
void nearest(const RbfProblem<T>& p, int64_t* label, T* min_r2, int nthreads) {
  if (p.N <= 0 || p.C <= 0) return;
  forward_into(p, NearestRows<T>{label, min_r2, {}, {}}, nthreads);
}

template <class T>
void min_with(const RbfProblem<T>& p, const double* floor, double* out, int nthreads) {
  if (p.N <= 0 || p.C <= 0) return;
  forward_into(p, MinWithRows<T>{floor, out, p.C}, nthreads);
}

template <class T>
void cluster_sums(const T* x, int64_t N, int64_t D, const int64_t* label, int64_t K, double* sums, double* counts,
                  int nthreads) {
  std::fill(sums, sums + K * D, 0.0);
  std::fill(counts, counts + K, 0.0);
  // Each thread reads every label: below about 2^20 elements one thread is faster.
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>({(int64_t)nthreads, K, (N * D) >> 20}));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int t = 0; t < nt; ++t) {
    const int64_t k0 = K * t / nt, k1 = K * (t + 1) / nt;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t l = label[n];
      if (l < k0 || l >= k1) continue;
      double* s = sums + l * D;
      const T* xr = x + n * D;
      for (int64_t d = 0; d < D; ++d) s[d] += (double)xr[d];
      counts[l] += 1.0;
    }
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
      if (WANT_S2) {
        // One product for both sums: a multiply and two adds, one of them fused (sub, mul, add,
        // FMA), where two FMAs and a square would take three multiplier slots. On cores with
        // separate add pipes (Zen) the multipliers set the pace.
        const V gd = g * diff;
        S1[k] += gd;
        S2[k] += gd * diff;
      } else {
        S1[k] += g * diff;
      }
    }
  }
}

#include "cpu/rbf_bwd_joint.h"  // NOLINT(build/include): per instruction set, like this file

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
  if (DIAG && joint_backward(N, gx != nullptr, gc != nullptr || gmetric != nullptr)) {
    backward_diag_joint<T>(p, A, xp, Dq, cK, wK, r2, ga, gr, gx, gc, gmetric, gsigma, nthreads);
    return;
  }

  // Pass 1: gx, parallel over row blocks.
  if (gx) {
    constexpr int R = kMicroRows;
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
// One pass over row blocks, rows in lanes (see trilT_u_micro). Per row block and centre j:
// W = G u (u computed once), gx += 2 L_j W, S_j += sum_n W, gL_j += sum_n dif_n W_n.
// Row blocks are grouped into a fixed number of chunks (from N only); each chunk owns double
// partials of S, gL and gsigma, summed in chunk order at the end. Centres go in groups (from C,
// D and the metric form only) so that those partials stay within kTrilPartialBytes at any size;
// between groups gx keeps its running sums (in order), so no result depends on the thread count.
constexpr int64_t kTrilPartialBytes = int64_t(96) << 20;  // all chunks' double partials of a group
constexpr int64_t kTrilGroupMax = 256;  // centres per group at most (a multiple of kTrilFlush)

// Centres per group: the most (a multiple of kTrilFlush, at least kTrilFlush) whose partials fit.
inline int64_t tril_group(int64_t C, int64_t Dk, int64_t Dq, int64_t nch, bool shared, bool want_gl) {
  const int64_t fixed = want_gl && shared ? Dk * Dq : 0;               // one shared gL
  const int64_t per_centre = (want_gl && !shared ? Dk * Dq : 0) + Dk + 1;  // gL_j, S_j, gsigma_j
  const int64_t room = kTrilPartialBytes / (int64_t)sizeof(double) / nch - fixed;
  const int64_t fit = room / per_centre / kTrilFlush * kTrilFlush;
  return std::min(std::max(fit, kTrilFlush), std::min(kTrilGroupMax, simd::round_up(C, kTrilFlush)));
}

template <class T>
static void backward_tril(const RbfProblem<T>& p, const ActParams<T>& A, const T* xp, int64_t Dq, const T* r2,
                          const T* ga, const T* gr, T* gx, T* gc, T* gmetric, T* gsigma, int nthreads) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L, KB = kTrilKB, RV = kTrilRV;
  constexpr int64_t RB = kTrilRB;
  const int64_t N = p.N, C = p.C, D = p.D;
  const int64_t Dk = simd::round_up(D, KB), Dc = std::max(Dk, Dq);
  const int64_t nrb = simd::cdiv(N, RB);
  const int64_t nch = std::min<int64_t>(8, simd::cdiv(nrb, 4));
  const bool shared = p.metric_shared, want_gl = gmetric != nullptr;
  const bool want_dsig = gsigma != nullptr && ga != nullptr && rbf_kind_uses_sigma(A.kind);
  const int64_t CG = tril_group(C, Dk, Dq, nch, shared, want_gl), ngroup = simd::cdiv(C, CG);
  // Per-chunk partials: gL [shared ? 1 : CG][Dk][Dq] (k-major, d in lanes), S [CG][Dk], gsigma [CG].
  // A shared gL sums over every group; the rest is per group.
  const int64_t szL = want_gl ? (shared ? 1 : CG) * Dk * Dq : 0, szS = gc ? CG * Dk : 0, szG = want_dsig ? CG : 0;
  const int64_t per = szL + szS + szG;
  std::vector<T> Lk;
  pack_tril_sq<T>(p, Dk, Lk);
  const std::vector<T> cp = pack_centres(p, Dc);
  std::vector<double> part((size_t)(nch * per), 0.0);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> XT((size_t)(Dk * RB)), DT((size_t)(Dk * RB)), WT((size_t)(Dk * RB)),
        GXT(gx ? (size_t)(Dk * RB) : 0), DR(want_gl ? (size_t)(RB * Dq) : 0), Gt((size_t)(RB * CG)),
        GT((size_t)(CG * RB)), St(want_dsig ? (size_t)(RB * CG) : 0), GLf((size_t)szL);
    std::vector<T> Sv(gc ? (size_t)(Dk * L) : 0);  // lane sums of W per k
    std::vector<double> S(gc ? (size_t)D : 0);
    for (int64_t grp = 0; grp < ngroup; ++grp) {
      const int64_t j0 = grp * CG, j1 = std::min(C, j0 + CG), cg = j1 - j0;
      const bool last = grp + 1 == ngroup;
#pragma omp for schedule(dynamic, 1)
      for (int64_t ch = 0; ch < nch; ++ch) {
        double* pL = part.data() + ch * per;
        double* pS = pL + szL;
        double* pG = pS + szS;
        std::fill(shared && grp > 0 ? pS : pL, pL + per, 0.0);  // a shared gL carries over
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
          const int64_t o = n0 * C + j0;
          grad_tile(A, j0, 1, nr, cg, r2 + o, ga ? ga + o : nullptr, gr ? gr + o : nullptr, C, Gt.data(),
                    want_dsig ? St.data() : nullptr, CG);
          for (int64_t jj = 0; jj < cg; ++jj) {
            for (int64_t n = 0; n < rows; ++n) GT[jj * RB + n] = n < nr ? Gt[n * CG + jj] : T(0);
            if (want_dsig) {
              double s = 0.0;
              for (int64_t n = 0; n < nr; ++n) s += (double)St[n * CG + jj];
              pG[jj] += s;
            }
          }
          if (gx) {  // the running sums of earlier groups (T, unscaled), else 0
            std::fill(GXT.begin(), GXT.end(), T(0));
            if (grp > 0)
              for (int64_t n = 0; n < nr; ++n)
                for (int64_t d = 0; d < D; ++d) GXT[d * RB + n] = gx[(n0 + n) * D + d];
          }
          for (int64_t jj = 0; jj < cg; ++jj) {
            const int64_t j = j0 + jj;
            const T* Lj = Lk.data() + (shared ? 0 : j * Dk * Dk);
            const T* cj = cp.data() + j * Dc;
            diff_T(XT.data(), cj, Dk, RB, rows, DT.data());
            if (gc) std::fill(Sv.begin(), Sv.end(), T(0));
            // W = G u, and the lane sums of W for S.
            for (int64_t r0 = 0; r0 < rows; r0 += RV * L) {
              V g[RV], u[KB][RV];
#pragma GCC unroll 4
              for (int rv = 0; rv < RV; ++rv) g[rv] = vload(GT.data() + jj * RB + r0 + rv * L);
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
              for (int64_t k = 0; k < D; ++k) pS[jj * Dk + k] += (double)vhsum(vload(Sv.data() + k * L));
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
              T* gLj = GLf.data() + (shared ? 0 : jj * Dk * Dq);
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
              if (shared && ((j + 1) % kTrilFlush == 0 || j + 1 == j1)) flush_gl();
            }
          }
          if (want_gl && !shared && ((rb + 1) % kTrilFlush == 0 || rb + 1 == rb_end)) flush_gl();
          if (gx)
            for (int64_t n = 0; n < nr; ++n)
              for (int64_t d = 0; d < D; ++d) gx[(n0 + n) * D + d] = last ? T(2) * GXT[d * RB + n] : GXT[d * RB + n];
        }
      }  // implicit barrier: the group's chunk partials are complete
      // The group's gc, gsigma and (per-centre factors) gmetric: chunk partials summed in chunk order.
#pragma omp for schedule(static)
      for (int64_t jj = 0; jj < cg; ++jj) {
        const int64_t j = j0 + jj;
        if (want_gl && !shared) {
          T* gm = gmetric + j * D * D;
          for (int64_t d = 0; d < D; ++d)
            for (int64_t k = 0; k < D; ++k) {
              double s = 0.0;
              if (k <= d)
                for (int64_t ch = 0; ch < nch; ++ch) s += part[(size_t)(ch * per + (jj * Dk + k) * Dq + d)];
              gm[d * D + k] = (T)(2.0 * s);
            }
        }
        if (gc) {
          for (int64_t k = 0; k < D; ++k) {
            double s = 0.0;
            for (int64_t ch = 0; ch < nch; ++ch) s += part[(size_t)(ch * per + szL + jj * Dk + k)];
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
          for (int64_t ch = 0; ch < nch; ++ch) s += part[(size_t)(ch * per + szL + szS + jj)];
          gsigma[j] = (T)s;
        }
      }  // implicit barrier before the next group reuses the partials
    }
  }
  if (want_gl && shared)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t k = 0; k < D; ++k) {
        double s = 0.0;
        if (k <= d)
          for (int64_t ch = 0; ch < nch; ++ch) s += part[(size_t)(ch * per + k * Dq + d)];
        gmetric[d * D + k] = (T)(2.0 * s);
      }
  if (gsigma && !want_dsig) std::fill(gsigma, gsigma + C, T(0));
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
    case kMetricTril: backward_tril<T>(p, A, xp, Dq, r2, ga, gr, gx, gc, gmetric, gsigma, nthreads); break;
    default: backward_diag<T, false>(p, A, xp, Dq, r2, ga, gr, gx, gc, nullptr, gsigma, nthreads); break;
  }
}
