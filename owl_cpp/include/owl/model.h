// A decoder-only text model (llama / qwen2 GGUF) and the per-conversation state that runs it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "owl/gguf.h"
#include "owl/ops.h"
#include "owl/threadpool.h"
#include "owl/tokenizer.h"

namespace owl {

// mPLUG-Owl3 hyper-attention (owl3.md section 4): which layers, which gate, fused or not.
enum class HyperGate { None, Proj, Vector };  // 241101 / 240728 per-head Linear(d,d) / 241014 static [H]
struct HyperParams {
    std::string variant;                // "240728" | "241014" | "241101"; empty for text models
    std::vector<int64_t> layers;        // 0-based decoder layers with hyper-attention
    HyperGate gate = HyperGate::None;
    bool fused = false;                 // 241101: visual and text keys share one softmax
    int64_t mi_rope_offset = 1;         // image j's keys are rotated at position start_j + offset
};

struct HParams {
    std::string arch;          // general.architecture: "llama" | "qwen2" | "owl3"
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
    HyperParams hyper;
};

struct LayerWeights {
    std::vector<float> attn_norm, ffn_norm;
    WeightView wq, wk, wv, wo;
    std::vector<float> bq, bk, bv;  // empty when the architecture has no q/k/v bias
    WeightView ffn_gate, ffn_up, ffn_down;
    // Owl3 hyper layers only.
    bool hyper = false;
    WeightView hyper_kv;                  // v_kv_proj [2*n_head_kv*head_dim][n_embd], rows (head, K|V, dim)
    std::vector<float> hyper_kv_bias;
    WeightView hyper_gate_proj;           // 240728: [head_dim][head_dim]
    std::vector<float> hyper_gate_proj_bias;
    std::vector<float> hyper_gate;        // 241014: [n_embd]
};

class Model {
public:
    // Maps the GGUF, validates every tensor the architecture needs (name, type, shape) and builds the
    // tokenizer. Errors name the file and the tensor or key at fault.
    static std::shared_ptr<Model> load(const std::string& path);

    const HParams& hparams() const { return hp_; }
    const Tokenizer& tokenizer() const { return *tokenizer_; }
    const GGUFFile& gguf() const { return *file_; }
    const WeightView& token_embd() const { return token_embd_; }
    const WeightView& output() const { return output_; }
    const std::vector<float>& output_norm() const { return output_norm_; }
    const std::vector<LayerWeights>& layers() const { return layers_; }
    // The dominant storage type of the layer matrices (what "Q4_0 model" means), for reports.
    DType weight_type() const { return layers_.empty() ? token_embd_.type : layers_[0].wq.type; }
    uint64_t weight_bytes() const;  // bytes of all tensors in the file
    uint64_t packed_bytes() const { return packed_bytes_; }  // load-time repacked copies (weight_packing.cpp)

private:
    Model() = default;
    void pack_weights();  // Q4_0 matrices -> BlockQ4_0x8 when the active kernels use that layout
    std::unique_ptr<GGUFFile> file_;
    std::unique_ptr<Tokenizer> tokenizer_;
    HParams hp_;
    WeightView token_embd_, output_;
    std::vector<float> output_norm_;
    std::vector<LayerWeights> layers_;
    struct FreeAligned { void operator()(uint8_t* p) const; };
    std::unique_ptr<uint8_t, FreeAligned> packed_;
    uint64_t packed_bytes_ = 0;
};

// Builds the tokenizer described by a GGUF file's tokenizer.ggml.* keys.
std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GGUFFile& file);

// One conversation: KV cache, scratch buffers and the thread pool. Not thread-safe.
class Context {
public:
    Context(std::shared_ptr<const Model> model, int64_t n_ctx, int n_threads, int64_t n_batch = 256);

    // Appends `tokens` after the n_past() already cached and returns logits: for the last token
    // ([n_vocab]) or, with all_logits, for every token ([tokens.size()][n_vocab]).
    // Throws Error when the context would overflow or a token id is out of range; the cache is unchanged then.
    const std::vector<float>& eval(const std::vector<int32_t>& tokens, bool all_logits = false);

    // Logits of the last evaluated token ([n_vocab]); valid until the next eval.
    const float* last_logits() const;
    int64_t n_past() const { return n_past_; }
    int64_t n_ctx() const { return n_ctx_; }
    int n_threads() const { return pool_.size(); }
    // Forget cached positions from n onwards (prefix reuse across turns); images starting there go too.
    void truncate(int64_t n);

    // Owl3: attaches one image's visual embeddings ([n_tokens][n_embd]) whose <|image|> placeholder starts at
    // absolute position `start` (>= n_past, after any earlier image). Its visual K/V are computed here, once
    // per hyper layer, and kept beside the text KV cache.
    void add_image(const float* embeds, int64_t n_tokens, int64_t start);
    int64_t n_images() const { return int64_t(images_.size()); }
    size_t visual_bytes() const;  // memory held by visual K/V
    size_t kv_bytes_per_token() const;  // text KV cache memory per position
    const Model& model() const { return *model_; }

private:
    void eval_batch(const int32_t* tokens, int64_t T, bool all_logits, float* logits_out);
    // Attention of a hyper layer with images attached (hyper_attention.cpp); writes attn_.
    void hyper_attention(int64_t il, int64_t T, const ops::AttentionShape& shape);

    struct VisualImage {
        int64_t start;     // absolute position of the placeholder's first token
        int64_t rows_end;  // visual rows [previous rows_end, rows_end) belong to this image
    };

    std::shared_ptr<const Model> model_;
    int64_t n_ctx_, n_batch_;
    int64_t n_past_ = 0;
    ThreadPool pool_;
    std::vector<std::vector<float>> k_cache_, v_cache_;  // per layer [n_head_kv][n_ctx][head_dim]
    std::vector<float> x_, h_, q_, k_, v_, attn_, gate_, up_, logits_;
    std::vector<int32_t> pos_;
    std::vector<VisualImage> images_;
    std::vector<std::vector<float>> vis_k_, vis_v_;  // per layer (hyper only): [rows][n_head_kv][head_dim]
    std::vector<float> vctx_, hgate_;                 // hyper-attention scratch [n_batch][n_head*head_dim]
    std::vector<int64_t> visible_;                    // visual rows each token of the batch sees
};

}  // namespace owl
