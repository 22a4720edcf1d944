// BERT WordPiece (tokenizer.ggml.model "bert"), as bert-*-uncased tokenizes in transformers' BertTokenizer
// (and `tokenizers`' BertWordPieceTokenizer with lowercase + strip_accents):
//   BasicTokenizer: drop NUL, U+FFFD and control characters (category C*), whitespace -> space, spaces around
//   CJK ideographs, split on whitespace; per word: lowercase (str.lower), NFD, drop nonspacing marks (Mn),
//   split off every punctuation character as a word of its own.
//   WordPiece: greedy longest match first from the left, continuation pieces prefixed "##"; a word with no
//   segmentation, or longer than 100 code points, becomes the one [UNK].
// Invalid UTF-8 bytes in the text are dropped, as U+FFFD is (what decoding with errors="replace" gives).
// decode follows the slow BertTokenizer: tokens joined by spaces, " ##" removed, strip, then transformers'
// clean_up_tokenization (" ." -> "." ... " ' " -> "'", " n't" -> "n't" ...). That clean-up looks at the
// neighbours of a token, so streaming holds back the few trailing bytes a later token could still change.
#include <algorithm>
#include <unordered_map>

#include "tokenizer_impl.h"
#include "unicode.h"
#include "unicode_bert.h"

namespace owl::detail {

namespace {

constexpr size_t kMaxWordChars = 100;  // BERT's max_input_chars_per_word

using unicode::BertClass;

// One `str.replace(pat, rep)` pass that also carries the "dirty" start: bytes at or after `dirty` may still
// change when more text is appended, so may a match that reaches them. Returns the new string; `dirty`
// moves to the matching place in it.
std::string replace_tracked(const std::string& s, std::string_view pat, std::string_view rep, size_t& dirty) {
    // A match may still appear at p only where the fixed text s[p, dirty) agrees with the start of `pat`;
    // every match before the first such p is decided already.
    size_t cut = dirty;
    for (size_t p = dirty >= pat.size() - 1 ? dirty - (pat.size() - 1) : 0; p < dirty; ++p) {
        if (s.compare(p, dirty - p, pat, 0, dirty - p) == 0) {
            cut = p;
            break;
        }
    }
    std::string out;
    out.reserve(s.size());
    size_t i = 0, stable_in = 0, stable_out = 0;  // end of the last stable match, in s and in out
    for (size_t j; (j = s.find(pat, i)) != std::string::npos; i = j + pat.size()) {
        out.append(s, i, j - i);
        out.append(rep);
        if (j < cut) {
            stable_in = j + pat.size();
            stable_out = out.size();
        }
    }
    out.append(s, i, std::string::npos);
    dirty = stable_out + (std::max(cut, stable_in) - stable_in);
    return out;
}

// Python's str.strip() on UTF-8 (invalid bytes are not space), carrying `dirty` as above: trailing
// whitespace may survive once more text follows it, and leading whitespace is stable only once
// something else follows it.
std::string strip_tracked(const std::string& s, size_t& dirty) {
    size_t first = std::string::npos, end = 0;  // [first, end): from the first to past the last non-space
    for (size_t i = 0; i < s.size();) {
        size_t len;
        uint32_t cp;
        const bool valid = unicode::utf8_check(s.data() + i, s.size() - i, len, cp) == unicode::Utf8Status::Valid;
        if (!valid || !unicode::is_python_space(cp)) {
            if (first == std::string::npos) first = i;
            end = i + len;
        }
        i += len;
    }
    if (first == std::string::npos) {
        dirty = 0;
        return {};
    }
    if (first >= dirty) dirty = first;  // nothing stable after the leading spaces yet
    dirty = std::min(dirty, end) - std::min(dirty, first);
    return s.substr(first, end - first);
}

// The slow BertTokenizer's convert_tokens_to_string + clean_up_tokenization. `dirty` (output): the length of
// the prefix of the result that no token appended later can change.
std::string join_and_clean(const std::vector<std::string_view>& toks, size_t& dirty) {
    std::string s;
    for (size_t i = 0; i < toks.size(); ++i) {
        if (i) s += ' ';
        s.append(toks[i]);
    }
    dirty = s.size();
    s = replace_tracked(s, " ##", "", dirty);
    s = strip_tracked(s, dirty);
    static const std::pair<std::string_view, std::string_view> kCleanup[] = {
        {" .", "."},     {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
        {" n't", "n't"}, {" 'm", "'m"},   {" 's", "'s"},   {" 've", "'ve"}, {" 're", "'re"},
    };
    for (const auto& [pat, rep] : kCleanup) s = replace_tracked(s, pat, rep, dirty);
    return s;
}

// One whitespace-separated token: lowercase, strip accents, split off punctuation.
void split_word(const std::vector<uint32_t>& tok, std::vector<std::vector<uint32_t>>& words) {
    std::vector<uint32_t> cur;
    for (uint32_t cp : unicode::nfd(unicode::python_lower(tok))) {
        const BertClass c = unicode::bert_class(cp);
        if (c == BertClass::Mark) continue;
        if (c == BertClass::Punctuation) {
            if (!cur.empty()) words.push_back(std::move(cur));
            cur.clear();
            words.push_back({cp});
        } else {
            cur.push_back(cp);
        }
    }
    if (!cur.empty()) words.push_back(std::move(cur));
}


bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

class WpmTokenizer final : public Tokenizer {
public:
    explicit WpmTokenizer(const VocabData& v) : v_(v), specials_(v_) {
        ids_.reserve(v_.tokens.size());
        for (size_t i = 0; i < v_.tokens.size(); ++i) {
            ids_[v_.tokens[i]] = static_cast<int32_t>(i);  // a repeated token: the last id, as BERT's vocab dict
            max_token_bytes_ = std::max(max_token_bytes_, v_.tokens[i].size());
        }
    }

    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const override {
        std::vector<int32_t> out;
        if (add_special && v_.add_bos) out.push_back(v_.bos_id);
        for (const Fragment& f : specials_.split(text, parse_special)) {
            if (f.token >= 0) {
                out.push_back(f.token);
                continue;
            }
            for (const std::vector<uint32_t>& word : bert_basic_tokens(f.text)) wordpiece(word, out);
        }
        if (add_special && v_.add_eos) out.push_back(v_.eos_id);
        return out;
    }

    // What the token adds after another one: " word", "##piece" -> "piece", and the punctuation that
    // decode's clean-up glues to the word before ("." "," "?" "!", "'s" ...) without the space.
    std::string token_to_bytes(int32_t id, bool render_special) const override {
        const TokenType t = token_type(id);  // range-checked
        if (hidden(t) && !render_special) return {};
        const std::string& s = v_.tokens[static_cast<size_t>(id)];
        if (starts_with(s, "##")) return s.substr(2);
        for (std::string_view glued : {".", "?", "!", ",", "n't", "'m", "'s", "'ve", "'re"})
            if (starts_with(s, glued)) return s;
        return " " + s;
    }

    std::string decode(const std::vector<int32_t>& ids, bool render_special) const override {
        size_t stable;
        return decode_partial(ids, render_special, stable);
    }

    bool contextual_decode() const override { return true; }

    std::string decode_partial(const std::vector<int32_t>& ids, bool render_special, size_t& stable) const override {
        std::vector<std::string_view> toks;
        toks.reserve(ids.size());
        for (int32_t id : ids) {
            const TokenType t = token_type(id);  // range-checked
            if (render_special || !hidden(t)) toks.push_back(v_.tokens[static_cast<size_t>(id)]);
        }
        return join_and_clean(toks, stable);
    }

    int32_t n_vocab() const override { return static_cast<int32_t>(v_.tokens.size()); }
    const VocabData& vocab() const override { return v_; }

private:
    static bool hidden(TokenType t) {
        return t == TokenType::Control || t == TokenType::Unknown || t == TokenType::Unused;
    }

    // Greedy longest-match-first WordPiece of one word.
    void wordpiece(const std::vector<uint32_t>& word, std::vector<int32_t>& out) const {
        if (word.size() > kMaxWordChars) {
            out.push_back(v_.unk_id);
            return;
        }
        std::string bytes;
        std::vector<size_t> offset;  // byte offset of every code point, and the end
        for (uint32_t cp : word) {
            offset.push_back(bytes.size());
            unicode::append_utf8(bytes, cp);
        }
        offset.push_back(bytes.size());
        const size_t first = out.size();
        std::string key;
        for (size_t start = 0; start < word.size();) {
            int32_t found = -1;
            size_t end = word.size();
            for (; end > start; --end) {
                const size_t n = offset[end] - offset[start] + (start ? 2 : 0);
                if (n > max_token_bytes_) continue;  // longer than any token
                key.assign(start ? "##" : "");
                key.append(bytes, offset[start], offset[end] - offset[start]);
                const auto it = ids_.find(key);
                if (it != ids_.end()) {
                    found = it->second;
                    break;
                }
            }
            if (found < 0) {  // no piece fits: the whole word is unknown
                out.resize(first);
                out.push_back(v_.unk_id);
                return;
            }
            out.push_back(found);
            start = end;
        }
    }

    VocabData v_;
    SpecialMatcher specials_;
    std::unordered_map<std::string, int32_t> ids_;
    size_t max_token_bytes_ = 0;
};

}  // namespace

// BasicTokenizer: the words of `text`, as code points.
std::vector<std::vector<uint32_t>> bert_basic_tokens(std::string_view text) {
    // Clean-up and spaces around CJK ideographs.
    std::vector<uint32_t> cleaned;
    cleaned.reserve(text.size());
    for (uint32_t cp : unicode::decode_utf8(text)) {
        if (cp == 0 || cp == 0xFFFD || cp >= unicode::kInvalidByteBase) continue;
        const BertClass c = unicode::bert_class(cp);
        if (c == BertClass::Control) continue;
        if (c == BertClass::Whitespace) cp = ' ';
        if (unicode::is_cjk_ideograph(cp)) {
            cleaned.insert(cleaned.end(), {' ', cp, ' '});
        } else {
            cleaned.push_back(cp);
        }
    }
    std::vector<std::vector<uint32_t>> words;
    size_t i = 0;
    while (i < cleaned.size()) {
        if (unicode::is_python_space(cleaned[i])) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < cleaned.size() && !unicode::is_python_space(cleaned[j])) ++j;
        split_word(std::vector<uint32_t>(cleaned.begin() + static_cast<std::ptrdiff_t>(i),
                                         cleaned.begin() + static_cast<std::ptrdiff_t>(j)),
                   words);
        i = j;
    }
    return words;
}

std::unique_ptr<Tokenizer> make_wpm_tokenizer(const VocabData& vocab) { return std::make_unique<WpmTokenizer>(vocab); }

}  // namespace owl::detail
