// Model::load: the shared decoder (hyper-parameters from `<arch>.*` keys, tensors by llama.cpp's names), then
// what the file's architecture adds, then a check that no tensor of the file was left unread.
#include <algorithm>

#include "architecture.h"
#include "owl/error.h"
#include "tensor_loader.h"
#include "unicode.h"

namespace owl {

Model::~Model() = default;

uint64_t Model::weight_bytes() const {
    uint64_t n = 0;
    for (const auto& t : file_->tensors()) n += t.nbytes;
    return n;
}

ArchInfo Model::arch_info() const {
    ArchInfo info;
    arch_->describe(*this, info);
    return info;
}

namespace {

void read_hparams(const TensorLoader& L, const Architecture& arch, HParams& hp) {
    const GGUFFile& f = L.file();
    const std::string a = hp.arch + ".";
    hp.n_embd = L.positive(a + "embedding_length");
    hp.n_layer = L.positive(a + "block_count");
    hp.n_head = L.positive(a + "attention.head_count");
    hp.n_head_kv = f.has(a + "attention.head_count_kv") ? L.positive(a + "attention.head_count_kv") : hp.n_head;
    hp.n_ff = L.positive(a + "feed_forward_length");
    hp.n_ctx_train = L.positive(a + "context_length");
    hp.rms_eps = float(f.get_float(a + arch.norm_eps_key()));
    hp.rope_base = float(f.get_float(a + "rope.freq_base", 10000.0));
    if (hp.n_head % hp.n_head_kv != 0) L.fail("head_count " + std::to_string(hp.n_head) + " is not a multiple of head_count_kv " + std::to_string(hp.n_head_kv));
    if (f.has(a + "attention.key_length")) {
        hp.head_dim = L.positive(a + "attention.key_length");
    } else {
        if (hp.n_embd % hp.n_head != 0)
            L.fail("embedding_length " + std::to_string(hp.n_embd) + " is not a multiple of head_count " + std::to_string(hp.n_head) +
                   " (and attention.key_length is not given)");
        hp.head_dim = hp.n_embd / hp.n_head;
    }
    if (hp.head_dim % 2 != 0) L.fail("head dimension " + std::to_string(hp.head_dim) + " is odd (rope rotates pairs)");
    if (f.has(a + "rope.dimension_count")) {
        const uint64_t rot = f.get_uint(a + "rope.dimension_count");
        if (rot < uint64_t(hp.head_dim))
            L.fail("partial rotary embeddings (rope.dimension_count " + std::to_string(rot) + " < head dimension " +
                   std::to_string(hp.head_dim) + ") are not supported");
        if (rot > uint64_t(hp.head_dim))
            L.fail("rope.dimension_count " + std::to_string(rot) + " is larger than the head dimension " + std::to_string(hp.head_dim));
    }
    // Written as !(x > 0) so NaN fails too; an infinite base or epsilon would give silent garbage.
    if (!(hp.rms_eps > 0.0f) || !(hp.rope_base > 0.0f) || hp.rms_eps > 1.0f || hp.rope_base > 1e12f)
        L.fail("rms epsilon and rope.freq_base must be positive and finite");
    // Every layer has at least 9 tensors: a block count the file cannot hold is refused before any allocation.
    if (uint64_t(hp.n_layer) > L.file().tensors().size() / 9)
        L.fail("block_count " + std::to_string(hp.n_layer) + " is more than the file's " + std::to_string(L.file().tensors().size()) + " tensors can hold");
}

}  // namespace

DecoderLayer Architecture::read_layer(TensorLoader& L, const HParams& hp, int64_t i, bool qkv_bias) const {
    const std::string p = "blk." + std::to_string(i) + ".";
    const int64_t E = hp.n_embd, Q = hp.n_head * hp.head_dim, KV = hp.n_head_kv * hp.head_dim;
    DecoderLayer l;
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
    return l;
}

class ModelBuilder {
public:
    static std::shared_ptr<Model> load(std::unique_ptr<GGUFFile> file) {
        std::shared_ptr<Model> m(new Model());
        m->file_ = std::move(file);
        TensorLoader L(*m->file_);
        HParams& hp = m->hp_;
        hp.arch = m->file_->get_string("general.architecture");
        m->arch_ = find_architecture(hp.arch);
        if (!m->arch_) {
            std::string known;
            for (const auto& n : architecture_names()) known += (known.empty() ? "" : ", ") + n;
            L.fail("architecture '" + unicode::sanitize_utf8(hp.arch) + "' is not supported (supported: " + known + ")");
        }
        hp.rope_mode = m->arch_->rope_mode();
        read_hparams(L, *m->arch_, hp);

        const GGUFTensorInfo* embd = m->file_->find_tensor("token_embd.weight");
        if (!embd) L.fail("tensor 'token_embd.weight' is missing");
        hp.n_vocab = embd->ne[1];
        m->token_embd_ = L.matrix("token_embd.weight", hp.n_embd, hp.n_vocab);
        m->output_norm_ = L.vec("output_norm.weight", hp.n_embd);
        // Tied embeddings: no output.weight, the embedding table is the output matrix.
        m->output_ = L.has("output.weight") ? L.matrix("output.weight", hp.n_embd, hp.n_vocab) : m->token_embd_;
        const bool qkv_bias = L.has("blk.0.attn_q.bias");
        m->layers_.reserve(size_t(hp.n_layer));
        for (int64_t i = 0; i < hp.n_layer; ++i) m->layers_.push_back(m->arch_->read_layer(L, hp, i, qkv_bias));
        m->arch_weights_ = m->arch_->load_extra(L, hp);
        L.reject_unused();

        m->tokenizer_ = tokenizer_from_gguf(*m->file_);
        if (m->tokenizer_->n_vocab() > hp.n_vocab)
            L.fail("tokenizer has " + std::to_string(m->tokenizer_->n_vocab()) + " tokens but token_embd has only " + std::to_string(hp.n_vocab) + " rows");
        m->pack_weights();
        if (m->arch_weights_) m->arch_weights_->finish(*m);
        return m;
    }
};

std::shared_ptr<Model> Model::load(const std::string& path) { return ModelBuilder::load(GGUFFile::open(path)); }
std::shared_ptr<Model> Model::load(std::unique_ptr<GGUFFile> file) { return ModelBuilder::load(std::move(file)); }

void Model::for_each_weight(const std::function<void(const WeightView&)>& matrix,
                            const std::function<void(const std::vector<float>&)>& vector, const WeightRange& range) const {
    std::vector<const WeightView*> ms;
    std::vector<const std::vector<float>*> vs;
    if (range.input) ms.push_back(&token_embd_);
    if (range.output) {
        ms.push_back(&output_);
        vs.push_back(&output_norm_);
    }
    for (size_t il = 0; il < layers_.size(); ++il) {
        if (!range.has_layer(int64_t(il))) continue;
        const DecoderLayer& l = layers_[il];
        for (const WeightView* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) ms.push_back(w);
        for (const std::vector<float>* v : {&l.attn_norm, &l.ffn_norm, &l.bq, &l.bk, &l.bv}) vs.push_back(v);
    }
    if (arch_weights_) arch_weights_->weights(ms, vs, range);
    // Tied embeddings (output == token_embd) and absent parts (null data, empty vectors) are visited once / never.
    std::vector<const void*> seen;
    for (const WeightView* w : ms) {
        if (!w->data || w->rows == 0 || std::find(seen.begin(), seen.end(), w->data) != seen.end()) continue;
        seen.push_back(w->data);
        matrix(*w);
    }
    for (const std::vector<float>* v : vs)
        if (!v->empty()) vector(*v);
}

std::shared_ptr<void> Model::backend_state(const std::string& key, const std::function<std::shared_ptr<void>()>& make) const {
    std::lock_guard<std::mutex> lock(backend_mu_);
    std::shared_ptr<void>& slot = backend_state_[key];
    if (!slot) slot = make();
    return slot;
}

}  // namespace owl
