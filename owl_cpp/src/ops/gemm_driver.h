// The loop nest shared by every kernel file: token blocks, then column chunks (so one block x chunk of
// activations stays in cache while all of a thread's rows pass over it), then row groups of Tiles::R rows, then
// token groups of Tiles::TT tokens. A register tile loads each weight byte once for all of its tokens.
//
// Everything here has internal linkage (unnamed namespace): each kernel file compiles its own copy with its own
// target flags, see isa.h.
#pragma once
#include <cstdint>

#include "isa.h"

namespace owl::ops::isa {
namespace {

// Tiles: struct { static constexpr int R, TT;
//                 template <int R, int TT> static void run(const GemmArgs&, int64_t r, int64_t t,
//                                                          int64_t k0, int64_t k1, bool first); }
// run() computes rows r..r+R-1 x tokens t..t+TT-1 over columns [k0, k1) and stores y (+bias) when `first`,
// else adds to y.

// Token blocks of a.tb tokens, and within each, column chunks of a.kc columns: body(t0, t1, k0, k1) for each.
template <class Body>
inline void for_each_block(const GemmArgs& a, Body&& body) {
    const int64_t tb = (a.tb <= 0 || a.tb >= a.T) ? a.T : a.tb;
    const int64_t kc = (a.kc <= 0 || a.kc >= a.K) ? a.K : a.kc;
    for (int64_t t0 = 0; t0 < a.T; t0 += tb) {
        const int64_t t1 = a.T - t0 > tb ? t0 + tb : a.T;
        for (int64_t k0 = 0; k0 < a.K; k0 += kc) body(t0, t1, k0, a.K - k0 > kc ? k0 + kc : a.K);
    }
}

// f(Count<n>{}) for a run-time n in [1, Max]: the partial tile after a run of full ones, with n a compile-time
// constant inside f (decltype(c)::value).
template <int N>
struct Count {
    static constexpr int value = N;
};
template <int Max, class F>
inline void with_count(int64_t n, F&& f) {
    if constexpr (Max >= 1) {
        if (n == Max) {
            f(Count<Max>{});
            return;
        }
        with_count<Max - 1>(n, f);
    }
}

template <class Tiles, int R>
inline void row_group(const GemmArgs& a, int64_t r, int64_t t0, int64_t t1, int64_t k0, int64_t k1, bool first) {
    int64_t t = t0;
    for (; t + Tiles::TT <= t1; t += Tiles::TT) Tiles::template run<R, Tiles::TT>(a, r, t, k0, k1, first);
    if (t < t1)
        with_count<Tiles::TT - 1>(t1 - t, [&](auto nt) { Tiles::template run<R, decltype(nt)::value>(a, r, t, k0, k1, first); });
}

template <class Tiles>
void drive(const GemmArgs& a, int64_t r0, int64_t r1) {
    for_each_block(a, [&](int64_t t0, int64_t t1, int64_t k0, int64_t k1) {
        int64_t r = r0;
        for (; r + Tiles::R <= r1; r += Tiles::R) row_group<Tiles, Tiles::R>(a, r, t0, t1, k0, k1, k0 == 0);
        for (; r < r1; ++r) row_group<Tiles, 1>(a, r, t0, t1, k0, k1, k0 == 0);
    });
}

// 8-row groups longer than this are "long": the single-token tiles with NG_LONG == 1 read them one at a time.
constexpr int64_t kWalkGroupBytes = 4096;

// What an x8 tile reads of the weights: the blocks of groups g..g+NG_-1 (each group kQ4x8Rows * a.row_bytes
// bytes, contiguous) and where the next tile's bytes start (the single-token walk: q4x8_avx2.h).
template <class Block, int NG_>
struct GroupBlocks {
    const Block* w[NG_];
    const char* next;
    GroupBlocks(const GemmArgs& a, int64_t g) {
        const int64_t group_bytes = kQ4x8Rows * a.row_bytes;
        for (int gi = 0; gi < NG_; ++gi) w[gi] = reinterpret_cast<const Block*>(a.w + (g + gi) * group_bytes);
        next = reinterpret_cast<const char*>(a.w + (g + NG_) * group_bytes);
    }
};

// Tokens t..t+NT-1 of Q8_0-rounded activations: quants (GemmArgs::xq), block scales (xd) and block sums (xs).
template <int NT>
struct Q8Tokens {
    const int8_t* q[NT];
    const float* d[NT];
    const int32_t* s[NT];
    Q8Tokens(const GemmArgs& a, int64_t t) {
        const int64_t nb = a.K / QK;
        for (int j = 0; j < NT; ++j) {
            q[j] = a.xq + (t + j) * a.K;
            d[j] = a.xd + (t + j) * nb;
            s[j] = a.xs + (t + j) * nb;
        }
    }
};

// The same loop nest for BlockQ4_0x8 weights, with 8-row groups for rows. Tiles::run<NG, NT>(a, g, t, b0, b1,
// first) computes groups g..g+NG-1 (rows 8g.., those below N) x tokens t..t+NT-1 over blocks [b0, b1). A single
// token (decode) takes Tiles::NG groups per tile, so each thread reads that many weight streams at once (one
// stream left the memory system idle: 20% slower decode), or Tiles::NG_LONG (1 or NG) when groups are longer
// than kWalkGroupBytes; more tokens take one group per tile.
template <class Tiles>
void drive_q4x8(const GemmArgs& a, int64_t r0, int64_t r1) {
    const int64_t g0 = r0 / kQ4x8Rows, g1 = (r1 + kQ4x8Rows - 1) / kQ4x8Rows;
    for_each_block(a, [&](int64_t t0, int64_t t1, int64_t k0, int64_t k1) {
        const int64_t b0 = k0 / QK, b1 = k1 / QK;
        const bool first = k0 == 0;
        if (a.T == 1) {
            int64_t g = g0;
            if (kQ4x8Rows * a.row_bytes > kWalkGroupBytes && Tiles::NG_LONG == 1) {
                for (; g < g1; ++g) Tiles::template run<1, 1>(a, g, 0, b0, b1, first);
                return;
            }
            for (; g + Tiles::NG <= g1; g += Tiles::NG) Tiles::template run<Tiles::NG, 1>(a, g, 0, b0, b1, first);
            for (; g < g1; ++g) Tiles::template run<1, 1>(a, g, 0, b0, b1, first);
            return;
        }
        for (int64_t g = g0; g < g1; ++g) {
            int64_t t = t0;
            for (; t + Tiles::TT <= t1; t += Tiles::TT) Tiles::template run<1, Tiles::TT>(a, g, t, b0, b1, first);
            if (t < t1)
                with_count<Tiles::TT - 1>(t1 - t, [&](auto nt) { Tiles::template run<1, decltype(nt)::value>(a, g, t, b0, b1, first); });
        }
    });
}

// Store or accumulate one token's results for the rows of group g that exist.
inline void put_group(const GemmArgs& a, int64_t g, int64_t t, const float* s, bool first) {
    float* dst = a.y + t * a.N + g * kQ4x8Rows;
    const int64_t n = a.N - g * kQ4x8Rows < kQ4x8Rows ? a.N - g * kQ4x8Rows : kQ4x8Rows;
    const float* bias = a.bias ? a.bias + g * kQ4x8Rows : nullptr;
    for (int64_t i = 0; i < n; ++i) dst[i] = first ? s[i] + (bias ? bias[i] : 0.0f) : dst[i] + s[i];
}

// Store (first chunk: y = s + bias) or accumulate (later chunks) one result.
inline void put(const GemmArgs& a, int64_t r, int64_t t, float s, bool first) {
    float& dst = a.y[t * a.N + r];
    dst = first ? s + (a.bias ? a.bias[r] : 0.0f) : dst + s;
}

}  // namespace
}  // namespace owl::ops::isa
