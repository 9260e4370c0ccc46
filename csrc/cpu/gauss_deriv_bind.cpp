// pybind11 bindings of the Gaussian-derivative basis convolution kernels (csrc/cpu/gauss_deriv.h),
// registered through csrc/registry.h. Buffers are numpy views of contiguous torch tensors (outputs
// allocated by torch); each is checked once (csrc/bind_args.h), then the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind_args.h"
#include "cpu/gauss_deriv.h"
#include "registry.h"

namespace py = pybind11;

namespace rbfkern {
namespace {

using namespace bind;  // NOLINT(build/namespaces): Args, Shape, cptr, mptr

// The problem's sizes, from x (rank 4: 2D with pq (M, 2); rank 5: 3D with pq (M, 3) rows
// (p, q, t)), taps and pq; x, alpha, taps and pq checked.
struct Checked {
  bool three;
  cpu::GdSizes sizes;
  Shape x_shape, out_shape;
};

Checked check_problem(Args& a, py::handle x, py::handle A, py::handle f, py::handle pq, int64_t stride,
                      int64_t pad) {
  const bool three = py::isinstance<py::array>(x) && py::reinterpret_borrow<py::array>(x).ndim() == 5;
  const py::array xa = a.ranked(x, "x", three ? 5 : 4);
  const py::array fa = a.ranked(f, "taps", 3);
  const py::array Aa = a.ranked(A, "alpha", 2);
  const py::array qa = a.ranked(pq, "pq", 2);
  Checked c{three, {}, {}, {}};
  cpu::GdSizes& p = c.sizes;
  const int64_t o = three ? 1 : 0;
  p.N = xa.shape(0), p.Ci = xa.shape(1), p.H = xa.shape(2 + o), p.W = xa.shape(3 + o);
  if (three) p.D = xa.shape(2);
  p.S = fa.shape(0), p.O1 = fa.shape(1), p.K = fa.shape(2), p.M = qa.shape(0);
  p.Co = Aa.shape(0);
  p.stride = stride, p.pad = pad;
  a.require(stride >= 1 && pad >= 0 && p.K >= 1 && p.K % 2 == 1, "bad stride, padding or kernel size");
  a.require(p.H + 2 * pad >= p.K && p.W + 2 * pad >= p.K && (!three || p.D + 2 * pad >= p.K),
            "kernel larger than the padded input");
  p.Ho = (p.H + 2 * pad - p.K) / stride + 1;
  p.Wo = (p.W + 2 * pad - p.K) / stride + 1;
  if (three) p.Do = (p.D + 2 * pad - p.K) / stride + 1;
  c.x_shape = three ? Shape{p.N, p.Ci, p.D, p.H, p.W} : Shape{p.N, p.Ci, p.H, p.W};
  c.out_shape = three ? Shape{p.N, p.Co, p.Do, p.Ho, p.Wo} : Shape{p.N, p.Co, p.Ho, p.Wo};
  a.floats(x, "x", c.x_shape);
  a.floats(A, "alpha", {p.Co, p.Ci * p.S * p.M});
  a.floats(f, "taps", {p.S, p.O1, p.K});
  const int64_t w = three ? 3 : 2;
  a.typed<int64_t>(pq, "pq", {p.M, w});
  const int64_t* q = static_cast<const int64_t*>(qa.data());
  for (int64_t b = 0; b < w * p.M; ++b) a.require(q[b] >= 0 && q[b] < p.O1, "pq entry out of range");
  return c;
}

template <class T>
cpu::GdProblem<T> problem(const Checked& c, py::handle x, py::handle A, py::handle f, py::handle pq) {
  cpu::GdProblem<T> p;
  static_cast<cpu::GdSizes&>(p) = c.sizes;
  p.x = cptr<T>(py::reinterpret_borrow<py::object>(x));
  p.A = cptr<T>(py::reinterpret_borrow<py::object>(A));
  p.f = cptr<T>(py::reinterpret_borrow<py::object>(f));
  p.pq = cptr<int64_t>(py::reinterpret_borrow<py::object>(pq));
  return p;
}

void forward(const py::array& x, const py::array& A, const py::array& f, const py::array& pq, int64_t stride,
             int64_t pad, const py::object& out, int nthreads) {
  Args a("gauss_deriv2d_forward");
  const Checked c = check_problem(a, x, A, f, pq, stride, pad);
  a.floats(out, "out", c.out_shape, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const auto p = problem<T>(c, x, A, f, pq);
    T* o = mptr<T>(out);
    py::gil_scoped_release nogil;
    if (c.three) cpu::gauss_deriv3d_forward<T>(p, o, nthreads);
    else cpu::gauss_deriv2d_forward<T>(p, o, nthreads);
  });
}

void backward(const py::array& gout, const py::array& x, const py::array& A, const py::array& f, const py::array& pq,
              int64_t stride, int64_t pad, const py::object& gx, const py::object& galpha, const py::object& gf,
              int nthreads) {
  Args a("gauss_deriv2d_backward");
  const Checked c = check_problem(a, x, A, f, pq, stride, pad);
  const cpu::GdSizes& s = c.sizes;
  a.floats(gout, "grad_out", c.out_shape);
  const py::object gxo = a.floats_opt(gx, "gx", c.x_shape, true);
  const py::object gao = a.floats_opt(galpha, "galpha", {s.Co, s.Ci * s.S * s.M}, true);
  const py::object gfo = a.floats_opt(gf, "gtaps", {s.S, s.O1, s.K}, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const auto p = problem<T>(c, x, A, f, pq);
    const T* go = cptr<T>(gout);
    T *gxp = mptr<T>(gxo), *gap = mptr<T>(gao), *gfp = mptr<T>(gfo);
    py::gil_scoped_release nogil;
    if (c.three) cpu::gauss_deriv3d_backward<T>(p, go, gxp, gap, gfp, nthreads);
    else cpu::gauss_deriv2d_backward<T>(p, go, gxp, gap, gfp, nthreads);
  });
}

void bind_gauss_deriv(py::module_& m) {
  m.def("gauss_deriv2d_forward", &forward, py::arg("x"), py::arg("alpha"), py::arg("taps"), py::arg("pq"),
        py::arg("stride"), py::arg("pad"), py::arg("out"), py::arg("nthreads"),
        "Separable fused Gaussian-derivative basis convolution (flipped taps), writes out (N, Co, Ho, Wo);\n"
        "x of rank 5 with pq (M, 3) is the 3D op, out (N, Co, Do, Ho, Wo).");
  m.def("gauss_deriv2d_backward", &backward, py::arg("grad_out"), py::arg("x"), py::arg("alpha"), py::arg("taps"),
        py::arg("pq"), py::arg("stride"), py::arg("pad"), py::arg("gx"), py::arg("galpha"), py::arg("gtaps"),
        py::arg("nthreads"), "Fused backward: gradients w.r.t. x, alpha and the flipped taps (None = not needed).");
}

Binder reg(bind_gauss_deriv);

}  // namespace
}  // namespace rbfkern
