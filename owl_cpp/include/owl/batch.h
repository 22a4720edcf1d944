// What a context evaluates: token ids or embeddings, with their positions and a per-token modality.
#pragma once
#include <cstdint>

namespace owl {

// Which weight set a token takes in architectures that have more than one (mPLUG-Owl2's modality-adaptive
// module: image tokens use their own norms and K/V projections). Text-only architectures ignore it.
enum class Modality : uint8_t { Text = 0, Image = 1 };

// A non-owning view of n tokens: exactly one of `ids` ([n]) and `embeds` ([n][n_embd], e.g. visual tokens
// spliced into the sequence) is set. `pos` gives each token's rotary position (nullptr: n_past + i; the cache
// slot is always n_past + i). `modality` gives each token's weight set (nullptr: all text); a batch that mixes
// modalities is evaluated in pieces split at the boundaries, so each piece uses one weight set.
struct Batch {
    int64_t n = 0;
    const int32_t* ids = nullptr;
    const float* embeds = nullptr;
    const int32_t* pos = nullptr;
    const Modality* modality = nullptr;

    static Batch of_ids(const int32_t* ids, int64_t n) { Batch b; b.ids = ids; b.n = n; return b; }
    static Batch of_embeds(const float* embeds, int64_t n) { Batch b; b.embeds = embeds; b.n = n; return b; }
};

}  // namespace owl
