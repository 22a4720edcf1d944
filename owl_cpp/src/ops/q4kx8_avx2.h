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
//
// A single token on AVX-512 VNNI (decode) takes one_token(), shaped for instruction issue (the bound on Zen 4, see
// q6kx8_avx2.h): eight sub-block accumulators, each nibble vector loaded once for its two sub-blocks (Q5_K: each
// fifth-bit vector once for all eight), activations broadcast inside vpdpbusd, the min term by vpdpwssd. Q4_K's odd
// sub-blocks skip the nibble shift (16 u still fits a byte; isum_odd >> 4 is exact). Bit-identical results; one
// thread, in cache (AVX-512 VNNI, Zen 4, alternating old and new): Q4_K 1.37-1.54x, Q5_K 1.27-1.5x. The AVX2 tiles
// only got the unrolled walk (kx8_walk; GCC had kept that loop's end in memory): Q5_K 1.06-1.1x, Q4_K unchanged.
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

// Keeps v in a register: GCC would otherwise fold each use of a loaded vector (or a constant) back into a memory
// operand, and the single-token tiles are bound by loads (two per cycle on Zen 4).
__attribute__((always_inline)) inline void kx8_in_reg(__m256i& v) { __asm__("" : "+v"(v)); }

// The single-token one_token() paths: measured on AVX-512 VNNI only (32 registers; their 8 accumulators and pinned
// vectors are not tuned for AVX-VNNI's 16), so the AVX2 / AVX-VNNI builds keep the general tile for one token.
#if OWL_VNNI && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define OWL_KX8_ONE_TOKEN 1
#else
#define OWL_KX8_ONE_TOKEN 0
#endif

#if OWL_VNNI
// acc + the byte products of u with the 4 bytes at p in every lane. With AVX-512 VNNI the broadcast rides in the
// vpdpbusd as an embedded {1to8} memory operand (GCC 12 does not fold it): one instruction instead of two, and
// the single-token tiles issue about 4.5 instructions a cycle on Zen 4, whatever their mix.
__attribute__((always_inline)) inline __m256i kx8_dp4(__m256i acc, __m256i u, const int8_t* p) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    __asm__("vpdpbusd %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*reinterpret_cast<const int32_t*>(p)));
    return acc;
#else
    return q4x8_dp(acc, u, kx8_bcast4(p));
#endif
}
#endif

// acc + the int16 pair products of v with the pair at p (two int16) in every lane: vpdpwssd with an embedded
// broadcast where AVX-512 VNNI has it, else vpmaddwd and an add.
__attribute__((always_inline)) inline __m256i kx8_dpw2(__m256i acc, __m256i v, const int16_t* p) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    __asm__("vpdpwssd %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(v), "m"(*reinterpret_cast<const int32_t*>(p)));
    return acc;
#else
    int32_t w;
    std::memcpy(&w, p, 4);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(v, _mm256_set1_epi32(w)));
#endif
}

// walk_block with its prefetches unrolled: GCC keeps that loop's end in memory (a load per prefetch) otherwise.
template <class Block>
__attribute__((always_inline)) inline void kx8_walk(const char* p) {
#pragma GCC unroll 32
    for (int o = 0; o < int(sizeof(Block)); o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
}

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

#if OWL_KX8_ONE_TOKEN
    // One token, sub-blocks c = 0..7 side by side (8 accumulators): each nibble vector is loaded once for its two
    // sub-blocks, and each fifth-bit vector once for all eight. An odd sub-block takes its high nibbles in place,
    // as 16 u (<= 240, still a byte): its sums are 16 times the true ones, and isum_odd >> 4 is exact.
    __attribute__((always_inline)) static inline __m256 one_token(const Block& blk, const BlockQ8_K& x, const int32_t* bs, __m256 acc) {
        __m256i m4 = _mm256_set1_epi8(0x0f), mf0 = _mm256_set1_epi8(int8_t(0xf0));
        kx8_in_reg(m4);
        kx8_in_reg(mf0);
        __m256i s[8];
        OWL_UNROLL for (int c = 0; c < 8; ++c) s[c] = _mm256_setzero_si256();
        OWL_UNROLL for (int q = 0; q < 8; ++q) {
            __m256i h = _mm256_setzero_si256();
            if constexpr (kQ5) {
                h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * q));
                kx8_in_reg(h);
            }
            OWL_UNROLL for (int c2 = 0; c2 < 4; ++c2) {
                __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 256 * c2 + 32 * q));
                kx8_in_reg(v);
                __m256i ue = _mm256_and_si256(v, m4), uo;
                if constexpr (kQ5) {
                    const int ce = 2 * c2, co = 2 * c2 + 1;
                    const __m256i m10 = _mm256_set1_epi8(0x10);
                    ue = _mm256_or_si256(ue, _mm256_and_si256(ce <= 4 ? _mm256_slli_epi16(h, 4 - ce) : _mm256_srli_epi16(h, ce - 4), m10));
                    uo = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                                         _mm256_and_si256(co <= 4 ? _mm256_slli_epi16(h, 4 - co) : _mm256_srli_epi16(h, co - 4), m10));
                } else {
                    uo = _mm256_and_si256(v, mf0);  // 16 u
                }
                s[2 * c2] = kx8_dp4(s[2 * c2], ue, x.qs + 32 * (2 * c2) + 4 * q);
                s[2 * c2 + 1] = kx8_dp4(s[2 * c2 + 1], uo, x.qs + 32 * (2 * c2 + 1) + 4 * q);
            }
        }
        __m256i ie = _mm256_setzero_si256(), io = _mm256_setzero_si256();
        OWL_UNROLL for (int c = 0; c < 8; ++c) {
            const __m256i sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.sc + 8 * c)));
            __m256i& d = (c % 2 && !kQ5) ? io : ie;
            d = _mm256_add_epi32(d, _mm256_mullo_epi32(s[c], sc));
        }
        const __m256i isum = kQ5 ? ie : _mm256_add_epi32(ie, _mm256_srai_epi32(io, 4));
        __m256i msum = _mm256_setzero_si256();
        OWL_UNROLL for (int p = 0; p < 4; ++p)
            msum = kx8_dpw2(msum, _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.m + 16 * p))),
                            reinterpret_cast<const int16_t*>(bs + p));
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.d)));
        const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.dmin)));
        const __m256 v = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), mw, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), dw));
        return _mm256_fmadd_ps(v, _mm256_broadcast_ss(&x.d), acc);
    }
#endif

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
                if (walk) kx8_walk<Block>(gb.next + ((b - s0) * NG_ + gi) * int64_t(sizeof(Block)));
#if OWL_KX8_ONE_TOKEN
                if constexpr (NT == 1) {
                    acc[gi][0] = one_token(blk, xk[0][b], bs[0], acc[gi][0]);
                    continue;
                }
#endif
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
