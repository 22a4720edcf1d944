// Load-time weight layouts the kernels prefer over the file's: Q4_0 -> BlockQ4_0x8, Q8_0 -> BlockQ8_0x16 (dtype.h).
#include <cstddef>
#include <cstring>

#include "owl/error.h"
#include "owl/ops.h"

namespace owl::ops {

int64_t q4x8_bytes(int64_t rows, int64_t cols) {
    const int64_t groups = (rows + kQ4x8Rows - 1) / kQ4x8Rows;
    return groups * (cols / QK) * int64_t(sizeof(BlockQ4_0x8));
}

void repack_q4x8(const WeightView& w, void* dst, int64_t r0, int64_t r1) {
    if (w.type != DType::Q4_0 || w.cols % QK) throw Error("repack_q4x8: needs a Q4_0 matrix");
    if (r0 % kQ4x8Rows || (r1 % kQ4x8Rows && r1 != w.rows) || r0 < 0 || r1 > w.rows)
        throw Error("repack_q4x8: row range must be whole groups of 8");
    const int64_t nb = w.cols / QK;
    BlockQ4_0x8* out = static_cast<BlockQ4_0x8*>(dst);
    for (int64_t g = r0 / kQ4x8Rows; g * kQ4x8Rows < r1; ++g) {
        for (int64_t b = 0; b < nb; ++b) {
            BlockQ4_0x8& o = out[g * nb + b];
            std::memset(&o, 0, sizeof o);  // rows past the end: scale 0
            for (int i = 0; i < kQ4x8Rows; ++i) {
                const int64_t r = g * kQ4x8Rows + i;
                if (r >= w.rows) break;
                // Copied as bytes: a caller's buffer need not be 2-byte aligned (GGUFFile's tensors are).
                const uint8_t* src = w.row(r) + b * int64_t(sizeof(BlockQ4_0));
                std::memcpy(&o.d[i], src + offsetof(BlockQ4_0, d), sizeof o.d[i]);
                for (int p = 0; p < 4; ++p) std::memcpy(o.qs + 32 * p + 4 * i, src + offsetof(BlockQ4_0, qs) + 4 * p, 4);
            }
        }
    }
}

int64_t q8x16_bytes(int64_t rows, int64_t cols) {
    const int64_t groups = (rows + kQ8x16Rows - 1) / kQ8x16Rows;
    return groups * (cols / QK) * int64_t(sizeof(BlockQ8_0x16));
}

void repack_q8x16(const WeightView& w, void* dst, int64_t r0, int64_t r1) {
    if (w.type != DType::Q8_0 || w.cols % QK) throw Error("repack_q8x16: needs a Q8_0 matrix");
    if (r0 % kQ8x16Rows || (r1 % kQ8x16Rows && r1 != w.rows) || r0 < 0 || r1 > w.rows)
        throw Error("repack_q8x16: row range must be whole groups of 16");
    const int64_t nb = w.cols / QK;
    BlockQ8_0x16* out = static_cast<BlockQ8_0x16*>(dst);
    for (int64_t g = r0 / kQ8x16Rows; g * kQ8x16Rows < r1; ++g) {
        for (int64_t b = 0; b < nb; ++b) {
            BlockQ8_0x16& o = out[g * nb + b];
            std::memset(&o, 0, sizeof o);  // rows past the end: scale 0
            for (int i = 0; i < kQ8x16Rows; ++i) {
                const int64_t r = g * kQ8x16Rows + i;
                if (r >= w.rows) break;
                const uint8_t* src = w.row(r) + b * int64_t(sizeof(BlockQ8_0));
                std::memcpy(&o.d[i], src + offsetof(BlockQ8_0, d), sizeof o.d[i]);
                for (int q = 0; q < QK / 4; ++q) std::memcpy(o.qs + 64 * q + 4 * i, src + offsetof(BlockQ8_0, qs) + 4 * q, 4);
            }
        }
    }
}

}  // namespace owl::ops
