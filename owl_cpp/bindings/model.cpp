// owl_cpp._core.Model / Context / Sampler: the text decoder runtime. Heavy calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <limits>

#include "bindings.h"
#include "owl/error.h"
#include "owl/context.h"
#include "owl/sampler.h"

namespace py = pybind11;

namespace owl {

namespace {
// A sequence of Python ints (token ids, positions) -> int32; a ValueError naming the argument and the index of an
// entry that is not an integer or does not fit (pybind11's own cast error names neither).
std::vector<int32_t> int32_list(const py::handle& seq, const char* name) {
    if (!py::isinstance<py::sequence>(seq) || py::isinstance<py::str>(seq)) throw py::value_error(std::string(name) + " must be a sequence of integers");
    std::vector<int32_t> out;
    out.reserve(py::len(seq));
    for (py::handle h : seq) {
        py::object idx = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
        int overflow = 0;
        const long long v = idx ? PyLong_AsLongLongAndOverflow(idx.ptr(), &overflow) : 0;
        if (!idx) PyErr_Clear();
        if (!idx || overflow || v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
            throw py::value_error(std::string(name) + "[" + std::to_string(out.size()) + "] = " + py::repr(h).cast<std::string>() +
                                  " is not a 32-bit integer");
        out.push_back(int32_t(v));
    }
    return out;
}

// Runs a decode without the GIL; returns the logits of the last token ([n_vocab]), of all ([T, n_vocab]) or None.
py::object run_decode(Context& c, const Batch& b, bool all_logits, bool return_logits) {
    const std::vector<float>* logits;
    {
        py::gil_scoped_release release;
        // Logits nobody asked for stay on a device backend: the sampler selects its candidates there (Sampler.sample
        // below), anything else reading last_logits() copies them then.
        logits = &c.decode(b, all_logits, return_logits || all_logits);
    }
    if (!return_logits) return py::none();
    const int64_t V = c.model().hparams().n_vocab;
    const int64_t rows = all_logits ? b.n : 1;
    py::array_t<float> out({rows, V});
    std::memcpy(out.mutable_data(), logits->data(), size_t(rows * V) * sizeof(float));
    return all_logits ? py::object(out) : py::object(out[py::int_(0)]);
}
}  // namespace

void bind_model(py::module_& m) {
    py::class_<Model, std::shared_ptr<Model>>(m, "Model")
        .def_static("load", py::overload_cast<const std::string&>(&Model::load), py::arg("path"), py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("hparams", [](const Model& mo) {
            const HParams& h = mo.hparams();
            py::dict d(py::arg("arch") = h.arch, py::arg("n_vocab") = h.n_vocab, py::arg("n_embd") = h.n_embd,
                            py::arg("n_layer") = h.n_layer, py::arg("n_head") = h.n_head, py::arg("n_head_kv") = h.n_head_kv,
                            py::arg("head_dim") = h.head_dim, py::arg("n_ff") = h.n_ff, py::arg("n_ctx_train") = h.n_ctx_train,
                            py::arg("rms_eps") = h.rms_eps, py::arg("rope_base") = h.rope_base,
                            py::arg("rope_mode") = h.rope_mode == RopeMode::Neox ? "neox" : "norm");
            for (const auto& [key, value] : mo.arch_info()) d[py::str(key)] = py::cast(value);  // e.g. owl3's hyper_*
            return d;
        })
        .def_property_readonly("weight_type", [](const Model& mo) { return dtype_name(mo.weight_type()); })
        .def_property_readonly("weight_bytes", &Model::weight_bytes)
        .def_property_readonly("packed_bytes", &Model::packed_bytes)
        .def_property_readonly("tokenizer", [](const std::shared_ptr<Model>& mo) {
            // The tokenizer lives inside the model: an aliasing pointer keeps the model alive.
            return std::shared_ptr<Tokenizer>(mo, const_cast<Tokenizer*>(&mo->tokenizer()));
        });

    py::class_<Context>(m, "Context")
        .def(py::init([](std::shared_ptr<Model> model, int64_t n_ctx, int n_threads, int64_t n_batch, const std::string& kv_type,
                         const std::string& backend, int64_t n_gpu_layers) {
                 ContextParams p;
                 p.n_ctx = n_ctx;
                 p.n_threads = n_threads;
                 p.n_batch = n_batch;
                 p.backend = backend;
                 p.n_gpu_layers = n_gpu_layers;
                 if (kv_type == "f16") p.kv_type = DType::F16;
                 else if (kv_type == "f32") p.kv_type = DType::F32;
                 else throw py::value_error("kv_type must be 'f16' or 'f32', got '" + kv_type + "'");
                 py::gil_scoped_release release;
                 return new Context(std::move(model), p);
             }),
             py::arg("model"), py::arg("n_ctx"), py::arg("n_threads"), py::arg("n_batch") = 256, py::arg("kv_type") = "f16",
             py::arg("backend") = "cpu", py::arg("n_gpu_layers") = -1,
             "A context (KV cache) of `model`. n_gpu_layers: layers [0, n) on `backend`, the rest and the output head on the "
             "CPU (-1: all on `backend`; with backend 'cpu', a split between two CPU backends)")
        .def("eval", [](Context& c, py::object tokens_obj, bool all_logits, bool return_logits) {
                 const std::vector<int32_t> tokens = int32_list(tokens_obj, "tokens");
                 const Batch b = Batch::of_ids(tokens.data(), int64_t(tokens.size()));
                 return run_decode(c, b, all_logits, return_logits);
             },
             py::arg("tokens"), py::arg("all_logits") = false, py::arg("return_logits") = true,
             "Append tokens to the cache; logits of the last token ([n_vocab]) or of all ([T, n_vocab])")
        .def("decode", [](Context& c, py::object ids, py::object embeds, py::object pos, py::object modality, bool all_logits,
                          bool return_logits) {
                 // A batch of ids or embeddings, with optional positions and per-token modality (0 text, 1 image).
                 Batch b;
                 std::vector<int32_t> ids_v, pos_v;
                 std::vector<Modality> mod_v;
                 py::array_t<float, py::array::c_style | py::array::forcecast> emb;
                 if (!ids.is_none() && !embeds.is_none()) throw py::value_error("pass ids or embeds, not both");
                 if (!ids.is_none()) {
                     ids_v = int32_list(ids, "ids");
                     b = Batch::of_ids(ids_v.data(), int64_t(ids_v.size()));
                 } else if (!embeds.is_none()) {
                     emb = embeds.cast<py::array_t<float, py::array::c_style | py::array::forcecast>>();
                     const int64_t E = c.model().hparams().n_embd;
                     if (emb.ndim() != 2 || emb.shape(1) != E) throw py::value_error("embeds must be [n_tokens, " + std::to_string(E) + "]");
                     b = Batch::of_embeds(emb.data(), emb.shape(0));
                 } else {
                     throw py::value_error("pass ids or embeds");
                 }
                 if (!pos.is_none()) {
                     pos_v = int32_list(pos, "pos");
                     if (int64_t(pos_v.size()) != b.n) throw py::value_error("pos must have one entry per token");
                     b.pos = pos_v.data();
                 }
                 if (!modality.is_none()) {
                     for (int v : int32_list(modality, "modality")) {
                         if (v != 0 && v != 1) throw py::value_error("modality entries must be 0 (text) or 1 (image)");
                         mod_v.push_back(Modality(v));
                     }
                     if (int64_t(mod_v.size()) != b.n) throw py::value_error("modality must have one entry per token");
                     b.modality = mod_v.data();
                 }
                 return run_decode(c, b, all_logits, return_logits);
             },
             py::arg("ids") = py::none(), py::arg("embeds") = py::none(), py::arg("pos") = py::none(),
             py::arg("modality") = py::none(), py::arg("all_logits") = false, py::arg("return_logits") = true,
             "Append a batch (token ids or [T, n_embd] embeddings; optional positions and modality 0/1 per token)")
        .def("hidden_states", [](const Context& c) {
                 const int64_t E = c.model().hparams().n_embd;
                 const auto& h = c.hidden_states();
                 const int64_t rows = int64_t(h.size()) / E;
                 py::array_t<float> out({rows, E});
                 if (rows) std::memcpy(out.mutable_data(), h.data(), h.size() * sizeof(float));
                 return out;
             },
             "Final hidden states (after the output norm) of the rows the last eval returned logits for: [rows, n_embd]")
        .def_property_readonly("n_past", &Context::n_past)
        .def_property_readonly("n_ctx", &Context::n_ctx)
        .def_property_readonly("n_threads", &Context::n_threads)
        .def_property_readonly("kv_type", [](const Context& c) { return c.kv_type() == DType::F16 ? "f16" : "f32"; })
        .def_property_readonly("backend", [](const Context& c) {
            // One backend's name; a split context's spans joined: "cuda:0 (...) + cpu (...)".
            std::string out;
            for (const LayerSpan& s : c.spans()) out += (out.empty() ? "" : " + ") + s.backend;
            return out;
        })
        .def_property_readonly("spans", [](const Context& c) {
            py::list out;
            for (const LayerSpan& s : c.spans()) out.append(py::make_tuple(s.backend, s.first_layer, s.end_layer));
            return out;
        }, "Where the layers run: [(backend name, first layer, end layer)], in layer order; the last also runs the output head")
        .def_property_readonly("logits_on_device", &Context::logits_on_device,
                               "The last eval's logits are still on the device only (return_logits=False on a GPU)")
        .def("truncate", &Context::truncate, py::arg("n"), py::call_guard<py::gil_scoped_release>())
        .def("add_image", [](Context& c, py::array_t<float, py::array::c_style | py::array::forcecast> embeds, int64_t start) {
                 const int64_t E = c.model().hparams().n_embd;
                 if (embeds.ndim() != 2 || embeds.shape(1) != E)
                     throw py::value_error("image embeddings must be [n_tokens, " + std::to_string(E) + "]");
                 py::gil_scoped_release release;
                 c.add_image(embeds.data(), embeds.shape(0), start);
             }, py::arg("embeds"), py::arg("start"),
             "Attach an image's visual embeddings; its <|image|> placeholder starts at absolute position `start`")
        .def("copy_state_from", [](Context& c, const Context& other) {
                 py::gil_scoped_release release;
                 c.copy_state_from(other);
             }, py::arg("other"),
             "Make this context equal to `other` (same model): its KV cache prefix, n_past, last logits and attached "
             "state (mplug2: the video's cross-attention K/V, shared, not recomputed). For forking beams.")
        .def_property_readonly("n_images", &Context::n_images)
        .def_property_readonly("visual_bytes", &Context::visual_bytes)
        .def_property_readonly("kv_bytes_per_token", &Context::kv_bytes_per_token);

    m.def("decode_step", [](py::object contexts_obj, py::object tokens_obj) {
              // One decode step for many conversations of one model: tokens[i] appended to contexts[i] in one pass
              // through the weights. The contexts are held here (not only by the caller's list, which another
              // thread could empty while the GIL is released).
              if (!py::isinstance<py::sequence>(contexts_obj) || py::isinstance<py::str>(contexts_obj))
                  throw py::type_error("contexts must be a sequence of Context");
              std::vector<py::object> held;
              std::vector<Context*> contexts;
              for (py::handle h : contexts_obj) {
                  if (h.is_none()) throw py::type_error("contexts[" + std::to_string(contexts.size()) + "] is None, not a Context");
                  if (!py::isinstance<Context>(h))
                      throw py::type_error("contexts[" + std::to_string(contexts.size()) + "] is a " +
                                           std::string(py::str(py::type::of(h).attr("__name__"))) + ", not a Context");
                  held.push_back(py::reinterpret_borrow<py::object>(h));
                  contexts.push_back(h.cast<Context*>());
              }
              const std::vector<int32_t> tokens = int32_list(tokens_obj, "tokens");
              if (tokens.size() != contexts.size())
                  throw py::value_error("decode_step: " + std::to_string(contexts.size()) + " contexts but " +
                                        std::to_string(tokens.size()) + " tokens (one token per context)");
              {
                  py::gil_scoped_release release;
                  decode_step(contexts, tokens);
              }
              const int64_t N = int64_t(contexts.size());
              const int64_t V = contexts[0]->model().hparams().n_vocab;
              py::array_t<float> out({N, V});
              for (int64_t i = 0; i < N; ++i)
                  std::memcpy(out.mutable_data(i), contexts[size_t(i)]->last_logits(), size_t(V) * sizeof(float));
              return out;
          },
          py::arg("contexts"), py::arg("tokens"),
          "Append tokens[i] to contexts[i] (all of one model) in one batched forward pass; returns the logits "
          "[len(contexts), n_vocab], row i for contexts[i]. Each context ends as if it had eval'd its token alone.");

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
        .def(py::init([](const SamplerParams& p) {
                 try {
                     return new Sampler(p);
                 } catch (const Error& e) {  // a bad option is a bad argument
                     throw py::value_error(e.what());
                 }
             }), py::arg("params"))
        .def("sample", [](Sampler& s, Context& c, const std::vector<int32_t>& history, int64_t n_vocab) {
                 // Samples from the context's last logits without copying them to Python; they hold the model's n_vocab.
                 const int64_t V = c.model().hparams().n_vocab;
                 if (n_vocab < 1 || n_vocab > V)
                     throw py::value_error("n_vocab must be in [1, " + std::to_string(V) + "] (the model's vocabulary), got " + std::to_string(n_vocab));
                 // Without the GIL: over a large vocabulary (top-k / top-p sorting) this is a decode step's
                 // Python-side cost, and other threads (a batch job's lanes) run meanwhile.
                 py::gil_scoped_release release;
                 // Logits still on the device (eval with return_logits=False): when greedy or top-k covers what
                 // sampling looks at, only those candidates come back (the same token, sample_top).
                 const int64_t need = s.candidates_needed(n_vocab);
                 if (need > 0 && c.logits_on_device()) {
                     std::vector<Candidate> top;
                     c.top_logits(n_vocab, need, top);
                     return s.sample_top(top, n_vocab);
                 }
                 return s.sample(c.last_logits(), n_vocab, history);
             }, py::arg("context"), py::arg("history"), py::arg("n_vocab"))
        .def("sample_logits", [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits, const std::vector<int32_t>& history) {
                 if (logits.ndim() != 1) throw py::value_error("logits must be 1-D");
                 return s.sample(logits.data(), logits.shape(0), history);
             }, py::arg("logits"), py::arg("history"))
        .def("candidates_needed", &Sampler::candidates_needed, py::arg("n_vocab"),
             "How many best logits sample_top needs (1 greedy, top_k); 0: sampling needs them all")
        .def("sample_top", &Sampler::sample_top, py::arg("candidates"), py::arg("n_vocab"),
             "The token sample() would pick, from the candidates_needed best (logit, id) pairs in top_logits' order");
    m.def("top_logits", [](py::array_t<float, py::array::c_style | py::array::forcecast> logits, int64_t k) {
              if (logits.ndim() != 1) throw py::value_error("logits must be 1-D");
              std::vector<Candidate> out;
              top_logits(logits.data(), logits.shape(0), k, out);
              return out;
          }, py::arg("logits"), py::arg("k"),
          "The k best (logit, id) pairs, higher logit first, then lower id (what Backend.top_k returns)");
}

}  // namespace owl
