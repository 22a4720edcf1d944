// Storage types <-> float, bit-compatible with ggml's reference quantizers (and the `gguf` package).
#include <cmath>
#include <algorithm>
#include <cstring>

#include "fp16_table.h"
#include "owl/ops.h"
#include "q32.h"
#include "quant_k.h"

namespace owl::ops {

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
    switch (t) {
        case DType::F32:
            std::memcpy(dst, src, size_t(n) * 4);
            return;
        case DType::F16: {
            const uint16_t* s = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = fp16_lookup(s[i]);
            return;
        }
        case DType::BF16: {
            const uint16_t* s = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
            return;
        }
        case DType::Q8_0: {
            const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
            for (int64_t i = 0; i < n / QK; ++i) {
                const float d = fp16_lookup(b[i].d);
                for (int j = 0; j < QK; ++j) dst[i * QK + j] = d * float(b[i].qs[j]);
            }
            return;
        }
        case DType::Q4_0: {
            const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
            for (int64_t i = 0; i < n / QK; ++i) {
                const float d = fp16_lookup(b[i].d);
                for (int j = 0; j < QK / 2; ++j) {
                    dst[i * QK + j] = d * float(int(b[i].qs[j] & 0x0f) - 8);
                    dst[i * QK + j + QK / 2] = d * float(int(b[i].qs[j] >> 4) - 8);
                }
            }
            return;
        }
        case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::IQ4_NL:
            dequantize_row_q32(t, src, dst, n);
            return;
        case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
            dequantize_row_k(t, src, dst, n);
            return;
    }
}

void quantize_row_q8_0(const float* src, BlockQ8_0* dst, int64_t n) {
    for (int64_t i = 0; i < n / QK; ++i) {
        const float* x = src + i * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; ++j) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        dst[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK; ++j) dst[i].qs[j] = int8_t(std::roundf(x[j] * id));
    }
}

void quantize_row_q4_0(const float* src, BlockQ4_0* dst, int64_t n) {
    for (int64_t i = 0; i < n / QK; ++i) {
        const float* x = src + i * QK;
        float amax = 0.0f, max = 0.0f;  // max keeps the sign of the largest-magnitude value
        for (int j = 0; j < QK; ++j) {
            if (amax < std::fabs(x[j])) { amax = std::fabs(x[j]); max = x[j]; }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        dst[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK / 2; ++j) {
            const int q0 = std::min(15, int(int8_t(x[j] * id + 8.5f)));
            const int q1 = std::min(15, int(int8_t(x[j + QK / 2] * id + 8.5f)));
            dst[i].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

void get_rows(const WeightView& table, const int32_t* ids, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) dequantize_row(table.type, table.row(ids[i]), out + i * table.cols, table.cols);
}

}  // namespace owl::ops
