// Token sampling with the options llama.cpp users know. Filters run in llama.cpp's order:
// repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw. temperature <= 0 is greedy.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace owl {

struct SamplerParams {
    float temperature = 0.0f;
    int32_t top_k = 40;            // <= 0: off
    float top_p = 0.95f;           // >= 1: off
    float min_p = 0.05f;           // <= 0: off
    float repeat_penalty = 1.0f;   // 1: off
    int32_t repeat_last_n = 64;    // how many recent tokens the penalty looks at
    uint64_t seed = 0;
};

class Sampler {
public:
    explicit Sampler(const SamplerParams& p);
    // Picks a token from logits[0..n_vocab); `history` is the sequence so far (for the penalty).
    int32_t sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history);
    const SamplerParams& params() const { return p_; }

private:
    SamplerParams p_;
    std::mt19937_64 rng_;
    // Reused across calls: no allocation per token.
    std::vector<std::pair<float, int32_t>> cand_;
    std::vector<double> weight_;
};

}  // namespace owl
