// GGUF tokenizer.ggml.* keys -> VocabData -> Tokenizer.
#include "owl/error.h"
#include "owl/model.h"
#include "pretokenize.h"

namespace owl {

std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GGUFFile& f) {
    VocabData v;
    v.model = f.get_string("tokenizer.ggml.model");
    v.pre = f.get_string("tokenizer.ggml.pre", "default");
    v.tokens = f.get_string_array("tokenizer.ggml.tokens");
    if (f.has("tokenizer.ggml.scores")) v.scores = f.get_float_array("tokenizer.ggml.scores");
    if (f.has("tokenizer.ggml.token_type")) {
        for (int64_t t : f.get_int_array("tokenizer.ggml.token_type")) {
            // Narrowed only when it fits: 2^32 + 1 must not pass the type check as 1.
            if (t != int32_t(t))
                throw FormatError("GGUF '" + f.path() + "': tokenizer.ggml.token_type[" + std::to_string(v.types.size()) + "] = " +
                                  std::to_string(t) + " is not a valid token type (0..6)");
            v.types.push_back(int32_t(t));
        }
    }
    if (f.has("tokenizer.ggml.merges")) v.merges = f.get_string_array("tokenizer.ggml.merges");
    auto id = [&](const char* key) -> int32_t {
        if (!f.has(key)) return -1;
        const uint64_t value = f.get_uint(key);
        if (value >= v.tokens.size()) throw FormatError("GGUF '" + f.path() + "': " + key + " = " + std::to_string(value) + " is not a token id");
        return int32_t(value);
    };
    v.bos_id = id("tokenizer.ggml.bos_token_id");
    v.eos_id = id("tokenizer.ggml.eos_token_id");
    v.unk_id = id("tokenizer.ggml.unknown_token_id");
    v.pad_id = id("tokenizer.ggml.padding_token_id");
    const bool spm = v.model == "llama";
    // Absent key: sentencepiece adds BOS, BERT starts every sequence with [CLS], and so do the Llama 3 and
    // Tekken BPE vocabularies (llama.cpp's defaults).
    const detail::PreTokenizer* pre = v.model == "gpt2" ? detail::find_pre_tokenizer(v.pre) : nullptr;
    const bool bpe_bos = pre && pre->add_bos && v.bos_id >= 0;
    v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", spm || (v.model == "bert" && v.bos_id >= 0) || bpe_bos);
    v.add_eos = f.get_bool("tokenizer.ggml.add_eos_token", false);
    v.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", spm);
    try {
        return Tokenizer::create(v);
    } catch (const FormatError& e) {
        throw FormatError("GGUF '" + f.path() + "': " + e.what());
    }
}

}  // namespace owl
