// Causal grouped-query attention over the KV cache on the device (attention.cu); the same contract as
// ops::attention (owl/ops.h), every pointer on the device.
#pragma once
#include "cuda_util.cuh"
#include "owl/ops.h"

namespace owl {
namespace cuda {

//   q:   [T][n_head][head_dim] fp32, queries at positions n_past .. n_past + T - 1
//   k,v: [n_head_kv][ctx_stride][head_dim] of s.kv_type (F32 or F16), positions 0 .. n_past + T - 1 written
//   out: [T][n_head][head_dim] fp32
// Query t of head h sees keys 0 .. n_past + t of KV head h / (n_head / n_head_kv), scores scaled by s.scale.
// Prefix keys (Owl3's visual tokens): pk / pv [rows][n_head_kv][head_dim] fp32 and visible[T] (int64): query t
// also sees prefix rows [0, visible[t]) in the same softmax, before the text keys; pk == nullptr means none. With
// text == false only the prefix is attended, and a query that sees no key at all gets zeros.
void attention(const ops::AttentionShape& s, const float* q, const void* k, const void* v, float* out,
               const float* pk, const float* pv, const int64_t* visible, bool text, Workspace& ws,
               cudaStream_t stream);

}  // namespace cuda
}  // namespace owl
