// Tensor element types and ggml's block layouts (bit-compatible with ggml and the `gguf` package).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace owl {

// Values are ggml's type ids as stored in GGUF tensor infos.
enum class DType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    IQ4_NL = 20,
    BF16 = 30,
};

constexpr int QK = 32;  // elements per Q4_0 / Q8_0 block

struct BlockQ8_0 {
    uint16_t d;       // fp16 scale
    int8_t qs[QK];    // x = d * q
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block must be 34 bytes");

struct BlockQ4_0 {
    uint16_t d;            // fp16 scale
    uint8_t qs[QK / 2];    // low nibbles: elements 0..15, high nibbles: 16..31; x = d * (q - 8)
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block must be 18 bytes");

// The other blocks of 32 (ggml's layouts). Nibbles as in Q4_0: low = elements 0..15, high = 16..31. Q5 types: bit j
// of qh (little-endian uint32) is bit 4 of element j.
struct BlockQ4_1 {
    uint16_t d, m;         // fp16 scale and minimum
    uint8_t qs[QK / 2];    // x = d * q + m, q = 0..15
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block must be 20 bytes");
struct BlockQ5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK / 2];    // x = d * (q - 16), q = 0..31
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block must be 22 bytes");
struct BlockQ5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QK / 2];    // x = d * q + m, q = 0..31
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block must be 24 bytes");
struct BlockIQ4_NL {
    uint16_t d;
    uint8_t qs[QK / 2];    // x = d * kIQ4NLValues[q]
};
static_assert(sizeof(BlockIQ4_NL) == 18, "IQ4_NL block must be 18 bytes");
// IQ4_NL's non-linear levels (ggml's kvalues_iq4nl).
inline constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// Q4_0 repacked at load time (not a file format): one block of 8 consecutive rows, so a kernel can hold one row
// per 32-bit vector lane. qs[32 * p + 4 * i + m] = row i's qs[4 * p + m] (p = 0..3, m = 0..3): each 32-byte
// quarter holds four bytes of every row, its low nibbles elements 4p..4p+3 and high nibbles 16+4p..16+4p+3.
// The blocks of one 8-row group are consecutive, so group g starts where row 8g would in plain Q4_0.
constexpr int kQ4x8Rows = 8;
struct BlockQ4_0x8 {
    uint16_t d[kQ4x8Rows];
    uint8_t qs[kQ4x8Rows * QK / 2];
};
static_assert(sizeof(BlockQ4_0x8) == kQ4x8Rows * sizeof(BlockQ4_0), "Q4_0x8 block must hold 8 Q4_0 blocks");

// Q8_0 for lane-per-row kernels: block b of 16 consecutive rows, row i in 32-bit lane i. qs[64 q + 4 i + e] is
// element 4 q + e of row i (q = 0..7: one 64-byte vector per four elements of every row); d[i] its scale.
constexpr int kQ8x16Rows = 16;
struct BlockQ8_0x16 {
    int8_t qs[kQ8x16Rows * QK];
    uint16_t d[kQ8x16Rows];
};
static_assert(sizeof(BlockQ8_0x16) == kQ8x16Rows * sizeof(BlockQ8_0), "Q8_0x16 block must hold 16 Q8_0 blocks");

// Q4_1 / Q5_0 / Q5_1 / IQ4_NL repacked at load time for the lane-per-row kernels (q32x8_avx2.h), as Q4_0x8: block b
// of 8 consecutive rows, qs interleaved exactly as in BlockQ4_0x8, then each row's d (and m). The Q5 types keep their
// 32 high bits per row, reordered so that the bit of element 16h + 4p + e (h: high nibble half, p: quarter, e = 0..3)
// sits at bit 8e + 2p + h: then one shift by a constant and one mask put the high bits of quarter p's nibbles in
// place for all 8 rows at once (q32x8_high_bit). Padding rows past the matrix's end are zero blocks (scale 0).
constexpr int kQ32x8Rows = 8;
constexpr int q32x8_high_bit(int element) { return 8 * (element % 4) + 2 * ((element % 16) / 4) + element / 16; }
struct BlockQ4_1x8 {
    uint16_t d[kQ32x8Rows], m[kQ32x8Rows];
    uint8_t qs[kQ32x8Rows * QK / 2];
};
struct BlockQ5_0x8 {
    uint16_t d[kQ32x8Rows];
    uint32_t qh[kQ32x8Rows];  // reordered high bits, see above
    uint8_t qs[kQ32x8Rows * QK / 2];
};
struct BlockQ5_1x8 {
    uint16_t d[kQ32x8Rows], m[kQ32x8Rows];
    uint32_t qh[kQ32x8Rows];
    uint8_t qs[kQ32x8Rows * QK / 2];
};
struct BlockIQ4_NLx8 {
    uint16_t d[kQ32x8Rows];
    uint8_t qs[kQ32x8Rows * QK / 2];
};
static_assert(sizeof(BlockQ4_1x8) == kQ32x8Rows * sizeof(BlockQ4_1) && sizeof(BlockQ5_0x8) == kQ32x8Rows * sizeof(BlockQ5_0) &&
                  sizeof(BlockQ5_1x8) == kQ32x8Rows * sizeof(BlockQ5_1) && sizeof(BlockIQ4_NLx8) == kQ32x8Rows * sizeof(BlockIQ4_NL),
              "an x8 block holds 8 blocks");
static_assert(kQ32x8Rows == kQ4x8Rows, "the x8 layouts share Q4_0x8's driver (gemm_driver.h)");

// ---- K-quants: super-blocks of QK_K = 256 elements (ggml's layouts; values in quant_k.cpp's comments) ----
constexpr int QK_K = 256;

struct BlockQ2_K {
    uint8_t scales[QK_K / 16];  // per 16 elements: low nibble scale, high nibble min
    uint8_t qs[QK_K / 4];       // 2-bit quants
    uint16_t d, dmin;           // fp16 super-block scales of the scales and of the mins
};
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block must be 84 bytes");

struct BlockQ3_K {
    uint8_t hmask[QK_K / 8];    // high bit of each 3-bit quant
    uint8_t qs[QK_K / 4];       // low 2 bits
    uint8_t scales[12];         // 16 signed 6-bit scales (stored + 32)
    uint16_t d;
};
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block must be 110 bytes");

struct BlockQ4_K {
    uint16_t d, dmin;
    uint8_t scales[12];         // 8 scales and 8 mins, 6 bits each
    uint8_t qs[QK_K / 2];       // 4-bit quants
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block must be 144 bytes");

struct BlockQ5_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];       // fifth bit
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block must be 176 bytes");

struct BlockQ6_K {
    uint8_t ql[QK_K / 2];       // low 4 bits
    uint8_t qh[QK_K / 4];       // high 2 bits
    int8_t scales[QK_K / 16];
    uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block must be 210 bytes");

// Activations for K-quant weights (ggml's Q8_K; not a file type): x = d * qs, and bsums[j] = sum of qs[16j..16j+15]
// for the min / offset terms of the weight formats.
struct BlockQ8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
};
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K block must be 292 bytes");

// Q4_K repacked at load time for the lane-per-row kernels (q4kx8_avx2.h; not a file format): super-block b of 8
// consecutive rows, row i in 32-bit lane i. qs[256 c2 + 32 q + 4 i + e] = row i's qs[32 c2 + 4 q + e] (c2 = 0..3,
// q = 0..7, e = 0..3): each 32-byte vector holds four bytes of every row, whose low nibbles are elements
// 64 c2 + 4 q .. + 3 (sub-block 2 c2) and high nibbles 32 more (sub-block 2 c2 + 1). The 6-bit scales and mins
// are unpacked to bytes: sc[8 c + i] = row i's scale of sub-block c (one 8-byte load per sub-block gives all 8
// rows); m[16 p + 2 i + h] = row i's min of sub-block 2 p + h (each row's pair of mins next to each other, for one
// vpmaddwd against the activations' pair of 32-sums). 1184 bytes for 8 rows' 1152: the unpacked scales cost
// 2.8% more bytes and save every row's 6-bit unpacking. Padding rows past the matrix's end are zero.
constexpr int kQ4Kx8Rows = 8;
struct BlockQ4_Kx8 {
    uint16_t d[kQ4Kx8Rows], dmin[kQ4Kx8Rows];
    uint8_t sc[8 * kQ4Kx8Rows];
    uint8_t m[8 * kQ4Kx8Rows];
    uint8_t qs[kQ4Kx8Rows * QK_K / 2];
};
static_assert(sizeof(BlockQ4_Kx8) == 1184, "Q4_Kx8 block: 32 bytes of d / dmin, 128 of scales and mins, 1024 of quants");
static_assert(kQ4Kx8Rows == kQ4x8Rows, "the x8 layouts share Q4_0x8's driver (gemm_driver.h)");

// Q5_K likewise: BlockQ4_Kx8's fields for the low nibbles, scales and mins, plus the fifth bits in the order of one
// 32-byte nibble vector: bit c of qh[32 q + 4 i + e] is the fifth bit (value 16) of row i's element 32 c + 4 q + e,
// so sub-block c's high bits for [4 elements x 8 rows] are one shift and one mask of vector q. 1440 bytes for 1408.
struct BlockQ5_Kx8 {
    uint16_t d[kQ4Kx8Rows], dmin[kQ4Kx8Rows];
    uint8_t sc[8 * kQ4Kx8Rows];
    uint8_t m[8 * kQ4Kx8Rows];
    uint8_t qh[kQ4Kx8Rows * QK_K / 8];
    uint8_t qs[kQ4Kx8Rows * QK_K / 2];
};
static_assert(sizeof(BlockQ5_Kx8) == 1440, "Q5_Kx8 block: Q4_Kx8's fields and 256 bytes of fifth bits");

// Q6_K likewise (no extra bytes: 8 x 210). sc[16 p + 2 i + e] = row i's signed scale 2 p + e (p = 0..7): one
// 16-byte load sign-extended to int16 gives every row's pair (sc[2p], sc[2p+1]) in its 32-bit lane. The 6-bit
// quant u (weight = d * sc * (u - 32)) of row i's element 32 c + 4 q + e: low 4 bits in ql[256 (c/2) + 32 q + 4 i + e]
// (low nibble for even c, high for odd, as BlockQ4_Kx8::qs), top 2 bits at bit 2 (c%4) of qh[256 (c/4) + 32 q + 4 i + e].
struct BlockQ6_Kx8 {
    uint16_t d[kQ4Kx8Rows];
    int8_t sc[16 * kQ4Kx8Rows];
    uint8_t ql[kQ4Kx8Rows * QK_K / 2];
    uint8_t qh[kQ4Kx8Rows * QK_K / 4];
};
static_assert(sizeof(BlockQ6_Kx8) == kQ4Kx8Rows * sizeof(BlockQ6_K), "Q6_Kx8 block must hold 8 Q6_K blocks");

inline bool dtype_is_kquant(DType t) { return t >= DType::Q2_K && t <= DType::Q6_K; }

// True when `id` is one of the types above.
bool dtype_supported(uint32_t id);
const char* dtype_name(DType t);
// Elements per block and bytes per block (1 and the element size for plain types).
int64_t dtype_block_elems(DType t);
int64_t dtype_block_bytes(DType t);
// Bytes of one row of `n` elements; n must be a multiple of the block size.
inline int64_t dtype_row_bytes(DType t, int64_t n) { return n / dtype_block_elems(t) * dtype_block_bytes(t); }

inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; --exp; }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// Round-to-nearest-even, as numpy's float16 cast.
inline uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    const uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000) return uint16_t(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));  // inf/nan
    if (absx >= 0x477ff000) return uint16_t(sign | 0x7c00);  // overflow to inf (>= 65520)
    if (absx < 0x38800000) {  // subnormal half or zero
        if (absx < 0x33000000) return uint16_t(sign);  // < 2^-25 rounds to zero
        const uint32_t e = absx >> 23;
        const uint32_t m = (absx & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e;  // value / 2^-24 == m >> shift
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) ++r;
        return uint16_t(sign | r);
    }
    uint32_t h = ((absx >> 13) - ((127 - 15) << 10));
    const uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
    return uint16_t(sign | h);
}

inline float bf16_to_fp32(uint16_t h) {
    uint32_t bits = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

}  // namespace owl
