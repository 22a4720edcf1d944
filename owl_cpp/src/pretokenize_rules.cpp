// The pre-tokenizer regexes as explicit scans. At a position the alternatives are tried in the regex's
// order and the first that matches wins (Oniguruma's leftmost-first alternation); the backtracking
// outcomes are worked out by hand in the comments.
#include "pretokenize_rules.h"

#include <algorithm>
#include <iterator>

namespace owl::detail::rules {

using unicode::Category;
using unicode::CharClass;

namespace {

constexpr size_t kNone = static_cast<size_t>(-1);

bool is_newline(uint32_t c) { return c == '\r' || c == '\n'; }
bool ascii_letter(uint32_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
bool ascii_digit(uint32_t c) { return c >= '0' && c <= '9'; }
bool ascii_punct(uint32_t c) { return c >= 0x21 && c <= 0x7E && !ascii_letter(c) && !ascii_digit(c); }

template <class Pred>
size_t run_end(size_t pos, size_t end, Pred in) {
    while (pos < end && in(pos)) ++pos;
    return pos;
}

// Code point ranges [lo, hi], sorted.
struct Range {
    uint32_t lo, hi;
};
template <size_t N>
bool in_ranges(const Range (&r)[N], uint32_t c) {
    const Range* it = std::upper_bound(std::begin(r), std::end(r), c, [](uint32_t v, const Range& x) { return v < x.lo; });
    return it != std::begin(r) && c <= (it - 1)->hi;
}

// Length of a contraction 's 't 're 've 'm 'll 'd at pos (0 if none). Oniguruma's (?i) folds ASCII case
// and U+017F LATIN SMALL LETTER LONG S to 's'.
size_t contraction(const PreText& t, size_t pos, size_t end, bool ignore_case) {
    const auto& cps = t.cps;
    if (pos + 1 >= end || cps[pos] != '\'') return 0;
    auto fold = [&](uint32_t c) -> uint32_t {
        if (!ignore_case) return c;
        if (c >= 'A' && c <= 'Z') return c + 32;
        return c == 0x17F ? 's' : c;
    };
    const uint32_t a = fold(cps[pos + 1]);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (pos + 2 >= end) return 0;
    const uint32_t b = fold(cps[pos + 2]);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

bool space(const PreText& t, size_t i) { return t.cls[i] == CharClass::Space; }
bool letter(const PreText& t, size_t i) { return t.cls[i] == CharClass::Letter; }
bool number(const PreText& t, size_t i) { return t.cls[i] == CharClass::Number; }
bool other(const PreText& t, size_t i) { return t.cls[i] == CharClass::Other; }

// \s+(?!\S)|\s+ at a space: a run followed by a non-space gives its last space to the next piece (so
// " word" stays together), unless the run is a single space.
size_t space_run(const PreText& t, size_t pos, size_t end) {
    const size_t e = std::min<size_t>(t.space_end[pos], end);
    return ((e - pos > 1 && e < end) ? e - 1 : e) - pos;
}

// \s*[\r\n]+|\s+(?!\S)|\s+ at a space: through the run's last newline when it has one.
size_t whitespace_tail(const PreText& t, size_t pos, size_t end) {
    const size_t e = std::min<size_t>(t.space_end[pos], end);
    for (size_t i = e; i > pos; --i)
        if (is_newline(t.cps[i - 1])) return i - pos;
    return space_run(t, pos, end);
}

// " ?[^\s\p{L}\p{N}]+" then a run of `tail` characters; 0 if no match.
template <class Tail>
size_t symbols(const PreText& t, size_t pos, size_t end, Tail tail) {
    const size_t s = (t.cps[pos] == ' ' && pos + 1 < end && other(t, pos + 1)) ? pos + 1 : pos;
    if (!other(t, s)) return 0;
    size_t e = run_end(s + 1, end, [&](size_t i) { return other(t, i); });
    e = run_end(e, end, [&](size_t i) { return tail(t.cps[i]); });
    return e - pos;
}

// \s?X+ : the optional space is taken only when X follows it.
template <class In>
size_t space_then_run(const PreText& t, size_t pos, size_t end, In in) {
    size_t s = pos;
    if (space(t, pos) && pos + 1 < end && in(pos + 1)) s = pos + 1;
    else if (!in(pos)) return 0;
    return run_end(s, end, in) - pos;
}

size_t qwen_like(const PreText& t, size_t pos, size_t end, size_t max_digits) {
    const uint32_t c = t.cps[pos];
    if (const size_t n = contraction(t, pos, end, true)) return n;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    auto is_letter = [&](size_t i) { return letter(t, i); };
    if (letter(t, pos)) return run_end(pos, end, is_letter) - pos;
    if (!is_newline(c) && !number(t, pos) && pos + 1 < end && letter(t, pos + 1))
        return run_end(pos + 1, end, is_letter) - pos;
    // \p{N}{1,max}
    if (number(t, pos)) {
        const size_t e = run_end(pos, std::min(end, pos + max_digits), [&](size_t i) { return number(t, i); });
        return e - pos;
    }
    // " ?[^\s\p{L}\p{N}]+[\r\n]*"
    if (const size_t n = symbols(t, pos, end, is_newline)) return n;
    return whitespace_tail(t, pos, end);  // only whitespace is left
}

// The o200k / Tekken regex. U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], W = [\p{Ll}\p{Lm}\p{Lo}\p{M}] (they share
// Lm, Lo and marks), P = [^\r\n\p{L}\p{N}].
size_t o200k_like(const PreText& t, size_t pos, size_t end, bool contractions, size_t max_digits) {
    auto U = [&](size_t i) {
        const Category k = t.cat[i];
        return k == Category::Lu || k == Category::Lt || k == Category::Lm || k == Category::Lo || k == Category::Mark;
    };
    auto W = [&](size_t i) {
        const Category k = t.cat[i];
        return k == Category::Ll || k == Category::Lm || k == Category::Lo || k == Category::Mark;
    };
    const bool p_first = !is_newline(t.cps[pos]) && !letter(t, pos) && !number(t, pos);
    // U*W+ from q: U* takes its whole run [q, r); then W+ from r if W(r) (W's run), else U* gives back
    // characters until one is W (the match ends right after the last W of the run). kNone if none is.
    auto u_star_w_plus = [&](size_t q) -> size_t {
        if (q >= end) return kNone;
        const size_t r = run_end(q, end, U);
        if (r < end && W(r)) return run_end(r, end, W);
        for (size_t j = r; j > q; --j)
            if (W(j - 1)) return j;
        return kNone;
    };
    // U+W* from q: never gives back once one U is there.
    auto u_plus_w_star = [&](size_t q) -> size_t {
        if (q >= end || !U(q)) return kNone;
        return run_end(run_end(q, end, U), end, W);
    };
    size_t e = kNone;
    if (p_first) e = u_star_w_plus(pos + 1);
    if (e == kNone) e = u_star_w_plus(pos);
    if (e == kNone && p_first) e = u_plus_w_star(pos + 1);
    if (e == kNone) e = u_plus_w_star(pos);
    if (e != kNone) return e - pos + (contractions ? contraction(t, e, end, true) : 0);
    if (number(t, pos))
        return run_end(pos, std::min(end, pos + max_digits), [&](size_t i) { return number(t, i); }) - pos;
    // " ?[^\s\p{L}\p{N}]+[\r\n/]*"
    if (const size_t n = symbols(t, pos, end, [](uint32_t c) { return is_newline(c) || c == '/'; })) return n;
    return whitespace_tail(t, pos, end);
}

// DeepSeek LLM's letter class: cased letters (LC) as listed in its tokenizer.json.
constexpr Range kDeepseekLetters[] = {
    {0x41, 0x5A}, {0x61, 0x7A}, {0xB5, 0xB5}, {0xC0, 0xD6}, {0xD8, 0xF6}, {0xF8, 0x1BA}, {0x1BC, 0x1BF},
    {0x1C4, 0x293}, {0x295, 0x2AF}, {0x370, 0x373}, {0x376, 0x377}, {0x37B, 0x37D}, {0x37F, 0x37F},
    {0x386, 0x386}, {0x388, 0x38A}, {0x38C, 0x38C}, {0x38E, 0x3A1}, {0x3A3, 0x3F5}, {0x3F7, 0x481},
    {0x48A, 0x52F}, {0x531, 0x556}, {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C90, 0x1CBA},
    {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D},
    {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D},
    {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC},
    {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2102, 0x2102},
    {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126},
    {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F}, {0x2145, 0x2149},
    {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE}, {0x2CF2, 0x2CF3},
    {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787}, {0xA78B, 0xA78E}, {0xAB70, 0xABBF},
    {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0x10400, 0x1044F},
    {0x104B0, 0x104D3}, {0x104D8, 0x104FB}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF},
    {0x1E900, 0x1E943},
};
// [!-/:-~！-／：-～‘-‟　-。]
constexpr Range kDeepseekPunct[] = {{0x21, 0x2F}, {0x3A, 0x7E}, {0x2018, 0x201F}, {0x3000, 0x3002},
                                    {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E}};
// [一-龥ࠀ-一가-퟿]: U+0800..U+4E00 is one range in it, U+4E00..U+9FA5 another.
constexpr Range kDeepseekCjk[] = {{0x0800, 0x9FA5}, {0xAC00, 0xD7FF}};
// [一-龥぀-ゟ゠-ヿ]: CJK ideographs, hiragana, katakana.
constexpr Range kDeepseek3Cjk[] = {{0x3040, 0x30FF}, {0x4E00, 0x9FA5}};

}  // namespace

size_t gpt2(const PreText& t, size_t pos, size_t end) {
    if (const size_t n = contraction(t, pos, end, false)) return n;
    // " ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+": an optional space, then a run of one class.
    size_t s = pos;
    if (space(t, pos)) {
        if (t.cps[pos] != ' ' || pos + 1 >= end || space(t, pos + 1)) return space_run(t, pos, end);
        s = pos + 1;
    }
    const CharClass k = t.cls[s];
    return run_end(s + 1, end, [&](size_t i) { return t.cls[i] == k; }) - pos;
}

size_t qwen2(const PreText& t, size_t pos, size_t end) { return qwen_like(t, pos, end, 1); }
size_t llama3(const PreText& t, size_t pos, size_t end) { return qwen_like(t, pos, end, 3); }
size_t gpt4o(const PreText& t, size_t pos, size_t end) { return o200k_like(t, pos, end, true, 3); }
size_t tekken(const PreText& t, size_t pos, size_t end) { return o200k_like(t, pos, end, false, 1); }

size_t digit(const PreText& t, size_t pos, size_t) { return number(t, pos) ? 1 : 0; }
size_t digits(const PreText& t, size_t pos, size_t end) {
    return run_end(pos, end, [&](size_t i) { return number(t, i); }) - pos;
}
size_t digits_1_3(const PreText& t, size_t pos, size_t end) {
    return run_end(pos, std::min(end, pos + 3), [&](size_t i) { return number(t, i); }) - pos;
}
size_t ascii_digits_3(const PreText& t, size_t pos, size_t end) {
    const size_t e = run_end(pos, std::min(end, pos + 3), [&](size_t i) { return ascii_digit(t.cps[i]); });
    return e - pos == 3 ? 3 : 0;
}

namespace {
// [\p{P}...]+ with the given ASCII symbols added.
size_t punct_run(const PreText& t, size_t pos, size_t end, const char* extra) {
    auto in = [&](size_t i) {
        const uint32_t c = t.cps[i];
        if (t.cat[i] == Category::Punct) return true;
        for (const char* e = extra; *e; ++e)
            if (c == static_cast<uint32_t>(*e)) return true;
        return false;
    };
    return run_end(pos, end, in) - pos;
}
}  // namespace

size_t punct_default(const PreText& t, size_t pos, size_t end) { return punct_run(t, pos, end, "$+<=>^~|"); }
size_t punct_falcon(const PreText& t, size_t pos, size_t end) { return punct_run(t, pos, end, "$+<=>^~|`"); }
size_t newline(const PreText& t, size_t pos, size_t) { return is_newline(t.cps[pos]) ? 1 : 0; }

size_t deepseek_letters(const PreText& t, size_t pos, size_t end) {
    return space_then_run(t, pos, end, [&](size_t i) { return in_ranges(kDeepseekLetters, t.cps[i]); });
}
size_t deepseek_punct(const PreText& t, size_t pos, size_t end) {
    return space_then_run(t, pos, end, [&](size_t i) { return in_ranges(kDeepseekPunct, t.cps[i]); });
}

// \s+$ : Oniguruma's $ is the end of the text or of a line (before a \n), so the match ends at the last
// of those inside the space run.
size_t trailing_space(const PreText& t, size_t pos, size_t end) {
    if (!space(t, pos)) return 0;
    const size_t e = std::min<size_t>(t.space_end[pos], end);
    if (e == end) return e - pos;
    for (size_t j = e - 1; j > pos; --j)
        if (t.cps[j] == '\n') return j - pos;
    return 0;
}

size_t deepseek_cjk(const PreText& t, size_t pos, size_t end) {
    return run_end(pos, end, [&](size_t i) { return in_ranges(kDeepseekCjk, t.cps[i]); }) - pos;
}
size_t space_letters(const PreText& t, size_t pos, size_t end) {
    return space_then_run(t, pos, end, [&](size_t i) { return letter(t, i); });
}
size_t space_punct(const PreText& t, size_t pos, size_t end) {
    return space_then_run(t, pos, end, [&](size_t i) { return t.cat[i] == Category::Punct; });
}
size_t deepseek3_cjk(const PreText& t, size_t pos, size_t end) {
    return run_end(pos, end, [&](size_t i) { return in_ranges(kDeepseek3Cjk, t.cps[i]); }) - pos;
}

size_t deepseek3(const PreText& t, size_t pos, size_t end) {
    const uint32_t c = t.cps[pos];
    // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
    if (ascii_punct(c) && pos + 1 < end && ascii_letter(t.cps[pos + 1]))
        return run_end(pos + 1, end, [&](size_t i) { return ascii_letter(t.cps[i]); }) - pos;
    // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
    auto lm = [&](size_t i) { return letter(t, i) || t.cat[i] == Category::Mark; };
    auto ps = [&](size_t i) { return t.cat[i] == Category::Punct || t.cat[i] == Category::Symbol; };
    if (!is_newline(c) && !letter(t, pos) && !ps(pos) && pos + 1 < end && lm(pos + 1))
        return run_end(pos + 1, end, lm) - pos;
    if (lm(pos)) return run_end(pos, end, lm) - pos;
    // " ?[\p{P}\p{S}]+[\r\n]*"
    const size_t s = (c == ' ' && pos + 1 < end && ps(pos + 1)) ? pos + 1 : pos;
    if (ps(s)) {
        const size_t e = run_end(s + 1, end, ps);
        return run_end(e, end, [&](size_t i) { return is_newline(t.cps[i]); }) - pos;
    }
    return space(t, pos) ? whitespace_tail(t, pos, end) : 0;
}

}  // namespace owl::detail::rules
