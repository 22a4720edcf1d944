// Q4_1 / Q5_0 / Q5_1 / IQ4_NL weights x int8 activations with 512-bit instructions; included by matmul_avx512.inc
// (after its Q8_0 / Q4_0 kernels, whose helpers it shares: OWL_VNNI, dpbusd, spread2, pair_scales, prefetch_next,
// kShortRow). See isa.h for the rules.
//
// As the Q4_0 kernel there: one register holds two blocks in element order, 128-bit lanes [b 0..15 | b 16..31 |
// b+1 0..15 | b+1 16..31], against 64 activation bytes in natural order; an odd last block runs with a zero high
// half. The Q5 types add 16 to the bytes whose qh bit is set, qh(b) | qh(b+1) << 32 being exactly a byte mask in
// that order. Integer products as in matmul_q32_avx2.h:
//   Q4_1, Q5_1: levels (u8) x x (s8), plus m * d_x * (sums of x) in fp32;  Q5_0: the same less 16 * (sums of x);
//   IQ4_NL: vpshufb table lookup; vpmaddubsw on |w| x sign(x, w), vpdpbusd on (level + 128) onto -128 * sums.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm_driver.h"
#include "isa.h"

namespace owl::ops::isa {
namespace {

enum class Q32Kind512 { Offset, Min, Signed };

inline uint32_t q32_qh512(const uint8_t* p) {
    uint32_t h;
    std::memcpy(&h, p, 4);
    return h;
}

// Nibbles of blocks b (and b+1 when two) in element order, 0..15 per byte.
inline __m512i q32_nibbles512(const uint8_t* q0, const uint8_t* q1, bool two) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q0));
    __m512i v;
    if (two) {
        v = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(a), 0xff00, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q1)));
    } else {
        v = _mm512_maskz_broadcast_i32x4(0x00ff, a);
    }
    v = _mm512_mask_blend_epi64(0xcc, v, _mm512_srli_epi16(v, 4));
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
}

template <class Block, bool kFive, Q32Kind512 K, int kOff>
struct Q32Linear512 {
    static constexpr Q32Kind512 kKind = K;
    static constexpr int kOffset = kOff;
    static constexpr int64_t kBlockBytes = sizeof(Block);
    static const Block& blk(const uint8_t* row, int64_t b) { return reinterpret_cast<const Block*>(row)[b]; }
    static __m512i load(const uint8_t* row, int64_t b, bool two) {
        __m512i w = q32_nibbles512(blk(row, b).qs, two ? blk(row, b + 1).qs : nullptr, two);
        if constexpr (kFive) {
            const uint64_t h = uint64_t(q32_qh512(blk(row, b).qh)) | (two ? uint64_t(q32_qh512(blk(row, b + 1).qh)) << 32 : 0);
            w = _mm512_mask_add_epi8(w, __mmask64(h), w, _mm512_set1_epi8(0x10));
        }
        return w;
    }
    static uint16_t d(const uint8_t* row, int64_t b) { return blk(row, b).d; }
    static uint16_t m(const uint8_t* row, int64_t b) {
        if constexpr (K == Q32Kind512::Min) return blk(row, b).m;
        return 0;
    }
};
using Q41Avx512 = Q32Linear512<BlockQ4_1, false, Q32Kind512::Min, 0>;
using Q50Avx512 = Q32Linear512<BlockQ5_0, true, Q32Kind512::Offset, 16>;
using Q51Avx512 = Q32Linear512<BlockQ5_1, true, Q32Kind512::Min, 0>;

struct IQ4Avx512 {
    static constexpr Q32Kind512 kKind = Q32Kind512::Signed;
    static constexpr int kOffset = 0;
    static constexpr int64_t kBlockBytes = sizeof(BlockIQ4_NL);
    static const BlockIQ4_NL& blk(const uint8_t* row, int64_t b) { return reinterpret_cast<const BlockIQ4_NL*>(row)[b]; }
    static __m512i load(const uint8_t* row, int64_t b, bool two) {
        __m512i t = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues)));
#if OWL_VNNI
        t = _mm512_xor_si512(t, _mm512_set1_epi8(char(0x80)));  // level + 128 as u8
#endif
        // A missing second block's bytes become level 0: harmless, its activations and scale are 0.
        return _mm512_shuffle_epi8(t, q32_nibbles512(blk(row, b).qs, two ? blk(row, b + 1).qs : nullptr, two));
    }
    static uint16_t d(const uint8_t* row, int64_t b) { return blk(row, b).d; }
    static uint16_t m(const uint8_t*, int64_t) { return 0; }
};

// Register tiles of RR rows x TTT tokens: 4 x 4 (16 accumulators, 3 x-side registers per token) measured 10-20%
// faster than 4 x 3 at 64 tokens (one core, 2048 x 896 matrices).
template <class W, int RR, int TTT>
struct Q32Tiles512 {
    static constexpr int R = RR, TT = TTT;

    struct X {
        __m512i x, xc;
        __m512 dx, sdx;
    };

    static inline X prep(__m512i xv, __m512 dx) {
        X p;
        p.x = xv;
        p.dx = dx;
        p.xc = _mm512_setzero_si512();
        p.sdx = _mm512_setzero_ps();
        if constexpr (W::kKind == Q32Kind512::Min) {
#if OWL_VNNI
            const __m512i s = dpbusd(_mm512_setzero_si512(), _mm512_set1_epi8(1), xv);
#else
            const __m512i s = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_set1_epi8(1), xv), _mm512_set1_epi16(1));
#endif
            p.sdx = _mm512_mul_ps(_mm512_cvtepi32_ps(s), dx);
        } else {
            constexpr int off = W::kKind == Q32Kind512::Offset ? W::kOffset : 128;
#if OWL_VNNI
            p.xc = _mm512_sub_epi32(_mm512_setzero_si512(), dpbusd(_mm512_setzero_si512(), _mm512_set1_epi8(char(off)), xv));
#else
            if constexpr (W::kKind == Q32Kind512::Offset) p.xc = _mm512_maddubs_epi16(_mm512_set1_epi8(char(off)), xv);
#endif
        }
        return p;
    }

    static inline __m512i dot(__m512i w, const X& x) {
#if OWL_VNNI
        return dpbusd(x.xc, w, x.x);
#else
        if constexpr (W::kKind == Q32Kind512::Signed) {
            const __mmask64 neg = _mm512_movepi8_mask(w);
            const __m512i sx = _mm512_mask_sub_epi8(x.x, neg, _mm512_setzero_si512(), x.x);
            return _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(w), sx), _mm512_set1_epi16(1));
        } else {
            __m512i s16 = _mm512_maddubs_epi16(w, x.x);
            if constexpr (W::kKind == Q32Kind512::Offset) s16 = _mm512_sub_epi16(s16, x.xc);
            return _mm512_madd_epi16(s16, _mm512_set1_epi16(1));
        }
#endif
    }

    template <int NR, int NT, bool two>
    static inline void step(const uint8_t* const* w, const int8_t* const* xq, const float* const* xd, int64_t b,
                            const float* f16, int64_t ahead, bool linear, __m512 (&acc)[NR][NT]) {
        X x[NT];
        OWL_UNROLL for (int j = 0; j < NT; ++j) {
            if constexpr (two) {
                x[j] = prep(_mm512_loadu_si512(xq[j] + b * QK),
                            spread2(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(xd[j] + b)))));
            } else {
                x[j] = prep(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[j] + b * QK))),
                                               _mm256_setzero_si256(), 1),
                            spread2(_mm_load_ss(xd[j] + b)));
            }
        }
        OWL_UNROLL for (int i = 0; i < NR; ++i) {
            prefetch_next(w[linear ? 0 : i] + (linear ? b * NR + 2 * i : b) * W::kBlockBytes, ahead);
            const __m512i wv = W::load(w[i], b, two);
            const __m512 dw = pair_scales(f16[W::d(w[i], b)], two ? f16[W::d(w[i], b + 1)] : 0.0f);
            __m512 mw = _mm512_setzero_ps();
            if constexpr (W::kKind == Q32Kind512::Min) mw = pair_scales(f16[W::m(w[i], b)], two ? f16[W::m(w[i], b + 1)] : 0.0f);
            OWL_UNROLL for (int j = 0; j < NT; ++j) {
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot(wv, x[j])), _mm512_mul_ps(dw, x[j].dx), acc[i][j]);
                if constexpr (W::kKind == Q32Kind512::Min) acc[i][j] = _mm512_fmadd_ps(x[j].sdx, mw, acc[i][j]);
            }
        }
    }

    template <int NR, int NT>
    static void run(const GemmArgs& a, int64_t r, int64_t t, int64_t k0, int64_t k1, bool first) {
        const uint8_t* w[NR];
        OWL_UNROLL for (int i = 0; i < NR; ++i) w[i] = a.w + (r + i) * a.row_bytes;
        const int64_t nb = a.K / QK;
        const int8_t* xq[NT];
        const float* xd[NT];
        OWL_UNROLL for (int j = 0; j < NT; ++j) {
            xq[j] = a.xq + (t + j) * a.K;
            xd[j] = a.xd + (t + j) * nb;
        }
        __m512 acc[NR][NT];
        OWL_UNROLL for (int i = 0; i < NR; ++i)
            OWL_UNROLL for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_setzero_ps();
        const bool linear = a.row_bytes <= kShortRow;
        const int64_t b1 = k1 / QK;
        int64_t b = k0 / QK;
        for (; b + 2 <= b1; b += 2) step<NR, NT, true>(w, xq, xd, b, a.f16, NR * a.row_bytes, linear, acc);
        if (b < b1) step<NR, NT, false>(w, xq, xd, b, a.f16, NR * a.row_bytes, linear, acc);
        OWL_UNROLL for (int i = 0; i < NR; ++i)
            OWL_UNROLL for (int j = 0; j < NT; ++j) put(a, r + i, t + j, _mm512_reduce_add_ps(acc[i][j]), first);
    }
};

}  // namespace
}  // namespace owl::ops::isa
