// The byte-level BPE pre-tokenizers (tokenizer.ggml.pre): llama.cpp's names, each a list of regexes that
// split the text in turn (every regex inside the pieces of the one before; matches and the text between
// them both become pieces, HF `tokenizers` Split behaviour "isolated"). The regexes are hand-written
// matchers (pretokenize_rules.h; no std::regex: too slow, no \p{..}) that follow Oniguruma's
// leftmost-first alternation, the engine inside HF `tokenizers`.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "unicode.h"

namespace owl::detail {

using Span = std::pair<size_t, size_t>;  // [begin, end) in code points

// The text the rules look at: code points with their classes, worked out once.
struct PreText {
    std::vector<uint32_t> cps;
    std::vector<unicode::CharClass> cls;   // letter / number / space / other
    std::vector<unicode::Category> cat;    // general category group
    std::vector<uint32_t> space_end;       // end of the whitespace run at i (i itself if not a space)
};
PreText make_pre_text(std::vector<uint32_t> cps);
void fill_pre_text(PreText& t, std::vector<uint32_t>&& cps);  // the same, reusing t's buffers

// One regex: the length of its match starting exactly at `pos` (0: none), inside a piece that ends at
// `end` (anchors and look-aheads see `end` as the end of the text, as HF and llama.cpp do per piece).
using SplitRule = size_t (*)(const PreText& t, size_t pos, size_t end);

struct PreTokenizer {
    std::vector<std::string> names;  // tokenizer.ggml.pre values with this behaviour
    std::vector<SplitRule> rules;    // applied in order
    bool nfc = false;                // the HF tokenizer NFC-normalizes first (Qwen2, Command-R)
    bool ignore_merges = false;      // a piece that is a token as a whole is that token (Llama 3, Tekken)
    bool byte_digits = false;        // Falcon: HF's Digits + [0-9]{3} split run after the byte-level map
    bool add_bos = false;            // llama.cpp adds BOS when the GGUF has no tokenizer.ggml.add_bos_token
};

// The pre-tokenizer of a tokenizer.ggml.pre value ("" = missing key: llama.cpp's default), or nullptr.
const PreTokenizer* find_pre_tokenizer(std::string_view name);
// Every supported name, comma separated (for error messages).
std::string pre_tokenizer_names();

// The pieces of the whole text, in order, covering it.
void pre_split(const PreTokenizer& p, const PreText& t, std::vector<Span>& out);

// Falcon's split after the byte-level map: runs of bytes whose byte-level character is numeric (0-9, and
// the Latin-1 digits ¹²³¼½¾ that stand for bytes B9 B2 B3 BC BD BE) are cut out, and three ASCII digits
// in a row are a piece of their own. `word` is the raw bytes of one piece; out gets [begin, end) byte ranges.
void split_byte_digits(std::string_view word, std::vector<Span>& out);

}  // namespace owl::detail
