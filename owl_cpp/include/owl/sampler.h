// Token sampling with the options llama.cpp users know. Filters run in llama.cpp's order:
// repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw. temperature <= 0 is greedy.
#pragma once
#include <cstdint>
#include <random>
#include <utility>
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

// A logit and its token id. Sampler's order: higher logit first, then lower id.
using Candidate = std::pair<float, int32_t>;

// out = the k best of logits[0..n) in Sampler's order (k clamped to n). A NaN logit throws Error naming the first
// one, as sample() does. Backend::top_k's host version.
void top_logits(const float* logits, int64_t n, int64_t k, std::vector<Candidate>& out);

class Sampler {
public:
    explicit Sampler(const SamplerParams& p);
    // Picks a token from logits[0..n_vocab); `history` is the sequence so far (for the penalty).
    int32_t sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history);
    const SamplerParams& params() const { return p_; }

    // Sampling from the best candidates only (a device backend selects them, Backend::top_k, and copies back
    // those instead of every logit). candidates_needed: how many sample() looks at for these parameters, 1 when
    // greedy, top_k when it is on and below n_vocab; 0 when it needs every logit (top-k off, or the repetition
    // penalty on, which changes logits before the selection). sample_top: the token sample() would pick, the
    // same random draw included, given top_logits(logits, n_vocab, candidates_needed(n_vocab)).
    int64_t candidates_needed(int64_t n_vocab) const;
    int32_t sample_top(const std::vector<Candidate>& top, int64_t n_vocab);

private:
    int32_t finish(size_t n);  // top-p, min-p, temperature and the draw over cand_[0..n), sorted

    SamplerParams p_;
    std::mt19937_64 rng_;
    // Reused across calls: no allocation per token.
    std::vector<std::pair<float, int32_t>> cand_;
    std::vector<double> weight_;
};

}  // namespace owl
