// Grouped-query causal attention: the driver. Work is split into units of one KV head's query rows for a run of
// tokens (so each K/V block read from the cache serves all of them); the kernel for one unit lives in
// attention_kernel.h, compiled per instruction set. Optional prefix keys (Owl3's visual tokens) join the same
// softmax ahead of the text keys.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "isa.h"
#include "owl/error.h"
#include "owl/ops.h"

namespace owl::ops {
namespace {

// Whether the text cache is fp16 (else float); throws on any other type.
bool kv_is_f16(const AttentionShape& s) {
    if (s.kv_type != DType::F32 && s.kv_type != DType::F16)
        throw Error(std::string("attention: the KV cache must be F32 or F16, not ") + dtype_name(s.kv_type));
    return s.kv_type == DType::F16;
}

// KV head g's rows of the text cache.
const void* kv_head(const void* cache, bool f16, const AttentionShape& s, int64_t g) {
    return static_cast<const char*>(cache) + g * s.ctx_stride * s.head_dim * (f16 ? 2 : 4);
}

struct KeySpan {
    const void* k;
    const void* v;
    bool f16;
    int64_t n;       // keys in the span
    int64_t stride;  // elements from one key to the next
    double at(const void* p, int64_t i) const {
        return f16 ? double(fp16_to_fp32(static_cast<const uint16_t*>(p)[i])) : double(static_cast<const float*>(p)[i]);
    }
};

// The (up to two) key spans query (t, h) attends: prefix rows, then the causal text keys.
int spans_for(const AttentionShape& s, int64_t t, int64_t h, const void* k, const void* v, bool f16,
              const PrefixKV* prefix, bool text, KeySpan* out) {
    const int64_t hd = s.head_dim;
    const int64_t kvh = h / (s.n_head / s.n_head_kv);
    int n = 0;
    if (prefix && prefix->visible[t] > 0)
        out[n++] = {prefix->k + kvh * hd, prefix->v + kvh * hd, false, prefix->visible[t], s.n_head_kv * hd};
    if (text) out[n++] = {kv_head(k, f16, s, kvh), kv_head(v, f16, s, kvh), f16, s.n_past + t + 1, hd};
    return n;
}

// Rows (query vectors) per unit of work: enough for each K/V block copied out of the cache to be reused many
// times, few enough that the unit's Q, O and scores stay in L1/L2.
constexpr int64_t kUnitRows = 64;

struct AttnJob {
    const AttentionShape* s;
    const float* q;
    const void *k, *v;
    bool f16;
    float* out;
    const PrefixKV* prefix;
    bool text;
    isa::AttnFn fn;
    int64_t group, tokens_per_unit, tiles, heads_per_unit, head_parts;
};

// Unit u -> (token tile, KV head, part of its query heads). Tiles are visited in the order 0, n-1, 1, n-2, ...
// so that the contiguous ranges the pool hands to threads hold as many early (short) causal rows as late ones.
void run_unit(const AttnJob& j, int64_t u, float* work) {
    const AttentionShape& s = *j.s;
    const int64_t part = u % j.head_parts;
    const int64_t g = (u / j.head_parts) % s.n_head_kv;
    const int64_t zig = u / (j.head_parts * s.n_head_kv);
    const int64_t tile = zig % 2 == 0 ? zig / 2 : j.tiles - 1 - zig / 2;
    const int64_t hd = s.head_dim;
    isa::AttnArgs a;
    a.q = j.q;
    a.out = j.out;
    a.n_head = s.n_head;
    a.head_dim = hd;
    a.t0 = tile * j.tokens_per_unit;
    a.t1 = std::min(s.T, a.t0 + j.tokens_per_unit);
    a.h0 = g * j.group + part * j.heads_per_unit;
    a.h1 = std::min((g + 1) * j.group, a.h0 + j.heads_per_unit);
    if (a.h0 >= a.h1) return;
    a.scale = s.scale;
    if (j.prefix) a.spans[a.n_spans++] = {j.prefix->k + g * hd, j.prefix->v + g * hd, s.n_head_kv * hd, false, j.prefix->visible, 0};
    if (j.text) a.spans[a.n_spans++] = {kv_head(j.k, j.f16, s, g), kv_head(j.v, j.f16, s, g), hd, j.f16, nullptr, s.n_past};
    a.work = work;
    j.fn(a);
}

}  // namespace

namespace isa {
int64_t attention_work_floats(int64_t rows, int64_t head_dim) {
    const int64_t hd8 = (head_dim + 7) / 8 * 8;
    return 2 * rows * hd8 + 2 * kAttnKeyBlock * hd8 + rows * kAttnKeyBlock + 2 * rows;
}
}  // namespace isa

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, const void* k, const void* v, float* out,
               const PrefixKV* prefix, bool text) {
    AttnJob j{&s, q, k, v, kv_is_f16(s), out, prefix, text, isa::active().attention, s.n_head / s.n_head_kv, 1, 1, 1, 1};
    j.tokens_per_unit = std::max<int64_t>(1, std::min(s.T, kUnitRows / j.group));
    j.tiles = (s.T + j.tokens_per_unit - 1) / j.tokens_per_unit;
    // Few tokens (decode): split each group's query heads so every thread has a unit.
    const int64_t units_per_part = j.tiles * s.n_head_kv;
    j.head_parts = std::min<int64_t>(j.group, (pool.size() + units_per_part - 1) / units_per_part);
    j.heads_per_unit = (j.group + j.head_parts - 1) / j.head_parts;
    const int64_t work_floats = isa::attention_work_floats(j.tokens_per_unit * j.heads_per_unit, s.head_dim);
    pool.parallel_for(units_per_part * j.head_parts, [p = &j, work_floats](int64_t u0, int64_t u1, int) {
        thread_local std::vector<float> work;  // grows only: no allocation once decode has warmed up
        if (work.size() < size_t(work_floats)) work.resize(size_t(work_floats));
        for (int64_t u = u0; u < u1; ++u) run_unit(*p, u, work.data());
    });
}

void attention_ref(const AttentionShape& s, const float* q, const void* k, const void* v, float* out,
                   const PrefixKV* prefix, bool text) {
    const bool f16 = kv_is_f16(s);
    const int64_t hd = s.head_dim;
    std::vector<double> p;
    for (int64_t t = 0; t < s.T; ++t)
        for (int64_t h = 0; h < s.n_head; ++h) {
            KeySpan spans[2];
            const int n_spans = spans_for(s, t, h, k, v, f16, prefix, text, spans);
            p.clear();
            double m = -INFINITY, sum = 0.0;
            for (int sp = 0; sp < n_spans; ++sp)
                for (int64_t j = 0; j < spans[sp].n; ++j) {
                    double acc = 0.0;
                    for (int64_t i = 0; i < hd; ++i)
                        acc += double(q[(t * s.n_head + h) * hd + i]) * spans[sp].at(spans[sp].k, j * spans[sp].stride + i);
                    p.push_back(acc * s.scale);
                    m = std::max(m, p.back());
                }
            for (auto& x : p) { x = std::exp(x - m); sum += x; }
            for (int64_t i = 0; i < hd; ++i) {
                double acc = 0.0;
                size_t n = 0;
                for (int sp = 0; sp < n_spans; ++sp)
                    for (int64_t j = 0; j < spans[sp].n; ++j)
                        acc += p[n++] / sum * spans[sp].at(spans[sp].v, j * spans[sp].stride + i);
                out[(t * s.n_head + h) * hd + i] = p.empty() ? 0.0f : float(acc);
            }
        }
}

}  // namespace owl::ops
