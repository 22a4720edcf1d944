// Q4_1 / Q5_0 / Q5_1 / IQ4_NL weights x int8 activations with 256-bit integer instructions; included by
// matmul_avx2.inc (after its Q4_0 kernel, whose helpers and activation order it shares: OWL_VNNI, dpbusd, ones16,
// hsum, prefetch_next, kShortRow). See isa.h for the rules.
//
// As the Q4_0 kernel: two blocks per step, the activations in quantize_q8_pairs_avx2's order, so the low nibbles of
// blocks b and b+1 fill one register wl = [b 0..15 | b+1 0..15] and the high ones wh = [b 16..31 | b+1 16..31];
// an odd last block runs alone in element order (wl = the block, wh = 0). The Q5 types OR bit 4 into each byte
// from qh (32 bits spread to 32 bytes by a shuffle and a compare). Each int32 lane then holds four products of one
// block (lanes 0-3 block b, 4-7 block b+1), scaled by [s_b x4 | s_b+1 x4]:
//   Q4_1, Q5_1 (x = d q + m): levels 0..31 (u8) x x (s8), and the minimum's term m * d_x * (quad sums of x), the
//     sums converted and multiplied by d_x once per token and block (ggml's Q8_1 sum);
//   Q5_0 (x = d (q - 16)): the same products, -16 * (sums of x) subtracted in the integers;
//   IQ4_NL (x = d * table[q]): a vpshufb table lookup; vpmaddubsw takes |w| x sign(x, w) (|w| <= 127, so each
//     product pair fits in int16, two of them do not: each is widened alone), vpdpbusd takes the table + 128 (u8)
//     onto -128 * (sums of x).
// vpmaddubsw bounds: levels <= 31, so a pair sum <= 2 * 31 * 127 and the two registers' sum, less 16 * 4 * 127, fit.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm_driver.h"
#include "isa.h"

namespace owl::ops::isa {
namespace {

enum class Q32Kind { Offset, Min, Signed };

// 0xFF in byte k of the result where bit k of m is set.
inline __m256i q32_spread_bits(uint32_t m) {
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int(m)),
                                          _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i bits = _mm256_set1_epi64x(int64_t(0x8040201008040201));
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits);
}
inline uint32_t q32_qh(const uint8_t* p) {
    uint32_t h;
    std::memcpy(&h, p, 4);
    return h;
}
inline __m256i q32_nibbles_two(const uint8_t* q0, const uint8_t* q1, __m256i& wh) {
    const __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q0))),
                                              _mm_loadu_si128(reinterpret_cast<const __m128i*>(q1)), 1);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    wh = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    return _mm256_and_si256(q, m4);
}
inline __m256i q32_nibbles_one(const uint8_t* q0) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q0));
    return _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1), _mm256_set1_epi8(0x0f));
}

// Decoders: two(row, b, wl, wh) in pair order, one(row, b) in element order; the fp16 bits of d (and m).
template <class Block, bool kFive, Q32Kind K, int kOff>
struct Q32LinearAvx2 {
    static constexpr Q32Kind kKind = K;
    static constexpr int kOffset = kOff;
    static const Block& blk(const uint8_t* row, int64_t b) { return reinterpret_cast<const Block*>(row)[b]; }
    static void two(const uint8_t* row, int64_t b, __m256i& wl, __m256i& wh) {
        wl = q32_nibbles_two(blk(row, b).qs, blk(row, b + 1).qs, wh);
        if constexpr (kFive) {
            const uint32_t h0 = q32_qh(blk(row, b).qh), h1 = q32_qh(blk(row, b + 1).qh);
            const __m256i bit4 = _mm256_set1_epi8(0x10);
            wl = _mm256_or_si256(wl, _mm256_and_si256(q32_spread_bits((h0 & 0xffffu) | (h1 << 16)), bit4));
            wh = _mm256_or_si256(wh, _mm256_and_si256(q32_spread_bits((h0 >> 16) | (h1 & 0xffff0000u)), bit4));
        }
    }
    static __m256i one(const uint8_t* row, int64_t b) {
        __m256i w = q32_nibbles_one(blk(row, b).qs);
        if constexpr (kFive)
            w = _mm256_or_si256(w, _mm256_and_si256(q32_spread_bits(q32_qh(blk(row, b).qh)), _mm256_set1_epi8(0x10)));
        return w;
    }
    static uint16_t d(const uint8_t* row, int64_t b) { return blk(row, b).d; }
    static uint16_t m(const uint8_t* row, int64_t b) {
        if constexpr (K == Q32Kind::Min) return blk(row, b).m;
        return 0;
    }
};
using Q41Avx2 = Q32LinearAvx2<BlockQ4_1, false, Q32Kind::Min, 0>;
using Q50Avx2 = Q32LinearAvx2<BlockQ5_0, true, Q32Kind::Offset, 16>;
using Q51Avx2 = Q32LinearAvx2<BlockQ5_1, true, Q32Kind::Min, 0>;

struct IQ4Avx2 {
    static constexpr Q32Kind kKind = Q32Kind::Signed;
    static constexpr int kOffset = 0;
    static const BlockIQ4_NL& blk(const uint8_t* row, int64_t b) { return reinterpret_cast<const BlockIQ4_NL*>(row)[b]; }
    static __m256i table() {
        const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues)));
#if OWL_VNNI
        return _mm256_xor_si256(t, _mm256_set1_epi8(char(0x80)));  // level + 128 as u8
#else
        return t;
#endif
    }
    static void two(const uint8_t* row, int64_t b, __m256i& wl, __m256i& wh) {
        const __m256i t = table();
        wl = _mm256_shuffle_epi8(t, q32_nibbles_two(blk(row, b).qs, blk(row, b + 1).qs, wh));
        wh = _mm256_shuffle_epi8(t, wh);
    }
    static __m256i one(const uint8_t* row, int64_t b) { return _mm256_shuffle_epi8(table(), q32_nibbles_one(blk(row, b).qs)); }
    static uint16_t d(const uint8_t* row, int64_t b) { return blk(row, b).d; }
    static uint16_t m(const uint8_t*, int64_t) { return 0; }
};

// The activation side of one step for one token: bytes, scales, and what the kind needs (see the top).
struct Q32X {
    __m256i xl, xh;
    __m256i xc;    // Offset / Signed: the integer correction (int16 pair sums x offset, or VNNI's -offset * quad sums)
    __m256 dx;     // [d_x(b) x4 | d_x(b+1) x4] (one block: d_x(b) x8)
    __m256 sdx;    // Min: float(quad sums of x) * dx
};

template <class W>
inline Q32X q32_prep(__m256i xl, __m256i xh, __m256 dx) {
    Q32X p;
    p.xc = _mm256_setzero_si256();
    p.sdx = _mm256_setzero_ps();
    p.xl = xl;
    p.xh = xh;
    p.dx = dx;
    if constexpr (W::kKind == Q32Kind::Min) {
#if OWL_VNNI
        const __m256i s = dpbusd(dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(1), xl), _mm256_set1_epi8(1), xh);
#else
        const __m256i s = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), xl),
                                                             _mm256_maddubs_epi16(_mm256_set1_epi8(1), xh)), ones16());
#endif
        p.sdx = _mm256_mul_ps(_mm256_cvtepi32_ps(s), dx);
    } else {
        constexpr int off = W::kKind == Q32Kind::Offset ? W::kOffset : 128;
#if OWL_VNNI
        const __m256i o = _mm256_set1_epi8(char(off));
        p.xc = _mm256_sub_epi32(_mm256_setzero_si256(), dpbusd(dpbusd(_mm256_setzero_si256(), o, xl), o, xh));
#else
        if constexpr (W::kKind == Q32Kind::Offset)
            p.xc = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(char(off)), xl),
                                    _mm256_maddubs_epi16(_mm256_set1_epi8(char(off)), xh));
#endif
    }
    return p;
}

// int32 lanes of sum(w * x) for one (row, token), the kind's correction included.
template <class W>
inline __m256i q32_dot(__m256i wl, __m256i wh, const Q32X& x) {
#if OWL_VNNI
    const __m256i init = W::kKind == Q32Kind::Min ? _mm256_setzero_si256() : x.xc;
    return dpbusd(dpbusd(init, wl, x.xl), wh, x.xh);
#else
    if constexpr (W::kKind == Q32Kind::Signed) {
        const __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wl, wl), _mm256_sign_epi8(x.xl, wl)), ones16());
        const __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wh, wh), _mm256_sign_epi8(x.xh, wh)), ones16());
        return _mm256_add_epi32(pl, ph);
    } else {
        __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(wl, x.xl), _mm256_maddubs_epi16(wh, x.xh));
        if constexpr (W::kKind == Q32Kind::Offset) s16 = _mm256_sub_epi16(s16, x.xc);
        return _mm256_madd_epi16(s16, ones16());
    }
#endif
}

template <class W, int RR, int TTT>
struct Q32Tiles {
    static constexpr int R = RR, TT = TTT;

    static __m256 pair_bcast(float s0, float s1) {
        return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(s0)), _mm_set1_ps(s1), 1);
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
        __m256 acc[NR][NT];
        OWL_UNROLL for (int i = 0; i < NR; ++i)
            OWL_UNROLL for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_setzero_ps();
        const bool linear = a.row_bytes <= kShortRow;
        const int64_t bb = a.row_bytes / nb;  // bytes per block
        const int64_t b1 = k1 / QK;
        int64_t b = k0 / QK;
        for (; b + 2 <= b1; b += 2) {
            Q32X x[NT];
            OWL_UNROLL for (int j = 0; j < NT; ++j)
                x[j] = q32_prep<W>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[j] + b * QK)),
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[j] + b * QK + 32)),
                                   pair_bcast(xd[j][b], xd[j][b + 1]));
            OWL_UNROLL for (int i = 0; i < NR; ++i) {
                prefetch_next(linear ? w[0] + (b * NR + 2 * i) * bb : w[i] + b * bb, NR * a.row_bytes);
                __m256i wl, wh;
                W::two(w[i], b, wl, wh);
                const __m256 dw = pair_bcast(a.f16[W::d(w[i], b)], a.f16[W::d(w[i], b + 1)]);
                __m256 mw;
                if constexpr (W::kKind == Q32Kind::Min) mw = pair_bcast(a.f16[W::m(w[i], b)], a.f16[W::m(w[i], b + 1)]);
                OWL_UNROLL for (int j = 0; j < NT; ++j) {
                    acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q32_dot<W>(wl, wh, x[j])), _mm256_mul_ps(dw, x[j].dx), acc[i][j]);
                    if constexpr (W::kKind == Q32Kind::Min) acc[i][j] = _mm256_fmadd_ps(x[j].sdx, mw, acc[i][j]);
                }
            }
        }
        if (b < b1) {  // a lone last block, element order
            Q32X x[NT];
            OWL_UNROLL for (int j = 0; j < NT; ++j)
                x[j] = q32_prep<W>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[j] + b * QK)), _mm256_setzero_si256(),
                                   _mm256_set1_ps(xd[j][b]));
            OWL_UNROLL for (int i = 0; i < NR; ++i) {
                const __m256i wl = W::one(w[i], b);
                const __m256 dw = _mm256_set1_ps(a.f16[W::d(w[i], b)]);
                OWL_UNROLL for (int j = 0; j < NT; ++j) {
                    acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q32_dot<W>(wl, _mm256_setzero_si256(), x[j])),
                                                _mm256_mul_ps(dw, x[j].dx), acc[i][j]);
                    if constexpr (W::kKind == Q32Kind::Min)
                        acc[i][j] = _mm256_fmadd_ps(x[j].sdx, _mm256_set1_ps(a.f16[W::m(w[i], b)]), acc[i][j]);
                }
            }
        }
        OWL_UNROLL for (int i = 0; i < NR; ++i)
            OWL_UNROLL for (int j = 0; j < NT; ++j) put(a, r + i, t + j, hsum(acc[i][j]), first);
    }
};

}  // namespace
}  // namespace owl::ops::isa
