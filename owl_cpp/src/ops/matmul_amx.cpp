// F16 / BF16 weights against many tokens on AMX tiles (Sapphire Rapids and later): TDPBF16PS multiplies bf16 pairs
// with fp32 sums at about five times the fp32 FMA rate of AVX-512. CMakeLists.txt (cmake/simd_kernels.cmake)
// compiles this file alone with the AVX-512, AVX512-BF16 and AMX flags; without them it only provides a stub.
//
// Precision: fp32 activations are split into hi = bf16(x) and lo = bf16(x - hi) (16 of fp32's 24 bits); an F16
// weight (11 bits) is exactly hi + lo in bf16, a BF16 weight exactly hi. Three products per step (x_hi w_hi, x_lo
// w_hi, x_hi w_lo; BF16: two), the dropped x_lo w_lo being 2^-18 of the product; the sums are fp32, rounded to
// nearest. AMX treats bf16 denormals (|x| < 1.2e-38) as zero, so a token whose values are all that small
// computes as zero; an infinite activation gives NaN (inf - inf in its split), where fp32 FMAs give inf or NaN.
//
// Layout: C tiles hold 16 tokens x 16 weight rows (a token's row of y is contiguous). A tiles are 16 tokens x 32
// columns of activations in bf16, row-major; B tiles are 32 columns x 16 weight rows in the VNNI pair layout
// (tile row p holds the pairs of columns 2p, 2p + 1 of each of the 16 rows), made from the weights by a 16 x 16
// transpose of 32-bit pairs. Blocking: tokens in blocks of kTokenBlock, columns in chunks of kChunk; per chunk the
// block's activations are converted once (for all rows of this call), then each 32-row group's weights once (for
// all tokens of the block), then 2 x 2 C tiles (32 tokens x 32 rows), started from y, run over the chunk. Each
// (row, token) pair sums its bias, then its products in column order whatever tile it shares, so its result is the
// same in any batch and any split of rows over threads.
#include "isa.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512F__) && \
    defined(__AVX512BW__) && defined(__F16C__)
#include <immintrin.h>

#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports its own intrinsics' _mm512_undefined_* placeholders as uninitialized once inlined here.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace owl::ops::isa {
namespace {

constexpr int64_t kTokenBlock = 512;  // tokens whose converted activations (1 MB per chunk) stay in L2
constexpr int64_t kChunk = 512;       // columns per chunk (256: 15% slower at 1.5B shapes, more passes over y)
constexpr int kSteps = int(kChunk / 32);
constexpr int64_t kTileBytes = 1024;  // 16 rows of 64 bytes

struct TileConfig {  // palette 1 (the AMX programming model's LDTILECFG operand)
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

// Every tile 16 rows x 64 bytes: tmm0-3 the C tiles, tmm4-5 activations, tmm6-7 weights.
void configure_tiles() {
    alignas(64) TileConfig c;
    std::memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; ++i) {
        c.rows[i] = 16;
        c.colsb[i] = 64;
    }
    _tile_loadconfig(&c);
}

// The calling thread's work space (2 MB): the block's activations (hi, lo: kTokenBlock x kChunk bf16 each) and one
// 32-row group's weight tiles (2 row tiles x kSteps x hi, lo). Allocated once per thread, freed at its exit.
struct Work {
    uint16_t* x_hi;
    uint16_t* x_lo;
    uint8_t* w;  // [part][row tile][step] tiles of kTileBytes
};
constexpr size_t kXBytes = size_t(kTokenBlock * kChunk) * 2;
constexpr size_t kWBytes = size_t(2 * 2 * kSteps) * kTileBytes;
Work work() {
    struct Buffer {
        uint8_t* p = nullptr;
        ~Buffer() { std::free(p); }
    };
    thread_local Buffer b;
    if (!b.p) b.p = static_cast<uint8_t*>(std::aligned_alloc(64, 2 * kXBytes + kWBytes));
    if (!b.p) return {nullptr, nullptr, nullptr};
    return {reinterpret_cast<uint16_t*>(b.p), reinterpret_cast<uint16_t*>(b.p + kXBytes), b.p + 2 * kXBytes};
}
uint8_t* w_tile(uint8_t* w, int part, int rt, int s) { return w + ((part * 2 + rt) * kSteps + s) * kTileBytes; }

// f rounded to the nearest bf16 (ties to even), as a float: the carry into bit 16 does the rounding.
inline __m512 round_bf16(__m512 f) {
    const __m512i b = _mm512_castps_si512(f);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(int(0xFFFF0000u))));
}

// 32 floats (two vectors) -> 32 bf16 hi and lo (lo = bf16 of what hi leaves), in element order.
inline void split32(__m512 f0, __m512 f1, __m512i& hi, __m512i& lo) {
    const __m512 h0 = round_bf16(f0), h1 = round_bf16(f1);
    hi = (__m512i)_mm512_cvtne2ps_pbh(h1, h0);  // exact; the low half from h0
    lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(f1, h1), _mm512_sub_ps(f0, h0));
}

// Tokens [t0, t0 + tb) x columns [k0, k0 + kn) of x into hi / lo bf16, kChunk per token row; the rest of the
// block (tokens up to a multiple of 32, columns up to kSteps x 32) zero.
void convert_tokens(const GemmArgs& a, int64_t t0, int64_t tb, int64_t k0, int64_t kn, int64_t tb_pad, Work wk) {
    for (int64_t t = 0; t < tb_pad; ++t) {
        uint16_t* hi = wk.x_hi + t * kChunk;
        uint16_t* lo = wk.x_lo + t * kChunk;
        const float* x = a.x + (t0 + t) * a.K + k0;
        for (int64_t k = 0; k < kChunk; k += 32) {
            __m512 f0 = _mm512_setzero_ps(), f1 = _mm512_setzero_ps();
            if (t < tb && k < kn) {
                const int64_t n = kn - k;
                f0 = _mm512_maskz_loadu_ps(n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1), x + k);
                if (n > 16) f1 = _mm512_maskz_loadu_ps(n >= 32 ? __mmask16(0xFFFF) : __mmask16((1u << (n - 16)) - 1), x + k + 16);
            }
            __m512i h, l;
            split32(f0, f1, h, l);
            _mm512_store_si512(hi + k, h);
            _mm512_store_si512(lo + k, l);
        }
    }
}

// v[i] holds row i's 16 column pairs (dwords); afterwards v[p] holds pair p of rows 0..15: a 16 x 16 transpose
// of dwords in four rounds of 16 shuffles.
inline void transpose16(__m512i (&v)[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {  // per 128-bit lane L: rows i, i+1 of pairs 4L..4L+1 / 4L+2..4L+3
        t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int b = 0; b < 16; b += 4) {  // v[b + m], lane L: pair 4L + m of rows b..b+3
        v[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
        v[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
        v[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
        v[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
    }
    for (int m = 0; m < 4; ++m) {  // lanes of rows 0-7 (t[m], t[4 + m]) and 8-15 (t[8 + m], t[12 + m]), by lane pairs
        t[m] = _mm512_shuffle_i32x4(v[m], v[4 + m], 0x44);
        t[4 + m] = _mm512_shuffle_i32x4(v[m], v[4 + m], 0xEE);
        t[8 + m] = _mm512_shuffle_i32x4(v[8 + m], v[12 + m], 0x44);
        t[12 + m] = _mm512_shuffle_i32x4(v[8 + m], v[12 + m], 0xEE);
    }
    for (int m = 0; m < 4; ++m) {  // pair 4L + m = lane L of the four row quads
        v[m] = _mm512_shuffle_i32x4(t[m], t[8 + m], 0x88);
        v[4 + m] = _mm512_shuffle_i32x4(t[m], t[8 + m], 0xDD);
        v[8 + m] = _mm512_shuffle_i32x4(t[4 + m], t[12 + m], 0x88);
        v[12 + m] = _mm512_shuffle_i32x4(t[4 + m], t[12 + m], 0xDD);
    }
}

// Rows [r, r + 32) (those below r_end; the rest zero) x columns [k0, k0 + kn) of the weights as B tiles.
template <bool kF16>
void pack_weights(const GemmArgs& a, int64_t r, int64_t r_end, int64_t k0, int64_t kn, int steps, uint8_t* w) {
    for (int rt = 0; rt < 2; ++rt)
        for (int s = 0; s < steps; ++s) {
            __m512i hi[16], lo[16];
            const int64_t k = k0 + int64_t(s) * 32, n = k0 + kn - k;  // n >= 1
            const __mmask32 m = n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1);
            for (int i = 0; i < 16; ++i) {
                const int64_t row = r + rt * 16 + i;
                if (row >= r_end) {
                    hi[i] = lo[i] = _mm512_setzero_si512();
                    continue;
                }
                const uint16_t* src = reinterpret_cast<const uint16_t*>(a.w + row * a.row_bytes) + k;
                const __m512i raw = _mm512_maskz_loadu_epi16(m, src);
                if constexpr (kF16) {
                    const __m512 f0 = _mm512_cvtph_ps(_mm512_castsi512_si256(raw));
                    const __m512 f1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
                    split32(f0, f1, hi[i], lo[i]);
                } else {
                    hi[i] = raw;
                }
            }
            transpose16(hi);
            for (int p = 0; p < 16; ++p) _mm512_store_si512(w_tile(w, 0, rt, s) + p * 64, hi[p]);
            if constexpr (kF16) {
                transpose16(lo);
                for (int p = 0; p < 16; ++p) _mm512_store_si512(w_tile(w, 1, rt, s) + p * 64, lo[p]);
            }
        }
}

// A C tile covers tokens [tok, tok + 16) x rows [r, r + 16) of y; only those below t_end / r_end exist. It starts
// from y (a later chunk) or from the bias (the first chunk; zero without one) and is stored back to y, so each
// (row, token) sums its bias, then its products in column order, chunk after chunk. A whole tile moves between y
// and the tile register directly (rows N floats apart), a partial one through `buf`: the same arithmetic.
struct TileSpan {
    const GemmArgs& a;
    int64_t tok, t_end, r, r_end;
    bool exists() const { return tok < t_end && r < r_end; }
    bool whole() const { return tok + 16 <= t_end && r + 16 <= r_end; }
    __mmask16 rows() const { return r_end - r >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (r_end - r)) - 1); }
    float* y() const { return a.y + tok * a.N + r; }
    int64_t y_stride() const { return a.N * 4; }
    // Where the tile's starting values are (null: zero): y, or buf filled with them.
    const float* source(bool first, float (&buf)[16][16]) const {
        if (!exists() || (first && !a.bias)) return nullptr;
        if (whole() && !first) return y();
        for (int i = 0; i < 16; ++i) {
            const bool in = tok + i < t_end;
            _mm512_store_ps(buf[i], !in ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rows(), first ? a.bias + r : y() + i * a.N));
        }
        return &buf[0][0];
    }
    // After the tile was stored to buf (a partial tile): its rows into y.
    void copy_out(const float (&buf)[16][16]) const {
        for (int i = 0; i < 16 && tok + i < t_end; ++i) _mm512_mask_storeu_ps(y() + i * a.N, rows(), _mm512_load_ps(buf[i]));
    }
};
// Tile register C (an immediate) from / to its span.
#define OWL_TILE_START(C, span, first, buf)                              \
    do {                                                                 \
        const float* src_ = (span).source(first, buf);                   \
        if (!src_) _tile_zero(C);                                        \
        else if (src_ == (span).y()) _tile_loadd(C, src_, (span).y_stride()); \
        else _tile_loadd(C, src_, 64);                                   \
    } while (0)
#define OWL_TILE_STORE(C, span, buf)                                     \
    do {                                                                 \
        if ((span).exists() && (span).whole()) _tile_stored(C, (span).y(), (span).y_stride()); \
        else if ((span).exists()) {                                      \
            _tile_stored(C, buf, 64);                                    \
            (span).copy_out(buf);                                        \
        }                                                                \
    } while (0)

// tmm4-5: tokens t..t+15 and t+16..t+31 of step s of a converted activation block (x at token t).
inline void load_tokens(const uint16_t* x, int s) {
    _tile_loadd(4, x + s * 32, kChunk * 2);
    _tile_loadd(5, x + 16 * kChunk + s * 32, kChunk * 2);
}
// tmm6-7: the two row tiles of step s, part 0 (hi) or 1 (lo).
inline void load_weights(uint8_t* w, int part, int s) {
    _tile_loadd(6, w_tile(w, part, 0, s), 64);
    _tile_loadd(7, w_tile(w, part, 1, s), 64);
}
// The 2 x 2 C tiles (tokens x rows) += tmm4-5 x tmm6-7.
inline void block_products() {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
}

template <bool kF16>
void gemm_amx(const GemmArgs& a, int64_t r0, int64_t r1) {
    const Work wk = work();
    if (!wk.x_hi) {  // no memory for the 2 MB work space: the AVX-512 panels this path stands in for (a.scratch is set)
        const Kernels* k = kernels_avx512_vnni();
        return (kF16 ? k->f16 : k->bf16)(a, r0, r1);
    }
    configure_tiles();
    for (int64_t t0 = 0; t0 < a.T; t0 += kTokenBlock) {
        const int64_t tb = a.T - t0 < kTokenBlock ? a.T - t0 : kTokenBlock, tb_pad = (tb + 31) / 32 * 32;
        for (int64_t k0 = 0; k0 < a.K; k0 += kChunk) {
            const int64_t kn = a.K - k0 < kChunk ? a.K - k0 : kChunk;
            const int steps = int((kn + 31) / 32);
            const bool first = k0 == 0;
            convert_tokens(a, t0, tb, k0, kn, tb_pad, wk);
            for (int64_t r = r0; r < r1; r += 32) {
                pack_weights<kF16>(a, r, r1, k0, kn, steps, wk.w);
                for (int64_t t = 0; t < tb_pad; t += 32) {
                    const int64_t tok = t0 + t, t_end = t0 + tb;
                    const TileSpan c0{a, tok, t_end, r, r1}, c1{a, tok, t_end, r + 16, r1};
                    const TileSpan c2{a, tok + 16, t_end, r, r1}, c3{a, tok + 16, t_end, r + 16, r1};
                    alignas(64) float buf[4][16][16];
                    OWL_TILE_START(0, c0, first, buf[0]);
                    OWL_TILE_START(1, c1, first, buf[1]);
                    OWL_TILE_START(2, c2, first, buf[2]);
                    OWL_TILE_START(3, c3, first, buf[3]);
                    const uint16_t* xh = wk.x_hi + t * kChunk;
                    const uint16_t* xl = wk.x_lo + t * kChunk;
                    for (int s = 0; s < steps; ++s) {
                        load_tokens(xh, s);  // x_hi w_hi
                        load_weights(wk.w, 0, s);
                        block_products();
                        load_tokens(xl, s);  // x_lo w_hi
                        block_products();
                        if constexpr (kF16) {  // x_hi w_lo
                            load_tokens(xh, s);
                            load_weights(wk.w, 1, s);
                            block_products();
                        }
                    }
                    OWL_TILE_STORE(0, c0, buf[0]);
                    OWL_TILE_STORE(1, c1, buf[1]);
                    OWL_TILE_STORE(2, c2, buf[2]);
                    OWL_TILE_STORE(3, c3, buf[3]);
                }
            }
        }
    }
    _tile_release();
}

#undef OWL_TILE_START
#undef OWL_TILE_STORE

}  // namespace

GemmFn amx_gemm(DType type) {
    if (type == DType::F16) return gemm_amx<true>;
    if (type == DType::BF16) return gemm_amx<false>;
    return nullptr;
}

}  // namespace owl::ops::isa
#else
namespace owl::ops::isa {
GemmFn amx_gemm(DType) { return nullptr; }
}  // namespace owl::ops::isa
#endif
