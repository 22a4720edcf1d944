// Dequantization of Q4_1, Q5_0, Q5_1 and IQ4_NL rows (q32.h).
#include <cstring>

#include "fp16_table.h"
#include "q32.h"

// d * q + m must round the product before the sum (as numpy does), not fuse them into one fma.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace owl::ops {
namespace {

// The 32 quants of a block: nibbles (elements j and j + 16 share byte j), plus bit 4 from qh for the Q5 types.
inline void quants(const uint8_t* qs, const uint8_t* qh, int out[QK]) {
    uint32_t h = 0;
    if (qh) std::memcpy(&h, qh, 4);
    for (int j = 0; j < QK / 2; ++j) {
        out[j] = int(qs[j] & 0x0f) | int((h >> j) & 1u) << 4;
        out[j + QK / 2] = int(qs[j] >> 4) | int((h >> (j + 16)) & 1u) << 4;
    }
}

template <class Block>
const Block* blocks(const void* src) { return static_cast<const Block*>(src); }

}  // namespace

void dequantize_row_q32(DType t, const void* src, float* dst, int64_t n) {
    int q[QK];
    for (int64_t i = 0; i < n / QK; ++i) {
        float* y = dst + i * QK;
        // Blocks are read through memcpy'd copies: a row need not be aligned.
        switch (t) {
            case DType::Q4_1: {
                BlockQ4_1 b;
                std::memcpy(&b, blocks<BlockQ4_1>(src) + i, sizeof b);
                quants(b.qs, nullptr, q);
                const float d = fp16_lookup(b.d), m = fp16_lookup(b.m);
                for (int j = 0; j < QK; ++j) y[j] = d * float(q[j]) + m;
                break;
            }
            case DType::Q5_0: {
                BlockQ5_0 b;
                std::memcpy(&b, blocks<BlockQ5_0>(src) + i, sizeof b);
                quants(b.qs, b.qh, q);
                const float d = fp16_lookup(b.d);
                for (int j = 0; j < QK; ++j) y[j] = d * float(q[j] - 16);
                break;
            }
            case DType::Q5_1: {
                BlockQ5_1 b;
                std::memcpy(&b, blocks<BlockQ5_1>(src) + i, sizeof b);
                quants(b.qs, b.qh, q);
                const float d = fp16_lookup(b.d), m = fp16_lookup(b.m);
                for (int j = 0; j < QK; ++j) y[j] = d * float(q[j]) + m;
                break;
            }
            case DType::IQ4_NL: {
                BlockIQ4_NL b;
                std::memcpy(&b, blocks<BlockIQ4_NL>(src) + i, sizeof b);
                quants(b.qs, nullptr, q);
                const float d = fp16_lookup(b.d);
                for (int j = 0; j < QK; ++j) y[j] = d * float(kIQ4NLValues[q[j]]);
                break;
            }
            default:
                return;
        }
    }
}

}  // namespace owl::ops
