// owl_cpp._testing.unicode: the tokenizers' Unicode pieces on their own, so tests can compare them with
// Python's unicodedata / str methods over every code point at once.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "owl/error.h"
#include "pretokenize.h"
#include "testing.h"
#include "tokenizer_impl.h"
#include "unicode.h"
#include "unicode_bert.h"

namespace py = pybind11;

namespace owl::testing {

namespace {

std::string utf8(const std::vector<uint32_t>& cps) { return unicode::encode_utf8(cps.data(), cps.size()); }

}  // namespace

void bind_unicode(py::module_& parent) {
    py::module_ m = parent.def_submodule("unicode", "Unicode helpers of the tokenizers (tests only)");
    m.def("nfd", [](const std::string& s) { return utf8(unicode::nfd(unicode::decode_utf8(s))); }, py::arg("text"));
    m.def("python_lower", [](const std::string& s) { return utf8(unicode::python_lower(unicode::decode_utf8(s))); },
          py::arg("text"), "str.lower as the WordPiece tokenizer computes it");
    m.def("bert_class", [](uint32_t cp) { return static_cast<int>(unicode::bert_class(cp)); }, py::arg("cp"),
          "0 other, 1 control (removed), 2 whitespace, 3 punctuation, 4 nonspacing mark");
    m.def("bert_basic_tokens", [](const std::string& s) {
        std::vector<std::string> out;
        for (const auto& w : detail::bert_basic_tokens(s)) out.push_back(utf8(w));
        return out;
    }, py::arg("text"), "the words BERT's BasicTokenizer hands to WordPiece");
    m.def("category", [](uint32_t cp) { return static_cast<int>(unicode::category(cp)); }, py::arg("cp"),
          "0 other, 1 Lu, 2 Ll, 3 Lt, 4 Lm, 5 Lo, 6 M, 7 N, 8 P, 9 S");
    m.def("pre_tokenize", [](const std::string& pre, const std::string& s) {
        const detail::PreTokenizer* p = detail::find_pre_tokenizer(pre);
        if (!p) throw FormatError("unknown pre-tokenizer '" + pre + "'");
        std::vector<uint32_t> cps = unicode::decode_utf8(s);
        if (p->nfc) cps = unicode::nfc(cps);
        const detail::PreText t = detail::make_pre_text(std::move(cps));
        std::vector<detail::Span> spans;
        detail::pre_split(*p, t, spans);
        std::vector<std::string> out;
        for (const auto& [b, e] : spans) out.push_back(unicode::encode_utf8(t.cps.data() + b, e - b));
        return out;
    }, py::arg("pre"), py::arg("text"), "the pieces a tokenizer.ggml.pre splits text into (after its NFC, if any)");
    m.attr("bert_unicode_version") = unicode::bert_unicode_version();
}

}  // namespace owl::testing
