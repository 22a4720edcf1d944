// mPLUG-Owl3 hyper-attention (owl3.md section 4), all in one place:
//  - add_image: visual K/V of an image for every hyper layer, computed once (the official code recomputes
//    them at every decode step): K/V = v_kv_proj(RMSNorm(embeds; the layer's own input norm)), channels
//    interleaved per KV head as (K | V), and MI-Rope: every key of image j rotated at ONE position.
//  - hyper_attention: which images each token sees, and how visual attention merges with text attention:
//      240728 / 241014: a separate visual softmax over images with start < i, mixed in by a sigmoid gate
//                       (per head from the self-attention output, or a static vector); tokens that see no
//                       image keep the plain self-attention output.
//      241101:          visual keys of images with start <= i join the text keys in one softmax.
#include <algorithm>
#include <cmath>

#include "owl/error.h"
#include "owl/model.h"

namespace owl {

void Context::add_image(const float* embeds, int64_t n_tokens, int64_t start) {
    const Model& m = *model_;
    const HParams& hp = m.hparams();
    if (hp.hyper.layers.empty()) throw Error("model '" + hp.arch + "' has no hyper-attention layers: it cannot take images");
    if (n_tokens < 1) throw Error("an image needs at least one visual token");
    if (start < n_past_)
        throw Error("image placeholder at position " + std::to_string(start) + " lies before the " + std::to_string(n_past_) + " tokens already evaluated");
    if (!images_.empty() && start <= images_.back().start)
        throw Error("images must be added in prompt order (start " + std::to_string(start) + " after " + std::to_string(images_.back().start) + ")");
    const int64_t rope_pos = start + hp.hyper.mi_rope_offset;
    if (rope_pos >= n_ctx_) throw Error("image placeholder at position " + std::to_string(start) + " lies outside the context of " + std::to_string(n_ctx_));

    const int64_t E = hp.n_embd, hd = hp.head_dim, nkv = hp.n_head_kv;
    const int64_t row0 = images_.empty() ? 0 : images_.back().rows_end;
    std::vector<float> normed(size_t(n_tokens * E)), kv(size_t(n_tokens * 2 * nkv * hd));
    std::vector<int32_t> pos(static_cast<size_t>(n_tokens), static_cast<int32_t>(rope_pos));
    if (vis_k_.empty()) {
        vis_k_.resize(size_t(hp.n_layer));
        vis_v_.resize(size_t(hp.n_layer));
    }
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const LayerWeights& l = m.layers()[size_t(il)];
        if (!l.hyper) continue;
        ops::rms_norm(pool_, embeds, l.attn_norm.data(), n_tokens, E, hp.rms_eps, normed.data());  // shared LN
        ops::matmul(pool_, l.hyper_kv, normed.data(), n_tokens, l.hyper_kv_bias.data(), kv.data());
        std::vector<float>& K = vis_k_[size_t(il)];
        std::vector<float>& V = vis_v_[size_t(il)];
        K.resize(size_t((row0 + n_tokens) * nkv * hd));
        V.resize(K.size());
        float* k_new = K.data() + row0 * nkv * hd;
        float* v_new = V.data() + row0 * nkv * hd;
        for (int64_t r = 0; r < n_tokens; ++r)
            for (int64_t g = 0; g < nkv; ++g) {
                const float* src = kv.data() + (r * nkv + g) * 2 * hd;
                std::copy_n(src, hd, k_new + (r * nkv + g) * hd);
                std::copy_n(src + hd, hd, v_new + (r * nkv + g) * hd);
            }
        ops::rope(pool_, k_new, n_tokens, nkv, hd, pos.data(), hp.rope_base, hp.rope_mode);  // MI-Rope
    }
    images_.push_back({start, row0 + n_tokens});
}

size_t Context::visual_bytes() const {
    size_t n = 0;
    for (size_t i = 0; i < vis_k_.size(); ++i) n += (vis_k_[i].capacity() + vis_v_[i].capacity()) * sizeof(float);
    return n;
}

size_t Context::kv_bytes_per_token() const {
    const HParams& hp = model_->hparams();
    return size_t(2 * hp.n_layer * hp.n_head_kv * hp.head_dim) * sizeof(float);
}

void Context::hyper_attention(int64_t il, int64_t T, const ops::AttentionShape& shape) {
    const Model& m = *model_;
    const HParams& hp = m.hparams();
    const LayerWeights& l = m.layers()[size_t(il)];
    const int64_t Q = hp.n_head * hp.head_dim;
    // Visual rows each token sees: images are ordered by start, so visible ones form a prefix.
    bool any = false;
    for (int64_t t = 0; t < T; ++t) {
        const int64_t i = n_past_ + t;
        int64_t rows = 0;
        for (const VisualImage& img : images_) {
            if (hp.hyper.fused ? img.start <= i : img.start < i) rows = img.rows_end;
        }
        visible_[size_t(t)] = rows;
        any = any || rows > 0;
    }
    const ops::PrefixKV visual{vis_k_[size_t(il)].data(), vis_v_[size_t(il)].data(), visible_.data()};
    const float* kc = k_cache_[size_t(il)].data();
    const float* vc = v_cache_[size_t(il)].data();
    if (hp.hyper.fused) {
        ops::attention(pool_, shape, q_.data(), kc, vc, attn_.data(), &visual, true);
        return;
    }
    ops::attention(pool_, shape, q_.data(), kc, vc, attn_.data());
    if (!any) return;
    ops::attention(pool_, shape, q_.data(), kc, vc, vctx_.data(), &visual, false);
    float* g = hgate_.data();
    if (hp.hyper.gate == HyperGate::Proj) {  // the same Linear(d, d) on every head of the self-attention output
        ops::matmul(pool_, l.hyper_gate_proj, attn_.data(), T * hp.n_head, l.hyper_gate_proj_bias.data(), g);
        for (int64_t i = 0; i < T * Q; ++i) g[i] = 1.0f / (1.0f + std::exp(-g[i]));
    } else {
        for (int64_t t = 0; t < T; ++t)
            for (int64_t c = 0; c < Q; ++c) g[t * Q + c] = 1.0f / (1.0f + std::exp(-l.hyper_gate[size_t(c)]));
    }
    for (int64_t t = 0; t < T; ++t) {
        if (visible_[size_t(t)] == 0) continue;  // before the first image: no (1 - g) scaling
        float* ctx = attn_.data() + t * Q;
        const float* vc_t = vctx_.data() + t * Q;
        const float* gt = g + t * Q;
        for (int64_t c = 0; c < Q; ++c) ctx[c] = ctx[c] * (1.0f - gt[c]) + vc_t[c] * gt[c];
    }
}

}  // namespace owl
