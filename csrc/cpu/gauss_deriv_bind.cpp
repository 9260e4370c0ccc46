// pybind11 bindings of the Gaussian-derivative basis convolution kernels (csrc/cpu/gauss_deriv.cpp).
// Registered through csrc/registry.h. Buffers are numpy views of contiguous torch tensors
// (outputs allocated by torch); shapes are checked once here, then the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cpu/gauss_deriv.h"
#include "registry.h"

namespace py = pybind11;

namespace rbfkern {

namespace {

void expect(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error("gauss_deriv2d: " + msg);
}

void expect_shape(const py::array& a, std::initializer_list<int64_t> shape, const char* name) {
  expect(a.ndim() == (py::ssize_t)shape.size(), std::string(name) + " has the wrong rank");
  int d = 0;
  for (int64_t s : shape) expect(a.shape(d++) == s, std::string(name) + " has the wrong shape");
  expect((a.flags() & py::array::c_style) != 0, std::string(name) + " must be C-contiguous");
}

// 2D (x rank 4, pq (M, 2)) or 3D (x rank 5, pq (M, 3) rows (p, q, t)).
template <class T>
cpu::GdProblem<T> problem(const py::array& x, const py::array& A, const py::array& f,
                          const py::array& pq, int64_t stride, int64_t pad) {
  cpu::GdProblem<T> p;
  const bool three = x.ndim() == 5;
  const int64_t w = three ? 3 : 2;
  expect((x.ndim() == 4 || three) && f.ndim() == 3 && A.ndim() == 2 && pq.ndim() == 2, "bad ranks");
  const int64_t o = three ? 1 : 0;
  p.N = x.shape(0), p.Ci = x.shape(1), p.H = x.shape(2 + o), p.W = x.shape(3 + o);
  if (three) p.D = x.shape(2);
  p.S = f.shape(0), p.O1 = f.shape(1), p.K = f.shape(2), p.M = pq.shape(0);
  p.Co = A.shape(0);
  p.stride = stride, p.pad = pad;
  expect(stride >= 1 && pad >= 0 && p.K >= 1 && p.K % 2 == 1, "bad stride, padding or kernel size");
  expect(p.H + 2 * pad >= p.K && p.W + 2 * pad >= p.K && p.D + 2 * (three ? pad : p.K) >= p.K,
         "kernel larger than the padded input");
  p.Ho = (p.H + 2 * pad - p.K) / stride + 1;
  p.Wo = (p.W + 2 * pad - p.K) / stride + 1;
  if (three) {
    p.Do = (p.D + 2 * pad - p.K) / stride + 1;
    expect_shape(x, {p.N, p.Ci, p.D, p.H, p.W}, "x");
  } else {
    expect_shape(x, {p.N, p.Ci, p.H, p.W}, "x");
  }
  expect_shape(A, {p.Co, p.Ci * p.S * p.M}, "alpha");
  expect_shape(f, {p.S, p.O1, p.K}, "taps");
  expect_shape(pq, {p.M, w}, "pq");
  expect(pq.dtype().is(py::dtype::of<int64_t>()), "pq must be int64");
  const int64_t* q = static_cast<const int64_t*>(pq.data());
  for (int64_t b = 0; b < w * p.M; ++b) expect(q[b] >= 0 && q[b] < p.O1, "pq entry out of range");
  p.x = static_cast<const T*>(x.data());
  p.A = static_cast<const T*>(A.data());
  p.f = static_cast<const T*>(f.data());
  p.pq = q;
  return p;
}

template <class T>
T* out_ptr(const py::object& o, std::initializer_list<int64_t> shape, const char* name) {
  if (o.is_none()) return nullptr;
  py::array a = py::reinterpret_borrow<py::array>(o);
  expect_shape(a, shape, name);
  expect(a.dtype().is(py::dtype::of<T>()), std::string(name) + " has the wrong dtype");
  expect(a.writeable(), std::string(name) + " must be writeable");
  return static_cast<T*>(a.mutable_data());
}

template <class T>
void forward_t(const py::array& x, const py::array& A, const py::array& f, const py::array& pq, int64_t stride,
               int64_t pad, const py::object& out, int nthreads) {
  auto p = problem<T>(x, A, f, pq, stride, pad);
  const bool three = x.ndim() == 5;
  T* o = three ? out_ptr<T>(out, {p.N, p.Co, p.Do, p.Ho, p.Wo}, "out") : out_ptr<T>(out, {p.N, p.Co, p.Ho, p.Wo}, "out");
  expect(o != nullptr, "out is required");
  py::gil_scoped_release nogil;
  if (three)
    cpu::gauss_deriv3d_forward<T>(p, o, nthreads);
  else
    cpu::gauss_deriv2d_forward<T>(p, o, nthreads);
}

template <class T>
void backward_t(const py::array& gout, const py::array& x, const py::array& A, const py::array& f,
                const py::array& pq, int64_t stride, int64_t pad, const py::object& gx,
                const py::object& galpha, const py::object& gf, int nthreads) {
  auto p = problem<T>(x, A, f, pq, stride, pad);
  const bool three = x.ndim() == 5;
  if (three)
    expect_shape(gout, {p.N, p.Co, p.Do, p.Ho, p.Wo}, "grad_out");
  else
    expect_shape(gout, {p.N, p.Co, p.Ho, p.Wo}, "grad_out");
  expect(gout.dtype().is(py::dtype::of<T>()), "grad_out has the wrong dtype");
  T* gxp = three ? out_ptr<T>(gx, {p.N, p.Ci, p.D, p.H, p.W}, "gx") : out_ptr<T>(gx, {p.N, p.Ci, p.H, p.W}, "gx");
  T* gap = out_ptr<T>(galpha, {p.Co, p.Ci * p.S * p.M}, "galpha");
  T* gfp = out_ptr<T>(gf, {p.S, p.O1, p.K}, "gtaps");
  const T* go = static_cast<const T*>(gout.data());
  py::gil_scoped_release nogil;
  if (three)
    cpu::gauss_deriv3d_backward<T>(p, go, gxp, gap, gfp, nthreads);
  else
    cpu::gauss_deriv2d_backward<T>(p, go, gxp, gap, gfp, nthreads);
}

bool is_f64(const py::array& x) {
  if (x.dtype().is(py::dtype::of<double>())) return true;
  expect(x.dtype().is(py::dtype::of<float>()), "x must be float32 or float64");
  return false;
}

void bind(py::module_& m) {
  m.def(
      "gauss_deriv2d_forward",
      [](const py::array& x, const py::array& A, const py::array& f, const py::array& pq, int64_t stride,
         int64_t pad, const py::object& out, int nthreads) {
        if (is_f64(x)) return forward_t<double>(x, A, f, pq, stride, pad, out, nthreads);
        expect(A.dtype().is(py::dtype::of<float>()) && f.dtype().is(py::dtype::of<float>()), "dtype mismatch");
        forward_t<float>(x, A, f, pq, stride, pad, out, nthreads);
      },
      py::arg("x"), py::arg("alpha"), py::arg("taps"), py::arg("pq"), py::arg("stride"), py::arg("pad"),
      py::arg("out"), py::arg("nthreads"),
      "Separable fused Gaussian-derivative basis convolution (flipped taps), writes out (N, Co, Ho, Wo);\n"
      "x of rank 5 with pq (M, 3) is the 3D op, out (N, Co, Do, Ho, Wo).");
  m.def(
      "gauss_deriv2d_backward",
      [](const py::array& gout, const py::array& x, const py::array& A, const py::array& f, const py::array& pq,
         int64_t stride, int64_t pad, const py::object& gx, const py::object& galpha, const py::object& gf,
         int nthreads) {
        if (is_f64(x)) return backward_t<double>(gout, x, A, f, pq, stride, pad, gx, galpha, gf, nthreads);
        expect(A.dtype().is(py::dtype::of<float>()) && f.dtype().is(py::dtype::of<float>()), "dtype mismatch");
        backward_t<float>(gout, x, A, f, pq, stride, pad, gx, galpha, gf, nthreads);
      },
      py::arg("grad_out"), py::arg("x"), py::arg("alpha"), py::arg("taps"), py::arg("pq"), py::arg("stride"),
      py::arg("pad"), py::arg("gx"), py::arg("galpha"), py::arg("gtaps"), py::arg("nthreads"),
      "Fused backward: gradients w.r.t. x, alpha and the flipped taps (None = not needed).");
}

rbfkern::Binder reg(bind);

}  // namespace
}  // namespace rbfkern
