// Matrix products W·x for every storage type. Decode (one token) streams each weight row once and dots it
// with x directly; prefill dequantizes a row once and reuses it for every token.
#include <vector>

#include "fp16_table.h"
#include "owl/ops.h"

namespace owl::ops {
namespace {

// Eight independent accumulators so the compiler can vectorise without reassociating one sum.
inline float dot_f32(const float* a, const float* b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (; i < n; ++i) s += a[i] * b[i];
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

inline float dot_q8_0(const BlockQ8_0* w, const float* x, int64_t n) {
    float s = 0.0f;
    for (int64_t b = 0; b < n / QK; ++b) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const float* xb = x + b * QK;
        for (int i = 0; i < QK; i += 8)
            for (int j = 0; j < 8; ++j) acc[j] += float(w[b].qs[i + j]) * xb[i + j];
        s += fp16_lookup(w[b].d) * (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])));
    }
    return s;
}

inline float dot_q4_0(const BlockQ4_0* w, const float* x, int64_t n) {
    float s = 0.0f;
    for (int64_t b = 0; b < n / QK; ++b) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const float* xb = x + b * QK;
        for (int i = 0; i < QK / 2; i += 8)
            for (int j = 0; j < 8; ++j) {
                const uint8_t q = w[b].qs[i + j];
                acc[j] += float(int(q & 0x0f) - 8) * xb[i + j] + float(int(q >> 4) - 8) * xb[i + j + QK / 2];
            }
        s += fp16_lookup(w[b].d) * (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])));
    }
    return s;
}

// One weight row against one activation vector, without a temporary row.
float row_dot(const WeightView& w, int64_t r, const float* x, float* scratch) {
    const uint8_t* row = w.row(r);
    switch (w.type) {
        case DType::F32: return dot_f32(reinterpret_cast<const float*>(row), x, w.cols);
        case DType::Q8_0: return dot_q8_0(reinterpret_cast<const BlockQ8_0*>(row), x, w.cols);
        case DType::Q4_0: return dot_q4_0(reinterpret_cast<const BlockQ4_0*>(row), x, w.cols);
        default:  // F16 / BF16: widen, then dot
            dequantize_row(w.type, row, scratch, w.cols);
            return dot_f32(scratch, x, w.cols);
    }
}

}  // namespace

void matmul(ThreadPool& pool, const WeightView& w, const float* x, int64_t T, const float* bias, float* y) {
    const int64_t K = w.cols, N = w.rows;
    // Per-thread row buffer, reused across calls so decode does not allocate after the first token.
    thread_local std::vector<float> scratch;
    pool.parallel_for(N, [&](int64_t r0, int64_t r1, int) {
        if (scratch.size() < size_t(K)) scratch.resize(size_t(K));
        float* buf = scratch.data();
        for (int64_t r = r0; r < r1; ++r) {
            const float b = bias ? bias[r] : 0.0f;
            if (T == 1) {
                y[r] = row_dot(w, r, x, buf) + b;
                continue;
            }
            const float* row = reinterpret_cast<const float*>(w.row(r));
            if (w.type != DType::F32) {
                dequantize_row(w.type, w.row(r), buf, K);
                row = buf;
            }
            for (int64_t t = 0; t < T; ++t) y[t * N + r] = dot_f32(row, x + t * K, K) + b;
        }
    });
}

void matmul_ref(const WeightView& w, const float* x, int64_t T, const float* bias, float* y) {
    std::vector<float> row(size_t(w.cols));
    for (int64_t r = 0; r < w.rows; ++r) {
        dequantize_row(w.type, w.row(r), row.data(), w.cols);
        for (int64_t t = 0; t < T; ++t) {
            double acc = bias ? bias[r] : 0.0;
            for (int64_t k = 0; k < w.cols; ++k) acc += double(row[k]) * double(x[t * w.cols + k]);
            y[t * w.rows + r] = float(acc);
        }
    }
}

}  // namespace owl::ops
