// The attention kernel shared by every kernel file: one AttnArgs unit (a KV head's query rows for a run of
// tokens) with an online softmax over blocks of kAttnKeyBlock keys, flash-attention style, so no score row longer
// than one block ever exists. Written once with GCC/Clang vector extensions: each kernel file compiles its own
// copy with its own target flags (AVX2 + FMA, AVX-512, NEON, or baseline SSE2), see isa.h.
//
// Per unit, in the caller's scratch (layout in isa.h):
//   Q rows are copied once, pre-multiplied by scale * log2(e), so the softmax runs on exp2;
//   for each key block: K^T (head_dim x 16) is copied out of the cache (its rows in order into the V buffer, then
//   transposed in 8 x 8 register blocks; zero-padded to a multiple of 8 dimensions; V is copied too when head_dim
//   is not one or the cache is F16), S = Q K^T, each row is masked to the keys its token sees,
//   and m = max(m, max S), l = l * 2^(m_old - m) + sum 2^(S - m), O = O * 2^(m_old - m) + 2^(S - m) V;
//   finally out = O / l.
// An F16 cache is converted to fp32 as its blocks are copied (F16C vcvtph2ps, NEON fcvtl, or exact bit
// arithmetic in the generic build); the conversion is exact and everything after it is the F32 path's code, so an
// F16 cache gives bit for bit the result of an F32 cache holding the same values.
// A row's arithmetic never depends on which other rows share its unit or tile, and a block whose keys a row
// cannot see leaves that row untouched, so results do not depend on the thread count or the batch split.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "isa.h"
#include "vec_math.h"

#if defined(__F16C__) || defined(__AVX__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace owl::ops::isa {
namespace {

constexpr int kKB = kAttnKeyBlock;

// ---- fp16 <-> fp32 of 8 elements ----

typedef uint16_t v8h __attribute__((vector_size(16)));

// Exact: every fp16 value (subnormals, inf, NaN with its payload) is a float.
inline v8f load8_f16(const uint16_t* p) {
#if defined(__F16C__)
    return (v8f)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(__aarch64__)
    const uint16x8_t h = vld1q_u16(p);
    const float32x4_t lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
    const float32x4_t hi = vcvt_high_f32_f16(vreinterpretq_f16_u16(h));
    v8f r;
    std::memcpy(&r, &lo, 16);
    std::memcpy(reinterpret_cast<char*>(&r) + 16, &hi, 16);
    return r;
#else
    // Bit arithmetic (F. Giesen's half_to_float): exponent rebiased by 112; inf/NaN get the full float exponent;
    // zero / subnormal h = m * 2^-24 is built as the float 2^-14 * (1 + m / 1024) minus 2^-14 (exact), so no
    // float subnormal is ever an operand (flush-to-zero modes cannot change the result).
    // Selections are masks made by arithmetic shifts of differences (GCC turns 32-byte vector comparisons into
    // scalar code on SSE2), applied with and / or.
    v8h h;
    std::memcpy(&h, p, 16);
    const v8i x = __builtin_convertvector(h, v8i);
    const v8i em = (x & 0x7fff) << 13;  // exponent and mantissa in float position
    const v8i e = em & (0x7c00 << 13);
    const v8i is_infnan = ~((e - (0x7c00 << 13)) >> 31), is_small = (e - 1) >> 31;
    const v8i normal = em + ((127 - 15) << 23);
    const v8i infnan = em | (0xff << 23);
    const v8i small = (v8i)((v8f)(em + (113 << 23)) - splat(6.103515625e-05f));  // 2^-14
    const v8i r = (infnan & is_infnan) | (small & is_small) | (normal & ~(is_infnan | is_small));
    return (v8f)(r | ((x & 0x8000) << 16));
#endif
}

// Round-to-nearest-even, as numpy's float32 -> float16: overflow (|x| >= 65520) to inf, subnormal results
// rounded at 2^-24, NaN stays NaN (F16C and NEON keep the top payload bits and quiet it; the generic build gives
// the canonical 0x7e00 with the sign).
inline void store8_f16(uint16_t* p, v8f x) {
#if defined(__F16C__)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph((__m256)x, _MM_FROUND_TO_NEAREST_INT));
#elif defined(__aarch64__)
    float32x4_t lo, hi;
    std::memcpy(&lo, &x, 16);
    std::memcpy(&hi, reinterpret_cast<const char*>(&x) + 16, 16);
    vst1q_u16(p, vreinterpretq_u16_f16(vcvt_high_f16_f32(vcvt_f16_f32(lo), hi)));
#else
    // F. Giesen's float_to_half_fast3_rtne: normal results round by adding 0xfff + the kept mantissa's lowest bit
    // (a carry into the exponent gives the next binade, or inf past 65504); subnormal ones by a float addition of
    // 0.5, whose ulp is 2^-24 (the addition rounds to nearest even).
    // Selections are masks made by arithmetic shifts of differences (no overflow: the magnitude a < 2^31), applied
    // with and / or (GCC turns 32-byte vector comparisons into scalar code on SSE2).
    const v8i u = (v8i)x;
    const v8i sign = u & int32_t(0x80000000u);
    const v8i a = u ^ sign;
    const v8i big = ((143 << 23) - 1 - a) >> 31, tiny = (a - (113 << 23)) >> 31;  // a >= 65536 / a < 2^-14
    const v8i infnan = 0x7c00 | ((0x7f800000 - a) >> 31 & 0x200);                  // NaN: a quiet one
    const v8i sub = (v8i)((v8f)a + splat(0.5f)) - (126 << 23);
    // Unsigned: in the lanes `big` discards (inf, NaN) the sum passes 2^31, which signed arithmetic may not do.
    const v8u au = (v8u)a;
    const v8i norm = (v8i)((au + uint32_t(int32_t(15 - 127) * (1 << 23)) + 0xfffu + ((au >> 13) & 1u)) >> 13);
    const v8i r = (infnan & big) | (sub & tiny) | (norm & ~(big | tiny));
    uint16_t h[8];
    const v8i hv = r | ((sign >> 16) & 0x8000);
    for (int i = 0; i < 8; ++i) h[i] = uint16_t(hv[i]);
    std::memcpy(p, h, 16);
#endif
}

void store_f16_row(const float* src, uint16_t* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store8_f16(dst + i, load8(src + i));
    if (i < n) {
        float x[8] = {};
        uint16_t h[8];
        std::memcpy(x, src + i, sizeof(float) * size_t(n - i));
        store8_f16(h, load8(x));
        std::memcpy(dst + i, h, sizeof(uint16_t) * size_t(n - i));
    }
}

// ---- K/V cache elements (float or fp16 bits) as floats ----

inline v8f load8_kv(const float* p) { return load8(p); }
inline v8f load8_kv(const uint16_t* p) { return load8_f16(p); }

// Elements [0, n) of p, n < 8, zero-padded to 8.
template <class E>
inline v8f load_part_kv(const E* p, int64_t n) {
    E tmp[8] = {};
    std::memcpy(tmp, p, sizeof(E) * size_t(n));
    return load8_kv(tmp);
}

// c[d][j] = r[j][d] for an 8 x 8 block.
inline void transpose8(const v8f r[8], v8f c[8]) {
#if defined(__AVX__)
    const __m256 t0 = _mm256_unpacklo_ps((__m256)r[0], (__m256)r[1]), t1 = _mm256_unpackhi_ps((__m256)r[0], (__m256)r[1]);
    const __m256 t2 = _mm256_unpacklo_ps((__m256)r[2], (__m256)r[3]), t3 = _mm256_unpackhi_ps((__m256)r[2], (__m256)r[3]);
    const __m256 t4 = _mm256_unpacklo_ps((__m256)r[4], (__m256)r[5]), t5 = _mm256_unpackhi_ps((__m256)r[4], (__m256)r[5]);
    const __m256 t6 = _mm256_unpacklo_ps((__m256)r[6], (__m256)r[7]), t7 = _mm256_unpackhi_ps((__m256)r[6], (__m256)r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
    c[0] = (v8f)_mm256_permute2f128_ps(u0, u4, 0x20);
    c[1] = (v8f)_mm256_permute2f128_ps(u1, u5, 0x20);
    c[2] = (v8f)_mm256_permute2f128_ps(u2, u6, 0x20);
    c[3] = (v8f)_mm256_permute2f128_ps(u3, u7, 0x20);
    c[4] = (v8f)_mm256_permute2f128_ps(u0, u4, 0x31);
    c[5] = (v8f)_mm256_permute2f128_ps(u1, u5, 0x31);
    c[6] = (v8f)_mm256_permute2f128_ps(u2, u6, 0x31);
    c[7] = (v8f)_mm256_permute2f128_ps(u3, u7, 0x31);
#elif defined(__aarch64__)
    // Four 4 x 4 transposes: column d's low half (rows 0-3) comes from the rows' low (d < 4) or high halves.
    float32x4_t in[8][2], out[8][2];
    for (int j = 0; j < 8; ++j) std::memcpy(in[j], &r[j], 32);
    for (int rh = 0; rh < 2; ++rh)      // rows 0-3 or 4-7: the low or high half of the columns
        for (int dh = 0; dh < 2; ++dh) {  // dimensions 0-3 or 4-7: columns 0-3 or 4-7
            const float32x4x2_t t0 = vtrnq_f32(in[4 * rh][dh], in[4 * rh + 1][dh]);
            const float32x4x2_t t1 = vtrnq_f32(in[4 * rh + 2][dh], in[4 * rh + 3][dh]);
            out[4 * dh][rh] = vcombine_f32(vget_low_f32(t0.val[0]), vget_low_f32(t1.val[0]));
            out[4 * dh + 1][rh] = vcombine_f32(vget_low_f32(t0.val[1]), vget_low_f32(t1.val[1]));
            out[4 * dh + 2][rh] = vcombine_f32(vget_high_f32(t0.val[0]), vget_high_f32(t1.val[0]));
            out[4 * dh + 3][rh] = vcombine_f32(vget_high_f32(t0.val[1]), vget_high_f32(t1.val[1]));
        }
    for (int d = 0; d < 8; ++d) std::memcpy(&c[d], out[d], 32);
#else
    for (int d = 0; d < 8; ++d)
        for (int j = 0; j < 8; ++j) c[d][j] = r[j][d];
#endif
}

// s[r][0..16) = sum_d q[r][d] * kt[d][0..16) for R rows; dims hd8 (a multiple of 8).
template <int R>
inline void scores_tile(const float* q, int64_t hd8, const float* kt, float* s) {
    v8f acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = v8f{};
    for (int64_t d = 0; d < hd8; ++d) {
        const v8f k0 = load8(kt + d * kKB), k1 = load8(kt + d * kKB + 8);
        for (int r = 0; r < R; ++r) {
            const v8f b = splat(q[r * hd8 + d]);
            acc[r][0] += b * k0;
            acc[r][1] += b * k1;
        }
    }
    for (int r = 0; r < R; ++r) {
        store8(s + r * kKB, acc[r][0]);
        store8(s + r * kKB + 8, acc[r][1]);
    }
}

// o[r][:] += sum_j p[r][j] * v[j][:] over nk keys (v rows vstride floats apart), for R rows, 8 dimensions at a time.
template <int R>
inline void pv_tile(const float* p, const float* v, int64_t vstride, int nk, float* o, int64_t hd8) {
    for (int64_t d = 0; d < hd8; d += 8) {
        v8f acc[R];
        for (int r = 0; r < R; ++r) acc[r] = load8(o + r * hd8 + d);
        for (int j = 0; j < nk; ++j) {
            const v8f vj = load8(v + j * vstride + d);
            for (int r = 0; r < R; ++r) acc[r] += splat(p[r * kKB + j]) * vj;
        }
        for (int r = 0; r < R; ++r) store8(o + r * hd8 + d, acc[r]);
    }
}

// V rows j < nk of one block as floats, zero-padded to hd8: vs[j][d].
template <class E>
inline void copy_values(const E* v, int64_t stride, int nk, int64_t hd, int64_t hd8, float* vs) {
    for (int j = 0; j < nk; ++j) {
        const E* src = v + j * stride;
        int64_t d = 0;
        for (; d + 8 <= hd; d += 8) store8(vs + j * hd8 + d, load8_kv(src + d));
        if (d < hd8) store8(vs + j * hd8 + d, load_part_kv(src + d, hd - d));
    }
}

// K^T of one block: kt[d][j] = k[j][d] (as float), zero where j >= nk or d >= hd. The rows are first copied
// (converted) in order into `rows` [16][hd8], one sequential stream out of the cache as the hardware prefetchers
// like it, then transposed in 8 x 8 blocks in registers (zero rows past nk).
template <class E>
inline void transpose_keys(const E* k, int64_t stride, int nk, int64_t hd, int64_t hd8, float* rows, float* kt) {
    copy_values(k, stride, nk, hd, hd8, rows);
    for (int j0 = 0; j0 < kKB; j0 += 8) {
        const int nj = nk - j0 < 8 ? (nk - j0 > 0 ? nk - j0 : 0) : 8;
        for (int64_t d0 = 0; d0 < hd8; d0 += 8) {
            v8f r[8], c[8];
            for (int j = 0; j < 8; ++j) r[j] = j < nj ? load8(rows + (j0 + j) * hd8 + d0) : v8f{};
            transpose8(r, c);
            for (int d = 0; d < 8; ++d) store8(kt + (d0 + d) * kKB + j0, c[d]);
        }
    }
}

// fn(integral_constant<R'>, r) over rows [0, rows): tiles of R, then one of R / 2 if it fits, then single rows.
template <int R, class Fn>
inline void for_row_tiles(int64_t rows, Fn&& fn) {
    int64_t r = 0;
    for (; r + R <= rows; r += R) fn(std::integral_constant<int, R>{}, r);
    if constexpr (R > 1) {
        if (r + R / 2 <= rows) {
            fn(std::integral_constant<int, R / 2>{}, r);
            r += R / 2;
        }
    }
    for (; r < rows; ++r) fn(std::integral_constant<int, 1>{}, r);
}

void attend_unit(const AttnArgs& a) {
    const int64_t hd = a.head_dim, hd8 = (hd + 7) / 8 * 8;
    const int64_t nh = a.h1 - a.h0, M = (a.t1 - a.t0) * nh;
    float* qs = a.work;
    float* o = qs + M * hd8;
    float* kt = o + M * hd8;
    float* vs = kt + hd8 * kKB;
    float* s = vs + kKB * hd8;
    float* m = s + M * kKB;
    float* l = m + M;

    const float qscale = a.scale * 1.4426950408889634f;  // log2(e): softmax via exp2
    for (int64_t r = 0; r < M; ++r) {
        const float* src = a.q + ((a.t0 + r / nh) * a.n_head + a.h0 + r % nh) * hd;
        for (int64_t d = 0; d < hd8; ++d) qs[r * hd8 + d] = d < hd ? src[d] * qscale : 0.0f;
        for (int64_t d = 0; d < hd8; ++d) o[r * hd8 + d] = 0.0f;
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    const v8f lane_lo = {0, 1, 2, 3, 4, 5, 6, 7}, lane_hi = lane_lo + 8.0f;

    for (int sp = 0; sp < a.n_spans; ++sp) {
        const AttnSpan& span = a.spans[sp];
        auto visible = [&](int64_t t) { return span.visible ? span.visible[t] : span.causal_base + t + 1; };
        int64_t n_keys = 0;
        for (int64_t t = a.t0; t < a.t1; ++t) n_keys = visible(t) > n_keys ? visible(t) : n_keys;

        for (int64_t j0 = 0; j0 < n_keys; j0 += kKB) {
            const int nk = int(n_keys - j0 < kKB ? n_keys - j0 : kKB);
            // Float V rows are read in place when whole vectors; an odd head_dim or fp16 copies them as floats.
            const float* vb = vs;
            int64_t vstride = hd8;
            if (span.f16) {
                transpose_keys(static_cast<const uint16_t*>(span.k) + j0 * span.stride, span.stride, nk, hd, hd8, vs, kt);
                copy_values(static_cast<const uint16_t*>(span.v) + j0 * span.stride, span.stride, nk, hd, hd8, vs);
            } else {
                transpose_keys(static_cast<const float*>(span.k) + j0 * span.stride, span.stride, nk, hd, hd8, vs, kt);
                if (hd < hd8) {
                    copy_values(static_cast<const float*>(span.v) + j0 * span.stride, span.stride, nk, hd, hd8, vs);
                } else {
                    vb = static_cast<const float*>(span.v) + j0 * span.stride;
                    vstride = span.stride;
                }
            }
            for_row_tiles<4>(M, [&](auto R, int64_t r) { scores_tile<decltype(R)::value>(qs + r * hd8, hd8, kt, s + r * kKB); });

            for (int64_t r = 0; r < M; ++r) {
                float* sr = s + r * kKB;
                const int64_t seen = visible(a.t0 + r / nh) - j0;  // keys of this block row r may see
                if (seen <= 0) {  // none: p = 0 adds exactly nothing to o
                    std::memset(sr, 0, sizeof(float) * kKB);
                    continue;
                }
                const v8f limit = splat(float(seen < kKB ? seen : kKB));
                const v8f s0 = lane_lo < limit ? load8(sr) : splat(-INFINITY);
                const v8f s1 = lane_hi < limit ? load8(sr + 8) : splat(-INFINITY);
                const float mx = hmax8(vmax(s0, s1));
                if (mx > m[r]) {
                    const float alpha = exp2_nonpos(splat(m[r] - mx))[0];
                    for (int64_t d = 0; d < hd8; d += 8) store8(o + r * hd8 + d, load8(o + r * hd8 + d) * alpha);
                    l[r] *= alpha;
                    m[r] = mx;
                }
                const v8f p0 = exp2_nonpos(s0 - m[r]), p1 = exp2_nonpos(s1 - m[r]);
                l[r] += hsum8(p0 + p1);
                store8(sr, p0);
                store8(sr + 8, p1);
            }
            for_row_tiles<4>(M, [&](auto R, int64_t r) { pv_tile<decltype(R)::value>(s + r * kKB, vb, vstride, nk, o + r * hd8, hd8); });
        }
    }

    for (int64_t r = 0; r < M; ++r) {
        float* dst = a.out + ((a.t0 + r / nh) * a.n_head + a.h0 + r % nh) * hd;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;  // a row that saw no key gets zeros
        for (int64_t d = 0; d < hd; ++d) dst[d] = o[r * hd8 + d] * inv;
    }
}

}  // namespace
}  // namespace owl::ops::isa
