// Loads llama / qwen2 GGUF decoders: hyper-parameters from `<arch>.*` keys, tensors by llama.cpp's names.
#include <algorithm>
#include <set>

#include "owl/error.h"
#include "owl/model.h"

namespace owl {
namespace {

struct Loader {
    const GGUFFile& f;
    std::set<std::string> used;

    [[noreturn]] void fail(const std::string& what) const { throw FormatError("model '" + f.path() + "': " + what); }

    const GGUFTensorInfo& tensor(const std::string& name, int n_dims_expected, int64_t ne0, int64_t ne1) {
        const GGUFTensorInfo* t = f.find_tensor(name);
        if (!t) fail("tensor '" + name + "' is missing");
        used.insert(name);
        int n_dims = t->n_dims;
        while (n_dims > 1 && t->ne[n_dims - 1] == 1) --n_dims;  // trailing 1-sized dims carry no meaning
        const bool ok = n_dims == n_dims_expected && t->ne[0] == ne0 && (n_dims_expected == 1 || t->ne[1] == ne1);
        if (!ok) {
            std::string got = "[";
            for (int d = 0; d < t->n_dims; ++d) got += (d ? ", " : "") + std::to_string(t->ne[d]);
            const std::string want = n_dims_expected == 1 ? "[" + std::to_string(ne0) + "]"
                                                          : "[" + std::to_string(ne0) + ", " + std::to_string(ne1) + "]";
            fail("tensor '" + name + "' has shape " + got + "], expected " + want + " (ggml order)");
        }
        return *t;
    }
    WeightView matrix(const std::string& name, int64_t cols, int64_t rows) {
        const auto& t = tensor(name, 2, cols, rows);
        return WeightView{t.type, rows, cols, t.data};
    }
    std::vector<float> vec(const std::string& name, int64_t n) {
        const auto& t = tensor(name, 1, n, 1);
        std::vector<float> out(static_cast<size_t>(n));
        ops::dequantize_row(t.type, t.data, out.data(), n);
        return out;
    }
    int64_t positive(const std::string& key) const {
        const uint64_t v = f.get_uint(key);
        if (v == 0 || v > (uint64_t(1) << 31)) fail("key '" + key + "' has an implausible value " + std::to_string(v));
        return int64_t(v);
    }
};

// owl3.* keys written by owl-export (export/owl_export/owl3/convert.py).
void load_hyper_params(const Loader& L, HParams& hp) {
    HyperParams& h = hp.hyper;
    h.variant = L.f.get_string("owl3.variant");
    const std::string gate = L.f.get_string("owl3.hyper_gate");
    if (gate == "proj") h.gate = HyperGate::Proj;
    else if (gate == "vector") h.gate = HyperGate::Vector;
    else if (gate == "none") h.gate = HyperGate::None;
    else L.fail("owl3.hyper_gate '" + gate + "' is not one of proj, vector, none");
    h.fused = L.f.get_bool("owl3.fused", false);
    if (h.fused != (h.gate == HyperGate::None)) L.fail("owl3.fused must be true exactly when owl3.hyper_gate is 'none'");
    h.mi_rope_offset = int64_t(L.f.get_uint("owl3.mi_rope_offset"));
    if (h.mi_rope_offset > 1) L.fail("owl3.mi_rope_offset must be 0 or 1");
    for (int64_t layer : L.f.get_int_array("owl3.hyper_layers")) {
        if (layer < 0 || layer >= hp.n_layer) L.fail("owl3.hyper_layers names layer " + std::to_string(layer) + " of " + std::to_string(hp.n_layer));
        if (std::find(h.layers.begin(), h.layers.end(), layer) != h.layers.end()) L.fail("owl3.hyper_layers repeats layer " + std::to_string(layer));
        h.layers.push_back(layer);
    }
    if (h.layers.empty()) L.fail("owl3.hyper_layers is empty");
}

}  // namespace

uint64_t Model::weight_bytes() const {
    uint64_t n = 0;
    for (const auto& t : file_->tensors()) n += t.nbytes;
    return n;
}

std::shared_ptr<Model> Model::load(const std::string& path) {
    std::shared_ptr<Model> m(new Model());
    m->file_ = GGUFFile::open(path);
    const GGUFFile& f = *m->file_;
    Loader L{f, {}};
    HParams& hp = m->hp_;

    hp.arch = f.get_string("general.architecture");
    if (hp.arch == "llama") {
        hp.rope_mode = RopeMode::Norm;
    } else if (hp.arch == "qwen2" || hp.arch == "owl3") {  // owl3: a qwen2 decoder plus hyper layers
        hp.rope_mode = RopeMode::Neox;
    } else {
        L.fail("architecture '" + hp.arch + "' is not supported (supported: llama, qwen2, owl3)");
    }
    const std::string a = hp.arch + ".";
    hp.n_embd = L.positive(a + "embedding_length");
    hp.n_layer = L.positive(a + "block_count");
    hp.n_head = L.positive(a + "attention.head_count");
    hp.n_head_kv = f.has(a + "attention.head_count_kv") ? L.positive(a + "attention.head_count_kv") : hp.n_head;
    hp.n_ff = L.positive(a + "feed_forward_length");
    hp.n_ctx_train = L.positive(a + "context_length");
    hp.rms_eps = float(f.get_float(a + "attention.layer_norm_rms_epsilon"));
    hp.rope_base = float(f.get_float(a + "rope.freq_base", 10000.0));
    if (hp.n_head % hp.n_head_kv != 0) L.fail("head_count " + std::to_string(hp.n_head) + " is not a multiple of head_count_kv " + std::to_string(hp.n_head_kv));
    hp.head_dim = f.has(a + "attention.key_length") ? L.positive(a + "attention.key_length") : hp.n_embd / hp.n_head;
    if (hp.head_dim % 2 != 0) L.fail("head dimension " + std::to_string(hp.head_dim) + " is odd");
    if (f.has(a + "rope.dimension_count") && int64_t(f.get_uint(a + "rope.dimension_count")) != hp.head_dim)
        L.fail("partial rotary embeddings (rope.dimension_count != head dim) are not supported");
    if (!(hp.rms_eps > 0.0f) || !(hp.rope_base > 0.0f)) L.fail("rms epsilon and rope.freq_base must be positive");

    const GGUFTensorInfo* embd = f.find_tensor("token_embd.weight");
    if (!embd) L.fail("tensor 'token_embd.weight' is missing");
    hp.n_vocab = embd->ne[1];
    const int64_t E = hp.n_embd, Q = hp.n_head * hp.head_dim, KV = hp.n_head_kv * hp.head_dim;
    m->token_embd_ = L.matrix("token_embd.weight", E, hp.n_vocab);
    m->output_norm_ = L.vec("output_norm.weight", E);
    // Tied embeddings: no output.weight, the embedding table is the output matrix.
    m->output_ = f.find_tensor("output.weight") ? L.matrix("output.weight", E, hp.n_vocab) : m->token_embd_;

    if (hp.arch == "owl3") load_hyper_params(L, hp);
    const bool qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
    m->layers_.resize(size_t(hp.n_layer));
    for (int64_t i = 0; i < hp.n_layer; ++i) {
        const std::string p = "blk." + std::to_string(i) + ".";
        LayerWeights& l = m->layers_[size_t(i)];
        l.attn_norm = L.vec(p + "attn_norm.weight", E);
        l.wq = L.matrix(p + "attn_q.weight", E, Q);
        l.wk = L.matrix(p + "attn_k.weight", E, KV);
        l.wv = L.matrix(p + "attn_v.weight", E, KV);
        l.wo = L.matrix(p + "attn_output.weight", Q, E);
        if (qkv_bias) {
            l.bq = L.vec(p + "attn_q.bias", Q);
            l.bk = L.vec(p + "attn_k.bias", KV);
            l.bv = L.vec(p + "attn_v.bias", KV);
        }
        l.ffn_norm = L.vec(p + "ffn_norm.weight", E);
        l.ffn_gate = L.matrix(p + "ffn_gate.weight", E, hp.n_ff);
        l.ffn_up = L.matrix(p + "ffn_up.weight", E, hp.n_ff);
        l.ffn_down = L.matrix(p + "ffn_down.weight", hp.n_ff, E);
        const auto& hl = hp.hyper.layers;
        if (std::find(hl.begin(), hl.end(), i) != hl.end()) {
            l.hyper = true;
            l.hyper_kv = L.matrix(p + "hyper_kv.weight", E, 2 * KV);
            l.hyper_kv_bias = L.vec(p + "hyper_kv.bias", 2 * KV);
            if (hp.hyper.gate == HyperGate::Proj) {
                l.hyper_gate_proj = L.matrix(p + "hyper_gate_proj.weight", hp.head_dim, hp.head_dim);
                l.hyper_gate_proj_bias = L.vec(p + "hyper_gate_proj.bias", hp.head_dim);
            } else if (hp.hyper.gate == HyperGate::Vector) {
                l.hyper_gate = L.vec(p + "hyper_gate.weight", Q);
            }
        }
    }
    m->tokenizer_ = tokenizer_from_gguf(f);
    if (m->tokenizer_->n_vocab() > hp.n_vocab)
        L.fail("tokenizer has " + std::to_string(m->tokenizer_->n_vocab()) + " tokens but token_embd has only " + std::to_string(hp.n_vocab) + " rows");
    m->pack_weights();
    return m;
}

}  // namespace owl
