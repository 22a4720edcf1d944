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
