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
    // Every matrix and float vector, read-only (what a device backend uploads).
    virtual void weights(std::vector<const WeightView*>& m, std::vector<const std::vector<float>*>& v) const {
        (void)m;
        (void)v;
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
};

class Architecture {
public:
    virtual ~Architecture() = default;
    virtual std::string name() const = 0;
    virtual RopeMode rope_mode() const = 0;
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
};

// The registry: the architecture named by general.architecture, or nullptr.
const Architecture* find_architecture(const std::string& name);
std::vector<std::string> architecture_names();

// One per file; registry.cpp lists them.
const Architecture& llama_architecture();
const Architecture& qwen2_architecture();
const Architecture& owl3_architecture();
const Architecture& owl2_architecture();

}  // namespace owl
