// The regexes of llama.cpp's BPE pre-tokenizers as matchers (pretokenize.h's SplitRule). Each comment gives
// the regex; when tokenizer.json's original differs from llama.cpp's std::regex rewrite, the original is
// matched (it is what HF `tokenizers` runs).
#pragma once
#include "pretokenize.h"

namespace owl::detail::rules {

// GPT-2:  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t gpt2(const PreText& t, size_t pos, size_t end);
// Qwen2:  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
size_t qwen2(const PreText& t, size_t pos, size_t end);
// Llama 3: Qwen2's with \p{N}{1,3}
size_t llama3(const PreText& t, size_t pos, size_t end);
// GPT-4o (o200k):
//   [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//  |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//  |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
size_t gpt4o(const PreText& t, size_t pos, size_t end);
// Tekken (Mistral): GPT-4o's without the contractions and with \p{N} alone.
size_t tekken(const PreText& t, size_t pos, size_t end);

size_t digit(const PreText& t, size_t pos, size_t end);          // \p{N}
size_t digits(const PreText& t, size_t pos, size_t end);         // \p{N}+
size_t digits_1_3(const PreText& t, size_t pos, size_t end);     // \p{N}{1,3}
size_t ascii_digits_3(const PreText& t, size_t pos, size_t end); // [0-9][0-9][0-9]
size_t punct_default(const PreText& t, size_t pos, size_t end);  // [\p{P}\$\+<=>\^~\|]+
size_t punct_falcon(const PreText& t, size_t pos, size_t end);   // [\p{P}\$\+<=>\^~\|`]+
size_t newline(const PreText& t, size_t pos, size_t end);        // [\r\n]

// DeepSeek LLM: [\r\n] | \s?[cased letters]+ | \s?[!-/:-~！-／：-～‘-‟　-。]+ | \s+$ | [一-龥ࠀ-一가-퟿]+ | \p{N}+
size_t deepseek_letters(const PreText& t, size_t pos, size_t end);
size_t deepseek_punct(const PreText& t, size_t pos, size_t end);
size_t trailing_space(const PreText& t, size_t pos, size_t end);  // \s+$
size_t deepseek_cjk(const PreText& t, size_t pos, size_t end);
// DeepSeek Coder: [\r\n] | \s?\p{L}+ | \s?\p{P}+ | [一-龥ࠀ-一가-퟿]+ | \p{N}
size_t space_letters(const PreText& t, size_t pos, size_t end);  // \s?\p{L}+
size_t space_punct(const PreText& t, size_t pos, size_t end);    // \s?\p{P}+
// DeepSeek V3: \p{N}{1,3} | [一-龥぀-ゟ゠-ヿ]+ | the main regex below
size_t deepseek3_cjk(const PreText& t, size_t pos, size_t end);
// [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*
//  |\s*[\r\n]+|\s+(?!\S)|\s+
size_t deepseek3(const PreText& t, size_t pos, size_t end);

}  // namespace owl::detail::rules
