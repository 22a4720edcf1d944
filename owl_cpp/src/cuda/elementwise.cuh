// The small ops of the CUDA backend (elementwise.cu): norms, rotary embedding, residual adds, SwiGLU, KV cache
// writes and Owl3's K|V split and gate mix. Every pointer on the device; every launch on `stream`.
#pragma once
#include "cuda_util.cuh"
#include "owl/dtype.h"
#include "owl/ops.h"

namespace owl {
namespace cuda {

void fill(float* x, int64_t n, float value, cudaStream_t stream);
void add(float* x, const float* y, int64_t n, cudaStream_t stream);
void swiglu(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream);
// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w; y may be x.
void rms_norm(const float* x, const float* w, int64_t T, int64_t n, float eps, float* y, cudaStream_t stream);
// y[t] = (x[t] - mean) / sqrt(var + eps) * w + b; y may be x.
void layer_norm(const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* y, cudaStream_t stream);
// y = x / 2 * (1 + erf(x / sqrt 2)); y may be x.
void gelu(const float* x, float* y, int64_t n, cudaStream_t stream);
// In place over x [T][n_heads][head_dim]; inv_freq[i] = base^(-2i / head_dim) in double (rope_inv_freq), angles
// in double (float angles lose digits at 32K positions).
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* pos, const double* inv_freq,
          RopeMode mode, cudaStream_t stream);
// src [T][n_head_kv][head_dim] -> cache [n_head_kv][ctx][head_dim] rows pos0.. (F32 copy or F16 round-to-nearest-even).
void kv_store(const float* src, int64_t T, int64_t n_head_kv, int64_t head_dim, void* cache, DType type, int64_t ctx,
              int64_t pos0, cudaStream_t stream);
void split_kv(const float* kv, int64_t T, int64_t n_head_kv, int64_t head_dim, float* k, float* v, cudaStream_t stream);
// x[t] = x[t] * (1 - s) + y[t] * s, s = sigmoid(gate[t] or gate[0] when broadcast), rows with mask[t] == 0 kept.
void gate_mix(float* x, const float* y, const float* gate, bool broadcast, const int64_t* mask, int64_t T, int64_t C,
              cudaStream_t stream);

}  // namespace cuda
}  // namespace owl
