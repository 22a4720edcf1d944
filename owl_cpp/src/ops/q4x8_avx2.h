// BlockQ4_0x8 weights (dtype.h) x int8 activations with 256-bit integer instructions; included by
// matmul_avx2.inc and matmul_avx512.inc (OWL_VNNI says whether vpdpbusd exists). See isa.h for the rules.
//
// One tile = one 8-row group x NT tokens, one row per 32-bit lane. Per block, each 32-byte quarter p of the
// group's nibbles gives two registers: low nibbles = elements 4p..4p+3 of every row, high = 16+4p..16+4p+3. Against
// a broadcast of the token's matching four activation bytes:
//   vpmaddubsw: nibble (u8) x x (s8) pair sums <= 2 * 15 * 127; all eight add up to <= 30480 in int16, and
//               vpmaddwd folds each lane's pairs into int32;
//   vpdpbusd:   accumulates the same products straight into int32.
// Subtracting 8 * sum(x) (GemmArgs::xs) gives each row's signed Q4_0 dot exactly; then
// acc += float(dot) * d_w[row] * d_x, with the eight row scales converted by one vcvtph2ps. No horizontal sums:
// a token's eight results are its accumulator's lanes.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm_driver.h"
#include "isa.h"

namespace owl::ops::isa {
namespace {

inline __m256i bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

#if OWL_VNNI
inline __m256i q4x8_dp(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#endif
}
#endif

// Single-token tiles walk the next tile's bytes (contiguous with their own) front to back into L2, at the rate they
// consume their own: NG groups read side by side are short streams that the hardware prefetchers follow badly.
// Long groups, not walked at all before, gained most (Q4_K x8, one thread: 4096 columns 14-16 -> 22-24 GB/s; two
// threads, 4096 and 11008 columns: 24-33 -> 33-45). Into L1 the next tile's NG groups crowd the current ones
// (Zen 4, 32 KB: Q6_K x8 at 1536 columns, 10 KB groups, read 16 GB/s walked into L1 and 30-32 into L2, two
// threads); short groups (<= 4 KB, rows of <= 910 Q4_0 columns) were walked into L1 until alternating runs of
// 0.5B decode, two threads, showed L2 ahead there too: Q4_0 +12-15% (AVX-512 VNNI and AVX2 kernels), IQ4_NL +16%.

// One block's share of the walk: sizeof(Block) bytes from p, into L2.
// (Inlined: a call inside the tiles would spill their accumulators.)
template <class Block>
__attribute__((always_inline)) inline void walk_block(const char* p) {
    for (int o = 0; o < int(sizeof(Block)); o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
}

// A tile's accumulators (one row per fp32 lane) into y: stored or added for the rows of groups g.. that exist.
template <int NG_, int NT>
inline void put_groups(const GemmArgs& a, int64_t g, int64_t t, const __m256 (&acc)[NG_][NT], bool first) {
    for (int gi = 0; gi < NG_; ++gi)
        for (int j = 0; j < NT; ++j) {
            float out[kQ4x8Rows];
            _mm256_storeu_ps(out, acc[gi][j]);
            put_group(a, g + gi, t + j, out, first);
        }
}

struct Q4x8Tiles {
    static constexpr int NG = 4, TT = 4;  // groups per single-token tile; tokens per one-group tile
    static constexpr int NG_LONG = NG;    // the same for groups longer than kWalkGroupBytes
    template <int NG_, int NT>
    static void run(const GemmArgs& a, int64_t g, int64_t t, int64_t b0, int64_t b1, bool first) {
        const GroupBlocks<BlockQ4_0x8, NG_> gb(a, g);
        const Q8Tokens<NT> tok(a, t);
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        __m256 acc[NG_][NT];
        for (int gi = 0; gi < NG_; ++gi)
            for (int j = 0; j < NT; ++j) acc[gi][j] = _mm256_setzero_ps();
        // One token reads NG_ groups side by side: walk the next tile's bytes (walk_block).
        const bool walk = NT == 1;
        for (int64_t b = b0; b < b1; ++b) {
            for (int gi = 0; gi < NG_; ++gi) {
                const BlockQ4_0x8& blk = gb.w[gi][b];
                if (walk) {
                    walk_block<BlockQ4_0x8>(gb.next + ((b - b0) * NG_ + gi) * int64_t(sizeof(BlockQ4_0x8)));
                }
                __m256i s[NT];
                for (int j = 0; j < NT; ++j) {
#if OWL_VNNI
                    s[j] = _mm256_set1_epi32(-8 * tok.s[j][b]);
#else
                    s[j] = _mm256_setzero_si256();
#endif
                }
                for (int p = 0; p < 4; ++p) {
                    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * p));
                    const __m256i lo = _mm256_and_si256(c, m4);
                    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);
                    for (int j = 0; j < NT; ++j) {
                        const int8_t* x = tok.q[j] + b * QK + 4 * p;
#if OWL_VNNI
                        s[j] = q4x8_dp(q4x8_dp(s[j], lo, bcast4(x)), hi, bcast4(x + 16));
#else
                        s[j] = _mm256_add_epi16(s[j], _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(x)),
                                                                       _mm256_maddubs_epi16(hi, bcast4(x + 16))));
#endif
                    }
                }
                const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.d)));
                for (int j = 0; j < NT; ++j) {
#if OWL_VNNI
                    const __m256i dot = s[j];
#else
                    const __m256i dot = _mm256_sub_epi32(_mm256_madd_epi16(s[j], _mm256_set1_epi16(1)),
                                                         _mm256_set1_epi32(8 * tok.s[j][b]));
#endif
                    acc[gi][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(tok.d[j][b])), acc[gi][j]);
                }
            }
        }
        put_groups<NG_, NT>(a, g, t, acc, first);
    }
};

}  // namespace
}  // namespace owl::ops::isa
