// K-quant dequantization (through kquant_decode.h's common form) and the Q8_K activation quantizer.
#include "quant_k.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "fp16_table.h"
#include "kquant_decode.h"
#include "owl/error.h"

// Bit-identity with numpy's (d * sc) * q - (dmin * m) needs two rounded steps, never one fused multiply-add.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace owl::ops {

void dequantize_row_k(DType t, const void* src, float* dst, int64_t n) {
    if (!dtype_is_kquant(t) || n % QK_K) throw Error(std::string("dequantize_row_k: bad type or length for ") + dtype_name(t));
    const auto* row = static_cast<const uint8_t*>(src);
    const float* f16 = fp16_table();
    const bool has_min = isa::k_has_min(t);
    isa::KBlock kb;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        isa::decode_k(t, row, b, f16, kb);
        float* y = dst + b * QK_K;
        for (int k = 0; k < QK_K / 16; ++k) {
            const float dl = kb.d * float(kb.sc[k]);
            const float ml = kb.dmin * float(kb.m[k]);
            for (int i = 0; i < 16; ++i) {
                const float v = dl * float(kb.q[16 * k + i]);
                y[16 * k + i] = has_min ? v - ml : v;
            }
        }
    }
}

void quantize_row_q8_k_ref(const float* x, BlockQ8_K* out, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float* xb = x + b * QK_K;
        BlockQ8_K& o = out[b];
        float amax = 0.0f, max = 0.0f;
        for (int i = 0; i < QK_K; ++i) {
            const float ax = std::fabs(xb[i]);
            if (ax > amax) { amax = ax; max = xb[i]; }
        }
        if (amax == 0.0f) {
            std::memset(&o, 0, sizeof(o));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int i = 0; i < QK_K; ++i) {
            // Round half to even: adding and removing 1.5 * 2^23 leaves the nearest integer for |v| < 2^22.
            const float v = (iscale * xb[i] + 12582912.0f) - 12582912.0f;
            o.qs[i] = int8_t(v > 127.0f ? 127 : int(v));
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            int s = 0;
            for (int i = 0; i < 16; ++i) s += o.qs[16 * j + i];
            o.bsums[j] = int16_t(s);
        }
        o.d = 1.0f / iscale;
    }
}

namespace {
struct Q8KJob {
    QuantizeQ8KFn fn;
    const float* x;
    int64_t K;
    BlockQ8_K* out;
};
void quantize_tokens_k(const Q8KJob& j, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) j.fn(j.x + t * j.K, j.K, j.out + t * (j.K / QK_K));
}
}  // namespace

const BlockQ8_K* quantize_q8_k_tokens(ThreadPool& pool, QuantizeQ8KFn fn, const float* x, int64_t T, int64_t K) {
    if (K % QK_K) throw Error("matmul: K-quant rows must have a multiple of 256 columns, not " + std::to_string(K));
    thread_local std::vector<BlockQ8_K> buf;
    const int64_t nb = K / QK_K;
    if (buf.size() < size_t(T * nb)) buf.resize(size_t(T * nb));
    Q8KJob job{fn, x, K, buf.data()};
    if (T < 8 || pool.size() == 1) {
        quantize_tokens_k(job, 0, T);
    } else {  // one pointer captured: no allocation in std::function
        pool.parallel_for(T, [p = &job](int64_t t0, int64_t t1, int) { quantize_tokens_k(*p, t0, t1); });
    }
    return buf.data();
}

}  // namespace owl::ops
