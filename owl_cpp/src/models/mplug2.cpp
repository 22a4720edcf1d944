// mPLUG-2's caption decoder (docs/owl2.md PART D; export/owl_export/mplug2/reference.py is the oracle): a
// BERT-style post-LN decoder whose every layer cross-attends to the video tokens.
//   embed:  x = LayerNorm(token_embd[id] + position_embd[pos])   (the exporter folds token type 0 into
//           position_embd), no rope
//   layer:  x = LN(x + W_o causal_self_attention(x) + b_o)        attn_*, attn_output_norm
//           x = LN(x + W_co cross_attention(x, video) + b_co)     cross_attn_*, cross_attn_output_norm
//           x = LN(x + W_down GELU(W_up x + b_up) + b_down)       ffn_up, ffn_down, layer_output_norm
//   head:   logits = token_embd (tied) LN(GELU(W_t x + b_t)) + output.bias   output_transform, output_norm
// Every Linear has a bias; every LayerNorm has weight and bias and the eps of mplug2.attention.layer_norm_epsilon.
// Context::hidden_states() are the head's LN(GELU(W_t x + b_t)) rows, what the tied output matrix multiplies.
// Learned positions bound the context: n_ctx <= mplug2.context_length, else Context creation throws.
//
// The video: Context::add_image(video_tokens [n_tokens][n_embd], start) with start == 0 on an empty context
// (n_past == 0; truncate(0) first to reuse a context). Each layer's cross K/V are computed there once and kept
// (immutable, shared by contexts copied with copy_state_from: every beam reads the same K/V); every decode step
// reuses them. Attaching a video to an empty context that already has one replaces it. Decoding before a video
// is attached is an error (every layer needs it). The video stays attached across truncate().
// decode_step stacks contexts (step_layer): the row-wise matmuls over all of them, each context's own
// self-attention cache; consecutive contexts sharing one video cross-attend to it in one call.
#include <algorithm>

#include "forward.h"
#include "owl/error.h"
#include "tensor_loader.h"

namespace owl {
namespace {

struct Mplug2Layer {  // what DecoderLayer does not hold (it holds wq/wk/wv/wo, bq/bk/bv, ffn_up, ffn_down)
    std::vector<float> bo, attn_norm_w, attn_norm_b;
    WeightView cq, ck, cv, co;
    std::vector<float> cbq, cbk, cbv, cbo, cross_norm_w, cross_norm_b;
    std::vector<float> b_up, b_down, out_norm_w, out_norm_b;
};

struct Mplug2Weights : ArchWeights {
    WeightView position;                 // [n_positions][n_embd], token type 0 folded in
    std::vector<float> embd_norm_w, embd_norm_b;
    std::vector<Mplug2Layer> layers;
    WeightView transform;                // MLM head dense [n_embd][n_embd]
    std::vector<float> transform_b, output_norm_b, output_b;

    void matrices(std::vector<WeightView*>& out) override {
        out.push_back(&transform);
        for (Mplug2Layer& l : layers)
            for (WeightView* w : {&l.cq, &l.ck, &l.cv, &l.co}) out.push_back(w);
    }
    void weights(std::vector<const WeightView*>& m, std::vector<const std::vector<float>*>& v, const WeightRange& r) const override {
        if (r.input) {
            m.push_back(&position);
            for (const std::vector<float>* b : {&embd_norm_w, &embd_norm_b}) v.push_back(b);
        }
        if (r.output) {
            m.push_back(&transform);
            for (const std::vector<float>* b : {&transform_b, &output_norm_b, &output_b}) v.push_back(b);
        }
        for (size_t il = 0; il < layers.size(); ++il) {
            if (!r.has_layer(int64_t(il))) continue;
            const Mplug2Layer& l = layers[il];
            for (const WeightView* w : {&l.cq, &l.ck, &l.cv, &l.co}) m.push_back(w);
            for (const std::vector<float>* b : {&l.bo, &l.attn_norm_w, &l.attn_norm_b, &l.cbq, &l.cbk, &l.cbv, &l.cbo, &l.cross_norm_w,
                                                &l.cross_norm_b, &l.b_up, &l.b_down, &l.out_norm_w, &l.out_norm_b})
                v.push_back(b);
        }
    }
};

const Mplug2Weights& weights_of(const Model& m) { return static_cast<const Mplug2Weights&>(*m.arch_weights()); }

// One video's cross-attention K/V per layer, [n_tokens][n_embd] each: written once, then only read.
struct CrossKV {
    std::vector<std::unique_ptr<DeviceBuffer>> k, v;
    int64_t n_tokens = 0;
    size_t bytes() const {
        size_t n = 0;
        for (size_t i = 0; i < k.size(); ++i) n += k[i]->bytes() + v[i]->bytes();
        return n;
    }
};

class Mplug2State : public ArchState {
public:
    Mplug2State(const Model& m, Backend& be, int64_t n_ctx, int64_t n_batch) : m_(m), be_(be), visible_(size_t(n_batch)) {
        const int64_t n_pos = weights_of(m).position.rows;
        if (n_ctx > n_pos)
            throw Error("mplug2: a context of " + std::to_string(n_ctx) + " positions is longer than the decoder's " + std::to_string(n_pos) +
                        " learned positions: create it with n_ctx <= " + std::to_string(n_pos));
    }
    std::shared_ptr<const CrossKV> cross;  // null until a video is attached

    int64_t n_images() const override { return cross ? 1 : 0; }
    size_t bytes() const override { return cross ? cross->bytes() : 0; }
    void add_image(const float* embeds, int64_t n_tokens, int64_t start, int64_t n_past) override;
    void copy_from(const ArchState& other) override { cross = static_cast<const Mplug2State&>(other).cross; }
    // Every query row sees every video token (rows: a piece's, or the beams of a decode_step sharing this video).
    const int64_t* visible(int64_t rows) {
        if (int64_t(visible_.size()) < rows) visible_.resize(size_t(rows));
        std::fill(visible_.begin(), visible_.begin() + rows, cross->n_tokens);
        return visible_.data();
    }

private:
    const Model& m_;
    Backend& be_;
    std::vector<int64_t> visible_;
};

void Mplug2State::add_image(const float* embeds, int64_t n_tokens, int64_t start, int64_t n_past) {
    if (start != 0)
        throw Error("mplug2: the video is attached at start 0 (the decoder cross-attends to it from every position), got start " +
                    std::to_string(start));
    if (n_past != 0)
        throw Error("mplug2: attach the video before decoding (the context holds " + std::to_string(n_past) +
                    " positions computed against the previous video; truncate(0) first)");
    if (n_tokens < 1) throw Error("mplug2: a video needs at least one token");
    if (n_tokens > (int64_t(1) << 31)) throw Error("mplug2: a video of " + std::to_string(n_tokens) + " tokens is too large");
    const HParams& hp = m_.hparams();
    const Mplug2Weights& w = weights_of(m_);
    auto kv = std::make_shared<CrossKV>();
    kv->n_tokens = n_tokens;
    auto in = be_.alloc(DType::F32, n_tokens, hp.n_embd);
    be_.upload(embeds, in->tensor());
    for (const Mplug2Layer& l : w.layers) {
        kv->k.push_back(be_.alloc(DType::F32, n_tokens, hp.n_embd));
        kv->v.push_back(be_.alloc(DType::F32, n_tokens, hp.n_embd));
        be_.matmul(l.ck, in->tensor(), l.cbk.data(), kv->k.back()->tensor());
        be_.matmul(l.cv, in->tensor(), l.cbv.data(), kv->v.back()->tensor());
    }
    be_.synchronize();  // other contexts' streams read these once shared
    cross = std::move(kv);
}

Mplug2State& state_of(const ForwardPass& p) {
    auto& st = static_cast<Mplug2State&>(*p.state);
    if (!st.cross)
        throw Error("mplug2: no video attached: attach the video tokens first (Context.add_image(video, 0)); every decoder layer "
                    "cross-attends to them");
    return st;
}

// The layer's pieces, over whichever rows they are given: a piece's rows (run_layer) or one row per context
// (step_layer, decode_step); the cache writes and both attentions are per context.
void self_qkv(Backend& be, const DecoderLayer& l, const Tensor& x, const Tensor& q, const Tensor& k, const Tensor& v) {
    // No rope: positions are in the embedding.
    const Backend::Projection p[3] = {{&l.wq, l.bq.data(), q}, {&l.wk, l.bk.data(), k}, {&l.wv, l.bv.data(), v}};
    be.matmul_many(x, p, 3);
}

void store_kv(ForwardPass& p, int64_t il) {
    p.be.kv_store(p.k, p.hp.n_head_kv, p.hp.head_dim, p.k_cache(il), p.n_ctx, p.n_past);
    p.be.kv_store(p.v, p.hp.n_head_kv, p.hp.head_dim, p.v_cache(il), p.n_ctx, p.n_past);
}

// Queries q (rows [skip, skip + q.rows) of p) over every token of p's video into out.
void cross_attend(ForwardPass& p, int64_t il, int64_t skip, const Tensor& q, const Tensor& out) {
    Mplug2State& st = state_of(p);
    ops::AttentionShape s = p.shape;
    s.T = q.rows;
    s.n_past = p.n_past + skip;
    const size_t li = size_t(il);
    const ops::PrefixKV video{st.cross->k[li]->tensor().f32(), st.cross->v[li]->tensor().f32(), st.visible(q.rows)};
    p.be.attention(s, q, p.k_cache(il), p.v_cache(il), out, &video, false);
}

// x = LayerNorm(x + W a + b), h scratch.
void project_add_norm(Backend& be, const WeightView& w, const std::vector<float>& b, const Tensor& a, const Tensor& h, const Tensor& x,
                      const std::vector<float>& nw, const std::vector<float>& nb, float eps) {
    be.matmul(w, a, b.data(), h);
    be.add(x, h);
    be.layer_norm(x, nw.data(), nb.data(), eps, x);
}

void ffn(Backend& be, const DecoderLayer& l, const Mplug2Layer& e, const Tensor& x, const Tensor& up, const Tensor& h, float eps) {
    be.matmul(l.ffn_up, x, e.b_up.data(), up);
    be.gelu(up, up);
    project_add_norm(be, l.ffn_down, e.b_down, up, h, x, e.out_norm_w, e.out_norm_b, eps);
}

class Mplug2 : public Architecture {
public:
    std::string name() const override { return "mplug2"; }
    RopeMode rope_mode() const override { return RopeMode::Norm; }  // unused: absolute learned positions
    std::string norm_eps_key() const override { return "attention.layer_norm_epsilon"; }

    DecoderLayer read_layer(TensorLoader& L, const HParams& hp, int64_t i, bool) const override {
        const std::string p = "blk." + std::to_string(i) + ".";
        const int64_t E = hp.n_embd;
        if (hp.n_head_kv != hp.n_head) L.fail("mplug2 attention has as many K/V heads as query heads");
        if (hp.n_head * hp.head_dim != E) L.fail("mplug2 heads * head dimension must equal embedding_length");
        DecoderLayer l;
        l.wq = L.matrix(p + "attn_q.weight", E, E);
        l.wk = L.matrix(p + "attn_k.weight", E, E);
        l.wv = L.matrix(p + "attn_v.weight", E, E);
        l.wo = L.matrix(p + "attn_output.weight", E, E);
        l.bq = L.vec(p + "attn_q.bias", E);
        l.bk = L.vec(p + "attn_k.bias", E);
        l.bv = L.vec(p + "attn_v.bias", E);
        l.ffn_up = L.matrix(p + "ffn_up.weight", E, hp.n_ff);
        l.ffn_down = L.matrix(p + "ffn_down.weight", hp.n_ff, E);
        return l;
    }

    std::unique_ptr<ArchWeights> load_extra(TensorLoader& L, const HParams& hp) const override {
        auto w = std::make_unique<Mplug2Weights>();
        const int64_t E = hp.n_embd;
        w->position = L.matrix("position_embd.weight", E, hp.n_ctx_train);
        w->embd_norm_w = L.vec("token_embd_norm.weight", E);
        w->embd_norm_b = L.vec("token_embd_norm.bias", E);
        for (int64_t i = 0; i < hp.n_layer; ++i) {
            const std::string p = "blk." + std::to_string(i) + ".";
            Mplug2Layer l;
            l.bo = L.vec(p + "attn_output.bias", E);
            l.attn_norm_w = L.vec(p + "attn_output_norm.weight", E);
            l.attn_norm_b = L.vec(p + "attn_output_norm.bias", E);
            l.cq = L.matrix(p + "cross_attn_q.weight", E, E);
            l.ck = L.matrix(p + "cross_attn_k.weight", E, E);
            l.cv = L.matrix(p + "cross_attn_v.weight", E, E);
            l.co = L.matrix(p + "cross_attn_output.weight", E, E);
            l.cbq = L.vec(p + "cross_attn_q.bias", E);
            l.cbk = L.vec(p + "cross_attn_k.bias", E);
            l.cbv = L.vec(p + "cross_attn_v.bias", E);
            l.cbo = L.vec(p + "cross_attn_output.bias", E);
            l.cross_norm_w = L.vec(p + "cross_attn_output_norm.weight", E);
            l.cross_norm_b = L.vec(p + "cross_attn_output_norm.bias", E);
            l.b_up = L.vec(p + "ffn_up.bias", hp.n_ff);
            l.b_down = L.vec(p + "ffn_down.bias", E);
            l.out_norm_w = L.vec(p + "layer_output_norm.weight", E);
            l.out_norm_b = L.vec(p + "layer_output_norm.bias", E);
            w->layers.push_back(std::move(l));
        }
        w->transform = L.matrix("output_transform.weight", E, E);
        w->transform_b = L.vec("output_transform.bias", E);
        w->output_norm_b = L.vec("output_norm.bias", E);
        if (L.has("output.weight")) L.fail("mplug2's output matrix is the word embedding (tied): output.weight must not be there");
        const GGUFTensorInfo* embd = L.file().find_tensor("token_embd.weight");
        w->output_b = L.vec("output.bias", embd->ne[1]);
        return w;
    }

    void describe(const Model& m, ArchInfo& out) const override {
        out.emplace_back("n_positions", weights_of(m).position.rows);
        out.emplace_back("cross_attention", true);
    }

    std::unique_ptr<ArchState> new_state(const Model& m, Backend& be, int64_t n_ctx, int64_t n_batch) const override {
        return std::make_unique<Mplug2State>(m, be, n_ctx, n_batch);
    }

    void embed(ForwardPass& p, const int32_t* ids) const override {
        if (p.state) state_of(p);  // before any work: a context without its video changes nothing (decode_step checks its own)
        const Mplug2Weights& w = weights_of(p.m);
        for (int64_t t = 0; t < p.T; ++t)
            if (p.pos[t] >= w.position.rows)
                throw Error("mplug2: position " + std::to_string(p.pos[t]) + " is past the decoder's " + std::to_string(w.position.rows) +
                            " learned positions");
        p.be.get_rows(p.m.token_embd(), ids, p.x);
        p.be.get_rows(w.position, p.pos, p.h);
        p.be.add(p.x, p.h);
        p.be.layer_norm(p.x, w.embd_norm_w.data(), w.embd_norm_b.data(), p.hp.rms_eps, p.x);
    }

    void run_layer(ForwardPass& p, int64_t il, int64_t keep) const override {
        state_of(p);
        const DecoderLayer& l = p.m.layers()[size_t(il)];
        const Mplug2Layer& e = weights_of(p.m).layers[size_t(il)];
        const float eps = p.hp.rms_eps;
        self_qkv(p.be, l, p.x, p.q, p.k, p.v);  // every row: the cache needs them all
        store_kv(p, il);
        // Past the cache write only rows [keep, T) matter (the last layer's pruning).
        const int64_t skip = keep, R = p.T - skip;
        if (R == 0) return;
        const Tensor x = p.x.slice(skip, R), h = p.h.slice(0, R), q = p.q.slice(0, R), attn = p.attn.slice(0, R);
        blocks::causal_attention(p, il, skip);
        project_add_norm(p.be, l.wo, e.bo, attn, h, x, e.attn_norm_w, e.attn_norm_b, eps);
        p.be.matmul(e.cq, x, e.cbq.data(), q);
        cross_attend(p, il, skip, q, attn);
        project_add_norm(p.be, e.co, e.cbo, attn, h, x, e.cross_norm_w, e.cross_norm_b, eps);
        ffn(p.be, l, e, x, p.up.slice(0, R), h, eps);
    }

    void step_layer(ForwardPass& all, std::vector<ForwardPass>& one, int64_t il) const override {
        for (const ForwardPass& p : one) state_of(p);  // every context has its video before any cache write
        const DecoderLayer& l = all.m.layers()[size_t(il)];
        const Mplug2Layer& e = weights_of(all.m).layers[size_t(il)];
        const float eps = all.hp.rms_eps;
        Backend& be = all.be;
        self_qkv(be, l, all.x, all.q, all.k, all.v);
        for (ForwardPass& p : one) store_kv(p, il);
        for (ForwardPass& p : one) blocks::causal_attention(p, il, 0);
        project_add_norm(be, l.wo, e.bo, all.attn, all.h, all.x, e.attn_norm_w, e.attn_norm_b, eps);
        be.matmul(e.cq, all.x, e.cbq.data(), all.q);
        // Each context's own video; consecutive contexts sharing one (beams copied from one another) attend in
        // one call, so its K/V are read once per step instead of once per beam.
        for (size_t i = 0, j; i < one.size(); i = j) {
            const CrossKV* video = state_of(one[i]).cross.get();
            for (j = i + 1; j < one.size() && state_of(one[j]).cross.get() == video;) ++j;
            const int64_t r0 = int64_t(i), R = int64_t(j - i);
            cross_attend(one[i], il, 0, all.q.slice(r0, R), all.attn.slice(r0, R));
        }
        project_add_norm(be, e.co, e.cbo, all.attn, all.h, all.x, e.cross_norm_w, e.cross_norm_b, eps);
        ffn(be, l, e, all.x, all.up, all.h, eps);
    }

    void final_norm(ForwardPass& p, const Tensor& x, const Tensor& out) const override {
        const Mplug2Weights& w = weights_of(p.m);
        p.be.matmul(w.transform, x, w.transform_b.data(), out);
        p.be.gelu(out, out);
        p.be.layer_norm(out, p.m.output_norm().data(), w.output_norm_b.data(), p.hp.rms_eps, out);
    }

    const float* output_bias(const Model& m) const override { return weights_of(m).output_b.data(); }
};

}  // namespace

const Architecture& mplug2_architecture() {
    static const Mplug2 arch;
    return arch;
}

}  // namespace owl
