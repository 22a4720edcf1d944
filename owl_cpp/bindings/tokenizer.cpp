// owl_cpp._core.Tokenizer / StreamDecoder. Tokenizers are held by std::shared_ptr<owl::Tokenizer>, so
// any other binding can hand out a C++-built tokenizer (e.g. from a GGUF file) by returning a
// std::shared_ptr<owl::Tokenizer>; pybind11 wraps it as this class.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <memory>

#include "bindings.h"
#include "owl/error.h"
#include "owl/gguf.h"
#include "owl/model.h"
#include "owl/tokenizer.h"

namespace py = pybind11;

namespace owl {
namespace {

// One vocabulary field from the dict, with the key named in the error if it has the wrong type.
template <class T>
void read_key(const py::dict& d, const char* key, T& dst, bool required = false) {
    if (!d.contains(key)) {
        if (required) throw FormatError(std::string("vocabulary dict: missing required key '") + key + "'");
        return;
    }
    try {
        dst = d[key].cast<T>();
    } catch (const py::cast_error&) {
        throw FormatError(std::string("vocabulary dict: key '") + key + "' has the wrong type (" +
                          py::str(py::type::of(d[key])).cast<std::string>() + ")");
    }
}

// Special ids: int, or None / absent for "none" (-1).
void read_id(const py::dict& d, const char* key, int32_t& dst) {
    if (d.contains(key) && d[key].is_none()) {
        dst = -1;
        return;
    }
    int64_t v = -1;
    read_key(d, key, v);
    if (v < INT32_MIN || v > INT32_MAX) throw FormatError(std::string("vocabulary dict: key '") + key + "' out of range");
    dst = static_cast<int32_t>(v);
}

VocabData vocab_from_dict(const py::dict& d) {
    static const char* known[] = {"model",  "pre",    "tokens", "scores", "types",  "merges",          "bos_id",
                                  "eos_id", "unk_id", "pad_id", "add_bos", "add_eos", "add_space_prefix"};
    for (const auto& item : d) {
        const std::string k = py::str(item.first).cast<std::string>();
        if (std::find(std::begin(known), std::end(known), k) == std::end(known))
            throw FormatError("vocabulary dict: unknown key '" + k + "'");
    }
    VocabData v;
    read_key(d, "model", v.model, true);
    read_key(d, "tokens", v.tokens, true);
    read_key(d, "pre", v.pre);
    read_key(d, "scores", v.scores);
    read_key(d, "types", v.types);
    read_key(d, "merges", v.merges);
    read_id(d, "bos_id", v.bos_id);
    read_id(d, "eos_id", v.eos_id);
    read_id(d, "unk_id", v.unk_id);
    read_id(d, "pad_id", v.pad_id);
    read_key(d, "add_bos", v.add_bos);
    read_key(d, "add_eos", v.add_eos);
    read_key(d, "add_space_prefix", v.add_space_prefix);
    return v;
}

// A Python integer (or numpy integer) as a token id of `tok`; IndexError when out of range.
int32_t to_id(const Tokenizer& tok, py::handle h) {
    py::object idx = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
    if (!idx) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(idx.ptr(), &overflow);
    if (overflow == 0 && v >= 0 && v < tok.n_vocab()) return static_cast<int32_t>(v);
    throw py::index_error("token id " + py::str(h).cast<std::string>() + " is out of range [0, " +
                          std::to_string(tok.n_vocab()) + ")");
}

py::object optional_id(int32_t id) { return id < 0 ? py::object(py::none()) : py::object(py::int_(id)); }

// Keeps the tokenizer alive as long as the decoder.
struct PyStreamDecoder {
    std::shared_ptr<Tokenizer> tok;
    StreamDecoder dec;
    PyStreamDecoder(std::shared_ptr<Tokenizer> t, bool render_special) : tok(std::move(t)), dec(*tok, render_special) {}
};

}  // namespace

void bind_tokenizer(py::module_& m) {
    py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer",
                                                      "A GGUF tokenizer (model 'gpt2' byte-level BPE, 'llama' "
                                                      "SentencePiece BPE or 'bert' WordPiece) built from a vocabulary dict.")
        .def(py::init([](const py::dict& vocab) { return std::shared_ptr<Tokenizer>(Tokenizer::create(vocab_from_dict(vocab))); }),
             py::arg("vocab"),
             "vocab: dict with VocabData's keys (model, pre, tokens, scores, types, merges, bos_id, eos_id, "
             "unk_id, pad_id, add_bos, add_eos, add_space_prefix); model and tokens are required.")
        .def_static(
            "from_gguf",
            [](const std::string& path) { return std::shared_ptr<Tokenizer>(tokenizer_from_gguf(*GGUFFile::open(path))); },
            py::arg("path"), "The tokenizer of a GGUF file's tokenizer.ggml.* keys alone (no model is loaded).")
        .def(
            "encode",
            [](const Tokenizer& t, const std::string& text, bool add_special, bool parse_special) {
                py::gil_scoped_release nogil;
                return t.encode(text, add_special, parse_special);
            },
            py::arg("text"), py::arg("add_special") = true, py::arg("parse_special") = true)
        .def(
            "decode",
            [](const Tokenizer& t, const py::iterable& ids, bool render_special) {
                std::vector<int32_t> v;
                for (py::handle h : ids) v.push_back(to_id(t, h));
                const std::string bytes = t.decode(v, render_special);
                return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(bytes.data(), bytes.size(), "replace"));
            },
            py::arg("ids"), py::arg("render_special") = false, "Text of the ids; invalid UTF-8 becomes U+FFFD.")
        .def(
            "token_to_bytes",
            [](const Tokenizer& t, py::handle id, bool render_special) {
                return py::bytes(t.token_to_bytes(to_id(t, id), render_special));
            },
            py::arg("id"), py::arg("render_special") = true)
        .def("is_control", [](const Tokenizer& t, py::handle id) { return t.is_control(to_id(t, id)); }, py::arg("id"))
        .def_property_readonly("n_vocab", &Tokenizer::n_vocab)
        .def_property_readonly("model", [](const Tokenizer& t) { return t.vocab().model; })
        .def_property_readonly("bos_id", [](const Tokenizer& t) { return optional_id(t.vocab().bos_id); })
        .def_property_readonly("eos_id", [](const Tokenizer& t) { return optional_id(t.vocab().eos_id); })
        .def("__len__", &Tokenizer::n_vocab);

    py::class_<PyStreamDecoder>(m, "StreamDecoder",
                                "Incremental detokenizer: push(id) returns only complete UTF-8 characters.")
        .def(py::init<std::shared_ptr<Tokenizer>, bool>(), py::arg("tokenizer").none(false), py::arg("render_special") = false)
        .def("push", [](PyStreamDecoder& s, py::handle id) { return s.dec.push(to_id(*s.tok, id)); }, py::arg("id"))
        .def("flush", [](PyStreamDecoder& s) { return s.dec.flush(); });
}

}  // namespace owl
