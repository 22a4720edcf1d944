// The pre-tokenizer regexes as explicit scans. At each position the alternatives are tried in the
// regex's order and the first that matches wins (leftmost-first, with the backtracking results
// worked out by hand in the comments). Every character is matched by some alternative, so the
// pieces tile the input.
#include "pretokenize.h"

#include "unicode.h"

namespace owl::detail {

using unicode::CharClass;

namespace {

std::vector<CharClass> classes_of(const std::vector<uint32_t>& cps) {
    std::vector<CharClass> k(cps.size());
    for (size_t i = 0; i < cps.size(); ++i) k[i] = unicode::char_class(cps[i]);
    return k;
}

bool is_newline(uint32_t c) { return c == '\r' || c == '\n'; }

// Length of a contraction 's 't 're 've 'm 'll 'd at pos (0 if none). Oniguruma's (?i) folds
// ASCII case and U+017F LATIN SMALL LETTER LONG S to 's'.
size_t contraction(const std::vector<uint32_t>& cps, size_t pos, bool ignore_case) {
    const size_t n = cps.size();
    if (cps[pos] != '\'' || pos + 1 >= n) return 0;
    auto fold = [&](uint32_t c) -> uint32_t {
        if (!ignore_case) return c;
        if (c >= 'A' && c <= 'Z') return c + 32;
        return c == 0x17F ? 's' : c;
    };
    const uint32_t a = fold(cps[pos + 1]);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (pos + 2 >= n) return 0;
    const uint32_t b = fold(cps[pos + 2]);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

// End of the whitespace run at pos, for \s+(?!\S) | \s+ : a run followed by a non-space gives its
// last space to the next piece (so " word" stays together), unless the run is a single space.
size_t space_run_end(const std::vector<CharClass>& k, size_t pos) {
    size_t e = pos;
    while (e < k.size() && k[e] == CharClass::Space) ++e;
    return (e - pos > 1 && e < k.size()) ? e - 1 : e;
}

}  // namespace

void split_qwen2(const std::vector<uint32_t>& cps, std::vector<Span>& out) {
    const std::vector<CharClass> k = classes_of(cps);
    const size_t n = cps.size();
    size_t pos = 0;
    auto emit = [&](size_t end) {
        out.emplace_back(pos, end);
        pos = end;
    };
    while (pos < n) {
        const uint32_t c = cps[pos];
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if (const size_t len = contraction(cps, pos, true)) {
            emit(pos + len);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if (k[pos] == CharClass::Letter ||
            (!is_newline(c) && k[pos] != CharClass::Number && pos + 1 < n && k[pos + 1] == CharClass::Letter)) {
            size_t e = pos + 1;
            while (e < n && k[e] == CharClass::Letter) ++e;
            emit(e);
            continue;
        }
        // \p{N}  (one digit at a time)
        if (k[pos] == CharClass::Number) {
            emit(pos + 1);
            continue;
        }
        // " ?[^\s\p{L}\p{N}]+[\r\n]*"
        const size_t s = (c == ' ' && pos + 1 < n && k[pos + 1] == CharClass::Other) ? pos + 1 : pos;
        if (k[s] == CharClass::Other) {
            size_t e = s + 1;
            while (e < n && k[e] == CharClass::Other) ++e;
            while (e < n && is_newline(cps[e])) ++e;
            emit(e);
            continue;
        }
        // Only whitespace is left. \s*[\r\n]+ : up to and including the run's last newline.
        size_t e = pos, after_newline = 0;
        for (; e < n && k[e] == CharClass::Space; ++e)
            if (is_newline(cps[e])) after_newline = e + 1;
        if (after_newline) {
            emit(after_newline);
            continue;
        }
        // \s+(?!\S) | \s+
        emit(space_run_end(k, pos));
    }
}

void split_gpt2(const std::vector<uint32_t>& cps, std::vector<Span>& out) {
    const std::vector<CharClass> k = classes_of(cps);
    const size_t n = cps.size();
    size_t pos = 0;
    while (pos < n) {
        size_t end;
        if (const size_t len = contraction(cps, pos, false)) {
            end = pos + len;
        } else if (k[pos] != CharClass::Space || (cps[pos] == ' ' && pos + 1 < n && k[pos + 1] != CharClass::Space)) {
            // " ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+": an optional space, then a run of one class.
            const size_t s = k[pos] == CharClass::Space ? pos + 1 : pos;
            end = s + 1;
            while (end < n && k[end] == k[s]) ++end;
        } else {
            end = space_run_end(k, pos);
        }
        out.emplace_back(pos, end);
        pos = end;
    }
}

}  // namespace owl::detail
