// Pieces shared by the tokenizer implementations (not part of the public API).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "owl/tokenizer.h"

namespace owl::detail {

// Token type of `id` (vocab.types may be empty: everything Normal).
inline TokenType token_type(const VocabData& v, int32_t id) {
    return v.types.empty() ? TokenType::Normal : static_cast<TokenType>(v.types[static_cast<size_t>(id)]);
}

// A stretch of the input: either plain text to tokenize or one special token already recognised.
struct Fragment {
    int32_t token = -1;     // >= 0: a special token
    std::string_view text;  // plain text (token < 0)
};

// Finds Control and UserDefined token texts in raw text, longest match first at the leftmost
// position (what HF's added-vocabulary splitter does). UserDefined tokens are always matched;
// Control tokens only when parse_special (as llama.cpp does), so untrusted text cannot inject them.
class SpecialMatcher {
public:
    explicit SpecialMatcher(const VocabData& v);
    std::vector<Fragment> split(std::string_view text, bool parse_special) const;

private:
    struct Entry {
        std::string text;
        int32_t id;
        bool control;
    };
    std::array<std::vector<Entry>, 256> by_first_byte_;  // each list longest first
    bool any_ = false;
};

// Applies the dummy-prefix rule of sentencepiece's decoder and renders tokens; shared by
// Tokenizer::decode and StreamDecoder so both give the same bytes.
void append_token(const Tokenizer& tok, int32_t id, bool render_special, bool& bos_ws, std::string& out);

// BERT's BasicTokenizer (tokenizer_wpm.cpp): the words of `text` as code points, lowercased, accents
// stripped, punctuation split off; what WordPiece then segments.
std::vector<std::vector<uint32_t>> bert_basic_tokens(std::string_view text);

// Builders; `vocab` has been validated by Tokenizer::create.
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const VocabData& vocab);
std::unique_ptr<Tokenizer> make_spm_tokenizer(const VocabData& vocab);
std::unique_ptr<Tokenizer> make_wpm_tokenizer(const VocabData& vocab);

}  // namespace owl::detail
