// _testing.weights_in_range: which weights Model::for_each_weight visits for a WeightRange (what a device backend
// makes resident for its span of a split context), as host addresses, so tests can check that the spans of a
// split cover the model once.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "owl/model.h"
#include "testing.h"

namespace py = pybind11;

namespace owl::testing {

void bind_offload(py::module_& m) {
    m.def("weights_in_range", [](const std::shared_ptr<Model>& model, int64_t first, int64_t end, bool input, bool output) {
              WeightRange r;
              r.first = first;
              r.end = end;
              r.input = input;
              r.output = output;
              std::vector<uintptr_t> matrices, vectors;
              model->for_each_weight([&](const WeightView& w) { matrices.push_back(reinterpret_cast<uintptr_t>(w.data)); },
                                     [&](const std::vector<float>& v) { vectors.push_back(reinterpret_cast<uintptr_t>(v.data())); }, r);
              return py::make_tuple(matrices, vectors);
          },
          py::arg("model"), py::arg("first"), py::arg("end"), py::arg("input"), py::arg("output"),
          "(matrix addresses, vector addresses) a device holding layers [first, end) (+ input / output side) uploads");
}

}  // namespace owl::testing
