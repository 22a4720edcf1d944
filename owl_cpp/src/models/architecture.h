// Architectures: what one `general.architecture` adds to the shared decoder (extra keys and tensors, state per
// context, a different attention in some layers, a second weight set for image tokens). One file per
// architecture (llama.cpp, qwen2.cpp, owl3.cpp) and a registry keyed by name (registry.cpp).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "owl/backend.h"
#include "owl/batch.h"
#include "owl/model.h"

namespace owl {

class TensorLoader;
struct ForwardPass;

// Weights an architecture adds; architectures downcast Model::arch_weights() to their own subclass.
struct ArchWeights {
    virtual ~ArchWeights() = default;
    virtual void matrices(std::vector<WeightView*>& out) { (void)out; }  // for load-time repacking
    // Every matrix and float vector within `r` (a layer's own weights when r has the layer; the input or output
    // side's with r.input / r.output), read-only: what a device backend uploads.
    virtual void weights(std::vector<const WeightView*>& m, std::vector<const std::vector<float>*>& v, const WeightRange& r) const {
        (void)m;
        (void)v;
        (void)r;
    }
    // Once the model is loaded and its matrices repacked (Model::pack_weights): views an architecture copies
    // from the shared layers (owl2's image-branch layers) are taken here, so they see the final data.
    virtual void finish(const Model& m) { (void)m; }
};

// What an architecture keeps per context (owl3: the images attached to the conversation).
struct ArchState {
    virtual ~ArchState() = default;
    virtual void truncate(int64_t n) { (void)n; }  // the cache keeps positions [0, n)
    virtual size_t bytes() const { return 0; }
    virtual int64_t n_images() const { return 0; }
    virtual void add_image(const float* embeds, int64_t n_tokens, int64_t start, int64_t n_past);
    // Context::copy_state_from: become `other` (same model and architecture) with its cache prefix [0, n_past).
    // Default: refused when `other` holds images (their state is not copyable yet), else this state is emptied.
    virtual void copy_from(const ArchState& other);
};

class Architecture {
public:
    virtual ~Architecture() = default;
    virtual std::string name() const = 0;
    virtual RopeMode rope_mode() const = 0;
    // The key (after "<arch>.") of the norm epsilon HParams::rms_eps holds: RMSNorm's by default, LayerNorm's
    // ("attention.layer_norm_epsilon") for a BERT-style decoder.
    virtual std::string norm_eps_key() const { return "attention.layer_norm_rms_epsilon"; }
    // Layer il's shared tensors (model.cpp's llama names by default: attn_norm, attn_q/k/v(+bias), attn_output,
    // ffn_norm, ffn_gate/up/down). An architecture of another layer shape reads what it shares here and the
    // rest in load_extra.
    virtual DecoderLayer read_layer(TensorLoader& L, const HParams& hp, int64_t il, bool qkv_bias) const;
    // After the shared decoder is loaded: the architecture's own keys and tensors (marked used on the loader).
    virtual std::unique_ptr<ArchWeights> load_extra(TensorLoader& L, const HParams& hp) const;
    virtual void describe(const Model& m, ArchInfo& out) const { (void)m; (void)out; }
    // Per-context state; nullptr when the architecture keeps none.
    virtual std::unique_ptr<ArchState> new_state(const Model& m, Backend& be, int64_t n_ctx, int64_t n_batch) const;
    // The weights a piece of tokens of one modality runs through in layer il.
    virtual const DecoderLayer& layer(const Model& m, int64_t il, Modality modality) const;
    // Attention of layer il for the piece's rows [skip, T): writes p.attn rows [0, T - skip). Default: causal
    // attention over the KV cache (blocks.cpp).
    virtual void attend(ForwardPass& p, int64_t il, int64_t skip) const;
    // Whether layer il may drop the rows whose output nobody reads (the last layer's pruning).
    virtual bool prunable(const ForwardPass& p, int64_t il) const { (void)p; (void)il; return true; }

    // The forward pass's stages, for architectures whose decoder is not the shared pre-norm one (mplug2):
    //   embed:      token ids -> p.x (default: rows of token_embd); batches of embeddings are uploaded as they are
    //   run_layer:  one layer (default: blocks::decoder_layer); keep as there
    //   step_layer: one layer of decode_step over one row per context (default: blocks::stacked_layer)
    //   final_norm: p.x rows -> what the output matrix multiplies (default: RMSNorm with output_norm)
    //   output_bias: added to the logits (default none)
    virtual void embed(ForwardPass& p, const int32_t* ids) const;
    virtual void run_layer(ForwardPass& p, int64_t il, int64_t keep) const;
    virtual void step_layer(ForwardPass& all, std::vector<ForwardPass>& one, int64_t il) const;
    virtual void final_norm(ForwardPass& p, const Tensor& x, const Tensor& out) const;
    virtual const float* output_bias(const Model& m) const { (void)m; return nullptr; }
};

// The registry: the architecture named by general.architecture, or nullptr.
const Architecture* find_architecture(const std::string& name);
std::vector<std::string> architecture_names();

// One per file; registry.cpp lists them.
const Architecture& llama_architecture();
const Architecture& qwen2_architecture();
const Architecture& owl3_architecture();
const Architecture& owl2_architecture();
const Architecture& mplug2_architecture();

}  // namespace owl
