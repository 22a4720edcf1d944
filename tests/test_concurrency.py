"""One model, many contexts: calls from several threads run at once on contexts of their own and answer as
sequential calls do; a context never runs in two threads at once; sessions are independent; idle contexts
are bounded. Contexts here are instrumented: each eval waits at a barrier until every thread of the test is
inside one, so the threads really overlap, and a context entered twice at once fails the test."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import owl_cpp
from owl_cpp import _core
from owl_cpp.context_pool import ContextPool

PROMPTS = ["Once upon a time", "The capital of France is", "def main():", "In 1492,"]


class GuardedContext(_core.Context):
    """A _core.Context that records being entered by two threads at once, and can hold each thread's first
    eval at a barrier."""
    barrier = None
    errors: list = []
    _first = threading.local()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._busy = threading.Lock()

    def _enter(self):
        if not self._busy.acquire(blocking=False):
            GuardedContext.errors.append("a context was used from two threads at once")
            raise AssertionError("a context was used from two threads at once")

    def eval(self, *args, **kwargs):
        self._enter()
        try:
            if GuardedContext.barrier is not None and not getattr(self._first, "met", False):
                self._first.met = True
                GuardedContext.barrier.wait(timeout=30)
            return super().eval(*args, **kwargs)
        finally:
            self._busy.release()

    def add_image(self, *args, **kwargs):
        self._enter()
        try:
            return super().add_image(*args, **kwargs)
        finally:
            self._busy.release()

    def truncate(self, *args, **kwargs):
        self._enter()
        try:
            return super().truncate(*args, **kwargs)
        finally:
            self._busy.release()


def guard(model):
    def make():
        return GuardedContext(model._model, *model._context_args, **model._context_kwargs)
    model._make_context = make
    model._contexts = ContextPool(make, model._contexts.max_spare)
    return model


def in_threads(n, fn, args):
    """fn over args in n threads, each thread's first eval held until all n are inside one."""
    GuardedContext.barrier, GuardedContext.errors = threading.Barrier(n), []
    GuardedContext._first = threading.local()
    try:
        with ThreadPoolExecutor(n) as ex:
            out = list(ex.map(fn, args))
    finally:
        GuardedContext.barrier = None
    assert GuardedContext.errors == []
    return out


@pytest.fixture(scope="module")
def text_model(tiny_gguf):
    return guard(owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=256, threads=1))


def test_text_generate_in_threads_equals_sequential(text_model):
    m = text_model
    want = [m.generate(p, max_tokens=12, ignore_eos=True) for p in PROMPTS]
    got = in_threads(4, lambda p: m.generate(p, max_tokens=12, ignore_eos=True), PROMPTS)
    assert got == want
    assert m._contexts.n_spare <= m._contexts.max_spare == 1          # idle contexts are bounded
    scores = in_threads(2, lambda p: m.score(p, [" yes", " no"])[0].logprob, PROMPTS[:2])
    assert scores == [m.score(p, [" yes", " no"])[0].logprob for p in PROMPTS[:2]]


def mixed_requests(m, k, n):
    """n greedy requests of thread k on the shared model: generate, chat, and turns of a session of its own
    (n_ctx 256: its history outgrows the context, so it shifts too)."""
    s, out = m.session(system="Be brief."), []
    for i in range(n):
        j, kind = k * n + i, i % 3
        if kind == 0:
            out.append(m.generate(f"{PROMPTS[j % 4]} {j}", max_tokens=6, ignore_eos=True))
        elif kind == 1:
            out.append(m.chat(f"Question {j}?", max_tokens=6, ignore_eos=True))
        else:
            out.append(s.ask(f"Turn {j}?", max_tokens=6, ignore_eos=True))
    assert s.turns_dropped > 0 or n < 100
    return out


def test_a_thousand_requests_in_two_threads_equal_one_thread(text_model):
    m = text_model
    want = [mixed_requests(m, k, 500) for k in range(2)]
    assert in_threads(2, lambda k: mixed_requests(m, k, 500), range(2)) == want


def test_an_unfinished_stream_holds_its_context_only(text_model):
    m = text_model
    want = m.generate(PROMPTS[0], max_tokens=12, ignore_eos=True)
    stream = m.generate(PROMPTS[1], max_tokens=12, ignore_eos=True, stream=True)
    first = next(stream)                                     # holds the default context
    assert m._contexts.default.busy
    assert m.generate(PROMPTS[0], max_tokens=12, ignore_eos=True) == want      # runs on a spare
    with pytest.raises(owl_cpp.BusyError, match="unfinished stream"):
        m.eval([1, 2])                                       # the default context, held by this thread
    rest = "".join(stream)
    assert first + rest == m.generate(PROMPTS[1], max_tokens=12, ignore_eos=True)
    assert not m._contexts.default.busy


@pytest.fixture(scope="module")
def owl(tiny_owl3_model):
    return guard(owl_cpp.load(tiny_owl3_model("1b")[1], n_ctx=512, threads=1))


def image(seed):
    return np.random.RandomState(seed).randint(0, 256, (40, 50, 3), dtype=np.uint8)


def test_owl_chat_in_threads_equals_sequential(owl):
    jobs = [(image(20), "What is it?"), (image(21), "Describe it."), (image(22), "Colours?")]
    want = [owl.chat(i, p, max_tokens=8, return_info=True)["tokens"] for i, p in jobs]
    got = in_threads(3, lambda j: owl.chat(j[0], j[1], max_tokens=8, return_info=True)["tokens"], jobs)
    assert got == want


def test_sessions_in_threads(owl):
    turns = [[(image(23), "What is it?"), (None, "And the colours?")], [(image(24), "Describe it."), (None, "Why?")]]

    def talk(conversation):
        s = owl.session()
        return [s.ask(q, images=[i] if i is not None else None, max_tokens=5) for i, q in conversation]

    want = [talk(t) for t in turns]
    assert in_threads(2, talk, turns) == want


def test_a_session_answers_one_question_at_a_time(owl):
    s = owl.session()
    stream = s.ask("Hello", images=[image(25)], stream=True, max_tokens=6, ignore_eos=True)
    next(stream)
    with pytest.raises(owl_cpp.BusyError, match="still answering"):
        s.ask("And?", max_tokens=2)
    with pytest.raises(owl_cpp.BusyError):
        s.reset()
    stream.close()                                           # what was said counts as the answer
    assert [m["role"] for m in s.history] == ["user", "assistant"]
    s.reset()
    assert s.n_past == 0 and s.history == []
