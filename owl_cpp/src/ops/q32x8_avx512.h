// The x8 layouts (dtype.h) with 512-bit registers for prompts: two 8-row groups side by side, rows of group g in
// lanes 0-7 and of g + 1 in lanes 8-15; included by matmul_avx512.inc after q32x8_avx2.h, whose decoders' rules and
// arithmetic it repeats lane for lane (so a (row, token) result is bit-identical to Q32x8Tiles', and the single-token
// tiles and a last odd group stay there). Each broadcast of 4 activation bytes now feeds 16 rows.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm_driver.h"
#include "isa.h"
#include "q32x8_avx2.h"

namespace owl::ops::isa {
namespace {

inline __m512i q32x8_pair(const uint8_t* a, const uint8_t* b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}
inline __m512 q32x8_halves(const uint16_t* a, const uint16_t* b) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a))),
                                                   _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), 1));
}
template <int k>
inline __m512i q32x8_to_bit4_512(__m512i v) {
    if constexpr (k < 4) return _mm512_slli_epi32(v, 4 - k);
    else if constexpr (k > 4) return _mm512_srli_epi32(v, k - 4);
    else return v;
}

// quarter<p>(b0, b1, lo, hi): D::quarter of two groups' blocks, b0 in the low half.
template <class D>
struct Q32x8Wide;
template <class B, bool kFive, bool kMinimum, int kOff>
struct Q32x8Wide<Q32x8Linear<B, kFive, kMinimum, kOff>> {
    template <int p>
    static inline void quarter(const B& b0, const B& b1, __m512i& lo, __m512i& hi) {
        const __m512i m4 = _mm512_set1_epi8(0x0f);
        const __m512i c = q32x8_pair(b0.qs + 32 * p, b1.qs + 32 * p);
        lo = _mm512_and_si512(c, m4);
        hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), m4);
        if constexpr (kFive) {
            const __m512i h = q32x8_pair(reinterpret_cast<const uint8_t*>(b0.qh), reinterpret_cast<const uint8_t*>(b1.qh));
            const __m512i b4 = _mm512_set1_epi8(0x10);
            lo = _mm512_or_si512(lo, _mm512_and_si512(q32x8_to_bit4_512<2 * p>(h), b4));
            hi = _mm512_or_si512(hi, _mm512_and_si512(q32x8_to_bit4_512<2 * p + 1>(h), b4));
        }
    }
};
template <>
struct Q32x8Wide<IQ4x8> {
    template <int p>
    static inline void quarter(const BlockIQ4_NLx8& b0, const BlockIQ4_NLx8& b1, __m512i& lo, __m512i& hi) {
        const __m512i t = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues))),
                                           _mm512_set1_epi8(char(0x80)));  // level + 128 as u8
        const __m512i m4 = _mm512_set1_epi8(0x0f);
        const __m512i c = q32x8_pair(b0.qs + 32 * p, b1.qs + 32 * p);
        lo = _mm512_shuffle_epi8(t, _mm512_and_si512(c, m4));
        hi = _mm512_shuffle_epi8(t, _mm512_and_si512(_mm512_srli_epi16(c, 4), m4));
    }
};

// Groups g, g + 1 x tokens [t, t + NT) over blocks [b0, b1) (vpdpbusd only: OWL_VNNI).
template <class D, int TTT>
struct Q32x8Tiles512 {
    static constexpr int TT = TTT;
    using Block = typename D::Block;

    template <int NT>
    static void run(const GemmArgs& a, int64_t g, int64_t t, int64_t b0, int64_t b1, bool first) {
        const Block* w0 = reinterpret_cast<const Block*>(a.w + g * kQ32x8Rows * a.row_bytes);
        const Block* w1 = reinterpret_cast<const Block*>(a.w + (g + 1) * kQ32x8Rows * a.row_bytes);
        const Q8Tokens<NT> tok(a, t);
        __m512 acc[NT];
        for (int j = 0; j < NT; ++j) acc[j] = _mm512_setzero_ps();
        for (int64_t b = b0; b < b1; ++b) {
            __m512i s[NT];
            for (int j = 0; j < NT; ++j) s[j] = D::kOffset ? _mm512_set1_epi32(-D::kOffset * tok.s[j][b]) : _mm512_setzero_si512();
            auto quarter = [&](auto pc) {
                constexpr int p = decltype(pc)::value;
                __m512i lo, hi;
                Q32x8Wide<D>::template quarter<p>(w0[b], w1[b], lo, hi);
                OWL_UNROLL for (int j = 0; j < NT; ++j) {
                    const int8_t* x = tok.q[j] + b * QK + 4 * p;
                    int32_t v0, v1;
                    std::memcpy(&v0, x, 4);
                    std::memcpy(&v1, x + 16, 4);
                    s[j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(s[j], lo, _mm512_set1_epi32(v0)), hi, _mm512_set1_epi32(v1));
                }
            };
            quarter(Count<0>{});
            quarter(Count<1>{});
            quarter(Count<2>{});
            quarter(Count<3>{});
            const __m512 dw = q32x8_halves(w0[b].d, w1[b].d);
            __m512 mw = _mm512_setzero_ps();
            if constexpr (D::kMin) mw = q32x8_halves(w0[b].m, w1[b].m);
            for (int j = 0; j < NT; ++j) {
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[j]), _mm512_mul_ps(dw, _mm512_set1_ps(tok.d[j][b])), acc[j]);
                if constexpr (D::kMin) acc[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(float(tok.s[j][b]) * tok.d[j][b]), acc[j]);
            }
        }
        for (int j = 0; j < NT; ++j) {
            alignas(64) float out[2 * kQ32x8Rows];
            _mm512_store_ps(out, acc[j]);
            put_group(a, g, t + j, out, first);
            put_group(a, g + 1, t + j, out + kQ32x8Rows, first);
        }
    }
};

// drive_q4x8's loop nest with Wide (Q32x8Tiles512) for pairs of groups of a prompt and Narrow (Q32x8Tiles) for
// single tokens and a last odd group.
template <class Wide, class Narrow>
void drive_q32x8_wide(const GemmArgs& a, int64_t r0, int64_t r1) {
    if (a.T == 1) return drive_q4x8<Narrow>(a, r0, r1);
    const int64_t g0 = r0 / kQ32x8Rows, g1 = (r1 + kQ32x8Rows - 1) / kQ32x8Rows;
    for_each_block(a, [&](int64_t t0, int64_t t1, int64_t k0, int64_t k1) {
        const int64_t b0 = k0 / QK, b1 = k1 / QK;
        const bool first = k0 == 0;
        int64_t g = g0;
        for (; g + 2 <= g1; g += 2) {
            int64_t t = t0;
            for (; t + Wide::TT <= t1; t += Wide::TT) Wide::template run<Wide::TT>(a, g, t, b0, b1, first);
            if (t < t1) with_count<Wide::TT - 1>(t1 - t, [&](auto nt) { Wide::template run<decltype(nt)::value>(a, g, t, b0, b1, first); });
        }
        if (g < g1) {
            int64_t t = t0;
            for (; t + Narrow::TT <= t1; t += Narrow::TT) Narrow::template run<1, Narrow::TT>(a, g, t, b0, b1, first);
            if (t < t1)
                with_count<Narrow::TT - 1>(t1 - t, [&](auto nt) { Narrow::template run<1, decltype(nt)::value>(a, g, t, b0, b1, first); });
        }
    });
}

}  // namespace
}  // namespace owl::ops::isa
