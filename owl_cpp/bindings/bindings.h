// One function per bound area; module.cpp calls them in order (errors first: others raise them).
#pragma once
#include <pybind11/pybind11.h>

namespace owl {
void bind_errors(pybind11::module_& m);
void bind_tokenizer(pybind11::module_& m);
void bind_gguf(pybind11::module_& m);
void bind_model(pybind11::module_& m);
void bind_system(pybind11::module_& m);
void bind_json(pybind11::module_& m);
}  // namespace owl
