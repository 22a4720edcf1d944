// Load-time weight layouts the kernels prefer over the file's: Q4_0 -> BlockQ4_0x8, Q8_0 -> BlockQ8_0x16 (dtype.h).
#include <cstddef>
#include <cstring>
#include <string>

#include "owl/error.h"
#include "owl/ops.h"

namespace owl::ops {

namespace {
// Interleaves groups of kRows rows: block b of a group holds each row's scale, then the rows' quants in 4-byte
// chunks, chunk p of every row before chunk p + 1 (what the lane kernels load). The layouts differ only in Src
// (Q4_0: 16 bytes of quants, Q8_0: 32) and kRows.
template <class Dst, class Src, int kRows>
int64_t interleaved_bytes(int64_t rows, int64_t cols) {
    const int64_t groups = (rows + kRows - 1) / kRows;
    return groups * (cols / QK) * int64_t(sizeof(Dst));
}

template <class Dst, class Src, int kRows>
void interleave(const WeightView& w, DType type, void* dst, int64_t r0, int64_t r1, const char* what) {
    if (w.type != type || w.cols % QK) throw Error(std::string(what) + ": needs a " + dtype_name(type) + " matrix");
    if (r0 % kRows || (r1 % kRows && r1 != w.rows) || r0 < 0 || r1 > w.rows)
        throw Error(std::string(what) + ": row range must be whole groups of " + std::to_string(kRows));
    constexpr int kChunks = int(sizeof(Src::qs)) / 4;
    static_assert(sizeof(Dst::qs) == size_t(kRows) * sizeof(Src::qs), "a block holds its rows' quants");
    const int64_t nb = w.cols / QK;
    Dst* out = static_cast<Dst*>(dst);
    for (int64_t g = r0 / kRows; g * kRows < r1; ++g) {
        for (int64_t b = 0; b < nb; ++b) {
            Dst& o = out[g * nb + b];
            std::memset(&o, 0, sizeof o);  // rows past the end: scale 0
            for (int i = 0; i < kRows; ++i) {
                const int64_t r = g * kRows + i;
                if (r >= w.rows) break;
                // Copied as bytes: a caller's buffer need not be 2-byte aligned (GGUFFile's tensors are).
                const uint8_t* src = w.row(r) + b * int64_t(sizeof(Src));
                std::memcpy(&o.d[i], src + offsetof(Src, d), sizeof o.d[i]);
                for (int p = 0; p < kChunks; ++p) std::memcpy(o.qs + 4 * kRows * p + 4 * i, src + offsetof(Src, qs) + 4 * p, 4);
            }
        }
    }
}
}  // namespace

int64_t q4x8_bytes(int64_t rows, int64_t cols) { return interleaved_bytes<BlockQ4_0x8, BlockQ4_0, kQ4x8Rows>(rows, cols); }

void repack_q4x8(const WeightView& w, void* dst, int64_t r0, int64_t r1) {
    interleave<BlockQ4_0x8, BlockQ4_0, kQ4x8Rows>(w, DType::Q4_0, dst, r0, r1, "repack_q4x8");
}

int64_t q8x16_bytes(int64_t rows, int64_t cols) { return interleaved_bytes<BlockQ8_0x16, BlockQ8_0, kQ8x16Rows>(rows, cols); }

void repack_q8x16(const WeightView& w, void* dst, int64_t r0, int64_t r1) {
    interleave<BlockQ8_0x16, BlockQ8_0, kQ8x16Rows>(w, DType::Q8_0, dst, r0, r1, "repack_q8x16");
}

}  // namespace owl::ops
