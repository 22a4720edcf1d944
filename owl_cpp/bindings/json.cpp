// owl_cpp._core.JsonMachine / JsonVocab / JsonConstraint: JSON-constrained sampling (owl/json_constraint.h).
// Thin: the state and the per-step work stay in C++; sample() releases the GIL as a decode step does.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "owl/context.h"
#include "owl/error.h"
#include "owl/json_constraint.h"
#include "owl/model.h"
#include "owl/sampler.h"
#include "owl/tokenizer.h"

namespace py = pybind11;

namespace owl {
namespace {

JsonLimits limits(int32_t max_depth, int32_t max_ws) {
    JsonLimits l;
    l.max_depth = max_depth;
    l.max_ws = max_ws;
    return l;
}

template <class F>
auto bad_argument_is_value_error(F&& make) {
    try {
        return make();
    } catch (const Error& e) {
        throw py::value_error(e.what());
    }
}

}  // namespace

void bind_json(py::module_& m) {
    py::class_<JsonSchema::Node>(m, "JsonSchemaNode", "One node of a compiled JSON Schema (json_schema.py builds them).")
        .def(py::init<>())
        .def_readwrite("types", &JsonSchema::Node::types)
        .def_readwrite("enum_values", &JsonSchema::Node::enum_values)
        .def_readwrite("keys", &JsonSchema::Node::keys)
        .def_readwrite("key_node", &JsonSchema::Node::key_node)
        .def_readwrite("required", &JsonSchema::Node::required)
        .def_readwrite("items", &JsonSchema::Node::items);

    py::class_<JsonSchema, std::shared_ptr<JsonSchema>>(m, "JsonSchema", "A compiled JSON Schema subset; nodes[0] is the root.")
        .def(py::init([](const std::vector<JsonSchema::Node>& nodes) {
                 auto s = std::make_shared<JsonSchema>();
                 s->nodes = nodes;
                 bad_argument_is_value_error([&] { s->validate(); return 0; });
                 return s;
             }), py::arg("nodes"))
        .def("__len__", [](const JsonSchema& s) { return s.nodes.size(); });

    py::class_<JsonMachine>(m, "JsonMachine",
                            "Byte-level JSON automaton: feed() consumes bytes while they keep the text a prefix of "
                            "a valid JSON value (object_only: of an object; schema: matching it).")
        .def(py::init([](bool object_only, int32_t max_depth, int32_t max_ws, std::shared_ptr<JsonSchema> schema) {
                 return bad_argument_is_value_error([&] {
                     if (schema) schema->validate();
                     return new JsonMachine(object_only, limits(max_depth, max_ws), schema.get());
                 });
             }), py::arg("object_only") = true, py::arg("max_depth") = 32, py::arg("max_ws") = 16,
             py::arg("schema") = nullptr, py::keep_alive<1, 5>())
        .def("feed", [](JsonMachine& j, py::bytes data) {
                 // Returns how many bytes were consumed: len(data), or the index of the first byte refused
                 // (the machine then stands before that byte).
                 const std::string s = data;
                 for (size_t i = 0; i < s.size(); ++i) {
                     JsonMachine next = j;
                     if (!next.push(uint8_t(s[i]))) return i;
                     j = next;
                 }
                 return s.size();
             }, py::arg("data"))
        .def_property_readonly("done", &JsonMachine::done)
        .def_property_readonly("can_end", &JsonMachine::can_end)
        .def_property_readonly("depth", &JsonMachine::depth)
        .def("copy", [](const JsonMachine& j) { return JsonMachine(j); }, py::keep_alive<0, 1>());

    py::class_<JsonVocab, std::shared_ptr<JsonVocab>>(m, "JsonVocab",
                                                      "A vocabulary's token bytes as a trie, for JsonConstraint; "
                                                      "immutable, shared by every generation on the model.")
        .def(py::init([](const std::vector<py::bytes>& tokens, const std::vector<bool>& usable) {
                 std::vector<std::string> bytes(tokens.begin(), tokens.end());
                 std::vector<uint8_t> ok(usable.begin(), usable.end());
                 py::gil_scoped_release release;
                 return bad_argument_is_value_error([&] { return std::make_shared<JsonVocab>(bytes, ok); });
             }), py::arg("tokens"), py::arg("usable"))
        .def_static("from_tokenizer", [](const Tokenizer& t) {
                 py::gil_scoped_release release;
                 return JsonVocab::from_tokenizer(t);
             }, py::arg("tokenizer"))
        .def("__len__", &JsonVocab::size);

    py::class_<JsonConstraint>(m, "JsonConstraint",
                               "One generation's JSON state over a JsonVocab; eog: end-of-generation token ids "
                               "(allowed only once the text is a whole JSON document).")
        .def(py::init([](std::shared_ptr<JsonVocab> vocab, std::vector<int32_t> eog, bool object_only,
                         int32_t max_depth, int32_t max_ws, std::shared_ptr<JsonSchema> schema) {
                 return bad_argument_is_value_error([&] {
                     return new JsonConstraint(std::move(vocab), std::move(eog), object_only, limits(max_depth, max_ws),
                                               std::move(schema));
                 });
             }), py::arg("vocab"), py::arg("eog"), py::arg("object_only") = true, py::arg("max_depth") = 32,
             py::arg("max_ws") = 16, py::arg("schema") = nullptr)
        .def("allows", &JsonConstraint::allows, py::arg("id"))
        .def("accept", &JsonConstraint::accept, py::arg("id"))
        .def_property_readonly("done", &JsonConstraint::done)
        .def_property_readonly("can_end", &JsonConstraint::can_end)
        .def_property_readonly("resamples", &JsonConstraint::resamples)
        .def("mask", [](const JsonConstraint& c, int64_t n_vocab) {
                 if (n_vocab < 0) throw py::value_error("n_vocab must be >= 0");
                 py::array_t<bool> out(n_vocab);
                 auto* p = reinterpret_cast<uint8_t*>(out.mutable_data());
                 {
                     py::gil_scoped_release release;
                     c.mask(p, n_vocab);
                 }
                 return out;
             }, py::arg("n_vocab"), "Which tokens may come next: bool[n_vocab].")
        .def("sample", [](JsonConstraint& c, Sampler& s, const Context& ctx, const std::vector<int32_t>& history,
                          int64_t n_vocab) {
                 const int64_t V = ctx.model().hparams().n_vocab;
                 if (n_vocab < 1 || n_vocab > V)
                     throw py::value_error("n_vocab must be in [1, " + std::to_string(V) + "], got " + std::to_string(n_vocab));
                 py::gil_scoped_release release;
                 return c.sample(s, ctx.last_logits(), n_vocab, history);
             }, py::arg("sampler"), py::arg("context"), py::arg("history"), py::arg("n_vocab"),
             "Samples the next token from the context's logits among the allowed ones and accepts it.")
        .def("sample_logits", [](JsonConstraint& c, Sampler& s,
                                 py::array_t<float, py::array::c_style | py::array::forcecast> logits,
                                 const std::vector<int32_t>& history) {
                 if (logits.ndim() != 1) throw py::value_error("logits must be 1-D");
                 const float* p = logits.data();
                 const int64_t n = logits.shape(0);
                 py::gil_scoped_release release;
                 return c.sample(s, p, n, history);
             }, py::arg("sampler"), py::arg("logits"), py::arg("history"));
}

}  // namespace owl
