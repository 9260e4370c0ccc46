// pybind11 bindings of the B-cos CPU kernels (csrc/cpu/bcos.h), registered through
// csrc/registry.h. Buffers are contiguous numpy views of torch tensors allocated in Python; each
// is checked once against the geometry (csrc/bind_args.h), then the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "bind_args.h"
#include "cpu/bcos.h"
#include "registry.h"

namespace py = pybind11;

namespace rbfkern {
namespace {

using namespace bind;  // NOLINT(build/namespaces): Args, Shape, cptr, mptr
using cpu::BcosGeom;

// The geometry and the element count of every buffer it implies.
struct Geo {
  BcosGeom g;
  int64_t x, l, out, norm, ws, w;  // ws: one per raw channel; w: the weight [O*M, C/G, kh, kw]
};

Geo geometry(const Args& a, const std::vector<int64_t>& v) {
  a.require(v.size() == (size_t)BcosGeom::kLen,
            "geometry must have " + std::to_string(BcosGeom::kLen) + " entries, got " + std::to_string(v.size()));
  for (size_t i = 0; i < v.size(); ++i) {
    const bool may_be_zero = i == 0 || i == 13 || i == 14;  // N, padding
    a.require(v[i] >= 0 && (may_be_zero || v[i] != 0), "invalid geometry entry " + std::to_string(i));
  }
  const BcosGeom g = BcosGeom::from_list(v.data());
  a.require(g.C % g.G == 0 && g.O % g.G == 0, "groups must divide C and O");
  a.require(g.M <= 255, "max_out must be <= 255");
  const int64_t P = g.P();
  return {g, g.N * g.C * g.H * g.W, g.N * g.O * g.M * P, g.N * g.O * P, g.N * g.G * P, g.O * g.M,
          g.O * g.M * (g.C / g.G) * g.kh * g.kw};
}

// The forward's buffers, checked: x, the source (the raw map l, or the raw weight for the direct
// forward), ws, y, and lmax / idx (and root unless b == 1) when save.
struct Fwd {
  Geo s;
  py::object x, src, ws, y, lmax = py::none(), idx = py::none(), root = py::none();

  template <class T>
  struct Ptrs {
    const T *x, *src, *ws;
    T *y, *lmax, *root;
    uint8_t* idx;
  };
  template <class T>
  Ptrs<T> ptrs() const {
    return {cptr<T>(x), cptr<T>(src), cptr<T>(ws), mptr<T>(y), mptr<T>(lmax), mptr<T>(root), mptr<uint8_t>(idx)};
  }
};

Fwd check_forward(Args& a, const std::vector<int64_t>& gv, double b, py::handle x, py::handle src, bool direct,
                  py::handle ws, py::handle y, py::handle lmax, py::handle idx, py::handle root, bool save) {
  Fwd f{geometry(a, gv), {}, {}, {}, {}};
  f.x = a.floats_n(x, "x", f.s.x);
  f.src = direct ? a.floats_n(src, "weight", f.s.w) : a.floats_n(src, "l", f.s.l);
  f.ws = a.floats_n(ws, "weight_scale", f.s.ws);
  f.y = a.floats_n(y, "y", f.s.out, true);
  if (!save) return f;
  a.require(!lmax.is_none() && !idx.is_none() && (b == 1.0 || !root.is_none()), "save=True needs lmax, idx and root");
  f.lmax = a.floats_n(lmax, "lmax", f.s.out, true);
  f.idx = a.typed_n<uint8_t>(idx, "idx", f.s.out, true);
  if (b != 1.0) f.root = a.floats_n(root, "root", f.s.norm, true);
  return f;
}

void forward(const std::vector<int64_t>& gv, double b, double ei, double eo, py::array x, py::array l, py::array ws,
             py::array y, py::object lmax, py::object idx, py::object root, bool save, bool nhwc, int nt) {
  Args a("bcos_forward");
  const Fwd f = check_forward(a, gv, b, x, l, false, ws, y, lmax, idx, root, save);
  a.by_dtype([&](auto t) {
    const auto p = f.ptrs<decltype(t)>();
    py::gil_scoped_release nogil;
    cpu::bcos_forward(f.s.g, b, ei, eo, p.x, p.src, p.ws, p.y, p.lmax, p.idx, p.root, save, nhwc, nt);
  });
}

// A forward from the raw weight w instead of the map l: checked, then run(geometry, pointers)
// without the GIL; its result (false: the kernel did not apply, nothing written).
template <class Run>
bool forward_from_weight(const char* name, const std::vector<int64_t>& gv, double b, py::array x, py::array w,
                         py::array ws, py::array y, py::object lmax, py::object idx, py::object root, bool save,
                         Run&& run) {
  Args a(name);
  const Fwd f = check_forward(a, gv, b, x, w, true, ws, y, lmax, idx, root, save);
  bool done = false;
  a.by_dtype([&](auto t) {
    const auto p = f.ptrs<decltype(t)>();
    py::gil_scoped_release nogil;
    done = run(f.s.g, p);
  });
  return done;
}

// The direct-convolution forward (csrc/cpu/bcos_direct.h).
bool forward_direct(const std::vector<int64_t>& gv, double b, double ei, double eo, py::array x, py::array w,
                    py::array ws, py::array y, py::object lmax, py::object idx, py::object root, bool save,
                    int64_t chunk_bytes, int nt) {
  return forward_from_weight("bcos_forward_direct", gv, b, x, w, ws, y, lmax, idx, root, save,
                             [&](const cpu::BcosGeom& g, const auto& p) {
                               return cpu::bcos_forward_direct(g, b, ei, eo, p.x, p.src, p.ws, p.y, p.lmax, p.idx,
                                                               p.root, save, chunk_bytes, nt);
                             });
}

// The linear forward for a few outputs (csrc/cpu/bcos_linear.h).
bool linear_forward(const std::vector<int64_t>& gv, double b, double ei, double eo, py::array x, py::array w,
                    py::array ws, py::array y, py::object lmax, py::object idx, py::object root, bool save, int nt) {
  return forward_from_weight("bcos_linear_forward", gv, b, x, w, ws, y, lmax, idx, root, save,
                             [&](const cpu::BcosGeom& g, const auto& p) {
                               return cpu::bcos_linear_forward(g, b, ei, eo, p.x, p.src, p.ws, p.y, p.lmax, p.idx,
                                                               p.root, save, nt);
                             });
}

void backward_epilogue(const std::vector<int64_t>& gv, double b, double eo, py::array gy, py::array lmax,
                       py::array idx, py::object root, py::array ws, py::array gl, py::object q, bool explain,
                       bool nhwc, int nt) {
  Args a("bcos_backward_epilogue");
  const Geo s = geometry(a, gv);
  a.floats_n(gy, "grad_y", s.out);
  a.floats_n(lmax, "lmax", s.out);
  a.typed_n<uint8_t>(idx, "idx", s.out);
  a.require(b == 1.0 || !root.is_none(), "root is needed for b != 1");
  const py::object r = b != 1.0 ? a.floats_n_opt(root, "root", s.norm) : py::object(py::none());
  a.floats_n(ws, "weight_scale", s.ws);
  a.floats_n(gl, "grad_l", s.l, true);
  const py::object qo = a.floats_n_opt(q, "q", s.norm, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const T *gyp = cptr<T>(gy), *mp = cptr<T>(lmax), *rp = cptr<T>(r), *wsp = cptr<T>(ws);
    const uint8_t* ip = cptr<uint8_t>(idx);
    T *glp = mptr<T>(gl), *qp = mptr<T>(qo);
    py::gil_scoped_release nogil;
    cpu::bcos_backward_epilogue<T>(s.g, b, eo, gyp, mp, ip, rp, wsp, glp, qp, explain, qp != nullptr, nhwc,
                                   nt);
  });
}

void backward_norm(const std::vector<int64_t>& gv, py::array x, py::array q, py::array gsrc, py::array gx, bool nhwc,
                   int nt) {
  Args a("bcos_backward_norm");
  const Geo s = geometry(a, gv);
  a.floats_n(x, "x", s.x);
  a.floats_n(q, "q", s.norm);
  a.floats_n(gsrc, "grad_x_in", s.x);
  a.floats_n(gx, "grad_x", s.x, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const T *xp = cptr<T>(x), *qp = cptr<T>(q), *sp = cptr<T>(gsrc);
    T* gp = mptr<T>(gx);
    py::gil_scoped_release nogil;
    cpu::bcos_backward_norm<T>(s.g, xp, qp, sp, gp, nhwc, nt);
  });
}

// The weight's rows (R, K), contiguous, checked: {R, K}.
std::pair<int64_t, int64_t> weight_rows(Args& a, const py::array& w) {
  a.require(w.ndim() >= 1, "argument 'weight' must be at least 1-D");
  const int64_t R = w.shape(0), K = R ? static_cast<int64_t>(w.size()) / R : 0;
  a.floats_n(w, "weight", R * K);
  return {R, K};
}

// Weight rows (R, K) contiguous; out (R,) the scales.
void weight_scale(py::array w, py::array out, int nt) {
  Args a("bcos_weight_scale");
  const auto [R, K] = weight_rows(a, w);
  a.floats_n(out, "out", R, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const T* wp = cptr<T>(w);
    T* op = mptr<T>(out);
    py::gil_scoped_release nogil;
    cpu::bcos_weight_scale<T>(wp, op, R, K, nt);
  });
}

// Weight rows w (R, K) and g (R, K), the raw map's weight gradient, overwritten with grad W;
// transposed_rows: 0, or A > 0 dividing K (g's rows hold the transposes of w's A x K/A rows).
void weight_grad(py::array w, py::array g, int64_t transposed_rows, int nt) {
  Args a("bcos_weight_grad");
  const auto [R, K] = weight_rows(a, w);
  a.floats_n(g, "grad", R * K, true);
  a.require(transposed_rows >= 0 && (transposed_rows == 0 || K % transposed_rows == 0),
            "argument 'transposed_rows' must be 0 or divide the row length " + std::to_string(K) + ", got " +
                std::to_string(transposed_rows));
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const T* wp = cptr<T>(w);
    T* gp = mptr<T>(g);
    py::gil_scoped_release nogil;
    cpu::bcos_weight_grad<T>(wp, gp, R, K, transposed_rows, nt);
  });
}

void weight_grad_deterministic(const std::vector<int64_t>& gv, py::array gl, py::array x, py::array gw, int nt) {
  Args a("bcos_weight_grad_deterministic");
  const Geo s = geometry(a, gv);
  a.floats_n(gl, "grad_l", s.l);
  a.floats_n(x, "x", s.x);
  a.floats_n(gw, "grad_weight", s.w, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const T *glp = cptr<T>(gl), *xp = cptr<T>(x);
    T* gwp = mptr<T>(gw);
    py::gil_scoped_release nogil;
    cpu::bcos_weight_grad_deterministic<T>(s.g, glp, xp, gwp, nt);
  });
}

void bind_bcos(py::module_& m) {
  m.def("bcos_forward", &forward,
        "B-cos epilogue forward: weight scale + MaxOut + patch norm + power (y, and lmax/idx/root when save); "
        "nhwc: channels-last buffers (csrc/cpu/bcos.h)");
  m.def("bcos_forward_direct", &forward_direct,
        "B-cos conv forward as one direct convolution with the fused epilogue (column stride 1, max_out <= 3), "
        "planes in chunks of at most chunk_bytes of padded input; False where it does not apply");
  m.def("bcos_linear_forward", &linear_forward,
        "B-cos linear forward (x W^T by a register-blocked GEMM tile, then the fused epilogue) in one call; "
        "False where the geometry is not a linear layer");
  m.def("bcos_backward_epilogue", &backward_epilogue,
        "B-cos epilogue backward: grad of the raw-weight conv output and the patch-norm gradient q");
  m.def("bcos_backward_norm", &backward_norm,
        "gx = gsrc + x * box-sum^T(q): the input gradient through the patch norm (gsrc may be gx)");
  m.def("bcos_weight_scale", &weight_scale, "out (R,) = 1 / ||W||_row");
  m.def("bcos_weight_grad", &weight_grad,
        "g = g - W <g, W> / <W, W> per row, in place (g: the raw map's weight gradient; transposed_rows A > 0: "
        "g's rows are the transposes of W's rows read as A x K/A)");
  m.def("bcos_weight_grad_deterministic", &weight_grad_deterministic,
        "Weight gradient of the linear map (gl [N, O*M, P], x) -> gw [O*M, C/G, kh, kw], summed in an order "
        "independent of the thread count");
}

Binder reg(bind_bcos);

}  // namespace
}  // namespace rbfkern
