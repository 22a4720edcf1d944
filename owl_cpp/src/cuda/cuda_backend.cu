// The CUDA backend: tensors in device memory, every op a kernel on one stream per context (so contexts on one
// GPU run independently), weights resident once per model and device. Host arrays the ops take (positions, ids,
// masks, small vectors the model does not own) travel through a pinned staging ring.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <map>
#include <unordered_map>

#include "../backend_checks.h"
#include "attention.cuh"
#include "cuda_backend.cuh"
#include "elementwise.cuh"
#include "matmul.cuh"
#include "topk.cuh"
#include "owl/model.h"

#ifndef OWL_CUDA_ARCHS
#define OWL_CUDA_ARCHS "unknown"
#endif

namespace owl {
namespace cuda {
namespace {

std::string mib(size_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB"; }

size_t aligned(size_t n) { return (n + 255) / 256 * 256; }

bool env_off(const char* name) {  // the variable is "0"
    const char* env = std::getenv(name);
    return env && std::string(env) == "0";
}
bool graphs_enabled() { return !env_off("OWL_CUDA_GRAPHS"); }  // 0: every kernel launched on its own (A/B, debugging)
// 0: greedy / top-k candidates selected on the host from every logit, as on the CPU (A/B, debugging)
bool device_top_k_enabled() { return !env_off("OWL_CUDA_TOPK"); }

class DeviceScope {  // the calling thread works on `device` for the scope (contexts may move between threads)
public:
    explicit DeviceScope(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }
};

// One model's weights on one device: one allocation, host pointer -> device copy.
struct Resident {
    int device = 0;
    void* base = nullptr;
    size_t bytes = 0;
    std::unordered_map<const void*, const void*> where;
    ~Resident() {
        if (!base) return;
        cudaSetDevice(device);
        cudaFree(base);
    }
};

// What a range of the model is called in messages and in the per-model state key.
std::string range_words(const Model& m, const WeightRange& r) {
    const int64_t L = m.hparams().n_layer;
    if (r.whole(m.hparams())) return "the model's weights";
    const int64_t a = r.first < 0 ? 0 : r.first, b = r.end > L ? L : r.end;
    std::string s = "the weights of layers " + std::to_string(a) + "-" + std::to_string(b - 1);
    if (r.input) s += " and the token embeddings";
    if (r.output) s += std::string(r.input ? "," : " and") + " the output head";
    return s;
}
std::string range_key(const Model& m, const WeightRange& r, int device) {
    std::string key = "cuda:" + std::to_string(device);
    if (r.whole(m.hparams())) return key;  // the whole model: the key contexts without a split always used
    return key + "/layers " + std::to_string(r.first) + "-" + std::to_string(r.end) + (r.input ? "+in" : "") + (r.output ? "+out" : "");
}
size_t device_bytes(const Model& m, const WeightRange& r) {
    size_t total = 0;
    m.for_each_weight([&](const WeightView& w) { total += aligned(weight_device_bytes(w.type, w.rows, w.cols)); },
                      [&](const std::vector<float>& v) { total += aligned(v.size() * sizeof(float)); }, r);
    return total;
}

// The out-of-memory message: what was needed, what is free, and how many layers would fit in that.
std::string no_room(const Model& m, const WeightRange& r, size_t need, size_t free_bytes, size_t total_bytes, int device) {
    const int64_t L = m.hparams().n_layer;
    const int64_t a = r.first < 0 ? 0 : r.first, b = r.end > L ? L : r.end;
    WeightRange ends = r;  // the range's embeddings / head without its layers
    ends.first = ends.end = 0;
    const size_t fixed = device_bytes(m, ends);
    std::string msg = range_words(m, r) + " need " + mib(need) + " of GPU memory, but GPU " + std::to_string(device) + " has " +
                      mib(free_bytes) + " free of " + mib(total_bytes);
    if (b > a && need > fixed) {
        const size_t per_layer = (need - fixed) / size_t(b - a);
        const int64_t fit = free_bytes > fixed + per_layer ? int64_t((free_bytes - fixed) / per_layer) : 0;
        msg += " (about " + mib(per_layer) + " per layer): offload fewer layers with n_gpu_layers (--n-gpu-layers); the weights of " +
               std::to_string(fit < b - a ? fit : b - a) + " layers fit in what is free, before the KV cache and scratch";
    }
    return msg;
}

std::shared_ptr<Resident> make_resident(const Model& m, const WeightRange& range, int device) {
    struct Item {
        const WeightView* w;
        const std::vector<float>* v;
        size_t offset;
    };
    std::vector<Item> items;
    size_t total = 0;
    m.for_each_weight(
        [&](const WeightView& w) {
            items.push_back({&w, nullptr, total});
            total += aligned(weight_device_bytes(w.type, w.rows, w.cols));
        },
        [&](const std::vector<float>& v) {
            items.push_back({nullptr, &v, total});
            total += aligned(v.size() * sizeof(float));
        },
        range);
    DeviceScope scope(device);
    size_t free_bytes = 0, total_bytes = 0;
    check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    if (total > free_bytes) throw Error(no_room(m, range, total, free_bytes, total_bytes, device));
    auto r = std::make_shared<Resident>();
    r->device = device;
    r->bytes = total;
    if (total && cudaMalloc(&r->base, total) != cudaSuccess) {
        cudaGetLastError();
        r->base = nullptr;
        throw Error("out of GPU memory: " + no_room(m, range, total, free_bytes, total_bytes, device));
    }
    for (const Item& it : items) {
        void* dst = static_cast<uint8_t*>(r->base) + it.offset;
        if (it.w) {
            upload_weight(it.w->type, it.w->data, it.w->rows, it.w->cols, dst);
            r->where[it.w->data] = dst;
        } else {
            check(cudaMemcpy(dst, it.v->data(), it.v->size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy (weights)");
            r->where[it.v->data()] = dst;
        }
    }
    // Pageable copies may return before their DMA lands, and contexts' streams do not wait for the legacy one.
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (weights)");
    return r;
}

class CudaBuffer : public DeviceBuffer {
public:
    CudaBuffer(DType type, int64_t rows, int64_t cols, int device) : device_(device) {
        const uint64_t bytes = checks::buffer_bytes(type, rows, cols);
        void* p = nullptr;
        if (bytes && cudaMalloc(&p, size_t(bytes)) != cudaSuccess) {
            cudaGetLastError();
            throw Error("out of GPU memory allocating a buffer of " + mib(size_t(bytes)) + " (" + std::to_string(rows) + " x " +
                        std::to_string(cols) + " " + dtype_name(type) + ")");
        }
        t_ = Tensor{p, type, Device::CUDA, rows, cols};
    }
    ~CudaBuffer() override {
        if (!t_.data) return;
        cudaSetDevice(device_);
        cudaFree(t_.data);
    }

private:
    int device_;
};

// Host arrays on their way to the device: copied into pinned memory, then queued on the stream. A region is
// reused only after a stream synchronisation, so a queued copy never reads memory that changed under it.
class Staging {
public:
    ~Staging() { release(); }
    const void* put(const void* src, size_t bytes, cudaStream_t s) {
        const size_t need = aligned(bytes ? bytes : 1);
        reserve(need, s);
        uint8_t* h = static_cast<uint8_t*>(host_) + used_;
        uint8_t* d = static_cast<uint8_t*>(dev_) + used_;
        if (bytes) {
            std::memcpy(h, src, bytes);
            check(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (staging)");
        }
        used_ += need;
        last_host_ = h;
        last_dev_ = d;
        last_bytes_ = bytes;
        return d;
    }
    // The same array as the previous put (a layer's positions go to rope twice): its device copy, not a new one.
    const void* repeat(const void* src, size_t bytes) const {
        if (!last_dev_ || bytes != last_bytes_ || std::memcmp(src, last_host_, bytes) != 0) return nullptr;
        return last_dev_;
    }
    void synchronized() { used_ = 0; }  // the stream is idle: every region is free again
    bool fits(size_t bytes) const { return used_ + aligned(bytes ? bytes : 1) <= cap_; }  // put() needs no sync
    // Room for `bytes` more without a synchronisation (which a graph capture forbids); syncs now if needed.
    void reserve(size_t bytes, cudaStream_t s) {
        if (used_ + bytes <= cap_) return;
        check(cudaStreamSynchronize(s), "cudaStreamSynchronize (staging)");
        used_ = 0;
        if (bytes > cap_) {
            release();
            cap_ = bytes > (size_t(1) << 20) ? bytes : (size_t(1) << 20);
            check(cudaMallocHost(&host_, cap_), "cudaMallocHost (staging)");
            check(cudaMalloc(&dev_, cap_), "cudaMalloc (staging)");
        }
    }

private:
    void release() {
        if (host_) cudaFreeHost(host_);
        if (dev_) cudaFree(dev_);
        host_ = dev_ = nullptr;
        cap_ = used_ = 0;
        last_host_ = last_dev_ = nullptr;
    }
    void* host_ = nullptr;
    void* dev_ = nullptr;
    size_t cap_ = 0, used_ = 0;
    const void* last_host_ = nullptr;
    const void* last_dev_ = nullptr;
    size_t last_bytes_ = 0;
};

class CudaBackend : public Backend {
public:
    explicit CudaBackend(int device) : device_(device) {
        OpScope scope(*this);
        cudaDeviceProp prop{};
        check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
        gpu_name_ = prop.name;
        check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    }
    ~CudaBackend() override {
        cudaSetDevice(device_);
        abort_graph();
        if (exec_) cudaGraphExecDestroy(exec_);
        cudaStreamSynchronize(stream_);
        cudaStreamDestroy(stream_);
    }

    Device device() const override { return Device::CUDA; }
    std::string name() const override { return "cuda:" + std::to_string(device_) + " (" + gpu_name_ + ")"; }
    int n_threads() const override { return 1; }

    void attach(const Model& m, const WeightRange& range) override {
        OpScope scope(*this);
        resident_ = std::static_pointer_cast<Resident>(m.backend_state(
            range_key(m, range, device_), [&] { return std::shared_ptr<void>(make_resident(m, range, device_)); }));
        inv_freq(m.hparams().head_dim, m.hparams().rope_base);  // now, not inside the first recorded decode step
    }
    void synchronize() override {
        check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        staging_.synchronized();
    }

    // A decode step is recorded and replayed as one graph. Each step is recorded again (positions, cache length
    // and split counts change) and patched into the executable graph, which is cheap next to launching every
    // kernel; a change of shape re-instantiates it. Anything that cannot be recorded (a buffer to grow) throws,
    // and the caller runs that step without a graph.
    bool begin_graph() override {
        if (!graphs_) return false;
        OpScope scope(*this);
        ws_.reserve(size_t(8) << 20);
        staging_.reserve(size_t(1) << 20, stream_);
        check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        capturing_ = true;
        ws_.freeze(true);
        return true;
    }
    void end_graph() override {
        OpScope scope(*this);
        capturing_ = false;
        ws_.freeze(false);
        cudaGraph_t graph = nullptr;
        check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
        size_t nodes = 0;
        cudaGraphGetNodes(graph, nullptr, &nodes);
        bool updated = false;
        if (exec_ && nodes == exec_nodes_) {  // same shape: patch the parameters in place
            cudaGraphExecUpdateResultInfo info{};
            updated = cudaGraphExecUpdate(exec_, graph, &info) == cudaSuccess;
            if (!updated) cudaGetLastError();
        }
        cudaError_t e = cudaSuccess;
        if (!updated) {  // new or changed shape (a split attention's merge appearing, say): instantiate again
            if (exec_) cudaGraphExecDestroy(exec_);
            exec_ = nullptr;
            exec_nodes_ = nodes;
            e = cudaGraphInstantiate(&exec_, graph, 0);
            if (e != cudaSuccess) exec_ = nullptr;
        }
        cudaGraphDestroy(graph);
        check(e, "cudaGraphInstantiate");
        check(cudaGraphLaunch(exec_, stream_), "cudaGraphLaunch");
    }
    void abort_graph() override {
        if (!capturing_) return;
        capturing_ = false;
        ws_.freeze(false);
        cudaGraph_t graph = nullptr;
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
    }

    std::unique_ptr<DeviceBuffer> alloc(DType type, int64_t rows, int64_t cols) override {
        OpScope scope(*this);
        refuse_while_recording("a buffer is allocated");
        return std::make_unique<CudaBuffer>(type, rows, cols, device_);
    }
    void upload(const void* host, const Tensor& dst) override {
        here(dst);
        if (!dst.bytes()) return;
        OpScope scope(*this);
        // From pageable memory the call returns once `host` has been read, so the caller may reuse it.
        check(cudaMemcpyAsync(dst.data, host, dst.bytes(), cudaMemcpyHostToDevice, stream_), "upload");
    }
    void download(const Tensor& src, void* host) override {
        here(src);
        OpScope scope(*this);
        if (src.bytes()) check(cudaMemcpyAsync(host, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_), "download");
        synchronize();
    }
    void fill(const Tensor& dst, float value) override {
        OpScope scope(*this);
        cuda::fill(f32(dst), dst.rows * dst.cols, value, stream_);
    }
    void copy(const Tensor& src, const Tensor& dst) override {
        here(src);
        here(dst);
        if (src.type != dst.type) throw Error("copy: tensor types differ");
        checks::same_shape(src, dst, "copy");
        OpScope scope(*this);
        if (src.bytes()) check(cudaMemcpyAsync(dst.data, src.data, src.bytes(), cudaMemcpyDeviceToDevice, stream_), "copy");
    }

    void get_rows(const WeightView& w, const int32_t* ids, const Tensor& out) override {
        checks::expect_cols(out, w.cols, "get_rows output");
        float* o = f32(out);
        OpScope scope(*this);
        const auto* dev_ids = static_cast<const int32_t*>(stage(ids, size_t(out.rows) * sizeof(int32_t)));
        WeightOnDevice table(*this, w);
        cuda::get_rows(w.type, table.data, w.cols, dev_ids, out.rows, o, stream_);
    }
    void matmul(const WeightView& w, const Tensor& x, const float* bias, const Tensor& y) override {
        checks::expect_cols(x, w.cols, "matmul input");
        checks::expect_cols(y, w.rows, "matmul output");
        checks::same_rows(x, y, "matmul");
        float* xo = f32(x);
        float* yo = f32(y);
        // The op right before was a quantized matmul of this very input (Q then K then V): reuse its rounding.
        const bool quant = cuda::quantizes_activations(w.type, x.rows);
        const bool reuse = quant && ops_ == quantized_.op && quantized_.x == xo && quantized_.rows == x.rows &&
                           quantized_.cols == x.cols;
        OpScope scope(*this);
        const float* b = bias ? vec(bias, w.rows) : nullptr;
        WeightOnDevice wd(*this, w);
        cuda::matmul(w.type, wd.data, w.rows, w.cols, xo, x.rows, b, yo, ws_, reuse, stream_);
        const bool overwrote = yo < xo + x.rows * x.cols && xo < yo + y.rows * y.cols;
        quantized_ = quant && !overwrote && !wd.temporary() ? Quantized{ops_, xo, x.rows, x.cols} : Quantized{};
    }
    void top_k(const Tensor& row, int64_t k, std::vector<std::pair<float, int32_t>>& out) override {
        float* x = f32(row);
        if (row.rows != 1) throw Error("top_k: expects one F32 row");
        if (k > cuda::kTopKMax || !device_top_k_enabled()) return Backend::top_k(row, k, out);  // the host selection
        OpScope scope(*this);
        cuda::top_k(x, row.cols, k, ws_, stream_, out);
    }
    void rms_norm(const Tensor& x, const float* w, float eps, const Tensor& y) override {
        checks::same_shape(x, y, "rms_norm");
        float* xo = f32(x);
        float* yo = f32(y);
        OpScope scope(*this);
        cuda::rms_norm(xo, vec(w, x.cols), x.rows, x.cols, eps, yo, stream_);
    }
    void layer_norm(const Tensor& x, const float* w, const float* b, float eps, const Tensor& y) override {
        checks::same_shape(x, y, "layer_norm");
        float* xo = f32(x);
        float* yo = f32(y);
        OpScope scope(*this);
        cuda::layer_norm(xo, vec(w, x.cols), vec(b, x.cols), x.rows, x.cols, eps, yo, stream_);
    }
    void rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const int32_t* pos, float base, RopeMode mode) override {
        checks::expect_cols(x, n_heads * head_dim, "rope input");
        float* xo = f32(x);
        OpScope scope(*this);
        const auto* p = static_cast<const int32_t*>(stage(pos, size_t(x.rows) * sizeof(int32_t)));
        cuda::rope(xo, x.rows, n_heads, head_dim, p, inv_freq(head_dim, base), mode, stream_);
    }
    void add(const Tensor& x, const Tensor& y) override {
        checks::same_shape(x, y, "add");
        float* a = f32(x);
        const float* b = f32(y);
        OpScope scope(*this);
        cuda::add(a, b, x.rows * x.cols, stream_);
    }
    void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) override {
        checks::same_shape(gate, up, "swiglu");
        checks::same_shape(gate, out, "swiglu");
        float* g = f32(gate);
        float* u = f32(up);
        float* o = f32(out);
        OpScope scope(*this);
        cuda::swiglu(g, u, o, gate.rows * gate.cols, stream_);
    }
    void gelu(const Tensor& x, const Tensor& y) override {
        checks::same_shape(x, y, "gelu");
        float* xo = f32(x);
        float* yo = f32(y);
        OpScope scope(*this);
        cuda::gelu(xo, yo, x.rows * x.cols, stream_);
    }
    void kv_store(const Tensor& src, int64_t n_head_kv, int64_t head_dim, const Tensor& cache, int64_t ctx, int64_t pos0) override {
        here(cache);
        checks::kv_store_args(src, n_head_kv, head_dim, cache, ctx, pos0);
        float* s = f32(src);
        OpScope scope(*this);
        cuda::kv_store(s, src.rows, n_head_kv, head_dim, cache.data, cache.type, ctx, pos0, stream_);
    }
    void attention(const ops::AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const ops::PrefixKV* prefix, bool text) override {
        here(k);
        here(v);
        checks::attention_args(s, q, k, v, out);
        if (!prefix && !text) throw Error("attention: no keys to attend (no prefix and text == false)");
        float* qo = f32(q);
        float* oo = f32(out);
        OpScope scope(*this);
        ops::AttentionShape shape = s;
        shape.kv_type = k.type;
        const int64_t* visible = prefix ? static_cast<const int64_t*>(stage(prefix->visible, size_t(s.T) * sizeof(int64_t))) : nullptr;
        cuda::attention(shape, qo, k.data, v.data, oo, prefix ? prefix->k : nullptr, prefix ? prefix->v : nullptr, visible,
                        text, ws_, stream_);
    }
    void split_kv(const Tensor& kv, int64_t n_head_kv, int64_t head_dim, const Tensor& k, const Tensor& v) override {
        checks::split_kv_args(kv, n_head_kv, head_dim, k, v);
        float* src = f32(kv);
        float* ko = f32(k);
        float* vo = f32(v);
        OpScope scope(*this);
        cuda::split_kv(src, kv.rows, n_head_kv, head_dim, ko, vo, stream_);
    }
    void gate_mix(const Tensor& x, const Tensor& y, const Tensor& gate, const int64_t* mask) override {
        checks::gate_mix_args(x, y, gate);
        float* a = f32(x);
        const float* b = f32(y);
        const float* g = f32(gate);
        OpScope scope(*this);
        const int64_t* m = mask ? static_cast<const int64_t*>(stage(mask, size_t(x.rows) * sizeof(int64_t))) : nullptr;
        cuda::gate_mix(a, b, g, gate.rows == 1, m, x.rows, x.cols, stream_);
    }

private:
    // Every op: the device made current, and counted (matmul's reuse of quantized activations needs "the op right
    // before"). Non-op calls count too, which only makes reuse rarer.
    struct OpScope {
        explicit OpScope(CudaBackend& be) : device(be.device_) { ++be.ops_; }
        DeviceScope device;
    };
    struct Quantized {  // what the workspace holds after a quantized matmul: x's int8 blocks
        uint64_t op = 0;
        const float* x = nullptr;
        int64_t rows = 0, cols = 0;
    };

    // A weight matrix on the device: the model's resident copy, or (a matrix the model does not own, as the
    // test harness passes) a temporary upload freed after the op has run.
    struct WeightOnDevice {
        WeightOnDevice(CudaBackend& be, const WeightView& w) : be_(be) {
            if (const void* r = be.resident(w.data)) {
                data = r;
                return;
            }
            if (!w.data) throw Error("matmul: weight matrix has no data");
            be.refuse_while_recording("a weight matrix that is not resident is uploaded");
            check(cudaMalloc(&temp_, aligned(weight_device_bytes(w.type, w.rows, w.cols))), "cudaMalloc (weight)");
            upload_weight(w.type, w.data, w.rows, w.cols, temp_);
            data = temp_;
        }
        ~WeightOnDevice() {
            if (!temp_) return;
            cudaStreamSynchronize(be_.stream_);
            cudaFree(temp_);
        }
        const void* data = nullptr;
        bool temporary() const { return temp_ != nullptr; }  // its upload synchronised, and used the staging

    private:
        CudaBackend& be_;
        void* temp_ = nullptr;
    };

    // base^(-2i / head_dim) for i < head_dim / 2, in double as the CPU computes it; one table per (head_dim, base),
    // made on first use (the prompt, before any decode step is recorded into a graph).
    const double* inv_freq(int64_t head_dim, float base) {
        const std::pair<int64_t, float> key{head_dim, base};
        auto it = rope_tables_.find(key);
        if (it != rope_tables_.end()) return static_cast<const double*>(it->second->tensor().data);
        const int64_t half = head_dim / 2;
        refuse_while_recording("a rope table is made");
        std::vector<double> table(size_t(half > 0 ? half : 1));
        for (int64_t i = 0; i < half; ++i) table[size_t(i)] = std::pow(double(base), -2.0 * double(i) / double(head_dim));
        auto buf = std::make_unique<CudaBuffer>(DType::F32, 1, int64_t(2 * table.size()), device_);
        check(cudaMemcpy(buf->tensor().data, table.data(), table.size() * sizeof(double), cudaMemcpyHostToDevice), "rope table");
        check(cudaDeviceSynchronize(), "rope table");
        const double* d = static_cast<const double*>(buf->tensor().data);
        rope_tables_.emplace(key, std::move(buf));
        return d;
    }
    // A graph capture may not allocate or synchronise (CUDA would invalidate it): such a step throws before the
    // call, and the context runs it op by op (OWL_DEBUG_GRAPHS=1 prints why).
    void refuse_while_recording(const char* what) const {
        if (capturing_) throw Error(std::string("CUDA graph capture: ") + what + " while a decode step is recorded");
    }
    const void* resident(const void* host) const {
        if (!resident_) return nullptr;
        auto it = resident_->where.find(host);
        return it == resident_->where.end() ? nullptr : it->second;
    }
    const float* vec(const float* host, int64_t n) {
        if (const void* r = resident(host)) return static_cast<const float*>(r);
        return static_cast<const float*>(stage(host, size_t(n) * sizeof(float)));
    }
    const void* stage(const void* host, size_t bytes) {
        if (!host) throw Error("cuda backend: a host array argument is null");
        if (const void* d = staging_.repeat(host, bytes)) return d;
        if (!staging_.fits(bytes)) refuse_while_recording("the staging area grows");
        return staging_.put(host, bytes, stream_);
    }
    static void here(const Tensor& t) { checks::on(Device::CUDA, t); }
    static float* f32(const Tensor& t) { return checks::f32_on(Device::CUDA, t); }

    int device_;
    std::string gpu_name_;
    cudaStream_t stream_ = nullptr;
    bool graphs_ = graphs_enabled();
    bool capturing_ = false;
    cudaGraphExec_t exec_ = nullptr;
    size_t exec_nodes_ = 0;
    uint64_t ops_ = 0;
    Quantized quantized_;
    std::shared_ptr<Resident> resident_;
    std::map<std::pair<int64_t, float>, std::unique_ptr<CudaBuffer>> rope_tables_;
    Staging staging_;
    Workspace ws_;
};

}  // namespace

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

std::unique_ptr<Backend> make_backend(int device) { return std::make_unique<CudaBackend>(device); }

CudaInfo info() {
    CudaInfo out;
    out.compiled = true;
    out.architectures = OWL_CUDA_ARCHS;
    cudaRuntimeGetVersion(&out.runtime_version);
    if (cudaDriverGetVersion(&out.driver_version) != cudaSuccess) cudaGetLastError();
    for (int i = 0, n = device_count(); i < n; ++i) {
        cudaDeviceProp prop{};
        if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        GpuInfo d;
        d.index = i;
        d.name = prop.name;
        d.cc_major = prop.major;
        d.cc_minor = prop.minor;
        d.multiprocessors = prop.multiProcessorCount;
        d.total_bytes = prop.totalGlobalMem;
        size_t free_b = 0, total_b = 0;
        if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) d.free_bytes = free_b;
        cudaGetLastError();
        out.devices.push_back(d);
    }
    return out;
}

}  // namespace cuda
}  // namespace owl
