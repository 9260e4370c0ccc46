// Fused CPU kernels for the Mahalanobis RBF op (forward and backward), float and double.
//
// Shapes (all C-contiguous, one dtype):
//   x (N,D), centers (C,D), sigma (C,)
//   metric: none (ignored) | diag (C,D) or shared (D,) | tril (C,D,D) or shared (D,D),
//           tril reads only the lower triangle (d >= k)
//   r2, act, grad_act, grad_r2: (N,C)
//   gx (N,D), gc (C,D), gmetric (shape of metric; tril: strictly-upper part written as 0), gsigma (C,)
// Output pointers may be null (not needed); non-null outputs are fully overwritten.
// Results do not depend on nthreads (fixed blocking, fixed reduction order).
#pragma once

#include <cstdint>

namespace rbfkern {
namespace cpu {

enum RbfMetric : int { kMetricNone = 0, kMetricDiag = 1, kMetricTril = 2 };

enum RbfKind : int {
  kKindNone = -1,  // r2 only
  kLinear = 0,
  kGaussian = 1,
  kThinPlate = 2,
  kLogistic = 3,
  kInverseMultiquadric = 4,
  kMultiquadric = 5,
  kInverseQuadratic = 6,
  kQuadratic = 7,
};

inline bool rbf_kind_valid(int kind) { return kind >= -1 && kind <= 7; }
inline bool rbf_kind_uses_sigma(int kind) { return kind == kGaussian || kind >= kLogistic; }

template <class T>
struct RbfProblem {
  int64_t N = 0, C = 0, D = 0;
  const T* x = nullptr;        // (N,D)
  const T* centers = nullptr;  // (C,D)
  const T* metric = nullptr;   // see above; unused for kMetricNone
  int metric_kind = kMetricNone;
  bool metric_shared = false;
  const T* sigma = nullptr;  // (C,); read only when rbf_kind_uses_sigma(kind)
  int kind = kKindNone;
  double shape = 0.0;
};

// act (N,C) must be null for kind == kKindNone; r2 (N,C) may be null when act is not (the
// activation alone: r2 then stays in a per-thread block of rows), else it is written.
template <class T>
void rbf_forward(const RbfProblem<T>& p, T* act, T* r2, int nthreads);

// Each row's nearest centre: label (N,) and min_r2 (N,) equal r2.min(1) of rbf_forward's r2 (the
// same values; torch.min's order: NaN first, then the smaller index among equal values), without
// writing (N, C). C >= 1.
template <class T>
void rbf_nearest(const RbfProblem<T>& p, int64_t* label, T* min_r2, int nthreads);

// out (N,C) = min(floor[n], r2[n][j]) in double (either NaN gives NaN, as torch.minimum), r2 as
// rbf_forward computes it: k-means++ seeding's candidate distances in one pass.
template <class T>
void rbf_min_with(const RbfProblem<T>& p, const double* floor, double* out, int nthreads);

// k-means' cluster statistics: sums (K,D) and counts (K,), in double, of the rows of x (N,D) by
// label (N,), every label in [0, K). Each cluster adds its rows in row order (threads split the
// clusters), so the result does not depend on nthreads.
template <class T>
void rbf_cluster_sums(const T* x, int64_t N, int64_t D, const int64_t* label, int64_t K, double* sums,
                      double* counts, int nthreads);

// r2 is the forward's r2. G = grad_act * df/dr2 + grad_r2 (either may be null).
template <class T>
void rbf_backward(const RbfProblem<T>& p, const T* r2, const T* grad_act, const T* grad_r2,
                  T* gx, T* gc, T* gmetric, T* gsigma, int nthreads);

}  // namespace cpu
}  // namespace rbfkern
