// The tensor-core prefill GEMMs: when they run, and the F16 one (matmul_tc.cu). Q4_0 / Q8_0 run theirs in
// matmul.cu (gemm_q_kernel<TY, true>), next to the SIMT variant they share their tile loads with.
#pragma once
#include "cuda_util.cuh"

namespace owl {
namespace cuda {

// Whether a GEMM of T tokens on the current device takes the tensor-core kernels: T > kDecodeT (fewer tokens run
// the matrix-vector kernels), the code the device runs was compiled for sm_80 or later (mma.sync; sm_75 keeps the
// SIMT GEMMs), and the environment variable OWL_CUDA_TC is not "0" (the SIMT GEMMs, for A/B benchmarks and tests;
// read on each call).
bool use_tensor_cores(int64_t T);

// y[t][r] = sum_k x[t][k] W[r][k] (+ bias[r]) for F16 weights W [rows][cols] (cols % 8 == 0; w and x 16-byte
// aligned), T > kDecodeT. Each token's activations are scaled by a power of two 2^k_t (its largest |x| into
// [2^14, 2^15), so nothing overflows fp16 and small values stay normal) and split into two fp16 parts,
// hi = fp16(x 2^k_t), lo = fp16(x 2^k_t - hi), which carry 22 of fp32's 24 bits; hi and lo each meet the weights
// on the tensor cores with fp32 accumulation and y = acc 2^-k_t (+ bias), exact as a power of two. So the result
// is the fp32 product to about 2^-22 relative per activation, and needs no looser tolerance than the SIMT kernel.
// Uses T ints of `ws`.
void gemm_f16_tc(const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t T, const float* bias,
                 float* y, Workspace& ws, cudaStream_t stream);

}  // namespace cuda
}  // namespace owl
