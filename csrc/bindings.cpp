// pybind11 module rbfkern._C: thin wrappers that check buffers once, release the GIL
// and call the raw-pointer kernels in csrc/cpu/. No libtorch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "cpu/rbf.h"
#include "registry.h"

namespace py = pybind11;

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}

std::vector<int64_t> shape_of(const py::array& a) {
  std::vector<int64_t> s((size_t)a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s[(size_t)i] = (int64_t)a.shape(i);
  return s;
}

// One call's arguments: checks dtype / contiguity / shape against the first array's dtype.
class Checker {
 public:
  explicit Checker(const char* fn) : fn_(fn) {}

  [[noreturn]] void fail(const std::string& msg) const {
    throw py::value_error(std::string(fn_) + ": " + msg);
  }

  // `h` must be a numpy array (not None); returns it after the checks.
  py::array get(py::handle h, const char* name, const std::vector<int64_t>& shape, bool writable) {
    if (h.is_none()) fail(std::string("argument '") + name + "' must be an array, got None");
    if (!py::isinstance<py::array>(h))
      fail(std::string("argument '") + name + "' must be a numpy array, got " +
           std::string(py::str(py::type::handle_of(h))));
    py::array a = py::reinterpret_borrow<py::array>(h);
    if (!dtype_set_) {
      if (a.dtype().is(py::dtype::of<float>())) is_double_ = false;
      else if (a.dtype().is(py::dtype::of<double>())) is_double_ = true;
      else
        fail(std::string("argument '") + name + "' must be float32 or float64, got " +
             std::string(py::str(a.dtype())));
      dtype_set_ = true;
      first_ = name;
    } else {
      const py::dtype want = is_double_ ? py::dtype::of<double>() : py::dtype::of<float>();
      if (!a.dtype().is(want))
        fail(std::string("argument '") + name + "' has dtype " + std::string(py::str(a.dtype())) +
             ", expected " + std::string(py::str(want)) + " (the dtype of '" + first_ + "')");
    }
    const std::vector<int64_t> got = shape_of(a);
    if (got != shape)
      fail(std::string("argument '") + name + "' expected shape " + shape_str(shape) + ", got " +
           shape_str(got));
    if (!(a.flags() & py::array::c_style))
      fail(std::string("argument '") + name + "' must be C-contiguous");
    if (writable && !a.writeable()) fail(std::string("argument '") + name + "' must be writeable");
    return a;
  }

  // Optional array: None -> empty handle.
  py::object get_opt(py::handle h, const char* name, const std::vector<int64_t>& shape, bool writable) {
    if (h.is_none()) return py::none();
    return get(h, name, shape, writable);
  }

  // Rank check before the sizes are known.
  void rank(py::handle h, const char* name, int ndim) const {
    if (!py::isinstance<py::array>(h))
      fail(std::string("argument '") + name + "' must be a numpy array");
    const py::array a = py::reinterpret_borrow<py::array>(h);
    if (a.ndim() != ndim) {
      std::ostringstream o;
      o << "argument '" << name << "' must have " << ndim << " dimensions, got shape " << shape_str(shape_of(a));
      fail(o.str());
    }
  }

  bool is_double() const { return is_double_; }

 private:
  const char* fn_;
  bool dtype_set_ = false, is_double_ = false;
  const char* first_ = "";
};

template <class T>
const T* cptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<const T*>(o.cast<py::array>().data());
}
template <class T>
T* mptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<T*>(o.cast<py::array>().mutable_data());
}

std::vector<int64_t> metric_shape(int metric_kind, bool shared, int64_t C, int64_t D) {
  if (metric_kind == rbfkern::cpu::kMetricDiag) return shared ? std::vector<int64_t>{D} : std::vector<int64_t>{C, D};
  if (metric_kind == rbfkern::cpu::kMetricTril)
    return shared ? std::vector<int64_t>{D, D} : std::vector<int64_t>{C, D, D};
  return {};
}

struct Common {
  int64_t N, C, D;
  py::object x, centers, metric, sigma;
};

Common check_common(Checker& ck, py::handle x, py::handle centers, py::handle metric, int metric_kind,
                    bool metric_shared, py::handle sigma, int kind) {
  if (metric_kind < 0 || metric_kind > 2)
    ck.fail("metric_kind must be 0 (none), 1 (diag) or 2 (tril), got " + std::to_string(metric_kind));
  if (!rbfkern::cpu::rbf_kind_valid(kind)) ck.fail("kind must be in [-1, 7], got " + std::to_string(kind));
  ck.rank(x, "x", 2);
  ck.rank(centers, "centers", 2);
  const py::array xa = py::reinterpret_borrow<py::array>(x);
  const py::array ca = py::reinterpret_borrow<py::array>(centers);
  Common c;
  c.N = (int64_t)xa.shape(0);
  c.D = (int64_t)xa.shape(1);
  c.C = (int64_t)ca.shape(0);
  c.x = ck.get(x, "x", {c.N, c.D}, false);
  c.centers = ck.get(centers, "centers", {c.C, c.D}, false);
  c.metric = metric_kind == rbfkern::cpu::kMetricNone
                 ? py::object(py::none())
                 : py::object(ck.get(metric, "metric", metric_shape(metric_kind, metric_shared, c.C, c.D), false));
  c.sigma = rbfkern::cpu::rbf_kind_uses_sigma(kind) ? py::object(ck.get(sigma, "sigma", {c.C}, false))
                                                    : py::object(py::none());
  return c;
}

template <class T>
rbfkern::cpu::RbfProblem<T> make_problem(const Common& c, int metric_kind, bool metric_shared, int kind,
                                         double shape) {
  rbfkern::cpu::RbfProblem<T> p;
  p.N = c.N;
  p.C = c.C;
  p.D = c.D;
  p.x = cptr<T>(c.x);
  p.centers = cptr<T>(c.centers);
  p.metric = cptr<T>(c.metric);
  p.metric_kind = metric_kind;
  p.metric_shared = metric_shared;
  p.sigma = cptr<T>(c.sigma);
  p.kind = kind;
  p.shape = shape;
  return p;
}

void rbf_forward_py(py::handle x, py::handle centers, py::handle metric, int metric_kind, bool metric_shared,
                    py::handle sigma, int kind, double shape, py::handle act, py::handle r2, int nthreads) {
  Checker ck("rbf_forward");
  const Common c = check_common(ck, x, centers, metric, metric_kind, metric_shared, sigma, kind);
  if (kind == rbfkern::cpu::kKindNone && !act.is_none()) ck.fail("argument 'act' must be None when kind == -1");
  const py::object act_o = ck.get_opt(act, "act", {c.N, c.C}, true);
  const py::object r2_o = ck.get(r2, "r2", {c.N, c.C}, true);
  if (ck.is_double()) {
    const auto p = make_problem<double>(c, metric_kind, metric_shared, kind, shape);
    double* a = mptr<double>(act_o);
    double* r = mptr<double>(r2_o);
    py::gil_scoped_release nogil;
    rbfkern::cpu::rbf_forward<double>(p, a, r, nthreads);
  } else {
    const auto p = make_problem<float>(c, metric_kind, metric_shared, kind, shape);
    float* a = mptr<float>(act_o);
    float* r = mptr<float>(r2_o);
    py::gil_scoped_release nogil;
    rbfkern::cpu::rbf_forward<float>(p, a, r, nthreads);
  }
}

template <class T>
void run_backward(const Common& c, int metric_kind, bool metric_shared, int kind, double shape,
                  const py::object& r2, const py::object& ga, const py::object& gr, const py::object& gx,
                  const py::object& gc, const py::object& gm, const py::object& gs, int nthreads) {
  const auto p = make_problem<T>(c, metric_kind, metric_shared, kind, shape);
  const T *r2p = cptr<T>(r2), *gap = cptr<T>(ga), *grp = cptr<T>(gr);
  T *gxp = mptr<T>(gx), *gcp = mptr<T>(gc), *gmp = mptr<T>(gm), *gsp = mptr<T>(gs);
  py::gil_scoped_release nogil;
  rbfkern::cpu::rbf_backward<T>(p, r2p, gap, grp, gxp, gcp, gmp, gsp, nthreads);
}

void rbf_backward_py(py::handle grad_act, py::handle grad_r2, py::handle x, py::handle centers,
                     py::handle metric, int metric_kind, bool metric_shared, py::handle sigma, py::handle r2,
                     int kind, double shape, py::handle gx, py::handle gc, py::handle gmetric,
                     py::handle gsigma, int nthreads) {
  Checker ck("rbf_backward");
  const Common c = check_common(ck, x, centers, metric, metric_kind, metric_shared, sigma, kind);
  if (kind == rbfkern::cpu::kKindNone && !grad_act.is_none())
    ck.fail("argument 'grad_act' must be None when kind == -1");
  if (metric_kind == rbfkern::cpu::kMetricNone && !gmetric.is_none())
    ck.fail("argument 'gmetric' must be None when metric_kind == 0");
  const py::object r2_o = ck.get(r2, "r2", {c.N, c.C}, false);
  const py::object ga = ck.get_opt(grad_act, "grad_act", {c.N, c.C}, false);
  const py::object gr = ck.get_opt(grad_r2, "grad_r2", {c.N, c.C}, false);
  const py::object gx_o = ck.get_opt(gx, "gx", {c.N, c.D}, true);
  const py::object gc_o = ck.get_opt(gc, "gc", {c.C, c.D}, true);
  const py::object gm_o = ck.get_opt(gmetric, "gmetric", metric_shape(metric_kind, metric_shared, c.C, c.D), true);
  const py::object gs_o = ck.get_opt(gsigma, "gsigma", {c.C}, true);
  if (ck.is_double())
    run_backward<double>(c, metric_kind, metric_shared, kind, shape, r2_o, ga, gr, gx_o, gc_o, gm_o, gs_o,
                         nthreads);
  else
    run_backward<float>(c, metric_kind, metric_shared, kind, shape, r2_o, ga, gr, gx_o, gc_o, gm_o, gs_o,
                        nthreads);
}

}  // namespace

namespace rbfkern {
std::vector<BindFn>& binders() {
  static std::vector<BindFn> fns;
  return fns;
}
}  // namespace rbfkern

PYBIND11_MODULE(_C, m) {
  m.doc() = "rbfkern CPU kernels";
  // Other families register through csrc/registry.h (csrc/cpu/<family>_bind.cpp).
  for (auto fn : rbfkern::binders()) fn(m);

  m.def("rbf_forward", &rbf_forward_py, py::arg("x"), py::arg("centers"), py::arg("metric"),
        py::arg("metric_kind"), py::arg("metric_shared"), py::arg("sigma"), py::arg("kind"), py::arg("shape"),
        py::arg("act").none(true), py::arg("r2"), py::arg("nthreads"),
        "Fused RBF forward: writes r2 (N,C) and, unless act is None, act = f(r2) (N,C) in place.\n"
        "metric_kind: 0 none, 1 diag ((C,D) or shared (D,)), 2 tril ((C,D,D) or shared (D,D), lower\n"
        "triangle read). kind: -1 r2 only, 0 linear, 1 gaussian, 2 thin_plate, 3 logistic,\n"
        "4 inverse_multiquadric, 5 multiquadric, 6 inverse_quadratic, 7 quadratic.");
  m.def("rbf_backward", &rbf_backward_py, py::arg("grad_act").none(true), py::arg("grad_r2").none(true),
        py::arg("x"), py::arg("centers"), py::arg("metric"), py::arg("metric_kind"), py::arg("metric_shared"),
        py::arg("sigma"), py::arg("r2"), py::arg("kind"), py::arg("shape"), py::arg("gx").none(true),
        py::arg("gc").none(true), py::arg("gmetric").none(true), py::arg("gsigma").none(true),
        py::arg("nthreads"),
        "Fused RBF backward from the saved r2: fills each of gx (N,D), gc (C,D), gmetric (metric's\n"
        "shape; tril upper triangle 0) and gsigma (C,) that is not None.");
  m.def("rbf_isa", &rbfkern::cpu::cpu_isa_name, "Instruction set the CPU kernels dispatch to.");
}
