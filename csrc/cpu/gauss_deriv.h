// Fused CPU kernels for the Gaussian-derivative basis convolution (structured receptive fields,
// thesis ch. 3 eq. 20-23, Algorithm 1), 2D and 3D, forward and backward, float and double. The
// kernels are in gauss_deriv_kernels.h, compiled once per instruction set; gauss_deriv.cpp holds
// these entry points, gauss_deriv_bind.cpp their Python bindings.
//
// Problem (all C-contiguous, one dtype):
//   x (N, Ci, H, W), 3D (N, Ci, D, H, W); A (Co, J) with J = Ci*S*M, column j = (i*S + s)*M + b
//   (alpha reshaped); f (S, O1, K): the 1D kernels g_m of each scale FLIPPED (f[a] = g(R - a),
//   K = 2R+1), so every pass is a cross-correlation; pq (M, 2): basis member b is g_p along x
//   times g_q along y, 3D (M, 3) rows (p, q, t) with g_t along z.
//   out (N, Co, Ho, Wo), Ho = (H + 2 pad - K)/stride + 1, likewise Wo (and Do).
// Backward outputs may be null (not needed); non-null ones are overwritten. Results do not
// depend on nthreads.
#pragma once

#include <cstdint>

namespace rbfkern {
namespace cpu {

struct GdSizes {
  int64_t N = 0, Ci = 0, H = 0, W = 0, Co = 0, S = 0, O1 = 0, M = 0, K = 0;
  int64_t stride = 1, pad = 0, Ho = 0, Wo = 0;
  int64_t D = 1, Do = 1;  // depth (3D problems only)
};

template <class T>
struct GdProblem : GdSizes {
  const T* x = nullptr;
  const T* A = nullptr;
  const T* f = nullptr;
  const int64_t* pq = nullptr;
};

template <class T>
void gauss_deriv2d_forward(const GdProblem<T>& p, T* out, int nthreads);
template <class T>
void gauss_deriv2d_backward(const GdProblem<T>& p, const T* gout, T* gx, T* galpha, T* gf, int nthreads);
template <class T>
void gauss_deriv3d_forward(const GdProblem<T>& p, T* out, int nthreads);
template <class T>
void gauss_deriv3d_backward(const GdProblem<T>& p, const T* gout, T* gx, T* galpha, T* gf, int nthreads);

}  // namespace cpu
}  // namespace rbfkern
