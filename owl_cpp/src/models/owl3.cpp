// mPLUG-Owl3 (docs/owl3.md section 4): a qwen2 decoder whose hyper layers also attend to images, all here:
//  - load_extra: the owl3.* keys and each hyper layer's fused visual K|V projection and gate;
//  - add_image: visual K/V of an image for every hyper layer, computed once (the official code recomputes them
//    at every decode step): K/V = v_kv_proj(RMSNorm(embeds; the layer's own input norm)), channels interleaved
//    per KV head as (K | V), and MI-Rope: every key of image j rotated at ONE position;
//  - attend: which images each token sees, and how visual attention merges with text attention:
//      240728 / 241014: a separate visual softmax over images with start < i, mixed in by a sigmoid gate
//                       (per head from the self-attention output, or a static vector); tokens that see no
//                       image keep the plain self-attention output.
//      241101:          visual keys of images with start <= i join the text keys in one softmax.
#include <algorithm>

#include "forward.h"
#include "owl/error.h"
#include "tensor_loader.h"
#include "unicode.h"

namespace owl {
namespace {

enum class HyperGate { None, Proj, Vector };  // 241101 / 240728 per-head Linear(d,d) / 241014 static [H]

struct HyperLayer {
    WeightView kv;                  // v_kv_proj [2*n_head_kv*head_dim][n_embd], rows (head, K|V, dim)
    std::vector<float> kv_bias;
    WeightView gate_proj;           // 240728: [head_dim][head_dim]
    std::vector<float> gate_proj_bias;
    std::vector<float> gate;        // 241014: [n_embd]
};

struct Owl3Weights : ArchWeights {
    std::string variant;            // "240728" | "241014" | "241101"
    std::vector<int64_t> layers;    // 0-based decoder layers with hyper-attention
    HyperGate gate = HyperGate::None;
    bool fused = false;             // 241101: visual and text keys share one softmax
    int64_t mi_rope_offset = 1;     // image j's keys are rotated at position start_j + offset
    std::vector<int> slot;          // per decoder layer: index into hyper, or -1
    std::vector<HyperLayer> hyper;

    void matrices(std::vector<WeightView*>& out) override {
        for (HyperLayer& h : hyper) {
            out.push_back(&h.kv);
            out.push_back(&h.gate_proj);
        }
    }
    void weights(std::vector<const WeightView*>& m, std::vector<const std::vector<float>*>& v, const WeightRange& r) const override {
        for (size_t i = 0; i < hyper.size(); ++i) {
            if (!r.has_layer(layers[i])) continue;
            const HyperLayer& h = hyper[i];
            for (const WeightView* w : {&h.kv, &h.gate_proj}) m.push_back(w);
            for (const std::vector<float>* b : {&h.kv_bias, &h.gate_proj_bias, &h.gate}) v.push_back(b);
        }
    }
    const HyperLayer* at(int64_t il) const { return slot[size_t(il)] < 0 ? nullptr : &hyper[size_t(slot[size_t(il)])]; }
};

const Owl3Weights& weights_of(const Model& m) { return static_cast<const Owl3Weights&>(*m.arch_weights()); }

// The images attached to one context: their placeholder positions and visual K/V per hyper layer.
class Owl3State : public ArchState {
public:
    Owl3State(const Model& m, Backend& be, int64_t n_ctx, int64_t n_batch) : m_(m), w_(weights_of(m)), be_(be), n_ctx_(n_ctx) {
        const HParams& hp = m.hparams();
        const int64_t Q = hp.n_head * hp.head_dim;
        if (!w_.fused) vctx = be.alloc(DType::F32, n_batch, Q);  // the separate visual softmax's output
        if (w_.gate == HyperGate::Proj) gate = be.alloc(DType::F32, n_batch * hp.n_head, hp.head_dim);
        visible.resize(size_t(n_batch));
        k.resize(w_.hyper.size());
        v.resize(w_.hyper.size());
        for (const HyperLayer& h : w_.hyper) {  // 241014's static gates, on the backend's device
            gate_vec.emplace_back();
            if (h.gate.empty()) continue;
            gate_vec.back() = be.alloc(DType::F32, 1, Q);
            be.upload(h.gate.data(), gate_vec.back()->tensor());
        }
    }

    struct Image {
        int64_t start;     // absolute position of the placeholder's first token
        int64_t rows_end;  // visual rows [previous rows_end, rows_end) belong to this image
    };
    std::vector<Image> images;
    std::vector<std::unique_ptr<DeviceBuffer>> k, v;  // per hyper layer [capacity rows][n_head_kv * head_dim]
    std::unique_ptr<DeviceBuffer> vctx, gate;         // scratch of the gated variants
    std::vector<std::unique_ptr<DeviceBuffer>> gate_vec;  // per hyper layer: the static gate [1][n_head * head_dim]
    std::vector<int64_t> visible;                     // visual rows each token of the piece sees

    int64_t rows() const { return images.empty() ? 0 : images.back().rows_end; }
    int64_t n_images() const override { return int64_t(images.size()); }
    size_t bytes() const override {
        size_t n = 0;
        for (size_t i = 0; i < k.size(); ++i)
            if (k[i]) n += k[i]->bytes() + v[i]->bytes();
        return n;
    }
    void truncate(int64_t n) override {
        // Images whose placeholder starts at or after n are forgotten with the text (their rows are the last ones).
        while (!images.empty() && images.back().start >= n) images.pop_back();
    }
    void add_image(const float* embeds, int64_t n_tokens, int64_t start, int64_t n_past) override;

private:
    void reserve(size_t layer, int64_t rows);
    const Model& m_;
    const Owl3Weights& w_;
    Backend& be_;
    int64_t n_ctx_;
};

void Owl3State::reserve(size_t layer, int64_t rows) {
    const HParams& hp = m_.hparams();
    const int64_t width = hp.n_head_kv * hp.head_dim;
    if (k[layer] && k[layer]->tensor().rows >= rows) return;
    const int64_t cap = std::max<int64_t>(rows, k[layer] ? 2 * k[layer]->tensor().rows : 0);
    auto grow = [&](std::unique_ptr<DeviceBuffer>& buf) {
        auto bigger = be_.alloc(DType::F32, cap, width);
        if (buf && this->rows() > 0) be_.copy(buf->tensor().slice(0, this->rows()), bigger->tensor().slice(0, this->rows()));
        buf = std::move(bigger);
    };
    grow(k[layer]);
    grow(v[layer]);
}

void Owl3State::add_image(const float* embeds, int64_t n_tokens, int64_t start, int64_t n_past) {
    const HParams& hp = m_.hparams();
    if (n_tokens < 1) throw Error("an image needs at least one visual token");
    if (n_tokens > (int64_t(1) << 31)) throw Error("an image of " + std::to_string(n_tokens) + " visual tokens is too large");
    if (start < n_past)
        throw Error("image placeholder at position " + std::to_string(start) + " lies before the " + std::to_string(n_past) + " tokens already evaluated");
    if (!images.empty() && start <= images.back().start)
        throw Error("images must be added in prompt order (start " + std::to_string(start) + " after " + std::to_string(images.back().start) + ")");
    if (start >= n_ctx_ - w_.mi_rope_offset) throw Error("image placeholder at position " + std::to_string(start) + " lies outside the context of " + std::to_string(n_ctx_));
    const int64_t rope_pos = start + w_.mi_rope_offset;

    const int64_t E = hp.n_embd, hd = hp.head_dim, nkv = hp.n_head_kv;
    const int64_t row0 = rows();
    auto in = be_.alloc(DType::F32, n_tokens, E);
    auto normed = be_.alloc(DType::F32, n_tokens, E);
    auto kv = be_.alloc(DType::F32, n_tokens, 2 * nkv * hd);
    be_.upload(embeds, in->tensor());
    const std::vector<int32_t> pos(static_cast<size_t>(n_tokens), static_cast<int32_t>(rope_pos));
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const HyperLayer* h = w_.at(il);
        if (!h) continue;
        const size_t s = size_t(w_.slot[size_t(il)]);
        be_.rms_norm(in->tensor(), m_.layers()[size_t(il)].attn_norm.data(), hp.rms_eps, normed->tensor());  // shared LN
        be_.matmul(h->kv, normed->tensor(), h->kv_bias.data(), kv->tensor());
        reserve(s, row0 + n_tokens);
        const Tensor k_new = k[s]->tensor().slice(row0, n_tokens), v_new = v[s]->tensor().slice(row0, n_tokens);
        be_.split_kv(kv->tensor(), nkv, hd, k_new, v_new);
        be_.rope(k_new, nkv, hd, pos.data(), hp.rope_base, hp.rope_mode);  // MI-Rope
    }
    images.push_back({start, row0 + n_tokens});
}

class Owl3 : public Architecture {
public:
    std::string name() const override { return "owl3"; }
    RopeMode rope_mode() const override { return RopeMode::Neox; }  // a qwen2 decoder

    std::unique_ptr<ArchWeights> load_extra(TensorLoader& L, const HParams& hp) const override {
        auto w = std::make_unique<Owl3Weights>();
        const GGUFFile& f = L.file();
        w->variant = f.get_string("owl3.variant");
        const std::string gate = f.get_string("owl3.hyper_gate");
        if (gate == "proj") w->gate = HyperGate::Proj;
        else if (gate == "vector") w->gate = HyperGate::Vector;
        else if (gate == "none") w->gate = HyperGate::None;
        else L.fail("owl3.hyper_gate '" + unicode::sanitize_utf8(gate) + "' is not one of proj, vector, none");
        w->fused = f.get_bool("owl3.fused", false);
        if (w->fused != (w->gate == HyperGate::None)) L.fail("owl3.fused must be true exactly when owl3.hyper_gate is 'none'");
        const uint64_t mi_rope_offset = f.get_uint("owl3.mi_rope_offset");  // checked before narrowing: 2^64-1 is not -1
        if (mi_rope_offset > 1) L.fail("owl3.mi_rope_offset " + std::to_string(mi_rope_offset) + " must be 0 or 1");
        w->mi_rope_offset = int64_t(mi_rope_offset);
        w->slot.assign(size_t(hp.n_layer), -1);
        for (int64_t layer : f.get_int_array("owl3.hyper_layers")) {
            if (layer < 0 || layer >= hp.n_layer) L.fail("owl3.hyper_layers names layer " + std::to_string(layer) + " of " + std::to_string(hp.n_layer));
            if (w->slot[size_t(layer)] >= 0) L.fail("owl3.hyper_layers repeats layer " + std::to_string(layer));
            w->slot[size_t(layer)] = int(w->layers.size());
            w->layers.push_back(layer);
        }
        if (w->layers.empty()) L.fail("owl3.hyper_layers is empty");
        const int64_t E = hp.n_embd, KV = hp.n_head_kv * hp.head_dim;
        w->hyper.resize(w->layers.size());
        for (size_t i = 0; i < w->layers.size(); ++i) {
            const std::string p = "blk." + std::to_string(w->layers[i]) + ".";
            HyperLayer& h = w->hyper[i];
            h.kv = L.matrix(p + "hyper_kv.weight", E, 2 * KV);
            h.kv_bias = L.vec(p + "hyper_kv.bias", 2 * KV);
            if (w->gate == HyperGate::Proj) {
                h.gate_proj = L.matrix(p + "hyper_gate_proj.weight", hp.head_dim, hp.head_dim);
                h.gate_proj_bias = L.vec(p + "hyper_gate_proj.bias", hp.head_dim);
            } else if (w->gate == HyperGate::Vector) {
                h.gate = L.vec(p + "hyper_gate.weight", hp.n_head * hp.head_dim);
            }
        }
        return w;
    }

    void describe(const Model& m, ArchInfo& out) const override {
        const Owl3Weights& w = weights_of(m);
        out.emplace_back("hyper_variant", w.variant);
        out.emplace_back("hyper_layers", w.layers);
        out.emplace_back("hyper_fused", w.fused);
    }

    std::unique_ptr<ArchState> new_state(const Model& m, Backend& be, int64_t n_ctx, int64_t n_batch) const override {
        return std::make_unique<Owl3State>(m, be, n_ctx, n_batch);
    }

    bool prunable(const ForwardPass& p, int64_t il) const override {
        return !(weights_of(p.m).at(il) && p.state->n_images() > 0);
    }

    void attend(ForwardPass& p, int64_t il, int64_t skip) const override {
        const Owl3Weights& w = weights_of(p.m);
        auto& st = static_cast<Owl3State&>(*p.state);
        const HyperLayer* h = w.at(il);
        if (!h || st.images.empty()) return blocks::causal_attention(p, il, skip);
        // prunable() is false here, so skip == 0: every row of the piece goes through.
        const HParams& hp = p.hp;
        // Visual rows each token sees: images are ordered by start, so visible ones form a prefix.
        bool any = false;
        for (int64_t t = 0; t < p.T; ++t) {
            const int64_t i = p.n_past + t;
            int64_t rows = 0;
            for (const auto& img : st.images)
                if (w.fused ? img.start <= i : img.start < i) rows = img.rows_end;
            st.visible[size_t(t)] = rows;
            any = any || rows > 0;
        }
        const size_t s = size_t(w.slot[size_t(il)]);
        const ops::PrefixKV visual{st.k[s]->tensor().f32(), st.v[s]->tensor().f32(), st.visible.data()};
        const Tensor attn = p.attn.slice(0, p.T);
        if (w.fused) return p.be.attention(p.shape, p.q, p.k_cache(il), p.v_cache(il), attn, &visual, true);
        p.be.attention(p.shape, p.q, p.k_cache(il), p.v_cache(il), attn);
        if (!any) return;
        const Tensor vctx = st.vctx->tensor().slice(0, p.T);
        p.be.attention(p.shape, p.q, p.k_cache(il), p.v_cache(il), vctx, &visual, false);
        if (w.gate == HyperGate::Proj) {  // the same Linear(d, d) on every head of the self-attention output
            const Tensor g = st.gate->tensor().slice(0, p.T * hp.n_head);
            p.be.matmul(h->gate_proj, attn.reshape(p.T * hp.n_head, hp.head_dim), h->gate_proj_bias.data(), g);
            p.be.gate_mix(attn, vctx, g.reshape(p.T, hp.n_head * hp.head_dim), st.visible.data());
        } else {
            p.be.gate_mix(attn, vctx, st.gate_vec[s]->tensor(), st.visible.data());
        }
    }
};

}  // namespace

const Architecture& owl3_architecture() {
    static const Owl3 arch;
    return arch;
}

}  // namespace owl
