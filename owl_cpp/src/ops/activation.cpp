#include <cmath>

#include "isa.h"
#include "owl/ops.h"

namespace owl::ops {

// The vectorised kernel of the active instruction set (vec_math.h); chunks of whole 8-float vectors per thread.
void swiglu(ThreadPool& pool, const float* gate, const float* up, float* out, int64_t n) {
    const auto fn = isa::active().swiglu;
    const int64_t vecs = (n + 7) / 8;
    pool.parallel_for(vecs, [&](int64_t v0, int64_t v1, int) {
        const int64_t i1 = v1 * 8 < n ? v1 * 8 : n;
        fn(gate + v0 * 8, up + v0 * 8, out + v0 * 8, i1 - v0 * 8);
    });
}

void swiglu_ref(const float* gate, const float* up, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = float(double(gate[i]) / (1.0 + std::exp(-double(gate[i]))) * double(up[i]));
}

}  // namespace owl::ops

namespace owl::ops {

// Plain std::erf per element: the FFN's n_ff values per token are few next to its two matmuls.
void gelu(ThreadPool& pool, const float* x, float* y, int64_t n) {
    pool.parallel_for((n + 1023) / 1024, [&](int64_t c0, int64_t c1, int) {
        const int64_t i1 = c1 * 1024 < n ? c1 * 1024 : n;
        for (int64_t i = c0 * 1024; i < i1; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
    });
}

void gelu_ref(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = float(0.5 * double(x[i]) * (1.0 + std::erf(double(x[i]) / std::sqrt(2.0))));
}

}  // namespace owl::ops
