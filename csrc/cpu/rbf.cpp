// Entry points of the RBF CPU kernels (contract: csrc/cpu/rbf.h): the kernels in rbf_kernels.h,
// compiled once per instruction set, one of them picked per call (csrc/cpu/isa.h).
#include "cpu/rbf.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/isa.h"
#include "cpu/simd.h"

#define RBFKERN_ISA_FAMILY rbf
#define RBFKERN_ISA_KERNELS "cpu/rbf_kernels.h"
#include "cpu/isa_foreach.h"

namespace rbfkern {
namespace cpu {

template <class T>
void rbf_forward(const RbfProblem<T>& p, T* act, T* r2, int nthreads) {
  RBFKERN_PICK_ISA(rbf, forward<T>)(p, act, r2, std::max(1, nthreads));
}

template <class T>
void rbf_nearest(const RbfProblem<T>& p, int64_t* label, T* min_r2, int nthreads) {
  RBFKERN_PICK_ISA(rbf, nearest<T>)(p, label, min_r2, std::max(1, nthreads));
}

template <class T>
void rbf_min_with(const RbfProblem<T>& p, const double* floor, double* out, int nthreads) {
  RBFKERN_PICK_ISA(rbf, min_with<T>)(p, floor, out, std::max(1, nthreads));
}

template <class T>
void rbf_cluster_sums(const T* x, int64_t N, int64_t D, const int64_t* label, int64_t K, double* sums,
                      double* counts, int nthreads) {
  RBFKERN_PICK_ISA(rbf, cluster_sums<T>)(x, N, D, label, K, sums, counts, std::max(1, nthreads));
}

template <class T>
void rbf_backward(const RbfProblem<T>& p, const T* r2, const T* grad_act, const T* grad_r2, T* gx,
                  T* gc, T* gmetric, T* gsigma, int nthreads) {
  RBFKERN_PICK_ISA(rbf, backward<T>)(p, r2, grad_act, grad_r2, gx, gc, gmetric, gsigma, std::max(1, nthreads));
}

template void rbf_forward<float>(const RbfProblem<float>&, float*, float*, int);
template void rbf_forward<double>(const RbfProblem<double>&, double*, double*, int);
template void rbf_nearest<float>(const RbfProblem<float>&, int64_t*, float*, int);
template void rbf_nearest<double>(const RbfProblem<double>&, int64_t*, double*, int);
template void rbf_min_with<float>(const RbfProblem<float>&, const double*, double*, int);
template void rbf_min_with<double>(const RbfProblem<double>&, const double*, double*, int);
template void rbf_cluster_sums<float>(const float*, int64_t, int64_t, const int64_t*, int64_t, double*, double*, int);
template void rbf_cluster_sums<double>(const double*, int64_t, int64_t, const int64_t*, int64_t, double*, double*,
                                       int);
template void rbf_backward<float>(const RbfProblem<float>&, const float*, const float*,
                                  const float*, float*, float*, float*, float*, int);
template void rbf_backward<double>(const RbfProblem<double>&, const double*, const double*,
                                   const double*, double*, double*, double*, double*, int);

}  // namespace cpu
}  // namespace rbfkern
