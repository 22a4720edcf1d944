// Q4_1 / Q5_0 / Q5_1 / IQ4_NL weights x int8 activations on AArch64 NEON; included by matmul_neon.cpp (after its
// Q8_0 / Q4_0 kernels, whose dot32 and half_to_float it uses). See isa.h for the rules.
//
// One block per step, as the Q4_0 kernel there: each weight block is decoded to two int8x16 registers of signed
// levels in element order (Q4_1 / Q5_1: 0..31; Q5_0: q - 16; IQ4_NL: a vqtbl1q_s8 table lookup), the Q5 types'
// bit 4 taken from qh by vtstq_u8 against one bit per byte. Then dot32 against the token's activations and
// acc += float(dot) * (d_w * d_x); Q4_1 / Q5_1 add m_w * d_x * sum(x) in a scalar accumulator per (row, token).
#pragma once
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "gemm_driver.h"
#include "isa.h"

namespace owl::ops::isa {
namespace {

// 0x10 in byte k where bit k of the 16-bit h is set.
inline uint8x16_t q32_bit4_neon(uint32_t h) {
    static const uint8_t kBits[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t v = vcombine_u8(vdup_n_u8(uint8_t(h & 0xff)), vdup_n_u8(uint8_t((h >> 8) & 0xff)));
    return vandq_u8(vtstq_u8(v, vld1q_u8(kBits)), vdupq_n_u8(0x10));
}

template <class Block, bool kFive, bool kMinT, int kOffset>
struct Q32Neon {
    static constexpr bool kMin = kMinT;
    static const Block& blk(const uint8_t* row, int64_t b) { return reinterpret_cast<const Block*>(row)[b]; }
    static void load(const uint8_t* row, int64_t b, int8x16_t& w0, int8x16_t& w1) {
        const Block& k = blk(row, b);
        const uint8x16_t q = vld1q_u8(k.qs);
        uint8x16_t lo = vandq_u8(q, vdupq_n_u8(0x0f)), hi = vshrq_n_u8(q, 4);
        if constexpr (kFive) {
            uint32_t h;
            std::memcpy(&h, k.qh, 4);
            lo = vorrq_u8(lo, q32_bit4_neon(h & 0xffffu));
            hi = vorrq_u8(hi, q32_bit4_neon(h >> 16));
        }
        w0 = vsubq_s8(vreinterpretq_s8_u8(lo), vdupq_n_s8(int8_t(kOffset)));
        w1 = vsubq_s8(vreinterpretq_s8_u8(hi), vdupq_n_s8(int8_t(kOffset)));
    }
    static float scale(const uint8_t* row, int64_t b) { return half_to_float(blk(row, b).d); }
    static float min(const uint8_t* row, int64_t b) {
        if constexpr (kMinT) return half_to_float(blk(row, b).m);
        return 0.0f;
    }
};
using Q41Neon = Q32Neon<BlockQ4_1, false, true, 0>;
using Q50Neon = Q32Neon<BlockQ5_0, true, false, 16>;
using Q51Neon = Q32Neon<BlockQ5_1, true, true, 0>;

struct IQ4Neon {
    static constexpr bool kMin = false;
    static const BlockIQ4_NL& blk(const uint8_t* row, int64_t b) { return reinterpret_cast<const BlockIQ4_NL*>(row)[b]; }
    static void load(const uint8_t* row, int64_t b, int8x16_t& w0, int8x16_t& w1) {
        const int8x16_t table = vld1q_s8(kIQ4NLValues);
        const uint8x16_t q = vld1q_u8(blk(row, b).qs);
        w0 = vqtbl1q_s8(table, vandq_u8(q, vdupq_n_u8(0x0f)));
        w1 = vqtbl1q_s8(table, vshrq_n_u8(q, 4));
    }
    static float scale(const uint8_t* row, int64_t b) { return half_to_float(blk(row, b).d); }
    static float min(const uint8_t*, int64_t) { return 0.0f; }
};

template <class W>
struct Q32TilesNeon {
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
        float accm[NR][NT] = {};
        for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NT; ++j) acc[i][j] = vdupq_n_f32(0.0f);
        for (int64_t b = k0 / QK; b < k1 / QK; ++b) {
            int8x16_t x0[NT], x1[NT];
            float sx[NT];  // d_x * sum(x), for the minima
            for (int j = 0; j < NT; ++j) {
                x0[j] = vld1q_s8(xq[j] + b * QK);
                x1[j] = vld1q_s8(xq[j] + b * QK + 16);
                sx[j] = W::kMin ? xd[j][b] * float(vaddlvq_s8(x0[j]) + vaddlvq_s8(x1[j])) : 0.0f;
            }
            for (int i = 0; i < NR; ++i) {
                int8x16_t w0, w1;
                W::load(w[i], b, w0, w1);
                const float dw = W::scale(w[i], b);
                const float mw = W::min(w[i], b);
                for (int j = 0; j < NT; ++j) {
                    acc[i][j] = vfmaq_n_f32(acc[i][j], vcvtq_f32_s32(dot32(w0, w1, x0[j], x1[j])), dw * xd[j][b]);
                    if constexpr (W::kMin) accm[i][j] += mw * sx[j];
                }
            }
        }
        for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NT; ++j) put(a, r + i, t + j, vaddvq_f32(acc[i][j]) + accm[i][j], first);
    }
};

}  // namespace
}  // namespace owl::ops::isa
