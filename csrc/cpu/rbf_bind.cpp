// pybind11 bindings of the RBF CPU kernels (csrc/cpu/rbf.h), registered through csrc/registry.h.
// Buffers are contiguous numpy views of torch tensors; each is checked once (csrc/bind_args.h),
// then the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind_args.h"
#include "cpu/isa.h"
#include "cpu/rbf.h"
#include "registry.h"

namespace py = pybind11;

namespace rbfkern {
namespace {

using namespace bind;  // NOLINT(build/namespaces): Args, Shape, cptr, mptr

Shape metric_shape(int metric_kind, bool shared, int64_t C, int64_t D) {
  if (metric_kind == cpu::kMetricDiag) return shared ? Shape{D} : Shape{C, D};
  if (metric_kind == cpu::kMetricTril) return shared ? Shape{D, D} : Shape{C, D, D};
  return {};
}

// x, centers, metric and sigma, checked; the sizes come from x and centers.
struct Common {
  int64_t N, C, D;
  int metric_kind, kind;
  bool metric_shared;
  double shape;
  py::object x, centers, metric, sigma;

  template <class T>
  cpu::RbfProblem<T> problem() const {
    cpu::RbfProblem<T> p;
    p.N = N;
    p.C = C;
    p.D = D;
    p.x = cptr<T>(x);
    p.centers = cptr<T>(centers);
    p.metric = cptr<T>(metric);
    p.metric_kind = metric_kind;
    p.metric_shared = metric_shared;
    p.sigma = cptr<T>(sigma);
    p.kind = kind;
    p.shape = shape;
    return p;
  }
};

Common check_common(Args& a, py::handle x, py::handle centers, py::handle metric, int metric_kind,
                    bool metric_shared, py::handle sigma, int kind, double shape) {
  a.require(metric_kind >= 0 && metric_kind <= 2,
            "metric_kind must be 0 (none), 1 (diag) or 2 (tril), got " + std::to_string(metric_kind));
  a.require(cpu::rbf_kind_valid(kind), "kind must be in [-1, 7], got " + std::to_string(kind));
  const py::array xa = a.ranked(x, "x", 2);
  const py::array ca = a.ranked(centers, "centers", 2);
  Common c;
  c.N = (int64_t)xa.shape(0);
  c.D = (int64_t)xa.shape(1);
  c.C = (int64_t)ca.shape(0);
  c.metric_kind = metric_kind;
  c.metric_shared = metric_shared;
  c.kind = kind;
  c.shape = shape;
  c.x = a.floats(x, "x", {c.N, c.D});
  c.centers = a.floats(centers, "centers", {c.C, c.D});
  c.metric = metric_kind == cpu::kMetricNone
                 ? py::object(py::none())
                 : py::object(a.floats(metric, "metric", metric_shape(metric_kind, metric_shared, c.C, c.D)));
  c.sigma = cpu::rbf_kind_uses_sigma(kind) ? py::object(a.floats(sigma, "sigma", {c.C})) : py::object(py::none());
  return c;
}

void rbf_forward_py(py::handle x, py::handle centers, py::handle metric, int metric_kind, bool metric_shared,
                    py::handle sigma, int kind, double shape, py::handle act, py::handle r2, int nthreads) {
  Args a("rbf_forward");
  const Common c = check_common(a, x, centers, metric, metric_kind, metric_shared, sigma, kind, shape);
  a.require(kind != cpu::kKindNone || act.is_none(), "argument 'act' must be None when kind == -1");
  a.require(!(act.is_none() && r2.is_none()), "arguments 'act' and 'r2' must not both be None");
  const py::object act_o = a.floats_opt(act, "act", {c.N, c.C}, true);
  const py::object r2_o = a.floats_opt(r2, "r2", {c.N, c.C}, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const auto p = c.problem<T>();
    T* ap = mptr<T>(act_o);
    T* rp = mptr<T>(r2_o);
    py::gil_scoped_release nogil;
    cpu::rbf_forward<T>(p, ap, rp, nthreads);
  });
}

void rbf_nearest_py(py::handle x, py::handle centers, py::handle metric, int metric_kind, bool metric_shared,
                    py::handle label, py::handle min_r2, int nthreads) {
  Args a("rbf_nearest");
  const Common c = check_common(a, x, centers, metric, metric_kind, metric_shared, py::none(), cpu::kKindNone, 0.0);
  a.require(c.C >= 1, "argument 'centers' must have at least one row, got shape (0, " + std::to_string(c.D) + ")");
  const py::object l_o = a.typed<int64_t>(label, "label", {c.N}, true);
  const py::object m_o = a.floats(min_r2, "min_r2", {c.N}, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const auto p = c.problem<T>();
    int64_t* lp = mptr<int64_t>(l_o);
    T* mp = mptr<T>(m_o);
    py::gil_scoped_release nogil;
    cpu::rbf_nearest<T>(p, lp, mp, nthreads);
  });
}

void rbf_min_with_py(py::handle x, py::handle centers, py::handle metric, int metric_kind, bool metric_shared,
                     py::handle floor, py::handle out, int nthreads) {
  Args a("rbf_min_with");
  const Common c = check_common(a, x, centers, metric, metric_kind, metric_shared, py::none(), cpu::kKindNone, 0.0);
  const py::array f_o = a.typed<double>(floor, "floor", {c.N});
  const py::object o_o = a.typed<double>(out, "out", {c.N, c.C}, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const auto p = c.problem<T>();
    const double* fp = static_cast<const double*>(f_o.data());
    double* op = mptr<double>(o_o);
    py::gil_scoped_release nogil;
    cpu::rbf_min_with<T>(p, fp, op, nthreads);
  });
}

void rbf_cluster_sums_py(py::handle x, py::handle label, int64_t K, py::handle sums, py::handle counts, int nthreads) {
  Args a("rbf_cluster_sums");
  const py::array xa = a.ranked(x, "x", 2);
  const int64_t N = (int64_t)xa.shape(0), D = (int64_t)xa.shape(1);
  a.require(K >= 1, "K must be >= 1, got " + std::to_string(K));
  const py::object x_o = a.floats(x, "x", {N, D});
  const py::array l_o = a.typed<int64_t>(label, "label", {N});
  const py::object s_o = a.typed<double>(sums, "sums", {K, D}, true);
  const py::object c_o = a.typed<double>(counts, "counts", {K}, true);
  const int64_t* lp = static_cast<const int64_t*>(l_o.data());
  for (int64_t n = 0; n < N; ++n)
    if (lp[n] < 0 || lp[n] >= K)
      a.fail("label must be in [0, " + std::to_string(K) + "), got " + std::to_string(lp[n]) + " at row " +
             std::to_string(n));
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const T* xp = cptr<T>(x_o);
    double *sp = mptr<double>(s_o), *cp = mptr<double>(c_o);
    py::gil_scoped_release nogil;
    cpu::rbf_cluster_sums<T>(xp, N, D, lp, K, sp, cp, nthreads);
  });
}

void rbf_backward_py(py::handle grad_act, py::handle grad_r2, py::handle x, py::handle centers,
                     py::handle metric, int metric_kind, bool metric_shared, py::handle sigma, py::handle r2,
                     int kind, double shape, py::handle gx, py::handle gc, py::handle gmetric,
                     py::handle gsigma, int nthreads) {
  Args a("rbf_backward");
  const Common c = check_common(a, x, centers, metric, metric_kind, metric_shared, sigma, kind, shape);
  a.require(kind != cpu::kKindNone || grad_act.is_none(), "argument 'grad_act' must be None when kind == -1");
  a.require(metric_kind != cpu::kMetricNone || gmetric.is_none(),
            "argument 'gmetric' must be None when metric_kind == 0");
  const py::object r2_o = a.floats(r2, "r2", {c.N, c.C});
  const py::object ga = a.floats_opt(grad_act, "grad_act", {c.N, c.C});
  const py::object gr = a.floats_opt(grad_r2, "grad_r2", {c.N, c.C});
  const py::object gx_o = a.floats_opt(gx, "gx", {c.N, c.D}, true);
  const py::object gc_o = a.floats_opt(gc, "gc", {c.C, c.D}, true);
  const py::object gm_o = a.floats_opt(gmetric, "gmetric", metric_shape(metric_kind, metric_shared, c.C, c.D), true);
  const py::object gs_o = a.floats_opt(gsigma, "gsigma", {c.C}, true);
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    const auto p = c.problem<T>();
    const T *r2p = cptr<T>(r2_o), *gap = cptr<T>(ga), *grp = cptr<T>(gr);
    T *gxp = mptr<T>(gx_o), *gcp = mptr<T>(gc_o), *gmp = mptr<T>(gm_o), *gsp = mptr<T>(gs_o);
    py::gil_scoped_release nogil;
    cpu::rbf_backward<T>(p, r2p, gap, grp, gxp, gcp, gmp, gsp, nthreads);
  });
}

void bind_rbf(py::module_& m) {
  m.def("rbf_forward", &rbf_forward_py, py::arg("x"), py::arg("centers"), py::arg("metric"),
        py::arg("metric_kind"), py::arg("metric_shared"), py::arg("sigma"), py::arg("kind"), py::arg("shape"),
        py::arg("act").none(true), py::arg("r2").none(true), py::arg("nthreads"),
        "Fused RBF forward: writes r2 (N,C) and, unless act is None, act = f(r2) (N,C) in place;\n"
        "r2 may be None when act is not (the activation alone).\n"
        "metric_kind: 0 none, 1 diag ((C,D) or shared (D,)), 2 tril ((C,D,D) or shared (D,D), lower\n"
        "triangle read). kind: -1 r2 only, 0 linear, 1 gaussian, 2 thin_plate, 3 logistic,\n"
        "4 inverse_multiquadric, 5 multiquadric, 6 inverse_quadratic, 7 quadratic.");
  m.def("rbf_nearest", &rbf_nearest_py, py::arg("x"), py::arg("centers"), py::arg("metric"), py::arg("metric_kind"),
        py::arg("metric_shared"), py::arg("label"), py::arg("min_r2"), py::arg("nthreads"),
        "Each row's nearest centre: writes label (N,) int64 and min_r2 (N,), equal to r2.min(1) of\n"
        "rbf_forward's r2 (NaN first, ties to the smaller index), without forming (N,C).");
  m.def("rbf_min_with", &rbf_min_with_py, py::arg("x"), py::arg("centers"), py::arg("metric"), py::arg("metric_kind"),
        py::arg("metric_shared"), py::arg("floor"), py::arg("out"), py::arg("nthreads"),
        "k-means++ seeding's candidate distances: writes out (N,C) float64 = min(floor[n], r2[n,j]) for\n"
        "floor (N,) float64 (either NaN gives NaN, as torch.minimum), r2 as rbf_forward computes it.");
  m.def("rbf_cluster_sums", &rbf_cluster_sums_py, py::arg("x"), py::arg("label"), py::arg("K"), py::arg("sums"),
        py::arg("counts"), py::arg("nthreads"),
        "k-means' cluster statistics: writes sums (K,D) float64 and counts (K,) float64 of the rows of x\n"
        "(N,D) by label (N,) int64 in [0, K), each cluster's rows added in row order.");
  m.def("rbf_backward", &rbf_backward_py, py::arg("grad_act").none(true), py::arg("grad_r2").none(true),
        py::arg("x"), py::arg("centers"), py::arg("metric"), py::arg("metric_kind"), py::arg("metric_shared"),
        py::arg("sigma"), py::arg("r2"), py::arg("kind"), py::arg("shape"), py::arg("gx").none(true),
        py::arg("gc").none(true), py::arg("gmetric").none(true), py::arg("gsigma").none(true),
        py::arg("nthreads"),
        "Fused RBF backward from the saved r2: fills each of gx (N,D), gc (C,D), gmetric (metric's\n"
        "shape; tril upper triangle 0) and gsigma (C,) that is not None.");
  m.def("rbf_isa", &cpu::cpu_isa_name, "Instruction set the CPU kernels dispatch to.");
}

Binder reg(bind_rbf);

}  // namespace
}  // namespace rbfkern
