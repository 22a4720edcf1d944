// Matrix products and embedding lookups of the CUDA backend (matmul.cu). Weights of the file's types (F32, F16,
// BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K: owl/dtype.h) are uploaded once per model into a device layout chosen here (for example quant
// blocks split into aligned planes of scales and quants, so kernels can make 16-byte coalesced loads).
#pragma once
#include "cuda_util.cuh"
#include "owl/dtype.h"

namespace owl {
namespace cuda {

// Bytes the device layout of a [rows][cols] matrix of `type` takes (cols is a multiple of the block size). Throws
// for a type the kernels do not run (Q2_K, Q3_K, Q4_1, Q5_0, Q5_1, IQ4_NL), naming the ones they do.
size_t weight_device_bytes(DType type, int64_t rows, int64_t cols);
// Converts `host` (the file's layout, rows * dtype_row_bytes(type, cols) bytes) into the device layout at `dev`
// (weight_device_bytes bytes, from cudaMalloc). Synchronous.
void upload_weight(DType type, const void* host, int64_t rows, int64_t cols, void* dev);

// Whether matmul(type, .., T, ..) leaves x rounded to int8 in `ws` (so the next call may pass x_quantized).
bool quantizes_activations(DType type, int64_t T);

// y[t][r] = sum_k x[t][k] * W[r][k] (+ bias[r] when bias != nullptr); x: [T][cols], y: [T][rows]; every pointer on
// the device. For Q8_0 / Q4_0 the activations are first rounded to int8 blocks of 32 by ggml's rule (d = amax / 127
// kept in fp32, q = roundf(x * (1 / d))), exactly as the CPU kernels do (tests/quant_reference.py), and block
// products are exact integer sums scaled by d_w * d_x. Q4_K / Q5_K / Q6_K do the same for T <= 8 (the same int8
// blocks of 32, each meeting one 32-element sub-block; the CPU rounds these types' activations to Q8_K blocks of
// 256 instead) and take the fp32 activations for more tokens. F32 / F16 / BF16 accumulate in fp32 from fp32
// activations.
// Few tokens (decode) take a matrix-vector path reading each weight once per call; many tokens a tiled GEMM.
// `w` is in the device layout written by upload_weight. x_quantized: the workspace still holds x as the previous
// quantized matmul (same T and cols, nothing else using `ws` since) rounded it, so Q/K/V (or gate/up) round their
// shared input once.
void matmul(DType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t T, const float* bias,
            float* y, Workspace& ws, bool x_quantized, cudaStream_t stream);

// out[i][0..cols) = dequantized row ids[i] of the table (device layout; ids on the device, already range-checked).
void get_rows(DType type, const void* table, int64_t cols, const int32_t* ids, int64_t n, float* out,
              cudaStream_t stream);

}  // namespace cuda
}  // namespace owl
