// One function per bound area of owl_cpp._testing; module.cpp calls them.
#pragma once
#include <pybind11/pybind11.h>

namespace owl::testing {
void bind_backend(pybind11::module_& m);
}  // namespace owl::testing
