// Byte-level BPE (tokenizer.ggml.model "gpt2"), matching HF `tokenizers` on the published tokenizer.json
// files: special tokens split out of the raw text, NFC where the model has it, the pre-tokenizer named by
// tokenizer.ggml.pre (pretokenize.h), GPT-2's byte->unicode map, then merges applied lowest rank first
// (ties: leftmost) with a priority queue over a linked list.
#include <algorithm>
#include <array>
#include <unordered_map>

#include "owl/error.h"
#include "pretokenize.h"
#include "tokenizer_impl.h"
#include "unicode.h"

namespace owl::detail {

namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes are
// shifted to U+0100.. so every byte is a visible character.
std::array<uint32_t, 256> byte_to_codepoint() {
    std::array<uint32_t, 256> map{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        map[b] = printable ? b : next++;
    }
    return map;
}

// Token text in byte-level form -> raw bytes; false if some character is not a byte character.
bool bytes_from_byte_level(const std::string& text, std::string& out) {
    static const std::array<int, 324> inverse = [] {
        std::array<int, 324> inv;
        inv.fill(-1);
        const auto fwd = byte_to_codepoint();
        for (int b = 0; b < 256; ++b) inv[fwd[b]] = b;
        return inv;
    }();
    out.clear();
    for (uint32_t cp : unicode::decode_utf8(text)) {
        if (cp >= inverse.size() || inverse[cp] < 0) return false;
        out += static_cast<char>(inverse[cp]);
    }
    return true;
}

class BpeTokenizer final : public Tokenizer {
public:
    explicit BpeTokenizer(const VocabData& v) : v_(v), specials_(v_) {
        pre_ = find_pre_tokenizer(v_.pre);
        if (!pre_)
            throw FormatError("tokenizer.ggml.pre: unsupported pre-tokenizer '" + unicode::sanitize_utf8(v_.pre) +
                              "' for tokenizer model 'gpt2' (supported: " + pre_tokenizer_names() + ")");
        build_lookup();
        build_pieces();
    }

    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const override {
        std::vector<int32_t> out;
        if (add_special && v_.add_bos) out.push_back(v_.bos_id);
        Work w;
        for (const Fragment& f : specials_.split(text, parse_special)) {
            if (f.token >= 0) out.push_back(f.token);
            else encode_text(f.text, out, w);
        }
        if (add_special && v_.add_eos) out.push_back(v_.eos_id);
        return out;
    }

    std::string token_to_bytes(int32_t id, bool render_special) const override {
        const TokenType t = token_type(id);  // range-checked
        const bool hidden = t == TokenType::Control || t == TokenType::Unknown || t == TokenType::Unused;
        return hidden && !render_special ? std::string() : pieces_[static_cast<size_t>(id)];
    }

    int32_t n_vocab() const override { return static_cast<int32_t>(v_.tokens.size()); }
    const VocabData& vocab() const override { return v_; }

private:
    struct Merge {
        int32_t rank, id;
    };
    struct Symbol {
        int32_t id, prev, next;
        bool alive;
    };
    struct Candidate {  // a pair (pos, next of pos) that merges into `id`
        int32_t rank, pos, id;
        bool operator<(const Candidate& o) const {  // max-heap order: "less" = higher rank, or further right
            return rank != o.rank ? rank > o.rank : pos > o.pos;
        }
    };
    struct Work {  // scratch reused across the words of one encode call
        std::vector<Symbol> syms;
        std::vector<Candidate> heap;
        std::vector<Span> spans, parts;
        std::string level;  // a piece in byte-level characters
        PreText text;
    };

    static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

    void build_lookup() {
        std::unordered_map<std::string_view, int32_t> ids;
        ids.reserve(v_.tokens.size());
        for (size_t i = 0; i < v_.tokens.size(); ++i) ids.emplace(v_.tokens[i], static_cast<int32_t>(i));

        const auto b2c = byte_to_codepoint();
        for (int b = 0; b < 256; ++b) {
            std::string& s = byte_char_[b];
            unicode::append_utf8(s, b2c[b]);
            const auto it = ids.find(s);
            byte_token_[b] = it == ids.end() ? -1 : it->second;
        }
        if (pre_->ignore_merges)
            for (const auto& [text, id] : ids)
                if (detail::token_type(v_, id) == TokenType::Normal) whole_words_.emplace(text, id);

        merges_.reserve(v_.merges.size());
        std::string joined;
        for (size_t i = 0; i < v_.merges.size(); ++i) {
            const std::string& m = v_.merges[i];
            const size_t sp = m.find(' ', 1);
            const std::string where = "tokenizer.ggml.merges[" + std::to_string(i) + "] = '" +
                                      unicode::sanitize_utf8(m.substr(0, 80)) + "'";
            if (sp == std::string::npos || sp + 1 >= m.size())
                throw FormatError(where + " is not of the form 'left right'");
            const std::string_view left(m.data(), sp), right(m.data() + sp + 1, m.size() - sp - 1);
            joined.assign(left).append(right);
            for (std::string_view part : {left, right, std::string_view(joined)})
                if (!ids.count(part))
                    throw FormatError(where + " names token '" + unicode::sanitize_utf8(std::string(part)) +
                                      "' that is not in tokenizer.ggml.tokens");
            // A repeated pair keeps its last rank, as HF's merge map does.
            merges_[key(ids[left], ids[right])] = Merge{static_cast<int32_t>(i), ids[joined]};
        }
    }

    void build_pieces() {
        pieces_.resize(v_.tokens.size());
        std::string bytes;
        for (size_t i = 0; i < v_.tokens.size(); ++i) {
            const TokenType t = detail::token_type(v_, static_cast<int32_t>(i));
            const bool raw = t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown ||
                             t == TokenType::Unused;
            // Added tokens are stored as plain text; so is any token with a non-byte character
            // (HF's ByteLevel decoder falls back to the token's UTF-8 in that case too).
            pieces_[i] = (!raw && bytes_from_byte_level(v_.tokens[i], bytes)) ? bytes : v_.tokens[i];
        }
    }

    void encode_text(std::string_view text, std::vector<int32_t>& out, Work& w) const {
        std::vector<uint32_t> cps = unicode::decode_utf8(text);
        if (pre_->nfc) cps = unicode::nfc(cps);
        fill_pre_text(w.text, std::move(cps));
        const PreText& t = w.text;
        pre_split(*pre_, t, w.spans);
        std::string word;
        for (const Span& s : w.spans) {
            word.clear();
            for (size_t i = s.first; i < s.second; ++i) unicode::append_utf8(word, t.cps[i]);
            if (!pre_->byte_digits) {
                encode_piece(word, out, w);
                continue;
            }
            split_byte_digits(word, w.parts);
            for (const Span& p : w.parts) encode_piece(word.substr(p.first, p.second - p.first), out, w);
        }
    }

    void encode_piece(const std::string& piece, std::vector<int32_t>& out, Work& w) const {
        if (!whole_words_.empty()) {  // ignore_merges: a piece that is a token is that token
            w.level.clear();
            for (unsigned char b : piece) w.level += byte_char_[b];
            const auto it = whole_words_.find(w.level);
            if (it != whole_words_.end()) {
                out.push_back(it->second);
                return;
            }
        }
        bpe_word(piece, out, w);
    }

    void bpe_word(const std::string& word, std::vector<int32_t>& out, Work& w) const {
        auto& syms = w.syms;
        syms.clear();
        for (unsigned char b : word) {
            int32_t id = byte_token_[b];
            if (id < 0) id = v_.unk_id;  // a vocabulary without this byte: unk, or dropped (as HF does)
            if (id < 0) continue;
            const auto n = static_cast<int32_t>(syms.size());
            syms.push_back({id, n - 1, n + 1, true});
        }
        if (syms.empty()) return;
        syms.back().next = -1;

        auto& heap = w.heap;  // a binary heap whose front is the lowest rank, then the leftmost pair
        heap.clear();
        auto consider = [&](int32_t pos) {
            const Symbol& s = syms[static_cast<size_t>(pos)];
            if (s.next < 0) return;
            const auto it = merges_.find(key(s.id, syms[static_cast<size_t>(s.next)].id));
            if (it == merges_.end()) return;
            heap.push_back({it->second.rank, pos, it->second.id});
            std::push_heap(heap.begin(), heap.end());
        };
        for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i);

        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end());
            const Candidate top = heap.back();
            heap.pop_back();
            Symbol& s = syms[static_cast<size_t>(top.pos)];
            if (!s.alive || s.next < 0) continue;
            Symbol& r = syms[static_cast<size_t>(s.next)];
            // Stale entry: the pair at pos changed since it was queued (HF checks the merged id).
            const auto it = merges_.find(key(s.id, r.id));
            if (it == merges_.end() || it->second.id != top.id) continue;
            s.id = top.id;
            r.alive = false;
            s.next = r.next;
            if (r.next >= 0) syms[static_cast<size_t>(r.next)].prev = top.pos;
            if (s.prev >= 0) consider(s.prev);
            consider(top.pos);
        }
        for (int32_t i = 0; i >= 0; i = syms[static_cast<size_t>(i)].next) out.push_back(syms[static_cast<size_t>(i)].id);
    }

    VocabData v_;
    SpecialMatcher specials_;
    const PreTokenizer* pre_ = nullptr;
    std::array<std::string, 256> byte_char_;           // each byte's byte-level character (UTF-8)
    std::unordered_map<std::string, int32_t> whole_words_;  // ignore_merges: normal token text -> id
    std::array<int32_t, 256> byte_token_{};            // token of each byte's byte-level character
    std::unordered_map<uint64_t, Merge> merges_;       // (left id, right id) -> rank, merged id
    std::vector<std::string> pieces_;                  // raw bytes of every token
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const VocabData& vocab) { return std::make_unique<BpeTokenizer>(vocab); }

}  // namespace owl::detail
