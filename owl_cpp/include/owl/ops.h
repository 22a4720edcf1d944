// CPU ops. Each op has a plain reference (`*_ref`: scalar, obviously correct, double accumulation) that the
// fast multithreaded version is tested against. Layouts are row-major; a "row" is ggml's ne[0].
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "owl/dtype.h"
#include "owl/threadpool.h"

namespace owl {

// A 2-D weight matrix [rows = output features][cols = input features] in any supported type.
struct WeightView {
    DType type = DType::F32;
    int64_t rows = 0;
    int64_t cols = 0;
    const void* data = nullptr;
    // Optional copy of a Q4_0 matrix in the BlockQ4_0x8 layout (rows padded to a multiple of 8 with zero
    // blocks); matmul uses it when the active kernels can, and `data` otherwise.
    const void* packed_q4x8 = nullptr;
    // Likewise a Q8_0 matrix in the BlockQ8_0x16 layout (rows padded to a multiple of 16 with zero blocks).
    const void* packed_q8x16 = nullptr;
    // Likewise a Q4_1 / Q5_0 / Q5_1 / IQ4_NL matrix in its x8 layout (BlockQ4_1x8 ..., rows padded to a multiple of 8).
    const void* packed_q32x8 = nullptr;
    // Likewise a Q4_K / Q5_K / Q6_K matrix in its x8 layout (BlockQ4_Kx8 / BlockQ5_Kx8 / BlockQ6_Kx8 as `type`
    // says; rows padded to a multiple of 8).
    const void* packed_kx8 = nullptr;
    int64_t row_bytes() const { return dtype_row_bytes(type, cols); }
    const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * row_bytes(); }
};

enum class RopeMode { Norm, Neox };  // Norm: pairs (2i, 2i+1) (llama GGUFs); Neox: pairs (i, i + d/2) (qwen2)

namespace ops {

// Row conversion between storage types and float. `n` must be a multiple of the type's block size.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
void quantize_row_q8_0(const float* src, BlockQ8_0* dst, int64_t n);
void quantize_row_q4_0(const float* src, BlockQ4_0* dst, int64_t n);

// Q4_0 -> BlockQ4_0x8 (see dtype.h): bytes needed, and the copy of rows [r0, r1) (multiples of 8, or r1 = rows).
int64_t q4x8_bytes(int64_t rows, int64_t cols);
void repack_q4x8(const WeightView& w, void* dst, int64_t r0, int64_t r1);
// Whether the active kernels have a BlockQ4_0x8 path (a model repacks its Q4_0 matrices at load only then).
bool kernels_use_q4x8();
// Q8_0 -> BlockQ8_0x16, the same way (row ranges in whole groups of 16, or r1 = rows).
int64_t q8x16_bytes(int64_t rows, int64_t cols);
void repack_q8x16(const WeightView& w, void* dst, int64_t r0, int64_t r1);
bool kernels_use_q8x16();
// Q4_1 / Q5_0 / Q5_1 / IQ4_NL -> their x8 layouts (dtype.h), the same way (whole groups of 8 rows, or r1 = rows).
int64_t q32x8_bytes(DType t, int64_t rows, int64_t cols);
void repack_q32x8(const WeightView& w, void* dst, int64_t r0, int64_t r1);
bool kernels_use_q32x8(DType t);
// Q4_K / Q5_K / Q6_K -> BlockQ4_Kx8 / BlockQ5_Kx8 / BlockQ6_Kx8, the same way (whole groups of 8 rows, or
// r1 = rows). kernels_use_kx8 is false for any other type.
bool is_kx8_type(DType t);
int64_t kx8_bytes(DType t, int64_t rows, int64_t cols);
void repack_kx8(const WeightView& w, void* dst, int64_t r0, int64_t r1);
bool kernels_use_kx8(DType t);

// y[t][r] = sum_k x[t][k] * W[r][k]  (+ bias[r] when bias != nullptr); x: [T][cols], y: [T][rows].
void matmul(ThreadPool& pool, const WeightView& w, const float* x, int64_t T, const float* bias, float* y);
void matmul_ref(const WeightView& w, const float* x, int64_t T, const float* bias, float* y);
// Several products of one input x [T][cols] (a layer's Q / K / V), each bit-identical to its own matmul, run as
// one parallel job: the input is quantized once per activation format, and the threads meet once instead of
// once per product, which is a good part of a small model's decode step. At most kMatmulManyMax products.
constexpr int kMatmulManyMax = 4;
struct MatmulTarget {
    const WeightView* w;
    const float* bias;  // or null
    float* y;           // [T][w->rows]
};
void matmul_many(ThreadPool& pool, const MatmulTarget* targets, int n, const float* x, int64_t T);
// out = silu(W_gate x) * (W_up x) (the SwiGLU FFN's first half) in one parallel job: each thread combines the gate
// and up rows it has just computed. up_out [T][rows] receives W_up x; out [T][rows]. Bit-identical to two matmuls
// and swiglu.
void matmul_swiglu(ThreadPool& pool, const WeightView& gate, const WeightView& up, const float* x, int64_t T, float* out,
                   float* up_out);

// matmul's instruction-set variants: "generic", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "neon". By default
// the best one this build has and this CPU supports runs; the environment variable OWL_CPU_ISA (read at the first
// matmul) or set_isa() picks another ("auto" = the default). Asking for one the CPU or build lacks throws Error.
// Q8_0 / Q4_0 kernels of every variant quantize the activations to int8 blocks (as llama.cpp does).
std::vector<std::string> supported_isas();  // runnable here, least to most preferred
std::string active_isa();                   // the variant in use (throws Error when OWL_CPU_ISA is invalid)
void set_isa(const std::string& name);      // process-wide; a matmul already running finishes on the old one
// Whether F16 / BF16 products of 16 or more tokens run on AMX tiles here: a CPU with AMX-BF16 (Sapphire Rapids
// and later) and the OS's permission, the avx512_vnni kernels active, and OWL_AMX not "0".
bool amx_active();

// out[i] = dequantized row ids[i] of the embedding table.
void get_rows(const WeightView& table, const int32_t* ids, int64_t n, float* out);

// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, for T rows of n; y may alias x.
void rms_norm(ThreadPool& pool, const float* x, const float* w, int64_t T, int64_t n, float eps, float* y);
void rms_norm_ref(const float* x, const float* w, int64_t T, int64_t n, float eps, float* y);

// LayerNorm (BERT / mPLUG-2): y[t] = (x[t] - mean(x[t])) / sqrt(var(x[t]) + eps) * w + b, the biased variance
// as torch.nn.functional.layer_norm; T rows of n; y may alias x.
void layer_norm(ThreadPool& pool, const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* y);
void layer_norm_ref(const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* y);

// The exact (erf) GELU: y[i] = x[i] / 2 * (1 + erf(x[i] / sqrt(2))) (torch's F.gelu default); y may alias x.
void gelu(ThreadPool& pool, const float* x, float* y, int64_t n);
void gelu_ref(const float* x, float* y, int64_t n);

// In-place rotary embedding of x[T][n_heads][head_dim]; token t is at position pos[t].
void rope(ThreadPool& pool, float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* pos, float base, RopeMode mode);
void rope_ref(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* pos, float base, RopeMode mode);

// out[i] = silu(gate[i]) * up[i]; out may alias gate.
void swiglu(ThreadPool& pool, const float* gate, const float* up, float* out, int64_t n);
void swiglu_ref(const float* gate, const float* up, float* out, int64_t n);

// In-place numerically stable softmax of one row.
void softmax(float* x, int64_t n);
void softmax_ref(float* x, int64_t n);

// Grouped-query causal attention over a KV cache.
//   q:   [T][n_head][head_dim], queries for positions n_past .. n_past+T-1
//   k,v: [n_head_kv][ctx_stride][head_dim] in kv_type (F32, or F16 like llama.cpp's default cache),
//        positions 0 .. n_past+T-1 already written
//   out: [T][n_head][head_dim]
// Query head h reads KV head h / (n_head / n_head_kv). Scores are never materialised beyond one row. An F16
// cache is converted to float exactly as it is read: the result is bit-identical to that of an F32 cache holding
// the same (F16-rounded) values.
struct AttentionShape {
    int64_t T = 1, n_past = 0, n_head = 1, n_head_kv = 1, head_dim = 1, ctx_stride = 1;
    float scale = 1.0f;
    DType kv_type = DType::F32;  // of k and v: F32 or F16 (anything else throws Error)
};
// Keys/values attended before the text keys, in the same softmax (Owl3's visual tokens): layout
// [rows][n_head_kv][head_dim], always float; query token t sees rows [0, visible[t]). With text == false only
// these are attended (a query that sees none gets zeros).
struct PrefixKV {
    const float* k = nullptr;
    const float* v = nullptr;
    const int64_t* visible = nullptr;
};
void attention(ThreadPool& pool, const AttentionShape& s, const float* q, const void* k, const void* v, float* out,
               const PrefixKV* prefix = nullptr, bool text = true);
void attention_ref(const AttentionShape& s, const float* q, const void* k, const void* v, float* out,
                   const PrefixKV* prefix = nullptr, bool text = true);

// Writes src [T][n_head_kv][head_dim] into rows pos0 .. pos0+T-1 of a KV cache [n_head_kv][ctx_stride][head_dim]
// of `type`: F32 (a copy) or F16 (round-to-nearest-even, as numpy's float32 -> float16: overflow to inf,
// subnormals kept, NaN stays NaN). Nothing else in the cache is touched. Throws Error on a negative size or
// position, a null pointer, pos0 + T > ctx_stride, or another type.
void kv_store(ThreadPool& pool, const float* src, int64_t T, int64_t n_head_kv, int64_t head_dim, void* cache, DType type,
              int64_t ctx_stride, int64_t pos0);
void kv_store_ref(const float* src, int64_t T, int64_t n_head_kv, int64_t head_dim, void* cache, DType type,
                  int64_t ctx_stride, int64_t pos0);

}  // namespace ops
}  // namespace owl
