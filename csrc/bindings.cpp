// pybind11 module rbfkern._C. Each family's bindings (csrc/cpu/<family>_bind.cpp) register
// themselves through csrc/registry.h; this file only defines the module and runs them.
#include <pybind11/pybind11.h>

#include <vector>

#include "registry.h"

namespace rbfkern {
std::vector<BindFn>& binders() {
  static std::vector<BindFn> fns;
  return fns;
}
}  // namespace rbfkern

PYBIND11_MODULE(_C, m) {
  m.doc() = "rbfkern CPU kernels";
  for (auto fn : rbfkern::binders()) fn(m);
}
