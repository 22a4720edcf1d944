// The forward pass of one piece of a batch (one modality, at most n_batch tokens) and the shared blocks every
// architecture is built from: attention inputs (norm, Q/K/V, rope, cache write), causal attention over the
// cache, the output projection with its residual, the SwiGLU FFN. All through the context's Backend.
#pragma once
#include <memory>
#include <vector>

#include "architecture.h"
#include "owl/context.h"

namespace owl {

// One span of a context's layers: its backend, the KV cache of layers [first, end) and the scratch activations
// of one piece on that backend. A context that is not split has one span of every layer.
struct Context::Impl {
    std::unique_ptr<Backend> be;  // first member: destroyed after the buffers it made
    int64_t first = 0, end = 0;
    std::vector<std::unique_ptr<DeviceBuffer>> k_cache, v_cache;  // per layer of the span [n_head_kv * n_ctx][head_dim]
    std::unique_ptr<DeviceBuffer> x, h, q, k, v, attn, gate, up, out;  // [n_batch][...]; out: logits when not on the host
};

struct ForwardPass {
    const Model& m;
    const HParams& hp;
    Backend& be;
    Context::Impl& c;
    ArchState* state;
    Modality modality;
    int64_t T, n_past, n_ctx;
    const int32_t* pos;                    // [T] rotary positions
    Tensor x, h, q, k, v, attn, gate, up;  // this piece's rows of the scratch buffers
    ops::AttentionShape shape;             // causal attention of the piece over the cache

    const Tensor& k_cache(int64_t il) const { return c.k_cache[size_t(il - c.first)]->tensor(); }
    const Tensor& v_cache(int64_t il) const { return c.v_cache[size_t(il - c.first)]->tensor(); }
};

namespace blocks {
// attn_norm, Q/K/V projections (+ biases), rope on Q and K, K/V written to the cache at n_past.
void attention_inputs(ForwardPass& p, const DecoderLayer& l, int64_t il);
// Causal attention of rows [skip, T) over the cache into p.attn rows [0, T - skip).
void causal_attention(ForwardPass& p, int64_t il, int64_t skip);
// x[skip:] += W_o attn; then x[skip:] += FFN(ffn_norm(x[skip:])).
void attention_output(ForwardPass& p, const DecoderLayer& l, int64_t skip);
void swiglu_ffn(ForwardPass& p, const DecoderLayer& l, int64_t skip);
// One whole layer; `keep` = rows [keep, T) must come out of it (T: none, only the cache write matters).
void decoder_layer(ForwardPass& p, const Architecture& arch, int64_t il, int64_t keep);
// One layer of decode_step: `all` holds one row per context (row-wise ops run over all of them at once), one[i]
// is context i's single-row pass (its cache, its state: the cache writes and attention).
void stacked_layer(ForwardPass& all, std::vector<ForwardPass>& one, const Architecture& arch, int64_t il);
}  // namespace blocks

}  // namespace owl
