// A loaded decoder: the weights every architecture shares (embeddings, per-layer attention + SwiGLU FFN, output
// head) plus what its architecture adds (src/models/<arch>.cpp, found by general.architecture). A Model is
// immutable once loaded: any number of Contexts (context.h) run on one Model at once.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "owl/gguf.h"
#include "owl/ops.h"
#include "owl/tokenizer.h"

namespace owl {

class Architecture;  // src/models/architecture.h
struct ArchWeights;

struct HParams {
    std::string arch;          // general.architecture: "llama" | "qwen2" | "owl3" | "owl2"
    int64_t n_vocab = 0;       // rows of token_embd (may exceed the tokenizer's size)
    int64_t n_embd = 0;
    int64_t n_layer = 0;
    int64_t n_head = 0;
    int64_t n_head_kv = 0;
    int64_t head_dim = 0;
    int64_t n_ff = 0;
    int64_t n_ctx_train = 0;
    float rms_eps = 1e-6f;
    float rope_base = 10000.0f;
    RopeMode rope_mode = RopeMode::Norm;
};

// One pre-norm decoder layer: attention with optional q/k/v biases, then a SwiGLU FFN.
struct DecoderLayer {
    std::vector<float> attn_norm, ffn_norm;
    WeightView wq, wk, wv, wo;
    std::vector<float> bq, bk, bv;  // empty when the architecture has no q/k/v bias
    WeightView ffn_gate, ffn_up, ffn_down;
};

// Which of a model's weights one device holds (partial offload: the first layers on a GPU, the rest on the CPU):
// layers [first, end), the input side (token embeddings and what an architecture adds to them) and the output
// side (output norm, output matrix and head). The default is the whole model.
struct WeightRange {
    int64_t first = 0, end = std::numeric_limits<int64_t>::max();
    bool input = true, output = true;
    bool has_layer(int64_t il) const { return il >= first && il < end; }
    bool whole(const HParams& hp) const { return first <= 0 && end >= hp.n_layer && input && output; }
};

// Architecture-specific facts for reports and bindings (e.g. owl3's variant and hyper layers).
using ArchValue = std::variant<bool, int64_t, double, std::string, std::vector<int64_t>>;
using ArchInfo = std::vector<std::pair<std::string, ArchValue>>;

class Model {
public:
    // Maps the GGUF, validates every tensor the architecture needs (name, type, shape), rejects tensors it does
    // not know and builds the tokenizer. Errors name the file and the tensor or key at fault.
    static std::shared_ptr<Model> load(const std::string& path);
    // The same from a file already parsed (GGUFFile::from_buffer: the buffer must outlive the model).
    static std::shared_ptr<Model> load(std::unique_ptr<GGUFFile> file);
    ~Model();

    const HParams& hparams() const { return hp_; }
    const Architecture& architecture() const { return *arch_; }
    const Tokenizer& tokenizer() const { return *tokenizer_; }
    const GGUFFile& gguf() const { return *file_; }
    const WeightView& token_embd() const { return token_embd_; }
    const WeightView& output() const { return output_; }
    const std::vector<float>& output_norm() const { return output_norm_; }
    const std::vector<DecoderLayer>& layers() const { return layers_; }
    // What the architecture adds (nullptr when nothing); architectures downcast to their own type.
    const ArchWeights* arch_weights() const { return arch_weights_.get(); }
    ArchInfo arch_info() const;
    // The dominant storage type of the layer matrices (what "Q4_0 model" means), for reports.
    DType weight_type() const { return layers_.empty() ? token_embd_.type : layers_[0].wq.type; }
    uint64_t weight_bytes() const;  // bytes of all tensors in the file
    uint64_t packed_bytes() const { return packed_bytes_; }  // load-time repacked copies (weight_packing.cpp)

    // Every weight matrix and float vector (norms, biases, gates) the forward pass reads within `range`, each
    // once: what a device backend copies to its memory.
    void for_each_weight(const std::function<void(const WeightView&)>& matrix,
                         const std::function<void(const std::vector<float>&)>& vector, const WeightRange& range = {}) const;
    // What a backend keeps per model (a GPU's copy of the weights), made by the first context that asks with
    // `key` and shared by every later one; freed with the model. Thread-safe.
    std::shared_ptr<void> backend_state(const std::string& key, const std::function<std::shared_ptr<void>()>& make) const;

private:
    friend class ModelBuilder;  // model.cpp: fills the fields while loading
    Model() = default;
    void pack_weights();  // Q4_0 matrices -> BlockQ4_0x8 when the active kernels use that layout
    std::unique_ptr<GGUFFile> file_;
    std::unique_ptr<Tokenizer> tokenizer_;
    const Architecture* arch_ = nullptr;
    HParams hp_;
    WeightView token_embd_, output_;
    std::vector<float> output_norm_;
    std::vector<DecoderLayer> layers_;
    std::unique_ptr<ArchWeights> arch_weights_;
    struct FreeAligned { void operator()(uint8_t* p) const; };
    std::unique_ptr<uint8_t, FreeAligned> packed_;
    uint64_t packed_bytes_ = 0;
    mutable std::mutex backend_mu_;
    mutable std::map<std::string, std::shared_ptr<void>> backend_state_;
};

// Builds the tokenizer described by a GGUF file's tokenizer.ggml.* keys.
std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GGUFFile& file);

}  // namespace owl
