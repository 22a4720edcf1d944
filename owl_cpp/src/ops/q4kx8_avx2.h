// BlockQ4_Kx8 / BlockQ5_Kx8 weights (dtype.h) x Q8_K activations with 256-bit integer instructions; included by
// matmul_avx2.inc and matmul_avx512.inc after q4x8_avx2.h (whose bcast4 / q4x8_dp / kWalkGroupBytes it shares;
// OWL_VNNI says whether vpdpbusd exists, OWL_UNROLL comes from the including file). See isa.h for the rules.
//
// The tile is Q4x8Tiles' shape: one 8-row group x NT tokens (or NG groups x one token), one row per 32-bit lane,
// no horizontal sums. Per super-block and sub-block c of 32 elements, the eight 32-byte vectors that hold the
// rows' nibbles of c (low nibbles for even c, high for odd; Q5_K ORs in the fifth bit from its qh vector) against
// broadcasts of the token's 4 matching activation bytes give each row's exact dot of sub-block c:
//   vpdpbusd:   quant (u8) x x (s8) straight into int32; times the rows' scales of c by vpmulld;
//   vpmaddubsw: pair sums <= 2 * 15 * 127, eight of them <= 30480 in int16 (Q5_K: 2 * 31 * 127, so four at a
//               time, 31496); vpmaddwd against (sc, sc) pairs.
// isum = sum over c of sc[c] * dot[c] (exact, < 2^31), and the min term msum = sum over c of m[c] * (sum of the
// token's 32 activations of c) is one vpmaddwd per pair of sub-blocks against the Q8_K bsums added in pairs
// (vphaddw). Then acc += (isum * d - msum * dmin) * dx in fp32, as KQuantTiles' epilogue does per row. The
// integers are those of the file-layout kernels; only the fp32 rounding order differs (KQuantTiles splits each
// row's sum over 8 lanes). A (row, token) result is the same instruction sequence for any tile shape, thread
// split or batch position.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm_driver.h"
#include "isa.h"
#include "q4x8_avx2.h"

namespace owl::ops::isa {
namespace {

// Four activation bytes in every 32-bit lane, as one broadcast load (vpbroadcastd from memory; bcast4's set1 can
// become a move to a general register and a broadcast from it, port 5 work on AVX-512 targets).
inline __m256i kx8_bcast4(const int8_t* p) { return _mm256_broadcastd_epi32(_mm_loadu_si32(p)); }

// Sub-block c's fifth bits (value 16) for the 4 elements x 8 rows of nibble vector q (BlockQ5_Kx8::qh); c is a
// constant once the callers' loops unroll. 16-bit shifts: the 0x10 mask keeps only bits from the same byte.
__attribute__((always_inline)) inline __m256i kx8_fifth_bit(const BlockQ5_Kx8& blk, int c, int q) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * q));
    return _mm256_and_si256(c <= 4 ? _mm256_slli_epi16(h, 4 - c) : _mm256_srli_epi16(h, c - 4), _mm256_set1_epi8(0x10));
}

// The rows' scales of sub-block c as (sc, sc) int16 pairs, for vpmaddwd.
template <class Block>
__attribute__((always_inline)) inline __m256i kx8_scale_pairs(const Block& blk, int c) {
    const __m256i sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.sc + 8 * c)));
    return _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16));
}

// Q4_K (Block = BlockQ4_Kx8) and Q5_K (BlockQ5_Kx8): the same header, scales and nibbles.
template <class Block, int TTT>
struct KMinx8Tiles {
    static constexpr bool kQ5 = sizeof(Block) == sizeof(BlockQ5_Kx8);
    static constexpr int NG = 4, TT = TTT;  // groups per single-token tile; tokens per one-group tile
    // Groups longer than kWalkGroupBytes one at a time: one linear stream, as the file layout reads (two threads,
    // 7B and 1.5B shapes: Q4_K 31-32 -> 32-33 GB/s, Q6_K 27-31 -> 31-33; no gain measured for the 32-blocks).
    static constexpr int NG_LONG = 1;

    // Groups g..g+NG_-1 x tokens t..t+NT-1 over blocks of 32 [b0, b1) (drive_q4x8's units; whole super-blocks,
    // since column chunks are multiples of 256).
    template <int NG_, int NT>
    static void run(const GemmArgs& a, int64_t g, int64_t t, int64_t b0, int64_t b1, bool first) {
        const int64_t nb = a.K / QK_K;
        const GroupBlocks<Block, NG_> gb(a, g);
        const BlockQ8_K* xk[NT];
        for (int j = 0; j < NT; ++j) xk[j] = a.xk + (t + j) * nb;
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        __m256 acc[NG_][NT];
        for (int gi = 0; gi < NG_; ++gi)
            for (int j = 0; j < NT; ++j) acc[gi][j] = _mm256_setzero_ps();
        // Walk the next tile's bytes front to back into L2, as Q4x8Tiles does.
        const bool walk = NT == 1;
        const int64_t s0 = b0 * QK / QK_K, s1 = b1 * QK / QK_K;
        for (int64_t b = s0; b < s1; ++b) {
            // Per token: (sum of sub-block 2p, sum of 2p + 1) as int16 pairs in int32 p = 0..3 (|sum| <= 32 * 127).
            alignas(16) int32_t bs[NT][4];
            for (int j = 0; j < NT; ++j) {
                const int16_t* s = xk[j][b].bsums;
                _mm_store_si128(reinterpret_cast<__m128i*>(bs[j]),
                                _mm_hadd_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)),
                                               _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 8))));
            }
            for (int gi = 0; gi < NG_; ++gi) {
                const Block& blk = gb.w[gi][b];
                if (walk) {
                    walk_block<Block>(gb.next + ((b - s0) * NG_ + gi) * int64_t(sizeof(Block)));
                }
                __m256i isum[NT];
                OWL_UNROLL for (int j = 0; j < NT; ++j) isum[j] = _mm256_setzero_si256();
                OWL_UNROLL for (int c = 0; c < 8; ++c) {
                    __m256i s[NT];
                    OWL_UNROLL for (int j = 0; j < NT; ++j) s[j] = _mm256_setzero_si256();
                    OWL_UNROLL for (int q = 0; q < 8; ++q) {
                        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 256 * (c / 2) + 32 * q));
                        __m256i u = _mm256_and_si256(c % 2 ? _mm256_srli_epi16(v, 4) : v, m4);
                        if constexpr (kQ5) u = _mm256_or_si256(u, kx8_fifth_bit(blk, c, q));
                        OWL_UNROLL for (int j = 0; j < NT; ++j) {
                            const __m256i xv = kx8_bcast4(xk[j][b].qs + 32 * c + 4 * q);
#if OWL_VNNI
                            s[j] = q4x8_dp(s[j], u, xv);
#else
                            s[j] = _mm256_add_epi16(s[j], _mm256_maddubs_epi16(u, xv));
#endif
                        }
#if !OWL_VNNI
                        if (kQ5 && q == 3) {  // four Q5_K pair sums fill int16: take them out half-way
                            const __m256i sc2 = kx8_scale_pairs(blk, c);
                            OWL_UNROLL for (int j = 0; j < NT; ++j) {
                                isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(s[j], sc2));
                                s[j] = _mm256_setzero_si256();
                            }
                        }
#endif
                    }
#if OWL_VNNI
                    const __m256i sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.sc + 8 * c)));
                    OWL_UNROLL for (int j = 0; j < NT; ++j) isum[j] = _mm256_add_epi32(isum[j], _mm256_mullo_epi32(s[j], sc));
#else
                    const __m256i sc2 = kx8_scale_pairs(blk, c);
                    OWL_UNROLL for (int j = 0; j < NT; ++j) isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(s[j], sc2));
#endif
                }
                __m256i msum[NT];
                OWL_UNROLL for (int j = 0; j < NT; ++j) msum[j] = _mm256_setzero_si256();
                OWL_UNROLL for (int p = 0; p < 4; ++p) {
                    const __m256i mp = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.m + 16 * p)));
                    OWL_UNROLL for (int j = 0; j < NT; ++j)
                        msum[j] = _mm256_add_epi32(msum[j], _mm256_madd_epi16(mp, _mm256_set1_epi32(bs[j][p])));
                }
                const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.d)));
                const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.dmin)));
                OWL_UNROLL for (int j = 0; j < NT; ++j) {
                    const __m256 v = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum[j]), mw, _mm256_mul_ps(_mm256_cvtepi32_ps(isum[j]), dw));
                    acc[gi][j] = _mm256_fmadd_ps(v, _mm256_broadcast_ss(&xk[j][b].d), acc[gi][j]);
                }
            }
        }
        put_groups<NG_, NT>(a, g, t, acc, first);
    }
};

template <int TT>
using Q4Kx8Tiles = KMinx8Tiles<BlockQ4_Kx8, TT>;
template <int TT>
using Q5Kx8Tiles = KMinx8Tiles<BlockQ5_Kx8, TT>;

}  // namespace
}  // namespace owl::ops::isa
