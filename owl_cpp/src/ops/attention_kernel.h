// The attention kernel shared by every kernel file: one AttnArgs unit (a KV head's query rows for a run of
// tokens) with an online softmax over blocks of kAttnKeyBlock keys, flash-attention style, so no score row longer
// than one block ever exists. Written once with GCC/Clang vector extensions: each kernel file compiles its own
// copy with its own target flags (AVX2 + FMA, AVX-512, NEON, or baseline SSE2), see isa.h.
//
// Per unit, in the caller's scratch (layout in isa.h):
//   Q rows are copied once, pre-multiplied by scale * log2(e), so the softmax runs on exp2;
//   for each key block: K^T (head_dim x 16) is copied out of the cache (zero-padded to a multiple of 8 dimensions;
//   V too when head_dim is not one), S = Q K^T, each row is masked to the keys its token sees, and
//   m = max(m, max S), l = l * 2^(m_old - m) + sum 2^(S - m), O = O * 2^(m_old - m) + 2^(S - m) V;
//   finally out = O / l.
// A row's arithmetic never depends on which other rows share its unit or tile, and a block whose keys a row
// cannot see leaves that row untouched, so results do not depend on the thread count or the batch split.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "isa.h"
#include "vec_math.h"

namespace owl::ops::isa {
namespace {

constexpr int kKB = kAttnKeyBlock;

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

// K^T of one block: kt[d][j] = k[j][d], zero where j >= nk or d >= hd.
inline void transpose_keys(const float* k, int64_t stride, int nk, int64_t hd, int64_t hd8, float* kt) {
    if (nk < kKB || hd < hd8) std::memset(kt, 0, sizeof(float) * size_t(hd8 * kKB));
    for (int j = 0; j < nk; ++j) {
        const float* kj = k + j * stride;
        for (int64_t d = 0; d < hd; ++d) kt[d * kKB + j] = kj[d];
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
            transpose_keys(span.k + j0 * span.stride, span.stride, nk, hd, hd8, kt);
            // V rows are read in place when whole vectors; an odd head_dim copies them zero-padded.
            const float* vb = span.v + j0 * span.stride;
            int64_t vstride = span.stride;
            if (hd < hd8) {
                for (int j = 0; j < nk; ++j)
                    for (int64_t d = 0; d < hd8; ++d) vs[j * hd8 + d] = d < hd ? vb[j * span.stride + d] : 0.0f;
                vb = vs;
                vstride = hd8;
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
