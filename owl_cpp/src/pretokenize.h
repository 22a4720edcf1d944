// Hand-written matchers for the byte-level BPE pre-tokenizer regexes (no std::regex: too slow, no \p{..}).
// Each returns the pieces as [begin, end) code point ranges covering the whole input, exactly as
// Oniguruma's leftmost-first alternation splits it (HF `tokenizers`, Split behaviour "isolated").
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace owl::detail {

using Span = std::pair<size_t, size_t>;

// Qwen2:  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
void split_qwen2(const std::vector<uint32_t>& cps, std::vector<Span>& out);

// GPT-2:  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void split_gpt2(const std::vector<uint32_t>& cps, std::vector<Span>& out);

}  // namespace owl::detail
