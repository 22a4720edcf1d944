// Q4_K / Q5_K / Q6_K super-blocks as the CUDA kernels read them (matmul_kquant.cu): the device layout and the
// arithmetic on one 32-element sub-block, as __host__ __device__ functions. The _testing module compiles this same
// header with the host compiler (bindings/testing/cuda_kquant.cpp), so tests/test_cuda_kquant_blocks.py checks on
// any machine that its dequantization is the CPU's, bit for bit, and that its sub-block dot products are exact.
// Plain C++ throughout; the few lines under __CUDA_ARCH__ are device spellings of the same operation (aligned loads,
// a bit cast, dp4a, fma, and multiplies and subtractions that nvcc must not fuse into an FMA) next to their host
// versions.
//
// Device layout (upload_weight, written by pack_row below). Q4_K and Q5_K rows are the file's: their super-blocks
// (144 and 176 bytes) are multiples of 16 bytes and start with 16 bytes {d, dmin, 12 bytes of 6-bit scales and
// mins}. A Q6_K row is its nb super-blocks of 208 bytes {ql[128], qh[64], scales[16]} and then the nb fp16 d's
// padded to a multiple of 16 bytes (the file's 210-byte blocks would break 16-byte alignment; Q4_0 keeps its
// scales at the end of its row the same way, and get_rows, told only cols, still finds them).
//
// Sub-block j (0..7) is elements 32 j .. 32 j + 31 of a super-block, which is one int8 block of the activations
// (quantize_x_kernel rounds blocks of 32). Its quants are 8 words of 4 int8 (word k: elements 4 k .. 4 k + 3):
//   Q4_K  q = 0..15, scale sc and min m of the sub-block:   x = (d * sc) * q - dmin * m
//   Q5_K  q = 0..31, likewise
//   Q6_K  q = -32..31, int8 scale sc0 for elements 0..15, sc1 for 16..31:   x = (d * sc) * q
// The matrix-vector kernel reads a "unit": two sub-blocks (ja, jb) whose quants share one 32-byte run of qs / ql
// (unit_subs).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "owl/dtype.h"

#if defined(__CUDACC__)
#define OWL_KQ_HD __host__ __device__ __forceinline__
#else
#define OWL_KQ_HD inline
#endif

namespace owl {
namespace kq {

OWL_KQ_HD constexpr bool is_kq(DType t) { return t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K; }
// Host side: f(std::integral_constant<DType, TY>{}) with TY = t (Q4_K, Q5_K, anything else as Q6_K: callers check
// is_kq first), so code templated on the type is picked at run time in one place.
template <class F>
inline void with_type(DType t, F&& f) {
    if (t == DType::Q4_K) f(std::integral_constant<DType, DType::Q4_K>{});
    else if (t == DType::Q5_K) f(std::integral_constant<DType, DType::Q5_K>{});
    else f(std::integral_constant<DType, DType::Q6_K>{});
}
// Bytes of one super-block in the device layout (Q6_K: without its d).
OWL_KQ_HD constexpr int block_bytes(DType t) { return t == DType::Q4_K ? 144 : t == DType::Q5_K ? 176 : 208; }
OWL_KQ_HD constexpr int64_t d_plane_bytes(DType t, int64_t nb) { return t == DType::Q6_K ? (nb * 2 + 15) / 16 * 16 : 0; }
OWL_KQ_HD constexpr int64_t row_bytes(DType t, int64_t nb) { return nb * block_bytes(t) + d_plane_bytes(t, nb); }
// The 16 bytes holding a super-block's scales: Q4_K / Q5_K's header {d, dmin, scales[12]}, Q6_K's scales[16].
OWL_KQ_HD constexpr int scale_offset(DType t) { return t == DType::Q6_K ? 192 : 0; }

// Byte offsets in a super-block of word k of sub-block j's low bits (qs / ql) and high bits (Q5_K / Q6_K qh).
OWL_KQ_HD constexpr int q_offset(DType t, int j, int k) {
    return t == DType::Q4_K ? 16 + 32 * (j >> 1) + 4 * k
         : t == DType::Q5_K ? 48 + 32 * (j >> 1) + 4 * k
                            : 64 * (j >> 2) + 32 * (j & 1) + 4 * k;
}
OWL_KQ_HD constexpr int h_offset(DType t, int j, int k) {
    return t == DType::Q5_K ? 16 + 4 * k : t == DType::Q6_K ? 128 + 32 * (j >> 2) + 4 * k : 0;
}
// Unit u (0..3) of a super-block: sub-blocks ja and jb, whose words k sit at the same offsets (one load serves both).
OWL_KQ_HD void unit_subs(DType t, int u, int& ja, int& jb) {
    if (t == DType::Q6_K) {  // ql byte i of a 64-byte half holds elements i (low nibble) and 64 + i (high)
        ja = 4 * (u >> 1) + (u & 1);
        jb = ja + 2;
    } else {  // qs byte i of a 32-byte run holds elements i (low nibble) and 32 + i (high)
        ja = 2 * u;
        jb = 2 * u + 1;
    }
}

// ---- portable primitives ----

OWL_KQ_HD uint32_t load_word(const uint8_t* p) {  // p is 4-byte aligned in the device layout
#ifdef __CUDA_ARCH__
    return *reinterpret_cast<const uint32_t*>(p);
#else
    uint32_t w;
    std::memcpy(&w, p, 4);
    return w;
#endif
}
OWL_KQ_HD uint16_t load_u16(const uint8_t* p) {
#ifdef __CUDA_ARCH__
    return *reinterpret_cast<const uint16_t*>(p);
#else
    uint16_t h;
    std::memcpy(&h, p, 2);
    return h;
#endif
}

// fp16 bits -> float, exactly (every fp16 value is a float).
OWL_KQ_HD float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (e == 0) {  // zero or subnormal: man * 2^-24, exact in float
        const float f = float(man) * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    const uint32_t bits = sign | (e == 0x1f ? 0x7f800000u | (man << 13) : ((e + 112) << 23) | (man << 13));
#ifdef __CUDA_ARCH__
    return __uint_as_float(bits);
#else
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
#endif
}

// c + the dot product of the 4 signed bytes of a and b.
OWL_KQ_HD int dot4(uint32_t a, uint32_t b, int c) {
#ifdef __CUDA_ARCH__
    return __dp4a(int(a), int(b), c);
#else
    for (int e = 0; e < 4; ++e) c += int(int8_t(uint8_t(a >> (8 * e)))) * int(int8_t(uint8_t(b >> (8 * e))));
    return c;
#endif
}

// Single-rounded float products and differences: what the CPU's dequantizer computes, which nvcc would otherwise
// contract into an FMA (one rounding fewer, a different result).
OWL_KQ_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
OWL_KQ_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

// a * b + c rounded once (IEEE fma on both sides, so host and device agree bit for bit).
OWL_KQ_HD float fma_rn(float a, float b, float c) {
#ifdef __CUDA_ARCH__
    return fmaf(a, b, c);
#else
    return std::fma(a, b, c);
#endif
}

// Bytes 0..63 -> value - 32 as int8 in every byte, without borrows between bytes.
OWL_KQ_HD uint32_t bytes_minus32(uint32_t v) { return ((v | 0x80808080u) - 0x20202020u) ^ 0x80808080u; }
// Byte i of the 16 bytes s; selects rather than indexes, so a run-time i keeps s in registers (no local memory).
OWL_KQ_HD int byte_of(const uint32_t (&s)[4], int i) {
    const int k = i >> 2;
    const uint32_t w = k == 0 ? s[0] : k == 1 ? s[1] : k == 2 ? s[2] : s[3];
    return int((w >> (8 * (i & 3))) & 0xffu);
}

// ---- one sub-block ----

// Word k of sub-block j's quants from the word of low bits at q_offset (lo) and of high bits at h_offset (hi).
template <DType TY>
OWL_KQ_HD uint32_t quant_word(uint32_t lo, uint32_t hi, int j) {
    constexpr uint32_t M4 = 0x0f0f0f0fu;
    if constexpr (TY == DType::Q4_K) {
        return (lo >> (4 * (j & 1))) & M4;
    } else if constexpr (TY == DType::Q5_K) {  // fifth bit of element e: bit j of qh[e]
        return ((lo >> (4 * (j & 1))) & M4) | (((hi >> j) & 0x01010101u) << 4);
    } else {  // Q6_K: nibble (j / 2) % 2 of ql, 2 bits at 2 (j % 4) of qh, minus 32
        return bytes_minus32(((lo >> (4 * ((j >> 1) & 1))) & M4) | (((hi >> (2 * (j & 3))) & 0x03030303u) << 4));
    }
}

// Integer scales of sub-block j from the 16 bytes at scale_offset (as 4 words s): sc0 for its elements 0..15,
// sc1 for 16..31, and the min m (0 for Q6_K).
template <DType TY>
OWL_KQ_HD void sub_scales(const uint32_t (&s)[4], int j, int& sc0, int& sc1, int& m) {
    if constexpr (TY == DType::Q6_K) {
        sc0 = int(int8_t(uint8_t(byte_of(s, 2 * j))));
        sc1 = int(int8_t(uint8_t(byte_of(s, 2 * j + 1))));
        m = 0;
    } else {  // scales[i] is byte 4 + i; 6 bits each. j < 4: scales[j] and scales[j + 4]; j >= 4: the low 4
              // bits in scales[j + 4] (scale: low nibble, min: high), the top 2 in scales[j - 4] / scales[j].
        const int hi4 = byte_of(s, 8 + j);
        if (j < 4) {
            sc0 = byte_of(s, 4 + j) & 63;
            m = hi4 & 63;
        } else {
            sc0 = (hi4 & 15) | ((byte_of(s, j) >> 6) << 4);
            m = (hi4 >> 4) | ((byte_of(s, 4 + j) >> 6) << 4);
        }
        sc1 = sc0;
    }
}

// Super-block scales: d and dmin of Q4_K / Q5_K from the header word s0; Q6_K's d from the row's d plane.
template <DType TY>
OWL_KQ_HD void super_scales(uint32_t s0, const uint8_t* row, int64_t nb, int64_t b, float& d, float& dmin) {
    if constexpr (TY == DType::Q6_K) {
        d = half_to_float(load_u16(row + nb * block_bytes(TY) + 2 * b));
        dmin = 0.0f;
    } else {
        d = half_to_float(uint16_t(s0 & 0xffffu));
        dmin = half_to_float(uint16_t(s0 >> 16));
    }
}

// acc + (sub-block . one int8 block of 32 activations): q its 8 quant words, x the activations' words, dx their
// scale, sx the sum of their quants. Integer products are exact (|sc0 p0 + sc1 p1| < 2^24, so float() is too);
// the scales enter through two FMAs, the same on host and device. The min term of Q4_K / Q5_K is
// dmin * m * dx * sx: sum over the sub-block of (dmin * m) * (dx * x).
template <DType TY>
OWL_KQ_HD float sub_dot(const uint32_t (&q)[8], int sc0, int sc1, int m, float d, float dmin, const uint32_t (&x)[8],
                        float dx, int sx, float acc) {
    int p0 = 0, p1 = 0;
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
    for (int k = 0; k < 4; ++k) {
        p0 = dot4(q[k], x[k], p0);
        p1 = dot4(q[k + 4], x[k + 4], p1);
    }
    acc = fma_rn(d * dx, float(sc0 * p0 + sc1 * p1), acc);
    if constexpr (TY != DType::Q6_K) acc = fma_rn(-(dmin * dx), float(m * sx), acc);
    return acc;
}

// Four dequantized elements 4 k .. 4 k + 3 of a sub-block, with the CPU dequantizer's roundings:
// dl = d * sc, ml = dmin * m, x = dl * q - ml (each product and difference rounded on its own).
template <DType TY>
OWL_KQ_HD void dequant_word(uint32_t q, int k, int sc0, int sc1, int m, float d, float dmin, float (&out)[4]) {
    const float dl = mul_rn(d, float(k < 4 ? sc0 : sc1));
    const float ml = mul_rn(dmin, float(m));
    for (int e = 0; e < 4; ++e) {
        const float v = mul_rn(dl, float(int8_t(uint8_t(q >> (8 * e)))));
        out[e] = TY == DType::Q6_K ? v : sub_rn(v, ml);
    }
}

// Elements 4 k .. 4 k + 3 of sub-block j of super-block b of a device-layout row (nb super-blocks): the loads
// and arithmetic of get_rows and of the GEMM's tile loader.
template <DType TY>
OWL_KQ_HD void dequant_row_word(const uint8_t* row, int64_t nb, int64_t b, int j, int k, float (&out)[4]) {
    const uint8_t* sb = row + b * block_bytes(TY);
    uint32_t s[4];
    for (int i = 0; i < 4; ++i) s[i] = load_word(sb + scale_offset(TY) + 4 * i);
    float d, dmin;
    super_scales<TY>(s[0], row, nb, b, d, dmin);
    int sc0, sc1, m;
    sub_scales<TY>(s, j, sc0, sc1, m);
    const uint32_t hi = TY == DType::Q4_K ? 0u : load_word(sb + h_offset(TY, j, k));
    const uint32_t q = quant_word<TY>(load_word(sb + q_offset(TY, j, k)), hi, j);
    dequant_word<TY>(q, k, sc0, sc1, m, d, dmin, out);
}

// ---- host: the device layout ----

// One file row of nb super-blocks of type t -> the device layout (row_bytes(t, nb) bytes, padding zeroed).
inline void pack_row(DType t, const uint8_t* src, int64_t nb, uint8_t* dst) {
    if (t != DType::Q6_K) {
        std::memcpy(dst, src, size_t(nb) * size_t(block_bytes(t)));
        return;
    }
    static_assert(sizeof(BlockQ6_K) == 210 && offsetof(BlockQ6_K, d) == 208, "Q6_K: 208 bytes, then d");
    uint8_t* dplane = dst + nb * 208;
    std::memset(dplane, 0, size_t(d_plane_bytes(t, nb)));
    for (int64_t b = 0; b < nb; ++b) {
        std::memcpy(dst + b * 208, src + b * 210, 208);
        std::memcpy(dplane + 2 * b, src + b * 210 + 208, 2);
    }
}

}  // namespace kq
}  // namespace owl
