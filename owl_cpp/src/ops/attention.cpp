// Grouped-query causal attention. Work is split over (token, head) pairs; each keeps one row of scores.
// Optional prefix keys (Owl3's visual tokens) join the same softmax ahead of the text keys.
#include <algorithm>
#include <cmath>
#include <vector>

#include "owl/ops.h"

namespace owl::ops {
namespace {

struct KeySpan {
    const float* k;
    const float* v;
    int64_t n;       // keys in the span
    int64_t stride;  // floats from one key to the next
};

// The (up to two) key spans query (t, h) attends: prefix rows, then the causal text keys.
int spans_for(const AttentionShape& s, int64_t t, int64_t h, const float* k, const float* v, const PrefixKV* prefix,
              bool text, KeySpan* out) {
    const int64_t hd = s.head_dim;
    const int64_t kvh = h / (s.n_head / s.n_head_kv);
    int n = 0;
    if (prefix && prefix->visible[t] > 0)
        out[n++] = {prefix->k + kvh * hd, prefix->v + kvh * hd, prefix->visible[t], s.n_head_kv * hd};
    if (text) out[n++] = {k + kvh * s.ctx_stride * hd, v + kvh * s.ctx_stride * hd, s.n_past + t + 1, hd};
    return n;
}

// Eight independent partial sums: a single running sum is a chain of dependent adds the compiler may not
// reorder, which made long-prompt attention latency-bound.
inline float dot(const float* a, const float* b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (; i < n; ++i) s += a[i] * b[i];
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

void attend_one(const AttentionShape& s, int64_t t, int64_t h, const float* q, const float* k, const float* v,
                const PrefixKV* prefix, bool text, float* out, float* scores) {
    const int64_t hd = s.head_dim;
    const float* qv = q + (t * s.n_head + h) * hd;
    float* o = out + (t * s.n_head + h) * hd;
    for (int64_t i = 0; i < hd; ++i) o[i] = 0.0f;
    KeySpan spans[2];
    const int n_spans = spans_for(s, t, h, k, v, prefix, text, spans);
    int64_t n = 0;
    for (int sp = 0; sp < n_spans; ++sp)
        for (int64_t j = 0; j < spans[sp].n; ++j) {
            scores[n++] = dot(qv, spans[sp].k + j * spans[sp].stride, hd) * s.scale;
        }
    if (n == 0) return;
    softmax(scores, n);
    n = 0;
    for (int sp = 0; sp < n_spans; ++sp)
        for (int64_t j = 0; j < spans[sp].n; ++j) {
            const float p = scores[n++];
            const float* vj = spans[sp].v + j * spans[sp].stride;
            for (int64_t i = 0; i < hd; ++i) o[i] += p * vj[i];
        }
}

}  // namespace

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, const float* k, const float* v, float* out,
               const PrefixKV* prefix, bool text) {
    thread_local std::vector<float> scores;
    int64_t max_prefix = 0;
    if (prefix)
        for (int64_t t = 0; t < s.T; ++t) max_prefix = std::max(max_prefix, prefix->visible[t]);
    const int64_t max_keys = max_prefix + (text ? s.n_past + s.T : 0);
    pool.parallel_for(s.T * s.n_head, [&](int64_t i0, int64_t i1, int) {
        if (scores.size() < size_t(max_keys)) scores.resize(size_t(max_keys));
        for (int64_t i = i0; i < i1; ++i)
            attend_one(s, i / s.n_head, i % s.n_head, q, k, v, prefix, text, out, scores.data());
    });
}

void attention_ref(const AttentionShape& s, const float* q, const float* k, const float* v, float* out,
                   const PrefixKV* prefix, bool text) {
    const int64_t hd = s.head_dim;
    std::vector<double> p;
    for (int64_t t = 0; t < s.T; ++t)
        for (int64_t h = 0; h < s.n_head; ++h) {
            KeySpan spans[2];
            const int n_spans = spans_for(s, t, h, k, v, prefix, text, spans);
            p.clear();
            double m = -INFINITY, sum = 0.0;
            for (int sp = 0; sp < n_spans; ++sp)
                for (int64_t j = 0; j < spans[sp].n; ++j) {
                    double acc = 0.0;
                    for (int64_t i = 0; i < hd; ++i) acc += double(q[(t * s.n_head + h) * hd + i]) * spans[sp].k[j * spans[sp].stride + i];
                    p.push_back(acc * s.scale);
                    m = std::max(m, p.back());
                }
            for (auto& x : p) { x = std::exp(x - m); sum += x; }
            for (int64_t i = 0; i < hd; ++i) {
                double acc = 0.0;
                size_t n = 0;
                for (int sp = 0; sp < n_spans; ++sp)
                    for (int64_t j = 0; j < spans[sp].n; ++j) acc += p[n++] / sum * spans[sp].v[j * spans[sp].stride + i];
                out[(t * s.n_head + h) * hd + i] = p.empty() ? 0.0f : float(acc);
            }
        }
}

}  // namespace owl::ops
