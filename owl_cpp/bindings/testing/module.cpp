// owl_cpp._testing: bindings for tests and benchmarks only (ops and their references, backend ops on numpy
// arrays, kernel timing), kept out of the production module owl_cpp._core.
#include <pybind11/pybind11.h>

#include "owl/error.h"
#include "testing.h"

namespace py = pybind11;

PYBIND11_MODULE(_testing, m) {
    m.doc() = "owl_cpp test and benchmark bindings";
    // Errors raised here become the same Python classes as _core's (this module has its own copy of owl::Error).
    py::module_ core = py::module_::import("owl_cpp._core");
    static py::handle format_error = py::object(core.attr("FormatError")).release();
    static py::handle owl_error = py::object(core.attr("OwlError")).release();
    py::register_local_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const owl::FormatError& e) {
            PyErr_SetString(format_error.ptr(), e.what());
        } catch (const owl::Error& e) {
            PyErr_SetString(owl_error.ptr(), e.what());
        }
    });
    owl::testing::bind_backend(m);
    owl::testing::bind_ops(m);
    owl::testing::bind_bench(m);
    owl::testing::bind_unicode(m);
    owl::testing::bind_cuda_kquant(m);
    owl::testing::bind_offload(m);
}
