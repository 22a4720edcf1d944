// Internal interface between the dispatchers (matmul.cpp, attention.cpp, activation.cpp; isa.cpp picks the set)
// and the per-instruction-set kernel files (matmul_generic.cpp, matmul_avx2*.cpp, matmul_avx512*.cpp,
// matmul_neon.cpp).
//
// Each kernel file is compiled with its own target flags (CMakeLists.txt), so it must not instantiate any inline
// or template function that another file also instantiates: the linker keeps one copy of such a function, and it
// could be the AVX-512 one called from generic code. Kernel files therefore include only this header, dtype.h's
// block structs (no calls to its inline helpers), <cstdint>/<cstring> and intrinsics headers, and the shared
// kernel headers that follow the same rule (gemm_driver.h, attention_kernel.h, vec_math.h, q4x8_avx2.h,
// q32x8_avx2.h, q4kx8_avx2.h, q6kx8_avx2.h, quant_act_avx2.h); and they keep everything they define in an unnamed namespace, apart from their
// one kernels_*() entry point.
#pragma once
#include <cstdint>

#include "owl/dtype.h"

namespace owl::ops::isa {

// One call of a kernel: rows [r0, r1) of W against all T tokens, columns [k0, k1) of every row.
// Plain data only (see above).
struct GemmArgs {
    const uint8_t* w = nullptr;   // weight rows, row r at w + r * row_bytes
    int64_t row_bytes = 0;
    int64_t K = 0;                // columns (elements)
    int64_t T = 0;                // tokens
    int64_t N = 0;                // rows of W = row stride of y
    const float* x = nullptr;     // [T][K] float activations (F32 / F16 / BF16 weights)
    const int8_t* xq = nullptr;   // [T][K] activations quantized to int8 (Q8_0 / Q4_0 weights), token stride K
    const float* xd = nullptr;    // [T][K / 32] their per-block scales (fp32, not rounded to fp16)
    const int32_t* xs = nullptr;  // [T][K / 32] per-block sums of xq (x8 / x16 kernels, and Q8_0 where Kernels::q8_sums)
    const float* f16 = nullptr;   // fp16 -> fp32 table (65536 entries) for the block scales
    const float* bias = nullptr;  // [N] or null
    float* y = nullptr;           // [T][N]
    // Cache blocking: tokens in blocks of tb, and within a block columns in chunks of kc (a multiple of 256), so
    // the activations of one (token block, column chunk) stay in cache while every row of a thread's range
    // passes over them. tb >= T: one token block; kc >= K: one chunk.
    int64_t tb = 0;
    int64_t kc = 0;
    // Float weights with T >= kPanelMinTokens run on packed panels (float_panels.h) and need kPanelScratchFloats
    // floats of work space, 64-byte aligned, of the calling thread's own.
    float* scratch = nullptr;
    const BlockQ8_K* xk = nullptr;  // [T][K / 256] Q8_K activations (K-quant weights), token stride K / 256 blocks
};
constexpr int64_t kPanelMinTokens = 16;
constexpr int64_t kPanelScratchFloats = (192 + 6) * 256 + 16 * 256;  // a token block's activations + a weight panel

// Rows [r0, r1) of y = W x (+ bias). The result of one (row, token) pair never depends on r0, r1 or on which
// other rows and tokens share its register tile, so any split over threads gives bit-identical output.
using GemmFn = void (*)(const GemmArgs& a, int64_t r0, int64_t r1);

// Quantizes one token's activations: for each block of 32, d = amax / 127, q = roundf(x / d) (ggml's Q8_0 rule,
// bit-identical q to quantize_row_q8_0; d is kept in fp32). A kernel may ask for the bytes of each pair of blocks
// in another order (quantize_q4 below); the scales are always one per block, in order.
using QuantizeFn = void (*)(const float* x, int64_t K, int8_t* qs, float* d);

// One unit of attention work (ops::attention splits the work into these): query heads [h0, h1), all of one KV
// head's group, for batch tokens [t0, t1), against up to two key spans in order (Owl3's visual prefix, then the
// causal text keys), in one softmax. Rows of the unit are (token, head) pairs, token-major.
constexpr int kAttnKeyBlock = 16;  // keys per step of the online softmax
struct AttnSpan {
    const void* k = nullptr;  // key j at element j * stride of k, head_dim elements; values likewise
    const void* v = nullptr;
    int64_t stride = 0;       // in elements
    bool f16 = false;         // elements are fp16 (uint16_t bits), else float
    const int64_t* visible = nullptr;  // token t sees keys [0, visible[t]); null: [0, causal_base + t + 1)
    int64_t causal_base = 0;
};
struct AttnArgs {
    const float* q = nullptr;  // [T][n_head][head_dim]
    float* out = nullptr;      // [T][n_head][head_dim]
    int64_t n_head = 0, head_dim = 0;
    int64_t t0 = 0, t1 = 0, h0 = 0, h1 = 0;
    float scale = 1.0f;
    AttnSpan spans[2];
    int n_spans = 0;
    // Scratch of attention_work_floats(rows, head_dim) floats, rows = (t1 - t0) * (h1 - h0), hd8 = head_dim
    // rounded up to a multiple of 8: Q [rows][hd8], O [rows][hd8], K^T [hd8][16], V [16][hd8] (a block's K rows
    // pass through it on their way to K^T), S [rows][16], m [rows], l [rows].
    float* work = nullptr;
};
using AttnFn = void (*)(const AttnArgs& a);
int64_t attention_work_floats(int64_t rows, int64_t head_dim);  // defined in attention.cpp

struct Kernels {
    const char* name;
    QuantizeFn quantize_q8;  // activations for Q8_0 weights
    QuantizeFn quantize_q4;  // activations for Q4_0 weights: same values, possibly in a kernel-specific byte order
    GemmFn f32, f16, bf16, q8_0, q4_0;
    GemmFn q4_0x8;  // BlockQ4_0x8 weights (WeightView::packed_q4x8) against quantize_q8 activations + xs; may be null
    AttnFn attention;
    void (*swiglu)(const float* gate, const float* up, float* out, int64_t n);
    // dst[i] = fp16 bits of src[i], round-to-nearest-even (overflow to inf, subnormals kept; NaN stays NaN).
    void (*store_f16)(const float* src, uint16_t* dst, int64_t n);
    bool q8_sums;  // the q8_0 kernel reads GemmArgs::xs
    GemmFn q8_0x16;  // BlockQ8_0x16 weights (WeightView::packed_q8x16) against quantize_q8 activations + xs; may be null
    // Q4_1 / Q5_0 / Q5_1 / IQ4_NL weights (matmul_q32_*.h) against quantize_q4 activations (no xs).
    GemmFn q4_1, q5_0, q5_1, iq4_nl;
    // K-quant weights (matmul_kquant_*.inc) against Q8_K activations (GemmArgs::xk) from quantize_q8_k, which
    // gives the same bytes as quantize_row_q8_k_ref (quant_k.h) in every variant.
    GemmFn q2_k, q3_k, q4_k, q5_k, q6_k;
    void (*quantize_q8_k)(const float* x, int64_t K, BlockQ8_K* out);
    // Their x8 layouts (WeightView::packed_q32x8, q32x8_avx2.h) against quantize_q8 activations + xs; may be null.
    GemmFn q4_1x8, q5_0x8, q5_1x8, iq4_nlx8;
    // Q4_K in BlockQ4_Kx8 (WeightView::packed_kx8, q4kx8_avx2.h) against Q8_K activations (GemmArgs::xk), with
    // GemmArgs::row_bytes = kx8_bytes(Q4_K, 8, K) / 8; may be null.
    GemmFn q4_kx8;
    // Q5_K in BlockQ5_Kx8 (q4kx8_avx2.h) and Q6_K in BlockQ6_Kx8 (q6kx8_avx2.h), the same way; may be null.
    GemmFn q5_kx8, q6_kx8;
};

// F16 / BF16 weights against kAmxMinTokens or more tokens on AMX tiles (matmul_amx.cpp; bf16 products of split
// activations, see there), for any other type or where the file was not compiled: nullptr. Only for a CPU where
// amx_usable() and the avx512_vnni kernels active; it has a work space of its own per thread, and where that cannot
// be allocated it runs avx512_vnni's panels, which read GemmArgs::scratch.
GemmFn amx_gemm(DType type);
constexpr int64_t kAmxMinTokens = kPanelMinTokens;  // where the panels would run: a token's result is then the same
                                                     // in every batch of 16 or more (test_kernels_isa.py)
// The CPU has AMX-TILE, AMX-BF16 and AVX512-BF16 and the OS lets this process use the tile registers (on Linux,
// permission is asked for once, process-wide). False where the build has no AMX kernels.
bool amx_usable();

// Entry points of the kernel files. Those whose file was not compiled for this target return nullptr.
const Kernels* kernels_generic();
const Kernels* kernels_avx2();
const Kernels* kernels_avx2_vnni();
const Kernels* kernels_avx512();
const Kernels* kernels_avx512_vnni();
const Kernels* kernels_neon();

// The kernels in use: the best the CPU supports, or the one named by OWL_CPU_ISA / set_isa(). Throws owl::Error
// when OWL_CPU_ISA names an unknown variant or one this CPU (or this build) cannot run.
const Kernels& active();

}  // namespace owl::ops::isa
