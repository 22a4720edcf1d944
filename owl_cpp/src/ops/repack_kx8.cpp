// Load-time x8 layouts of Q4_K / Q5_K / Q6_K (dtype.h: BlockQ4_Kx8, BlockQ5_Kx8, BlockQ6_Kx8) for the lane-per-row
// kernels (q4kx8_avx2.h, q6kx8_avx2.h, and the rows-in-lanes prefill of matmul_kquant_x86.inc).
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

// The header and nibbles Q4_K and Q5_K share, of row i's super-block into lane i of `o`.
template <class Out>
void put_k4_header(Out& o, int i, uint16_t d, uint16_t dmin, const uint8_t* scales, const uint8_t* qs) {
    o.d[i] = d;
    o.dmin[i] = dmin;
    uint8_t sc[8], m[8];
    unpack_k4(scales, sc, m);
    for (int c = 0; c < 8; ++c) {
        o.sc[8 * c + i] = sc[c];
        o.m[16 * (c / 2) + 2 * i + c % 2] = m[c];
    }
    for (int c2 = 0; c2 < 4; ++c2)
        for (int q = 0; q < 8; ++q) std::memcpy(o.qs + 256 * c2 + 32 * q + 4 * i, qs + 32 * c2 + 4 * q, 4);
}

// Row i's super-block `src` into lane i of `o` (bytes copied: a caller's buffer need not be aligned).
void put_row(BlockQ4_Kx8& o, int i, const uint8_t* src) {
    BlockQ4_K s;
    std::memcpy(&s, src, sizeof s);
    put_k4_header(o, i, s.d, s.dmin, s.scales, s.qs);
}

void put_row(BlockQ5_Kx8& o, int i, const uint8_t* src) {
    BlockQ5_K s;
    std::memcpy(&s, src, sizeof s);
    put_k4_header(o, i, s.d, s.dmin, s.scales, s.qs);
    // File: bit c of qh[l] is the fifth bit of element 32 c + l; here bit c of qh[32 q + 4 i + e], l = 4 q + e.
    for (int q = 0; q < 8; ++q) std::memcpy(o.qh + 32 * q + 4 * i, s.qh + 4 * q, 4);
}

void put_row(BlockQ6_Kx8& o, int i, const uint8_t* src) {
    BlockQ6_K s;
    std::memcpy(&s, src, sizeof s);
    o.d[i] = s.d;
    for (int p = 0; p < 8; ++p) {
        o.sc[16 * p + 2 * i] = s.scales[2 * p];
        o.sc[16 * p + 2 * i + 1] = s.scales[2 * p + 1];
    }
    // File (ggml): element 128 h + 32 k + l (k = 0..3, l = 0..31) has its low 4 bits in nibble k / 2 of
    // ql[64 h + 32 (k % 2) + l] and its top 2 bits at bit 2 k of qh[32 h + l]. Here sub-block c = 4 h + k, l = 4 q + e:
    // the top bits keep their places (qh word q of half h as it is), and the nibbles of sub-blocks 2 c2 and 2 c2 + 1
    // (k % 2 = 0, 1; the same nibble c2 % 2) pair up in one byte. Four elements at a time, as 32-bit words.
    auto word = [](const uint8_t* p) {
        uint32_t v;
        std::memcpy(&v, p, 4);
        return v;
    };
    for (int h = 0; h < 2; ++h)
        for (int q = 0; q < 8; ++q) std::memcpy(o.qh + 256 * h + 32 * q + 4 * i, s.qh + 32 * h + 4 * q, 4);
    for (int c2 = 0; c2 < 4; ++c2) {
        const int h = c2 / 2, shift = 4 * (c2 % 2);
        for (int q = 0; q < 8; ++q) {
            const uint32_t lo = (word(s.ql + 64 * h + 4 * q) >> shift) & 0x0f0f0f0fu;
            const uint32_t hi = (word(s.ql + 64 * h + 32 + 4 * q) >> shift) & 0x0f0f0f0fu;
            const uint32_t v = lo | (hi << 4);
            std::memcpy(o.ql + 256 * c2 + 32 * q + 4 * i, &v, 4);
        }
    }
}

template <class Out, class In>
void repack_rows(const WeightView& w, void* dst, int64_t r0, int64_t r1) {
    const int64_t nb = w.cols / QK_K;
    Out* out = static_cast<Out*>(dst);
    for (int64_t g = r0 / kQ4Kx8Rows; g * kQ4Kx8Rows < r1; ++g)
        for (int64_t b = 0; b < nb; ++b) {
            Out& o = out[g * nb + b];
            std::memset(&o, 0, sizeof o);  // padding rows stay zero (scale 0)
            for (int i = 0; i < kQ4Kx8Rows && g * kQ4Kx8Rows + i < w.rows; ++i)
                put_row(o, i, w.row(g * kQ4Kx8Rows + i) + b * int64_t(sizeof(In)));
        }
}

int64_t kx8_block_bytes(DType t) {
    switch (t) {
        case DType::Q4_K: return sizeof(BlockQ4_Kx8);
        case DType::Q5_K: return sizeof(BlockQ5_Kx8);
        case DType::Q6_K: return sizeof(BlockQ6_Kx8);
        default: throw Error(std::string("kx8: no 8-row layout for ") + dtype_name(t));
    }
}

}  // namespace

bool is_kx8_type(DType t) { return t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K; }

int64_t kx8_bytes(DType t, int64_t rows, int64_t cols) {
    return (rows + kQ4Kx8Rows - 1) / kQ4Kx8Rows * (cols / QK_K) * kx8_block_bytes(t);
}

void repack_kx8(const WeightView& w, void* dst, int64_t r0, int64_t r1) {
    if (!is_kx8_type(w.type)) throw Error(std::string("repack_kx8: needs a Q4_K, Q5_K or Q6_K matrix, got ") + dtype_name(w.type));
    if (w.cols % QK_K) throw Error("repack_kx8: columns must be a multiple of 256");
    if (r0 % kQ4Kx8Rows || (r1 % kQ4Kx8Rows && r1 != w.rows) || r0 < 0 || r1 > w.rows)
        throw Error("repack_kx8: row range must be whole groups of " + std::to_string(kQ4Kx8Rows));
    switch (w.type) {
        case DType::Q4_K: repack_rows<BlockQ4_Kx8, BlockQ4_K>(w, dst, r0, r1); return;
        case DType::Q5_K: repack_rows<BlockQ5_Kx8, BlockQ5_K>(w, dst, r0, r1); return;
        default: repack_rows<BlockQ6_Kx8, BlockQ6_K>(w, dst, r0, r1); return;
    }
}

bool kernels_use_kx8(DType t) {
    const isa::Kernels& k = isa::active();
    switch (t) {
        case DType::Q4_K: return k.q4_kx8 != nullptr;
        case DType::Q5_K: return k.q5_kx8 != nullptr;
        case DType::Q6_K: return k.q6_kx8 != nullptr;
        default: return false;
    }
}

}  // namespace owl::ops
