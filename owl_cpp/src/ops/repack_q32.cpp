// Load-time x8 layouts of the other blocks of 32 (dtype.h): Q4_1 -> BlockQ4_1x8, Q5_0 -> BlockQ5_0x8,
// Q5_1 -> BlockQ5_1x8, IQ4_NL -> BlockIQ4_NLx8, for the lane-per-row kernels (q32x8_avx2.h).
#include <cstring>
#include <string>

#include "isa.h"
#include "owl/error.h"
#include "owl/ops.h"
#include "q32.h"

namespace owl::ops {

namespace {

// Row i's block `src` into lane i of `o`. Fields are copied as bytes: a caller's buffer need not be aligned.
// qh reordered (q32x8_high_bit): the contribution of each value of byte j of qh, so a block takes 4 lookups.
struct HighBitTable {
    uint32_t t[4][256];
    HighBitTable() {
        for (int j = 0; j < 4; ++j)
            for (int v = 0; v < 256; ++v) {
                uint32_t r = 0;
                for (int e = 0; e < 8; ++e) r |= uint32_t((v >> e) & 1) << q32x8_high_bit(8 * j + e);
                t[j][v] = r;
            }
    }
};

// kMin: the blocks carry a minimum m; kFive: 32 high bits qh.
template <class Dst, class Src, bool kMin, bool kFive>
void put_row(Dst& o, int i, const uint8_t* src) {
    Src s;
    std::memcpy(&s, src, sizeof s);
    o.d[i] = s.d;
    if constexpr (kMin) o.m[i] = s.m;
    if constexpr (kFive) {
        static const HighBitTable high;
        o.qh[i] = high.t[0][s.qh[0]] | high.t[1][s.qh[1]] | high.t[2][s.qh[2]] | high.t[3][s.qh[3]];
    }
    for (int p = 0; p < 4; ++p) std::memcpy(o.qs + 4 * kQ32x8Rows * p + 4 * i, s.qs + 4 * p, 4);
}

template <class Dst, class Src, bool kMin, bool kFive>
void interleave(const WeightView& w, void* dst, int64_t r0, int64_t r1) {
    const int64_t nb = w.cols / QK;
    Dst* out = static_cast<Dst*>(dst);
    for (int64_t g = r0 / kQ32x8Rows; g * kQ32x8Rows < r1; ++g) {
        for (int64_t b = 0; b < nb; ++b) {
            Dst& o = out[g * nb + b];
            std::memset(&o, 0, sizeof o);
            for (int i = 0; i < kQ32x8Rows && g * kQ32x8Rows + i < w.rows; ++i)
                put_row<Dst, Src, kMin, kFive>(o, i, w.row(g * kQ32x8Rows + i) + b * int64_t(sizeof(Src)));
        }
    }
}

int64_t x8_block_bytes(DType t) {
    switch (t) {
        case DType::Q4_1: return sizeof(BlockQ4_1x8);
        case DType::Q5_0: return sizeof(BlockQ5_0x8);
        case DType::Q5_1: return sizeof(BlockQ5_1x8);
        case DType::IQ4_NL: return sizeof(BlockIQ4_NLx8);
        default: throw Error(std::string("repack_q32x8: no x8 layout for ") + dtype_name(t));
    }
}

}  // namespace

int64_t q32x8_bytes(DType t, int64_t rows, int64_t cols) {
    return (rows + kQ32x8Rows - 1) / kQ32x8Rows * (cols / QK) * x8_block_bytes(t);
}

void repack_q32x8(const WeightView& w, void* dst, int64_t r0, int64_t r1) {
    x8_block_bytes(w.type);  // throws for other types
    if (w.cols % QK) throw Error("repack_q32x8: columns must be a multiple of 32");
    if (r0 % kQ32x8Rows || (r1 % kQ32x8Rows && r1 != w.rows) || r0 < 0 || r1 > w.rows)
        throw Error("repack_q32x8: row range must be whole groups of " + std::to_string(kQ32x8Rows));
    switch (w.type) {
        case DType::Q4_1: interleave<BlockQ4_1x8, BlockQ4_1, true, false>(w, dst, r0, r1); break;
        case DType::Q5_0: interleave<BlockQ5_0x8, BlockQ5_0, false, true>(w, dst, r0, r1); break;
        case DType::Q5_1: interleave<BlockQ5_1x8, BlockQ5_1, true, true>(w, dst, r0, r1); break;
        default: interleave<BlockIQ4_NLx8, BlockIQ4_NL, false, false>(w, dst, r0, r1); break;
    }
}

bool kernels_use_q32x8(DType t) {
    const isa::Kernels& k = isa::active();
    switch (t) {
        case DType::Q4_1: return k.q4_1x8 != nullptr;
        case DType::Q5_0: return k.q5_0x8 != nullptr;
        case DType::Q5_1: return k.q5_1x8 != nullptr;
        case DType::IQ4_NL: return k.iq4_nlx8 != nullptr;
        default: return false;
    }
}

}  // namespace owl::ops
