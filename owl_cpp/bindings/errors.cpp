// owl::FormatError -> owl_cpp.FormatError (a ValueError); owl::Error -> owl_cpp.OwlError (a RuntimeError).
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "owl/error.h"

namespace owl {
void bind_errors(pybind11::module_& m) {
    static pybind11::exception<FormatError> format_error(m, "FormatError", PyExc_ValueError);
    static pybind11::exception<Error> owl_error(m, "OwlError", PyExc_RuntimeError);
    pybind11::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const FormatError& e) {
            pybind11::set_error(format_error, e.what());
        } catch (const Error& e) {
            pybind11::set_error(owl_error, e.what());
        }
    });
}
}  // namespace owl
