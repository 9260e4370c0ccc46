// Exact-kNN candidate search on CPU: the Euclidean fast path of rbfkern.retrieval.similar.
//
// For each query q the kk bank rows with the smallest GEMM-expanded value
//   approx(q, b) = |b|^2 - 2 q.b      (= |q - b|^2 - |q|^2: the per-query constant left out)
// sorted ascending, ties by the smaller bank index. The caller re-ranks them in the exact
// difference form and certifies each query with the rounding bound below (retrieval.py).
//
// Shapes (C-contiguous, one float dtype): query (Q,D), bank (M,D), value (Q,kk), index (Q,kk)
// int64. A query with fewer than kk rows of finite approx (NaN / inf data) gets index -1 and
// value +inf in the unfilled slots.
//
// Rounding: approx is one fixed-order sum of the K = D + 1 products q_d * (-2 b_d) and 1 * |b|^2
// (|b|^2 summed in double, rounded once to T), by gemm_tile (csrc/cpu/gemm_tile.h) in blocks of
// kKnnBlockK: |approx - exact| <= gemm_error_factor<T>(K, kKnnBlockK) * (2 sum_d |q_d b_d| + |b|^2)
// plus the rounding of |b|^2 to T.
//
// Memory: the bank is packed chunk rows at a time (chunk rounded up to the panel width), so the
// extra memory is about (chunk + Q) * (D + 1) values plus the outputs. Results do not depend on
// nthreads: each query is searched by one thread, over the bank in index order.
#pragma once

#include <cstdint>

namespace rbfkern {
namespace cpu {

// Terms per block of gemm_tile's two-level summation.
constexpr int64_t kKnnBlockK = 128;
// Default bank rows per chunk: about 1 MiB of packed panels (a core's L2 holds them).
inline int64_t knn_default_chunk(int64_t D, int64_t elem_size) {
  const int64_t rows = ((int64_t)1 << 20) / ((D + 1) * elem_size);
  return rows < 64 ? 64 : rows;
}

template <class T>
struct KnnProblem {
  int64_t Q = 0, M = 0, D = 0;
  int64_t kk = 0;     // candidates per query, 1 <= kk <= M
  int64_t chunk = 0;  // bank rows packed per step (>= 1; rounded up to the panel width)
  const T* query = nullptr;  // (Q,D)
  const T* bank = nullptr;   // (M,D)
};

// Fills value and index (Q,kk); returns max_j |b_j|^2 (summed in double; NaN if any row's is).
template <class T>
double knn_candidates(const KnnProblem<T>& p, T* value, int64_t* index, int nthreads);

// The factor g of the bound above for D features: gemm_error_factor<T>(D + 1, kKnnBlockK).
template <class T>
double knn_error_factor(int64_t D);

}  // namespace cpu
}  // namespace rbfkern
