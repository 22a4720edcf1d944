// libFuzzer harness: bytes -> GGUF reader -> Model loader -> tokenizer -> a two-token decode. Every input must
// load or throw owl::Error (FormatError is one) whose message is valid UTF-8 (Python cannot raise it otherwise); a
// crash, a sanitizer report, a hang or any other exception is a finding. Built by tests/fuzz/build.sh (clang, ASan + UBSan); the inputs it found live in tests/fuzz/crashes/.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "owl/context.h"
#include "owl/error.h"
#include "owl/gguf.h"
#include "owl/model.h"
#include "unicode.h"

namespace {

// Every value the reader decodes lazily (numeric array elements) is decoded once.
void touch(const owl::GGUFValue& v) {
    for (const auto& item : v.items) touch(item);
    if (v.data)
        for (uint64_t k = 0; k < v.count; ++k) v.element(k);
}

// What the reader promises about an accepted file: each tensor's bytes match its shape and lie inside the input
// (or in the reader's aligned copy, for a file whose alignment is below the kernels' needs).
void check_tensors(const owl::GGUFFile& f, const uint8_t* data, size_t size) {
    for (const auto& t : f.tensors()) {
        const uint64_t want = uint64_t(t.n_elements()) / owl::dtype_block_elems(t.type) * owl::dtype_block_bytes(t.type);
        const bool inside = t.data >= data && t.nbytes <= size && size_t(t.data - data) <= size - t.nbytes;
        const bool copied = reinterpret_cast<uintptr_t>(t.data) % 32 == 0;
        if (t.nbytes != want || !(inside || copied)) __builtin_trap();
    }
}

void run(const uint8_t* data, size_t size) {
    auto file = owl::GGUFFile::from_buffer(data, size, "fuzz input");
    for (const auto& kv : file->metadata()) touch(kv.second);
    check_tensors(*file, data, size);
    auto model = owl::Model::load(std::move(file));

    // Plain text, a control token's likely text, invalid UTF-8 and a byte-fallback character.
    const owl::Tokenizer& tok = model->tokenizer();
    const std::string text = "Hello wörld <s></s><|im_start|> ab\xff\xfe 日本\n\t  a";
    std::vector<int32_t> ids = tok.encode(text, true, true);
    tok.decode(ids, true);
    // The input's last bytes as text too: arbitrary bytes through the pre-tokenizer and the merges.
    const size_t tail = std::min<size_t>(size, 64);
    tok.decode(tok.encode(std::string_view(reinterpret_cast<const char*>(data + size - tail), tail), false, false), false);
    owl::StreamDecoder stream(tok);
    for (int32_t id : ids) stream.push(id);
    stream.flush();

    owl::ContextParams params;
    params.n_ctx = 4;
    params.n_batch = 2;
    params.kv_type = owl::DType::F32;
    owl::Context ctx(model, params);
    ids.resize(std::min<size_t>(ids.size(), 2));
    if (!ids.empty()) ctx.eval(ids, true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        run(data, size);
    } catch (const owl::Error& e) {
        const std::string what = e.what();
        if (owl::unicode::sanitize_utf8(what) != what) __builtin_trap();
    }
    return 0;
}
