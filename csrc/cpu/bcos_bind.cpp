// pybind11 bindings of the B-cos CPU kernels (csrc/cpu/bcos.h), registered through
// csrc/registry.h. Buffers are contiguous numpy views of torch tensors allocated in Python;
// every size is checked against the geometry here, once, before the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/bcos.h"
#include "registry.h"

namespace py = pybind11;

namespace rbfkern {

namespace {

struct Sizes {
  int64_t x, l, out, norm, ws, w;  // ws: one per raw channel; w: the weight [O*M, C/G, kh, kw]
};

Sizes check_geom(const std::vector<int64_t>& g) {
  if (g.size() != 17) throw std::invalid_argument("bcos: geometry must have 17 entries");
  for (size_t i = 0; i < 17; ++i) {
    const bool may_be_zero = i == 0 || i == 13 || i == 14;  // N, padding
    if (g[i] < 0 || (!may_be_zero && g[i] == 0))
      throw std::invalid_argument("bcos: invalid geometry entry " + std::to_string(i));
  }
  const int64_t N = g[0], C = g[1], H = g[2], W = g[3], G = g[4], O = g[5], M = g[6];
  if (C % G != 0 || O % G != 0) throw std::invalid_argument("bcos: groups must divide C and O");
  if (M > 255) throw std::invalid_argument("bcos: max_out must be <= 255");
  const int64_t P = g[7] * g[8];
  return {N * C * H * W, N * O * M * P, N * O * P, N * G * P, O * M, O * M * (C / G) * g[9] * g[10]};
}

template <typename T>
T* ptr(py::array& a, int64_t want, const char* name) {
  if (!py::isinstance<py::array_t<T>>(a) || !(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string("bcos: ") + name + " has the wrong dtype or is not contiguous");
  if (a.size() != want)
    throw std::invalid_argument(std::string("bcos: ") + name + " has " + std::to_string(a.size()) +
                                " elements, expected " + std::to_string(want));
  return static_cast<T*>(a.mutable_data());
}

template <typename T>
T* opt_ptr(py::object o, int64_t want, const char* name) {
  if (o.is_none()) return nullptr;
  py::array a = o.cast<py::array>();
  return ptr<T>(a, want, name);
}

// The forward's outputs: y, and lmax / idx / root (root only for b != 1) when save.
template <typename T>
struct FwdOut {
  T* y;
  T* lmax = nullptr;
  uint8_t* idx = nullptr;
  T* root = nullptr;
  FwdOut(const Sizes& s, double b, py::array y_, py::object lmax_, py::object idx_, py::object root_, bool save)
      : y(ptr<T>(y_, s.out, "y")) {
    if (!save) return;
    lmax = opt_ptr<T>(lmax_, s.out, "lmax");
    idx = opt_ptr<uint8_t>(idx_, s.out, "idx");
    root = b != 1.0 ? opt_ptr<T>(root_, s.norm, "root") : nullptr;
    if (lmax == nullptr || idx == nullptr || (b != 1.0 && root == nullptr))
      throw std::invalid_argument("bcos: save=True needs lmax, idx and root");
  }
};

template <typename T>
void fwd_t(const std::vector<int64_t>& g, double b, double ei, double eo, py::array x, py::array l,
           py::array ws, py::array y, py::object lmax, py::object idx, py::object root, bool save, int nt) {
  const Sizes s = check_geom(g);
  const T* xp = ptr<T>(x, s.x, "x");
  const T* lp = ptr<T>(l, s.l, "l");
  const T* wsp = ptr<T>(ws, s.ws, "weight_scale");
  const FwdOut<T> o(s, b, y, lmax, idx, root, save);
  py::gil_scoped_release nogil;
  if constexpr (sizeof(T) == 4)
    cpu::bcos_forward<float>(cpu::BcosGeom::from_list(g.data()), b, ei, eo, xp, lp, wsp, o.y, o.lmax, o.idx, o.root, save, nt);
  else
    cpu::bcos_forward<double>(cpu::BcosGeom::from_list(g.data()), b, ei, eo, xp, lp, wsp, o.y, o.lmax, o.idx, o.root, save, nt);
}

// The direct-convolution forward (csrc/cpu/bcos_direct.h): the raw weight w instead of the map l.
template <typename T>
bool direct_t(const std::vector<int64_t>& g, double b, double ei, double eo, py::array x, py::array w,
              py::array ws, py::array y, py::object lmax, py::object idx, py::object root, bool save,
              int64_t chunk_bytes, int nt) {
  const Sizes s = check_geom(g);
  const T* xp = ptr<T>(x, s.x, "x");
  const T* wp = ptr<T>(w, s.w, "weight");
  const T* wsp = ptr<T>(ws, s.ws, "weight_scale");
  const FwdOut<T> o(s, b, y, lmax, idx, root, save);
  py::gil_scoped_release nogil;
  if constexpr (sizeof(T) == 4)
    return cpu::bcos_forward_direct<float>(cpu::BcosGeom::from_list(g.data()), b, ei, eo, xp, wp, wsp, o.y, o.lmax, o.idx, o.root, save, chunk_bytes, nt);
  else
    return cpu::bcos_forward_direct<double>(cpu::BcosGeom::from_list(g.data()), b, ei, eo, xp, wp, wsp, o.y, o.lmax, o.idx, o.root, save, chunk_bytes, nt);
}

template <typename T>
void bwd_t(const std::vector<int64_t>& g, double b, double eo, py::array gy, py::array lmax,
           py::array idx, py::object root, py::array ws, py::array gl, py::object q, bool explain, int nt) {
  const Sizes s = check_geom(g);
  const T* gyp = ptr<T>(gy, s.out, "grad_y");
  const T* mp = ptr<T>(lmax, s.out, "lmax");
  const uint8_t* ip = ptr<uint8_t>(idx, s.out, "idx");
  const T* rp = b != 1.0 ? opt_ptr<T>(root, s.norm, "root") : nullptr;
  if (b != 1.0 && rp == nullptr) throw std::invalid_argument("bcos: root is needed for b != 1");
  const T* wsp = ptr<T>(ws, s.ws, "weight_scale");
  T* glp = ptr<T>(gl, s.l, "grad_l");
  T* qp = opt_ptr<T>(q, s.norm, "q");
  py::gil_scoped_release nogil;
  if constexpr (sizeof(T) == 4)
    cpu::bcos_backward_epilogue<float>(cpu::BcosGeom::from_list(g.data()), b, eo, gyp, mp, ip, rp, wsp, glp, qp, explain, qp != nullptr, nt);
  else
    cpu::bcos_backward_epilogue<double>(cpu::BcosGeom::from_list(g.data()), b, eo, gyp, mp, ip, rp, wsp, glp, qp, explain, qp != nullptr, nt);
}

template <typename T>
void norm_t(const std::vector<int64_t>& g, py::array x, py::array q, py::array gsrc, py::array gx, int nt) {
  const Sizes s = check_geom(g);
  const T* xp = ptr<T>(x, s.x, "x");
  const T* qp = ptr<T>(q, s.norm, "q");
  const T* sp = ptr<T>(gsrc, s.x, "grad_x_in");
  T* gp = ptr<T>(gx, s.x, "grad_x");
  py::gil_scoped_release nogil;
  if constexpr (sizeof(T) == 4)
    cpu::bcos_backward_norm<float>(cpu::BcosGeom::from_list(g.data()), xp, qp, sp, gp, nt);
  else
    cpu::bcos_backward_norm<double>(cpu::BcosGeom::from_list(g.data()), xp, qp, sp, gp, nt);
}

// Weight rows: w, g, out (R, K) contiguous, same dtype; out (R,) for the scales.
template <typename T>
void weight_t(py::array w, py::object g, py::array out) {
  if (w.ndim() < 1) throw std::invalid_argument("bcos: weight must be at least 1-D");
  const int64_t R = w.shape(0), K = R ? static_cast<int64_t>(w.size()) / R : 0;
  const T* wp = ptr<T>(w, R * K, "weight");
  const T* gp = opt_ptr<T>(g, R * K, "grad");
  T* op = ptr<T>(out, gp ? R * K : R, "out");
  py::gil_scoped_release nogil;
  if constexpr (sizeof(T) == 4) {
    if (gp) cpu::bcos_weight_grad<float>(wp, gp, op, R, K); else cpu::bcos_weight_scale<float>(wp, op, R, K);
  } else {
    if (gp) cpu::bcos_weight_grad<double>(wp, gp, op, R, K); else cpu::bcos_weight_scale<double>(wp, op, R, K);
  }
}

template <typename T>
void wgrad_det_t(const std::vector<int64_t>& g, py::array gl, py::array x, py::array gw, int nt) {
  const Sizes s = check_geom(g);
  const T* glp = ptr<T>(gl, s.l, "grad_l");
  const T* xp = ptr<T>(x, s.x, "x");
  T* gwp = ptr<T>(gw, s.w, "grad_weight");
  py::gil_scoped_release nogil;
  if constexpr (sizeof(T) == 4)
    cpu::bcos_weight_grad_deterministic<float>(cpu::BcosGeom::from_list(g.data()), glp, xp, gwp, nt);
  else
    cpu::bcos_weight_grad_deterministic<double>(cpu::BcosGeom::from_list(g.data()), glp, xp, gwp, nt);
}

bool is_f64(const py::array& a) { return a.dtype().is(py::dtype::of<double>()); }

void bind(py::module_& m) {
  m.def(
      "bcos_forward",
      [](const std::vector<int64_t>& g, double b, double ei, double eo, py::array x, py::array l,
         py::array ws, py::array y, py::object lmax, py::object idx, py::object root, bool save, int nt) {
        if (is_f64(x)) fwd_t<double>(g, b, ei, eo, x, l, ws, y, lmax, idx, root, save, nt);
        else fwd_t<float>(g, b, ei, eo, x, l, ws, y, lmax, idx, root, save, nt);
      },
      "B-cos epilogue forward: weight scale + MaxOut + patch norm + power (y, and lmax/idx/root when save)");
  m.def(
      "bcos_forward_direct",
      [](const std::vector<int64_t>& g, double b, double ei, double eo, py::array x, py::array w,
         py::array ws, py::array y, py::object lmax, py::object idx, py::object root, bool save,
         int64_t chunk_bytes, int nt) {
        return is_f64(x) ? direct_t<double>(g, b, ei, eo, x, w, ws, y, lmax, idx, root, save, chunk_bytes, nt)
                         : direct_t<float>(g, b, ei, eo, x, w, ws, y, lmax, idx, root, save, chunk_bytes, nt);
      },
      "B-cos conv forward as one direct convolution with the fused epilogue (column stride 1, max_out <= 3), "
      "planes in chunks of at most chunk_bytes of padded input; False where it does not apply");
  m.def(
      "bcos_backward_epilogue",
      [](const std::vector<int64_t>& g, double b, double eo, py::array gy, py::array lmax,
         py::array idx, py::object root, py::array ws, py::array gl, py::object q, bool explain, int nt) {
        if (is_f64(gy)) bwd_t<double>(g, b, eo, gy, lmax, idx, root, ws, gl, q, explain, nt);
        else bwd_t<float>(g, b, eo, gy, lmax, idx, root, ws, gl, q, explain, nt);
      },
      "B-cos epilogue backward: grad of the raw-weight conv output and the patch-norm gradient q");
  m.def(
      "bcos_backward_norm",
      [](const std::vector<int64_t>& g, py::array x, py::array q, py::array gsrc, py::array gx, int nt) {
        if (is_f64(x)) norm_t<double>(g, x, q, gsrc, gx, nt);
        else norm_t<float>(g, x, q, gsrc, gx, nt);
      },
      "gx = gsrc + x * box-sum^T(q): the input gradient through the patch norm (gsrc may be gx)");
  m.def(
      "bcos_weight",
      [](py::array w, py::object g, py::array out) {
        if (is_f64(w)) weight_t<double>(w, g, out);
        else weight_t<float>(w, g, out);
      },
      "out (R,) = 1 / ||W||_row (g None), or out = g - W <g, W> / <W, W> (g: the raw map's weight gradient)");
  m.def(
      "bcos_weight_grad_deterministic",
      [](const std::vector<int64_t>& g, py::array gl, py::array x, py::array gw, int nt) {
        if (is_f64(x)) wgrad_det_t<double>(g, gl, x, gw, nt);
        else wgrad_det_t<float>(g, gl, x, gw, nt);
      },
      "Weight gradient of the linear map (gl [N, O*M, P], x) -> gw [O*M, C/G, kh, kw], summed in an order "
      "independent of the thread count");
}

rbfkern::Binder reg(bind);

}  // namespace
}  // namespace rbfkern
