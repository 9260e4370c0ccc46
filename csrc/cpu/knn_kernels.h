// kNN candidate search kernels (contract: csrc/cpu/knn.h). knn.cpp compiles this file once per
// instruction set (csrc/cpu/isa_foreach.h). No include guard on purpose.
//
// Plan: the bank in chunks of `chunk` rows, each packed in parallel into panels [K][P] (K = D + 1,
// P = kGemmNV vectors of bank rows) holding (-2 b_0 .. -2 b_{D-1}, |b|^2) per row; padding rows
// get |b|^2 = +inf, so they never pass. Queries are packed once as rows (q_0 .. q_{D-1}, 1), zero
// rows up to a multiple of R. Then, parallel over blocks of up to kKnnTileBlock tiles of R queries
// (each thread owns its queries' candidate heaps: no merge, and the result does not depend on the
// thread count), per panel (read once per block, then from L1) and tile: gemm_tile gives the
// R x P approx values |b|^2 - 2 q.b, one vector compare per query against its current kk-th
// value, and the rare passing lanes go into the query's bounded max-heap of (value, index), in
// bank order: a later equal value never displaces an earlier row. The heaps live in the outputs
// and are sorted at the end.

#include "cpu/gemm_tile.h"

using simd::VT;
using simd::vload;

constexpr int kKnnTileBlock = 4;  // query tiles (of kGemmR rows) per work item

// (av, ai) after (bv, bi): larger value, or the same value and a larger index.
template <class T>
RBFKERN_INLINE bool knn_after(T av, int64_t ai, T bv, int64_t bi) {
  return av > bv || (av == bv && ai > bi);
}

// Replace the largest entry of the max-heap (hv, hi) of n entries by (v, id) and restore it.
template <class T>
static void knn_heap_replace_top(T* hv, int64_t* hi, int64_t n, T v, int64_t id) {
  int64_t pos = 0;
  for (;;) {
    int64_t c = 2 * pos + 1;
    if (c >= n) break;
    if (c + 1 < n && knn_after(hv[c + 1], hi[c + 1], hv[c], hi[c])) ++c;
    if (!knn_after(hv[c], hi[c], v, id)) break;
    hv[pos] = hv[c];
    hi[pos] = hi[c];
    pos = c;
  }
  hv[pos] = v;
  hi[pos] = id;
}

// Bank rows j0 .. j0+n-1 (n <= P) into one panel [K][P]; returns the largest |b|^2 (double sums;
// NaN stays NaN whatever the order).
template <class T>
static double knn_pack_panel(const T* bank, int64_t D, int64_t j0, int64_t n, T* panel) {
  constexpr int P = kGemmNV * VT<T>::L;
  // The rows go through a staging block, kStageD features at a time, read sequentially: read in
  // place down the columns, rows D apart (2 KiB and more) fall into a few L1 sets and every load
  // misses. The stage's rows are an odd number of cache lines apart.
  constexpr int64_t kStageD = 64, kStageLd = gemm_row_ld<T>(kStageD);
  alignas(64) T stage[P * kStageLd];
  double s[P] = {};  // one independent sum per row: no serial chain of dependent adds
  for (int64_t d0 = 0; d0 < D; d0 += kStageD) {
    const int64_t nd = std::min(kStageD, D - d0);
    for (int64_t l = 0; l < n; ++l)
      std::memcpy(stage + l * kStageLd, bank + (j0 + l) * D + d0, sizeof(T) * (size_t)nd);
    for (int64_t d = 0; d < nd; ++d) {
      T* out = panel + (d0 + d) * P;
      for (int64_t l = 0; l < n; ++l) {
        const T b = stage[l * kStageLd + d];
        out[l] = T(-2) * b;
        s[l] += (double)b * (double)b;
      }
      for (int64_t l = n; l < P; ++l) out[l] = T(0);
    }
  }
  double m = 0.0;
  for (int64_t l = 0; l < P; ++l) {
    panel[D * P + l] = l < n ? (T)s[l] : std::numeric_limits<T>::infinity();
    if (l < n && (s[l] > m || s[l] != s[l])) m = s[l];
  }
  return m;
}

template <class T>
double candidates(const KnnProblem<T>& p, T* value, int64_t* index, int nthreads) {
  typedef typename VT<T>::VI VI;
  constexpr int R = kGemmR, NV = kGemmNV, L = VT<T>::L, P = NV * L;
  const int64_t Q = p.Q, M = p.M, D = p.D, K = D + 1, kk = p.kk;
  const int64_t chunk = simd::round_up(std::max<int64_t>(p.chunk, 1), P);
  const int64_t nqt = simd::cdiv(Q, R);
  // query tiles per work item: up to kKnnTileBlock share each panel while it is in L1, fewer
  // where that would leave threads without work
  const int64_t tb = std::max<int64_t>(1, std::min<int64_t>(kKnnTileBlock, nqt / (4 * (int64_t)nthreads)));
  const int64_t nblk = simd::cdiv(nqt, tb);
  std::fill(value, value + Q * kk, std::numeric_limits<T>::infinity());
  std::fill(index, index + Q * kk, std::numeric_limits<int64_t>::max());
  if (Q == 0 || M == 0) return 0.0;
  std::vector<T> qa((size_t)(nqt * R * K), T(0));
  for (int64_t q = 0; q < Q; ++q) {
    if (D > 0) std::memcpy(qa.data() + q * K, p.query + q * D, sizeof(T) * (size_t)D);
    qa[(size_t)(q * K + D)] = T(1);
  }
  std::vector<T> panels((size_t)(std::min(chunk, simd::round_up(M, P)) * K));
  std::vector<double> pmax((size_t)simd::cdiv(M, P));
#pragma omp parallel num_threads(nthreads)
  {
    alignas(64) T tile[R * P];
    for (int64_t c0 = 0; c0 < M; c0 += chunk) {
      const int64_t cm = std::min(chunk, M - c0), np = simd::cdiv(cm, P);
#pragma omp for schedule(static)
      for (int64_t pn = 0; pn < np; ++pn)
        pmax[(size_t)(c0 / P + pn)] =
            knn_pack_panel(p.bank, D, c0 + pn * P, std::min<int64_t>(P, cm - pn * P), panels.data() + pn * K * P);
      // (implicit barrier: the chunk is packed; the one after the next loop guards the repack)
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < nblk; ++blk) {
        const int64_t t0 = blk * tb, t1 = std::min(nqt, t0 + tb);
        T thr[kKnnTileBlock][R];
        for (int64_t t = t0; t < t1; ++t)
          for (int r = 0; r < R; ++r) {
            const int64_t q = t * R + r;
            thr[t - t0][r] = q < Q ? value[q * kk] : -std::numeric_limits<T>::infinity();
          }
        for (int64_t pn = 0; pn < np; ++pn) {
          const T* panel = panels.data() + pn * K * P;
          const int64_t j0 = c0 + pn * P;
          for (int64_t t = t0; t < t1; ++t) {
            T* th = thr[t - t0];
            gemm_tile<T, R, NV>(qa.data() + t * R * K, K, panel, K, kKnnBlockK, K, tile, nullptr);
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
              VI pass = vload(tile + r * P) < th[r];
#pragma GCC unroll 4
              for (int v = 1; v < NV; ++v) pass |= vload(tile + r * P + v * L) < th[r];
              if (!vany(pass)) continue;
              T* hv = value + (t * R + r) * kk;
              int64_t* hi = index + (t * R + r) * kk;
              for (int l = 0; l < P; ++l)
                if (tile[r * P + l] < hv[0]) knn_heap_replace_top(hv, hi, kk, tile[r * P + l], j0 + l);
              th[r] = hv[0];
            }
          }
        }
      }
    }
    // sort each heap ascending (value, then index); unfilled slots -> index -1
    std::vector<std::pair<T, int64_t>> e((size_t)kk);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < Q; ++q) {
      T* hv = value + q * kk;
      int64_t* hi = index + q * kk;
      for (int64_t i = 0; i < kk; ++i) e[(size_t)i] = {hv[i], hi[i]};
      std::sort(e.begin(), e.end());
      for (int64_t i = 0; i < kk; ++i) {
        hv[i] = e[(size_t)i].first;
        hi[i] = e[(size_t)i].second == std::numeric_limits<int64_t>::max() ? -1 : e[(size_t)i].second;
      }
    }
  }
  double m = 0.0;
  for (double s : pmax)
    if (s > m || s != s) m = s;
  return m;
}

template <class T>
double error_factor(int64_t D) {
  return gemm_error_factor<T>(D + 1, kKnnBlockK);
}
