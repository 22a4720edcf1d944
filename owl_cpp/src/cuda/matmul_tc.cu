// The F16 and K-quant tensor-core GEMMs and the tensor-core switch (contract in matmul_tc.cuh).
//
// Tiles as the SIMT GEMMs (matmul_common.cuh): 64 rows x 64 tokens per block of 256 threads, a stage of 32
// columns, double-buffered. Shared tiles hold fp16: F16 weights as in the file, K-quant weights dequantized and
// split into hi and lo parts, the activations as hi and lo parts (scaled per token by token_shift_kernel's power
// of two); 16 words per row plus 4 of padding, so the 8 rows an mma fragment load touches fall on distinct
// banks. Each warp computes 32 rows x 16 tokens with m16n8k16 mma (mma.cuh), two k-steps per stage.
#include <atomic>
#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "kquant_block.h"
#include "matmul_common.cuh"
#include "matmul_tc.cuh"
#include "mma.cuh"

namespace owl {
namespace cuda {
namespace {

using namespace mm;

constexpr int kScaleTop = 15;   // a token's largest |x| is scaled into [2^(kScaleTop - 1), 2^kScaleTop)
constexpr int kMaxShift = 126;  // |k_t| bound: 2^k_t and 2^-k_t stay normal fp32 (a token below 2^-111 keeps fewer bits)
constexpr int kStride = 20;     // words per tile row: 32 halves + 8 of padding

__device__ __forceinline__ float pow2(int k) { return __int_as_float((k + 127) << 23); }  // |k| <= 126

// shift[t] = k_t with max_k |x[t][k]| 2^k_t in [2^14, 2^15); 0 for a token whose largest |x| is 0 or infinite
// (NaN elements are skipped by fmaxf and reach the output through the product). One block per token.
__global__ void __launch_bounds__(256) token_shift_kernel(const float* __restrict__ x, int64_t cols,
                                                          int* __restrict__ shift) {
    const float* row = x + int64_t(blockIdx.x) * cols;
    float m = 0.0f;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, fabsf(row[i]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    __shared__ float part[8];
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int w = 1; w < 8; ++w) m = fmaxf(m, part[w]);
    int e = 0;
    frexpf(m, &e);  // m = f 2^e, f in [0.5, 1)
    shift[blockIdx.x] = m > 0.0f && m <= FLT_MAX ? max(-kMaxShift, min(kMaxShift, kScaleTop - e)) : 0;
}

// (a, b) scaled by s -> hi = fp16 pair, lo = fp16 pair of the remainders (a s - hi is exact in fp32).
__device__ __forceinline__ void split_pair(float a, float b, float s, uint32_t& hi, uint32_t& lo) {
    a *= s;
    b *= s;
    const __half2 h = __floats2half2_rn(a, b);
    const float2 hf = __half22float2(h);
    const __half2 l = __floats2half2_rn(a - hf.x, b - hf.y);
    hi = *reinterpret_cast<const uint32_t*>(&h);
    lo = *reinterpret_cast<const uint32_t*>(&l);
}

// A pair of floats -> hi = fp16 pair, lo = fp16 pair of the remainders, unscaled (weights).
__device__ __forceinline__ void split_pair(float a, float b, uint32_t& hi, uint32_t& lo) { split_pair(a, b, 1.0f, hi, lo); }

// TY = F16: the weights are fp16 already (one tile, two products per step: lo and hi activations). TY = Q4_K /
// Q5_K / Q6_K: each stage is one sub-block, dequantized in fp32 exactly as the CPU does (kquant_block.h) and split
// into hi and lo fp16 tiles like the activations; three products per step (w_hi x_lo, w_lo x_hi, w_hi x_hi; the
// dropped w_lo x_lo is 2^-22 of the product). The tensor cores round their fp32 accumulation toward zero, so the
// sum drifts by up to about 2^-24 of the result per mma: 4e-5 relative at 11008 columns on an H200. Summing each
// stage into a fresh fragment and adding that in fp32 removed the drift but cost 15% of the Q4_K prefill (more
// registers, fewer blocks per SM); the drift is far below the weights' own quantization error.
template <DType TY>
__global__ void __launch_bounds__(kGemmThreads) gemm_tc_kernel(const uint8_t* __restrict__ w, int64_t rows,
                                                               int64_t cols, const float* __restrict__ x,
                                                               const int* __restrict__ shift, int64_t T,
                                                               const float* __restrict__ bias, float* __restrict__ y) {
    constexpr int kK = 32;  // columns per stage
    constexpr bool kSplitW = TY != DType::F16;
    __shared__ __align__(16) uint32_t swh[2][kTileR][kStride];
    __shared__ __align__(16) uint32_t swl[kSplitW ? 2 : 1][kSplitW ? kTileR : 1][kStride];
    __shared__ __align__(16) uint32_t sxh[2][kTileT][kStride];
    __shared__ __align__(16) uint32_t sxl[2][kTileT][kStride];

    int64_t row0, tok0;
    gemm_tile(T, row0, tok0);
    const int tid = threadIdx.x;
    // Loaders: 4 threads per weight row, 8 elements each (F16: one 16-byte load; K-quants: two dequantized words);
    // 8 threads per token, 4 floats each, tokens xl and xl + 32. cols % 8 == 0, so a load is all inside the row
    // or all past its end (zeros).
    const int wl_r = tid >> 2, wp = tid & 3, wl_k = wp * 8;
    const int xl = tid >> 3, xl_k = (tid & 7) * 4;
    const int64_t wr = min(row0 + wl_r, rows - 1);
    const int64_t nb = cols / QK_K;  // K-quants: super-blocks per row
    const uint8_t* wrow = kSplitW ? w + wr * kq::row_bytes(TY, nb) : w + (wr * cols + wl_k) * 2;
    const int64_t xt0 = min(tok0 + xl, T - 1), xt1 = min(tok0 + xl + 32, T - 1);
    const float* x0 = x + xt0 * cols + xl_k;
    const float* x1 = x + xt1 * cols + xl_k;
    const float s0 = pow2(shift[xt0]), s1 = pow2(shift[xt1]);

    uint4 wq;              // F16: 8 halves
    float wf0[4], wf1[4];  // K-quants: 8 dequantized elements
    float4 xv[2];
    auto load = [&](int s) {
        const int64_t k0 = int64_t(s) * kK;
        if constexpr (kSplitW) {
            kq::dequant_row_word<TY>(wrow, nb, s >> 3, s & 7, 2 * wp, wf0);
            kq::dequant_row_word<TY>(wrow, nb, s >> 3, s & 7, 2 * wp + 1, wf1);
        } else {
            wq = k0 + wl_k < cols ? *reinterpret_cast<const uint4*>(wrow + 2 * k0) : make_uint4(0, 0, 0, 0);
        }
        const bool xin = k0 + xl_k < cols;
        xv[0] = xin ? *reinterpret_cast<const float4*>(x0 + k0) : make_float4(0.f, 0.f, 0.f, 0.f);
        xv[1] = xin ? *reinterpret_cast<const float4*>(x1 + k0) : make_float4(0.f, 0.f, 0.f, 0.f);
    };
    auto store = [&](int buf) {
        if constexpr (kSplitW) {
            uint4 hi, lo;
            split_pair(wf0[0], wf0[1], hi.x, lo.x);
            split_pair(wf0[2], wf0[3], hi.y, lo.y);
            split_pair(wf1[0], wf1[1], hi.z, lo.z);
            split_pair(wf1[2], wf1[3], hi.w, lo.w);
            *reinterpret_cast<uint4*>(&swh[buf][wl_r][wl_k / 2]) = hi;
            *reinterpret_cast<uint4*>(&swl[buf][wl_r][wl_k / 2]) = lo;
        } else {
            *reinterpret_cast<uint4*>(&swh[buf][wl_r][wl_k / 2]) = wq;
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float s = h ? s1 : s0;
            uint2 hi, lo;
            split_pair(xv[h].x, xv[h].y, s, hi.x, lo.x);
            split_pair(xv[h].z, xv[h].w, s, hi.y, lo.y);
            *reinterpret_cast<uint2*>(&sxh[buf][xl + 32 * h][xl_k / 2]) = hi;
            *reinterpret_cast<uint2*>(&sxl[buf][xl + 32 * h][xl_k / 2]) = lo;
        }
    };

    const int warp = tid >> 5, wr0 = (warp & 1) * 32, wt = (warp >> 1) * 16;
    float acc[2][2][4];
    mma::zero(acc);

    gemm_stages((cols + kK - 1) / kK, load, store, [&](int buf) {
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {  // 16 columns = 8 words per mma
            uint32_t ah[2][4], al[2][4], bh[2][2], bl[2][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                mma::load_a(swh[buf], wr0 + 16 * mi, 8 * ks, ah[mi]);
                if constexpr (kSplitW) mma::load_a(swl[buf], wr0 + 16 * mi, 8 * ks, al[mi]);
            }
#pragma unroll
            for (int ni = 0; ni < 2; ++ni) {
                mma::load_b(sxh[buf], wt + 8 * ni, 8 * ks, bh[ni]);
                mma::load_b(sxl[buf], wt + 8 * ni, 8 * ks, bl[ni]);
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 2; ++ni) {  // small terms first
                    mma::f16_16x8x16(acc[mi][ni], ah[mi], bl[ni]);
                    if constexpr (kSplitW) mma::f16_16x8x16(acc[mi][ni], al[mi], bh[ni]);
                    mma::f16_16x8x16(acc[mi][ni], ah[mi], bh[ni]);
                }
        }
    });
    mma::store_warp_tile(acc, row0, tok0, rows, T, bias, y,
                         [&](float v, int64_t t) { return v * pow2(-shift[t]); });
}

bool tc_disabled_by_env() {
    const char* env = std::getenv("OWL_CUDA_TC");
    return env && std::strcmp(env, "0") == 0;
}

// An empty kernel built like every other: what the device runs of it tells whether the mma.sync bodies are in.
__global__ void arch_probe_kernel() {}

// Whether the code the current device runs was compiled for sm_80 or later, looked up once per device. Not the
// device's compute capability alone: an sm_90 GPU running a build for sm_75 JIT-compiles the compute_75 PTX, where
// mma.cuh's bodies trap. ptxVersion is the virtual architecture the running code came from (__CUDA_ARCH__).
bool mma_compiled(int device) {
    constexpr int kDevices = 64;
    static std::atomic<int> known[kDevices];  // 0: not looked up yet, 1: no, 2: yes
    if (device < 0 || device >= kDevices) return false;
    int v = known[device].load(std::memory_order_relaxed);
    if (v == 0) {
        cudaFuncAttributes a{};
        OWL_CUDA_CHECK(cudaFuncGetAttributes(&a, arch_probe_kernel));
        v = a.ptxVersion >= 80 && a.binaryVersion >= 80 ? 2 : 1;
        known[device].store(v, std::memory_order_relaxed);
    }
    return v == 2;
}

}  // namespace

bool use_tensor_cores(int64_t T) {
    if (T <= kDecodeT || tc_disabled_by_env()) return false;
    int device = 0;
    OWL_CUDA_CHECK(cudaGetDevice(&device));
    return mma_compiled(device);
}

void gemm_tc(DType type, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t T, const float* bias,
             float* y, Workspace& ws, cudaStream_t stream) {
    if (rows <= 0 || T <= 0) return;
    const bool kquant = kq::is_kq(type);
    if (type != DType::F16 && !kquant) throw Error(std::string("gemm_tc: no tensor-core GEMM for ") + dtype_name(type));
    if (cols % (kquant ? QK_K : 8) != 0 || (reinterpret_cast<uintptr_t>(w) & 15) ||
        (reinterpret_cast<uintptr_t>(x) & 15))
        throw Error("gemm_tc: needs whole blocks (F16: cols % 8 == 0) and 16-byte aligned weights and activations");
    auto* shift = static_cast<int*>(ws.get(size_t(T) * sizeof(int)));
    token_shift_kernel<<<unsigned(T), 256, 0, stream>>>(x, cols, shift);
    OWL_CUDA_LAUNCHED("token_shift_kernel");
    const unsigned blocks = gemm_blocks(rows, T);
    auto launch = [&](auto tag) {
        gemm_tc_kernel<decltype(tag)::value><<<blocks, kGemmThreads, 0, stream>>>(w, rows, cols, x, shift, T, bias, y);
    };
    if (kquant) kq::with_type(type, launch);
    else launch(std::integral_constant<DType, DType::F16>{});
    OWL_CUDA_LAUNCHED("gemm_tc_kernel");
}

}  // namespace cuda
}  // namespace owl
