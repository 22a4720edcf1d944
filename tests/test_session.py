"""Long sessions: a conversation that outgrows the context keeps answering (overflow="shift" drops the oldest
whole turns, each answer that of a fresh prompt of the kept turns) or says why it cannot (overflow="error");
a turn costs its own tokens however many came before, and the kept history stays bounded."""
from __future__ import annotations

import time

import numpy as np
import pytest

import owl_cpp
from owl_cpp.context_slot import PreparedPrompt

N_CTX = 256


@pytest.fixture(scope="module")
def text(tiny_gguf):
    m = owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=N_CTX, threads=1)
    m.chat_template = None      # ChatML sessions here; sessions over a file's template: test_chat_template.py
    return m


def test_text_session_runs_past_the_context(text):
    s = text.session(system="Be brief.")
    shifts, total = 0, 0
    for i in range(60):
        dropped, n_past = s.turns_dropped, s.n_past
        info = s.ask(f"Question number {i}: what comes next?", max_tokens=8, ignore_eos=True, return_info=True)
        total += info["completion_tokens"]
        assert info["prompt_tokens"] + info["completion_tokens"] <= N_CTX and info["completion_tokens"] == 8
        # the answer is that of a fresh context given the kept turns and the question
        prompt = text._chat_ids(s.messages[:-1])
        fresh = text._run(PreparedPrompt(prompt), max_tokens=8, ignore_eos=True, return_info=True)
        assert info["prompt_tokens"] == len(prompt) and info["tokens"] == fresh["tokens"]
        if s.turns_dropped > dropped:
            shifts += 1
            assert s.messages[0] == {"role": "system", "content": "Be brief."}
            assert info["prompt_tokens"] <= N_CTX // 2 + 30        # shifted down to about half the context
        else:
            assert info["prompt_tokens_evaluated"] == info["prompt_tokens"] - n_past        # only the new turn
    assert shifts >= 3 and total > 1.5 * N_CTX
    assert [m["role"] for m in s.history[:3]] == ["system", "user", "assistant"]


def test_text_session_overflow_error(text):
    s = text.session(overflow="error")
    with pytest.raises(ValueError, match="leave no room for an answer.*reset"):
        for i in range(100):
            s.ask(f"Question number {i}: what comes next?", max_tokens=8, ignore_eos=True)
    n = len(s.history)
    assert 2 < n < 100 and s.history[-1]["role"] == "assistant"     # the failed turn is not kept
    s.reset()
    assert s.ask("Hello", max_tokens=4, ignore_eos=True) and len(s.history) == 2
    with pytest.raises(ValueError, match="overflow must be"):
        text.session(overflow="drop")


def test_a_question_too_long_for_the_context(text):
    for overflow in ("shift", "error"):
        s = text.session(system="Be brief.", overflow=overflow)
        s.ask("Hi", max_tokens=4)
        with pytest.raises(ValueError, match=r"question \(\d+ tokens\) and the system prompt \(\d+\) leave no room.*larger n_ctx"):
            s.ask("word " * N_CTX, max_tokens=4)
        assert len(s.history) == 3 and s.ask("Hi again", max_tokens=4) is not None


def test_text_chat_is_a_one_turn_session(text, tiny_gguf):
    s = text.session()
    a = s.ask("Hello there", max_tokens=6, ignore_eos=True)
    assert text.chat("Hello there", max_tokens=6, ignore_eos=True) == a
    assert text.chat(messages=[{"role": "user", "content": "Hello there"}], max_tokens=6, ignore_eos=True) == a
    with pytest.raises(ValueError, match="no images"):
        s.ask("What is it?", images=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(TypeError, match=r"chat\(\) or generate"):
        owl_cpp.chat(None, "Hello there", model=text)
    stream = s.ask("And then?", max_tokens=6, ignore_eos=True, stream=True)
    said = next(stream)
    stream.close()                                           # what was said counts as the answer
    assert s.history[-1] == {"role": "assistant", "content": said} and len(s.history) == 4
    llama = owl_cpp.load(tiny_gguf("llama", "f32"), n_ctx=64, threads=1)
    with pytest.raises(ValueError, match="ChatML"):
        llama.session()


def turn_times(ask, n):
    """CPU time of each turn: other jobs on the machine do not count (the runtime's threads do)."""
    out = []
    for i in range(n):
        t0 = time.process_time()
        ask(i)
        out.append(time.process_time() - t0)
    return out


def test_a_thousand_turns_cost_as_the_first(text, monkeypatch):
    s = text.session(system="Be brief.")
    sizes, tokenized = [], []
    tokenize = text.tokenize
    monkeypatch.setattr(text, "tokenize", lambda t, *a, **k: tokenized.append(len(t)) or tokenize(t, *a, **k))

    def ask(i):
        tokenized.clear()
        s.ask(f"Q{i % 10}?", max_tokens=4, ignore_eos=True)
        sizes.append((len(s.messages), sum(len(t.ids) for t in s._turns), sum(tokenized)))

    times = turn_times(ask, 1000)
    first, last = sum(times[:100]), sum(times[-100:])
    assert last < 1.5 * first + 0.01, (first, last)
    assert s.turns_dropped > 900
    assert {c for _, _, c in sizes} == {sizes[0][2]}       # each turn tokenizes its question only, not the history
    assert max(m for m, _, _ in sizes[100:]) <= max(m for m, _, _ in sizes[:100])   # the kept history is bounded
    assert max(n for _, n, _ in sizes) <= N_CTX


@pytest.fixture(scope="module")
def owl(tiny_owl3_model):
    return owl_cpp.load(tiny_owl3_model("1b")[1], n_ctx=512, threads=1)


def image(seed):
    return np.random.RandomState(seed).randint(0, 256, (40, 50, 3), dtype=np.uint8)


def test_owl_session_with_images_runs_past_the_context(owl):
    s = owl.session()
    images = [image(i % 3) if i % 4 == 0 else None for i in range(60)]
    for i, img in enumerate(images):
        info = s.ask(f"Turn {i}?", images=img, max_tokens=4, cut=False, return_info=True)
        kept = len(s.messages) // 2
        media = [m for m in images[i + 1 - kept:i + 1] if m is not None]
        assert info["images"] == len(media) == s._slot.ctx.n_images     # dropped turns' images are gone
        fresh = owl._answer(s.messages[:-1], owl._expand(media, False), max_tokens=4, return_info=True)
        assert info["tokens"] == fresh["tokens"] and info["prompt_tokens"] == fresh["prompt_tokens"]
    assert s.turns_dropped > 30


def test_owl_thousand_turns_with_images(owl):
    s = owl.session(system="Be brief.")
    sizes = []

    def ask(i):
        s.ask(f"Turn {i}?", images=image(i % 3) if i % 4 == 0 else None, max_tokens=4, cut=False)
        sizes.append((len(s.messages), s._slot.ctx.n_images))

    times = turn_times(ask, 1000)
    first, last = sum(times[:100]), sum(times[-100:])
    assert last < 1.5 * first + 0.01, (first, last)
    assert max(m for m, _ in sizes[100:]) <= max(m for m, _ in sizes[:100])
    assert max(n for _, n in sizes) <= 6
    with pytest.raises(ValueError, match="leave no room for an answer"):
        s2 = owl.session(overflow="error")
        for i in range(100):
            s2.ask(f"Turn {i}?", images=image(i % 3), max_tokens=4, cut=False)
