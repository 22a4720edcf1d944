// Q4_1 / Q5_0 / Q5_1 / IQ4_NL in their x8 layouts (dtype.h) x int8 activations with 256-bit integer instructions;
// included by matmul_avx2.inc and matmul_avx512.inc after q4x8_avx2.h (whose bcast4 / q4x8_dp it shares; OWL_VNNI
// says whether vpdpbusd exists). See isa.h for the rules.
//
// The tile is Q4x8Tiles' (q4x8_avx2.h): one 8-row group x NT tokens, one row per 32-bit lane, each quarter p of a
// block's nibbles against broadcasts of the token's activation bytes 4p..4p+3 (low nibbles) and 16+4p.. (high),
// no horizontal sums. Per type, the bytes a lane multiplies and what is added to the integer dot:
//   Q4_1, Q5_1 (x = d q + m): levels 0..15 / 0..31; the minimum's term m * (d_x * sum x) is one more fma per block,
//     sum x being GemmArgs::xs (exact);
//   Q5_0 (x = d (q - 16)): levels 0..31, the dot corrected by -16 * sum x;
//   IQ4_NL (x = d * table[q]): one vpshufb per register maps nibbles to levels. vpdpbusd takes level + 128 (u8)
//     onto -128 * sum x; vpmaddubsw takes |level| x sign(x, level), each pair sum (<= 2 * 127 * 127) widened alone.
// The Q5 high bits come from the reordered qh words: shifting them by a constant per (quarter, half) puts the bit of
// every row's four elements at bit 4 of their bytes (q32x8_high_bit). vpmaddubsw bounds: sums of 16 products of
// levels <= 15 (Q4_1) fit int16, as for Q4_0; Q5 levels (<= 31) are widened every 8 products.
// The integer dot is exact and each row is one lane: a (row, token) result is the same sequence of operations for
// any tile shape, thread split or batch position.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm_driver.h"
#include "isa.h"
#include "q4x8_avx2.h"

namespace owl::ops::isa {
namespace {

// bit k of each byte -> bit 4 (other bits: anything)
template <int k>
inline __m256i q32x8_to_bit4(__m256i v) {
    if constexpr (k < 4) return _mm256_slli_epi32(v, 4 - k);
    else if constexpr (k > 4) return _mm256_srli_epi32(v, k - 4);
    else return v;
}

// Decoders: quarter<p>(blk, lo, hi) gives the lanes' weight bytes for elements 4p..4p+3 (lo) and 16+4p.. (hi).
// kOffset: the integer dot gets -kOffset * sum x. kMin: the block has minima. kWiden: vpmaddubsw results summed in
// int16 before vpmaddwd (0: IQ4_NL's sign form, each widened alone).
template <class B, bool kFive, bool kMinimum, int kOff>
struct Q32x8Linear {
    using Block = B;
    static constexpr bool kMin = kMinimum, kSigned = false;
    static constexpr int kOffset = kOff, kWiden = kFive ? 4 : 8;
    template <int p>
    static inline void quarter(const Block& blk, __m256i& lo, __m256i& hi) {
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * p));
        lo = _mm256_and_si256(c, m4);
        hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);
        if constexpr (kFive) {
            const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh));
            const __m256i b4 = _mm256_set1_epi8(0x10);
            lo = _mm256_or_si256(lo, _mm256_and_si256(q32x8_to_bit4<2 * p>(h), b4));
            hi = _mm256_or_si256(hi, _mm256_and_si256(q32x8_to_bit4<2 * p + 1>(h), b4));
        }
    }
};
using Q40x8 = Q32x8Linear<BlockQ4_0x8, false, false, 8>;  // Q4_0's prompts on 512-bit tiles (q32x8_avx512.h)
using Q41x8 = Q32x8Linear<BlockQ4_1x8, false, true, 0>;
using Q50x8 = Q32x8Linear<BlockQ5_0x8, true, false, 16>;
using Q51x8 = Q32x8Linear<BlockQ5_1x8, true, true, 0>;

struct IQ4x8 {
    using Block = BlockIQ4_NLx8;
    static constexpr bool kMin = false, kSigned = OWL_VNNI == 0;
    static constexpr int kOffset = OWL_VNNI ? 128 : 0, kWiden = 0;
    template <int p>
    static inline void quarter(const Block& blk, __m256i& lo, __m256i& hi) {
        __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues)));
#if OWL_VNNI
        t = _mm256_xor_si256(t, _mm256_set1_epi8(char(0x80)));  // level + 128 as u8
#endif
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * p));
        lo = _mm256_shuffle_epi8(t, _mm256_and_si256(c, m4));
        hi = _mm256_shuffle_epi8(t, _mm256_and_si256(_mm256_srli_epi16(c, 4), m4));
    }
};

template <class D, int TTT>
struct Q32x8Tiles {
    static constexpr int NG = 4, TT = TTT;  // groups per single-token tile as Q4x8Tiles; tokens per one-group tile
    static constexpr int NG_LONG = NG;      // the same for groups longer than kWalkGroupBytes
    using Block = typename D::Block;

    // One quarter's products for NT tokens, added to s (int32) / s16 (int16, vpmaddubsw without VNNI).
    template <int p, int NT>
    static inline void quarter(const Block& blk, const int8_t* const* x, __m256i (&s)[NT], __m256i (&s16)[NT]) {
        __m256i lo, hi;
        D::template quarter<p>(blk, lo, hi);
#if OWL_VNNI
        (void)s16;
        OWL_UNROLL for (int j = 0; j < NT; ++j) s[j] = q4x8_dp(q4x8_dp(s[j], lo, bcast4(x[j] + 4 * p)), hi, bcast4(x[j] + 16 + 4 * p));
#else
        const __m256i ones = _mm256_set1_epi16(1);
        if constexpr (D::kSigned) {
            const __m256i alo = _mm256_sign_epi8(lo, lo), ahi = _mm256_sign_epi8(hi, hi);
            OWL_UNROLL for (int j = 0; j < NT; ++j) {
                const __m256i pl = _mm256_maddubs_epi16(alo, _mm256_sign_epi8(bcast4(x[j] + 4 * p), lo));
                const __m256i ph = _mm256_maddubs_epi16(ahi, _mm256_sign_epi8(bcast4(x[j] + 16 + 4 * p), hi));
                s[j] = _mm256_add_epi32(s[j], _mm256_add_epi32(_mm256_madd_epi16(pl, ones), _mm256_madd_epi16(ph, ones)));
            }
        } else {
            OWL_UNROLL for (int j = 0; j < NT; ++j) {
                s16[j] = _mm256_add_epi16(s16[j], _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(x[j] + 4 * p)),
                                                                   _mm256_maddubs_epi16(hi, bcast4(x[j] + 16 + 4 * p))));
                if constexpr ((p + 1) * 2 % D::kWiden == 0) {
                    s[j] = _mm256_add_epi32(s[j], _mm256_madd_epi16(s16[j], ones));
                    s16[j] = _mm256_setzero_si256();
                }
            }
        }
#endif
    }

    template <int NG_, int NT>
    static void run(const GemmArgs& a, int64_t g, int64_t t, int64_t b0, int64_t b1, bool first) {
        const GroupBlocks<Block, NG_> gb(a, g);
        const Q8Tokens<NT> tok(a, t);
        __m256 acc[NG_][NT];
        for (int gi = 0; gi < NG_; ++gi)
            for (int j = 0; j < NT; ++j) acc[gi][j] = _mm256_setzero_ps();
        // Walk the next tile's bytes front to back into L2, as Q4x8Tiles does. For these types (one token,
        // one thread, Zen 4) 896 and 1536 columns went from 13-15 to 17-21 GB/s with it.
        const bool walk = NT == 1;
        for (int64_t b = b0; b < b1; ++b) {
            const int8_t* x[NT];
            for (int j = 0; j < NT; ++j) x[j] = tok.q[j] + b * QK;
            for (int gi = 0; gi < NG_; ++gi) {
                const Block& blk = gb.w[gi][b];
                if (walk) {
                    walk_block<Block>(gb.next + ((b - b0) * NG_ + gi) * int64_t(sizeof(Block)));
                }
                __m256i s[NT], s16[NT];
                for (int j = 0; j < NT; ++j) {
                    s[j] = OWL_VNNI && D::kOffset ? _mm256_set1_epi32(-D::kOffset * tok.s[j][b]) : _mm256_setzero_si256();
                    s16[j] = _mm256_setzero_si256();
                }
                quarter<0, NT>(blk, x, s, s16);
                quarter<1, NT>(blk, x, s, s16);
                quarter<2, NT>(blk, x, s, s16);
                quarter<3, NT>(blk, x, s, s16);
                const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.d)));
                __m256 mw = _mm256_setzero_ps();
                if constexpr (D::kMin) mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.m)));
                for (int j = 0; j < NT; ++j) {
                    __m256i dot = s[j];
                    if constexpr (!OWL_VNNI && D::kOffset != 0) dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(D::kOffset * tok.s[j][b]));
                    acc[gi][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(tok.d[j][b])), acc[gi][j]);
                    if constexpr (D::kMin) acc[gi][j] = _mm256_fmadd_ps(mw, _mm256_set1_ps(float(tok.s[j][b]) * tok.d[j][b]), acc[gi][j]);
                }
            }
        }
        put_groups<NG_, NT>(a, g, t, acc, first);
    }
};

}  // namespace
}  // namespace owl::ops::isa
