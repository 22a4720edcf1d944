// owl_cpp._core.measure_read_bandwidth: the memory roofline the benchmarks compare decode speed with.
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "owl/bandwidth.h"

namespace py = pybind11;

namespace owl {
void bind_bench(py::module_& m) {
    m.def("measure_read_bandwidth", [](size_t bytes, int threads, int reps) {
        py::gil_scoped_release release;
        ThreadPool pool(threads);
        return measure_read_bandwidth(pool, bytes, reps);
    }, py::arg("bytes") = size_t(1) << 30, py::arg("threads") = 1, py::arg("reps") = 5,
       "Best-of-reps read bandwidth in GB/s");
}
}  // namespace owl
