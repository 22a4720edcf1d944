// The blocks of 32 beyond Q8_0 / Q4_0: Q4_1, Q5_0, Q5_1, IQ4_NL (dtype.h). Their row dequantization
// (quant_q32.cpp); their matmul kernels live in matmul_q32_*.h, included by each kernel file.
#pragma once
#include <cstdint>

#include "owl/dtype.h"

namespace owl::ops {

inline bool is_q32_type(DType t) {
    return t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 || t == DType::IQ4_NL;
}

// dst = the n (a multiple of 32) values of a row of one of the types above, bit-identical to gguf.quants.dequantize:
// d * q (+ m) in fp32, each operation rounded.
void dequantize_row_q32(DType t, const void* src, float* dst, int64_t n);

}  // namespace owl::ops
