// One function per bound area of owl_cpp._testing; module.cpp calls them.
#pragma once
#include <pybind11/pybind11.h>

namespace owl::testing {
void bind_backend(pybind11::module_& m);
void bind_ops(pybind11::module_& m);    // the submodule _testing.ops
void bind_bench(pybind11::module_& m);  // measure_read_bandwidth and the submodule _testing.bench
void bind_unicode(pybind11::module_& m);  // the submodule _testing.unicode
void bind_cuda_kquant(pybind11::module_& m);  // the submodule _testing.cuda_kquant
void bind_offload(pybind11::module_& m);      // weights_in_range (partial offload)
}  // namespace owl::testing
