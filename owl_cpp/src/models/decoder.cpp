// The llama / qwen2 decoder forward pass over a KV cache. The two architectures differ only in data
// (q/k/v biases, rope layout, tied output), which the loader resolved, so one graph serves both.
#include <algorithm>
#include <cmath>

#include "owl/error.h"
#include "owl/model.h"

namespace owl {

Context::Context(std::shared_ptr<const Model> model, int64_t n_ctx, int n_threads, int64_t n_batch)
    : model_(std::move(model)), n_ctx_(n_ctx), n_batch_(n_batch), pool_(n_threads) {
    const HParams& hp = model_->hparams();
    if (n_ctx_ < 1) throw Error("context length must be at least 1, got " + std::to_string(n_ctx_));
    if (n_batch_ < 1) throw Error("batch size must be at least 1");
    const size_t kv_elems = size_t(hp.n_head_kv * n_ctx_ * hp.head_dim);
    k_cache_.assign(size_t(hp.n_layer), std::vector<float>(kv_elems));
    v_cache_.assign(size_t(hp.n_layer), std::vector<float>(kv_elems));
    const size_t B = size_t(n_batch_);
    x_.resize(B * hp.n_embd);
    h_.resize(B * hp.n_embd);
    q_.resize(B * hp.n_head * hp.head_dim);
    k_.resize(B * hp.n_head_kv * hp.head_dim);
    v_.resize(B * hp.n_head_kv * hp.head_dim);
    attn_.resize(B * hp.n_head * hp.head_dim);
    gate_.resize(B * hp.n_ff);
    up_.resize(B * hp.n_ff);
    pos_.resize(B);
    if (!hp.hyper.layers.empty()) {
        vctx_.resize(B * hp.n_head * hp.head_dim);
        hgate_.resize(B * hp.n_head * hp.head_dim);
        visible_.resize(B);
    }
}

const float* Context::last_logits() const {
    const size_t V = size_t(model_->hparams().n_vocab);
    if (logits_.size() < V) throw Error("no logits yet: evaluate at least one token first");
    return logits_.data() + (logits_.size() - V);
}

void Context::truncate(int64_t n) {
    if (n < 0 || n > n_past_) throw Error("cannot truncate the cache to " + std::to_string(n) + " positions (it holds " + std::to_string(n_past_) + ")");
    n_past_ = n;
    // Images whose placeholder starts at or after n are forgotten with the text (their rows are the last ones).
    while (!images_.empty() && images_.back().start >= n) images_.pop_back();
    const int64_t rows = images_.empty() ? 0 : images_.back().rows_end;
    const size_t row_floats = size_t(model_->hparams().n_head_kv * model_->hparams().head_dim);
    for (size_t i = 0; i < vis_k_.size(); ++i) {
        if (vis_k_[i].empty()) continue;
        vis_k_[i].resize(size_t(rows) * row_floats);
        vis_v_[i].resize(size_t(rows) * row_floats);
    }
}

const std::vector<float>& Context::eval(const std::vector<int32_t>& tokens, bool all_logits) {
    const HParams& hp = model_->hparams();
    const int64_t T = int64_t(tokens.size());
    if (T == 0) throw Error("eval called with no tokens");
    if (n_past_ + T > n_ctx_)
        throw Error("context overflow: " + std::to_string(n_past_) + " cached + " + std::to_string(T) + " new tokens exceed the context length " + std::to_string(n_ctx_));
    for (int64_t i = 0; i < T; ++i)
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab)
            throw Error("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(hp.n_vocab) + ")");
    logits_.resize(size_t((all_logits ? T : 1) * hp.n_vocab));
    for (int64_t start = 0; start < T; start += n_batch_) {
        const int64_t n = std::min(n_batch_, T - start);
        const bool last = start + n == T;
        float* out = all_logits ? logits_.data() + start * hp.n_vocab : (last ? logits_.data() : nullptr);
        eval_batch(tokens.data() + start, n, all_logits, out);
    }
    return logits_;
}

void Context::eval_batch(const int32_t* tokens, int64_t T, bool all_logits, float* logits_out) {
    const Model& m = *model_;
    const HParams& hp = m.hparams();
    const int64_t E = hp.n_embd, hd = hp.head_dim, nh = hp.n_head, nkv = hp.n_head_kv, F = hp.n_ff;
    float* x = x_.data();
    float* h = h_.data();

    ops::get_rows(m.token_embd(), tokens, T, x);
    for (int64_t t = 0; t < T; ++t) pos_[size_t(t)] = int32_t(n_past_ + t);

    ops::AttentionShape shape;
    shape.T = T;
    shape.n_past = n_past_;
    shape.n_head = nh;
    shape.n_head_kv = nkv;
    shape.head_dim = hd;
    shape.ctx_stride = n_ctx_;
    shape.scale = 1.0f / std::sqrt(float(hd));

    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const LayerWeights& l = m.layers()[size_t(il)];
        auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };

        // Attention block.
        ops::rms_norm(pool_, x, l.attn_norm.data(), T, E, hp.rms_eps, h);
        ops::matmul(pool_, l.wq, h, T, bias(l.bq), q_.data());
        ops::matmul(pool_, l.wk, h, T, bias(l.bk), k_.data());
        ops::matmul(pool_, l.wv, h, T, bias(l.bv), v_.data());
        ops::rope(pool_, q_.data(), T, nh, hd, pos_.data(), hp.rope_base, hp.rope_mode);
        ops::rope(pool_, k_.data(), T, nkv, hd, pos_.data(), hp.rope_base, hp.rope_mode);
        // Scatter new K/V into the cache's [head][position][dim] layout.
        float* kc = k_cache_[size_t(il)].data();
        float* vc = v_cache_[size_t(il)].data();
        for (int64_t t = 0; t < T; ++t)
            for (int64_t g = 0; g < nkv; ++g) {
                const size_t dst = size_t((g * n_ctx_ + n_past_ + t) * hd);
                std::copy_n(k_.data() + (t * nkv + g) * hd, hd, kc + dst);
                std::copy_n(v_.data() + (t * nkv + g) * hd, hd, vc + dst);
            }
        const bool hyper = l.hyper && !images_.empty();
        // Past the K/V write, the last layer only matters for the rows whose logits are wanted: none for a middle
        // chunk of a long prompt, the last row unless all logits are asked for (llama.cpp prunes the same way).
        int64_t skip = 0;
        if (il == hp.n_layer - 1 && !hyper) skip = !logits_out ? T : (all_logits ? 0 : T - 1);
        if (skip == T) break;
        const int64_t R = T - skip;  // rows carried on from here: tokens [skip, T)
        if (hyper) {
            hyper_attention(il, T, shape);
        } else {
            ops::AttentionShape kept = shape;
            kept.T = R;
            kept.n_past = n_past_ + skip;
            ops::attention(pool_, kept, q_.data() + skip * nh * hd, kc, vc, attn_.data());
        }
        float* xr = x + skip * E;
        ops::matmul(pool_, l.wo, attn_.data(), R, nullptr, h);
        for (int64_t i = 0; i < R * E; ++i) xr[i] += h[i];

        // Feed-forward block (SwiGLU).
        ops::rms_norm(pool_, xr, l.ffn_norm.data(), R, E, hp.rms_eps, h);
        ops::matmul(pool_, l.ffn_gate, h, R, nullptr, gate_.data());
        ops::matmul(pool_, l.ffn_up, h, R, nullptr, up_.data());
        ops::swiglu(pool_, gate_.data(), up_.data(), gate_.data(), R * F);
        ops::matmul(pool_, l.ffn_down, gate_.data(), R, nullptr, h);
        for (int64_t i = 0; i < R * E; ++i) xr[i] += h[i];
    }
    n_past_ += T;

    if (!logits_out) return;  // a middle chunk of a long prompt: only the cache matters
    // Only the rows whose logits are wanted go through the final norm and the (large) output matrix.
    const int64_t first = all_logits ? 0 : T - 1;
    const int64_t rows = T - first;
    ops::rms_norm(pool_, x + first * E, m.output_norm().data(), rows, E, hp.rms_eps, h);
    ops::matmul(pool_, m.output(), h, rows, nullptr, logits_out);
}

}  // namespace owl
