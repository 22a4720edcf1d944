// owl_cpp._core.Model / Context / Sampler: the text decoder runtime. Heavy calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "bindings.h"
#include "owl/error.h"
#include "owl/model.h"
#include "owl/sampler.h"

namespace py = pybind11;

namespace owl {

void bind_model(py::module_& m) {
    py::class_<Model, std::shared_ptr<Model>>(m, "Model")
        .def_static("load", &Model::load, py::arg("path"), py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("hparams", [](const Model& mo) {
            const HParams& h = mo.hparams();
            return py::dict(py::arg("arch") = h.arch, py::arg("n_vocab") = h.n_vocab, py::arg("n_embd") = h.n_embd,
                            py::arg("n_layer") = h.n_layer, py::arg("n_head") = h.n_head, py::arg("n_head_kv") = h.n_head_kv,
                            py::arg("head_dim") = h.head_dim, py::arg("n_ff") = h.n_ff, py::arg("n_ctx_train") = h.n_ctx_train,
                            py::arg("rms_eps") = h.rms_eps, py::arg("rope_base") = h.rope_base,
                            py::arg("rope_mode") = h.rope_mode == RopeMode::Neox ? "neox" : "norm",
                            py::arg("hyper_variant") = h.hyper.variant, py::arg("hyper_layers") = h.hyper.layers,
                            py::arg("hyper_fused") = h.hyper.fused);
        })
        .def_property_readonly("weight_type", [](const Model& mo) { return dtype_name(mo.weight_type()); })
        .def_property_readonly("weight_bytes", &Model::weight_bytes)
        .def_property_readonly("packed_bytes", &Model::packed_bytes)
        .def_property_readonly("tokenizer", [](const std::shared_ptr<Model>& mo) {
            // The tokenizer lives inside the model: an aliasing pointer keeps the model alive.
            return std::shared_ptr<Tokenizer>(mo, const_cast<Tokenizer*>(&mo->tokenizer()));
        });

    py::class_<Context>(m, "Context")
        .def(py::init([](std::shared_ptr<Model> model, int64_t n_ctx, int n_threads, int64_t n_batch) {
                 return new Context(std::move(model), n_ctx, n_threads, n_batch);
             }),
             py::arg("model"), py::arg("n_ctx"), py::arg("n_threads"), py::arg("n_batch") = 256)
        .def("eval", [](Context& c, const std::vector<int32_t>& tokens, bool all_logits, bool return_logits) -> py::object {
                 const std::vector<float>* logits;
                 {
                     py::gil_scoped_release release;
                     logits = &c.eval(tokens, all_logits);
                 }
                 if (!return_logits) return py::none();
                 const int64_t V = c.model().hparams().n_vocab;
                 const int64_t rows = all_logits ? int64_t(tokens.size()) : 1;
                 py::array_t<float> out({rows, V});
                 std::memcpy(out.mutable_data(), logits->data(), size_t(rows * V) * sizeof(float));
                 return all_logits ? py::object(out) : py::object(out[py::int_(0)]);
             },
             py::arg("tokens"), py::arg("all_logits") = false, py::arg("return_logits") = true,
             "Append tokens to the cache; logits of the last token ([n_vocab]) or of all ([T, n_vocab])")
        .def_property_readonly("n_past", &Context::n_past)
        .def_property_readonly("n_ctx", &Context::n_ctx)
        .def_property_readonly("n_threads", &Context::n_threads)
        .def("truncate", &Context::truncate, py::arg("n"))
        .def("add_image", [](Context& c, py::array_t<float, py::array::c_style | py::array::forcecast> embeds, int64_t start) {
                 const int64_t E = c.model().hparams().n_embd;
                 if (embeds.ndim() != 2 || embeds.shape(1) != E)
                     throw py::value_error("image embeddings must be [n_tokens, " + std::to_string(E) + "]");
                 py::gil_scoped_release release;
                 c.add_image(embeds.data(), embeds.shape(0), start);
             }, py::arg("embeds"), py::arg("start"),
             "Attach an image's visual embeddings; its <|image|> placeholder starts at absolute position `start`")
        .def_property_readonly("n_images", &Context::n_images)
        .def_property_readonly("visual_bytes", &Context::visual_bytes)
        .def_property_readonly("kv_bytes_per_token", &Context::kv_bytes_per_token);

    py::class_<SamplerParams>(m, "SamplerParams")
        .def(py::init<>())
        .def_readwrite("temperature", &SamplerParams::temperature)
        .def_readwrite("top_k", &SamplerParams::top_k)
        .def_readwrite("top_p", &SamplerParams::top_p)
        .def_readwrite("min_p", &SamplerParams::min_p)
        .def_readwrite("repeat_penalty", &SamplerParams::repeat_penalty)
        .def_readwrite("repeat_last_n", &SamplerParams::repeat_last_n)
        .def_readwrite("seed", &SamplerParams::seed);

    py::class_<Sampler>(m, "Sampler")
        .def(py::init<const SamplerParams&>(), py::arg("params"))
        .def("sample", [](Sampler& s, const Context& c, const std::vector<int32_t>& history, int64_t n_vocab) {
                 // Samples from the context's last logits without copying them to Python.
                 return s.sample(c.last_logits(), n_vocab, history);
             }, py::arg("context"), py::arg("history"), py::arg("n_vocab"))
        .def("sample_logits", [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits, const std::vector<int32_t>& history) {
                 if (logits.ndim() != 1) throw py::value_error("logits must be 1-D");
                 return s.sample(logits.data(), logits.shape(0), history);
             }, py::arg("logits"), py::arg("history"));
}

}  // namespace owl
