// BlockQ6_Kx8 weights (dtype.h) x Q8_K activations with 256-bit integer instructions; included by matmul_avx2.inc
// and matmul_avx512.inc after q4kx8_avx2.h (kx8_bcast4, walk_block, q4x8_dp; OWL_VNNI and OWL_UNROLL from the
// including file). See isa.h for the rules.
//
// The tile is Q4Kx8Tiles' shape (one 8-row group x NT tokens, or NG groups x one token; one row per 32-bit lane).
// Per super-block, sub-block c of 32 elements and quad q of 4 elements, one 32-byte vector of low nibbles and one
// of top bits give the unsigned quants u (0..63) of [4 elements x 8 rows]. Per scale group of 16 elements
// (sub-block c, quads 4h..4h+3: scale 2c + h) against broadcasts of the token's 4 activation bytes:
//   vpdpbusd:   u (u8) x x (s8) straight into int32, then isum += dot * sc by vpmulld;
//   vpmaddubsw: pair sums <= 2 * 63 * 127 = 16002, so only two quads add in int16 (32004) before vpmaddwd
//               against (sc, sc) pairs (four would wrap).
// The offset (u - 32) is 32 * sum over groups of sc * (sum of the token's 16 activations): one vpmaddwd per pair of
// groups of (32 sc[2c], 32 sc[2c+1]) against the Q8_K bsums pair. Then acc += (isum - offset) * d * dx in fp32, as
// KQuantTiles' epilogue does per row; the integers are the file-layout kernels' own.
//
// A single token on AVX-512 VNNI (decode) takes one_token(): the tile is bound by instructions issued (Zen 4: about
// 4.5 a cycle, two of them loads), not by any one unit, so it loads each qh vector once for its four sub-blocks
// and each ql vector once for its two (GCC re-loads them for every use unless kx8_in_reg pins them), broadcasts
// the activations inside vpdpbusd ({1to8}), sums the offsets with vpdpwssd, and takes h = 0 scales by vpmaddwd
// against (1, 0). Odd sub-blocks use 4 u (high nibble shifted to bits 2..5 under the top bits at 6..7: one shift
// fewer each), their sums kept apart and divided by 4 at the end (exact). Same integers, summed in another order:
// bit-identical results. One thread, in cache (AVX-512 VNNI, Zen 4, harness alternating old and new): 512x1536
// and 512x4096 1.30-1.35x (each step: loads once 1.05x, pinned 1.12x, {1to8} 1.16x, 4 u 1.32x).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm_driver.h"
#include "isa.h"
#include "q4kx8_avx2.h"

namespace owl::ops::isa {
namespace {

// Quad q of sub-block c: the rows' quants u = low nibble | top 2 bits << 4 (c constant once the loops unroll;
// 16-bit shifts, whose bits from the neighbouring byte the masks drop).
__attribute__((always_inline)) inline __m256i q6x8_quants(const BlockQ6_Kx8& blk, int c, int q) {
    const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 256 * (c / 2) + 32 * q));
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 256 * (c / 4) + 32 * q));
    const int s = 4 - 2 * (c % 4);  // bits 2 (c % 4) .. + 1 to bits 4..5
    const __m256i hi = _mm256_and_si256(s >= 0 ? _mm256_slli_epi16(h, s) : _mm256_srli_epi16(h, -s), _mm256_set1_epi8(0x30));
    const __m256i lo = _mm256_and_si256(c % 2 ? _mm256_srli_epi16(l, 4) : l, _mm256_set1_epi8(0x0f));
    return _mm256_or_si256(lo, hi);
}

// The rows' int16 pairs (sc[2p], sc[2p+1]), one per 32-bit lane.
__attribute__((always_inline)) inline __m256i q6x8_scale_pairs(const BlockQ6_Kx8& blk, int p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.sc + 16 * p)));
}

template <int TTT>
struct Q6Kx8Tiles {
    static constexpr int NG = 4, TT = TTT;
    static constexpr int NG_LONG = 1;  // as Q4Kx8Tiles

#if OWL_KX8_ONE_TOKEN
    // One token: each vector of top bits serves four sub-blocks and each of low nibbles two, loaded once.
    __attribute__((always_inline)) static inline __m256 one_token(const BlockQ6_Kx8& blk, const BlockQ8_K& x, __m256 acc) {
        __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), one = _mm256_set1_epi32(1);
        kx8_in_reg(m4);
        kx8_in_reg(m30);
        kx8_in_reg(one);
        __m256i m3c = _mm256_set1_epi8(0x3c), mc0 = _mm256_set1_epi8(int8_t(0xc0));
        kx8_in_reg(m3c);
        kx8_in_reg(mc0);
        // isum4: the odd sub-blocks' terms, 4 times over (|isum4| < 2^28; a multiple of 4, so >> 2 is exact)
        __m256i isum = _mm256_setzero_si256(), isum4 = _mm256_setzero_si256(), off = _mm256_setzero_si256();
        OWL_UNROLL for (int k = 0; k < 2; ++k) {  // sub-blocks 4k..4k+3
            __m256i sp[4];
            OWL_UNROLL for (int j = 0; j < 4; ++j) {
                sp[j] = q6x8_scale_pairs(blk, 4 * k + j);
                off = kx8_dpw2(off, sp[j], x.bsums + 2 * (4 * k + j));
            }
            OWL_UNROLL for (int h = 0; h < 2; ++h) {
                __m256i s[4];
                OWL_UNROLL for (int j = 0; j < 4; ++j) s[j] = _mm256_setzero_si256();
                OWL_UNROLL for (int q = 4 * h; q < 4 * h + 4; ++q) {
                    __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 256 * k + 32 * q));
                    __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 256 * (2 * k) + 32 * q));
                    __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 256 * (2 * k + 1) + 32 * q));
                    kx8_in_reg(hb);
                    kx8_in_reg(l0);
                    kx8_in_reg(l1);
                    // Even j: u = low nibble | top bits at 4..5. Odd j: 4 u (<= 252) = high nibble at 2..5 | top
                    // bits at 6..7, where j = 3's already are and j = 1's come from j = 0's shift.
                    const __m256i h4 = _mm256_slli_epi16(hb, 4);
                    const __m256i u0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(h4, m30));
                    const __m256i u1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 2), m3c), _mm256_and_si256(h4, mc0));
                    const __m256i u2 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(hb, m30));
                    const __m256i u3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 2), m3c), _mm256_and_si256(hb, mc0));
                    s[0] = kx8_dp4(s[0], u0, x.qs + 32 * (4 * k) + 4 * q);
                    s[1] = kx8_dp4(s[1], u1, x.qs + 32 * (4 * k + 1) + 4 * q);
                    s[2] = kx8_dp4(s[2], u2, x.qs + 32 * (4 * k + 2) + 4 * q);
                    s[3] = kx8_dp4(s[3], u3, x.qs + 32 * (4 * k + 3) + 4 * q);
                }
                OWL_UNROLL for (int j = 0; j < 4; ++j) {
                    const __m256i sc = h ? _mm256_srai_epi32(sp[j], 16) : _mm256_madd_epi16(sp[j], one);
                    __m256i& d = j % 2 ? isum4 : isum;
                    d = _mm256_add_epi32(d, _mm256_mullo_epi32(s[j], sc));
                }
                // summed here, not reassociated to the end (the scales' and sums' registers spill)
                kx8_in_reg(isum);
                kx8_in_reg(isum4);
            }
        }
        isum = _mm256_sub_epi32(_mm256_add_epi32(isum, _mm256_srai_epi32(isum4, 2)), _mm256_slli_epi32(off, 5));
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.d)));
        return _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(isum), dw), _mm256_broadcast_ss(&x.d), acc);
    }
#endif

    template <int NG_, int NT>
    static void run(const GemmArgs& a, int64_t g, int64_t t, int64_t b0, int64_t b1, bool first) {
        const int64_t nb = a.K / QK_K;
        const GroupBlocks<BlockQ6_Kx8, NG_> gb(a, g);
        const BlockQ8_K* xk[NT];
        for (int j = 0; j < NT; ++j) xk[j] = a.xk + (t + j) * nb;
        __m256 acc[NG_][NT];
        for (int gi = 0; gi < NG_; ++gi)
            for (int j = 0; j < NT; ++j) acc[gi][j] = _mm256_setzero_ps();
        const bool walk = NT == 1;
        const int64_t s0 = b0 * QK / QK_K, s1 = b1 * QK / QK_K;
        for (int64_t b = s0; b < s1; ++b) {
            for (int gi = 0; gi < NG_; ++gi) {
                const BlockQ6_Kx8& blk = gb.w[gi][b];
                if (walk) kx8_walk<BlockQ6_Kx8>(gb.next + ((b - s0) * NG_ + gi) * int64_t(sizeof(BlockQ6_Kx8)));
#if OWL_KX8_ONE_TOKEN
                if constexpr (NT == 1) {
                    acc[gi][0] = one_token(blk, xk[0][b], acc[gi][0]);
                    continue;
                }
#endif
                __m256i isum[NT];  // sum of sc * u * x, less the offset term as it goes (exact either way)
                OWL_UNROLL for (int j = 0; j < NT; ++j) isum[j] = _mm256_setzero_si256();
                OWL_UNROLL for (int c = 0; c < 8; ++c) {
                    const __m256i sp = q6x8_scale_pairs(blk, c);  // scales of groups 2c, 2c + 1
                    OWL_UNROLL for (int h = 0; h < 2; ++h) {
#if OWL_VNNI
                        __m256i s[NT];
                        OWL_UNROLL for (int j = 0; j < NT; ++j) s[j] = _mm256_setzero_si256();
                        OWL_UNROLL for (int q = 4 * h; q < 4 * h + 4; ++q) {
                            const __m256i u = q6x8_quants(blk, c, q);
                            OWL_UNROLL for (int j = 0; j < NT; ++j) s[j] = q4x8_dp(s[j], u, kx8_bcast4(xk[j][b].qs + 32 * c + 4 * q));
                        }
                        const __m256i sc = h ? _mm256_srai_epi32(sp, 16) : _mm256_srai_epi32(_mm256_slli_epi32(sp, 16), 16);
                        OWL_UNROLL for (int j = 0; j < NT; ++j) isum[j] = _mm256_add_epi32(isum[j], _mm256_mullo_epi32(s[j], sc));
#else
                        // (sc, sc) int16 pairs of group 2c + h
                        const __m256i sc2 = _mm256_shuffle_epi8(sp, _mm256_broadcastsi128_si256(h ? _mm_setr_epi8(2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15)
                                                                                                  : _mm_setr_epi8(0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13)));
                        OWL_UNROLL for (int q = 4 * h; q < 4 * h + 4; q += 2) {
                            const __m256i u0 = q6x8_quants(blk, c, q), u1 = q6x8_quants(blk, c, q + 1);
                            OWL_UNROLL for (int j = 0; j < NT; ++j) {
                                const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(u0, kx8_bcast4(xk[j][b].qs + 32 * c + 4 * q)),
                                                                   _mm256_maddubs_epi16(u1, kx8_bcast4(xk[j][b].qs + 32 * c + 4 * q + 4)));
                                isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(p, sc2));
                            }
                        }
#endif
                    }
                    const __m256i mp = _mm256_slli_epi16(sp, 5);  // 32 sc pairs (|32 sc| <= 4096)
                    OWL_UNROLL for (int j = 0; j < NT; ++j) {
                        int32_t bs;
                        std::memcpy(&bs, xk[j][b].bsums + 2 * c, 4);
                        isum[j] = _mm256_sub_epi32(isum[j], _mm256_madd_epi16(mp, _mm256_set1_epi32(bs)));
                    }
                }
                const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.d)));
                OWL_UNROLL for (int j = 0; j < NT; ++j) {
                    const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(isum[j]), dw);
                    acc[gi][j] = _mm256_fmadd_ps(v, _mm256_broadcast_ss(&xk[j][b].d), acc[gi][j]);
                }
            }
        }
        put_groups<NG_, NT>(a, g, t, acc, first);
    }
};

}  // namespace
}  // namespace owl::ops::isa
