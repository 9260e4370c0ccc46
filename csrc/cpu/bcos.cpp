// Entry points of the B-cos CPU kernels (contract: csrc/cpu/bcos.h): the kernels in
// bcos_kernels.h, compiled once per instruction set, one of them picked per call (csrc/cpu/isa.h).
#include "cpu/bcos.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/bcos_pow.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#define RBFKERN_ISA_FAMILY bcos
#define RBFKERN_ISA_KERNELS "cpu/bcos_kernels.h"
#include "cpu/isa_foreach.h"

namespace rbfkern {
namespace cpu {

template <class T>
void bcos_forward(const BcosGeom& g, double b, double eps_in, double eps_out, const T* x, const T* l,
                  const T* ws, T* y, T* lmax, uint8_t* idx, T* root, bool save, bool nhwc, int nthreads) {
  RBFKERN_PICK_ISA(bcos, fwd<T>)(g, b, eps_in, eps_out, x, l, ws, y, lmax, idx, root, save, nhwc, nthreads);
}

template <class T>
bool bcos_forward_direct(const BcosGeom& g, double b, double eps_in, double eps_out, const T* x,
                         const T* w, const T* ws, T* y, T* lmax, uint8_t* idx, T* root, bool save,
                         int64_t chunk_bytes, int nthreads) {
  return RBFKERN_PICK_ISA(bcos, direct_fwd<T>)(g, b, eps_in, eps_out, x, w, ws, y, lmax, idx, root, save,
                                               chunk_bytes, nthreads);
}

template <class T>
bool bcos_linear_forward(const BcosGeom& g, double b, double eps_in, double eps_out, const T* x, const T* w,
                         const T* ws, T* y, T* lmax, uint8_t* idx, T* root, bool save, int nthreads) {
  return RBFKERN_PICK_ISA(bcos, linear_fwd<T>)(g, b, eps_in, eps_out, x, w, ws, y, lmax, idx, root, save, nthreads);
}

template <class T>
void bcos_backward_epilogue(const BcosGeom& g, double b, double eps_out, const T* gy, const T* lmax,
                            const uint8_t* idx, const T* root, const T* ws, T* gl, T* q, bool explain,
                            bool need_q, bool nhwc, int nthreads) {
  RBFKERN_PICK_ISA(bcos, bwd_epilogue<T>)(g, b, eps_out, gy, lmax, idx, root, ws, gl, q, explain, need_q, nhwc,
                                          nthreads);
}

template <class T>
void bcos_backward_norm(const BcosGeom& g, const T* x, const T* q, const T* gsrc, T* gx, bool nhwc, int nthreads) {
  if (nhwc || g.one_pixel()) {
    RBFKERN_PICK_ISA(bcos, bwd_norm_nhwc<T>)(g, x, q, gsrc, gx, nthreads);
  } else {
    RBFKERN_PICK_ISA(bcos, bwd_norm<T>)(g, x, q, gsrc, gx, nthreads);
  }
}

template <class T>
void bcos_weight_scale(const T* w, T* ws, int64_t R, int64_t K, int nthreads) {
  RBFKERN_PICK_ISA(bcos, weight_scale<T>)(w, ws, R, K, nthreads);
}

template <class T>
void bcos_weight_grad(const T* w, T* g, int64_t R, int64_t K, int64_t transposed_rows, int nthreads) {
  RBFKERN_PICK_ISA(bcos, weight_grad<T>)(w, g, R, K, transposed_rows, nthreads);
}

template <class T>
void bcos_weight_grad_deterministic(const BcosGeom& g, const T* gl, const T* x, T* gw, int nthreads) {
  RBFKERN_PICK_ISA(bcos, wgrad_det<T>)(g, gl, x, gw, nthreads);
}

#define RBFKERN_BCOS_INSTANTIATE(T)                                                                      \
  template void bcos_forward<T>(const BcosGeom&, double, double, double, const T*, const T*, const T*, T*, \
                                T*, uint8_t*, T*, bool, bool, int);                                       \
  template bool bcos_forward_direct<T>(const BcosGeom&, double, double, double, const T*, const T*,      \
                                       const T*, T*, T*, uint8_t*, T*, bool, int64_t, int);              \
  template bool bcos_linear_forward<T>(const BcosGeom&, double, double, double, const T*, const T*,      \
                                       const T*, T*, T*, uint8_t*, T*, bool, int);                       \
  template void bcos_backward_epilogue<T>(const BcosGeom&, double, double, const T*, const T*,           \
                                          const uint8_t*, const T*, const T*, T*, T*, bool, bool, bool, int); \
  template void bcos_backward_norm<T>(const BcosGeom&, const T*, const T*, const T*, T*, bool, int);     \
  template void bcos_weight_scale<T>(const T*, T*, int64_t, int64_t, int);                               \
  template void bcos_weight_grad<T>(const T*, T*, int64_t, int64_t, int64_t, int);                       \
  template void bcos_weight_grad_deterministic<T>(const BcosGeom&, const T*, const T*, T*, int);
RBFKERN_BCOS_INSTANTIATE(float)
RBFKERN_BCOS_INSTANTIATE(double)
#undef RBFKERN_BCOS_INSTANTIATE

}  // namespace cpu
}  // namespace rbfkern
