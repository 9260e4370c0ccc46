// Entry points of the Gaussian-derivative CPU kernels (contract: csrc/cpu/gauss_deriv.h): the
// kernels in gauss_deriv_kernels.h, compiled once per instruction set, one of them picked per
// call (csrc/cpu/isa.h).
#include "cpu/gauss_deriv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/isa.h"
#include "cpu/simd.h"

#define RBFKERN_ISA_FAMILY gauss_deriv
#define RBFKERN_ISA_KERNELS "cpu/gauss_deriv_kernels.h"
#include "cpu/isa_foreach.h"

namespace rbfkern {
namespace cpu {

template <class T>
void gauss_deriv2d_forward(const GdProblem<T>& p, T* out, int nthreads) {
  RBFKERN_PICK_ISA(gauss_deriv, forward2d<T>)(p, out, nthreads);
}
template <class T>
void gauss_deriv2d_backward(const GdProblem<T>& p, const T* gout, T* gx, T* galpha, T* gf, int nthreads) {
  RBFKERN_PICK_ISA(gauss_deriv, backward2d<T>)(p, gout, gx, galpha, gf, nthreads);
}
template <class T>
void gauss_deriv3d_forward(const GdProblem<T>& p, T* out, int nthreads) {
  RBFKERN_PICK_ISA(gauss_deriv, forward3d<T>)(p, out, nthreads);
}
template <class T>
void gauss_deriv3d_backward(const GdProblem<T>& p, const T* gout, T* gx, T* galpha, T* gf, int nthreads) {
  RBFKERN_PICK_ISA(gauss_deriv, backward3d<T>)(p, gout, gx, galpha, gf, nthreads);
}

#define RBFKERN_GD_INSTANTIATE(T)                                                                  \
  template void gauss_deriv2d_forward<T>(const GdProblem<T>&, T*, int);                            \
  template void gauss_deriv2d_backward<T>(const GdProblem<T>&, const T*, T*, T*, T*, int);          \
  template void gauss_deriv3d_forward<T>(const GdProblem<T>&, T*, int);                            \
  template void gauss_deriv3d_backward<T>(const GdProblem<T>&, const T*, T*, T*, T*, int);
RBFKERN_GD_INSTANTIATE(float)
RBFKERN_GD_INSTANTIATE(double)
#undef RBFKERN_GD_INSTANTIATE

}  // namespace cpu
}  // namespace rbfkern
