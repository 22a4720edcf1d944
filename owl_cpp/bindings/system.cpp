// owl_cpp._core.default_threads / system_info: what the runtime will use on this machine.
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "owl/threadpool.h"

namespace py = pybind11;

namespace owl {
void bind_system(py::module_& m) {
    m.def("default_threads", &ThreadPool::default_threads, "Physical cores (hyper-threads do not help decode)");
    m.def("system_info", [] {
        return py::dict(py::arg("kernels") = "generic", py::arg("default_threads") = ThreadPool::default_threads());
    });
}
}  // namespace owl
