// CPU ops. Each op has a plain reference (`*_ref`: scalar, obviously correct, double accumulation) that the
// fast multithreaded version is tested against. Layouts are row-major; a "row" is ggml's ne[0].
#pragma once
#include <cstddef>
#include <cstdint>

#include "owl/dtype.h"
#include "owl/threadpool.h"

namespace owl {

// A 2-D weight matrix [rows = output features][cols = input features] in any supported type.
struct WeightView {
    DType type = DType::F32;
    int64_t rows = 0;
    int64_t cols = 0;
    const void* data = nullptr;
    int64_t row_bytes() const { return dtype_row_bytes(type, cols); }
    const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * row_bytes(); }
};

enum class RopeMode { Norm, Neox };  // Norm: pairs (2i, 2i+1) (llama GGUFs); Neox: pairs (i, i + d/2) (qwen2)

namespace ops {

// Row conversion between storage types and float. `n` must be a multiple of the type's block size.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
void quantize_row_q8_0(const float* src, BlockQ8_0* dst, int64_t n);
void quantize_row_q4_0(const float* src, BlockQ4_0* dst, int64_t n);

// y[t][r] = sum_k x[t][k] * W[r][k]  (+ bias[r] when bias != nullptr); x: [T][cols], y: [T][rows].
void matmul(ThreadPool& pool, const WeightView& w, const float* x, int64_t T, const float* bias, float* y);
void matmul_ref(const WeightView& w, const float* x, int64_t T, const float* bias, float* y);

// out[i] = dequantized row ids[i] of the embedding table.
void get_rows(const WeightView& table, const int32_t* ids, int64_t n, float* out);

// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, for T rows of n; y may alias x.
void rms_norm(ThreadPool& pool, const float* x, const float* w, int64_t T, int64_t n, float eps, float* y);
void rms_norm_ref(const float* x, const float* w, int64_t T, int64_t n, float eps, float* y);

// In-place rotary embedding of x[T][n_heads][head_dim]; token t is at position pos[t].
void rope(ThreadPool& pool, float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* pos, float base, RopeMode mode);
void rope_ref(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* pos, float base, RopeMode mode);

// out[i] = silu(gate[i]) * up[i]; out may alias gate.
void swiglu(ThreadPool& pool, const float* gate, const float* up, float* out, int64_t n);
void swiglu_ref(const float* gate, const float* up, float* out, int64_t n);

// In-place numerically stable softmax of one row.
void softmax(float* x, int64_t n);
void softmax_ref(float* x, int64_t n);

// Grouped-query causal attention over a KV cache.
//   q:   [T][n_head][head_dim], queries for positions n_past .. n_past+T-1
//   k,v: [n_head_kv][ctx_stride][head_dim], positions 0 .. n_past+T-1 already written
//   out: [T][n_head][head_dim]
// Query head h reads KV head h / (n_head / n_head_kv). Scores are never materialised beyond one row.
struct AttentionShape {
    int64_t T = 1, n_past = 0, n_head = 1, n_head_kv = 1, head_dim = 1, ctx_stride = 1;
    float scale = 1.0f;
};
void attention(ThreadPool& pool, const AttentionShape& s, const float* q, const float* k, const float* v, float* out);
void attention_ref(const AttentionShape& s, const float* q, const float* k, const float* v, float* out);

}  // namespace ops
}  // namespace owl
