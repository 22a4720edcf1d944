// BERT BasicTokenizer character properties and Python's str.lower on the tables of unicode_bert_data.cpp.
#include "unicode_bert.h"

#include <algorithm>

#include "unicode.h"

namespace owl::unicode {

namespace {

constexpr uint32_t kCaseIgnorable = 8, kCased = 16;

uint32_t class_bits(uint32_t cp) {
    if (cp >= kInvalidByteBase) return 0;
    const uint32_t key = (cp << 8) | 0xFF;
    const uint32_t* end = detail::kBertClassRuns + detail::kBertClassRuns_size;
    const uint32_t* it = std::upper_bound(detail::kBertClassRuns, end, key);
    return it == detail::kBertClassRuns ? 0 : (*(it - 1) & 0xFF);
}

// Simple (one code point) lowercase from the runs; U+0130 and U+03A3 are handled by python_lower.
uint32_t lower_simple(uint32_t cp) {
    if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    if (cp >= kInvalidByteBase) return cp;
    const size_t n = detail::kLowerRuns_size / 3;
    // Last run starting at or before cp (runs are sorted by start).
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if ((detail::kLowerRuns[mid * 3] & 0xFFFFFF) <= cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0) return cp;
    // Run spans are disjoint (the generator checks), so only this run can hold cp.
    const uint32_t* r = &detail::kLowerRuns[(lo - 1) * 3];
    const uint32_t start = r[0] & 0xFFFFFF, stride = (r[0] >> 24) ? 2 : 1;
    const uint32_t off = cp - start;
    if (off % stride == 0 && off / stride < r[1]) return cp + r[2];  // delta wraps as int32
    return cp;
}

}  // namespace

const char* bert_unicode_version() { return detail::kBertUnicodeVersion; }

BertClass bert_class(uint32_t cp) { return static_cast<BertClass>(class_bits(cp) & 7); }

bool is_cjk_ideograph(uint32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

bool is_python_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
    if (cp < 0x85) return false;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::vector<uint32_t> python_lower(const std::vector<uint32_t>& cps) {
    std::vector<uint32_t> out;
    out.reserve(cps.size());
    const auto ignorable = [](uint32_t c) { return (class_bits(c) & kCaseIgnorable) != 0; };
    const auto cased = [](uint32_t c) { return (class_bits(c) & kCased) != 0; };
    for (size_t i = 0; i < cps.size(); ++i) {
        const uint32_t c = cps[i];
        if (c == 0x130) {  // LATIN CAPITAL LETTER I WITH DOT ABOVE -> i + COMBINING DOT ABOVE
            out.push_back('i');
            out.push_back(0x307);
        } else if (c == 0x3A3) {  // CPython's handle_capital_sigma
            size_t j = i;
            while (j > 0 && ignorable(cps[j - 1])) --j;
            bool final_sigma = j > 0 && cased(cps[j - 1]);
            if (final_sigma) {
                size_t k = i + 1;
                while (k < cps.size() && ignorable(cps[k])) ++k;
                final_sigma = k == cps.size() || !cased(cps[k]);
            }
            out.push_back(final_sigma ? 0x3C2 : 0x3C3);
        } else {
            out.push_back(lower_simple(c));
        }
    }
    return out;
}

}  // namespace owl::unicode
