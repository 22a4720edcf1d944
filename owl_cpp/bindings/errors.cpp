// owl::FormatError -> owl_cpp.FormatError (a ValueError); owl::Error -> owl_cpp.OwlError (a RuntimeError).
#include <pybind11/pybind11.h>

#include <cstring>

#include "bindings.h"
#include "owl/error.h"

namespace owl {
namespace {
// A message quoting bytes of a hostile file may be invalid UTF-8: PyErr_SetString would raise UnicodeDecodeError
// instead of the error, so undecodable bytes become U+FFFD.
void set_error(const pybind11::object& type, const char* what) {
    pybind11::object msg = pybind11::reinterpret_steal<pybind11::object>(PyUnicode_DecodeUTF8(what, Py_ssize_t(std::strlen(what)), "replace"));
    if (!msg) return;  // MemoryError is already set
    PyErr_SetObject(type.ptr(), msg.ptr());
}
}  // namespace

void bind_errors(pybind11::module_& m) {
    static pybind11::exception<FormatError> format_error(m, "FormatError", PyExc_ValueError);
    static pybind11::exception<Error> owl_error(m, "OwlError", PyExc_RuntimeError);
    pybind11::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const FormatError& e) {
            set_error(format_error, e.what());
        } catch (const Error& e) {
            set_error(owl_error, e.what());
        }
    });
}
}  // namespace owl
