// Argument checks shared by the pybind11 bindings (csrc/cpu/<family>_bind.cpp). A binding checks
// every buffer once (numpy array, dtype, shape or element count, C-contiguous, writeable for
// outputs) before it releases the GIL; every failure raises ValueError with the function's and
// the argument's name. The kernels then see raw pointers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace rbfkern {
namespace bind {

namespace py = pybind11;

using Shape = std::vector<int64_t>;

inline std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}

inline Shape shape_of(const py::array& a) {
  Shape s((size_t)a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s[(size_t)i] = (int64_t)a.shape(i);
  return s;
}

// The arguments of one call. The first float array fixes the call's dtype (float32 or float64);
// every later float array must have it.
class Args {
 public:
  explicit Args(const char* fn) : fn_(fn) {}

  [[noreturn]] void fail(const std::string& msg) const { throw py::value_error(std::string(fn_) + ": " + msg); }
  void require(bool ok, const std::string& msg) const {
    if (!ok) fail(msg);
  }

  // A float array of exactly `shape`.
  py::array floats(py::handle h, const char* name, const Shape& shape, bool writable = false) {
    py::array a = array(h, name, writable);
    float_dtype(a, name);
    check_shape(a, name, shape);
    return a;
  }
  // A float array of `size` elements, any shape (the caller's views may fold dimensions).
  py::array floats_n(py::handle h, const char* name, int64_t size, bool writable = false) {
    py::array a = array(h, name, writable);
    float_dtype(a, name);
    check_size(a, name, size);
    return a;
  }
  // None stays None.
  py::object floats_opt(py::handle h, const char* name, const Shape& shape, bool writable = false) {
    if (h.is_none()) return py::none();
    return floats(h, name, shape, writable);
  }
  py::object floats_n_opt(py::handle h, const char* name, int64_t size, bool writable = false) {
    if (h.is_none()) return py::none();
    return floats_n(h, name, size, writable);
  }
  // An array of dtype U (uint8 indices, int64 index pairs), not tied to the call's float dtype.
  template <class U>
  py::array typed(py::handle h, const char* name, const Shape& shape, bool writable = false) {
    py::array a = array(h, name, writable);
    typed_dtype<U>(a, name);
    check_shape(a, name, shape);
    return a;
  }
  template <class U>
  py::array typed_n(py::handle h, const char* name, int64_t size, bool writable = false) {
    py::array a = array(h, name, writable);
    typed_dtype<U>(a, name);
    check_size(a, name, size);
    return a;
  }
  // A numpy array of `ndim` dimensions, before the sizes are known (they are read from it).
  py::array ranked(py::handle h, const char* name, int ndim) const {
    py::array a = array(h, name, false);
    if (a.ndim() != ndim) {
      std::ostringstream o;
      o << "argument '" << name << "' must have " << ndim << " dimensions, got shape " << shape_str(shape_of(a));
      fail(o.str());
    }
    return a;
  }

  bool is_double() const { return is_double_; }

  // f(T{}) with T the call's float type.
  template <class F>
  void by_dtype(F&& f) const {
    if (is_double_) std::forward<F>(f)(double{});
    else std::forward<F>(f)(float{});
  }

 private:
  py::array array(py::handle h, const char* name, bool writable) const {
    if (h.is_none()) fail(std::string("argument '") + name + "' must be an array, got None");
    if (!py::isinstance<py::array>(h))
      fail(std::string("argument '") + name + "' must be a numpy array, got " +
           std::string(py::str(py::type::handle_of(h))));
    py::array a = py::reinterpret_borrow<py::array>(h);
    if (!(a.flags() & py::array::c_style)) fail(std::string("argument '") + name + "' must be C-contiguous");
    if (writable && !a.writeable()) fail(std::string("argument '") + name + "' must be writeable");
    return a;
  }
  void float_dtype(const py::array& a, const char* name) {
    if (!dtype_set_) {
      if (a.dtype().is(py::dtype::of<float>())) is_double_ = false;
      else if (a.dtype().is(py::dtype::of<double>())) is_double_ = true;
      else
        fail(std::string("argument '") + name + "' must be float32 or float64, got " + std::string(py::str(a.dtype())));
      dtype_set_ = true;
      first_ = name;
      return;
    }
    const py::dtype want = is_double_ ? py::dtype::of<double>() : py::dtype::of<float>();
    if (!a.dtype().is(want))
      fail(std::string("argument '") + name + "' has dtype " + std::string(py::str(a.dtype())) + ", expected " +
           std::string(py::str(want)) + " (the dtype of '" + first_ + "')");
  }
  template <class U>
  void typed_dtype(const py::array& a, const char* name) const {
    if (!a.dtype().is(py::dtype::of<U>()))
      fail(std::string("argument '") + name + "' must have dtype " + std::string(py::str(py::dtype::of<U>())) +
           ", got " + std::string(py::str(a.dtype())));
  }
  void check_shape(const py::array& a, const char* name, const Shape& shape) const {
    const Shape got = shape_of(a);
    if (got != shape)
      fail(std::string("argument '") + name + "' expected shape " + shape_str(shape) + ", got " + shape_str(got));
  }
  void check_size(const py::array& a, const char* name, int64_t size) const {
    if ((int64_t)a.size() != size)
      fail(std::string("argument '") + name + "' has " + std::to_string(a.size()) + " elements, expected " +
           std::to_string(size));
  }

  const char* fn_;
  bool dtype_set_ = false, is_double_ = false;
  const char* first_ = "";
};

// Data pointers of checked arrays; None -> null.
template <class T>
const T* cptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<const T*>(py::reinterpret_borrow<py::array>(o).data());
}
template <class T>
T* mptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<T*>(py::reinterpret_borrow<py::array>(o).mutable_data());
}

}  // namespace bind
}  // namespace rbfkern
