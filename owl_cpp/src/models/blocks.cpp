// The shared decoder blocks (forward.h) and the defaults of Architecture (architecture.h).
#include "forward.h"
#include "owl/error.h"

namespace owl {

void ArchState::add_image(const float*, int64_t, int64_t, int64_t) {
    throw Error("this model's architecture has no path for attached images");
}

void ArchState::copy_from(const ArchState& other) {
    if (other.n_images() > 0) throw Error("copy_state_from: the source context holds images, which this architecture cannot copy yet");
    truncate(0);
}

void Architecture::embed(ForwardPass& p, const int32_t* ids) const { p.be.get_rows(p.m.token_embd(), ids, p.x); }

void Architecture::run_layer(ForwardPass& p, int64_t il, int64_t keep) const { blocks::decoder_layer(p, *this, il, keep); }

void Architecture::step_layer(ForwardPass& all, std::vector<ForwardPass>& one, int64_t il) const {
    blocks::stacked_layer(all, one, *this, il);
}

void Architecture::final_norm(ForwardPass& p, const Tensor& x, const Tensor& out) const {
    p.be.rms_norm(x, p.m.output_norm().data(), p.hp.rms_eps, out);
}

std::unique_ptr<ArchWeights> Architecture::load_extra(TensorLoader&, const HParams&) const { return nullptr; }

std::unique_ptr<ArchState> Architecture::new_state(const Model&, Backend&, int64_t, int64_t) const { return nullptr; }

const DecoderLayer& Architecture::layer(const Model& m, int64_t il, Modality) const { return m.layers()[size_t(il)]; }

void Architecture::attend(ForwardPass& p, int64_t il, int64_t skip) const { blocks::causal_attention(p, il, skip); }

namespace blocks {
namespace {
const float* bias(const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); }

// The three projections of one normed input, as one job where the backend can.
void qkv(Backend& be, const DecoderLayer& l, const Tensor& h, const Tensor& q, const Tensor& k, const Tensor& v) {
    const Backend::Projection p[3] = {{&l.wq, bias(l.bq), q}, {&l.wk, bias(l.bk), k}, {&l.wv, bias(l.bv), v}};
    be.matmul_many(h, p, 3);
}
}  // namespace

void attention_inputs(ForwardPass& p, const DecoderLayer& l, int64_t il) {
    const HParams& hp = p.hp;
    p.be.rms_norm(p.x, l.attn_norm.data(), hp.rms_eps, p.h);
    qkv(p.be, l, p.h, p.q, p.k, p.v);
    p.be.rope(p.q, hp.n_head, hp.head_dim, p.pos, hp.rope_base, hp.rope_mode);
    p.be.rope(p.k, hp.n_head_kv, hp.head_dim, p.pos, hp.rope_base, hp.rope_mode);
    p.be.kv_store(p.k, hp.n_head_kv, hp.head_dim, p.k_cache(il), p.n_ctx, p.n_past);
    p.be.kv_store(p.v, hp.n_head_kv, hp.head_dim, p.v_cache(il), p.n_ctx, p.n_past);
}

void causal_attention(ForwardPass& p, int64_t il, int64_t skip) {
    ops::AttentionShape s = p.shape;
    s.T = p.T - skip;
    s.n_past = p.n_past + skip;
    p.be.attention(s, p.q.slice(skip, s.T), p.k_cache(il), p.v_cache(il), p.attn.slice(0, s.T));
}

void attention_output(ForwardPass& p, const DecoderLayer& l, int64_t skip) {
    const int64_t R = p.T - skip;
    const Tensor h = p.h.slice(0, R);
    p.be.matmul(l.wo, p.attn.slice(0, R), nullptr, h);
    p.be.add(p.x.slice(skip, R), h);
}

void swiglu_ffn(ForwardPass& p, const DecoderLayer& l, int64_t skip) {
    const int64_t R = p.T - skip;
    const Tensor x = p.x.slice(skip, R), h = p.h.slice(0, R), gate = p.gate.slice(0, R), up = p.up.slice(0, R);
    p.be.rms_norm(x, l.ffn_norm.data(), p.hp.rms_eps, h);
    p.be.matmul_swiglu(l.ffn_gate, l.ffn_up, h, gate, up);
    p.be.matmul(l.ffn_down, gate, nullptr, h);
    p.be.add(x, h);
}

void decoder_layer(ForwardPass& p, const Architecture& arch, int64_t il, int64_t keep) {
    const DecoderLayer& l = arch.layer(p.m, il, p.modality);
    attention_inputs(p, l, il);
    // Past the K/V write, rows nobody reads can be dropped (llama.cpp prunes the last layer the same way).
    const int64_t skip = arch.prunable(p, il) ? keep : 0;
    if (skip == p.T) return;
    arch.attend(p, il, skip);
    attention_output(p, l, skip);
    swiglu_ffn(p, l, skip);
}

void stacked_layer(ForwardPass& all, std::vector<ForwardPass>& one, const Architecture& arch, int64_t il) {
    // attention_inputs over the stacked rows, the cache write per context at its own position.
    const HParams& hp = all.hp;
    Backend& be = all.be;
    const DecoderLayer& l = arch.layer(all.m, il, Modality::Text);
    be.rms_norm(all.x, l.attn_norm.data(), hp.rms_eps, all.h);
    qkv(be, l, all.h, all.q, all.k, all.v);
    be.rope(all.q, hp.n_head, hp.head_dim, all.pos, hp.rope_base, hp.rope_mode);
    be.rope(all.k, hp.n_head_kv, hp.head_dim, all.pos, hp.rope_base, hp.rope_mode);
    for (ForwardPass& p : one) {
        be.kv_store(p.k, hp.n_head_kv, hp.head_dim, p.k_cache(il), p.n_ctx, p.n_past);
        be.kv_store(p.v, hp.n_head_kv, hp.head_dim, p.v_cache(il), p.n_ctx, p.n_past);
    }
    // A single token is its own last row: nothing to prune (decode_layer's keep is 0), skip = 0.
    for (ForwardPass& p : one) arch.attend(p, il, 0);
    attention_output(all, l, 0);
    swiglu_ffn(all, l, 0);
}

}  // namespace blocks
}  // namespace owl
