"""Which context a call runs on (context_pool.py): the free context whose cached prompt the call keeps whole, the
longest reuse first (images compared by content), else the one losing the fewest prompt tokens; ties to the
default then the most recently used; idle spares bounded, the least recently
used dropped; with two conversations taking turns on one model, each follow-up turn reuses its own prefix
(counted in cache_stats()) and answers as the conversation alone does."""
from __future__ import annotations

import numpy as np
import pytest

import owl_cpp
from owl_cpp.context_pool import ContextPool
from owl_cpp.context_slot import ImageAt, PreparedPrompt

A, B = b"a" * 16, b"b" * 16


class FakeContext:
    """Enough of a _core.Context for the pool and prefill: no computation."""
    n_ctx, n_images = 100, 0

    def truncate(self, n):
        pass

    def add_image(self, embeds, start):
        self.n_images += 1

    def eval(self, ids, **kw):
        pass


def pool_with(*caches, max_spare=3):
    """A pool whose default holds caches[0] and whose idle spares hold the others ((prompt tokens, images) each,
    as a prefill leaves them), the last one the most recently used; -> (pool, [default, spares...])."""
    pool = ContextPool(FakeContext, max_spare)
    pool.reserve(len(caches))
    slots = [pool.default] + list(pool._spares)
    for slot, (tokens, images) in zip(slots, caches):
        slot.tokens, slot.images, slot.last_used = list(tokens), list(images), next(pool._clock)
        slot.n_prompt = len(tokens)
    return pool, slots


def chosen(pool, ids, images=()):
    with pool.borrow(prompt=PreparedPrompt(list(ids), [ImageAt(s, k, None) for s, k in images])) as slot:
        return slot


def test_a_call_takes_the_free_context_holding_its_conversation():
    conv_a, conv_b = [1, 2, 3, 4, 5, 6], [1, 2, 9, 9, 9, 9]            # they share two tokens (a system prompt)
    pool, (default, b, empty) = pool_with((conv_a, []), (conv_b, []), ([], []))
    assert chosen(pool, conv_b + [7, 8]) is b
    assert chosen(pool, conv_a + [7]) is default
    # A new conversation: reusing 2 tokens of a would throw away 4 of them; the empty context loses nothing.
    assert chosen(pool, [1, 2, 5, 5]) is empty
    with pool.borrow() as slot:                                         # no prompt (logits): the least to lose
        assert slot is empty


def test_a_follow_up_turn_keeps_its_context_though_the_answer_is_tokenized_anew():
    sys_prompt = [1, 2, 3, 4, 5, 6]                                     # a long system prompt both share
    pool, (default, empty) = pool_with((sys_prompt + [7], []), ([], []))
    default.tokens += [8, 9]                                            # the answer generated after the prompt
    assert chosen(pool, sys_prompt + [7, 8, 10, 11]) is default         # the prompt kept, part of the answer too
    # Another conversation would reuse the system prompt here, but evict this one (which would come back and
    # evict it in turn): it takes the empty context.
    assert chosen(pool, sys_prompt + [12, 13]) is empty


def test_images_are_compared_by_content():
    tokens = [1, 7, 7, 2, 3]                                            # the same ids, another image at 1
    pool, (default, with_b) = pool_with((tokens, [(1, A)]), (tokens, [(1, B)]))
    assert chosen(pool, tokens + [4], [(1, B)]) is with_b
    assert chosen(pool, tokens + [4], [(1, A)]) is default


def test_ties_go_to_the_default_then_the_most_recently_used():
    pool, (default, older, newer) = pool_with(([], []), ([], []), ([], []))
    assert chosen(pool, [1, 2]) is default
    with pool.borrow(prompt=PreparedPrompt([1, 2])) as first:           # holds the default
        assert first is default
        assert chosen(pool, [1, 2]) is newer
        assert chosen(pool, [1, 2]) is newer                            # used last now, still first among equals
    pool, (default, held) = pool_with(([5, 5, 5], []), ([1, 2, 3], []))
    with pool.borrow(prompt=PreparedPrompt([1, 2, 3, 4])) as slot:      # the best one is busy: the next best
        assert slot is held
        assert chosen(pool, [1, 2, 3, 4]) is default
        with pool.borrow(prompt=PreparedPrompt([1, 2, 3, 4])) as d, pool.borrow() as new:
            assert d is default and new is not held and new is not default   # none free: a new context


def test_trimming_keeps_the_most_recently_used_spares():
    pool = ContextPool(FakeContext, max_spare=1)
    with pool.borrow() as d, pool.borrow() as s1, pool.borrow() as s2:   # three calls at once: two spares made
        assert d is pool.default and len({id(d), id(s1), id(s2)}) == 3
        s1.prefill(PreparedPrompt([1, 2, 3]))
    # s2 ended first, then s1: s1's cache is the more recent one, kept; s2 is freed.
    assert pool._spares == [s1] and chosen(pool, [1, 2, 3, 4]) is s1
    pool.reserve(5)                                                     # never more than max_spare
    assert pool.n_spare == 1


def test_prefill_counts_cached_and_evaluated_tokens():
    pool = ContextPool(FakeContext, 1)
    with pool.borrow(prompt=PreparedPrompt([1, 2, 3])) as slot:
        assert slot.prefill(PreparedPrompt([1, 2, 3]))[0] == 3
        assert slot.prefill(PreparedPrompt([1, 2, 3, 4, 5]))[0] == 2
        slot.prefill(PreparedPrompt([1, 2, 3]), reuse=False)
    session = pool.new_slot()                                           # sessions count for their model too
    session.prefill(PreparedPrompt([9, 9]))
    assert (pool.stats.cached, pool.stats.evaluated) == (3, 3 + 2 + 3 + 2)


# ----- a real model: two conversations taking turns ---------------------------------------------------------
N = 5          # tokens per answer: ignore_eos, so each answer has N, and N - 1 of them are cached (the last is
               # sampled, never evaluated)


def follow_up(m, prev_prompt, answer, k):
    return prev_prompt + answer + m.tokenize(f" and then {k}", add_special=False)


def test_two_conversations_taking_turns_reuse_their_own_prefixes(tiny_gguf):
    path = tiny_gguf("qwen2", "q8_0")
    m = owl_cpp.load(path, n_ctx=256, threads=1)
    prompts = [m.tokenize("Once upon a time"), m.tokenize("The capital of France is")]
    # Turn 1: a's answer streams (holding the default context) while b's runs: b gets a second context.
    stream = m.generate(prompts[0], max_tokens=N, ignore_eos=True, stream=True)
    next(stream)
    first_b = m.generate(prompts[1], max_tokens=N, ignore_eos=True, return_info=True)
    "".join(stream)
    answers = [[stream.info["tokens"]], [first_b["tokens"]]]
    assert m._contexts.n_spare == 1
    for k in range(2):                                                  # turns 2 and 3, alternating
        for c in (0, 1):
            prompts[c] = follow_up(m, prompts[c], answers[c][-1], k)
            before = m.cache_stats()
            info = m.generate(prompts[c], max_tokens=N, ignore_eos=True, return_info=True)
            after = m.cache_stats()
            reused = len(prompts[c]) - info["prompt_tokens_evaluated"]
            assert reused == after["prompt_tokens_cached"] - before["prompt_tokens_cached"]
            # all of the previous turn's prompt and answer (but its last token) come from the cache
            assert reused == len(prompts[c]) - len(m.tokenize(f" and then {k}", add_special=False)) - 1
            assert after["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"] == len(prompts[c]) - reused
            answers[c].append(info["tokens"])
    fresh = owl_cpp.load(path, n_ctx=256, threads=1, max_spare_contexts=0)
    for c, start in enumerate(["Once upon a time", "The capital of France is"]):
        ids = fresh.tokenize(start)
        for k, want in enumerate(answers[c]):                           # each conversation alone: the same answers
            got = fresh.generate(ids, max_tokens=N, ignore_eos=True, return_info=True)["tokens"]
            assert got == want
            ids = follow_up(fresh, ids, got, k)


def image(seed):
    return np.random.RandomState(seed).randint(0, 256, (30, 30, 3), dtype=np.uint8)


def test_owl3_conversations_about_two_images_keep_their_contexts(tiny_owl3_model):
    """The same question about two images: the text tokens agree, the images do not; each follow-up turn
    finds the context that holds its image."""
    model_dir = tiny_owl3_model("1b")[1]
    m = owl_cpp.load(model_dir, n_ctx=512, threads=1)
    fresh = owl_cpp.load(model_dir, n_ctx=512, threads=1)
    m.reserve_contexts(2)
    opts = dict(max_tokens=4, cut=False, ignore_eos=True, return_info=True)
    convs = [[{"role": "user", "content": [{"type": "image", "image": image(s)},
                                           {"type": "text", "text": "What is it?"}]}] for s in (50, 51)]
    firsts = [m.chat(messages=conv, **opts) for conv in convs]          # a on the default, b on the spare
    hits = m.cache_stats()["image_cache_hits"]
    for conv, first in zip(convs, firsts):
        conv += [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": "And the colours?"}]
        before = m.cache_stats()["prompt_tokens_cached"]
        info = m.chat(messages=conv, **opts)
        assert m.cache_stats()["prompt_tokens_cached"] - before >= first["prompt_tokens"]   # its image and turn
        assert info["views_reused"] == 1
        assert info["tokens"] == fresh.chat(messages=conv, **opts)["tokens"]
    assert m.cache_stats()["image_cache_hits"] == hits + 2
