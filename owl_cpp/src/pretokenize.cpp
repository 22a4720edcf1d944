// The pre-tokenizers by name (llama.cpp's llama-vocab.cpp names and regex lists) and the engine that runs
// a list of split rules.
#include "pretokenize.h"

#include "pretokenize_rules.h"

namespace owl::detail {

namespace {

namespace r = rules;

// HF configurations these stand for (what the tests build their references from):
//   default             llama.cpp's own fallback (no HF tokenizer has it)
//   gpt-2 ..            ByteLevel with its regex
//   starcoder ..        Digits(individual) + ByteLevel with its regex (command-r: after an NFC normalizer)
//   falcon              Punctuation + ByteLevel + Digits + Split [0-9]{3}
//   the rest            Split(regex) for each regex in the list, then ByteLevel without its regex
const std::vector<PreTokenizer>& table() {
    static const std::vector<PreTokenizer> t = {
        {{"default", ""}, {r::punct_default, r::gpt2, r::digits, r::ascii_digits_3}},
        {{"gpt2", "gpt-2", "mpt", "olmo", "phi-2"}, {r::gpt2}},
        {{"starcoder", "smollm", "refact", "codeshell"}, {r::digit, r::gpt2}},
        {{"command-r"}, {r::digit, r::gpt2}, /*nfc=*/true},
        {{"falcon"}, {r::punct_falcon, r::gpt2}, false, false, /*byte_digits=*/true},
        {{"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}, {r::llama3}, false, /*ignore_merges=*/true, false,
         /*add_bos=*/true},
        {{"dbrx", "smaug-bpe"}, {r::llama3}},
        {{"qwen2", "deepseek-r1-qwen"}, {r::qwen2}, /*nfc=*/true},
        {{"stablelm2"}, {r::qwen2}},
        {{"deepseek-llm"},
         {r::newline, r::deepseek_letters, r::deepseek_punct, r::trailing_space, r::deepseek_cjk, r::digits}},
        {{"deepseek-coder"}, {r::newline, r::space_letters, r::space_punct, r::deepseek_cjk, r::digit}},
        {{"deepseek-v3"}, {r::digits_1_3, r::deepseek3_cjk, r::deepseek3}},
        {{"gpt-4o", "llama4"}, {r::gpt4o}},
        {{"tekken"}, {r::tekken}, false, /*ignore_merges=*/true, false, /*add_bos=*/true},
    };
    return t;
}

// Splits every piece of `in` by one rule: matches and the text between them are pieces.
void apply_rule(SplitRule rule, const PreText& t, const std::vector<Span>& in, std::vector<Span>& out) {
    out.clear();
    for (const Span& piece : in) {
        size_t gap = piece.first, pos = piece.first;
        while (pos < piece.second) {
            const size_t n = rule(t, pos, piece.second);
            if (n == 0) {
                ++pos;
                continue;
            }
            if (gap < pos) out.emplace_back(gap, pos);
            out.emplace_back(pos, pos + n);
            pos += n;
            gap = pos;
        }
        if (gap < piece.second) out.emplace_back(gap, piece.second);
    }
}

bool byte_is_numeric(unsigned char b) {  // its byte-level character is \p{N}
    return (b >= '0' && b <= '9') || b == 0xB2 || b == 0xB3 || b == 0xB9 || b == 0xBC || b == 0xBD || b == 0xBE;
}

}  // namespace

PreText make_pre_text(std::vector<uint32_t> cps) {
    PreText t;
    fill_pre_text(t, std::move(cps));
    return t;
}

void fill_pre_text(PreText& t, std::vector<uint32_t>&& cps) {
    t.cps = std::move(cps);
    const size_t n = t.cps.size();
    t.cls.resize(n);
    t.cat.resize(n);
    t.space_end.resize(n);
    for (size_t i = 0; i < n; ++i) {
        t.cat[i] = unicode::category(t.cps[i]);
        t.cls[i] = unicode::char_class(t.cps[i], t.cat[i]);
    }
    for (size_t i = n; i-- > 0;)
        t.space_end[i] = static_cast<uint32_t>(t.cls[i] != unicode::CharClass::Space ? i : (i + 1 < n ? t.space_end[i + 1] : n));
}

const PreTokenizer* find_pre_tokenizer(std::string_view name) {
    for (const PreTokenizer& p : table())
        for (const std::string& n : p.names)
            if (n == name) return &p;
    return nullptr;
}

std::string pre_tokenizer_names() {
    std::string out;
    for (const PreTokenizer& p : table())
        for (const std::string& n : p.names)
            if (!n.empty()) out += (out.empty() ? "" : ", ") + n;
    return out;
}

void pre_split(const PreTokenizer& p, const PreText& t, std::vector<Span>& out) {
    out.clear();
    if (t.cps.empty()) return;
    out.emplace_back(0, t.cps.size());
    std::vector<Span> next;
    for (SplitRule rule : p.rules) {
        apply_rule(rule, t, out, next);
        out.swap(next);
    }
}

void split_byte_digits(std::string_view word, std::vector<Span>& out) {
    out.clear();
    const size_t n = word.size();
    auto digit = [&](size_t i) { return word[i] >= '0' && word[i] <= '9'; };
    for (size_t b = 0; b < n;) {
        const bool numeric = byte_is_numeric(static_cast<unsigned char>(word[b]));
        size_t e = b + 1;
        while (e < n && byte_is_numeric(static_cast<unsigned char>(word[e])) == numeric) ++e;
        // [0-9][0-9][0-9] inside the run (only a numeric run has ASCII digits)
        size_t gap = b;
        for (size_t i = b; numeric && i + 3 <= e;) {
            if (digit(i) && digit(i + 1) && digit(i + 2)) {
                if (gap < i) out.emplace_back(gap, i);
                out.emplace_back(i, i + 3);
                gap = i += 3;
            } else {
                ++i;
            }
        }
        if (gap < e) out.emplace_back(gap, e);
        b = e;
    }
}

}  // namespace owl::detail
