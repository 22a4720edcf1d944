// Load-time x8 layout of Q4_K (dtype.h: BlockQ4_Kx8) for the lane-per-row kernels (q4kx8_avx2.h, and the
// rows-in-lanes prefill of matmul_kquant_x86.inc).
#include <cstring>
#include <string>

#include "isa.h"
#include "owl/error.h"
#include "owl/ops.h"

namespace owl::ops {

namespace {

// 12 bytes of 6-bit scales and mins (ggml's get_scale_min_k4) -> 8 scales, 8 mins.
void unpack_k4(const uint8_t* s, uint8_t* sc, uint8_t* m) {
    for (int j = 0; j < 4; ++j) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = uint8_t((s[j + 8] & 0x0f) | ((s[j] >> 6) << 4));
        m[j + 4] = uint8_t((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

// Row i's super-block `src` into lane i of `o` (bytes copied: a caller's buffer need not be aligned).
void put_row(BlockQ4_Kx8& o, int i, const uint8_t* src) {
    BlockQ4_K s;
    std::memcpy(&s, src, sizeof s);
    o.d[i] = s.d;
    o.dmin[i] = s.dmin;
    uint8_t sc[8], m[8];
    unpack_k4(s.scales, sc, m);
    for (int c = 0; c < 8; ++c) {
        o.sc[8 * c + i] = sc[c];
        o.m[16 * (c / 2) + 2 * i + c % 2] = m[c];
    }
    for (int c2 = 0; c2 < 4; ++c2)
        for (int q = 0; q < 8; ++q) std::memcpy(o.qs + 256 * c2 + 32 * q + 4 * i, s.qs + 32 * c2 + 4 * q, 4);
}

}  // namespace

int64_t q4kx8_bytes(int64_t rows, int64_t cols) {
    return (rows + kQ4Kx8Rows - 1) / kQ4Kx8Rows * (cols / QK_K) * int64_t(sizeof(BlockQ4_Kx8));
}

void repack_q4kx8(const WeightView& w, void* dst, int64_t r0, int64_t r1) {
    if (w.type != DType::Q4_K) throw Error(std::string("repack_q4kx8: needs a Q4_K matrix, got ") + dtype_name(w.type));
    if (w.cols % QK_K) throw Error("repack_q4kx8: columns must be a multiple of 256");
    if (r0 % kQ4Kx8Rows || (r1 % kQ4Kx8Rows && r1 != w.rows) || r0 < 0 || r1 > w.rows)
        throw Error("repack_q4kx8: row range must be whole groups of " + std::to_string(kQ4Kx8Rows));
    const int64_t nb = w.cols / QK_K;
    BlockQ4_Kx8* out = static_cast<BlockQ4_Kx8*>(dst);
    for (int64_t g = r0 / kQ4Kx8Rows; g * kQ4Kx8Rows < r1; ++g)
        for (int64_t b = 0; b < nb; ++b) {
            BlockQ4_Kx8& o = out[g * nb + b];
            std::memset(&o, 0, sizeof o);
            for (int i = 0; i < kQ4Kx8Rows && g * kQ4Kx8Rows + i < w.rows; ++i)
                put_row(o, i, w.row(g * kQ4Kx8Rows + i) + b * int64_t(sizeof(BlockQ4_K)));
        }
}

bool kernels_use_q4kx8() { return isa::active().q4_kx8 != nullptr; }

}  // namespace owl::ops
