// Tokenizer::create (validation + dispatch on tokenizer.ggml.model), the special-token splitter,
// decoding shared by both models, and StreamDecoder.
#include <algorithm>
#include <limits>
#include <stdexcept>

#include "owl/error.h"
#include "owl/tokenizer.h"
#include "tokenizer_impl.h"
#include "unicode.h"

namespace owl {

namespace {

// A token text fit for an error message: valid UTF-8, at most ~40 bytes, quoted.
std::string quote(std::string_view s) {
    std::string t = unicode::sanitize_utf8(s.substr(0, 40));
    return "'" + t + (s.size() > 40 ? "...'" : "'");
}

void check_special_id(const char* key, int32_t id, size_t n) {
    if (id == -1) return;
    if (id < 0 || static_cast<size_t>(id) >= n)
        throw FormatError(std::string(key) + " = " + std::to_string(id) + " is out of range (the vocabulary has " +
                          std::to_string(n) + " tokens)");
}

void validate(const VocabData& v) {
    if (v.model != "gpt2" && v.model != "llama" && v.model != "bert")
        throw FormatError("tokenizer.ggml.model: unsupported tokenizer model " + quote(v.model) +
                          " (expected 'gpt2', 'llama' or 'bert')");
    const size_t n = v.tokens.size();
    if (n == 0) throw FormatError("tokenizer.ggml.tokens is empty");
    if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
        throw FormatError("tokenizer.ggml.tokens has too many entries (" + std::to_string(n) + ")");
    if (!v.scores.empty() && v.scores.size() != n)
        throw FormatError("tokenizer.ggml.scores has " + std::to_string(v.scores.size()) +
                          " entries but tokenizer.ggml.tokens has " + std::to_string(n));
    if (v.model == "llama" && v.scores.empty())
        throw FormatError("tokenizer.ggml.scores is required for tokenizer model 'llama'");
    if (!v.types.empty() && v.types.size() != n)
        throw FormatError("tokenizer.ggml.token_type has " + std::to_string(v.types.size()) +
                          " entries but tokenizer.ggml.tokens has " + std::to_string(n));
    for (size_t i = 0; i < v.types.size(); ++i)
        if (v.types[i] < 0 || v.types[i] > static_cast<int32_t>(TokenType::Byte))
            throw FormatError("tokenizer.ggml.token_type[" + std::to_string(i) + "] = " + std::to_string(v.types[i]) +
                              " (token " + quote(v.tokens[i]) + ") is not a valid token type (0..6)");
    check_special_id("tokenizer.ggml.bos_token_id", v.bos_id, n);
    check_special_id("tokenizer.ggml.eos_token_id", v.eos_id, n);
    check_special_id("tokenizer.ggml.unknown_token_id", v.unk_id, n);
    check_special_id("tokenizer.ggml.padding_token_id", v.pad_id, n);
    if (v.add_bos && v.bos_id < 0)
        throw FormatError("tokenizer.ggml.add_bos_token is set but tokenizer.ggml.bos_token_id is missing");
    if (v.add_eos && v.eos_id < 0)
        throw FormatError("tokenizer.ggml.add_eos_token is set but tokenizer.ggml.eos_token_id is missing");
    if (v.model == "bert" && v.unk_id < 0)
        throw FormatError("tokenizer.ggml.unknown_token_id is required for tokenizer model 'bert' (WordPiece "
                          "turns a word it cannot split into [UNK])");
}

void check_id(const Tokenizer& t, int32_t id) {
    if (id < 0 || id >= t.n_vocab())
        throw std::out_of_range("token id " + std::to_string(id) + " is out of range [0, " +
                                std::to_string(t.n_vocab()) + ")");
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::create(const VocabData& vocab) {
    validate(vocab);
    if (vocab.model == "gpt2") return detail::make_bpe_tokenizer(vocab);  // merges/pre checked there
    if (vocab.model == "bert") return detail::make_wpm_tokenizer(vocab);
    return detail::make_spm_tokenizer(vocab);
}

TokenType Tokenizer::token_type(int32_t id) const {
    check_id(*this, id);
    return detail::token_type(vocab(), id);
}

bool Tokenizer::is_control(int32_t id) const { return token_type(id) == TokenType::Control; }

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool render_special) const {
    std::string out;
    bool bos_ws = true;
    for (int32_t id : ids) detail::append_token(*this, id, render_special, bos_ws, out);
    return out;
}

std::string Tokenizer::decode_partial(const std::vector<int32_t>& ids, bool render_special, size_t& stable) const {
    std::string out = decode(ids, render_special);
    stable = out.size();
    return out;
}

namespace detail {

void append_token(const Tokenizer& tok, int32_t id, bool render_special, bool& bos_ws, std::string& out) {
    const std::string piece = tok.token_to_bytes(id, render_special);
    if (bos_ws) {
        const VocabData& v = tok.vocab();
        // sentencepiece: the first non-byte piece, if nothing was output before it, loses the one
        // space the dummy prefix put in front of the text.
        if (v.model == "llama" && v.add_space_prefix && token_type(v, id) != TokenType::Byte && !piece.empty() &&
            piece[0] == ' ') {
            out.append(piece, 1, std::string::npos);
            bos_ws = false;
            return;
        }
        if (!piece.empty()) bos_ws = false;
    }
    out += piece;
}

SpecialMatcher::SpecialMatcher(const VocabData& v) {
    for (size_t i = 0; i < v.tokens.size(); ++i) {
        const TokenType t = token_type(v, static_cast<int32_t>(i));
        if ((t != TokenType::Control && t != TokenType::UserDefined) || v.tokens[i].empty()) continue;
        by_first_byte_[static_cast<unsigned char>(v.tokens[i][0])].push_back(
            {v.tokens[i], static_cast<int32_t>(i), t == TokenType::Control});
        any_ = true;
    }
    for (auto& list : by_first_byte_)
        std::stable_sort(list.begin(), list.end(),
                         [](const Entry& a, const Entry& b) { return a.text.size() > b.text.size(); });
}

std::vector<Fragment> SpecialMatcher::split(std::string_view text, bool parse_special) const {
    std::vector<Fragment> out;
    size_t start = 0, i = 0;
    while (any_ && i < text.size()) {
        const Entry* hit = nullptr;
        for (const Entry& e : by_first_byte_[static_cast<unsigned char>(text[i])]) {
            if (e.control && !parse_special) continue;
            if (text.compare(i, e.text.size(), e.text) == 0) {
                hit = &e;  // longest first, so the first hit is the longest
                break;
            }
        }
        if (!hit) {
            ++i;
            continue;
        }
        if (i > start) out.push_back({-1, text.substr(start, i - start)});
        out.push_back({hit->id, {}});
        i += hit->text.size();
        start = i;
    }
    if (start < text.size()) out.push_back({-1, text.substr(start)});
    return out;
}

}  // namespace detail

// ---------------------------------------------------------------- StreamDecoder

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool render_special) : tok_(tok), render_special_(render_special) {}

std::string StreamDecoder::push(int32_t id) {
    if (tok_.contextual_decode()) {
        tok_.token_type(id);  // range check before the id joins the history
        ids_.push_back(id);
        size_t stable;
        const std::string text = tok_.decode_partial(ids_, render_special_, stable);  // range-checks id
        // The stable prefix only grows; what went out is a prefix of every later decode.
        if (stable > emitted_) {
            pending_.append(text, emitted_, stable - emitted_);
            emitted_ = stable;
        }
    } else {
        detail::append_token(tok_, id, render_special_, first_, pending_);
    }
    return take_complete();
}

std::string StreamDecoder::take_complete() {
    std::string out;
    size_t i = 0;
    while (i < pending_.size()) {
        size_t len;
        uint32_t cp;
        const auto st = unicode::utf8_check(pending_.data() + i, pending_.size() - i, len, cp);
        if (st == unicode::Utf8Status::Incomplete) break;  // wait for the rest of the character
        if (st == unicode::Utf8Status::Valid) out.append(pending_, i, len);
        else out += "\xEF\xBF\xBD";  // can never become valid: same U+FFFD decode() + replace gives
        i += len;
    }
    pending_.erase(0, i);
    return out;
}

std::string StreamDecoder::flush() {
    if (tok_.contextual_decode() && !ids_.empty()) {
        const std::string text = tok_.decode(ids_, render_special_);  // the final text: nothing held back now
        if (text.size() > emitted_) pending_.append(text, emitted_, std::string::npos);
        ids_.clear();
        emitted_ = 0;
    }
    std::string out = unicode::sanitize_utf8(pending_);
    pending_.clear();
    return out;
}

}  // namespace owl
