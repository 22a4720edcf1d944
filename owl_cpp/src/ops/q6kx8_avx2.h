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
                if (walk) walk_block<BlockQ6_Kx8>(gb.next + ((b - s0) * NG_ + gi) * int64_t(sizeof(BlockQ6_Kx8)));
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
