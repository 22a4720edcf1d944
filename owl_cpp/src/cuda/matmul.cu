// Matrix products and embedding lookups on the device (contract in matmul.cuh).
//
// Device layouts (upload_weight): F32 / F16 / BF16 as in the file. Q4_0 and Q8_0 rows are split into two parts,
//   [nb] x 16 bytes (Q4_0: a block's nibble bytes as in the file) or 32 bytes (Q8_0), then [nb] fp16 scales padded
//   to a multiple of 16 bytes (nb = cols / 32),
// so rows are 16-byte aligned: a thread reads one Q4_0 block or half a Q8_0 block with a single 16-byte load and a
// warp reads 512 contiguous bytes of a row. The scales stay in their row (not in a plane after all rows) because
// get_rows is not told the row count. Q4_K / Q5_K / Q6_K: kquant_block.h's layout, their kernels in
// matmul_kquant.cu (dispatched from here).
//
// Q8_0 / Q4_0 products first round the activations to int8 blocks of 32 (ggml's rule, quantize_x_kernel): quants
// [T][cols] plus one {d (fp32 bits), sum of q} per block. Block products are exact integer dot products (dp4a),
// scaled by d_w * d_x in fp32. Q4_0's nibbles enter as unsigned 0..15 and the -8 offset comes back as
// -8 * sum(q_x) (matrix-vector kernel) or is applied while expanding a tile into shared memory (GEMM).
//
// T <= kDecodeT: matvec_kernel, every weight read once for all tokens (memory bound). Otherwise a 64 x 64 tiled
// GEMM, double-buffered in shared memory: on the tensor cores where use_tensor_cores says so (sm_80+; Q4_0 / Q8_0
// in gemm_q_kernel<TY, true>, F16 and the K-quants in matmul_tc.cu), else SIMT (gemm_q_kernel<TY, false>,
// gemm_f_kernel, kq_gemm_kernel).
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "kquant_block.h"
#include "matmul.cuh"
#include "matmul_common.cuh"
#include "matmul_kquant.cuh"
#include "matmul_tc.cuh"
#include "mma.cuh"
#include "owl/error.h"

namespace owl {
namespace cuda {
namespace {

using namespace mm;  // matmul_common.cuh
constexpr size_t kScratchAlign = 256;  // offset of the block scales after the int8 activations in the workspace

inline size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
// Device row of a quant type: quant bytes, then the scales (see the top of the file).
__host__ __device__ inline int64_t quant_bytes(DType t, int64_t nb) { return nb * (t == DType::Q4_0 ? 16 : 32); }
__host__ __device__ inline int64_t quant_row_bytes(DType t, int64_t nb) {
    return quant_bytes(t, nb) + (nb * 2 + 15) / 16 * 16;
}
inline bool is_quant(DType t) { return t == DType::Q4_0 || t == DType::Q8_0; }
inline size_t elem_bytes(DType t) { return t == DType::F32 ? 4 : 2; }

// ---- device helpers ----

__device__ __forceinline__ float2 f16x2_to_float2(uint32_t w) {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
}
__device__ __forceinline__ float2 bf16x2_to_float2(uint32_t w) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}
// Eight 16-bit floats (F16 or BF16) of one 16-byte load.
template <DType TY>
__device__ __forceinline__ void unpack8(const uint4& q, float* f) {
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float2 p = TY == DType::F16 ? f16x2_to_float2(w[k]) : bf16x2_to_float2(w[k]);
        f[2 * k] = p.x;
        f[2 * k + 1] = p.y;
    }
}

// Exact int -> float for |v| < 2^22 with two full-rate ALU ops (I2F is a quarter-rate pipe); the GEMM's block sums
// stay below 32 * 128 * 127.
__device__ __forceinline__ float small_int_to_float(int v) {
    return __int_as_float(v + 0x4B400000) - 12582912.0f;  // 0x4B400000 == 1.5 * 2^23
}

// Four Q4_0 nibbles (0..15) per byte -> signed q - 8 per byte, without carries between bytes.
__device__ __forceinline__ uint32_t nibbles_minus8(uint32_t v) { return ((v | 0x80808080u) - 0x08080808u) ^ 0x80808080u; }

// ---- activations -> int8 blocks ----

// Eight threads per block of 32 (one float4 each), so loads and the packed int8 stores are coalesced. Exactly
// ggml's rule: d = amax / 127 in fp32, id = 1 / d, q = roundf(x * id); the _rn intrinsics keep that IEEE even
// under --use_fast_math. xs[block] = {d bits, sum of q}.
__global__ void __launch_bounds__(256) quantize_x_kernel(const float4* __restrict__ x, int64_t n4,
                                                         uint32_t* __restrict__ xq, int2* __restrict__ xs) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    // n4 is a multiple of 8 and so is the block size: a group of 8 is entirely in or out, and all lanes stay for
    // the shuffles.
    const bool in = i < n4;
    const float4 v = in ? x[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.0f ? __frcp_rn(d) : 0.0f;
    const int q0 = int(roundf(__fmul_rn(v.x, id))), q1 = int(roundf(__fmul_rn(v.y, id)));
    const int q2 = int(roundf(__fmul_rn(v.z, id))), q3 = int(roundf(__fmul_rn(v.w, id)));
    int sum = q0 + q1 + q2 + q3;
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (!in) return;
    xq[i] = uint32_t(q0 & 0xff) | uint32_t(q1 & 0xff) << 8 | uint32_t(q2 & 0xff) << 16 | uint32_t(q3 & 0xff) << 24;
    if ((i & 7) == 0) xs[i >> 3] = make_int2(__float_as_int(d), sum);
}

// ---- decode: matrix-vector ----
//
// A block of 128 threads is cut into groups of tpr threads (8..128, a power of two chosen from the row length);
// each group computes R = 4 consecutive rows for all T tokens. A "unit" is one 16-byte load of a weight row: a
// Q4_0 block (32 elements), half a Q8_0 block (16), 8 F16/BF16 or 4 F32 elements. Thread l of a group takes units
// l, l + tpr, ... of its R rows, so each step has R independent 16-byte loads in flight per thread and a group
// reads each row front to back in contiguous 16 * tpr byte runs. The activations of a unit, small and shared by
// all rows, are read through L1 (__ldg) once per R rows. Partial sums are reduced with shuffles, then across
// warps through shared memory when tpr > 32.

constexpr int kMvRows = 4;  // R
struct MvArgs {
    const uint8_t* w;     // device layout
    int rows;             // < 2^31 (checked by the caller): 32-bit row arithmetic saves registers
    int64_t row_bytes;    // device row stride
    int64_t scale_off;    // quant types: offset of the scales in a row
    int units;            // per row
    int nb;               // blocks per row (quant types)
    int64_t cols;
    const int8_t* xq;     // quantized activations [T][cols] (quant types)
    const int2* xs;       // {d, sum} [T][nb]
    const float* xf;      // fp32 activations [T][cols] (float types)
    const float* bias;
    float* y;
    int tpr_shift;
};

// acc[i][t] += row i's unit u . token t's activations; q[i] holds the unit's 16 weight bytes, dw[i] the raw fp16
// block scale of quant types.
template <DType TY, int T, int R>
__device__ __forceinline__ void mv_unit(const MvArgs& a, int u, const uint4 (&q)[R], const uint16_t (&dw)[R],
                                        float (&acc)[R][T]) {
    if constexpr (TY == DType::Q4_0) {
        float d[R];
#pragma unroll
        for (int i = 0; i < R; ++i) d[i] = half_bits_to_float(dw[i]);
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const int4* xp = reinterpret_cast<const int4*>(a.xq + int64_t(t) * a.cols) + 2 * u;
            const int4 lo = __ldg(xp), hi = __ldg(xp + 1);  // elements 0..15, 16..31
            const int2 s = __ldg(a.xs + int64_t(t) * a.nb + u);
            const float dx = __int_as_float(s.x);
#pragma unroll
            for (int i = 0; i < R; ++i) {
                constexpr uint32_t M = 0x0f0f0f0fu;
                // byte j of the block: low nibble = element j, high nibble = element 16 + j
                int p = -8 * s.y;
                p = __dp4a(int(q[i].x & M), lo.x, p);
                p = __dp4a(int(q[i].y & M), lo.y, p);
                p = __dp4a(int(q[i].z & M), lo.z, p);
                p = __dp4a(int(q[i].w & M), lo.w, p);
                p = __dp4a(int((q[i].x >> 4) & M), hi.x, p);
                p = __dp4a(int((q[i].y >> 4) & M), hi.y, p);
                p = __dp4a(int((q[i].z >> 4) & M), hi.z, p);
                p = __dp4a(int((q[i].w >> 4) & M), hi.w, p);
                acc[i][t] = fmaf(d[i] * dx, float(p), acc[i][t]);
            }
        }
    } else if constexpr (TY == DType::Q8_0) {
        float d[R];
#pragma unroll
        for (int i = 0; i < R; ++i) d[i] = half_bits_to_float(dw[i]);
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const int4 xv = __ldg(reinterpret_cast<const int4*>(a.xq + int64_t(t) * a.cols) + u);
            const float dx = __int_as_float(__ldg(a.xs + int64_t(t) * a.nb + (u >> 1)).x);
#pragma unroll
            for (int i = 0; i < R; ++i) {
                int p = __dp4a(int(q[i].x), xv.x, 0);
                p = __dp4a(int(q[i].y), xv.y, p);
                p = __dp4a(int(q[i].z), xv.z, p);
                p = __dp4a(int(q[i].w), xv.w, p);
                acc[i][t] = fmaf(d[i] * dx, float(p), acc[i][t]);
            }
        }
    } else if constexpr (TY == DType::F32) {
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const float4 xv = __ldg(reinterpret_cast<const float4*>(a.xf + int64_t(t) * a.cols) + u);
#pragma unroll
            for (int i = 0; i < R; ++i) {
                float s = acc[i][t];
                s = fmaf(__uint_as_float(q[i].x), xv.x, s);
                s = fmaf(__uint_as_float(q[i].y), xv.y, s);
                s = fmaf(__uint_as_float(q[i].z), xv.z, s);
                s = fmaf(__uint_as_float(q[i].w), xv.w, s);
                acc[i][t] = s;
            }
        }
    } else {  // F16 / BF16
        float wf[R][8];
#pragma unroll
        for (int i = 0; i < R; ++i) unpack8<TY>(q[i], wf[i]);
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const float4* xp = reinterpret_cast<const float4*>(a.xf + int64_t(t) * a.cols) + 2 * u;
            const float4 x0 = __ldg(xp), x1 = __ldg(xp + 1);
            const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
            for (int i = 0; i < R; ++i) {
                float s = acc[i][t];
#pragma unroll
                for (int k = 0; k < 8; ++k) s = fmaf(wf[i][k], xv[k], s);
                acc[i][t] = s;
            }
        }
    }
}

// Block scale index of unit u (quant types; the loads of float types are skipped).
template <DType TY>
__device__ __forceinline__ int mv_scale_index(int u) { return TY == DType::Q8_0 ? u >> 1 : u; }

template <DType TY, int T>
__global__ void __launch_bounds__(kMvThreads, mv_min_blocks(T)) matvec_kernel(const MvArgs a) {
    constexpr int R = kMvRows;
    constexpr bool kQuant = TY == DType::Q4_0 || TY == DType::Q8_0;
    const int tpr = 1 << a.tpr_shift;
    const int g = threadIdx.x >> a.tpr_shift, l = threadIdx.x & (tpr - 1);
    const int r0 = (int(blockIdx.x) * (kMvThreads >> a.tpr_shift) + g) * R;
    // Rows past the end repeat the last row (valid memory); their results are not written.
    // Row i at base + off[i]: one 64-bit pointer and 32-bit offsets (R rows span well under 2 GiB).
    const uint8_t* base = a.w + int64_t(min(r0, a.rows - 1)) * a.row_bytes;
    uint32_t off[R];
#pragma unroll
    for (int i = 0; i < R; ++i) off[i] = uint32_t(min(i, max(a.rows - 1 - r0, 0))) * uint32_t(a.row_bytes);
    float acc[R][T];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int t = 0; t < T; ++t) acc[i][t] = 0.0f;

    // One unit of each of the R rows per step: R independent 16-byte loads issued together (see mv_min_blocks).
    for (int u = l; u < a.units; u += tpr) {
        uint4 q[R];
        uint16_t d[R];
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const uint8_t* row = base + off[i];
            q[i] = ld_stream(reinterpret_cast<const uint4*>(row) + u);
            d[i] = kQuant ? __ldg(reinterpret_cast<const uint16_t*>(row + a.scale_off) + mv_scale_index<TY>(u)) : 0;
        }
        mv_unit<TY, T, R>(a, u, q, d, acc);
    }

    mv_reduce_store<R, T>(acc, a.tpr_shift, r0, a.rows, a.bias, a.y);
}

// ---- prefill: tiled GEMM, 64 rows x 64 tokens per block of 256 threads (tile walk in matmul_common.cuh) ----

// gemm_q_kernel's stage loop on the tensor cores: per block of 32 columns, each warp's 2 x 2 m16n8k32 products
// of its 32 rows x 16 tokens (mma.cuh), then acc += d_w * d_x * sum, exactly gemm_q_kernel's SIMT arithmetic.
template <int S, class Load, class Store>
__device__ __forceinline__ void gemm_q_mma(const uint32_t (&sw)[2][kTileR][S], const uint32_t (&sx)[2][kTileT][S],
                                           const float (&sdw)[2][2][kTileR], const float (&sdx)[2][2][kTileT],
                                           int stages, Load&& load, Store&& store, int64_t row0, int64_t tok0,
                                           int64_t rows, int64_t T, const float* bias, float* y) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const int wr = (warp & 1) * 32, wt = (warp >> 1) * 16;
    float acc[2][2][4];
    mma::zero(acc);

    gemm_stages(stages, load, store, [&](int buf) {
#pragma unroll
        for (int blk = 0; blk < 2; ++blk) {
            uint32_t a[2][4], b[2][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) mma::load_a(sw[buf], wr + 16 * mi, blk * 8, a[mi]);
#pragma unroll
            for (int ni = 0; ni < 2; ++ni) mma::load_b(sx[buf], wt + 8 * ni, blk * 8, b[ni]);
            float dw[2][2], dx[2][2];  // [mi][h]: row wr + 16 mi + g + 8 h; [ni][k]: token wt + 8 ni + 2c + k
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    dw[i][h] = sdw[buf][blk][wr + 16 * i + g + 8 * h];
                    dx[i][h] = sdx[buf][blk][wt + 8 * i + 2 * c + h];
                }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 2; ++ni) {
                    int p[4];
                    mma::s8_16x8x32(p, a[mi], b[ni]);
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        acc[mi][ni][e] = fmaf(dw[mi][e >> 1] * dx[ni][e & 1], small_int_to_float(p[e]), acc[mi][ni][e]);
                }
        }
    });
    mma::store_warp_tile(acc, row0, tok0, rows, T, bias, y, [](float v, int64_t) { return v; });
}

// Quant GEMM: a stage is two blocks (64 columns). Shared tiles hold int8 values (Q4_0 expanded to q - 8), 16 words
// per row plus 4 of padding, and fp32 scales per (block, row) and (block, token). A block past the end of the row
// (odd nb) is loaded as zero quants with zero scales.
// kMma: the block products on the tensor cores (mma.cuh, sm_80+): one m16n8k32 int8 mma is one block of 32
// columns for 16 rows x 8 tokens, its int32 sums as exact as dp4a's, scaled and accumulated in the same order with
// the same fp32 operations, so both variants give the same bits.
template <DType TY, bool kMma>
__global__ void __launch_bounds__(kGemmThreads) gemm_q_kernel(const uint8_t* __restrict__ w, int64_t rows, int nb,
                                                              const int8_t* __restrict__ xq,
                                                              const int2* __restrict__ xs, int64_t T,
                                                              const float* __restrict__ bias, float* __restrict__ y) {
    constexpr int kStride = 20;  // words per tile row
    __shared__ __align__(16) uint32_t sw[2][kTileR][kStride];
    __shared__ __align__(16) uint32_t sx[2][kTileT][kStride];
    __shared__ float sdw[2][2][kTileR];
    __shared__ float sdx[2][2][kTileT];

    int64_t row0, tok0;
    gemm_tile(T, row0, tok0);
    const int tid = threadIdx.x;
    const int64_t cols = int64_t(nb) * QK;

    // Loader roles. Q8_0 weights and activations: 4 threads per row / token, 16 bytes each (64 contiguous bytes).
    // Q4_0 weights: 2 threads per row (16 nibble bytes = one block each), threads 0..127.
    const int lr = TY == DType::Q4_0 ? (tid >> 1) & 63 : tid >> 2;
    const int lp = TY == DType::Q4_0 ? tid & 1 : tid & 3;
    const bool w_loader = TY == DType::Q8_0 || tid < 128;
    const int64_t wr = min(row0 + lr, rows - 1);
    const int xt_l = tid >> 2, xp = tid & 3;
    const int64_t xt = min(tok0 + xt_l, T - 1);
    const uint8_t* wrow = w + wr * quant_row_bytes(TY, nb);
    const uint16_t* srow = reinterpret_cast<const uint16_t*>(wrow + quant_bytes(TY, nb));
    const int8_t* xrow = xq + xt * cols;
    const int2* xsrow = xs + xt * nb;

    uint4 wq = make_uint4(0, 0, 0, 0), xv;
    float wd = 0.0f, xd = 0.0f;
    auto load = [&](int s) {  // stage s -> registers
        const int b0 = 2 * s;
        if (w_loader) {
            const int b = TY == DType::Q4_0 ? b0 + lp : b0 + (lp >> 1);
            const bool ok = b < nb;
            const int64_t off = TY == DType::Q4_0 ? int64_t(b) * 16 : int64_t(b0) * 32 + lp * 16;
            wq = ok ? *reinterpret_cast<const uint4*>(wrow + off) : make_uint4(0, 0, 0, 0);
            wd = ok && (TY == DType::Q4_0 || (lp & 1) == 0) ? half_bits_to_float(srow[b]) : 0.0f;
        }
        const int b = b0 + (xp >> 1);
        const bool ok = b < nb;
        xv = ok ? *reinterpret_cast<const uint4*>(xrow + int64_t(b0) * 32 + xp * 16) : make_uint4(0, 0, 0, 0);
        xd = ok && (xp & 1) == 0 ? __int_as_float(xsrow[b].x) : 0.0f;
    };
    auto store = [&](int buf) {  // registers -> shared tiles
        if (w_loader) {
            if constexpr (TY == DType::Q4_0) {
                constexpr uint32_t M = 0x0f0f0f0fu;
                uint32_t* dst = &sw[buf][lr][lp * 8];
                *reinterpret_cast<uint4*>(dst) = make_uint4(nibbles_minus8(wq.x & M), nibbles_minus8(wq.y & M),
                                                            nibbles_minus8(wq.z & M), nibbles_minus8(wq.w & M));
                *reinterpret_cast<uint4*>(dst + 4) =
                    make_uint4(nibbles_minus8((wq.x >> 4) & M), nibbles_minus8((wq.y >> 4) & M),
                               nibbles_minus8((wq.z >> 4) & M), nibbles_minus8((wq.w >> 4) & M));
                sdw[buf][lp][lr] = wd;
            } else {
                *reinterpret_cast<uint4*>(&sw[buf][lr][lp * 4]) = wq;
                if ((lp & 1) == 0) sdw[buf][lp >> 1][lr] = wd;
            }
        }
        *reinterpret_cast<uint4*>(&sx[buf][xt_l][xp * 4]) = xv;
        if ((xp & 1) == 0) sdx[buf][xp >> 1][xt_l] = xd;
    };

    if constexpr (kMma) {
        gemm_q_mma(sw, sx, sdw, sdx, (nb + 1) / 2, load, store, row0, tok0, rows, T, bias, y);
        return;
    }
    const int lane = tid & 31, warp = tid >> 5;
    const int rl = (warp & 1) * 32 + (lane & 7), tl = (warp >> 1) * 16 + (lane >> 3);
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    const int stages = (nb + 1) / 2;
    if (stages > 0) {
        load(0);
        store(0);
    }
    __syncthreads();
    for (int s = 0; s < stages; ++s) {
        const int buf = s & 1;
        if (s + 1 < stages) load(s + 1);
#pragma unroll
        for (int blk = 0; blk < 2; ++blk) {
            int p[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) p[i][j] = 0;
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                uint4 a[4], b[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) a[i] = *reinterpret_cast<const uint4*>(&sw[buf][rl + 8 * i][blk * 8 + c * 4]);
#pragma unroll
                for (int j = 0; j < 4; ++j) b[j] = *reinterpret_cast<const uint4*>(&sx[buf][tl + 4 * j][blk * 8 + c * 4]);
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        p[i][j] = __dp4a(int(a[i].x), int(b[j].x), p[i][j]);
                        p[i][j] = __dp4a(int(a[i].y), int(b[j].y), p[i][j]);
                        p[i][j] = __dp4a(int(a[i].z), int(b[j].z), p[i][j]);
                        p[i][j] = __dp4a(int(a[i].w), int(b[j].w), p[i][j]);
                    }
            }
            float dw[4], dx[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) dw[i] = sdw[buf][blk][rl + 8 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) dx[j] = sdx[buf][blk][tl + 4 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(dw[i] * dx[j], small_int_to_float(p[i][j]), acc[i][j]);
        }
        // Double buffering: buf ^ 1 was last read in iteration s - 1, before the barrier that ended it.
        if (s + 1 < stages) store(buf ^ 1);
        __syncthreads();
    }
    gemm_store(acc, row0, tok0, rows, T, bias, y);
}

// Float GEMM: a stage is 32 columns, tiles in fp32 (32 words per row plus 4 of padding). wvec / xvec: rows of the
// weights / activations allow 16-byte loads (otherwise element loads, e.g. cols = 4304 in F32); columns past the
// end load as zero.
template <DType TY>
__global__ void __launch_bounds__(kGemmThreads) gemm_f_kernel(const uint8_t* __restrict__ w, int64_t rows,
                                                              int64_t cols, bool wvec, const float* __restrict__ x,
                                                              bool xvec, int64_t T, const float* __restrict__ bias,
                                                              float* __restrict__ y) {
    constexpr int kK = kFK;
    __shared__ __align__(16) float sw[2][kTileR][kFStride];
    __shared__ __align__(16) float sx[2][kTileT][kFStride];

    int64_t row0, tok0;
    gemm_tile(T, row0, tok0);
    const int tid = threadIdx.x;
    constexpr bool k16 = TY != DType::F32;
    // Loaders. 16-bit weights: 4 threads per row, 8 elements each. F32 weights and the activations: 8 threads per
    // row / token, 4 elements each, rows h * 32 + (tid >> 3) for h = 0, 1.
    const int wl_r = k16 ? tid >> 2 : tid >> 3, wl_k = k16 ? (tid & 3) * 8 : (tid & 7) * 4;
    const int xl_r = tid >> 3, xl_k = (tid & 7) * 4;
    const int64_t wr0 = min(row0 + wl_r, rows - 1), wr1 = min(row0 + wl_r + 32, rows - 1);
    const int64_t xt0 = min(tok0 + xl_r, T - 1), xt1 = min(tok0 + xl_r + 32, T - 1);

    uint4 wq[2];
    float4 xv[2];
    auto load_w = [&](int64_t r, int64_t k, int n) -> uint4 {  // n elements of row r from column k
        const uint8_t* p = w + (r * cols + k) * (k16 ? 2 : 4);
        if (wvec) return k < cols ? *reinterpret_cast<const uint4*>(p) : make_uint4(0, 0, 0, 0);
        uint32_t v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (k16) {
            const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
            for (int e = 0; e < n; e += 2) {
                const uint32_t lo = k + e < cols ? h[e] : 0, hi = k + e + 1 < cols ? h[e + 1] : 0;
                v[e / 2] = lo | hi << 16;
            }
        } else {
            const uint32_t* f = reinterpret_cast<const uint32_t*>(p);
            for (int e = 0; e < n; ++e) v[e] = k + e < cols ? f[e] : 0;
        }
        return make_uint4(v[0], v[1], v[2], v[3]);
    };
    auto load_x = [&](int64_t t, int64_t k) -> float4 {
        const float* p = x + t * cols + k;
        if (xvec) return k < cols ? *reinterpret_cast<const float4*>(p) : make_float4(0.f, 0.f, 0.f, 0.f);
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = k + e < cols ? p[e] : 0.0f;
        return make_float4(v[0], v[1], v[2], v[3]);
    };
    auto load = [&](int s) {
        const int64_t k0 = int64_t(s) * kK;
        wq[0] = load_w(wr0, k0 + wl_k, k16 ? 8 : 4);
        if (!k16) wq[1] = load_w(wr1, k0 + wl_k, 4);
        xv[0] = load_x(xt0, k0 + xl_k);
        xv[1] = load_x(xt1, k0 + xl_k);
    };
    auto store = [&](int buf) {
        if constexpr (k16) {
            float f[8];
            unpack8<TY>(wq[0], f);
            *reinterpret_cast<float4*>(&sw[buf][wl_r][wl_k]) = make_float4(f[0], f[1], f[2], f[3]);
            *reinterpret_cast<float4*>(&sw[buf][wl_r][wl_k + 4]) = make_float4(f[4], f[5], f[6], f[7]);
        } else {
#pragma unroll
            for (int h = 0; h < 2; ++h)
                *reinterpret_cast<float4*>(&sw[buf][wl_r + 32 * h][wl_k]) =
                    make_float4(__uint_as_float(wq[h].x), __uint_as_float(wq[h].y), __uint_as_float(wq[h].z),
                                __uint_as_float(wq[h].w));
        }
        *reinterpret_cast<float4*>(&sx[buf][xl_r][xl_k]) = xv[0];
        *reinterpret_cast<float4*>(&sx[buf][xl_r + 32][xl_k]) = xv[1];
    };

    const int lane = tid & 31, warp = tid >> 5;
    const int rl = (warp & 1) * 32 + (lane & 7), tl = (warp >> 1) * 16 + (lane >> 3);
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    gemm_f_stages((cols + kK - 1) / kK, load, store, sw, sx, rl, tl, acc);
    gemm_store(acc, row0, tok0, rows, T, bias, y);
}

// ---- get_rows ----

// One thread per output element (lookups are a few rows per call). d * q is a single fp32 multiply, as on the CPU.
template <DType TY>
__global__ void __launch_bounds__(256) get_rows_kernel(const uint8_t* __restrict__ table, int64_t cols,
                                                       const int32_t* __restrict__ ids, int64_t n,
                                                       float* __restrict__ out) {
    const int64_t total = n * cols, nb = cols / QK;
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = ids[e / cols], c = e % cols;
        float v;
        if constexpr (TY == DType::F32) {
            v = reinterpret_cast<const float*>(table)[r * cols + c];
        } else if constexpr (TY == DType::F16) {
            v = half_bits_to_float(reinterpret_cast<const uint16_t*>(table)[r * cols + c]);
        } else if constexpr (TY == DType::BF16) {
            v = bf16_bits_to_float(reinterpret_cast<const uint16_t*>(table)[r * cols + c]);
        } else {
            const uint8_t* row = table + r * quant_row_bytes(TY, nb);
            const int64_t b = c / QK;
            const int j = int(c % QK);
            const float d = half_bits_to_float(reinterpret_cast<const uint16_t*>(row + quant_bytes(TY, nb))[b]);
            int q;
            if constexpr (TY == DType::Q8_0) {
                q = reinterpret_cast<const int8_t*>(row)[c];
            } else {
                const uint8_t byte = row[b * 16 + (j & 15)];
                q = int(j < 16 ? byte & 0x0f : byte >> 4) - 8;
            }
            v = __fmul_rn(d, float(q));
        }
        out[e] = v;
    }
}

// ---- host side ----

template <DType TY, int T>
void launch_matvec(const MvArgs& a, cudaStream_t stream) {
    MvArgs b = a;
    b.tpr_shift = mv_tpr_shift(a.units);
    const int64_t rows_per_block = int64_t(kMvThreads >> b.tpr_shift) * kMvRows;
    matvec_kernel<TY, T><<<blocks_for(b.rows, int(rows_per_block)), kMvThreads, 0, stream>>>(b);
    OWL_CUDA_LAUNCHED("matvec_kernel");
}

template <DType TY>
void matvec(const MvArgs& a, int64_t T, cudaStream_t stream) {
    mm::with_decode_tokens(T, "matvec", [&](auto t) { launch_matvec<TY, decltype(t)::value>(a, stream); });
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// The activations rounded to int8 blocks of 32 in the workspace: quants [T][cols], then {d, sum} per block.
struct QuantizedX {
    const int8_t* xq;
    const int2* xs;
};
QuantizedX quantize_activations(const float* x, int64_t T, int64_t cols, Workspace& ws, bool x_quantized,
                                cudaStream_t stream) {
    const int64_t nb = cols / QK;
    const size_t xq_bytes = align_up(size_t(T) * size_t(cols), kScratchAlign);
    uint8_t* scratch = static_cast<uint8_t*>(ws.get(xq_bytes + size_t(T) * size_t(nb) * sizeof(int2)));
    auto* xq = reinterpret_cast<int8_t*>(scratch);
    auto* xs = reinterpret_cast<int2*>(scratch + xq_bytes);
    const int64_t n4 = T * cols / 4;
    if (!aligned16(x)) throw Error("matmul: activations must be 16-byte aligned");
    if (!x_quantized) {  // else the scratch still holds these activations, quantized by the previous call
        quantize_x_kernel<<<blocks_for(n4, 256), 256, 0, stream>>>(reinterpret_cast<const float4*>(x), n4,
                                                                  reinterpret_cast<uint32_t*>(xq), xs);
        OWL_CUDA_LAUNCHED("quantize_x_kernel");
    }
    return {xq, xs};
}

void matmul_quant(DType type, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t T,
                  const float* bias, float* y, Workspace& ws, bool x_quantized, cudaStream_t stream) {
    const int64_t nb = cols / QK;
    const QuantizedX qx = quantize_activations(x, T, cols, ws, x_quantized, stream);
    const int8_t* xq = qx.xq;
    const int2* xs = qx.xs;

    if (T <= kDecodeT) {
        MvArgs a{};
        a.w = w;
        a.rows = int(rows);
        a.row_bytes = quant_row_bytes(type, nb);
        a.scale_off = quant_bytes(type, nb);
        a.units = int(type == DType::Q4_0 ? nb : 2 * nb);
        a.nb = int(nb);
        a.cols = cols;
        a.xq = xq;
        a.xs = xs;
        a.bias = bias;
        a.y = y;
        if (type == DType::Q4_0) matvec<DType::Q4_0>(a, T, stream);
        else matvec<DType::Q8_0>(a, T, stream);
        return;
    }
    const unsigned blocks = gemm_blocks(rows, T);
    const bool tc = use_tensor_cores(T);  // same results either way (gemm_q_kernel)
    if (type == DType::Q4_0) {
        if (tc) gemm_q_kernel<DType::Q4_0, true><<<blocks, kGemmThreads, 0, stream>>>(w, rows, int(nb), xq, xs, T, bias, y);
        else gemm_q_kernel<DType::Q4_0, false><<<blocks, kGemmThreads, 0, stream>>>(w, rows, int(nb), xq, xs, T, bias, y);
        OWL_CUDA_LAUNCHED("gemm_q_kernel<Q4_0>");
    } else {
        if (tc) gemm_q_kernel<DType::Q8_0, true><<<blocks, kGemmThreads, 0, stream>>>(w, rows, int(nb), xq, xs, T, bias, y);
        else gemm_q_kernel<DType::Q8_0, false><<<blocks, kGemmThreads, 0, stream>>>(w, rows, int(nb), xq, xs, T, bias, y);
        OWL_CUDA_LAUNCHED("gemm_q_kernel<Q8_0>");
    }
}

// Q4_K / Q5_K / Q6_K (matmul_kquant.cu): decode rounds the activations as matmul_quant does; prefill runs on the
// fp32 activations (so x_quantized only matters for decode, see quantizes_activations).
void matmul_kquant(DType type, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t T,
                   const float* bias, float* y, Workspace& ws, bool x_quantized, cudaStream_t stream) {
    if (T > kDecodeT) {
        if (use_tensor_cores(T) && aligned16(x)) return gemm_tc(type, w, rows, cols, x, T, bias, y, ws, stream);
        return kquant_gemm(type, w, rows, cols, x, T, bias, y, stream);
    }
    const QuantizedX qx = quantize_activations(x, T, cols, ws, x_quantized, stream);
    kquant_matvec(type, w, int(rows), cols, qx.xq, qx.xs, int(T), bias, y, stream);
}

template <DType TY>
void matmul_float(const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t T, const float* bias,
                  float* y, Workspace& ws, cudaStream_t stream) {
    const int64_t unit = TY == DType::F32 ? 4 : 8;  // elements per 16 bytes
    const bool wvec = cols % unit == 0 && aligned16(w);
    const bool xvec = cols % 4 == 0 && aligned16(x);
    if (T <= kDecodeT && wvec && xvec) {
        MvArgs a{};
        a.w = w;
        a.rows = int(rows);
        a.row_bytes = cols * int64_t(elem_bytes(TY));
        a.units = int(cols / unit);
        a.cols = cols;
        a.xf = x;
        a.bias = bias;
        a.y = y;
        matvec<TY>(a, T, stream);
        return;
    }
    // F16 on the tensor cores where its 16-byte tile loads apply (matmul_tc.cuh); F32 / BF16 and odd widths stay
    // on the fp32 SIMT GEMM.
    if (TY == DType::F16 && wvec && xvec && cols % 8 == 0 && use_tensor_cores(T))
        return gemm_tc(TY, w, rows, cols, x, T, bias, y, ws, stream);
    gemm_f_kernel<TY><<<gemm_blocks(rows, T), kGemmThreads, 0, stream>>>(w, rows, cols, wvec, x, xvec, T, bias, y);
    OWL_CUDA_LAUNCHED("gemm_f_kernel");
}

template <DType TY>
void launch_get_rows(const uint8_t* table, int64_t cols, const int32_t* ids, int64_t n,
                     float* out, cudaStream_t stream) {
    const unsigned blocks = unsigned(std::min<int64_t>((n * cols + 255) / 256, 1 << 16));
    get_rows_kernel<TY><<<blocks, 256, 0, stream>>>(table, cols, ids, n, out);
    OWL_CUDA_LAUNCHED("get_rows_kernel");
}

}  // namespace

// Types the CUDA kernels run; any other (Q2_K, Q3_K, Q4_1, Q5_0, Q5_1, IQ4_NL) is refused here, at load, before a
// byte is copied.
static void check_device_type(DType type) {
    if (is_quant(type) || kq::is_kq(type) || type == DType::F32 || type == DType::F16 || type == DType::BF16) return;
    throw Error(std::string("CUDA backend has no kernel for ") + dtype_name(type) +
                "; use the CPU (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K run on the GPU)");
}

size_t weight_device_bytes(DType type, int64_t rows, int64_t cols) {
    // Every weight passes here before anything is allocated or uploaded (make_resident, WeightOnDevice).
    check_device_type(type);
    if (is_quant(type)) return size_t(rows) * size_t(quant_row_bytes(type, cols / QK));
    if (kq::is_kq(type)) return size_t(rows) * size_t(kq::row_bytes(type, cols / QK_K));
    return size_t(rows) * size_t(cols) * elem_bytes(type);
}

bool quantizes_activations(DType type, int64_t T) { return is_quant(type) || (kq::is_kq(type) && T <= kDecodeT); }

namespace {
// Rows into the device layout through bounded host staging: pack(r, dst) writes row r's dst_row bytes (zeroed
// first, so padding stays zero) for a run of rows at a time, then one copy per run.
template <class Pack>
void upload_staged(int64_t rows, size_t dst_row, void* dev, Pack&& pack) {
    const size_t chunk_rows = std::max<size_t>(1, (size_t(64) << 20) / dst_row);
    std::vector<uint8_t> buf;
    for (size_t r0 = 0; r0 < size_t(rows); r0 += chunk_rows) {
        const size_t nr = std::min(chunk_rows, size_t(rows) - r0);
        buf.assign(nr * dst_row, 0);
        for (size_t r = 0; r < nr; ++r) pack(r0 + r, buf.data() + r * dst_row);
        OWL_CUDA_CHECK(cudaMemcpy(static_cast<uint8_t*>(dev) + r0 * dst_row, buf.data(), nr * dst_row,
                                  cudaMemcpyHostToDevice));
    }
}

// K-quant rows (kquant_block.h: Q4_K / Q5_K as in the file, Q6_K's d's moved to the row's end).
void upload_kquant_rows(DType type, const void* host, int64_t rows, int64_t cols, void* dev) {
    const int64_t nb = cols / QK_K;
    if (rows <= 0 || nb == 0) return;
    const size_t src_row = size_t(dtype_row_bytes(type, cols));
    const auto* src = static_cast<const uint8_t*>(host);
    if (type != DType::Q6_K) {  // same bytes
        OWL_CUDA_CHECK(cudaMemcpy(dev, host, size_t(rows) * src_row, cudaMemcpyHostToDevice));
        return;
    }
    upload_staged(rows, size_t(kq::row_bytes(type, nb)), dev,
                  [&](size_t r, uint8_t* dst) { kq::pack_row(type, src + r * src_row, nb, dst); });
}

void upload_weight_rows(DType type, const void* host, int64_t rows, int64_t cols, void* dev) {
    check_device_type(type);
    if (kq::is_kq(type)) return upload_kquant_rows(type, host, rows, cols, dev);
    if (!is_quant(type)) {
        const size_t bytes = weight_device_bytes(type, rows, cols);
        if (bytes) OWL_CUDA_CHECK(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
        return;
    }
    // Q4_0 / Q8_0: each row's quants first, then its scales (the top of the file).
    const size_t nb = size_t(cols / QK);
    const size_t qbytes = type == DType::Q4_0 ? 16 : 32;       // quant bytes per block
    const size_t bbytes = size_t(dtype_block_bytes(type));      // file block: {uint16 d; qs[]}
    const size_t src_row = nb * bbytes, dst_row = size_t(quant_row_bytes(type, int64_t(nb)));
    if (rows <= 0 || nb == 0) return;
    const auto* src = static_cast<const uint8_t*>(host);
    upload_staged(rows, dst_row, dev, [&](size_t r, uint8_t* q) {
        const uint8_t* s = src + r * src_row;
        uint8_t* d = q + nb * qbytes;
        for (size_t b = 0; b < nb; ++b) {
            std::memcpy(d + 2 * b, s + b * bbytes, 2);
            std::memcpy(q + b * qbytes, s + b * bbytes + 2, qbytes);
        }
    });
}
}  // namespace

// A copy from pageable memory may return before its DMA lands, and the backend's stream does not wait for the
// legacy stream: the upload ends with a device synchronisation, so no kernel can read a half-written matrix.
void upload_weight(DType type, const void* host, int64_t rows, int64_t cols, void* dev) {
    upload_weight_rows(type, host, rows, cols, dev);
    OWL_CUDA_CHECK(cudaDeviceSynchronize());
}

void matmul(DType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t T, const float* bias,
            float* y, Workspace& ws, bool x_quantized, cudaStream_t stream) {
    if (rows <= 0 || T <= 0) return;
    if (rows > INT32_MAX || T > INT32_MAX || cols > INT32_MAX) throw Error("matmul: dimensions past 2^31");
    const auto* wb = static_cast<const uint8_t*>(w);
    switch (type) {
        case DType::Q4_0:
        case DType::Q8_0:
            if (cols % QK != 0) throw Error("matmul: quantized rows must be a multiple of 32 columns");
            if (cols == 0) break;
            return matmul_quant(type, wb, rows, cols, x, T, bias, y, ws, x_quantized, stream);
        case DType::Q4_K:
        case DType::Q5_K:
        case DType::Q6_K:
            if (cols % QK_K != 0) throw Error("matmul: K-quant rows must be a multiple of 256 columns");
            if (cols == 0) break;
            return matmul_kquant(type, wb, rows, cols, x, T, bias, y, ws, x_quantized, stream);
        case DType::F32: return matmul_float<DType::F32>(wb, rows, cols, x, T, bias, y, ws, stream);
        case DType::F16: return matmul_float<DType::F16>(wb, rows, cols, x, T, bias, y, ws, stream);
        case DType::BF16: return matmul_float<DType::BF16>(wb, rows, cols, x, T, bias, y, ws, stream);
        default: throw Error(std::string("matmul: unsupported weight type ") + dtype_name(type));
    }
    // cols == 0: y is the bias (or zero); the float GEMM computes that directly.
    gemm_f_kernel<DType::F32><<<gemm_blocks(rows, T), kGemmThreads, 0, stream>>>(wb, rows, 0, false, x, false, T, bias, y);
    OWL_CUDA_LAUNCHED("gemm_f_kernel");
}

void get_rows(DType type, const void* table, int64_t cols, const int32_t* ids, int64_t n, float* out,
              cudaStream_t stream) {
    if (n <= 0 || cols <= 0) return;
    const auto* t = static_cast<const uint8_t*>(table);
    switch (type) {
        case DType::F32: return launch_get_rows<DType::F32>(t, cols, ids, n, out, stream);
        case DType::F16: return launch_get_rows<DType::F16>(t, cols, ids, n, out, stream);
        case DType::BF16: return launch_get_rows<DType::BF16>(t, cols, ids, n, out, stream);
        case DType::Q8_0: return launch_get_rows<DType::Q8_0>(t, cols, ids, n, out, stream);
        case DType::Q4_0: return launch_get_rows<DType::Q4_0>(t, cols, ids, n, out, stream);
        case DType::Q4_K:
        case DType::Q5_K:
        case DType::Q6_K: return kquant_get_rows(type, t, cols, ids, n, out, stream);
        default: break;
    }
    throw Error(std::string("get_rows: unsupported table type ") + dtype_name(type));
}

}  // namespace cuda
}  // namespace owl
