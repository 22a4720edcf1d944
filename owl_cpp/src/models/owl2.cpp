// mPLUG-Owl2, mPLUG-Owl2.1 and mPLUG-Owl v1 (docs/owl2.md A5, PART B, PART C): a llama decoder (rope on pairs
// (2i, 2i+1)) plus the modality-adaptive module. What this file adds:
//  - load_extra: owl2.variant / owl2.image_tokens, and the image branch of every layer:
//      owl2    blk.N.img.{attn_norm, attn_k, attn_v, ffn_norm}.weight in every layer; no q/k/v biases;
//      owl2_1  blk.N.img.{attn_q, attn_k, attn_v}.{weight, bias} in every layer, no image norms (ln_1 / ln_2
//              are shared), and the text layers' q/k/v biases (Qwen's c_attn has one);
//      owl1    none at all;
//  - layer(m, il, Image): the image-branch layer, i.e. the image tensors with the layer's shared rest (owl2:
//    Q, O and FFN; owl2_1: the norms, O and FFN). A batch's image pieces run through it; text pieces (and so
//    every decode step of a generated token, as in the official code) through the file's plain layer. K/V
//    computed by the image branch stay in the KV cache like any other: nothing else is kept per context.
#include "architecture.h"
#include "owl/error.h"
#include "tensor_loader.h"
#include "unicode.h"

namespace owl {
namespace {

const char* const kImageTensors[] = {"img.attn_norm.weight", "img.attn_k.weight", "img.attn_v.weight", "img.ffn_norm.weight"};
// Owl2.1's image branch: the fused c_attn.multiway.1 as Q, K and V with their biases (docs/owl2.md PART B 1).
const char* const kImageTensors21[] = {"img.attn_q.weight", "img.attn_q.bias", "img.attn_k.weight",
                                       "img.attn_k.bias",   "img.attn_v.weight", "img.attn_v.bias"};
const char* const kImageNorms[] = {"img.attn_norm.weight", "img.ffn_norm.weight"};

struct Owl2Weights : ArchWeights {
    std::string variant;              // "owl2" | "owl2_1" | "owl1"
    int64_t image_tokens = 0;         // what one image puts into the sequence (abstractor queries + vit_eos)
    // Per layer, the image branch. owl2: attn_norm, wk, wv, ffn_norm read from the file; wq, wo and the FFN
    // are copies of the text layer's views, made by finish() once the model's matrices are repacked.
    // owl2_1: wq, wk, wv and their biases read from the file; the norms (copied), wo and the FFN are the text
    // layer's. Empty in v1.
    std::vector<DecoderLayer> image;
    bool own_q = false;               // owl2_1: the image branch has its own Q (and biases), the norms are shared

    void matrices(std::vector<WeightView*>& out) override {
        for (DecoderLayer& l : image) {
            if (own_q) out.push_back(&l.wq);
            out.push_back(&l.wk);
            out.push_back(&l.wv);
        }
    }
    void weights(std::vector<const WeightView*>& m, std::vector<const std::vector<float>*>& v, const WeightRange& r) const override {
        for (size_t il = 0; il < image.size(); ++il) {
            if (!r.has_layer(int64_t(il))) continue;
            const DecoderLayer& l = image[il];
            if (own_q) m.push_back(&l.wq);
            m.push_back(&l.wk);
            m.push_back(&l.wv);
            // owl2_1's norms are copies made by finish(): listed so a device backend uploads them too
            for (const std::vector<float>* x : {&l.attn_norm, &l.ffn_norm, &l.bq, &l.bk, &l.bv}) v.push_back(x);
        }
    }
    void finish(const Model& m) override {
        for (size_t il = 0; il < image.size(); ++il) {
            const DecoderLayer& t = m.layers()[il];
            DecoderLayer& l = image[il];
            if (own_q) {
                l.attn_norm = t.attn_norm;
                l.ffn_norm = t.ffn_norm;
            } else {
                l.wq = t.wq;
            }
            l.wo = t.wo;
            l.ffn_gate = t.ffn_gate;
            l.ffn_up = t.ffn_up;
            l.ffn_down = t.ffn_down;
        }
    }
};

const Owl2Weights& weights_of(const Model& m) { return static_cast<const Owl2Weights&>(*m.arch_weights()); }

class Owl2 : public Architecture {
public:
    std::string name() const override { return "owl2"; }
    RopeMode rope_mode() const override { return RopeMode::Norm; }  // a llama decoder

    std::unique_ptr<ArchWeights> load_extra(TensorLoader& L, const HParams& hp) const override {
        auto w = std::make_unique<Owl2Weights>();
        const GGUFFile& f = L.file();
        w->variant = f.get_string("owl2.variant");
        if (w->variant != "owl2" && w->variant != "owl2_1" && w->variant != "owl1")
            L.fail("owl2.variant '" + unicode::sanitize_utf8(w->variant) + "' is not one of owl2, owl2_1, owl1");
        w->image_tokens = L.positive("owl2.image_tokens");
        if (w->variant == "owl2_1") {
            load_owl2_1(L, hp, *w);
            return w;
        }
        if (hp.n_layer > 0 && (L.has("blk.0.img.attn_q.weight") || L.has("blk.0.attn_q.bias")))
            L.fail(std::string("tensor '") + (L.has("blk.0.img.attn_q.weight") ? "blk.0.img.attn_q.weight" : "blk.0.attn_q.bias") +
                   "' belongs to mPLUG-Owl2.1's layout, but owl2.variant is '" + w->variant + "' (not owl2_1)");

        // The image branch is optional as a set: the first layer decides, every layer must then agree.
        bool multiway = false;
        for (const char* t : kImageTensors) multiway = multiway || L.has("blk.0." + std::string(t));
        if (multiway != (w->variant == "owl2"))
            L.fail(multiway ? "owl2.variant 'owl1' (mPLUG-Owl v1, no modality-adaptive module) but the file has blk.0.img.* tensors"
                            : "owl2.variant 'owl2' needs the image branch of every layer, but tensor 'blk.0.img.attn_norm.weight' "
                              "(and the rest of blk.0.img.*) is missing");
        for (int64_t il = 0; il < hp.n_layer; ++il) {
            const std::string p = "blk." + std::to_string(il) + ".";
            for (const char* t : kImageTensors) {
                if (L.has(p + t) == multiway) continue;
                if (multiway) L.fail("tensor '" + p + t + "' is missing: the image branch (blk.N.img.*) must be in every layer, or in none");
                L.fail("tensor '" + p + t + "' has no counterpart in blk.0: the image branch (blk.N.img.*) must be in every layer, or in none");
            }
        }
        if (!multiway) return w;

        const int64_t E = hp.n_embd, KV = hp.n_head_kv * hp.head_dim;
        w->image.resize(size_t(hp.n_layer));
        for (int64_t il = 0; il < hp.n_layer; ++il) {
            const std::string p = "blk." + std::to_string(il) + ".img.";
            DecoderLayer& l = w->image[size_t(il)];
            l.attn_norm = L.vec(p + "attn_norm.weight", E);
            l.wk = L.matrix(p + "attn_k.weight", E, KV);
            l.wv = L.matrix(p + "attn_v.weight", E, KV);
            l.ffn_norm = L.vec(p + "ffn_norm.weight", E);
        }
        return w;
    }

    // docs/owl2.md PART B 1: only the fused Q|K|V is per modality, so each layer has img.attn_{q,k,v}.{weight,
    // bias}, no image norms, and the text branch has its q/k/v biases (read by the shared layer loader when
    // blk.0.attn_q.bias exists).
    static void load_owl2_1(TensorLoader& L, const HParams& hp, Owl2Weights& w) {
        if (hp.n_layer > 0 && !L.has("blk.0.attn_q.bias"))
            L.fail("owl2.variant 'owl2_1' needs the text branch's q/k/v biases, but tensor 'blk.0.attn_q.bias' is missing");
        if (hp.n_head_kv != hp.n_head)
            L.fail("owl2.variant 'owl2_1' (Qwen-7B) has as many kv heads as heads, but head_count_kv is " + std::to_string(hp.n_head_kv));
        for (int64_t il = 0; il < hp.n_layer; ++il) {
            const std::string p = "blk." + std::to_string(il) + ".";
            for (const char* t : kImageNorms)
                if (L.has(p + t))
                    L.fail("tensor '" + p + t + "' is not part of owl2.variant 'owl2_1': its norms are shared by both modalities "
                           "(an mPLUG-Owl2 image branch mixed into an mPLUG-Owl2.1 file?)");
            for (const char* t : kImageTensors21)
                if (!L.has(p + t))
                    L.fail("tensor '" + p + t + "' is missing: owl2.variant 'owl2_1' needs the image Q/K/V and their biases "
                           "(blk.N.img.attn_{q,k,v}.{weight,bias}) in every layer");
        }
        const int64_t E = hp.n_embd, Q = hp.n_head * hp.head_dim, KV = hp.n_head_kv * hp.head_dim;
        w.own_q = true;
        w.image.resize(size_t(hp.n_layer));
        for (int64_t il = 0; il < hp.n_layer; ++il) {
            const std::string p = "blk." + std::to_string(il) + ".img.";
            DecoderLayer& l = w.image[size_t(il)];
            l.wq = L.matrix(p + "attn_q.weight", E, Q);
            l.bq = L.vec(p + "attn_q.bias", Q);
            l.wk = L.matrix(p + "attn_k.weight", E, KV);
            l.bk = L.vec(p + "attn_k.bias", KV);
            l.wv = L.matrix(p + "attn_v.weight", E, KV);
            l.bv = L.vec(p + "attn_v.bias", KV);
        }
    }

    void describe(const Model& m, ArchInfo& out) const override {
        const Owl2Weights& w = weights_of(m);
        out.emplace_back("owl2_variant", w.variant);
        out.emplace_back("image_tokens", w.image_tokens);
        out.emplace_back("multiway", !w.image.empty());
    }

    const DecoderLayer& layer(const Model& m, int64_t il, Modality modality) const override {
        const Owl2Weights& w = weights_of(m);
        if (modality == Modality::Image && !w.image.empty()) return w.image[size_t(il)];
        return m.layers()[size_t(il)];
    }
};

}  // namespace

const Architecture& owl2_architecture() {
    static const Owl2 arch;
    return arch;
}

}  // namespace owl
