#include <cmath>

#include "owl/ops.h"

namespace owl::ops {

void swiglu(ThreadPool& pool, const float* gate, const float* up, float* out, int64_t n) {
    pool.parallel_for(n, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
            const float g = gate[i];
            out[i] = g / (1.0f + std::exp(-g)) * up[i];
        }
    });
}

void swiglu_ref(const float* gate, const float* up, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = float(double(gate[i]) / (1.0 + std::exp(-double(gate[i]))) * double(up[i]));
}

}  // namespace owl::ops
