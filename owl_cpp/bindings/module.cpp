// owl_cpp._core: the pybind11 module. Each bound area lives in its own file; this one only wires them up.
#include <pybind11/pybind11.h>

#include "bindings.h"

PYBIND11_MODULE(_core, m) {
    m.doc() = "owl_cpp C++ runtime";
    owl::bind_errors(m);
    owl::bind_tokenizer(m);
    owl::bind_gguf(m);
    owl::bind_model(m);
    owl::bind_system(m);
    owl::bind_json(m);
}
