// Backends: where the forward pass runs. Model code is written once against `Backend` and its device-tagged
// tensors; the CPU backend (ISA-dispatched kernels over a thread pool) is the one built today, and a CUDA
// backend is a sibling implementing the same ops. Every op has a float64 reference the backend-equivalence
// tests hold each backend to (tests/test_backend_equivalence.py).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "owl/dtype.h"
#include "owl/ops.h"

namespace owl {

class Model;
struct WeightRange;  // owl/model.h

enum class Device { CPU, CUDA };
const char* device_name(Device d);

// A 2-D view [rows][cols] (row-major) of memory on one device. Tensors do not own memory; DeviceBuffer does.
struct Tensor {
    void* data = nullptr;
    DType type = DType::F32;
    Device device = Device::CPU;
    int64_t rows = 0, cols = 0;

    size_t bytes() const { return size_t(rows) * size_t(dtype_row_bytes(type, cols)); }
    // Rows [r0, r0 + n) of this tensor.
    Tensor slice(int64_t r0, int64_t n) const;
    // The same memory seen as [rows * cols / c][c] (c must divide cols).
    Tensor reshape(int64_t rows2, int64_t cols2) const;
    float* f32() const;  // data as float; throws Error unless the type is F32
};

// Memory owned by a backend, freed with it.
class DeviceBuffer {
public:
    virtual ~DeviceBuffer() = default;
    const Tensor& tensor() const { return t_; }
    size_t bytes() const { return t_.bytes(); }

protected:
    Tensor t_;
};

// The ops the forward passes use. Tensors must be on this backend's device (checked: a mismatch throws Error).
// Host arrays (positions, ids, norm weights, biases, masks, visibility counts) are small and passed as host
// pointers; a device backend finds the model's own among the copies attach() made and copies the rest per call.
// Weight matrices (WeightView) are the model's host views in the same way.
class Backend {
public:
    virtual ~Backend() = default;
    virtual Device device() const = 0;
    virtual std::string name() const = 0;  // e.g. "cpu (avx2, 2 threads)"
    virtual int n_threads() const = 0;
    // Called by each Context before its first op: a device backend makes the model's weights within `range`
    // resident on the device (one copy per model, device and range, shared by the contexts that ask for the
    // same; a partially offloaded context asks for its device layers only). Throws Error when they do not fit,
    // saying how many bytes were needed.
    virtual void attach(const Model& m, const WeightRange& range) {
        (void)m;
        (void)range;
    }
    // Waits for queued work (a device backend runs ops asynchronously; download() already waits).
    virtual void synchronize() {}
    // Graphs: the ops issued between begin_graph() and end_graph() are recorded and then run as one graph (a
    // decode step's hundreds of small kernels without a launch each). begin_graph() returns false when the
    // backend does not record (the ops then run as they come); abort_graph() drops a recording after an error.
    virtual bool begin_graph() { return false; }
    virtual void end_graph() {}
    virtual void abort_graph() {}

    // A [rows][cols] buffer of `type` (F32 or F16). Sizes are checked for overflow.
    virtual std::unique_ptr<DeviceBuffer> alloc(DType type, int64_t rows, int64_t cols) = 0;
    virtual void upload(const void* host, const Tensor& dst) = 0;      // dst.bytes() from host
    virtual void download(const Tensor& src, void* host) = 0;          // src.bytes() to host
    virtual void fill(const Tensor& dst, float value) = 0;             // F32 tensors only
    virtual void copy(const Tensor& src, const Tensor& dst) = 0;       // same type and shape

    // out[i] = dequantized row ids[i] of the table (out: [n][table.cols]).
    virtual void get_rows(const WeightView& w, const int32_t* ids, const Tensor& out) = 0;
    // y[t] = W x[t] (+ bias); x: [T][w.cols], y: [T][w.rows].
    virtual void matmul(const WeightView& w, const Tensor& x, const float* bias, const Tensor& y) = 0;
    // Products of one input, y_i = W_i x (+ bias_i), for n <= ops::kMatmulManyMax matrices (a layer's Q / K / V).
    // The default runs one matmul each; the CPU backend runs them as one job (ops::matmul_many).
    struct Projection {
        const WeightView* w;
        const float* bias;  // or null
        Tensor y;
    };
    virtual void matmul_many(const Tensor& x, const Projection* p, int n);
    // gate = silu(W_gate x) * (W_up x), up = W_up x (x: [T][cols]; gate, up: [T][rows]). The default runs two
    // matmuls and swiglu; the CPU backend one job (ops::matmul_swiglu).
    virtual void matmul_swiglu(const WeightView& w_gate, const WeightView& w_up, const Tensor& x, const Tensor& gate,
                               const Tensor& up);
    // out = the k best (value, index) pairs of a one-row F32 tensor (a row of logits) in Sampler's order, higher
    // value first, then lower index (owl::top_logits; k clamped to the row length); a NaN throws Error naming the
    // first, as Sampler::sample does. The default downloads the row and selects on the host; the CUDA backend
    // selects on the device and copies back only the k pairs.
    virtual void top_k(const Tensor& row, int64_t k, std::vector<std::pair<float, int32_t>>& out);
    // y[t] = x[t] / rms(x[t]) * w; y may be x.
    virtual void rms_norm(const Tensor& x, const float* w, float eps, const Tensor& y) = 0;
    // y[t] = (x[t] - mean) / sqrt(var + eps) * w + b (LayerNorm with bias, BERT's); y may be x.
    virtual void layer_norm(const Tensor& x, const float* w, const float* b, float eps, const Tensor& y) = 0;
    // In-place rotary embedding of x viewed as [T][n_heads][head_dim]; token t at position pos[t].
    virtual void rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const int32_t* pos, float base, RopeMode mode) = 0;
    // x += y (residual connections).
    virtual void add(const Tensor& x, const Tensor& y) = 0;
    // out = silu(gate) * up; out may be gate.
    virtual void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
    // y = x / 2 * (1 + erf(x / sqrt 2)), the exact GELU; y may be x.
    virtual void gelu(const Tensor& x, const Tensor& y) = 0;
    // Writes src [T][n_head_kv * head_dim] into cache [n_head_kv][ctx][head_dim] (F32 or F16) at positions
    // pos0 .. pos0 + T - 1.
    virtual void kv_store(const Tensor& src, int64_t n_head_kv, int64_t head_dim, const Tensor& cache, int64_t ctx,
                          int64_t pos0) = 0;
    // Causal grouped-query attention over a KV cache (see ops::attention); k/v are the cache tensors. The prefix's
    // k/v are on this backend's device, its visible counts on the host.
    virtual void attention(const ops::AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& out, const ops::PrefixKV* prefix = nullptr, bool text = true) = 0;
    // kv [T][n_head_kv][2][head_dim] (K then V per head, as a fused K|V projection writes them) -> k and v,
    // each [T][n_head_kv * head_dim].
    virtual void split_kv(const Tensor& kv, int64_t n_head_kv, int64_t head_dim, const Tensor& k, const Tensor& v) = 0;
    // Gated mix of two attention outputs: for each row t with mask[t] != 0, x[t] = x[t] * (1 - s) + y[t] * s
    // where s = sigmoid(gate[t]) (gate has x's shape) or sigmoid(gate[0]) (gate is one row, broadcast).
    // Rows with mask[t] == 0 are left as they are; mask == nullptr means every row.
    virtual void gate_mix(const Tensor& x, const Tensor& y, const Tensor& gate, const int64_t* mask) = 0;
};

// The CPU backend: the kernels of the active instruction set on a pool of n_threads threads.
std::unique_ptr<Backend> make_cpu_backend(int n_threads);
// Backends this build can create here ("cpu", and "cuda" when compiled in and a GPU is present).
std::vector<std::string> available_backends();
// "cpu" or "cuda" (the first GPU; "cuda:N" the N-th). n_threads: the CPU pool (a GPU backend ignores it).
std::unique_ptr<Backend> make_backend(const std::string& name, int n_threads);
// What this build and machine offer on the CUDA side (compiled is true also on a machine without a GPU).
struct GpuInfo {
    int index = 0;
    std::string name;
    int cc_major = 0, cc_minor = 0;  // compute capability
    uint64_t total_bytes = 0, free_bytes = 0;
    int multiprocessors = 0;
};
struct CudaInfo {
    bool compiled = false;
    std::string architectures;  // the SM versions compiled, e.g. "75,80,86,89,90"
    int runtime_version = 0;    // e.g. 13000
    int driver_version = 0;     // 0 without a driver
    std::vector<GpuInfo> devices;
};
CudaInfo cuda_info();

}  // namespace owl
