// owl_cpp._core.GGUFFile: read-only view of a GGUF file's metadata and tensor table (validation entry point).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "owl/gguf.h"

namespace py = pybind11;

namespace owl {
namespace {

py::object to_python(const GGUFValue& v) {
    switch (v.type) {
        case GGUFType::UINT8: case GGUFType::UINT16: case GGUFType::UINT32: case GGUFType::UINT64: return py::int_(v.u);
        case GGUFType::INT8: case GGUFType::INT16: case GGUFType::INT32: case GGUFType::INT64: return py::int_(v.i);
        case GGUFType::FLOAT32: case GGUFType::FLOAT64: return py::float_(v.f);
        case GGUFType::BOOL: return py::bool_(v.i != 0);
        case GGUFType::STRING: return py::bytes(v.str).attr("decode")("utf-8", "replace");
        case GGUFType::ARRAY: {
            py::list out;
            if (v.elem_type == GGUFType::STRING) {
                for (const auto& s : v.strs) out.append(py::bytes(s).attr("decode")("utf-8", "replace"));
            } else if (v.elem_type == GGUFType::ARRAY) {
                for (const auto& item : v.items) out.append(to_python(item));
            } else {
                for (uint64_t k = 0; k < v.count; ++k) out.append(to_python(v.element(k)));
            }
            return out;
        }
    }
    return py::none();
}

}  // namespace

void bind_gguf(py::module_& m) {
    py::class_<GGUFFile>(m, "GGUFFile")
        .def_static("open", &GGUFFile::open, py::arg("path"), "Map and validate a GGUF file")
        .def_property_readonly("version", &GGUFFile::version)
        .def_property_readonly("alignment", &GGUFFile::alignment)
        .def("keys", &GGUFFile::keys_in_order)
        .def("__contains__", &GGUFFile::has)
        .def("__getitem__", [](const GGUFFile& f, const std::string& key) {
            const GGUFValue* v = f.find(key);
            if (!v) throw py::key_error(key);
            return to_python(*v);
        })
        .def("tensors", [](const GGUFFile& f) {
            py::list out;
            for (const auto& t : f.tensors()) {
                py::list shape;
                for (int d = 0; d < t.n_dims; ++d) shape.append(t.ne[d]);
                out.append(py::dict(py::arg("name") = t.name, py::arg("type") = dtype_name(t.type),
                                    py::arg("shape") = shape, py::arg("offset") = t.offset, py::arg("nbytes") = t.nbytes));
            }
            return out;
        }, "Tensor infos, shapes in ggml order (ne[0] first)");
}

}  // namespace owl
