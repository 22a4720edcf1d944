// SentencePiece-style BPE (tokenizer.ggml.model "llama"), matching sentencepiece's BPE model with
// LLaMA's settings (identity normalization, dummy prefix, byte fallback): spaces become U+2581,
// adjacent pieces merge best score first (ties: leftmost), pieces missing from the vocabulary
// fall back to <0xXX> byte tokens. Special-token handling follows llama.cpp.
#include <algorithm>
#include <array>
#include <cstdio>
#include <unordered_map>

#include "tokenizer_impl.h"
#include "unicode.h"

namespace owl::detail {

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (true) {
        const size_t j = s.find(from, i);
        out.append(s.substr(i, j == std::string_view::npos ? std::string_view::npos : j - i));
        if (j == std::string_view::npos) return out;
        out.append(to);
        i = j + from.size();
    }
}

// "<0xAB>" -> 0xAB, or -1.
int parse_byte_token(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
    const int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class SpmTokenizer final : public Tokenizer {
public:
    explicit SpmTokenizer(const VocabData& v) : v_(v), specials_(v_) {
        ids_.reserve(v_.tokens.size());
        byte_token_.fill(-1);
        pieces_.resize(v_.tokens.size());
        for (size_t i = 0; i < v_.tokens.size(); ++i) {
            const auto id = static_cast<int32_t>(i);
            const std::string& t = v_.tokens[i];
            ids_.emplace(t, id);
            const int byte = parse_byte_token(t);
            if (byte >= 0 && byte_token_[byte] < 0) byte_token_[byte] = id;
            const TokenType type = detail::token_type(v_, id);
            if (type == TokenType::Byte && byte >= 0) pieces_[i] = std::string(1, static_cast<char>(byte));
            else if (hidden(type)) pieces_[i] = t;
            else pieces_[i] = replace_all(t, kSpace, " ");
        }
    }

    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const override {
        std::vector<int32_t> out;
        if (add_special && v_.add_bos) out.push_back(v_.bos_id);
        // llama.cpp: each text fragment at the start or right after a special token gets the dummy prefix.
        bool prev_special = true;
        for (const Fragment& f : specials_.split(text, parse_special)) {
            if (f.token >= 0) {
                out.push_back(f.token);
                prev_special = true;
                continue;
            }
            std::string s = (v_.add_space_prefix && prev_special) ? " " : "";
            s.append(f.text);
            encode_piece(replace_all(s, " ", kSpace), out);
            prev_special = false;
        }
        if (add_special && v_.add_eos) out.push_back(v_.eos_id);
        return out;
    }

    std::string token_to_bytes(int32_t id, bool render_special) const override {
        const TokenType t = token_type(id);  // range-checked
        return hidden(t) && !render_special ? std::string() : pieces_[static_cast<size_t>(id)];
    }

    int32_t n_vocab() const override { return static_cast<int32_t>(v_.tokens.size()); }
    const VocabData& vocab() const override { return v_; }

private:
    struct Symbol {
        const char* text;
        size_t n;  // 0: merged away
        int32_t prev, next;
    };
    struct Bigram {
        int32_t left, right;
        float score;
        size_t size;
        bool operator<(const Bigram& o) const {  // max-heap: best score first, then leftmost
            return score != o.score ? score < o.score : left > o.left;
        }
    };

    static bool hidden(TokenType t) {
        return t == TokenType::Control || t == TokenType::Unknown || t == TokenType::Unused;
    }

    // Id of a piece that BPE may produce (sentencepiece: normal, user-defined and unused pieces).
    int32_t mergeable(std::string_view s) const {
        const auto it = ids_.find(s);
        if (it == ids_.end()) return -1;
        const TokenType t = detail::token_type(v_, it->second);
        return (t == TokenType::Control || t == TokenType::Unknown || t == TokenType::Byte) ? -1 : it->second;
    }

    void encode_piece(const std::string& text, std::vector<int32_t>& out) const {
        std::vector<Symbol> syms;
        for (size_t i = 0; i < text.size();) {
            size_t len;
            uint32_t cp;
            if (unicode::utf8_check(text.data() + i, text.size() - i, len, cp) != unicode::Utf8Status::Valid)
                len = 1;  // an invalid byte is a symbol of its own; it ends up as a byte token
            const auto n = static_cast<int32_t>(syms.size());
            syms.push_back({text.data() + i, len, n - 1, n + 1});
            i += len;
        }
        if (syms.empty()) return;
        syms.back().next = -1;

        std::vector<Bigram> heap;
        // Unused pieces are not emitted: sentencepiece splits them back into what they were merged from.
        std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
        auto try_add = [&](int32_t l, int32_t r) {
            if (l < 0 || r < 0) return;
            const Symbol &a = syms[static_cast<size_t>(l)], &b = syms[static_cast<size_t>(r)];
            const std::string_view s(a.text, a.n + b.n);
            const int32_t id = mergeable(s);
            if (id < 0) return;
            heap.push_back({l, r, v_.scores[static_cast<size_t>(id)], s.size()});
            std::push_heap(heap.begin(), heap.end());
            if (detail::token_type(v_, id) == TokenType::Unused)
                rev_merge[s] = {std::string_view(a.text, a.n), std::string_view(b.text, b.n)};
        };
        for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) try_add(i, i + 1);

        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end());
            const Bigram top = heap.back();
            heap.pop_back();
            Symbol &l = syms[static_cast<size_t>(top.left)], &r = syms[static_cast<size_t>(top.right)];
            if (l.n == 0 || r.n == 0 || l.n + r.n != top.size) continue;  // stale
            l.n += r.n;
            r.n = 0;
            l.next = r.next;
            if (r.next >= 0) syms[static_cast<size_t>(r.next)].prev = top.left;
            try_add(l.prev, top.left);
            try_add(top.left, l.next);
        }
        for (int32_t i = 0; i >= 0; i = syms[static_cast<size_t>(i)].next)
            resegment(std::string_view(syms[static_cast<size_t>(i)].text, syms[static_cast<size_t>(i)].n), rev_merge,
                      out);
    }

    template <class RevMerge>
    void resegment(std::string_view piece, const RevMerge& rev_merge, std::vector<int32_t>& out) const {
        const auto it = ids_.find(piece);
        if (it != ids_.end()) {
            const TokenType t = detail::token_type(v_, it->second);
            if (t == TokenType::Unused) {
                const auto m = rev_merge.find(piece);
                if (m != rev_merge.end()) {
                    resegment(m->second.first, rev_merge, out);
                    resegment(m->second.second, rev_merge, out);
                    return;
                }
            } else if (t != TokenType::Unknown) {
                out.push_back(it->second);
                return;
            }
        }
        // Not in the vocabulary: byte fallback, or one <unk> if some byte token is missing.
        const bool all_bytes = std::all_of(piece.begin(), piece.end(),
                                           [&](char c) { return byte_token_[static_cast<unsigned char>(c)] >= 0; });
        if (all_bytes) {
            for (char c : piece) out.push_back(byte_token_[static_cast<unsigned char>(c)]);
        } else if (v_.unk_id >= 0) {
            out.push_back(v_.unk_id);
        }
    }

    VocabData v_;
    SpecialMatcher specials_;
    std::unordered_map<std::string_view, int32_t> ids_;  // token text -> first id with it
    std::array<int32_t, 256> byte_token_{};              // <0xXX> tokens
    std::vector<std::string> pieces_;                    // raw bytes of every token
};

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(const VocabData& vocab) { return std::make_unique<SpmTokenizer>(vocab); }

}  // namespace owl::detail
