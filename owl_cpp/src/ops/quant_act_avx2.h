// 256-bit helpers shared by the AVX2 and AVX-512 kernel files (both are compiled with AVX2 + FMA + F16C):
// horizontal sum, exact roundf, and the activation quantizer. Internal linkage only; see isa.h.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "isa.h"

namespace owl::ops::isa {
namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// roundf (half away from zero) of each lane, exactly: truncate, then step away from zero when |frac| >= 0.5.
inline __m256i round_away(__m256 p) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(p, t));
    const __m256 step = _mm256_or_ps(_mm256_and_ps(p, sign), _mm256_set1_ps(1.0f));
    const __m256 up = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), step);
    return _mm256_cvttps_epi32(_mm256_add_ps(t, up));
}

// One token: d = amax / 127 per block of 32, q = roundf(x / d) (bit-identical q to quantize_row_q8_0).
// kPairs: store each pair of blocks (b, b+1), b even, as [b 0..15 | b+1 0..15 | b 16..31 | b+1 16..31], the order
// in which the AVX2 Q4_0 kernel unpacks two blocks' nibbles; an odd last block stays in natural order.
template <bool kPairs>
void quantize_q8_avx2_impl(const float* x, int64_t K, int8_t* qs, float* d) {
    const int64_t nb = K / QK;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + b * QK;
        const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float db = amax / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        const __m256 idv = _mm256_set1_ps(id);
        __m256i i0 = round_away(_mm256_mul_ps(v0, idv)), i1 = round_away(_mm256_mul_ps(v1, idv));
        __m256i i2 = round_away(_mm256_mul_ps(v2, idv)), i3 = round_away(_mm256_mul_ps(v3, idv));
        i0 = _mm256_packs_epi32(i0, i1);
        i2 = _mm256_packs_epi32(i2, i3);
        i0 = _mm256_packs_epi16(i0, i2);
        i0 = _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        if (kPairs && (b | 1) < nb) {
            int8_t* base = qs + (b & ~int64_t(1)) * QK + (b & 1) * 16;
            _mm_storeu_si128(reinterpret_cast<__m128i*>(base), _mm256_castsi256_si128(i0));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(base + 32), _mm256_extracti128_si256(i0, 1));
        } else {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * QK), i0);
        }
    }
}

[[maybe_unused]] void quantize_q8_avx2(const float* x, int64_t K, int8_t* qs, float* d) { quantize_q8_avx2_impl<false>(x, K, qs, d); }
[[maybe_unused]] void quantize_q8_pairs_avx2(const float* x, int64_t K, int8_t* qs, float* d) { quantize_q8_avx2_impl<true>(x, K, qs, d); }

}  // namespace
}  // namespace owl::ops::isa
