// K-quant rows (Q2_K .. Q6_K) <-> float, and the Q8_K activations their kernels take (quant_k.cpp).
#pragma once
#include <cstdint>

#include "owl/dtype.h"
#include "owl/threadpool.h"

namespace owl::ops {

// Row of n elements (a multiple of QK_K) of a K type to float, bit-identical to gguf.quants.dequantize.
void dequantize_row_k(DType t, const void* src, float* dst, int64_t n);

// llama.cpp's Q8_K rule per block of 256: the element of largest magnitude (the first, on ties) maps to -127
// (iscale = -127 / max), q = min(127, round-half-even(iscale * x)), d = 1 / iscale; an all-zero block gets d = 0.
// bsums[j] = sum of q[16j .. 16j+15]. n must be a multiple of QK_K.
void quantize_row_q8_k_ref(const float* x, BlockQ8_K* out, int64_t n);

using QuantizeQ8KFn = void (*)(const float* x, int64_t K, BlockQ8_K* out);

// T tokens of K activations in the calling thread's own buffer (valid until its next call), by `fn` (the active
// kernels' quantizer), split over the pool when T is large.
const BlockQ8_K* quantize_q8_k_tokens(ThreadPool& pool, QuantizeQ8KFn fn, const float* x, int64_t T, int64_t K);

}  // namespace owl::ops
