// Q4_1 / Q5_0 / Q5_1 / IQ4_NL weights x int8 activations in plain C++: included by matmul_generic.cpp only (it
// uses fp16_lookup; see isa.h for the rules). Per block and (row, token), in integers as llama.cpp does:
//   Q5_0, IQ4_NL: d_w * d_x * sum(w_q * x_q), w_q the signed level (q - 16, or the IQ4_NL table value);
//   Q4_1, Q5_1:   d_w * d_x * sum(q * x_q) + m_w * d_x * sum(x_q)   (x = d * q + m; ggml's Q8_1 sum term).
// Each weight block is decoded to int8 once per tile and reused for all of its tokens.
#pragma once
#include <cstdint>
#include <cstring>

#include "fp16_table.h"
#include "gemm_driver.h"
#include "isa.h"

namespace owl::ops::isa {
namespace {

// Block b of a row as 32 int8 levels (element order), its scale and (kMin) its minimum.
template <class Block, bool kFive, bool kMinT, int kOffset>
struct Q32Plain {
    static constexpr bool kMin = kMinT;
    static Block block(const uint8_t* row, int64_t b) {
        Block blk;
        std::memcpy(&blk, row + b * int64_t(sizeof(Block)), sizeof blk);
        return blk;
    }
    static void unpack(const Block& blk, int8_t* out) {
        uint32_t h = 0;
        if constexpr (kFive) std::memcpy(&h, blk.qh, 4);
        for (int l = 0; l < QK / 2; ++l) {
            const int lo = int(blk.qs[l] & 0x0f) | int((h >> l) & 1u) << 4;
            const int hi = int(blk.qs[l] >> 4) | int((h >> (l + 16)) & 1u) << 4;
            out[l] = int8_t(lo - kOffset);
            out[l + QK / 2] = int8_t(hi - kOffset);
        }
    }
    static float min(const Block& blk) {
        if constexpr (kMinT) return fp16_lookup(blk.m);
        return 0.0f;
    }
};
using Q41Plain = Q32Plain<BlockQ4_1, false, true, 0>;
using Q50Plain = Q32Plain<BlockQ5_0, true, false, 16>;
using Q51Plain = Q32Plain<BlockQ5_1, true, true, 0>;
struct IQ4Plain {
    static constexpr bool kMin = false;
    static BlockIQ4_NL block(const uint8_t* row, int64_t b) {
        BlockIQ4_NL blk;
        std::memcpy(&blk, row + b * int64_t(sizeof(BlockIQ4_NL)), sizeof blk);
        return blk;
    }
    static void unpack(const BlockIQ4_NL& blk, int8_t* out) {
        for (int l = 0; l < QK / 2; ++l) {
            out[l] = kIQ4NLValues[blk.qs[l] & 0x0f];
            out[l + QK / 2] = kIQ4NLValues[blk.qs[l] >> 4];
        }
    }
    static float min(const BlockIQ4_NL&) { return 0.0f; }
};

template <class W>
struct Q32Tiles {
    static constexpr int R = 4, TT = 4;
    template <int NR, int NT>
    static void run(const GemmArgs& a, int64_t r, int64_t t, int64_t k0, int64_t k1, bool first) {
        const uint8_t* w[NR];
        for (int i = 0; i < NR; ++i) w[i] = a.w + (r + i) * a.row_bytes;
        const int64_t nb = a.K / QK;
        float acc[NR][NT] = {};
        for (int64_t b = k0 / QK; b < k1 / QK; ++b) {
            int8_t wq[NR][QK];
            float dw[NR], mw[NR];
            for (int i = 0; i < NR; ++i) {
                const auto blk = W::block(w[i], b);
                W::unpack(blk, wq[i]);
                dw[i] = fp16_lookup(blk.d);
                mw[i] = W::min(blk);
            }
            for (int j = 0; j < NT; ++j) {
                const int8_t* xq = a.xq + (t + j) * a.K + b * QK;
                const float dx = a.xd[(t + j) * nb + b];
                int32_t xs = 0;
                if constexpr (W::kMin)
                    for (int l = 0; l < QK; ++l) xs += xq[l];
                for (int i = 0; i < NR; ++i) {
                    int32_t dot = 0;
                    for (int l = 0; l < QK; ++l) dot += int32_t(wq[i][l]) * int32_t(xq[l]);
                    float s = float(dot) * (dw[i] * dx);
                    if constexpr (W::kMin) s += float(xs) * (mw[i] * dx);
                    acc[i][j] += s;
                }
            }
        }
        for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NT; ++j) put(a, r + i, t + j, acc[i][j], first);
    }
};

}  // namespace
}  // namespace owl::ops::isa
