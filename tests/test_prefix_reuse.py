"""What a context keeps between calls: the longest common prefix of tokens, cut at the first image that
differs by content (all placeholders have the same ids); and the image-embedding cache (content keys,
memory bound, hit/miss counts)."""
from __future__ import annotations

import numpy as np
import pytest

import owl_cpp
from owl_cpp.image_cache import ImageEmbeddingCache, content_key
from owl_cpp.prefix_reuse import reusable_prefix

A, B = b"a" * 16, b"b" * 16


@pytest.mark.parametrize("cached_ids, cached_images, ids, images, want", [
    ([1, 2, 3, 4], [], [1, 2, 3, 4, 5], [], 4),                       # text: all of it
    ([1, 2, 3, 4], [], [1, 2, 9, 4], [], 2),                          # up to the first different token
    ([1, 2, 7, 7, 3], [(2, A)], [1, 2, 7, 7, 3, 5], [(2, A)], 5),     # the same image: kept
    ([1, 2, 7, 7, 3], [(2, A)], [1, 2, 7, 7, 3, 5], [(2, B)], 2),     # same ids, another image: from its start
    ([1, 2, 7, 7, 3], [(2, A)], [1, 2, 7, 7, 3], [], 2),              # the image is gone
    ([1, 2, 3], [], [1, 2, 3, 7, 7], [(3, A)], 3),                    # a new image after the cached text
    ([1, 7, 7, 2, 7, 7], [(1, A), (4, B)], [1, 7, 7, 2, 7, 7, 9], [(1, A), (4, A)], 4),
])
def test_reusable_prefix(cached_ids, cached_images, ids, images, want):
    assert reusable_prefix(cached_ids, cached_images, ids, images) == want


def test_same_text_with_another_image_is_recomputed_from_the_image(tiny_owl3_model):
    m = owl_cpp.load(tiny_owl3_model("1b")[1], n_ctx=256, threads=2)
    fresh = owl_cpp.load(tiny_owl3_model("1b")[1], n_ctx=256, threads=2)
    a, b = (np.random.RandomState(s).randint(0, 256, (30, 30, 3), dtype=np.uint8) for s in (40, 41))
    first = m.chat(a, "What is it?", max_tokens=6, cut=False, return_info=True, ignore_eos=True)
    start = m.logits("What is it?", images=[a], cut=False).image_starts[0]
    m.chat(a, "What is it?", max_tokens=6, cut=False, ignore_eos=True)                # the cache holds image a
    second = m.chat(b, "What is it?", max_tokens=6, cut=False, return_info=True, ignore_eos=True)
    assert second["prompt_tokens"] == first["prompt_tokens"]                          # the very same ids
    assert second["prompt_tokens_evaluated"] == second["prompt_tokens"] - start       # from the image on
    assert second["tokens"] == fresh.chat(b, "What is it?", max_tokens=6, cut=False, return_info=True,
                                          ignore_eos=True)["tokens"]
    again = m.chat(b, "What is it?", max_tokens=6, cut=False, return_info=True, ignore_eos=True)
    assert again["prompt_tokens_evaluated"] == 1 and again["tokens"] == second["tokens"]


def test_image_cache_counts_and_bounds_its_memory():
    emb = [np.full((4, 8), i, np.float32) for i in range(4)]             # 128 bytes each
    keys = [content_key(np.full((3, 2, 2), i, np.float32)) for i in range(4)]
    assert content_key(np.zeros((3, 2, 2), np.float32)) != content_key(np.zeros((3, 4, 1), np.float32))
    c = ImageEmbeddingCache(max_bytes=3 * 128)
    assert c.get(keys[0]) is None and (c.hits, c.misses) == (0, 1)
    for k, e in zip(keys[:3], emb[:3]):
        c.put(k, e)
    assert c.get(keys[0]) is emb[0] and (c.hits, c.misses) == (1, 1)     # keys[0] is now the most recent
    c.put(keys[3], emb[3])                                               # over the budget: the oldest goes
    assert keys[1] not in c and all(k in c for k in (keys[0], keys[2], keys[3]))
    assert len(c) == 3 and c.nbytes == 3 * 128
    c.put(b"big", np.zeros(1000, np.float32))                            # larger than the whole budget
    assert b"big" not in c and len(c) == 3
    with pytest.raises(ValueError):
        emb[0][0, 0] = 1                                                 # cached embeddings are read-only
    c.clear()
    assert len(c) == 0 and c.nbytes == 0
