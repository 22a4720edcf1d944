// Float weights (F32 / F16 / BF16) against many tokens: prompt processing. Written once with GCC vector
// extensions and compiled by every kernel file with its own flags (see isa.h for the rules).
//
// The dot-product tiles of the kernel files keep one accumulator per (row, token) pair and sum its eight lanes at
// the end; for long prompts that spends issue slots on weight conversions (4 per 12 FMAs) and horizontal sums.
// Here a thread converts 16 rows x kPanelCols columns of W once into an fp32 panel laid out [column][16 rows],
// then an outer-product tile runs over it for every token of a block: per column, two panel vectors times six
// broadcast activations, twelve FMAs, no conversions. Each lane is one (row, token) pair that sums its columns in
// order, restarting per chunk of kPanelCols (chunks then added to y), so any split over threads or tokens gives
// bit-identical results. The order differs from the dot-product tiles, so a token's result may differ in its last
// bits between a short call (those tiles) and a long one (these).
#pragma once
#include <cstdint>
#include <cstring>

#include "gemm_driver.h"
#include "isa.h"
#include "vec_math.h"

namespace owl::ops::isa {
namespace {

#define OWL_PANEL_UNROLL _Pragma("GCC unroll 8")

constexpr int kPanelRows = 16;      // rows per panel: two 8-float vectors
constexpr int kPanelTokens = 6;     // tokens per tile: 12 accumulators + 2 panel vectors + 1 broadcast
constexpr int64_t kPanelCols = 256;  // columns per panel (16 KB: stays in L1 while all tokens of a block pass)
constexpr int64_t kPanelTokenBlock = 192;  // tokens whose activations for one panel's columns stay in L2 (192 KB)

// rows[i][c0..c0+8) (i < 8, rows `stride` floats apart) transposed into out[c][i], out rows kPanelRows apart.
inline void transpose8x8(const float* rows, int64_t stride, float* out) {
    v8f r[8], t[8];
    OWL_PANEL_UNROLL for (int i = 0; i < 8; ++i) r[i] = load8(rows + i * stride);
    OWL_PANEL_UNROLL for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved: unpacklo / unpackhi
        t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    OWL_PANEL_UNROLL for (int i = 0; i < 8; i += 4) {  // quads: shufps
        r[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        r[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        r[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        r[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    OWL_PANEL_UNROLL for (int i = 0; i < 4; ++i) {  // 128-bit halves: vperm2f128
        store8(out + i * kPanelRows, __builtin_shufflevector(r[i], r[i + 4], 0, 1, 2, 3, 8, 9, 10, 11));
        store8(out + (i + 4) * kPanelRows, __builtin_shufflevector(r[i], r[i + 4], 4, 5, 6, 7, 12, 13, 14, 15));
    }
}

// Rows [r, r + n) (n <= 16) of W, columns [k0, k0 + kn), as fp32 in panel[k][16]; rows past n are zero.
// Load::to_f32(row, k, n, out) converts n consecutive elements of a row starting at column k. Eight columns of
// eight rows at a time go through a 256-byte block (a whole-panel row buffer took another 16 KB of L1).
template <class Load>
inline void pack_panel(const GemmArgs& a, int64_t r, int n, int64_t k0, int64_t kn, float* panel) {
    alignas(32) float block[8][8];
    int64_t k = 0;
    for (; k + 8 <= kn; k += 8)
        for (int h = 0; h < kPanelRows; h += 8) {
            for (int i = 0; i < 8; ++i) {
                if (h + i < n) {
                    Load::to_f32(a.w + (r + h + i) * a.row_bytes, k0 + k, 8, block[i]);
                } else {
                    std::memset(block[i], 0, sizeof block[i]);
                }
            }
            transpose8x8(&block[0][0], 8, panel + k * kPanelRows + h);
        }
    for (int i = 0; i < kPanelRows && k < kn; ++i) {  // the last kn % 8 columns
        float tail[16] = {};  // room for a 16-wide conversion step (AVX-512)
        if (i < n) Load::to_f32(a.w + (r + i) * a.row_bytes, k0 + k, kn - k, tail);
        for (int64_t c = k; c < kn; ++c) panel[c * kPanelRows + i] = tail[c - k];
    }
}

// The bytes the next pack_panel reads, requested a few lines per tile while this panel's tiles run: each row
// contributes a short piece (512 bytes of F16), too short for the hardware prefetchers to pick up, and all of them
// at once would overflow the miss buffers.
struct PanelPrefetch {
    const uint8_t* base = nullptr;  // first row of the next panel at column k0
    int64_t row_bytes = 0, lines_per_row = 0, rows = 0, next = 0;
    PanelPrefetch(const GemmArgs& a, int64_t r, int64_t r1, int64_t k0, int64_t kn) {
        const int64_t elem = a.row_bytes / a.K;
        base = a.w + r * a.row_bytes + k0 * elem;
        row_bytes = a.row_bytes;
        lines_per_row = (kn * elem + 63) / 64;
        rows = r1 - r < kPanelRows ? (r1 - r > 0 ? r1 - r : 0) : kPanelRows;
    }
    void step(int64_t lines) {
        for (const int64_t end = next + lines; next < end && next < rows * lines_per_row; ++next)
            __builtin_prefetch(base + (next / lines_per_row) * row_bytes + (next % lines_per_row) * 64);
    }
};

// Activations of tokens [t0, t1), columns [k0, k0 + kn), interleaved by tiles of kPanelTokens: xp[m][k][j] =
// x[t0 + 6m + j][k0 + k], zero past t1. The tile then reads one pointer: with six row pointers GCC ran out of
// registers and reloaded them from the stack every step (15% slower).
inline void pack_tokens(const GemmArgs& a, int64_t t0, int64_t t1, int64_t k0, int64_t kn, float* xp) {
    for (int64_t t = t0; t < t1; t += kPanelTokens, xp += kn * kPanelTokens) {
        for (int j = 0; j < kPanelTokens; ++j) {
            if (t + j < t1) {
                const float* x = a.x + (t + j) * a.K + k0;
                for (int64_t k = 0; k < kn; ++k) xp[k * kPanelTokens + j] = x[k];
            } else {
                for (int64_t k = 0; k < kn; ++k) xp[k * kPanelTokens + j] = 0.0f;
            }
        }
    }
}

// y rows [r, r + n) x tokens [t, t + nt) (+ bias when `first`, else added to y) over the panel's kn columns.
inline void panel_tile(const GemmArgs& a, const float* panel, const float* xp, int64_t kn, int64_t r, int n, int64_t t,
                       int nt, bool first) {
    // This tile's y lines (a long stride apart, re-read once per column chunk) are requested now and used after
    // the loop: without it their misses cost ~10% of the time on large matrices.
    for (int j = 0; j < nt; ++j) {
        __builtin_prefetch(a.y + (t + j) * a.N + r, 1);
        __builtin_prefetch(a.y + (t + j) * a.N + r + kPanelRows - 1, 1);
    }
    v8f acc[kPanelTokens][2];
    OWL_PANEL_UNROLL for (int j = 0; j < kPanelTokens; ++j) acc[j][0] = acc[j][1] = v8f{};
    for (int64_t k = 0; k < kn; ++k) {  // 2 loads, 6 broadcasts, 12 FMAs
        const v8f w0 = load8(panel + k * kPanelRows), w1 = load8(panel + k * kPanelRows + 8);
        OWL_PANEL_UNROLL for (int j = 0; j < kPanelTokens; ++j) {
            const v8f xb = splat(xp[k * kPanelTokens + j]);
            acc[j][0] += w0 * xb;
            acc[j][1] += w1 * xb;
        }
    }
    for (int j = 0; j < nt; ++j) {
        float* dst = a.y + (t + j) * a.N + r;
        if (n == kPanelRows) {
            v8f lo = acc[j][0], hi = acc[j][1];
            if (first) {
                if (a.bias) {
                    lo += load8(a.bias + r);
                    hi += load8(a.bias + r + 8);
                }
            } else {
                lo += load8(dst);
                hi += load8(dst + 8);
            }
            store8(dst, lo);
            store8(dst + 8, hi);
        } else {
            alignas(32) float s[kPanelRows];
            store8(s, acc[j][0]);
            store8(s + 8, acc[j][1]);
            for (int i = 0; i < n; ++i) put(a, r + i, t + j, s[i], first);
        }
    }
}

// Rows [r0, r1) of y = W x for all tokens, blocked by the constants above (a.tb / a.kc are not used).
template <class Load>
void drive_panels(const GemmArgs& a, int64_t r0, int64_t r1) {
    float* xp = a.scratch;  // [token block][columns], then the weight panel
    float* panel = a.scratch + (kPanelTokenBlock + kPanelTokens) * kPanelCols;
    GemmArgs blocks = a;
    blocks.tb = kPanelTokenBlock;
    blocks.kc = kPanelCols;
    for_each_block(blocks, [&](int64_t t0, int64_t t1, int64_t k0, int64_t k1) {
        const int64_t kn = k1 - k0;
        pack_tokens(a, t0, t1, k0, kn, xp);
        for (int64_t r = r0; r < r1; r += kPanelRows) {
            const int n = r1 - r > kPanelRows ? kPanelRows : int(r1 - r);
            pack_panel<Load>(a, r, n, k0, kn, panel);
            PanelPrefetch next(a, r + kPanelRows, r1, k0, kn);
            for (int64_t t = t0; t < t1; t += kPanelTokens) {
                next.step(8);
                const int nt = t1 - t < kPanelTokens ? int(t1 - t) : kPanelTokens;
                panel_tile(a, panel, xp + (t - t0) * kn, kn, r, n, t, nt, k0 == 0);
            }
        }
    });
}

// The float-weight entry point of a kernel set: panels for long batches, the set's dot-product tiles otherwise
// (packing a panel for a few tokens costs more than it saves).
static_assert(kPanelScratchFloats >= (kPanelTokenBlock + kPanelTokens) * kPanelCols + kPanelRows * kPanelCols,
              "isa.h's kPanelScratchFloats is too small for the blocking here");
template <class Load, class DotTiles>
void gemm_float(const GemmArgs& a, int64_t r0, int64_t r1) {
    if (a.T >= kPanelMinTokens && a.scratch) {
        drive_panels<Load>(a, r0, r1);
    } else {
        drive<DotTiles>(a, r0, r1);
    }
}

}  // namespace
}  // namespace owl::ops::isa
