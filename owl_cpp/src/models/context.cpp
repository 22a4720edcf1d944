// Context: a conversation's KV cache over a shared Model, and the loop that takes a batch through the layers in
// pieces (split at modality boundaries and every n_batch tokens) and produces logits and hidden states.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <unordered_map>

#include "forward.h"
#include "owl/error.h"
#include "owl/sampler.h"

namespace owl {

namespace {
// "cuda:0 (...) layers 0-11, cpu (...) layers 12-23" for messages.
std::string describe(const std::vector<LayerSpan>& spans) {
    std::string out;
    for (const LayerSpan& s : spans)
        out += (out.empty() ? "" : ", ") + s.backend + " layers " + std::to_string(s.first_layer) + "-" + std::to_string(s.end_layer - 1);
    return out;
}
}  // namespace

// One call at a time: a second thread entering while the first is inside gets a clear error, not a corrupted cache.
class Context::Use {
public:
    explicit Use(Context& c) : c_(c) {
        if (c_.busy_.exchange(true, std::memory_order_acquire))
            throw Error("this context is in use by another thread: give each thread its own context (a model can be shared)");
    }
    ~Use() { c_.busy_.store(false, std::memory_order_release); }

private:
    Context& c_;
};

Context::Context(std::shared_ptr<const Model> model, const ContextParams& params)
    : model_(std::move(model)), n_ctx_(params.n_ctx), n_batch_(params.n_batch), kv_type_(params.kv_type) {
    const HParams& hp = model_->hparams();
    if (n_ctx_ < 1) throw Error("context length must be at least 1, got " + std::to_string(n_ctx_));
    if (n_ctx_ > (int64_t(1) << 31)) throw Error("context length " + std::to_string(n_ctx_) + " is larger than 2^31 positions");
    if (n_batch_ < 1 || n_batch_ > (int64_t(1) << 20)) throw Error("batch size must be in [1, 2^20], got " + std::to_string(n_batch_));
    if (params.n_threads < 1 || params.n_threads > 1024) throw Error("thread count must be in [1, 1024], got " + std::to_string(params.n_threads));
    if (kv_type_ != DType::F32 && kv_type_ != DType::F16) throw Error(std::string("KV cache type must be f16 or f32, not ") + dtype_name(kv_type_));
    // The whole cache must be addressable before anything is allocated: n_layer * 2 * n_head_kv * n_ctx * head_dim.
    const double kv_bytes = 2.0 * double(hp.n_layer) * double(hp.n_head_kv) * double(n_ctx_) * double(hp.head_dim) *
                            double(dtype_row_bytes(kv_type_, 2)) / 2.0;
    if (kv_bytes > double(std::numeric_limits<int64_t>::max() / 4))
        throw Error("a KV cache of " + std::to_string(n_ctx_) + " positions does not fit in memory (" + std::to_string(kv_bytes / 1e9) + " GB)");
    n_batch_ = std::min(n_batch_, n_ctx_);
    // Where the layers run: all on the backend, or (n_gpu_layers) the first ones there and the rest on the CPU.
    const int64_t L = hp.n_layer;
    if (params.n_gpu_layers < -1)
        throw Error("n_gpu_layers must be -1 (every layer on the backend) or a layer count >= 0 (the first layers on '" + params.backend +
                    "', the rest on the CPU), got " + std::to_string(params.n_gpu_layers));
    const int64_t on_device = params.n_gpu_layers < 0 ? L : std::min(params.n_gpu_layers, L);
    if (on_device == L) add_span(params.backend, params.n_threads, 0, L);
    else if (on_device == 0) add_span("cpu", params.n_threads, 0, L);
    else {
        add_span(params.backend, params.n_threads, 0, on_device);
        add_span("cpu", params.n_threads, on_device, L);
    }
    // The architecture's state lives on one backend, beside layers it reads in forward and add_image: refused
    // before any weight is copied when the layers are split.
    state_ = model_->architecture().new_state(*model_, *spans_[0]->be, n_ctx_, n_batch_);
    if (state_ && spans_.size() > 1)
        throw Error("n_gpu_layers " + std::to_string(params.n_gpu_layers) + ": the '" + hp.arch +
                    "' architecture keeps per-conversation state (attached images or video) on one device, so its layers "
                    "cannot be split between '" + params.backend + "' and the CPU yet: use n_gpu_layers -1 (all " +
                    std::to_string(L) + " layers on '" + params.backend + "') or 0 (all on the CPU)");
    for (size_t s = 0; s < spans_.size(); ++s) {
        Impl& c = *spans_[s];
        Backend& be = *c.be;
        WeightRange range;
        range.first = c.first;
        range.end = c.end;
        range.input = s == 0;
        range.output = s + 1 == spans_.size();
        be.attach(*model_, range);
        const size_t kv_layer_bytes = 2 * size_t(dtype_row_bytes(kv_type_, hp.n_head_kv * hp.head_dim)) * size_t(n_ctx_);
        try {
            for (int64_t il = c.first; il < c.end; ++il) {
                c.k_cache.push_back(be.alloc(kv_type_, hp.n_head_kv * n_ctx_, hp.head_dim));
                c.v_cache.push_back(be.alloc(kv_type_, hp.n_head_kv * n_ctx_, hp.head_dim));
            }
        } catch (const Error& e) {
            if (be.device() == Device::CPU) throw;
            throw Error(std::string(e.what()) + ": the KV cache of layers " + std::to_string(c.first) + "-" + std::to_string(c.end - 1) + " needs " +
                        std::to_string(((c.end - c.first) * kv_layer_bytes + (1 << 20) - 1) >> 20) + " MiB for " + std::to_string(n_ctx_) +
                        " positions: use a smaller n_ctx, or fewer layers on the GPU (n_gpu_layers)");
        }
        const int64_t B = n_batch_, Q = hp.n_head * hp.head_dim, KV = hp.n_head_kv * hp.head_dim;
        c.x = be.alloc(DType::F32, B, hp.n_embd);
        c.h = be.alloc(DType::F32, B, hp.n_embd);
        c.q = be.alloc(DType::F32, B, Q);
        c.k = be.alloc(DType::F32, B, KV);
        c.v = be.alloc(DType::F32, B, KV);
        c.attn = be.alloc(DType::F32, B, Q);
        c.gate = be.alloc(DType::F32, B, hp.n_ff);
        c.up = be.alloc(DType::F32, B, hp.n_ff);
    }
    pos_.resize(size_t(n_batch_));
}

void Context::add_span(const std::string& backend, int n_threads, int64_t first, int64_t end) {
    auto c = std::make_unique<Impl>();
    c->be = make_backend(backend, n_threads);
    c->first = first;
    c->end = end;
    spans_.push_back(std::move(c));
}

Context::~Context() = default;

const float* Context::last_logits() const {
    const size_t V = size_t(model_->hparams().n_vocab);
    if (logits_.size() < V) throw Error("no logits yet: evaluate at least one token first");
    if (logits_pending_) {  // left on the device by decode(.., logits_to_host = false): copy them now
        const Impl& head = *spans_.back();
        head.be->download(head.out->tensor().slice(0, 1), logits_.data() + (logits_.size() - V));
        logits_pending_ = false;
    }
    return logits_.data() + (logits_.size() - V);
}

void Context::top_logits(int64_t n, int64_t k, std::vector<std::pair<float, int32_t>>& out) {
    Use use(*this);
    const int64_t V = model_->hparams().n_vocab;
    if (n < 1 || n > V) throw Error("top_logits: n must be in [1, " + std::to_string(V) + "], got " + std::to_string(n));
    if (!logits_pending_) return owl::top_logits(last_logits(), n, k, out);
    const Impl& head = *spans_.back();
    Tensor row = head.out->tensor().slice(0, 1);
    row.cols = n;  // the row's first n logits
    head.be->top_k(row, k, out);
}

void Context::truncate(int64_t n) {
    Use use(*this);
    if (n < 0 || n > n_past_) throw Error("cannot truncate the cache to " + std::to_string(n) + " positions (it holds " + std::to_string(n_past_) + ")");
    n_past_ = n;
    if (state_) state_->truncate(n);
}

void Context::add_image(const float* embeds, int64_t n_tokens, int64_t start) {
    Use use(*this);
    if (!state_) throw Error("model '" + model_->hparams().arch + "' has no hyper-attention layers: it cannot take images");
    // A NaN/inf from the vision tower would spread through every later token's attention: refuse it here.
    const int64_t E = model_->hparams().n_embd;
    for (int64_t i = 0; i < n_tokens * E; ++i)
        if (!std::isfinite(embeds[i]))
            throw Error("image embeddings hold a non-finite value (" + std::to_string(embeds[i]) + ") at visual token " + std::to_string(i / E) +
                        ": the vision tower's output is broken");
    state_->add_image(embeds, n_tokens, start, n_past_);
}

void Context::copy_state_from(const Context& other) {
    if (&other == this) return;
    if (other.model_.get() != model_.get())
        throw Error("copy_state_from: the source context runs another model (a copy needs the same loaded model)");
    Use use(*this);
    Use use_other(const_cast<Context&>(other));  // the source must not change while it is read
    if (other.spans_.size() == 1 && spans_.size() == 1 && other.spans_[0]->be->device() != spans_[0]->be->device())
        throw Error(std::string("copy_state_from: the source context is on ") + device_name(other.spans_[0]->be->device()) + ", this one on " +
                    device_name(spans_[0]->be->device()));
    bool same_spans = other.spans_.size() == spans_.size();
    for (size_t s = 0; same_spans && s < spans_.size(); ++s)
        same_spans = other.spans_[s]->first == spans_[s]->first && other.spans_[s]->end == spans_[s]->end &&
                     other.spans_[s]->be->device() == spans_[s]->be->device();
    if (!same_spans)
        throw Error("copy_state_from: the source context places its layers as " + describe(other.spans()) + ", this one as " +
                    describe(spans()) + " (a copy needs the same split, n_gpu_layers)");
    if (other.kv_type_ != kv_type_)
        throw Error(std::string("copy_state_from: the source's KV cache is ") + dtype_name(other.kv_type_) + ", this one's " + dtype_name(kv_type_));
    if (other.n_past_ > n_ctx_)
        throw Error("copy_state_from: the source holds " + std::to_string(other.n_past_) + " positions, more than this context's " +
                    std::to_string(n_ctx_));
    const HParams& hp = model_->hparams();
    if (state_) state_->copy_from(*other.state_);  // first: an architecture that refuses leaves everything as it was
    const int64_t n = other.n_past_;
    for (size_t s = 0; s < spans_.size(); ++s) {
        const Impl& from = *other.spans_[s];
        Impl& to = *spans_[s];
        from.be->synchronize();  // its queued writes to the cache are done before another stream reads it
        if (n > 0)
            for (size_t l = 0; l < to.k_cache.size(); ++l)
                for (int64_t kh = 0; kh < hp.n_head_kv; ++kh) {  // cache rows [head][ctx]: each head's first n positions
                    to.be->copy(from.k_cache[l]->tensor().slice(kh * other.n_ctx_, n), to.k_cache[l]->tensor().slice(kh * n_ctx_, n));
                    to.be->copy(from.v_cache[l]->tensor().slice(kh * other.n_ctx_, n), to.v_cache[l]->tensor().slice(kh * n_ctx_, n));
                }
        to.be->synchronize();
    }
    n_past_ = n;
    if (other.logits_pending_) other.last_logits();  // copies them out of other's device buffer
    logits_ = other.logits_;
    logits_pending_ = false;
    hidden_ = other.hidden_;
}

const Backend& Context::backend() const { return *spans_[0]->be; }

int Context::n_threads() const {
    int n = 1;
    for (const auto& c : spans_) n = std::max(n, c->be->n_threads());
    return n;
}

std::vector<LayerSpan> Context::spans() const {
    std::vector<LayerSpan> out;
    for (const auto& c : spans_) out.push_back({c->be->name(), c->first, c->end});
    return out;
}

int64_t Context::n_images() const { return state_ ? state_->n_images() : 0; }
size_t Context::visual_bytes() const { return state_ ? state_->bytes() : 0; }

size_t Context::kv_bytes_per_token() const {
    const HParams& hp = model_->hparams();
    return size_t(2 * hp.n_layer) * size_t(dtype_row_bytes(kv_type_, hp.n_head_kv * hp.head_dim));
}

const std::vector<float>& Context::decode(const Batch& b, bool all_logits, bool logits_to_host) {
    Use use(*this);
    return decode_locked(b, all_logits, logits_to_host);
}

const std::vector<float>& Context::decode_locked(const Batch& b, bool all_logits, bool logits_to_host) {
    const HParams& hp = model_->hparams();
    const int64_t T = b.n;
    if (T <= 0) throw Error("decode called with no tokens");
    if ((b.ids == nullptr) == (b.embeds == nullptr)) throw Error("a batch holds either token ids or embeddings");
    if (T > n_ctx_ - n_past_)
        throw Error("context overflow: " + std::to_string(n_past_) + " cached + " + std::to_string(T) + " new tokens exceed the context length " + std::to_string(n_ctx_));
    if (b.ids)
        for (int64_t i = 0; i < T; ++i)
            if (b.ids[i] < 0 || b.ids[i] >= hp.n_vocab)
                throw Error("token id " + std::to_string(b.ids[i]) + " at index " + std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(hp.n_vocab) + ")");
    if (b.embeds)
        for (int64_t i = 0; i < T * hp.n_embd; ++i)
            if (!std::isfinite(b.embeds[i]))
                throw Error("embedding of token " + std::to_string(i / hp.n_embd) + " holds a non-finite value (" + std::to_string(b.embeds[i]) + ")");
    if (b.pos)
        for (int64_t i = 0; i < T; ++i)
            if (b.pos[i] < 0) throw Error("position " + std::to_string(b.pos[i]) + " at index " + std::to_string(i) + " is negative");
    if (b.modality)
        for (int64_t i = 0; i < T; ++i)
            if (b.modality[i] != Modality::Text && b.modality[i] != Modality::Image)
                throw Error("modality at index " + std::to_string(i) + " is neither text nor image");
    const int64_t V = hp.n_vocab, E = hp.n_embd;
    logits_pending_ = false;
    logits_.resize(size_t((all_logits ? T : 1) * V));
    hidden_.resize(size_t((all_logits ? T : 1) * E));
    for (int64_t start = 0; start < T;) {
        // A piece: one modality, at most n_batch tokens.
        const Modality mod = b.modality ? b.modality[start] : Modality::Text;
        int64_t n = 1;
        while (start + n < T && n < n_batch_ && (!b.modality || b.modality[start + n] == mod)) ++n;
        const bool last = start + n == T;
        float* logits = all_logits ? logits_.data() + start * V : (last ? logits_.data() : nullptr);
        float* hidden = all_logits ? hidden_.data() + start * E : (last ? hidden_.data() : nullptr);
        forward(b, start, n, all_logits, logits, hidden, logits_to_host);
        start += n;
    }
    return logits_;
}

namespace {
// The pass of one piece through one span: its backend, its scratch rows, the attention shape over its caches.
ForwardPass make_pass(const Model& m, Context::Impl& c, ArchState* state, Modality modality, int64_t T, int64_t n_past,
                      int64_t n_ctx, const int32_t* pos) {
    const HParams& hp = m.hparams();
    ForwardPass p{m, hp, *c.be, c, state, modality, T, n_past, n_ctx, pos,
                  c.x->tensor().slice(0, T), c.h->tensor().slice(0, T), c.q->tensor().slice(0, T),
                  c.k->tensor().slice(0, T), c.v->tensor().slice(0, T), c.attn->tensor().slice(0, T),
                  c.gate->tensor().slice(0, T), c.up->tensor().slice(0, T), {}};
    p.shape.T = T;
    p.shape.n_past = n_past;
    p.shape.n_head = hp.n_head;
    p.shape.n_head_kv = hp.n_head_kv;
    p.shape.head_dim = hp.head_dim;
    p.shape.ctx_stride = n_ctx;
    p.shape.scale = 1.0f / std::sqrt(float(hp.head_dim));
    return p;
}

// Rows [0, T) of the hidden state x from one span's backend to the next's: straight into the destination when
// either side is the host, else through `host`.
void hand_off(Context::Impl& from, Context::Impl& to, int64_t T, std::vector<float>& host) {
    const Tensor src = from.x->tensor().slice(0, T), dst = to.x->tensor().slice(0, T);
    if (dst.device == Device::CPU) {
        from.be->download(src, dst.data);
    } else if (src.device == Device::CPU) {
        to.be->upload(src.data, dst);
    } else {
        host.resize(size_t(T * src.cols));
        from.be->download(src, host.data());
        to.be->upload(host.data(), dst);
    }
}
}  // namespace

void Context::forward(const Batch& b, int64_t offset, int64_t T, bool all_logits, float* logits_out, float* hidden_out,
                      bool logits_to_host) {
    const Model& m = *model_;
    const HParams& hp = m.hparams();
    const Architecture& arch = m.architecture();
    const Modality modality = b.modality ? b.modality[offset] : Modality::Text;
    int32_t* pos = pos_.data();
    for (int64_t t = 0; t < T; ++t) pos[t] = b.pos ? b.pos[offset + t] : int32_t(n_past_ + t);

    // The last layer only needs the rows whose logits are wanted: none for a middle piece, the last row unless
    // all logits are asked for. Only those go through the final norm and the (large) output matrix.
    const int64_t keep_last = !logits_out ? T : (all_logits ? 0 : T - 1);
    const int64_t first = all_logits ? 0 : T - 1, rows = T - first;
    Impl& head = *spans_.back();  // the span that runs the output head
    const bool head_on_host = head.be->device() == Device::CPU;
    Tensor h;
    for (size_t s = 0; s < spans_.size(); ++s) {
        Impl& c = *spans_[s];
        Backend& be = *c.be;
        const bool is_head = &c == &head, on_host = be.device() == Device::CPU;
        ForwardPass p = make_pass(m, c, state_.get(), modality, T, n_past_, n_ctx_, pos);
        if (s > 0) hand_off(*spans_[s - 1], c, T, hand_off_);
        if (is_head) h = p.h.slice(first, rows);
        if (is_head && logits_out && !on_host && (!c.out || c.out->tensor().rows < rows)) c.out = be.alloc(DType::F32, rows, hp.n_vocab);
        auto run = [&] {
            if (s == 0) {
                if (b.ids) arch.embed(p, b.ids + offset);
                else be.upload(b.embeds + offset * hp.n_embd, p.x);
            }
            for (int64_t il = c.first; il < c.end; ++il) arch.run_layer(p, il, il == hp.n_layer - 1 ? keep_last : 0);
            if (!is_head || !logits_out) return;
            arch.final_norm(p, p.x.slice(first, rows), h);
            if (!on_host) be.matmul(m.output(), h, arch.output_bias(m), c.out->tensor().slice(0, rows));
        };
        // A device backend runs a decode step (one token) as one recorded graph: the whole step, or a split
        // context's first span (what follows a hand-off starts with a copy from the host, not recorded). A step
        // that cannot be recorded (a scratch buffer had to grow, say) runs op by op, which also surfaces any
        // real error.
        if (T == 1 && b.ids && logits_out && !on_host && s == 0 && be.begin_graph()) {
            try {
                run();
                be.end_graph();
            } catch (const std::exception& e) {
                be.abort_graph();
                if (const char* v = std::getenv("OWL_DEBUG_GRAPHS"); v && *v && std::strcmp(v, "0") != 0)
                    std::fprintf(stderr, "owl: decode step not recorded as a graph, run op by op: %s\n", e.what());
                run();
            }
        } else {
            run();
        }
    }
    n_past_ += T;
    if (!logits_out) return;
    head.be->download(h, hidden_out);
    if (head_on_host)  // straight into the caller's array
        head.be->matmul(m.output(), h, arch.output_bias(m), Tensor{logits_out, DType::F32, Device::CPU, rows, hp.n_vocab});
    else if (!logits_to_host && !all_logits)  // one row, in head.out until last_logits() / top_logits()
        logits_pending_ = true;
    else
        head.be->download(head.out->tensor().slice(0, rows), logits_out);
}

void decode_step(const std::vector<Context*>& ctxs, const std::vector<int32_t>& tokens) {
    const size_t N = ctxs.size();
    if (N == 0) throw Error("decode_step called with no contexts");
    if (tokens.size() != N)
        throw Error("decode_step: " + std::to_string(N) + " contexts but " + std::to_string(tokens.size()) + " tokens (one token per context)");
    for (size_t i = 0; i < N; ++i)
        if (!ctxs[i]) throw Error("decode_step: context " + std::to_string(i) + " is null");
    const Model& m = *ctxs[0]->model_;
    std::unordered_map<const Context*, size_t> seen;
    for (size_t i = 0; i < N; ++i) {
        if (ctxs[i]->model_.get() != &m)
            throw Error("decode_step: context " + std::to_string(i) + " runs another model than context 0 (a batched step runs one model)");
        const auto [it, fresh] = seen.emplace(ctxs[i], i);
        if (!fresh)
            throw Error("decode_step: context " + std::to_string(i) + " is the same as context " + std::to_string(it->second) +
                        " (each conversation may appear once per step)");
    }
    // Every context busy for the whole step; one already in use releases those taken so far and changes nothing.
    std::vector<std::unique_ptr<Context::Use>> uses;
    uses.reserve(N);
    for (size_t i = 0; i < N; ++i) {
        try {
            uses.push_back(std::make_unique<Context::Use>(*ctxs[i]));
        } catch (const Error& e) {
            throw Error("decode_step: context " + std::to_string(i) + ": " + e.what());
        }
    }
    const HParams& hp = m.hparams();
    const int64_t V = hp.n_vocab, E = hp.n_embd, n = int64_t(N);
    for (size_t i = 0; i < N; ++i) {
        if (tokens[i] < 0 || tokens[i] >= V)
            throw Error("decode_step: token id " + std::to_string(tokens[i]) + " for context " + std::to_string(i) +
                        " is outside the vocabulary [0, " + std::to_string(V) + ")");
        const Context& c = *ctxs[i];
        if (c.n_past_ >= c.n_ctx_)
            throw Error("decode_step: context " + std::to_string(i) + " is full (" + std::to_string(c.n_past_) +
                        " cached positions = its context length): context overflow");
    }
    bool all_cpu = true;
    for (const Context* c : ctxs) all_cpu = all_cpu && c->spans_.size() == 1 && c->spans_[0]->be->device() == Device::CPU;
    if (!all_cpu) {
        // Device contexts have their own streams and copies of the cache, split ones their spans: no batched
        // path for them yet.
        for (size_t i = 0; i < N; ++i) ctxs[i]->decode_locked(Batch::of_ids(&tokens[i], 1), false);
        return;
    }

    // One backend (the first context's thread pool) runs the step over N stacked rows. Scratch: the first
    // context's when its n_batch rows suffice, else buffers for this call.
    Context& lead = *ctxs[0];
    Context::Impl& L = *lead.spans_[0];
    Backend& be = *L.be;
    std::vector<std::unique_ptr<DeviceBuffer>> owned;
    auto rows_of = [&](const std::unique_ptr<DeviceBuffer>& buf) {
        if (buf->tensor().rows >= n) return buf->tensor().slice(0, n);
        owned.push_back(be.alloc(DType::F32, n, buf->tensor().cols));
        return owned.back()->tensor();
    };
    const Tensor X = rows_of(L.x), H = rows_of(L.h), Q = rows_of(L.q), K = rows_of(L.k), Vv = rows_of(L.v),
                 A = rows_of(L.attn), G = rows_of(L.gate), U = rows_of(L.up);
    std::vector<int32_t> pos(N);
    for (size_t i = 0; i < N; ++i) pos[i] = int32_t(ctxs[i]->n_past_);
    // The stacked pass (row-wise blocks: projections, FFN) and one single-token pass per context (its cache,
    // its architecture state: attention), over the same rows.
    ForwardPass all{m, hp, be, L, nullptr, Modality::Text, n, 0, lead.n_ctx_, pos.data(), X, H, Q, K, Vv, A, G, U, {}};
    std::vector<ForwardPass> one;
    one.reserve(N);
    for (size_t i = 0; i < N; ++i) {
        Context& c = *ctxs[i];
        const int64_t r = int64_t(i);
        one.push_back(ForwardPass{m, hp, be, *c.spans_[0], c.state_.get(), Modality::Text, 1, c.n_past_, c.n_ctx_, &pos[i],
                                  X.slice(r, 1), H.slice(r, 1), Q.slice(r, 1), K.slice(r, 1), Vv.slice(r, 1), A.slice(r, 1),
                                  G.slice(r, 1), U.slice(r, 1), {}});
        ops::AttentionShape& s = one.back().shape;
        s.T = 1;
        s.n_past = c.n_past_;
        s.n_head = hp.n_head;
        s.n_head_kv = hp.n_head_kv;
        s.head_dim = hp.head_dim;
        s.ctx_stride = c.n_ctx_;
        s.scale = 1.0f / std::sqrt(float(hp.head_dim));
    }
    const Architecture& arch = m.architecture();
    arch.embed(all, tokens.data());
    for (int64_t il = 0; il < hp.n_layer; ++il) arch.step_layer(all, one, il);
    arch.final_norm(all, X, H);
    std::vector<float> logits(size_t(n * V));
    be.matmul(m.output(), H, arch.output_bias(m), Tensor{logits.data(), DType::F32, Device::CPU, n, V});
    for (size_t i = 0; i < N; ++i) {
        Context& c = *ctxs[i];
        c.logits_pending_ = false;
        c.logits_.resize(size_t(V));
        c.hidden_.resize(size_t(E));
        std::memcpy(c.logits_.data(), logits.data() + i * size_t(V), size_t(V) * sizeof(float));
        be.download(H.slice(int64_t(i), 1), c.hidden_.data());
        ++c.n_past_;
    }
}

}  // namespace owl
