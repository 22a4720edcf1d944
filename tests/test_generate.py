"""TextModel.generate: streaming, stop strings, limits, seeds, prefix reuse of the KV cache."""
import numpy as np
import pytest

import owl_cpp

PROMPT = "Once upon a time, 在一个小村庄里"


@pytest.fixture(scope="module")
def model(tiny_gguf):
    return owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=256, threads=2)


def test_stream_pieces_concatenate_to_the_text(model):
    text = model.generate(PROMPT, max_tokens=24)
    pieces = list(model.generate(PROMPT, max_tokens=24, stream=True))
    assert "".join(pieces) == text
    assert all(isinstance(p, str) for p in pieces)


def test_info_counts_and_timings(model):
    info = model.generate(PROMPT, max_tokens=10, return_info=True)
    assert info["prompt_tokens"] == len(model.tokenize(PROMPT))
    assert info["completion_tokens"] == len(info["tokens"]) <= 10
    assert info["finish_reason"] == ("length" if len(info["tokens"]) == 10 else "stop")
    assert info["timings"]["prefill_s"] > 0 and info["text"] == model.detokenize(info["tokens"])


def test_stop_string_truncates(model):
    text = model.generate(PROMPT, max_tokens=24)
    assert len(text) > 4
    stop = text[2:4]
    out = model.generate(PROMPT, max_tokens=24, stop=[stop], return_info=True)
    assert out["text"] == text[: text.find(stop)] and out["finish_reason"] == "stop"
    assert "".join(model.generate(PROMPT, max_tokens=24, stop=stop, stream=True)) == out["text"]


def test_seeded_sampling_is_reproducible(model):
    kw = dict(max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = model.generate(PROMPT, seed=5, **kw)
    assert a == model.generate(PROMPT, seed=5, **kw)
    assert any(model.generate(PROMPT, seed=s, **kw) != a for s in range(6, 10))


def test_max_tokens_zero_and_bad_arguments(model):
    assert model.generate(PROMPT, max_tokens=0) == ""
    with pytest.raises(ValueError):
        model.generate("", max_tokens=4)
    with pytest.raises(ValueError):
        model.generate(PROMPT, max_tokens=-1)
    with pytest.raises(ValueError):
        model.generate(PROMPT, temperature=-0.5)


def test_prompt_longer_than_context_is_a_clear_error(tiny_gguf):
    small = owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=8, threads=1)
    with pytest.raises(ValueError, match="exceeds the context"):
        small.generate("word " * 50, max_tokens=4)
    with pytest.raises(ValueError, match="context"):
        small.logits(list(range(20)))
    # Generation that runs into the end of the context stops cleanly.
    ids = small.tokenize("hello there")[:6]
    info = small.generate(ids, max_tokens=50, return_info=True, ignore_eos=True)
    assert info["finish_reason"] == "context" and len(ids) + info["completion_tokens"] == 8


def test_out_of_range_token_ids(model):
    with pytest.raises(owl_cpp.OwlError, match="outside the vocabulary"):
        model.logits([0, model.n_vocab])


def test_prefix_reuse_gives_the_same_logits_as_a_fresh_cache(model, tiny_gguf):
    from owl_cpp.context_slot import PreparedPrompt

    ids = model.tokenize(PROMPT)
    info = model.generate(ids, max_tokens=4, return_info=True, ignore_eos=True)
    assert info["prompt_tokens_evaluated"] >= 1
    with model._contexts.borrow(wait=True) as slot:     # the default context: ids + 3 generated tokens cached
        assert slot.tokens == ids + info["tokens"][:3]
        n, _ = slot.prefill(PreparedPrompt(ids + ids[:3]))   # shares the prompt: only 3 tokens recomputed
        assert n == 3 and slot.ctx.n_past == len(ids) + 3
        reused = slot.ctx.eval([ids[3]])
    again = model.generate(ids, max_tokens=2, return_info=True)
    assert again["prompt_tokens_evaluated"] == 1                        # all but the last prompt token reused
    fresh = owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=256, threads=2)
    want = fresh.logits(ids + ids[:4])[-1]
    np.testing.assert_allclose(reused, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_system_info_and_device(tiny_gguf):
    info = owl_cpp.system_info()
    assert info["default_threads"] >= 1 and "kernels" in info
    with pytest.raises(ValueError, match="device"):
        owl_cpp.load(tiny_gguf("qwen2", "q8_0"), device="tpu")
