// One K-quant super-block (QK_K = 256 elements) in a common, plain form: element i is
//   (d * sc[i / 16]) * q[i] - (dmin * m[i / 16])      (the min term only where the type has one)
// with small integers q, sc, m. This is how the reference dequantizer (quant.cpp), the generic kernels and the
// NEON kernels read the five formats; the x86 kernels decode the same bits straight into registers.
//
// The bit layouts (ggml's, as `gguf.quants` reads them), element e = 0..255:
//   Q2_K  q = (qs[32 (e / 128) + e % 32] >> 2 ((e / 32) % 4)) & 3;  scales[e / 16]: low nibble sc, high nibble m.
//   Q3_K  q = low 2 bits as Q2_K from qs, minus 4 unless bit e / 32 of hmask[e % 32] is set (-4..3);
//         sc: 16 6-bit values (low 4 bits in scales[0..7], high 2 bits in scales[8..11]) minus 32.
//   Q4_K  q = nibble (e / 32) % 2 of qs[32 (e / 64) + e % 32];  8 6-bit scales and 8 6-bit mins, one per 32.
//   Q5_K  as Q4_K, plus bit e / 32 of qh[e % 32] as the fifth bit (value 16).
//   Q6_K  q = (nibble (e % 128) / 64 of ql[64 (e / 128) + e % 64]) | (2 bits at 2 ((e % 128) / 32) of
//         qh[32 (e / 128) + e % 32]) << 4, minus 32;  sc = int8 scales[e / 16].
//
// Internal linkage only (see isa.h: kernel files may include this header).
#pragma once
#include <cstdint>
#include <cstring>

#include "owl/dtype.h"

namespace owl::ops {
void quantize_row_q8_k_ref(const float* x, BlockQ8_K* out, int64_t n);  // quant_k.cpp (the generic kernels use it)
}  // namespace owl::ops

namespace owl::ops::isa {
namespace {

struct KBlock {
    int8_t q[QK_K];
    int16_t sc[QK_K / 16];
    int16_t m[QK_K / 16];  // zero for Q3_K / Q6_K
    float d, dmin;         // dmin 0 for Q3_K / Q6_K
};

// 12 bytes of Q4_K / Q5_K scales -> 8 scales (sc) and 8 mins (m), 6 bits each. Bytes 0-3 hold the low 6 bits
// of scales 0-3, bytes 4-7 those of mins 0-3; bytes 8-11 the low nibbles of scales 4-7 (low half) and mins 4-7
// (high half), whose top 2 bits sit in the top 2 bits of bytes 0-3 (scales) and 4-7 (mins).
inline void k4_scales(const uint8_t* s, uint8_t* sc, uint8_t* m) {
    uint32_t w0, w1, w2;
    std::memcpy(&w0, s, 4);
    std::memcpy(&w1, s + 4, 4);
    std::memcpy(&w2, s + 8, 4);
    const uint32_t s_lo = w0 & 0x3f3f3f3fu, m_lo = w1 & 0x3f3f3f3fu;
    const uint32_t s_hi = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
    const uint32_t m_hi = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
    std::memcpy(sc, &s_lo, 4);
    std::memcpy(sc + 4, &s_hi, 4);
    std::memcpy(m, &m_lo, 4);
    std::memcpy(m + 4, &m_hi, 4);
}

// 12 bytes of Q3_K scales -> 16 values 0..63 (subtract 32 for the signed scale). Scale k: low 4 bits are nibble
// k / 8 of byte k % 8, high 2 bits are bits 2 (k / 4) of byte 8 + k % 4.
inline void k3_scales(const uint8_t* s, uint8_t* out) {
    uint32_t w0, w1, w2;
    std::memcpy(&w0, s, 4);
    std::memcpy(&w1, s + 4, 4);
    std::memcpy(&w2, s + 8, 4);
    const uint32_t lo4 = 0x0f0f0f0fu, hi2 = 0x03030303u;
    const uint32_t v[4] = {
        (w0 & lo4) | ((w2 & hi2) << 4),
        (w1 & lo4) | (((w2 >> 2) & hi2) << 4),
        ((w0 >> 4) & lo4) | (((w2 >> 4) & hi2) << 4),
        ((w1 >> 4) & lo4) | (((w2 >> 6) & hi2) << 4),
    };
    std::memcpy(out, v, 16);
}

inline void decode_q2_k(const BlockQ2_K& b, const float* f16, KBlock& o) {
    o.d = f16[b.d];
    o.dmin = f16[b.dmin];
    for (int k = 0; k < 16; ++k) {
        o.sc[k] = int16_t(b.scales[k] & 0x0f);
        o.m[k] = int16_t(b.scales[k] >> 4);
    }
    for (int e = 0; e < QK_K; ++e) o.q[e] = int8_t((b.qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3);
}

inline void decode_q3_k(const BlockQ3_K& b, const float* f16, KBlock& o) {
    o.d = f16[b.d];
    o.dmin = 0.0f;
    uint8_t s[16];
    k3_scales(b.scales, s);
    for (int k = 0; k < 16; ++k) {
        o.sc[k] = int16_t(int(s[k]) - 32);
        o.m[k] = 0;
    }
    for (int e = 0; e < QK_K; ++e) {
        const int lo = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
        const int hi = (b.hmask[e % 32] >> (e / 32)) & 1;
        o.q[e] = int8_t(lo - (hi ? 0 : 4));
    }
}

// Q4_K and Q5_K share their header: d, dmin and eight 6-bit (scale, min) pairs, one pair per 32 elements.
template <class B>
inline void decode_k4_header(const B& b, const float* f16, KBlock& o) {
    o.d = f16[b.d];
    o.dmin = f16[b.dmin];
    uint8_t sc[8], m[8];
    k4_scales(b.scales, sc, m);
    for (int k = 0; k < 16; ++k) {
        o.sc[k] = sc[k / 2];
        o.m[k] = m[k / 2];
    }
}

inline void decode_q4_k(const BlockQ4_K& b, const float* f16, KBlock& o) {
    decode_k4_header(b, f16, o);
    for (int e = 0; e < QK_K; ++e) o.q[e] = int8_t((b.qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 0x0f);
}

inline void decode_q5_k(const BlockQ5_K& b, const float* f16, KBlock& o) {
    decode_k4_header(b, f16, o);
    for (int e = 0; e < QK_K; ++e) {
        const int lo = (b.qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 0x0f;
        const int hi = (b.qh[e % 32] >> (e / 32)) & 1;
        o.q[e] = int8_t(lo | (hi << 4));
    }
}

inline void decode_q6_k(const BlockQ6_K& b, const float* f16, KBlock& o) {
    o.d = f16[b.d];
    o.dmin = 0.0f;
    for (int k = 0; k < 16; ++k) {
        o.sc[k] = b.scales[k];
        o.m[k] = 0;
    }
    for (int e = 0; e < QK_K; ++e) {
        const int h = e / 128, r = e % 128;
        const int lo = (b.ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
        const int hi = (b.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
        o.q[e] = int8_t((lo | (hi << 4)) - 32);
    }
}

// Decodes super-block `b` of a row of type t (one of the five K types).
inline void decode_k(DType t, const uint8_t* row, int64_t b, const float* f16, KBlock& o) {
    switch (t) {
        case DType::Q2_K: decode_q2_k(reinterpret_cast<const BlockQ2_K*>(row)[b], f16, o); return;
        case DType::Q3_K: decode_q3_k(reinterpret_cast<const BlockQ3_K*>(row)[b], f16, o); return;
        case DType::Q4_K: decode_q4_k(reinterpret_cast<const BlockQ4_K*>(row)[b], f16, o); return;
        case DType::Q5_K: decode_q5_k(reinterpret_cast<const BlockQ5_K*>(row)[b], f16, o); return;
        default: decode_q6_k(reinterpret_cast<const BlockQ6_K*>(row)[b], f16, o); return;
    }
}

// Only the scales of super-block b: sc[k] per 16 elements, and the term subtracted per 16 elements as an
// integer multiple of dmin_out: the min m[k] (Q2_K, Q4_K, Q5_K; dmin_out = dmin), or the offset times the scale
// (Q3_K 4 sc[k], Q6_K 32 sc[k]; dmin_out = d), with the quants then read unsigned (q + 4, q + 32).
inline void decode_k_scales(DType t, const uint8_t* row, int64_t b, const float* f16, int16_t* sc, int16_t* m,
                            float& d, float& dmin_out) {
    switch (t) {
        case DType::Q2_K: {
            const BlockQ2_K& k = reinterpret_cast<const BlockQ2_K*>(row)[b];
            d = f16[k.d];
            dmin_out = f16[k.dmin];
            for (int i = 0; i < 16; ++i) {
                sc[i] = int16_t(k.scales[i] & 0x0f);
                m[i] = int16_t(k.scales[i] >> 4);
            }
            return;
        }
        case DType::Q3_K: {
            const BlockQ3_K& k = reinterpret_cast<const BlockQ3_K*>(row)[b];
            d = dmin_out = f16[k.d];
            uint8_t s[16];
            k3_scales(k.scales, s);
            for (int i = 0; i < 16; ++i) {
                sc[i] = int16_t(int(s[i]) - 32);
                m[i] = int16_t(4 * sc[i]);
            }
            return;
        }
        case DType::Q6_K: {
            const BlockQ6_K& k = reinterpret_cast<const BlockQ6_K*>(row)[b];
            d = dmin_out = f16[k.d];
            for (int i = 0; i < 16; ++i) {
                sc[i] = k.scales[i];
                m[i] = int16_t(32 * sc[i]);
            }
            return;
        }
        default: {  // Q4_K, Q5_K: the same header
            const BlockQ4_K& k = *reinterpret_cast<const BlockQ4_K*>(row + b * (t == DType::Q4_K ? sizeof(BlockQ4_K) : sizeof(BlockQ5_K)));
            d = f16[k.d];
            dmin_out = f16[k.dmin];
            uint8_t s8[8], m8[8];
            k4_scales(k.scales, s8, m8);
            for (int i = 0; i < 16; ++i) {
                sc[i] = s8[i / 2];
                m[i] = m8[i / 2];
            }
            return;
        }
    }
}

inline bool k_has_min(DType t) { return t == DType::Q2_K || t == DType::Q4_K || t == DType::Q5_K; }

}  // namespace
}  // namespace owl::ops::isa
