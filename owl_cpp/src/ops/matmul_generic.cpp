// Portable kernels (plain C++, baseline flags): the fallback on any CPU and the reference the SIMD variants are
// compared with. Float weights (F32/F16/BF16) dot float activations with eight partial sums per (row, token);
// Q8_0/Q4_0 weights dot int8-quantized activations block by block in integers, as ggml does:
// y = sum_blocks d_w * d_x * sum_i(q_w * q_x).
#include <cmath>
#include <cstring>

#include "fp16_table.h"
#include "attention_kernel.h"
#include "float_panels.h"
#include "gemm_driver.h"
#include "isa.h"
#include "matmul_q32_generic.h"
#include "kquant_decode.h"

namespace owl::ops::isa {
namespace {

void quantize_generic(const float* x, int64_t K, int8_t* qs, float* d) {
    for (int64_t b = 0; b < K / QK; ++b) {
        const float* xb = x + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
        const float db = amax / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        for (int j = 0; j < QK; ++j) qs[b * QK + j] = int8_t(std::roundf(xb[j] * id));
    }
}

// ---- float weights ----

struct LoadF32 {
    static void load8(const uint8_t* row, int64_t k, float* out) { std::memcpy(out, row + k * 4, 32); }
    static float one(const uint8_t* row, int64_t k) { float v; std::memcpy(&v, row + k * 4, 4); return v; }
};
struct LoadF16 {
    static void load8(const uint8_t* row, int64_t k, float* out) {
        uint16_t h[8];
        std::memcpy(h, row + k * 2, 16);
        for (int l = 0; l < 8; ++l) out[l] = fp16_lookup(h[l]);
    }
    static float one(const uint8_t* row, int64_t k) { uint16_t h; std::memcpy(&h, row + k * 2, 2); return fp16_lookup(h); }
};
struct LoadBF16 {
    static float cvt(uint16_t h) { const uint32_t u = uint32_t(h) << 16; float f; std::memcpy(&f, &u, 4); return f; }
    static void load8(const uint8_t* row, int64_t k, float* out) {
        uint16_t h[8];
        std::memcpy(h, row + k * 2, 16);
        for (int l = 0; l < 8; ++l) out[l] = cvt(h[l]);
    }
    static float one(const uint8_t* row, int64_t k) { uint16_t h; std::memcpy(&h, row + k * 2, 2); return cvt(h); }
};

template <class Load>
struct FloatTiles {
    static constexpr int R = 4, TT = 4;
    template <int NR, int NT>
    static void run(const GemmArgs& a, int64_t r, int64_t t, int64_t k0, int64_t k1, bool first) {
        const uint8_t* w[NR];
        for (int i = 0; i < NR; ++i) w[i] = a.w + (r + i) * a.row_bytes;
        const float* x[NT];
        for (int j = 0; j < NT; ++j) x[j] = a.x + (t + j) * a.K;
        float acc[NR][NT][8] = {};
        int64_t k = k0;
        for (; k + 8 <= k1; k += 8) {
            float wv[NR][8];
            for (int i = 0; i < NR; ++i) Load::load8(w[i], k, wv[i]);
            for (int i = 0; i < NR; ++i)
                for (int j = 0; j < NT; ++j)
                    for (int l = 0; l < 8; ++l) acc[i][j][l] += wv[i][l] * x[j][k + l];
        }
        for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NT; ++j) {
                float tail = 0.0f;
                for (int64_t kk = k; kk < k1; ++kk) tail += Load::one(w[i], kk) * x[j][kk];
                const float* s = acc[i][j];
                put(a, r + i, t + j, tail + (((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))), first);
            }
    }
};

// Conversion of a run of columns to fp32 for float_panels.h.
template <class Load>
struct PanelLoad {
    static void to_f32(const uint8_t* row, int64_t k, int64_t n, float* out) {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) Load::load8(row, k + i, out + i);
        for (; i < n; ++i) out[i] = Load::one(row, k + i);
    }
};
template <class Load>
constexpr GemmFn kFloatGemm = gemm_float<PanelLoad<Load>, FloatTiles<Load>>;

// ---- quantized weights x int8 activations ----

struct Q8Weights {
    static float scale(const uint8_t* row, int64_t b) { return fp16_lookup(reinterpret_cast<const BlockQ8_0*>(row)[b].d); }
    static void unpack(const uint8_t* row, int64_t b, int8_t* out) {
        std::memcpy(out, reinterpret_cast<const BlockQ8_0*>(row)[b].qs, QK);
    }
};
struct Q4Weights {
    static float scale(const uint8_t* row, int64_t b) { return fp16_lookup(reinterpret_cast<const BlockQ4_0*>(row)[b].d); }
    static void unpack(const uint8_t* row, int64_t b, int8_t* out) {
        const uint8_t* q = reinterpret_cast<const BlockQ4_0*>(row)[b].qs;
        for (int l = 0; l < QK / 2; ++l) {
            out[l] = int8_t(int(q[l] & 0x0f) - 8);
            out[l + QK / 2] = int8_t(int(q[l] >> 4) - 8);
        }
    }
};

inline int32_t dot_i8(const int8_t* a, const int8_t* b) {
    int32_t s = 0;
    for (int l = 0; l < QK; ++l) s += int32_t(a[l]) * int32_t(b[l]);
    return s;
}

// Each weight block is unpacked to int8 once per tile and reused for all of its tokens.
template <class W>
struct QuantTiles {
    static constexpr int R = 4, TT = 4;
    template <int NR, int NT>
    static void run(const GemmArgs& a, int64_t r, int64_t t, int64_t k0, int64_t k1, bool first) {
        const uint8_t* w[NR];
        for (int i = 0; i < NR; ++i) w[i] = a.w + (r + i) * a.row_bytes;
        const int64_t nb = a.K / QK;
        float acc[NR][NT] = {};
        for (int64_t b = k0 / QK; b < k1 / QK; ++b) {
            int8_t wq[NR][QK];
            float dw[NR];
            for (int i = 0; i < NR; ++i) {
                W::unpack(w[i], b, wq[i]);
                dw[i] = W::scale(w[i], b);
            }
            for (int j = 0; j < NT; ++j) {
                const int8_t* xq = a.xq + (t + j) * a.K + b * QK;
                const float dx = a.xd[(t + j) * nb + b];
                for (int i = 0; i < NR; ++i) acc[i][j] += float(dot_i8(wq[i], xq)) * (dw[i] * dx);
            }
        }
        for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NT; ++j) put(a, r + i, t + j, acc[i][j], first);
    }
};

// BlockQ4_0x8 weights: the plain form of the lane-per-row kernels (see dtype.h for the layout). The nibble
// products are summed unsigned and corrected by 8 * sum(x) (GemmArgs::xs), which is exactly the signed dot.
struct Q4x8Tiles {
    static constexpr int NG = 1, NG_LONG = 1, TT = 4;
    template <int NG_, int NT>
    static void run(const GemmArgs& a, int64_t g, int64_t t, int64_t b0, int64_t b1, bool first) {
        for (int gi = 0; gi < NG_; ++gi) group<NT>(a, g + gi, t, b0, b1, first);
    }
    template <int NT>
    static void group(const GemmArgs& a, int64_t g, int64_t t, int64_t b0, int64_t b1, bool first) {
        const BlockQ4_0x8* w = reinterpret_cast<const BlockQ4_0x8*>(a.w + g * kQ4x8Rows * a.row_bytes);
        const int64_t nb = a.K / QK;
        float acc[NT][kQ4x8Rows] = {};
        for (int64_t b = b0; b < b1; ++b) {
            const BlockQ4_0x8& blk = w[b];
            for (int j = 0; j < NT; ++j) {
                const int8_t* xq = a.xq + (t + j) * a.K + b * QK;
                const float dx = a.xd[(t + j) * nb + b];
                const int32_t corr = 8 * a.xs[(t + j) * nb + b];
                for (int i = 0; i < kQ4x8Rows; ++i) {
                    int32_t sum = 0;
                    for (int p = 0; p < 4; ++p)
                        for (int m = 0; m < 4; ++m) {
                            const int q = blk.qs[32 * p + 4 * i + m];
                            sum += (q & 0x0f) * xq[4 * p + m] + (q >> 4) * xq[16 + 4 * p + m];
                        }
                    acc[j][i] += float(sum - corr) * (fp16_lookup(blk.d[i]) * dx);
                }
            }
        }
        for (int j = 0; j < NT; ++j) put_group(a, g, t + j, acc[j], first);
    }
};

#include "matmul_kquant_generic.inc"

const Kernels kGeneric = {
    "generic",
    quantize_generic,
    quantize_generic,
    kFloatGemm<LoadF32>,
    kFloatGemm<LoadF16>,
    kFloatGemm<LoadBF16>,
    drive<QuantTiles<Q8Weights>>,
    drive<QuantTiles<Q4Weights>>,
    drive_q4x8<Q4x8Tiles>,
    attend_unit,
    swiglu_v,
    store_f16_row,
    false,    // q8_sums
    nullptr,  // q8_0x16
    drive<Q32Tiles<Q41Plain>>,
    drive<Q32Tiles<Q50Plain>>,
    drive<Q32Tiles<Q51Plain>>,
    drive<Q32Tiles<IQ4Plain>>,
    drive<KQuantTiles<DType::Q2_K>>,
    drive<KQuantTiles<DType::Q3_K>>,
    drive<KQuantTiles<DType::Q4_K>>,
    drive<KQuantTiles<DType::Q5_K>>,
    drive<KQuantTiles<DType::Q6_K>>,
    quantize_q8_k_generic,
    nullptr, nullptr, nullptr, nullptr,  // no x8 kernels for Q4_1 / Q5_0 / Q5_1 / IQ4_NL
    nullptr, nullptr, nullptr,  // q4_kx8, q5_kx8, q6_kx8: the K-quants stay in the file's layout
};

}  // namespace

const Kernels* kernels_generic() { return &kGeneric; }

}  // namespace owl::ops::isa
