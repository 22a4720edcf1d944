// The tensor-core prefill GEMMs: when they run, and the F16 / K-quant one (matmul_tc.cu). Q4_0 / Q8_0 run theirs
// in matmul.cu (gemm_q_kernel<TY, true>), next to the SIMT variant they share their tile loads with.
#pragma once
#include "cuda_util.cuh"
#include "owl/dtype.h"

namespace owl {
namespace cuda {

// Whether a GEMM of T tokens on the current device takes the tensor-core kernels: T > kDecodeT (fewer tokens run
// the matrix-vector kernels), the code the device runs was compiled for sm_80 or later (mma.sync; sm_75 keeps the
// SIMT GEMMs), and the environment variable OWL_CUDA_TC is not "0" (the SIMT GEMMs, for A/B benchmarks and tests;
// read on each call).
bool use_tensor_cores(int64_t T);

// y[t][r] = sum_k x[t][k] W[r][k] (+ bias[r]) for F16 weights W [rows][cols] (cols % 8 == 0) or Q4_K / Q5_K /
// Q6_K weights in kquant_block.h's layout (cols % 256 == 0); w and x 16-byte aligned, T > kDecodeT.
// Each token's activations are scaled by a power of two 2^k_t (its largest |x| into [2^14, 2^15), so nothing
// overflows fp16 and small values stay normal) and split into two fp16 parts, hi = fp16(x 2^k_t) and
// lo = fp16(x 2^k_t - hi), which carry 22 of fp32's 24 bits. K-quant weights are dequantized in fp32 as the CPU
// does and split the same way (unscaled: model weights are far inside fp16's range); F16 weights are exact. The
// parts meet on the tensor cores with fp32 accumulation (the lo x lo term, 2^-22 of the product, is dropped) and
// y = acc 2^-k_t (+ bias), exact as a power of two. So the result is the fp32 product to about 2^-22 relative per
// term, and needs no looser tolerance than the SIMT kernels (which take the same fp32 activations).
// Uses T ints of `ws`.
void gemm_tc(DType type, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t T, const float* bias,
             float* y, Workspace& ws, cudaStream_t stream);

}  // namespace cuda
}  // namespace owl
