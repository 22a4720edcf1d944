#include "owl/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "owl/error.h"

namespace owl {

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {
    // Written as !(ok) so that NaN fails too.
    if (!std::isfinite(p.temperature)) throw Error("temperature must be finite");
    if (!(p.top_p > 0.0f)) throw Error("top_p must be > 0");
    if (!(p.min_p <= 1.0f)) throw Error("min_p must be <= 1 (<= 0: off)");
    if (!(p.repeat_penalty > 0.0f) || !std::isfinite(p.repeat_penalty)) throw Error("repeat_penalty must be finite and > 0");
}

namespace {
bool by_logit(const Candidate& a, const Candidate& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
}
// A NaN would break the sort's ordering (undefined behaviour) and every probability after it.
void load_candidates(const float* logits, int64_t n, std::vector<Candidate>& cand) {
    cand.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
        if (std::isnan(logits[i])) throw Error("sampler: the logit of token " + std::to_string(i) + " is NaN (non-finite model output)");
        cand[size_t(i)] = {logits[i], int32_t(i)};
    }
}
}  // namespace

void top_logits(const float* logits, int64_t n, int64_t k, std::vector<Candidate>& out) {
    load_candidates(logits, n, out);
    const size_t keep = size_t(std::max<int64_t>(0, std::min(k, n)));
    std::partial_sort(out.begin(), out.begin() + long(keep), out.end(), by_logit);
    out.resize(keep);
}

int64_t Sampler::candidates_needed(int64_t n_vocab) const {
    if (p_.repeat_penalty != 1.0f && p_.repeat_last_n != 0) return 0;
    if (p_.temperature <= 0.0f) return n_vocab > 0 ? 1 : 0;
    return p_.top_k > 0 && p_.top_k < n_vocab ? p_.top_k : 0;
}

int32_t Sampler::sample_top(const std::vector<Candidate>& top, int64_t n_vocab) {
    const int64_t need = candidates_needed(n_vocab);
    if (need == 0 || int64_t(top.size()) != need)
        throw Error("sampler: sample_top needs the " + std::to_string(need) + " best candidates, got " +
                    std::to_string(top.size()));
    for (const Candidate& c : top)
        if (std::isnan(c.first) || c.second < 0 || c.second >= n_vocab) throw Error("sampler: bad candidate");
    if (p_.temperature <= 0.0f) return top[0].second;
    cand_.assign(top.begin(), top.end());
    return finish(cand_.size());
}

int32_t Sampler::sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history) {
    if (n_vocab <= 0) throw Error("sampler: empty vocabulary");
    load_candidates(logits, n_vocab, cand_);

    // Repetition penalty (llama.cpp / CTRL rule): shrink positive logits, grow negative ones.
    if (p_.repeat_penalty != 1.0f && p_.repeat_last_n != 0) {
        const size_t n = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(p_.repeat_last_n));
        std::unordered_set<int32_t> seen(history.end() - long(n), history.end());
        for (int32_t id : seen) {
            if (id < 0 || id >= n_vocab) continue;
            float& l = cand_[size_t(id)].first;
            l = l > 0.0f ? l / p_.repeat_penalty : l * p_.repeat_penalty;
        }
    }

    if (p_.temperature <= 0.0f) return std::min_element(cand_.begin(), cand_.end(), by_logit)->second;

    size_t n = cand_.size();
    if (p_.top_k > 0 && size_t(p_.top_k) < n) {
        std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
        n = size_t(p_.top_k);
    } else {
        std::sort(cand_.begin(), cand_.end(), by_logit);
    }
    return finish(n);
}

int32_t Sampler::finish(size_t n) {
    // Softmax over the survivors (sorted, so cand_[0] holds the max).
    std::vector<double>& prob = weight_;
    prob.resize(n);
    double sum = 0.0;
    for (size_t i = 0; i < n; ++i) sum += prob[i] = std::exp(double(cand_[i].first - cand_[0].first));
    for (auto& q : prob) q /= sum;

    if (p_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
        double cum = 0.0;
        size_t keep = n;
        for (size_t i = 0; i < n; ++i) {
            cum += prob[i];
            if (cum >= p_.top_p) { keep = i + 1; break; }
        }
        n = keep;
    }
    if (p_.min_p > 0.0f) {  // drop tokens less likely than min_p * the best one
        size_t keep = 1;
        while (keep < n && prob[keep] >= p_.min_p * prob[0]) ++keep;
        n = keep;
    }
    // Temperature, then draw with our own uniform so results do not depend on the C++ library.
    std::vector<double>& w = weight_;
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) total += w[i] = std::exp(double(cand_[i].first - cand_[0].first) / p_.temperature);
    const double u = double(rng_() >> 11) * (1.0 / 9007199254740992.0) * total;
    double cum = 0.0;
    for (size_t i = 0; i < n; ++i) {
        cum += w[i];
        if (u < cum) return cand_[i].second;
    }
    return cand_[n - 1].second;
}

}  // namespace owl
