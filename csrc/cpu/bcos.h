// B-cos CPU kernels: everything around the convolution / GEMM (which PyTorch runs). The kernels
// are in bcos_kernels.h (+ bcos_direct.h, bcos_wgrad_det.h), compiled once per instruction set;
// bcos.cpp holds these entry points, bcos_bind.cpp their Python bindings.
//
// Layouts, all contiguous: x [N, C, H, W]; raw linear output l [N, O*M, P] with P = Ho*Wo;
// y, lmax [N, O, P]; idx uint8 [N, O, P]; root, q [N, G, P]; the weight [O*M, C/G, kh, kw];
// ws [O*M]. A linear layer is the case H = W = Ho = Wo = 1 with a 1x1 window and G = 1.
// Channels last (nhwc = true, the epilogues around oneDNN): x, gx [N, H, W, C]; l, gl [N, P, O*M];
// y, lmax, idx, gy [N, P, O]; root, q [N, P, G] (bcos_nhwc.h). A one_pixel() map (a linear layer)
// takes the channels-last epilogues whatever nhwc says: they walk a row's outputs as one loop,
// where the NCHW ones make a call per output, and its two layouts are one.
//
// The convolution / GEMM runs with the raw weight W; ws[c] = 1 / ||W_c|| scales its output
// channel c here, so l-hat = ws * l is the output of the unit-norm filters (no W-hat tensor).
// Forward   n = root + eps_out, root = sqrt(box-sum of x^2 over the window and the group's
//           channels + eps_in); l* = max_m l-hat[o*M + m] (ties -> first);
//           y = l* (B = 1), (|l*|/n) l* (B = 2), (|l*|/n + 1e-6)^(B-1) l* (otherwise).
// Backward  gl = ws * dy/dl* gy scattered to the argmax channel (the gradient of the raw-weight
//           map, so torch's backward with W gives gx and dL/dW-raw-map); q = sum_o dy/dn gy /
//           root per group; gx = gx_map + x * box-sum^T(q) (d root / d x_c = x_c / root);
//           gW = g - W <g, W> / <W, W> with g the raw map's weight gradient.
// Every output is summed in an order fixed by the sizes: results do not depend on nthreads.
#pragma once

#include <cstdint>

namespace rbfkern {
namespace cpu {

// The layer's geometry; from Python a list of 17 ints in this order.
struct BcosGeom {
  int64_t N, C, H, W;  // input
  int64_t G, O, M;     // groups, outputs, MaxOut units per output
  int64_t Ho, Wo;      // output plane
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;  // window, stride, padding, dilation
  static constexpr int kLen = 17;
  static BcosGeom from_list(const int64_t* v) {
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8],
            v[9], v[10], v[11], v[12], v[13], v[14], v[15], v[16]};
  }
  int64_t P() const { return Ho * Wo; }
  // One output pixel per image, and it sees the input's only pixel (a linear layer; a 1x1
  // convolution without padding on 1x1 images): the NCHW and channels-last layouts are then the
  // same, and a patch-norm window sum has one term.
  bool one_pixel() const { return H == 1 && W == 1 && kh == 1 && kw == 1 && ph == 0 && pw == 0; }
};

// Forward epilogue over the raw map l: y, and (save) lmax / idx, and root unless b == 1.
template <class T>
void bcos_forward(const BcosGeom& g, double b, double eps_in, double eps_out, const T* x, const T* l,
                  const T* ws, T* y, T* lmax, uint8_t* idx, T* root, bool save, bool nhwc, int nthreads);

// The same from x and the raw weight as one direct convolution, input planes in chunks of at most
// chunk_bytes when padded. false (nothing written): column stride > 1 or M > 3.
template <class T>
bool bcos_forward_direct(const BcosGeom& g, double b, double eps_in, double eps_out, const T* x,
                         const T* w, const T* ws, T* y, T* lmax, uint8_t* idx, T* root, bool save,
                         int64_t chunk_bytes, int nthreads);

// The same for a linear layer (csrc/cpu/bcos_linear.h): x W^T by a register-blocked GEMM tile,
// then the epilogue, in one call. false (nothing written) where g is not a linear layer.
template <class T>
bool bcos_linear_forward(const BcosGeom& g, double b, double eps_in, double eps_out, const T* x, const T* w,
                         const T* ws, T* y, T* lmax, uint8_t* idx, T* root, bool save, int nthreads);

// Backward epilogue: gl [N, O*M, P] and, when need_q, q [N, G, P] (zero when explain or b == 1).
template <class T>
void bcos_backward_epilogue(const BcosGeom& g, double b, double eps_out, const T* gy, const T* lmax,
                            const uint8_t* idx, const T* root, const T* ws, T* gl, T* q, bool explain,
                            bool need_q, bool nhwc, int nthreads);

// gx = gsrc + x * box-sum^T(q) (gsrc may be gx).
template <class T>
void bcos_backward_norm(const BcosGeom& g, const T* x, const T* q, const T* gsrc, T* gx, bool nhwc, int nthreads);

// ws (R,) = 1 / ||w row|| of the weight w (R, K).
template <class T>
void bcos_weight_scale(const T* w, T* ws, int64_t R, int64_t K, int nthreads);

// g = g - w <g, w> / <w, w> per row, in place; w, g (R, K). transposed_rows = A > 0: each row of g
// holds the transpose of w's row read as an A x K/A matrix (and gets the result in w's order).
template <class T>
void bcos_weight_grad(const T* w, T* g, int64_t R, int64_t K, int64_t transposed_rows, int nthreads);

// Weight gradient of the raw linear map, gl [N, O*M, P] and x -> gw [O*M, C/G, kh, kw].
template <class T>
void bcos_weight_grad_deterministic(const BcosGeom& g, const T* gl, const T* x, T* gw, int nthreads);

}  // namespace cpu
}  // namespace rbfkern
