// Each family's binding TU (csrc/cpu/<family>_bind.cpp) registers itself here at load time,
// so adding a family never touches the module definition in bindings.cpp.
#pragma once
#include <pybind11/pybind11.h>

#include <vector>

namespace rbfkern {

using BindFn = void (*)(pybind11::module_&);

std::vector<BindFn>& binders();

struct Binder {
  explicit Binder(BindFn f) { binders().push_back(f); }
};

}  // namespace rbfkern
