// One conversation over a shared Model: its KV cache, scratch buffers, backend (threads) and whatever state its
// architecture keeps per conversation (owl3's attached images). Many contexts may run on one model at once, each
// from its own thread; one context used from two threads at once throws Error instead of corrupting itself.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "owl/backend.h"
#include "owl/batch.h"
#include "owl/model.h"

namespace owl {

struct ArchState;  // src/models/architecture.h
class Context;

// Batched decoding across conversations: appends tokens[i] to contexts[i] (text, at its n_past) for every i in one
// forward pass, so each weight matrix is read once per step instead of once per context. Afterwards every context
// is as if contexts[i]->eval({tokens[i]}) had run (n_past advanced, last_logits() / hidden_states() of that token),
// within float rounding (a matmul over N rows may accumulate in another order than over one).
// All contexts must share one Model and be distinct; an empty list, a null context, a token id out of range, a
// full context or a context in use by another thread throws Error naming the index, with no context changed.
// Every context is marked busy for the call. The step runs on the first context's backend (its thread pool);
// contexts that are not all on the CPU, or split between backends (n_gpu_layers), are decoded one after another
// (same results, no batching yet).
void decode_step(const std::vector<Context*>& contexts, const std::vector<int32_t>& tokens);

struct ContextParams {
    int64_t n_ctx = 4096;
    int n_threads = 1;
    int64_t n_batch = 256;        // tokens per forward piece (longer batches are evaluated in pieces)
    DType kv_type = DType::F16;   // KV cache storage: F16 (half the memory, as llama.cpp) or F32
    std::string backend = "cpu";
    // Partial offload (llama.cpp's n_gpu_layers): layers [0, n_gpu_layers) run on `backend`, the later layers
    // and the output head on a CPU backend of n_threads threads, the hidden state copied between them. -1 (or
    // n_layer and more): every layer on `backend`; 0: everything on the CPU. With backend "cpu" a split gives
    // two CPU backends (the same results: how the hand-off is tested without a GPU). Architectures that keep
    // per-conversation state on one device (owl3's images, mplug2's video) refuse a split.
    int64_t n_gpu_layers = -1;
};

// Where a context's layers run: [first_layer, end_layer) on `backend` (its name()); the last span also runs the
// output head.
struct LayerSpan {
    std::string backend;
    int64_t first_layer = 0, end_layer = 0;
};

class Context {
public:
    Context(std::shared_ptr<const Model> model, const ContextParams& params);
    ~Context();
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    // Appends the batch after the n_past() positions already cached and returns logits: of the last token
    // ([n_vocab]) or, with all_logits, of every token ([batch.n][n_vocab]). Throws Error when the batch is
    // invalid (ids out of range, negative positions, NaN/inf embeddings, too long for the context); the cache is
    // unchanged then.
    // logits_to_host = false (a device backend, the last token's logits): they stay on the device and the returned
    // vector is not updated; last_logits() copies them when first asked, top_logits() selects there.
    const std::vector<float>& decode(const Batch& batch, bool all_logits = false, bool logits_to_host = true);
    const std::vector<float>& eval(const std::vector<int32_t>& tokens, bool all_logits = false,
                                   bool logits_to_host = true) {
        return decode(Batch::of_ids(tokens.data(), int64_t(tokens.size())), all_logits, logits_to_host);
    }
    // Final hidden states (after the output norm) of the rows the last decode returned logits for:
    // [rows][n_embd], rows = 1 or batch.n.
    const std::vector<float>& hidden_states() const { return hidden_; }

    // Logits of the last evaluated token ([n_vocab]); valid until the next decode.
    const float* last_logits() const;
    // The k best (logit, id) pairs among the first n logits of the last evaluated token, in Sampler's order
    // (owl::top_logits): selected by the backend when the logits stayed on the device (only k pairs come back,
    // Backend::top_k), else from last_logits(). For Sampler::sample_top.
    void top_logits(int64_t n, int64_t k, std::vector<std::pair<float, int32_t>>& out);
    bool logits_on_device() const { return logits_pending_; }  // decoded with logits_to_host = false, not copied yet
    int64_t n_past() const { return n_past_; }
    int64_t n_ctx() const { return n_ctx_; }
    int n_threads() const;  // the CPU threads it uses (the most of any of its backends)
    DType kv_type() const { return kv_type_; }
    // The backend of layer 0 (the device one of a split context); spans() says where every layer runs.
    const Backend& backend() const;
    std::vector<LayerSpan> spans() const;
    // Forget cached positions from n onwards (prefix reuse across turns); images starting there go too.
    void truncate(int64_t n);

    // Owl3: attaches one image's visual embeddings ([n_tokens][n_embd]) whose <|image|> placeholder starts at
    // absolute position `start` (>= n_past, after any earlier image); its visual K/V are computed once here and
    // kept beside the text cache. mplug2: the video tokens, start 0 on an empty context (replacing an earlier
    // video); each layer's cross K/V are computed here once. NaN/inf embeddings, and architectures without such
    // a path, throw Error.
    void add_image(const float* embeds, int64_t n_tokens, int64_t start);
    int64_t n_images() const;
    // Makes this context equal to `other` (same Model, device, split and KV type; n_ctx may differ but must hold
    // other's positions): its KV cache prefix [0, other.n_past()), n_past, last logits / hidden states and its
    // architecture's state (mplug2: the video's cross-attention K/V, shared, not recomputed). For beam search:
    // fork a hypothesis without re-evaluating its prefix. Throws Error naming the mismatch; `other` unchanged.
    void copy_state_from(const Context& other);
    size_t visual_bytes() const;        // memory held by attached images' state
    size_t kv_bytes_per_token() const;  // text KV cache memory per position
    const Model& model() const { return *model_; }

    // One span of layers on one backend: the backend, its layers' KV caches and the scratch of a piece
    // (src/models/forward.h: what architectures' forward code reads and writes). Not for callers.
    struct Impl;

private:
    friend void decode_step(const std::vector<Context*>& contexts, const std::vector<int32_t>& tokens);
    class Use;  // marks the context busy for one call (one thread at a time)
    const std::vector<float>& decode_locked(const Batch& batch, bool all_logits, bool logits_to_host = true);  // the caller holds Use
    void forward(const Batch& piece, int64_t offset, int64_t T, bool all_logits, float* logits_out, float* hidden_out,
                 bool logits_to_host = true);
    void add_span(const std::string& backend, int n_threads, int64_t first, int64_t end);

    std::shared_ptr<const Model> model_;
    int64_t n_ctx_, n_batch_;
    DType kv_type_;
    int64_t n_past_ = 0;
    std::vector<std::unique_ptr<Impl>> spans_;  // in layer order; one unless the context is split
    std::vector<float> hand_off_;               // the hidden state between two device spans
    std::vector<int32_t> pos_;                  // the rotary positions of the piece in forward, shared by the spans
    std::unique_ptr<ArchState> state_;          // on the first span's backend
    mutable std::vector<float> logits_;         // filled by last_logits() while logits_pending_
    std::vector<float> hidden_;
    mutable bool logits_pending_ = false;       // the last token's logits are in the last span's out only
    std::atomic<bool> busy_{false};
};

}  // namespace owl
