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

template <class Tiles, int R, int TT>
inline void token_tail(const GemmArgs& a, int64_t r, int64_t t, int64_t rem, int64_t k0, int64_t k1, bool first) {
    if constexpr (TT >= 1) {
        if (rem == TT) {
            Tiles::template run<R, TT>(a, r, t, k0, k1, first);
            return;
        }
        token_tail<Tiles, R, TT - 1>(a, r, t, rem, k0, k1, first);
    }
}

template <class Tiles, int R>
inline void row_group(const GemmArgs& a, int64_t r, int64_t t0, int64_t t1, int64_t k0, int64_t k1, bool first) {
    int64_t t = t0;
    for (; t + Tiles::TT <= t1; t += Tiles::TT) Tiles::template run<R, Tiles::TT>(a, r, t, k0, k1, first);
    if (t < t1) token_tail<Tiles, R, Tiles::TT - 1>(a, r, t, t1 - t, k0, k1, first);
}

template <class Tiles>
void drive(const GemmArgs& a, int64_t r0, int64_t r1) {
    const int64_t tb = (a.tb <= 0 || a.tb >= a.T) ? a.T : a.tb;
    const int64_t kc = (a.kc <= 0 || a.kc >= a.K) ? a.K : a.kc;
    for (int64_t t0 = 0; t0 < a.T; t0 += tb) {
        const int64_t t1 = a.T - t0 > tb ? t0 + tb : a.T;
        for (int64_t k0 = 0; k0 < a.K; k0 += kc) {
            const int64_t k1 = a.K - k0 > kc ? k0 + kc : a.K;
            int64_t r = r0;
            for (; r + Tiles::R <= r1; r += Tiles::R) row_group<Tiles, Tiles::R>(a, r, t0, t1, k0, k1, k0 == 0);
            for (; r < r1; ++r) row_group<Tiles, 1>(a, r, t0, t1, k0, k1, k0 == 0);
        }
    }
}

// Store (first chunk: y = s + bias) or accumulate (later chunks) one result.
inline void put(const GemmArgs& a, int64_t r, int64_t t, float s, bool first) {
    float& dst = a.y[t * a.N + r];
    dst = first ? s + (a.bias ? a.bias[r] : 0.0f) : dst + s;
}

}  // namespace
}  // namespace owl::ops::isa
