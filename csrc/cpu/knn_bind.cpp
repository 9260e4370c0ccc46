// pybind11 bindings of the kNN candidate search (csrc/cpu/knn.h), registered through
// csrc/registry.h. Buffers are contiguous numpy views of torch tensors; each is checked once
// (csrc/bind_args.h), then the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind_args.h"
#include "cpu/knn.h"
#include "registry.h"

namespace py = pybind11;

namespace rbfkern {
namespace {

using namespace bind;  // NOLINT(build/namespaces): Args, Shape, cptr, mptr

double knn_candidates_py(py::handle query, py::handle bank, int64_t kk, int64_t chunk, py::handle value,
                         py::handle index, int nthreads) {
  Args a("knn_candidates");
  const py::array qa = a.ranked(query, "query", 2);
  const py::array ba = a.ranked(bank, "bank", 2);
  const int64_t Q = (int64_t)qa.shape(0), D = (int64_t)qa.shape(1), M = (int64_t)ba.shape(0);
  const py::object q_o = a.floats(query, "query", {Q, D});
  const py::object b_o = a.floats(bank, "bank", {M, D});
  a.require(kk >= 1 && kk <= M, "argument 'kk' must be in [1, " + std::to_string(M) + "] (the bank rows), got " +
                                    std::to_string(kk));
  a.require(chunk >= 0, "argument 'chunk' must be >= 0 (0: the default), got " + std::to_string(chunk));
  const py::object v_o = a.floats(value, "value", {Q, kk}, true);
  const py::object i_o = a.typed<int64_t>(index, "index", {Q, kk}, true);
  double bmax = 0.0;
  a.by_dtype([&](auto t) {
    using T = decltype(t);
    cpu::KnnProblem<T> p;
    p.Q = Q;
    p.M = M;
    p.D = D;
    p.kk = kk;
    p.chunk = chunk > 0 ? chunk : cpu::knn_default_chunk(D, (int64_t)sizeof(T));
    p.query = cptr<T>(q_o);
    p.bank = cptr<T>(b_o);
    T* vp = mptr<T>(v_o);
    int64_t* ip = mptr<int64_t>(i_o);
    py::gil_scoped_release nogil;
    bmax = cpu::knn_candidates<T>(p, vp, ip, nthreads);
  });
  return bmax;
}

double knn_error_factor_py(int64_t D, bool is_double) {
  if (D < 0) throw py::value_error("knn_error_factor: argument 'D' must be >= 0, got " + std::to_string(D));
  return is_double ? cpu::knn_error_factor<double>(D) : cpu::knn_error_factor<float>(D);
}

void bind_knn(py::module_& m) {
  m.def("knn_candidates", &knn_candidates_py, py::arg("query"), py::arg("bank"), py::arg("kk"), py::arg("chunk"),
        py::arg("value"), py::arg("index"), py::arg("nthreads"),
        "kNN candidates: fills value (Q,kk) with the kk smallest |b|^2 - 2 q.b per query, ascending\n"
        "(ties: smaller bank index first), and index (Q,kk) int64 with their bank rows (-1 where fewer\n"
        "than kk are finite). chunk: bank rows packed per step (0: about 1 MiB). Returns max |b|^2.");
  m.def("knn_error_factor", &knn_error_factor_py, py::arg("D"), py::arg("is_double"),
        "g with |approx - (|b|^2 - 2 q.b)| <= g * (2 sum_d |q_d b_d| + |b|^2) + (rounding of |b|^2)\n"
        "for knn_candidates's sums over D features.");
}

Binder reg(bind_knn);

}  // namespace
}  // namespace rbfkern
