// Token-level JSON constraint (json_constraint.h): the vocabulary trie and the sampler hook.
#include "owl/json_constraint.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "owl/error.h"
#include "owl/sampler.h"
#include "owl/tokenizer.h"

namespace owl {
namespace {

// A machine inside a value string with nothing pending (the state most of a JSON answer's tokens start in).
JsonMachine plain_string_machine() {
    JsonMachine m(false);
    m.push(uint8_t('"'));
    return m;
}

}  // namespace

JsonVocab::JsonVocab(const std::vector<std::string>& bytes, const std::vector<uint8_t>& usable)
    : bytes_(bytes), usable_(bytes.size(), 0), plain_(bytes.size(), 0) {
    if (usable.size() != bytes.size())
        throw Error("json vocabulary: " + std::to_string(bytes.size()) + " token byte strings but " +
                    std::to_string(usable.size()) + " usable flags");
    if (bytes.size() > size_t(std::numeric_limits<int32_t>::max())) throw Error("json vocabulary: too many tokens");
    const JsonMachine plain = plain_string_machine();
    std::vector<int32_t> order;
    for (size_t i = 0; i < bytes.size(); ++i) {
        if (!usable[i] || bytes[i].empty()) continue;  // an empty token would let generation stall
        usable_[i] = 1;
        order.push_back(int32_t(i));
        // Plain: from a plain string it leaves a plain string; no quote, so it cannot end the string.
        JsonMachine m = plain;
        if (bytes[i].find('"') == std::string::npos && m.push(bytes[i]) && m.in_plain_string()) plain_[i] = 1;
        else not_plain_.push_back(int32_t(i));
    }
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return bytes_[size_t(a)] < bytes_[size_t(b)]; });
    build(order.data(), order.data() + order.size(), 0);
    node_edge_.push_back(int32_t(edge_.size()));  // end sentinels
    node_tok_.push_back(int32_t(tok_.size()));
}

// The node for the tokens [lo, hi) (sorted, sharing their first `depth` bytes); returns its index. A node's
// edges and tokens are appended before its children exist, so each node's lie together, in node order.
int32_t JsonVocab::build(int32_t* lo, int32_t* hi, size_t depth) {
    const int32_t n = int32_t(node_edge_.size());
    node_edge_.push_back(int32_t(edge_.size()));
    node_tok_.push_back(int32_t(tok_.size()));
    while (lo < hi && bytes_[size_t(*lo)].size() == depth) tok_.push_back(*lo++);  // shortest sort first
    std::vector<int32_t*> starts;
    for (int32_t* p = lo; p < hi; ++p)
        if (p == lo || bytes_[size_t(*p)][depth] != bytes_[size_t(p[-1])][depth]) starts.push_back(p);
    const size_t base = edge_.size();
    edge_.resize(base + starts.size());
    for (size_t g = 0; g < starts.size(); ++g) {
        int32_t* end = g + 1 < starts.size() ? starts[g + 1] : hi;
        const uint8_t byte = uint8_t(bytes_[size_t(*starts[g])][depth]);
        const int32_t child = build(starts[g], end, depth + 1);
        edge_[base + g] = {byte, child};
    }
    return n;
}

std::shared_ptr<JsonVocab> JsonVocab::from_tokenizer(const Tokenizer& tok) {
    const int32_t n = tok.n_vocab();
    std::vector<std::string> bytes(static_cast<size_t>(n));
    std::vector<uint8_t> usable(size_t(n), 0);
    for (int32_t i = 0; i < n; ++i) {
        const TokenType t = tok.token_type(i);
        if (t != TokenType::Normal && t != TokenType::Byte && t != TokenType::Undefined) continue;
        bytes[size_t(i)] = tok.token_to_bytes(i, false);
        usable[size_t(i)] = 1;
    }
    return std::make_shared<JsonVocab>(bytes, usable);
}

JsonConstraint::JsonConstraint(std::shared_ptr<const JsonVocab> vocab, std::vector<int32_t> eog, bool object_only,
                               JsonLimits limits, std::shared_ptr<const JsonSchema> schema)
    : vocab_(std::move(vocab)), schema_(std::move(schema)), eog_(std::move(eog)),
      machine_(object_only, limits, schema_.get()) {
    if (!vocab_) throw Error("json constraint: no vocabulary");
    if (schema_) schema_->validate();
}

bool JsonConstraint::is_eog(int32_t id) const { return std::find(eog_.begin(), eog_.end(), id) != eog_.end(); }

bool JsonConstraint::allows(int32_t id) const {
    if (ended_ || id < 0 || id >= vocab_->size()) return false;
    if (is_eog(id)) return machine_.can_end();
    if (!vocab_->usable_[size_t(id)]) return false;
    if (vocab_->plain_[size_t(id)] && machine_.in_plain_string()) return true;
    JsonMachine m = machine_;
    return m.push(vocab_->bytes_[size_t(id)]);
}

void JsonConstraint::accept(int32_t id) {
    if (!allows(id))
        throw Error("json constraint: token " + std::to_string(id) + " cannot continue the JSON value here");
    if (is_eog(id)) ended_ = true;
    else machine_.push(vocab_->bytes_[size_t(id)]);
}

// Marks the tokens below `node` whose bytes the machine `m` (standing at the node) accepts.
void JsonConstraint::walk(int32_t node, const JsonMachine& m, uint8_t* out, int64_t n_vocab) const {
    const JsonVocab& v = *vocab_;
    for (int32_t e = v.node_edge_[size_t(node)]; e < v.node_edge_[size_t(node) + 1]; ++e) {
        JsonMachine c = m;
        if (!c.push(v.edge_[size_t(e)].byte)) continue;
        const int32_t child = v.edge_[size_t(e)].child;
        for (int32_t t = v.node_tok_[size_t(child)]; t < v.node_tok_[size_t(child) + 1]; ++t)
            if (v.tok_[size_t(t)] < n_vocab) out[v.tok_[size_t(t)]] = 1;
        walk(child, c, out, n_vocab);
    }
}

int64_t JsonConstraint::mask(uint8_t* out, int64_t n_vocab) const {
    const int64_t n = std::min<int64_t>(n_vocab, vocab_->size());
    std::memset(out, 0, size_t(n_vocab));
    if (!ended_) {
        if (machine_.in_plain_string()) {  // most tokens keep a plain string plain: test only the others
            std::memcpy(out, vocab_->plain_.data(), size_t(n));
            for (int32_t id : vocab_->not_plain_) {
                if (id >= n) continue;
                JsonMachine m = machine_;
                out[id] = m.push(vocab_->bytes_[size_t(id)]);
            }
        } else {
            walk(0, machine_, out, n);
        }
        for (int32_t id : eog_)
            if (id >= 0 && id < n) out[id] = machine_.can_end();
    }
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) count += out[i];
    return count;
}

int32_t JsonConstraint::sample(Sampler& sampler, const float* logits, int64_t n_vocab,
                               const std::vector<int32_t>& history) {
    int32_t id = sampler.sample(logits, n_vocab, history);
    if (!allows(id)) {  // the slow path: sample again among the allowed tokens only
        ++resamples_;
        mask_.resize(size_t(n_vocab));
        if (mask(mask_.data(), n_vocab) == 0)
            throw Error("json constraint: no token of the vocabulary can continue the JSON value here");
        masked_.resize(size_t(n_vocab));
        const float off = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < n_vocab; ++i) masked_[size_t(i)] = mask_[size_t(i)] ? logits[i] : off;
        id = sampler.sample(masked_.data(), n_vocab, history);
        if (id < 0 || id >= n_vocab || !mask_[size_t(id)]) {  // every allowed logit was -inf: the first allowed
            id = int32_t(std::find(mask_.begin(), mask_.end(), uint8_t(1)) - mask_.begin());
        }
    }
    accept(id);
    return id;
}

}  // namespace owl
