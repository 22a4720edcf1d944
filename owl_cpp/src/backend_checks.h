// Argument checks every backend makes the same way (cpu_backend.cpp, cuda/cuda_backend.cu): buffer sizes with
// overflow-safe arithmetic, and tensor shapes and devices of each op.
#pragma once
#include <cstdint>
#include <limits>
#include <string>

#include "owl/backend.h"
#include "owl/error.h"

namespace owl {
namespace checks {

// Bytes of a [rows][cols] F32 or F16 buffer; throws Error for another type, a bad shape or an absurd size.
inline uint64_t buffer_bytes(DType type, int64_t rows, int64_t cols) {
    if (type != DType::F32 && type != DType::F16) throw Error(std::string("buffers hold F32 or F16, not ") + dtype_name(type));
    if (rows < 0 || cols < 1 || cols % dtype_block_elems(type)) throw Error("buffer shape [" + std::to_string(rows) + ", " + std::to_string(cols) + "] is invalid");
    const uint64_t row_bytes = uint64_t(dtype_row_bytes(type, cols));
    if (rows > 0 && row_bytes > std::numeric_limits<uint64_t>::max() / 2 / uint64_t(rows))
        throw Error("buffer of " + std::to_string(rows) + " x " + std::to_string(cols) + " elements is too large");
    const uint64_t bytes = uint64_t(rows) * row_bytes;
    if (bytes > uint64_t(std::numeric_limits<size_t>::max() / 2)) throw Error("buffer too large for this machine");
    return bytes;
}

inline void on(Device d, const Tensor& t) {
    if (t.device != d) throw Error(std::string("the ") + device_name(d) + " backend got a tensor on " + device_name(t.device));
}
// The tensor's floats, after checking it is an F32 tensor on device d.
inline float* f32_on(Device d, const Tensor& t) {
    on(d, t);
    return t.f32();
}
inline void expect_cols(const Tensor& t, int64_t cols, const char* what) {
    if (t.cols != cols) throw Error(std::string(what) + " has " + std::to_string(t.cols) + " columns, expected " + std::to_string(cols));
}
inline void same_rows(const Tensor& a, const Tensor& b, const char* op) {
    if (a.rows != b.rows) throw Error(std::string(op) + ": row counts differ (" + std::to_string(a.rows) + " vs " + std::to_string(b.rows) + ")");
}
inline void same_shape(const Tensor& a, const Tensor& b, const char* op) {
    if (a.rows != b.rows || a.cols != b.cols) throw Error(std::string(op) + ": tensor shapes differ");
}
inline void kv_store_args(const Tensor& src, int64_t n_head_kv, int64_t head_dim, const Tensor& cache, int64_t ctx, int64_t pos0) {
    expect_cols(src, n_head_kv * head_dim, "kv_store input");
    if (cache.rows * cache.cols != n_head_kv * ctx * head_dim) throw Error("kv_store: cache is not [n_head_kv][ctx][head_dim]");
    if (pos0 < 0 || pos0 > ctx - src.rows) throw Error("kv_store: positions outside the cache");
}
inline void attention_args(const ops::AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out) {
    expect_cols(q, s.n_head * s.head_dim, "attention queries");
    same_shape(q, out, "attention");
    if (q.rows != s.T) throw Error("attention: query rows differ from the shape's T");
    if (k.type != v.type) throw Error("attention: K and V caches differ in type");
}
inline void split_kv_args(const Tensor& kv, int64_t n_head_kv, int64_t head_dim, const Tensor& k, const Tensor& v) {
    const int64_t w = n_head_kv * head_dim;
    expect_cols(kv, 2 * w, "split_kv input");
    expect_cols(k, w, "split_kv K");
    same_shape(k, v, "split_kv");
    same_rows(kv, k, "split_kv");
}
inline void gate_mix_args(const Tensor& x, const Tensor& y, const Tensor& gate) {
    same_shape(x, y, "gate_mix");
    expect_cols(gate, x.cols, "gate_mix gate");
    if (gate.rows != 1) same_rows(x, gate, "gate_mix");
}

}  // namespace checks
}  // namespace owl
