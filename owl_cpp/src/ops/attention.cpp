// Grouped-query causal attention. Work is split over (token, head) pairs; each keeps one row of scores.
#include <algorithm>
#include <cmath>
#include <vector>

#include "owl/ops.h"

namespace owl::ops {
namespace {

void attend_one(const AttentionShape& s, int64_t t, int64_t h, const float* q, const float* k, const float* v, float* out, float* scores) {
    const int64_t hd = s.head_dim;
    const int64_t kvh = h / (s.n_head / s.n_head_kv);
    const int64_t n_keys = s.n_past + t + 1;  // causal: keys up to and including this position
    const float* qv = q + (t * s.n_head + h) * hd;
    const float* kb = k + kvh * s.ctx_stride * hd;
    const float* vb = v + kvh * s.ctx_stride * hd;
    for (int64_t j = 0; j < n_keys; ++j) {
        const float* kj = kb + j * hd;
        float acc = 0.0f;
        for (int64_t i = 0; i < hd; ++i) acc += qv[i] * kj[i];
        scores[j] = acc * s.scale;
    }
    softmax(scores, n_keys);
    float* o = out + (t * s.n_head + h) * hd;
    for (int64_t i = 0; i < hd; ++i) o[i] = 0.0f;
    for (int64_t j = 0; j < n_keys; ++j) {
        const float p = scores[j];
        const float* vj = vb + j * hd;
        for (int64_t i = 0; i < hd; ++i) o[i] += p * vj[i];
    }
}

}  // namespace

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, const float* k, const float* v, float* out) {
    thread_local std::vector<float> scores;
    const int64_t max_keys = s.n_past + s.T;
    pool.parallel_for(s.T * s.n_head, [&](int64_t i0, int64_t i1, int) {
        if (scores.size() < size_t(max_keys)) scores.resize(size_t(max_keys));
        for (int64_t i = i0; i < i1; ++i) attend_one(s, i / s.n_head, i % s.n_head, q, k, v, out, scores.data());
    });
}

void attention_ref(const AttentionShape& s, const float* q, const float* k, const float* v, float* out) {
    const int64_t hd = s.head_dim, group = s.n_head / s.n_head_kv;
    std::vector<double> p;
    for (int64_t t = 0; t < s.T; ++t)
        for (int64_t h = 0; h < s.n_head; ++h) {
            const int64_t kvh = h / group, n_keys = s.n_past + t + 1;
            p.assign(size_t(n_keys), 0.0);
            double m = -INFINITY, sum = 0.0;
            for (int64_t j = 0; j < n_keys; ++j) {
                double acc = 0.0;
                for (int64_t i = 0; i < hd; ++i) acc += double(q[(t * s.n_head + h) * hd + i]) * k[(kvh * s.ctx_stride + j) * hd + i];
                p[j] = acc * s.scale;
                m = std::max(m, p[j]);
            }
            for (auto& x : p) { x = std::exp(x - m); sum += x; }
            for (int64_t i = 0; i < hd; ++i) {
                double acc = 0.0;
                for (int64_t j = 0; j < n_keys; ++j) acc += p[j] / sum * v[(kvh * s.ctx_stride + j) * hd + i];
                out[(t * s.n_head + h) * hd + i] = float(acc);
            }
        }
}

}  // namespace owl::ops
