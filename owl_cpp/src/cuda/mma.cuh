// Warp-level tensor-core products (PTX mma.sync, sm_80 and later) for the prefill GEMMs, with the register
// layouts the PTX ISA documents, so a kernel knows which row and token each accumulator element belongs to
// (nvcuda::wmma leaves that unspecified, and the quantized GEMMs scale every block of 32 columns per row and
// token). In a warp, g = lane >> 2 and c = lane & 3; a "word" is 32 bits of a shared-memory row, 2 halves or
// 4 int8 values, consecutive along k:
//   A (16 rows x k, row-major): a[0] = row g, word c; a[1] = row g + 8, word c; a[2] = row g, word 4 + c;
//                               a[3] = row g + 8, word 4 + c
//   B (k x 8 tokens, stored token-major): b[0] = token g, word c; b[1] = token g, word 4 + c
//   C (16 x 8, fp32 or int32): d[0], d[1] = row g, tokens 2c, 2c + 1; d[2], d[3] = row g + 8, the same tokens
// For m16n8k16 f16 the 8 words span 16 k; for m16n8k32 s8 they span 32 k.
//
// Compiled for every architecture of the build; below sm_80 the bodies trap, and the host never launches a
// tensor-core kernel there (use_tensor_cores in matmul_tc.cuh checks what the device runs).
#pragma once
#include <cstdint>

namespace owl {
namespace cuda {
namespace mma {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define OWL_MMA_SYNC 1
#else
#define OWL_MMA_SYNC 0
#endif

// A warp's 2 x 2 fp32 accumulator fragments (32 rows x 16 tokens of the GEMM tiles), zeroed.
__device__ __forceinline__ void zero(float (&acc)[2][2][4]) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 2; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
}

// d = A . B over 32 k (int8 x int8, exact int32 sums).
__device__ __forceinline__ void s8_16x8x32(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if OWL_MMA_SYNC
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %10, %10, %10};\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0));
#elif defined(__CUDA_ARCH__)
    (void)a, (void)b;
    d[0] = d[1] = d[2] = d[3] = 0;
    __trap();
#endif
}

// d += A . B over 16 k (fp16 x fp16, fp32 accumulation; the tensor cores round that sum toward zero).
__device__ __forceinline__ void f16_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if OWL_MMA_SYNC
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
    (void)a, (void)b, (void)d;
    __trap();
#endif
}

// A fragment of rows r0 .. r0 + 15 and B fragment of tokens t0 .. t0 + 7 at word w0 of tiles with `stride` words
// per row (the padding of the callers' tiles, 20 words, puts the 8 rows a load touches on distinct banks).
template <int S>
__device__ __forceinline__ void load_a(const uint32_t (*tile)[S], int r0, int w0, uint32_t (&a)[4]) {
    const int g = (threadIdx.x & 31) >> 2, c = threadIdx.x & 3;
    a[0] = tile[r0 + g][w0 + c];
    a[1] = tile[r0 + g + 8][w0 + c];
    a[2] = tile[r0 + g][w0 + 4 + c];
    a[3] = tile[r0 + g + 8][w0 + 4 + c];
}
template <int S>
__device__ __forceinline__ void load_b(const uint32_t (*tile)[S], int t0, int w0, uint32_t (&b)[2]) {
    const int g = (threadIdx.x & 31) >> 2, c = threadIdx.x & 3;
    b[0] = tile[t0 + g][w0 + c];
    b[1] = tile[t0 + g][w0 + 4 + c];
}

// The prefill GEMMs' tensor-core warp tile: 32 rows x 16 tokens (2 x 2 mma tiles of 16 x 8), at rows
// wr = (warp & 1) * 32 and tokens wt = (warp >> 1) * 16 of the block's 64 x 64 output tile (the warp grid of
// the SIMT kernels in matmul_common.cuh). acc[mi][ni][e]: row wr + 16 mi + g + 8 (e >> 1), token
// wt + 8 ni + 2c + (e & 1). Stores y[t][r] = out(acc, t) + bias[r] for the elements inside rows x T.
template <class Out>
__device__ __forceinline__ void store_warp_tile(const float (&acc)[2][2][4], int64_t row0, int64_t tok0, int64_t rows,
                                                int64_t T, const float* bias, float* y, Out&& out) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const int64_t rb = row0 + (warp & 1) * 32 + g, tb = tok0 + (warp >> 1) * 16 + 2 * c;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t r = rb + 16 * mi + 8 * h;
            if (r >= rows) continue;
            const float b = bias ? bias[r] : 0.0f;
#pragma unroll
            for (int ni = 0; ni < 2; ++ni)
#pragma unroll
                for (int k = 0; k < 2; ++k) {
                    const int64_t t = tb + 8 * ni + k;
                    if (t < T) y[t * rows + r] = out(acc[mi][ni][2 * h + k], t) + b;
                }
        }
}

}  // namespace mma
}  // namespace cuda
}  // namespace owl
