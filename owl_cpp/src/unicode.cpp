// UTF-8 coding, character classes and NFC on top of the generated tables in unicode_data.cpp.
#include "unicode.h"

#include <algorithm>
#include <unordered_map>

namespace owl::unicode {

const char* unicode_version() { return detail::kUnicodeVersion; }

// ---------------------------------------------------------------- UTF-8

Utf8Status utf8_check(const char* p, size_t n, size_t& len, uint32_t& cp) {
    const auto* s = reinterpret_cast<const unsigned char*>(p);
    const unsigned char b0 = s[0];
    if (b0 < 0x80) {
        len = 1;
        cp = b0;
        return Utf8Status::Valid;
    }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 2;
        cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 3;
        cp = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;  // no overlongs
        if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 4;
        cp = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;  // no overlongs
        if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
    } else {
        len = 1;  // continuation byte, C0/C1 or F5..FF: never starts a character
        return Utf8Status::Invalid;
    }
    for (size_t i = 1; i < need; ++i) {
        if (i >= n) {
            len = i;
            return Utf8Status::Incomplete;
        }
        const unsigned char b = s[i];
        const bool ok = (i == 1) ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
        if (!ok) {
            len = i;
            return Utf8Status::Invalid;
        }
        cp = (cp << 6) | (b & 0x3F);
    }
    len = need;
    return Utf8Status::Valid;
}

std::vector<uint32_t> decode_utf8(std::string_view s) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        size_t len;
        uint32_t cp;
        if (utf8_check(s.data() + i, s.size() - i, len, cp) == Utf8Status::Valid) {
            out.push_back(cp);
        } else {
            // Each byte of an ill-formed subpart becomes its own pseudo code point.
            for (size_t k = 0; k < len; ++k) out.push_back(kInvalidByteBase + static_cast<unsigned char>(s[i + k]));
        }
        i += len;
    }
    return out;
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < kInvalidByteBase) {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(cp - kInvalidByteBase);  // pseudo code point: the original byte
    }
}

std::string encode_utf8(const uint32_t* cps, size_t n) {
    std::string out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) append_utf8(out, cps[i]);
    return out;
}

std::string sanitize_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        size_t len;
        uint32_t cp;
        if (utf8_check(s.data() + i, s.size() - i, len, cp) == Utf8Status::Valid) {
            out.append(s.data() + i, len);
        } else {
            out += "\xEF\xBF\xBD";  // U+FFFD (a truncated tail at the end counts as one subpart too)
        }
        i += len;
    }
    return out;
}

// ---------------------------------------------------------------- classes

namespace {

// Value of the run containing cp in a table packed as (start << shift) | value.
uint32_t run_value(const uint32_t* runs, size_t n, uint32_t cp, int shift) {
    const uint32_t key = (cp << shift) | ((1u << shift) - 1);
    const uint32_t* it = std::upper_bound(runs, runs + n, key);
    return it == runs ? 0 : (*(it - 1) & ((1u << shift) - 1));
}

// Unicode White_Space (PropList.txt); Oniguruma's \s is exactly this set.
bool is_white_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85) return false;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

}  // namespace

CharClass char_class(uint32_t cp) { return char_class(cp, category(cp)); }

CharClass char_class(uint32_t cp, Category c) {
    if (is_white_space(cp)) return CharClass::Space;
    return is_letter_category(c) ? CharClass::Letter : c == Category::Number ? CharClass::Number : CharClass::Other;
}

Category category(uint32_t cp) {
    // The BMP from a flat table (the pre-tokenizers look up every character), the rest from the runs.
    static const std::vector<uint8_t> bmp = [] {
        std::vector<uint8_t> t(0x10000);
        for (uint32_t c = 0; c < t.size(); ++c)
            t[c] = static_cast<uint8_t>(run_value(detail::kCategoryRuns, detail::kCategoryRuns_size, c, 4));
        return t;
    }();
    if (cp < 0x10000) return static_cast<Category>(bmp[cp]);
    if (cp >= kInvalidByteBase) return Category::Other;
    return static_cast<Category>(run_value(detail::kCategoryRuns, detail::kCategoryRuns_size, cp, 4));
}

uint8_t combining_class(uint32_t cp) {
    if (cp < 0x300 || cp >= kInvalidByteBase) return 0;
    return static_cast<uint8_t>(run_value(detail::kCombiningRuns, detail::kCombiningRuns_size, cp, 8));
}

// ---------------------------------------------------------------- NFC

namespace {

constexpr uint32_t kComposableFlag = 1u << 24;
constexpr uint32_t SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
constexpr uint32_t LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

// One-level canonical decomposition of cp, or nullptr (entry = {cp|flag, first, second}).
const uint32_t* find_decomposition(uint32_t cp) {
    const size_t n = detail::kDecompositions_size / 3;
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        const uint32_t c = detail::kDecompositions[mid * 3] & (kComposableFlag - 1);
        if (c < cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo < n && (detail::kDecompositions[lo * 3] & (kComposableFlag - 1)) == cp) return &detail::kDecompositions[lo * 3];
    return nullptr;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
    if (cp >= SBase && cp < SBase + SCount) {  // Hangul syllables decompose algorithmically
        const uint32_t s = cp - SBase;
        out.push_back(LBase + s / NCount);
        out.push_back(VBase + (s % NCount) / TCount);
        if (s % TCount) out.push_back(TBase + s % TCount);
        return;
    }
    const uint32_t* d = (cp >= 0xC0 && cp < kInvalidByteBase) ? find_decomposition(cp) : nullptr;
    if (!d) {
        out.push_back(cp);
        return;
    }
    decompose(d[1], out);
    if (d[2]) decompose(d[2], out);
}

// Primary composites keyed by (first << 32 | second); built once from the decomposition table.
const std::unordered_map<uint64_t, uint32_t>& composition_map() {
    static const std::unordered_map<uint64_t, uint32_t> map = [] {
        std::unordered_map<uint64_t, uint32_t> m;
        for (size_t i = 0; i < detail::kDecompositions_size; i += 3) {
            const uint32_t c = detail::kDecompositions[i];
            if (c & kComposableFlag)
                m.emplace((uint64_t(detail::kDecompositions[i + 1]) << 32) | detail::kDecompositions[i + 2],
                          c & (kComposableFlag - 1));
        }
        return m;
    }();
    return map;
}

// The composite of a + b, or 0.
uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
        return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
    if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
        return a + (b - TBase);
    const auto& m = composition_map();
    const auto it = m.find((uint64_t(a) << 32) | b);
    return it == m.end() ? 0 : it->second;
}

}  // namespace

std::vector<uint32_t> nfd(const std::vector<uint32_t>& cps) {
    std::vector<uint32_t> d;
    d.reserve(cps.size() + 8);
    for (uint32_t c : cps) decompose(c, d);

    // Canonical ordering: stable insertion sort of each run of non-starters by combining class.
    for (size_t i = 1; i < d.size(); ++i) {
        const uint8_t cc = combining_class(d[i]);
        if (cc == 0) continue;
        size_t j = i;
        const uint32_t c = d[i];
        while (j > 0) {
            const uint8_t pc = combining_class(d[j - 1]);
            if (pc == 0 || pc <= cc) break;
            d[j] = d[j - 1];
            --j;
        }
        d[j] = c;
    }
    return d;
}

std::vector<uint32_t> nfc(const std::vector<uint32_t>& cps) {
    // Nothing below U+0300 decomposes into or composes with anything else (Latin-1 is already NFC).
    if (std::all_of(cps.begin(), cps.end(), [](uint32_t c) { return c < 0x300; })) return cps;
    const std::vector<uint32_t> d = nfd(cps);

    // Canonical composition: a mark joins the last starter unless blocked by a mark in between
    // whose class is 0 or >= its own.
    std::vector<uint32_t> out;
    out.reserve(d.size());
    size_t starter = SIZE_MAX;
    uint8_t last_cc = 0;
    for (uint32_t c : d) {
        const uint8_t cc = combining_class(c);
        if (starter != SIZE_MAX) {
            const bool adjacent = out.size() - 1 == starter;
            const bool blocked = !adjacent && (last_cc == 0 || last_cc >= cc);
            if (!blocked) {
                if (const uint32_t comp = compose_pair(out[starter], c)) {
                    out[starter] = comp;
                    continue;
                }
            }
        }
        if (cc == 0) starter = out.size();
        out.push_back(c);
        last_cc = cc;
    }
    return out;
}

}  // namespace owl::unicode
