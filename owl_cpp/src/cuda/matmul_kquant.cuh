// Q4_K / Q5_K / Q6_K products and lookups on the device (matmul_kquant.cu), called from matmul.cu's dispatch.
// Weights are in the device layout of kquant_block.h; every pointer is on the device.
#pragma once
#include "cuda_util.cuh"
#include "owl/dtype.h"

namespace owl {
namespace cuda {

// Matrix-vector (T <= 8 tokens): y[t][r] = sum_k x[t][k] W[r][k] (+ bias[r]) with the activations as
// quantize_x_kernel rounds them: xq int8 [T][cols], xs {d (fp32 bits), sum of q} per block of 32 ([T][cols / 32]).
void kquant_matvec(DType type, const uint8_t* w, int rows, int64_t cols, const int8_t* xq, const int2* xs, int T,
                   const float* bias, float* y, cudaStream_t stream);
// Tiled SIMT GEMM for any T from fp32 activations x [T][cols] (16-byte aligned): weight tiles are dequantized as
// the CPU dequantizes, products accumulate in fp32. (On sm_80+ matmul.cu takes the tensor-core gemm_tc instead.)
void kquant_gemm(DType type, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t T,
                 const float* bias, float* y, cudaStream_t stream);
// out[i][0..cols) = dequantized row ids[i] (bit-identical to the CPU's dequantize_row).
void kquant_get_rows(DType type, const uint8_t* table, int64_t cols, const int32_t* ids, int64_t n, float* out,
                     cudaStream_t stream);

}  // namespace cuda
}  // namespace owl
