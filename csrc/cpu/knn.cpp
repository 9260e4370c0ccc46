// Entry point of the kNN candidate search (contract: csrc/cpu/knn.h): the kernels in
// knn_kernels.h, compiled once per instruction set, one of them picked per call (csrc/cpu/isa.h).
#include "cpu/knn.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/isa.h"
#include "cpu/simd.h"

#define RBFKERN_ISA_FAMILY knn
#define RBFKERN_ISA_KERNELS "cpu/knn_kernels.h"
#include "cpu/isa_foreach.h"

namespace rbfkern {
namespace cpu {

template <class T>
double knn_candidates(const KnnProblem<T>& p, T* value, int64_t* index, int nthreads) {
  return RBFKERN_PICK_ISA(knn, candidates<T>)(p, value, index, std::max(1, nthreads));
}

template <class T>
double knn_error_factor(int64_t D) {
  return knn::isa_default::error_factor<T>(D);  // the same formula in every instruction set
}

template double knn_candidates<float>(const KnnProblem<float>&, float*, int64_t*, int);
template double knn_candidates<double>(const KnnProblem<double>&, double*, int64_t*, int);
template double knn_error_factor<float>(int64_t);
template double knn_error_factor<double>(int64_t);

}  // namespace cpu
}  // namespace rbfkern
