// The CPU backend: tensors in host memory, ops on the ISA-dispatched kernels (ops/*.cpp) over a thread pool.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "../backend_checks.h"
#include "owl/backend.h"
#include "owl/error.h"
#include "owl/threadpool.h"

namespace owl {
namespace {

using checks::expect_cols;
using checks::same_rows;
using checks::same_shape;

class CpuBuffer : public DeviceBuffer {
public:
    CpuBuffer(DType type, int64_t rows, int64_t cols) {
        const uint64_t bytes = checks::buffer_bytes(type, rows, cols);
        constexpr size_t kAlign = 64;
        const size_t padded = (size_t(bytes) + kAlign - 1) / kAlign * kAlign;
        void* p = padded ? std::aligned_alloc(kAlign, padded) : nullptr;
        if (padded && !p) throw Error("out of memory allocating a buffer of " + std::to_string(bytes) + " bytes");
        t_ = Tensor{p, type, Device::CPU, rows, cols};
    }
    ~CpuBuffer() override { std::free(t_.data); }
};

class CpuBackend : public Backend {
public:
    explicit CpuBackend(int n_threads) : pool_(n_threads) {}
    Device device() const override { return Device::CPU; }
    std::string name() const override { return "cpu (" + ops::active_isa() + ", " + std::to_string(pool_.size()) + " threads)"; }
    int n_threads() const override { return pool_.size(); }

    std::unique_ptr<DeviceBuffer> alloc(DType type, int64_t rows, int64_t cols) override {
        return std::make_unique<CpuBuffer>(type, rows, cols);
    }
    void upload(const void* host, const Tensor& dst) override {
        here(dst);
        if (dst.bytes()) std::memcpy(dst.data, host, dst.bytes());
    }
    void download(const Tensor& src, void* host) override {
        here(src);
        if (src.bytes()) std::memcpy(host, src.data, src.bytes());
    }
    void fill(const Tensor& dst, float value) override {
        float* p = f32(dst);
        std::fill(p, p + dst.rows * dst.cols, value);
    }

    void copy(const Tensor& src, const Tensor& dst) override {
        here(src);
        here(dst);
        if (src.type != dst.type) throw Error("copy: tensor types differ");
        same_shape(src, dst, "copy");
        if (src.bytes()) std::memmove(dst.data, src.data, src.bytes());
    }

    void get_rows(const WeightView& w, const int32_t* ids, const Tensor& out) override {
        expect_cols(out, w.cols, "get_rows output");
        ops::get_rows(w, ids, out.rows, f32(out));
    }
    void matmul(const WeightView& w, const Tensor& x, const float* bias, const Tensor& y) override {
        expect_cols(x, w.cols, "matmul input");
        expect_cols(y, w.rows, "matmul output");
        same_rows(x, y, "matmul");
        ops::matmul(pool_, w, f32(x), x.rows, bias, f32(y));
    }
    void matmul_many(const Tensor& x, const Projection* p, int n) override {
        if (n < 0 || n > ops::kMatmulManyMax) throw Error("matmul_many: " + std::to_string(n) + " products; at most " + std::to_string(ops::kMatmulManyMax));
        ops::MatmulTarget t[ops::kMatmulManyMax];
        for (int i = 0; i < n; ++i) {
            expect_cols(x, p[i].w->cols, "matmul input");
            expect_cols(p[i].y, p[i].w->rows, "matmul output");
            same_rows(x, p[i].y, "matmul");
            t[i] = {p[i].w, p[i].bias, f32(p[i].y)};
        }
        ops::matmul_many(pool_, t, n, f32(x), x.rows);
    }
    void matmul_swiglu(const WeightView& w_gate, const WeightView& w_up, const Tensor& x, const Tensor& gate, const Tensor& up) override {
        expect_cols(x, w_gate.cols, "matmul_swiglu input");
        expect_cols(gate, w_gate.rows, "matmul_swiglu gate");
        same_shape(gate, up, "matmul_swiglu");
        same_rows(x, gate, "matmul_swiglu");
        ops::matmul_swiglu(pool_, w_gate, w_up, f32(x), x.rows, f32(gate), f32(up));
    }
    void rms_norm(const Tensor& x, const float* w, float eps, const Tensor& y) override {
        same_shape(x, y, "rms_norm");
        ops::rms_norm(pool_, f32(x), w, x.rows, x.cols, eps, f32(y));
    }
    void layer_norm(const Tensor& x, const float* w, const float* b, float eps, const Tensor& y) override {
        same_shape(x, y, "layer_norm");
        ops::layer_norm(pool_, f32(x), w, b, x.rows, x.cols, eps, f32(y));
    }
    void rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const int32_t* pos, float base, RopeMode mode) override {
        expect_cols(x, n_heads * head_dim, "rope input");
        ops::rope(pool_, f32(x), x.rows, n_heads, head_dim, pos, base, mode);
    }
    void add(const Tensor& x, const Tensor& y) override {
        same_shape(x, y, "add");
        float* a = f32(x);
        const float* b = f32(y);
        const int64_t n = x.rows * x.cols;
        if (n < 4096) {  // a decode step's residual: threads would cost more than the adds
            for (int64_t i = 0; i < n; ++i) a[i] += b[i];
            return;
        }
        pool_.parallel_for(x.rows, [&](int64_t r0, int64_t r1, int) {
            for (int64_t i = r0 * x.cols; i < r1 * x.cols; ++i) a[i] += b[i];
        });
    }
    void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) override {
        same_shape(gate, up, "swiglu");
        same_shape(gate, out, "swiglu");
        ops::swiglu(pool_, f32(gate), f32(up), f32(out), gate.rows * gate.cols);
    }
    void gelu(const Tensor& x, const Tensor& y) override {
        same_shape(x, y, "gelu");
        ops::gelu(pool_, f32(x), f32(y), x.rows * x.cols);
    }
    void kv_store(const Tensor& src, int64_t n_head_kv, int64_t head_dim, const Tensor& cache, int64_t ctx, int64_t pos0) override {
        here(cache);
        checks::kv_store_args(src, n_head_kv, head_dim, cache, ctx, pos0);
        ops::kv_store(pool_, f32(src), src.rows, n_head_kv, head_dim, cache.data, cache.type, ctx, pos0);
    }
    void attention(const ops::AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const ops::PrefixKV* prefix, bool text) override {
        here(k);
        here(v);
        checks::attention_args(s, q, k, v, out);
        ops::AttentionShape shape = s;
        shape.kv_type = k.type;
        ops::attention(pool_, shape, f32(q), k.data, v.data, f32(out), prefix, text);
    }
    void split_kv(const Tensor& kv, int64_t n_head_kv, int64_t head_dim, const Tensor& k, const Tensor& v) override {
        checks::split_kv_args(kv, n_head_kv, head_dim, k, v);
        const float* src = f32(kv);
        float* K = f32(k);
        float* V = f32(v);
        for (int64_t r = 0; r < kv.rows * n_head_kv; ++r) {
            std::memcpy(K + r * head_dim, src + r * 2 * head_dim, size_t(head_dim) * sizeof(float));
            std::memcpy(V + r * head_dim, src + r * 2 * head_dim + head_dim, size_t(head_dim) * sizeof(float));
        }
    }
    void gate_mix(const Tensor& x, const Tensor& y, const Tensor& gate, const int64_t* mask) override {
        checks::gate_mix_args(x, y, gate);
        const bool broadcast = gate.rows == 1;
        float* a = f32(x);
        const float* b = f32(y);
        const float* g = f32(gate);
        const int64_t C = x.cols;
        pool_.parallel_for(x.rows, [&](int64_t r0, int64_t r1, int) {
            for (int64_t t = r0; t < r1; ++t) {
                if (mask && mask[t] == 0) continue;
                const float* gt = broadcast ? g : g + t * C;
                for (int64_t c = 0; c < C; ++c) {
                    const float s = 1.0f / (1.0f + std::exp(-gt[c]));
                    a[t * C + c] = a[t * C + c] * (1.0f - s) + b[t * C + c] * s;
                }
            }
        });
    }

private:
    static void here(const Tensor& t) { checks::on(Device::CPU, t); }
    static float* f32(const Tensor& t) { return checks::f32_on(Device::CPU, t); }

    ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int n_threads) { return std::make_unique<CpuBackend>(n_threads); }

}  // namespace owl
