// owl_cpp._core.default_threads / system_info: what the runtime will use on this machine.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "owl/ops.h"
#include "owl/threadpool.h"

namespace py = pybind11;

namespace owl {
void bind_system(py::module_& m) {
    // Resolve the kernel variant now, so a bad OWL_CPU_ISA fails the import with its message rather than the
    // first matmul.
    ops::active_isa();
    m.def("default_threads", &ThreadPool::default_threads, "Physical cores (hyper-threads do not help decode)");
    m.def("system_info", [] {
        return py::dict(py::arg("kernels") = ops::active_isa(), py::arg("supported") = ops::supported_isas(),
                        py::arg("default_threads") = ThreadPool::default_threads());
    }, "kernels: the matmul kernel variant in use; supported: the variants this CPU and build can run");
}
}  // namespace owl
