// JSON-constrained generation: the sampled text always stays a prefix of one valid JSON value (RFC 8259).
//
//   JsonMachine     a byte-level pushdown automaton: push() says whether a byte may come next.
//   JsonVocab       the vocabulary's token byte strings as a trie, built once per tokenizer, shared (immutable).
//   JsonConstraint  one generation's state: which tokens may come next, and sample() that respects it.
//
// Limits keep a model from stalling: at most `max_ws` whitespace bytes in a row, nesting at most `max_depth`.
// Nothing may follow a complete value (no trailing whitespace): generation stops when the value completes.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace owl {

class Sampler;
class Tokenizer;

struct JsonLimits {
    int32_t max_depth = 32;  // nested objects/arrays, at most 64
    int32_t max_ws = 16;     // whitespace bytes in a row (room for a newline and pretty-print indentation)
};

// A JSON Schema subset, compiled (python/owl_cpp/json_schema.py fills it): per node the types allowed, an enum
// of literal values, an object's properties and required ones, an array's items. Immutable once built.
struct JsonSchema {
    enum Type : uint8_t { Object = 1, Array = 2, String = 4, Number = 8, Integer = 16, Boolean = 32, Null = 64, Any = 127 };
    static constexpr int kMaxProperties = 64;
    static constexpr int kMaxEnum = 255;
    static constexpr int kMaxDepth = 16;   // nesting a schema-held machine tracks
    struct Node {
        uint8_t types = Any;
        std::vector<std::string> enum_values;  // compact JSON texts, sorted; non-empty: the value is one of them
        std::vector<std::string> keys;         // property names as JSON strings ("\"name\""), sorted; empty: any object
        std::vector<int32_t> key_node;         // each property's schema node
        uint64_t required = 0;                 // bit i: keys[i] must appear
        int32_t items = -1;                    // an array's item schema (-1: any value)
    };
    std::vector<Node> nodes;                   // nodes[0] is the root (an object)
    // Checks indices, sizes and order; throws owl::Error naming what is wrong.
    void validate() const;
};

class JsonMachine {
public:
    // object_only: the top-level value must be an object (OpenAI's json_object); else any JSON value.
    // schema (owned by the caller, outliving the machine and its copies): the value must also match it.
    explicit JsonMachine(bool object_only = true, JsonLimits limits = {}, const JsonSchema* schema = nullptr);
    // Consumes byte b when it keeps the text a prefix of a valid value; returns false (state unspecified,
    // use a copy) when it does not.
    bool push(uint8_t b);
    bool push(const std::string& bytes);
    // The value is complete and nothing may follow (an object, array, string or literal has closed).
    bool done() const { return mode_ == Done; }
    // The text so far is a whole JSON document (also a top-level number that could still grow).
    bool can_end() const;
    // Inside a string with no escape or UTF-8 character pending: every "plain" byte keeps this state.
    bool in_plain_string() const { return mode_ == String && sub_ == 0 && need_ == 0; }
    int32_t depth() const { return depth_; }

private:
    enum Mode : uint8_t { Value, KeyOrClose, Key, Colon, After, String, Number, Literal, Done, EnumLit, KeyLit };
    bool value_start(uint8_t b);
    bool schema_value_start(uint8_t b);
    bool literal_match(uint8_t b);
    bool may_close_object() const;
    bool may_add_key() const;
    const JsonSchema::Node* level_node() const;
    bool whitespace();
    bool end_value();
    bool open(bool object, int16_t node = -1);
    bool close(bool object);

    uint64_t stack_ = 0;      // bit i: level i is an object (1) or an array (0)
    uint8_t mode_ = Value;
    uint8_t sub_ = 0;         // String: 0 plain, 1 after '\', 2..5 hex digits of \u left + 1; Number: NumSub;
                              // Literal: the literal's index
    uint8_t need_ = 0;        // String: UTF-8 continuation bytes left; Literal: bytes matched
    uint8_t lo_ = 0x80, hi_ = 0xBF;   // the next continuation byte's range
    uint8_t depth_ = 0;
    uint8_t ws_ = 0;          // whitespace bytes in a row
    bool key_ = false;        // the string is an object key
    bool array_first_ = false;// Value right after '[': ']' may close it
    bool object_only_;
    uint8_t max_depth_, max_ws_;
    // Schema state: the node of the value about to start (-1: any), each level's node and keys seen, and the
    // candidate range [lit_lo_, lit_hi_) in a sorted enum or key list while matching one (lit_pos_ bytes in).
    const JsonSchema* schema_ = nullptr;
    int16_t cur_node_ = -1;
    uint8_t lit_lo_ = 0, lit_hi_ = 0, lit_pos_ = 0;
    bool int_only_ = false;   // the number being read must be an integer
    int16_t level_node_[JsonSchema::kMaxDepth] = {};
    uint64_t level_seen_[JsonSchema::kMaxDepth] = {};
};

class JsonVocab {
public:
    // bytes[i]: token i's bytes; usable[i]: whether it may appear inside a value at all (not special/control,
    // not empty). Throws owl::Error on a size mismatch.
    JsonVocab(const std::vector<std::string>& bytes, const std::vector<uint8_t>& usable);
    // From a tokenizer: Normal, Byte and Undefined tokens with bytes are usable; control, unknown, unused and
    // user-defined tokens never are.
    static std::shared_ptr<JsonVocab> from_tokenizer(const Tokenizer& tok);
    int32_t size() const { return int32_t(bytes_.size()); }
    const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }
    bool usable(int32_t id) const { return usable_[size_t(id)] != 0; }

private:
    friend class JsonConstraint;
    int32_t build(int32_t* lo, int32_t* hi, size_t depth);
    std::vector<std::string> bytes_;
    std::vector<uint8_t> usable_;
    std::vector<uint8_t> plain_;       // usable and keeps a plain string plain (no '"', '\', control byte,
                                       // only whole UTF-8 characters)
    std::vector<int32_t> not_plain_;   // usable and not plain: tested one by one inside strings
    // The trie, in arrays: node n's edges are edge_[node_edge_[n] .. node_edge_[n+1]), its tokens (those that
    // end there) tok_[node_tok_[n] .. node_tok_[n+1]).
    struct Edge { uint8_t byte; int32_t child; };
    std::vector<Edge> edge_;
    std::vector<int32_t> node_edge_, node_tok_, tok_;
};

class JsonConstraint {
public:
    // eog: the end-of-generation tokens (allowed only once the text is a whole document).
    JsonConstraint(std::shared_ptr<const JsonVocab> vocab, std::vector<int32_t> eog, bool object_only = true,
                   JsonLimits limits = {}, std::shared_ptr<const JsonSchema> schema = nullptr);
    bool allows(int32_t id) const;
    void accept(int32_t id);             // throws owl::Error when the token is not allowed
    bool done() const { return ended_ || machine_.done(); }
    bool can_end() const { return machine_.can_end(); }
    // mask[i] = 1 when token i may come next, for i < n_vocab (tokens past the vocabulary: 0). Returns how many.
    int64_t mask(uint8_t* out, int64_t n_vocab) const;
    // Samples with `sampler` from logits[0..n_vocab); when the pick is not allowed, samples again among the
    // allowed tokens only (the same distribution as masking first, at the price of one check on the fast path).
    // Accepts the token and returns it. Throws owl::Error when no token may continue the value.
    int32_t sample(Sampler& sampler, const float* logits, int64_t n_vocab, const std::vector<int32_t>& history);
    const JsonMachine& machine() const { return machine_; }
    int64_t resamples() const { return resamples_; }   // how often the fast path missed

private:
    bool is_eog(int32_t id) const;
    void walk(int32_t node, const JsonMachine& m, uint8_t* out, int64_t n_vocab) const;
    std::shared_ptr<const JsonVocab> vocab_;
    std::shared_ptr<const JsonSchema> schema_;   // kept alive for the machine
    std::vector<int32_t> eog_;
    JsonMachine machine_;
    bool ended_ = false;
    int64_t resamples_ = 0;
    std::vector<uint8_t> mask_;      // scratch, reused
    std::vector<float> masked_;
};

}  // namespace owl
