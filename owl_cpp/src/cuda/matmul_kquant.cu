// Q4_K / Q5_K / Q6_K kernels (contract in matmul_kquant.cuh). The arithmetic on a sub-block (unpacking quants
// and scales, the dot products, the dequantization) is kquant_block.h's, which the CPU tests run as well; the
// kernels here only load and distribute, with the thread layouts of matmul.cu's Q4_0 / F16 kernels.
//
// Matrix-vector (kq_matvec_kernel): as matvec_kernel, groups of tpr threads share R = 2 rows; a unit is two
// sub-blocks (kq::unit_subs) read as one 32-byte run of qs / ql (two streaming 16-byte loads) plus the
// super-block's 16 bytes of scales (and Q5_K / Q6_K's 32 bytes of high bits), which the 4 units of a super-block
// share through L1. Each sub-block meets the int8 block of 32 activations at the same columns: exact integer
// dot products (dp4a), scaled in fp32.
// GEMM (kq_gemm_kernel): gemm_f_kernel's fp32 tiles; a stage is one sub-block (32 columns), each of 4 threads
// per row dequantizing 8 of its elements.
#include <algorithm>
#include <string>

#include "kquant_block.h"
#include "matmul_common.cuh"
#include "matmul_kquant.cuh"
#include "owl/error.h"

namespace owl {
namespace cuda {
namespace {

using namespace mm;

constexpr int kKqRows = 2;  // R: a unit's unpacked quants take 16 registers per row

struct KqMvArgs {
    const uint8_t* w;
    int rows;
    int64_t row_bytes;
    int nb;     // super-blocks per row
    int units;  // 4 per super-block
    int64_t cols;
    const int8_t* xq;
    const int2* xs;
    const float* bias;
    float* y;
    int tpr_shift;
};

// One unit of one row, unpacked: sub-blocks ja (qa, scales sa0 / sa1, min ma) and jb.
struct KqUnit {
    uint32_t qa[8], qb[8];
    int sa0, sa1, ma, sb0, sb1, mb;
    float d, dmin;
};

template <DType TY>
__device__ __forceinline__ void kq_load_unit(const uint8_t* row, int nb, int b, int u, KqUnit& w) {
    const uint8_t* sb = row + int64_t(b) * kq::block_bytes(TY);
    int ja, jb;
    kq::unit_subs(TY, u, ja, jb);
    const uint4 s = __ldg(reinterpret_cast<const uint4*>(sb + kq::scale_offset(TY)));
    const uint32_t sw[4] = {s.x, s.y, s.z, s.w};
    kq::super_scales<TY>(sw[0], row, nb, b, w.d, w.dmin);
    kq::sub_scales<TY>(sw, ja, w.sa0, w.sa1, w.ma);
    kq::sub_scales<TY>(sw, jb, w.sb0, w.sb1, w.mb);
    const uint4* qp = reinterpret_cast<const uint4*>(sb + kq::q_offset(TY, ja, 0));
    const uint4 q0 = ld_stream(qp), q1 = ld_stream(qp + 1);
    uint4 h0 = make_uint4(0, 0, 0, 0), h1 = h0;
    if constexpr (TY != DType::Q4_K) {  // high bits, shared by 4 (Q5_K) or 2 (Q6_K) units: through L1
        const uint4* hp = reinterpret_cast<const uint4*>(sb + kq::h_offset(TY, ja, 0));
        h0 = __ldg(hp);
        h1 = __ldg(hp + 1);
    }
    const uint32_t lo[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
    const uint32_t hi[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        w.qa[k] = kq::quant_word<TY>(lo[k], hi[k], ja);
        w.qb[k] = kq::quant_word<TY>(lo[k], hi[k], jb);
    }
}

// Token t's int8 block `blk` (32 values as 8 words) and its {d, sum}.
__device__ __forceinline__ void kq_load_x(const KqMvArgs& a, int t, int blk, uint32_t (&x)[8], float& dx, int& sx) {
    const int4* p = reinterpret_cast<const int4*>(a.xq + int64_t(t) * a.cols + 32 * int64_t(blk));
    const int4 v0 = __ldg(p), v1 = __ldg(p + 1);
    x[0] = uint32_t(v0.x), x[1] = uint32_t(v0.y), x[2] = uint32_t(v0.z), x[3] = uint32_t(v0.w);
    x[4] = uint32_t(v1.x), x[5] = uint32_t(v1.y), x[6] = uint32_t(v1.z), x[7] = uint32_t(v1.w);
    const int2 s = __ldg(a.xs + int64_t(t) * (int64_t(a.nb) * 8) + blk);
    dx = __int_as_float(s.x);
    sx = s.y;
}

template <DType TY, int T>
__global__ void __launch_bounds__(kMvThreads) kq_matvec_kernel(const KqMvArgs a) {
    constexpr int R = kKqRows;
    const int tpr = 1 << a.tpr_shift;
    const int g = threadIdx.x >> a.tpr_shift, l = threadIdx.x & (tpr - 1);
    const int r0 = (int(blockIdx.x) * (kMvThreads >> a.tpr_shift) + g) * R;
    // Rows past the end repeat the last row (valid memory); their results are not written.
    const uint8_t* rowp[R];
#pragma unroll
    for (int i = 0; i < R; ++i) rowp[i] = a.w + int64_t(min(r0 + i, a.rows - 1)) * a.row_bytes;
    float acc[R][T];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int t = 0; t < T; ++t) acc[i][t] = 0.0f;

    for (int u = l; u < a.units; u += tpr) {
        const int b = u >> 2, p = u & 3;
        int ja, jb;
        kq::unit_subs(TY, p, ja, jb);
        KqUnit w[R];
#pragma unroll
        for (int i = 0; i < R; ++i) kq_load_unit<TY>(rowp[i], a.nb, b, p, w[i]);
#pragma unroll
        for (int t = 0; t < T; ++t) {
            uint32_t xa[8], xb[8];
            float dxa, dxb;
            int sxa, sxb;
            kq_load_x(a, t, 8 * b + ja, xa, dxa, sxa);
            kq_load_x(a, t, 8 * b + jb, xb, dxb, sxb);
#pragma unroll
            for (int i = 0; i < R; ++i) {
                float s = kq::sub_dot<TY>(w[i].qa, w[i].sa0, w[i].sa1, w[i].ma, w[i].d, w[i].dmin, xa, dxa, sxa,
                                          acc[i][t]);
                acc[i][t] = kq::sub_dot<TY>(w[i].qb, w[i].sb0, w[i].sb1, w[i].mb, w[i].d, w[i].dmin, xb, dxb, sxb, s);
            }
        }
    }
    mv_reduce_store<R, T>(acc, a.tpr_shift, r0, a.rows, a.bias, a.y);
}

// GEMM: 64 rows x 64 tokens per block, fp32 tiles as gemm_f_kernel. A stage is sub-block s & 7 of super-block
// s >> 3. Loaders: 4 threads per weight row, thread p dequantizing words 2p, 2p + 1 (elements 8p .. 8p + 7);
// 8 threads per token, 4 floats each, tokens xl_r and xl_r + 32.
template <DType TY>
__global__ void __launch_bounds__(kGemmThreads) kq_gemm_kernel(const uint8_t* __restrict__ w, int64_t rows, int nb,
                                                               const float* __restrict__ x, int64_t T,
                                                               const float* __restrict__ bias, float* __restrict__ y) {
    __shared__ __align__(16) float sw[2][kTileR][kFStride];
    __shared__ __align__(16) float sx[2][kTileT][kFStride];

    int64_t row0, tok0;
    gemm_tile(T, row0, tok0);
    const int tid = threadIdx.x;
    const int64_t cols = int64_t(nb) * QK_K;
    const int wl_r = tid >> 2, wp = tid & 3;
    const int xl_r = tid >> 3, xl_k = (tid & 7) * 4;
    const uint8_t* wrow = w + min(row0 + wl_r, rows - 1) * kq::row_bytes(TY, nb);
    const float* x0 = x + min(tok0 + xl_r, T - 1) * cols + xl_k;
    const float* x1 = x + min(tok0 + xl_r + 32, T - 1) * cols + xl_k;

    float w0[4], w1[4];
    float4 xv[2];
    auto load = [&](int s) {
        kq::dequant_row_word<TY>(wrow, nb, s >> 3, s & 7, 2 * wp, w0);
        kq::dequant_row_word<TY>(wrow, nb, s >> 3, s & 7, 2 * wp + 1, w1);
        xv[0] = *reinterpret_cast<const float4*>(x0 + int64_t(s) * kFK);
        xv[1] = *reinterpret_cast<const float4*>(x1 + int64_t(s) * kFK);
    };
    auto store = [&](int buf) {
        *reinterpret_cast<float4*>(&sw[buf][wl_r][wp * 8]) = make_float4(w0[0], w0[1], w0[2], w0[3]);
        *reinterpret_cast<float4*>(&sw[buf][wl_r][wp * 8 + 4]) = make_float4(w1[0], w1[1], w1[2], w1[3]);
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

    gemm_f_stages(nb * (QK_K / kFK), load, store, sw, sx, rl, tl, acc);
    gemm_store(acc, row0, tok0, rows, T, bias, y);
}

// One thread per 4 output elements (one quant word).
template <DType TY>
__global__ void __launch_bounds__(256) kq_get_rows_kernel(const uint8_t* __restrict__ table, int64_t cols,
                                                          const int32_t* __restrict__ ids, int64_t n,
                                                          float* __restrict__ out) {
    const int64_t words = cols / 4, total = n * words, nb = cols / QK_K, row_bytes = kq::row_bytes(TY, nb);
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t i = e / words, c = e % words * 4;
        float v[4];
        kq::dequant_row_word<TY>(table + int64_t(ids[i]) * row_bytes, nb, c / QK_K, int(c % QK_K) / 32,
                                 int(c % 32) / 4, v);
        float* o = out + i * cols + c;
        o[0] = v[0], o[1] = v[1], o[2] = v[2], o[3] = v[3];
    }
}

// ---- host side ----

template <DType TY, int T>
void launch_matvec(const KqMvArgs& a, cudaStream_t stream) {
    const int64_t rows_per_block = int64_t(kMvThreads >> a.tpr_shift) * kKqRows;
    kq_matvec_kernel<TY, T><<<blocks_for(a.rows, int(rows_per_block)), kMvThreads, 0, stream>>>(a);
    OWL_CUDA_LAUNCHED("kq_matvec_kernel");
}

template <DType TY>
void matvec(const KqMvArgs& a, int T, cudaStream_t stream) {
    mm::with_decode_tokens(T, "kquant_matvec", [&](auto t) { launch_matvec<TY, decltype(t)::value>(a, stream); });
}

void check_kquant(DType type, int64_t cols, const char* what) {
    if (!kq::is_kq(type)) throw Error(std::string(what) + ": not a K-quant type: " + dtype_name(type));
    if (cols <= 0 || cols % QK_K != 0)
        throw Error(std::string(what) + ": K-quant rows must be a positive multiple of 256 columns");
}

}  // namespace

void kquant_matvec(DType type, const uint8_t* w, int rows, int64_t cols, const int8_t* xq, const int2* xs, int T,
                   const float* bias, float* y, cudaStream_t stream) {
    check_kquant(type, cols, "kquant_matvec");
    if (rows <= 0) return;
    KqMvArgs a{};
    a.w = w;
    a.rows = rows;
    a.nb = int(cols / QK_K);
    a.row_bytes = kq::row_bytes(type, a.nb);
    a.units = 4 * a.nb;
    a.cols = cols;
    a.xq = xq;
    a.xs = xs;
    a.bias = bias;
    a.y = y;
    a.tpr_shift = mv_tpr_shift(a.units);
    kq::with_type(type, [&](auto tag) { matvec<decltype(tag)::value>(a, T, stream); });
}

void kquant_gemm(DType type, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t T,
                 const float* bias, float* y, cudaStream_t stream) {
    check_kquant(type, cols, "kquant_gemm");
    if (rows <= 0 || T <= 0) return;
    if (reinterpret_cast<uintptr_t>(x) & 15) throw Error("matmul: activations must be 16-byte aligned");
    const unsigned blocks = gemm_blocks(rows, T);
    const int nb = int(cols / QK_K);
    kq::with_type(type, [&](auto tag) {
        kq_gemm_kernel<decltype(tag)::value><<<blocks, kGemmThreads, 0, stream>>>(w, rows, nb, x, T, bias, y);
    });
    OWL_CUDA_LAUNCHED("kq_gemm_kernel");
}

void kquant_get_rows(DType type, const uint8_t* table, int64_t cols, const int32_t* ids, int64_t n, float* out,
                     cudaStream_t stream) {
    check_kquant(type, cols, "get_rows");
    if (n <= 0) return;
    const unsigned blocks = unsigned(std::min<int64_t>((n * (cols / 4) + 255) / 256, 1 << 16));
    kq::with_type(type, [&](auto tag) {
        kq_get_rows_kernel<decltype(tag)::value><<<blocks, 256, 0, stream>>>(table, cols, ids, n, out);
    });
    OWL_CUDA_LAUNCHED("kq_get_rows_kernel");
}

}  // namespace cuda
}  // namespace owl
