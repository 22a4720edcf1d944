// owl_cpp._core.default_threads / available_backends / system_info: what the runtime will use on this machine.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "owl/backend.h"
#include "owl/ops.h"
#include "owl/threadpool.h"

namespace py = pybind11;

namespace owl {
void bind_system(py::module_& m) {
    // Resolve the kernel variant now, so a bad OWL_CPU_ISA fails the import with its message rather than the
    // first matmul.
    ops::active_isa();
    m.def("default_threads", &ThreadPool::default_threads, "Physical cores (hyper-threads do not help decode)");
    m.def("available_backends", &available_backends, "Backends this build can create on this machine: cpu, and cuda with a GPU");
    m.def("system_info", [] {
        const CudaInfo ci = cuda_info();
        py::list gpus;
        for (const GpuInfo& g : ci.devices)
            gpus.append(py::dict(py::arg("index") = g.index, py::arg("name") = g.name,
                                 py::arg("compute_capability") = std::to_string(g.cc_major) + "." + std::to_string(g.cc_minor),
                                 py::arg("total_bytes") = g.total_bytes, py::arg("free_bytes") = g.free_bytes,
                                 py::arg("multiprocessors") = g.multiprocessors));
        py::dict cuda(py::arg("compiled") = ci.compiled, py::arg("architectures") = ci.architectures,
                      py::arg("runtime_version") = ci.runtime_version, py::arg("driver_version") = ci.driver_version,
                      py::arg("devices") = gpus);
        return py::dict(py::arg("kernels") = ops::active_isa(), py::arg("supported") = ops::supported_isas(),
                        py::arg("amx") = ops::amx_active(),
                        py::arg("default_threads") = ThreadPool::default_threads(),
                        py::arg("backends") = available_backends(), py::arg("cuda") = cuda);
    }, "kernels: the matmul kernel variant in use; supported: the variants this CPU and build can run; amx: F16 / "
       "BF16 prompts run on AMX tiles; backends: "
       "those this build can create here; cuda: whether the CUDA backend is compiled in, its architectures and GPUs");
}
}  // namespace owl
