// Rotary position embedding. Angles are computed in double: at 32K positions float angles lose digits.
#include <cmath>
#include <vector>

#include "owl/ops.h"

namespace owl::ops {
namespace {

void rope_token(float* x, int64_t n_heads, int64_t head_dim, int32_t pos, float base, RopeMode mode, float* cs) {
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; ++i) {
        const double inv_freq = std::pow(double(base), -2.0 * double(i) / double(head_dim));
        const double a = double(pos) * inv_freq;
        cs[2 * i] = float(std::cos(a));
        cs[2 * i + 1] = float(std::sin(a));
    }
    for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
            const int64_t i0 = mode == RopeMode::Neox ? i : 2 * i;
            const int64_t i1 = mode == RopeMode::Neox ? i + half : 2 * i + 1;
            const float c = cs[2 * i], s = cs[2 * i + 1];
            const float a = v[i0], b = v[i1];
            v[i0] = a * c - b * s;
            v[i1] = a * s + b * c;
        }
    }
}

}  // namespace

void rope(ThreadPool& pool, float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* pos, float base, RopeMode mode) {
    thread_local std::vector<float> cs;
    pool.parallel_for(T, [&](int64_t t0, int64_t t1, int) {
        if (cs.size() < size_t(head_dim)) cs.resize(size_t(head_dim));
        for (int64_t t = t0; t < t1; ++t) rope_token(x + t * n_heads * head_dim, n_heads, head_dim, pos[t], base, mode, cs.data());
    });
}

void rope_ref(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* pos, float base, RopeMode mode) {
    const int64_t half = head_dim / 2;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < n_heads; ++h) {
            float* v = x + (t * n_heads + h) * head_dim;
            for (int64_t i = 0; i < half; ++i) {
                const double a = double(pos[t]) / std::pow(double(base), 2.0 * double(i) / double(head_dim));
                const int64_t i0 = mode == RopeMode::Neox ? i : 2 * i;
                const int64_t i1 = mode == RopeMode::Neox ? i + half : 2 * i + 1;
                const double p = v[i0], q = v[i1];
                v[i0] = float(p * std::cos(a) - q * std::sin(a));
                v[i1] = float(p * std::sin(a) + q * std::cos(a));
            }
        }
}

}  // namespace owl::ops
