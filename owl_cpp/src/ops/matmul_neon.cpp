// AArch64 NEON kernels (Advanced SIMD is part of every AArch64 CPU, so no runtime check is needed). Byte products
// use vdotq_s32 when the compiler targets the dot-product extension (-march=armv8.2-a+dotprod or later), else
// vmull_s8 / vpadalq_s16. Elsewhere this file only provides a stub. See isa.h for what it may include and call.
#include "isa.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "attention_kernel.h"
#include "float_panels.h"
#include "gemm_driver.h"
#include "kquant_decode.h"

namespace owl::ops::isa {
namespace {

inline float half_to_float(uint16_t h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

void quantize_q8_neon(const float* x, int64_t K, int8_t* qs, float* d) {
    for (int64_t b = 0; b < K / QK; ++b) {
        const float* xb = x + b * QK;
        float32x4_t v[8];
        for (int l = 0; l < 8; ++l) v[l] = vld1q_f32(xb + 4 * l);
        float32x4_t m = vabsq_f32(v[0]);
        for (int l = 1; l < 8; ++l) m = vmaxq_f32(m, vabsq_f32(v[l]));
        const float amax = vmaxvq_f32(m);
        const float db = amax / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        for (int l = 0; l < 8; l += 2) {
            // vcvtaq: round to nearest, ties away from zero = roundf.
            const int32x4_t q0 = vcvtaq_s32_f32(vmulq_n_f32(v[l], id));
            const int32x4_t q1 = vcvtaq_s32_f32(vmulq_n_f32(v[l + 1], id));
            const int16x8_t q16 = vcombine_s16(vqmovn_s32(q0), vqmovn_s32(q1));
            vst1_s8(qs + b * QK + 4 * l, vqmovn_s16(q16));
        }
    }
}

// ---- float weights: 4 columns per step ----

struct LoadF32 {
    static float32x4_t load(const uint8_t* row, int64_t k) { return vld1q_f32(reinterpret_cast<const float*>(row) + k); }
    static float one(const uint8_t* row, int64_t k) { float v; std::memcpy(&v, row + k * 4, 4); return v; }
};
struct LoadF16 {
    static float32x4_t load(const uint8_t* row, int64_t k) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(row + k * 2))));
    }
    static float one(const uint8_t* row, int64_t k) { uint16_t h; std::memcpy(&h, row + k * 2, 2); return half_to_float(h); }
};
struct LoadBF16 {
    static float32x4_t load(const uint8_t* row, int64_t k) {
        return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(row + k * 2)), 16));
    }
    static float one(const uint8_t* row, int64_t k) {
        uint16_t h;
        std::memcpy(&h, row + k * 2, 2);
        const uint32_t u = uint32_t(h) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};

template <class Load>
struct FloatTiles {
    static constexpr int R = 4, TT = 4;
    template <int NR, int NT>
    static void run(const GemmArgs& a, int64_t r, int64_t t, int64_t k0, int64_t k1, bool first) {
        const uint8_t* w[NR];
        for (int i = 0; i < NR; ++i) w[i] = a.w + (r + i) * a.row_bytes;
        const float* x[NT];
        for (int j = 0; j < NT; ++j) x[j] = a.x + (t + j) * a.K;
        float32x4_t acc[NR][NT];
        for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NT; ++j) acc[i][j] = vdupq_n_f32(0.0f);
        int64_t k = k0;
        for (; k + 4 <= k1; k += 4) {
            float32x4_t xv[NT];
            for (int j = 0; j < NT; ++j) xv[j] = vld1q_f32(x[j] + k);
            for (int i = 0; i < NR; ++i) {
                const float32x4_t wv = Load::load(w[i], k);
                for (int j = 0; j < NT; ++j) acc[i][j] = vfmaq_f32(acc[i][j], wv, xv[j]);
            }
        }
        for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NT; ++j) {
                float s = vaddvq_f32(acc[i][j]);
                for (int64_t kk = k; kk < k1; ++kk) s += Load::one(w[i], kk) * x[j][kk];
                put(a, r + i, t + j, s, first);
            }
    }
};

// Conversion of a run of columns to fp32 for float_panels.h.
template <class Load>
struct PanelLoad {
    static void to_f32(const uint8_t* row, int64_t k, int64_t n, float* out) {
        int64_t i = 0;
        for (; i + 4 <= n; i += 4) vst1q_f32(out + i, Load::load(row, k + i));
        for (; i < n; ++i) out[i] = Load::one(row, k + i);
    }
};
template <class Load>
constexpr GemmFn kFloatGemm = gemm_float<PanelLoad<Load>, FloatTiles<Load>>;

// ---- quantized weights x int8 activations: one block of 32 per step ----

// Sum of w[l] * x[l] over a block, as four int32 lanes (signed bytes; |products| <= 128 * 127).
inline int32x4_t dot32(int8x16_t w0, int8x16_t w1, int8x16_t x0, int8x16_t x1) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
    const int16x8_t p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0);
    const int16x8_t p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), w1, x1);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
#endif
}

struct Q8Weights {
    static float scale(const uint8_t* row, int64_t b) { return half_to_float(reinterpret_cast<const BlockQ8_0*>(row)[b].d); }
    static void load(const uint8_t* row, int64_t b, int8x16_t& w0, int8x16_t& w1) {
        const int8_t* q = reinterpret_cast<const BlockQ8_0*>(row)[b].qs;
        w0 = vld1q_s8(q);
        w1 = vld1q_s8(q + 16);
    }
};
struct Q4Weights {
    static float scale(const uint8_t* row, int64_t b) { return half_to_float(reinterpret_cast<const BlockQ4_0*>(row)[b].d); }
    static void load(const uint8_t* row, int64_t b, int8x16_t& w0, int8x16_t& w1) {
        const uint8x16_t q = vld1q_u8(reinterpret_cast<const BlockQ4_0*>(row)[b].qs);
        const int8x16_t eight = vdupq_n_s8(8);
        w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), eight);
        w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight);
    }
};

template <class W>
struct QuantTiles {
    static constexpr int R = 4, TT = 4;
    template <int NR, int NT>
    static void run(const GemmArgs& a, int64_t r, int64_t t, int64_t k0, int64_t k1, bool first) {
        const uint8_t* w[NR];
        for (int i = 0; i < NR; ++i) w[i] = a.w + (r + i) * a.row_bytes;
        const int64_t nb = a.K / QK;
        const int8_t* xq[NT];
        const float* xd[NT];
        for (int j = 0; j < NT; ++j) {
            xq[j] = a.xq + (t + j) * a.K;
            xd[j] = a.xd + (t + j) * nb;
        }
        float32x4_t acc[NR][NT];
        for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NT; ++j) acc[i][j] = vdupq_n_f32(0.0f);
        for (int64_t b = k0 / QK; b < k1 / QK; ++b) {
            int8x16_t x0[NT], x1[NT];
            for (int j = 0; j < NT; ++j) {
                x0[j] = vld1q_s8(xq[j] + b * QK);
                x1[j] = vld1q_s8(xq[j] + b * QK + 16);
            }
            for (int i = 0; i < NR; ++i) {
                int8x16_t w0, w1;
                W::load(w[i], b, w0, w1);
                const float dw = W::scale(w[i], b);
                for (int j = 0; j < NT; ++j)
                    acc[i][j] = vfmaq_n_f32(acc[i][j], vcvtq_f32_s32(dot32(w0, w1, x0[j], x1[j])), dw * xd[j][b]);
            }
        }
        for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NT; ++j) put(a, r + i, t + j, vaddvq_f32(acc[i][j]), first);
    }
};

}  // namespace
}  // namespace owl::ops::isa

#include "matmul_q32_neon.h"

namespace owl::ops::isa {
namespace {
#include "matmul_kquant_neon.inc"

const Kernels kKernels = {
    "neon",
    quantize_q8_neon,
    quantize_q8_neon,
    kFloatGemm<LoadF32>,
    kFloatGemm<LoadF16>,
    kFloatGemm<LoadBF16>,
    drive<QuantTiles<Q8Weights>>,
    drive<QuantTiles<Q4Weights>>,
    nullptr,  // no BlockQ4_0x8 kernel: Q4_0 stays in the file's layout
    attend_unit,
    swiglu_v,
    store_f16_row,
    false,    // q8_sums
    nullptr,  // q8_0x16
    drive<Q32TilesNeon<Q41Neon>>,
    drive<Q32TilesNeon<Q50Neon>>,
    drive<Q32TilesNeon<Q51Neon>>,
    drive<Q32TilesNeon<IQ4Neon>>,
    drive<KQuantTiles<DType::Q2_K>>,
    drive<KQuantTiles<DType::Q3_K>>,
    drive<KQuantTiles<DType::Q4_K>>,
    drive<KQuantTiles<DType::Q5_K>>,
    drive<KQuantTiles<DType::Q6_K>>,
    quantize_q8_k_neon,
    nullptr, nullptr, nullptr, nullptr,  // no x8 kernels for Q4_1 / Q5_0 / Q5_1 / IQ4_NL
    nullptr, nullptr, nullptr,  // q4_kx8, q5_kx8, q6_kx8: the K-quants stay in the file's layout
};

}  // namespace

const Kernels* kernels_neon() { return &kKernels; }

}  // namespace owl::ops::isa

#else

namespace owl::ops::isa {
const Kernels* kernels_neon() { return nullptr; }
}  // namespace owl::ops::isa

#endif
