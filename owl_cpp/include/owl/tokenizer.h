// Tokenizers built from GGUF `tokenizer.ggml.*` metadata:
//   model "gpt2"  -> byte-level BPE (Qwen2: NFC, Qwen2 pre-tokenizer regex, special tokens matched first, no BOS)
//   model "llama" -> SentencePiece-style BPE over scores with byte fallback (<0xXX> tokens)
//   model "bert"  -> WordPiece as BERT's uncased BasicTokenizer + WordPiece (lowercase, strip accents,
//                    "##" continuations, [UNK] required); decode = the slow BertTokenizer's (tokenizer_wpm.cpp)
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace owl {

// ggml / llama.cpp token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
};

// Everything a tokenizer is built from; mirrors the GGUF keys one to one.
struct VocabData {
    std::string model;                 // tokenizer.ggml.model: "gpt2" | "llama" | "bert"
    std::string pre;                   // tokenizer.ggml.pre: "qwen2", "default", ... (gpt2 only)
    std::vector<std::string> tokens;   // tokenizer.ggml.tokens
    std::vector<float> scores;         // tokenizer.ggml.scores (may be empty for gpt2)
    std::vector<int32_t> types;        // tokenizer.ggml.token_type (empty -> all Normal)
    std::vector<std::string> merges;   // tokenizer.ggml.merges, "left right" (gpt2 only)
    int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
    bool add_bos = false;              // tokenizer.ggml.add_bos_token
    bool add_eos = false;              // tokenizer.ggml.add_eos_token
    bool add_space_prefix = true;      // tokenizer.ggml.add_space_prefix (llama only)
};

// Immutable once built: encode/decode may run concurrently from several threads.
class Tokenizer {
public:
    // Validates the vocabulary (throws owl::FormatError naming what is wrong) and builds the tokenizer.
    static std::unique_ptr<Tokenizer> create(const VocabData& vocab);
    virtual ~Tokenizer() = default;

    // add_special: prepend BOS / append EOS as the vocabulary asks.
    // parse_special: match control token texts (e.g. "<|im_start|>") in `text` as single tokens.
    // User-defined tokens are always matched (as HF `tokenizers`, sentencepiece and llama.cpp do).
    // Invalid UTF-8 in `text` is kept byte for byte (see unicode.h), never rejected.
    virtual std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const = 0;

    // The raw bytes a token stands for (byte-level decoding / "▁" -> " " / <0xXX> -> byte; "bert": what the
    // token adds after another token: " word", "##piece" -> "piece", "." "," "?" "!" without the space).
    // Control, Unknown and Unused tokens give their text only when `render_special`; otherwise "".
    // Throws std::out_of_range for an id outside [0, n_vocab()).
    virtual std::string token_to_bytes(int32_t id, bool render_special) const = 0;

    // Concatenated bytes of the ids (may be invalid UTF-8 only if the ids are); for "llama" models with
    // add_space_prefix the leading space added by the dummy prefix is removed, as sentencepiece does
    // (from the first non-byte token, if nothing was output before it). Throws std::out_of_range.
    // "bert": the slow BertTokenizer's decode (tokens joined by spaces, " ##" glued, stripped, transformers'
    // clean_up_tokenization); hidden tokens (those token_to_bytes renders as "") are left out first.
    virtual std::string decode(const std::vector<int32_t>& ids, bool render_special) const;

    // True when a token's text depends on the tokens after it ("bert": " ' " -> "'"), so streaming cannot
    // append token_to_bytes piece by piece; StreamDecoder then uses decode_partial.
    virtual bool contextual_decode() const { return false; }
    // decode(ids) and, in `stable`, the length of its prefix that no ids appended later can change.
    virtual std::string decode_partial(const std::vector<int32_t>& ids, bool render_special, size_t& stable) const;

    virtual int32_t n_vocab() const = 0;
    virtual const VocabData& vocab() const = 0;
    bool is_control(int32_t id) const;  // control token (BOS/EOS/<|im_end|>...); throws std::out_of_range
    TokenType token_type(int32_t id) const;  // throws std::out_of_range
};

// Streaming detokenizer: feeds token ids, returns only complete UTF-8 characters, holding back a
// character split across tokens until its last byte arrives.
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer& tok, bool render_special = false);
    std::string push(int32_t id);
    std::string flush();  // whatever is held back (invalid bytes become U+FFFD)
private:
    const Tokenizer& tok_;  // must outlive the decoder
    bool render_special_;
    bool first_ = true;     // still at the start: the dummy-prefix space may need removing
    std::string pending_;   // bytes of an unfinished UTF-8 character
    // contextual_decode() tokenizers: every id so far and how many bytes of their decode went out.
    std::vector<int32_t> ids_;
    size_t emitted_ = 0;
    std::string take_complete();  // the complete UTF-8 characters at the front of pending_
};

}  // namespace owl
