// What the matrix-product kernels of matmul.cu and matmul_kquant.cu share: the matrix-vector kernels' thread
// groups and their final reduction, and the tiled GEMMs' tile walk, fp32 inner step and output stores.
#pragma once
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_util.cuh"
#include "owl/error.h"

namespace owl {
namespace cuda {
namespace mm {

constexpr int kDecodeT = 8;  // largest token count of the matrix-vector paths

// Streaming weight load: read once per call, so it should not push activations out of L1 / L2.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) { return __ldcs(p); }

// ---- matrix-vector: blocks of kMvThreads cut into groups of tpr = 1 << tpr_shift threads, R rows per group ----

constexpr int kMvThreads = 128;
// Blocks per SM for __launch_bounds__, i.e. a register budget that fits each T's accumulators. Without it ptxas
// aimed at fewer registers by issuing each row's weight load just before its use (one load in flight per thread
// instead of R); with these budgets all R loads of a step are issued together and nothing spills (sm_75..sm_90).
__host__ __device__ constexpr int mv_min_blocks(int T) { return T == 1 ? 7 : T <= 4 ? 4 : T <= 6 ? 3 : 2; }

// f(std::integral_constant<int, T>{}) for a run-time token count T in 1..kDecodeT: the matrix-vector kernels are
// compiled per T (their accumulators are registers).
template <class F>
void with_decode_tokens(int64_t T, const char* what, F&& f) {
    switch (T) {
        case 1: return f(std::integral_constant<int, 1>{});
        case 2: return f(std::integral_constant<int, 2>{});
        case 3: return f(std::integral_constant<int, 3>{});
        case 4: return f(std::integral_constant<int, 4>{});
        case 5: return f(std::integral_constant<int, 5>{});
        case 6: return f(std::integral_constant<int, 6>{});
        case 7: return f(std::integral_constant<int, 7>{});
        case 8: return f(std::integral_constant<int, 8>{});
        default: throw Error(std::string(what) + ": bad token count " + std::to_string(T));
    }
}
static_assert(kDecodeT == 8, "with_decode_tokens covers 1..8");

// Threads per row group: one unit per thread and step where the row allows, 8..128.
inline int mv_tpr_shift(int64_t units) {
    int shift = 3;
    while (shift < 7 && (int64_t(1) << shift) < units) ++shift;
    return shift;
}

// Sums each group's partial results acc[i][t] (rows r0 + i) over its threads and writes y[t][r] (+ bias[r]):
// shuffles within a warp (groups of <= 32 lanes are aligned segments of it), then through shared memory across
// the warps of a group of 64 or 128.
template <int R, int T>
__device__ __forceinline__ void mv_reduce_store(float (&acc)[R][T], int tpr_shift, int r0, int rows,
                                                const float* bias, float* y) {
    const int tpr = 1 << tpr_shift, l = threadIdx.x & (tpr - 1);
    const int width = min(tpr, 32);
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
                if (o < width) acc[i][t] += __shfl_xor_sync(0xffffffffu, acc[i][t], o);

    if (tpr <= 32) {
        if (l == 0) {
#pragma unroll
            for (int i = 0; i < R; ++i) {
                if (r0 + i >= rows) break;
                const float b = bias ? bias[r0 + i] : 0.0f;
#pragma unroll
                for (int t = 0; t < T; ++t) y[int64_t(t) * rows + r0 + i] = acc[i][t] + b;
            }
        }
        return;
    }
    // tpr = 64 or 128: a group spans tpr / 32 warps.
    __shared__ float red[kMvThreads / 32][R * T];
    const int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
            for (int t = 0; t < T; ++t) red[warp][i * T + t] = acc[i][t];
    }
    __syncthreads();
    const int per_group = tpr >> 5, groups = kMvThreads >> tpr_shift;
    if (int(threadIdx.x) < groups * R * T) {
        const int gg = threadIdx.x / (R * T), k = threadIdx.x % (R * T);
        float s = 0.0f;
        for (int w = 0; w < per_group; ++w) s += red[gg * per_group + w][k];
        const int r = (int(blockIdx.x) * groups + gg) * R + k / T;
        if (r < rows) y[int64_t(k % T) * rows + r] = s + (bias ? bias[r] : 0.0f);
    }
}

// ---- prefill: tiled GEMM, 64 rows x 64 tokens per block of 256 threads ----
//
// Warps form a 2 (rows) x 4 (tokens) grid of 32 x 16 tiles; in a warp, lane & 7 picks the row and lane >> 3 the
// token, and each thread owns rows tx + 8i and tokens ty + 4j (i, j < 4). Eight lanes reading eight consecutive
// rows of a shared tile hit disjoint banks thanks to the row padding (80 or 144 bytes: 20 or 36 words, 8 rows
// cover all 32 banks once), and the y stores of a warp are 32-byte runs of 8 consecutive rows.
// Tiles are staged through registers: global loads of stage s + 1 are issued before computing stage s.

constexpr int kGemmThreads = 256;
constexpr int kTileR = 64, kTileT = 64;
constexpr int kFK = 32, kFStride = 36;  // fp32 tiles: columns per stage, words per tile row

// Tile (row0, tok0) of a 1-D grid; consecutive blocks share a weight tile (read from DRAM once, reused in L2).
__device__ __forceinline__ void gemm_tile(int64_t T, int64_t& row0, int64_t& tok0) {
    const int64_t tok_tiles = (T + kTileT - 1) / kTileT;
    row0 = int64_t(blockIdx.x) / tok_tiles * kTileR;
    tok0 = int64_t(blockIdx.x) % tok_tiles * kTileT;
}

// acc[i][j] += row rl + 8 i of sw . token tl + 4 j of sx over one fp32 stage of kFK columns.
__device__ __forceinline__ void gemm_f_stage(const float (&sw)[kTileR][kFStride], const float (&sx)[kTileT][kFStride],
                                             int rl, int tl, float (&acc)[4][4]) {
#pragma unroll
    for (int c = 0; c < kFK; c += 4) {
        float4 a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = *reinterpret_cast<const float4*>(&sw[rl + 8 * i][c]);
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = *reinterpret_cast<const float4*>(&sx[tl + 4 * j][c]);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float v = acc[i][j];
                v = fmaf(a[i].x, b[j].x, v);
                v = fmaf(a[i].y, b[j].y, v);
                v = fmaf(a[i].z, b[j].z, v);
                v = fmaf(a[i].w, b[j].w, v);
                acc[i][j] = v;
            }
    }
}

// The GEMMs' stage loop, double-buffered in shared memory: load(s) fetches stage s into registers and store(buf)
// writes them to buffer buf, so stage s + 1 is in flight while compute(buf) multiplies stage s from buffer s & 1.
// store(buf ^ 1) is safe: that buffer was last read in iteration s - 1, before the barrier that ended it.
template <class I, class Load, class Store, class Compute>
__device__ __forceinline__ void gemm_stages(I stages, Load&& load, Store&& store, Compute&& compute) {
    if (stages > 0) {
        load(0);
        store(0);
    }
    __syncthreads();
    for (I s = 0; s < stages; ++s) {
        const int buf = int(s & 1);
        if (s + 1 < stages) load(int(s + 1));
        compute(buf);
        if (s + 1 < stages) store(buf ^ 1);
        __syncthreads();
    }
}

// The fp32 GEMMs' stages (gemm_f_kernel, kq_gemm_kernel).
template <class I, class Load, class Store>
__device__ __forceinline__ void gemm_f_stages(I stages, Load&& load, Store&& store,
                                              const float (&sw)[2][kTileR][kFStride],
                                              const float (&sx)[2][kTileT][kFStride], int rl, int tl,
                                              float (&acc)[4][4]) {
    gemm_stages(stages, load, store, [&](int buf) { gemm_f_stage(sw[buf], sx[buf], rl, tl, acc); });
}

__device__ __forceinline__ void gemm_store(const float (&acc)[4][4], int64_t row0, int64_t tok0, int64_t rows,
                                           int64_t T, const float* bias, float* y) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t rb = row0 + (warp & 1) * 32 + (lane & 7), tb = tok0 + (warp >> 1) * 16 + (lane >> 3);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t r = rb + 8 * i;
        if (r >= rows) continue;
        const float b = bias ? bias[r] : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int64_t t = tb + 4 * j;
            if (t < T) y[t * rows + r] = acc[i][j] + b;
        }
    }
}

inline unsigned gemm_blocks(int64_t rows, int64_t T) {
    const int64_t n = ((rows + kTileR - 1) / kTileR) * ((T + kTileT - 1) / kTileT);
    if (n > 0x7fffffff) throw Error("matmul: too many tiles");
    return unsigned(n);
}

}  // namespace mm
}  // namespace cuda
}  // namespace owl
