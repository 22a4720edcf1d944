"""Decode steps of concurrent generations run in batches (step_batcher.py): the batcher gathers the steps of
every registered generation into one call, never waits long for one that does not come (finished, cancelled,
slow consumer), hands each error to its own caller(s), and leaves the answers exactly as single-user runs give
them (greedy and seeded sampling). The batched path is exercised here through a Python `decode_step` of the
runtime's signature (contexts, tokens) -> logits [N, n_vocab]; without one the batcher evaluates context by
context. Log-probabilities are the log-softmax of the model's logits."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import owl_cpp
from owl_cpp.step_batcher import StepBatcher

PROMPTS = ["Once upon a time", "The capital of France is", "def main():", "In 1492,"]


class FakeContext:
    def __init__(self, fail_on=None):
        self.tokens, self.fail_on, self.busy = [], fail_on, threading.Lock()

    def eval(self, ids, return_logits=False, all_logits=False):
        assert self.busy.acquire(blocking=False), "a context entered twice at once"
        try:
            if ids[0] == self.fail_on:
                raise RuntimeError(f"bad token {ids[0]}")
            self.tokens += ids
            return np.full(4, float(ids[-1])) if return_logits else None
        finally:
            self.busy.release()


def python_decode_step(calls):
    """A decode_step of the runtime's signature, evaluating context by context; records each batch's size."""
    def decode_step(contexts, tokens):
        calls.append(len(contexts))
        return np.stack([c.eval([t], return_logits=True) for c, t in zip(contexts, tokens)])
    return decode_step


def run_generations(batcher, contexts, n_steps, start=0):
    """Generations in threads, each stepping once all of them have registered (as the decode loops of
    concurrent requests do)."""
    ready = threading.Barrier(len(contexts))

    def gen(i):
        batcher.register()
        ready.wait(10)
        try:
            out = []
            for k in range(n_steps):
                out.append(batcher.step(contexts[i], start + 100 * i + k, want_logits=True)[0])
            return out
        finally:
            batcher.unregister()
    with ThreadPoolExecutor(len(contexts)) as ex:
        return list(ex.map(gen, range(len(contexts))))


def test_steps_of_concurrent_generations_run_together():
    calls = []
    batcher = StepBatcher(python_decode_step(calls), timeout=0.05)
    contexts = [FakeContext() for _ in range(4)]
    got = run_generations(batcher, contexts, 20)
    for i, c in enumerate(contexts):                     # each context got its own tokens, in order
        assert c.tokens == [100 * i + k for k in range(20)]
        assert got[i] == [float(100 * i + k) for k in range(20)]   # and its own logits back
    assert batcher.steps == 80 and batcher.active == 0
    assert max(calls) == 4 and batcher.batches < 40, (batcher.batches, calls)


def test_a_generation_alone_runs_its_step_at_once():
    batcher = StepBatcher(python_decode_step([]), timeout=1.0)   # a long wait that must not be waited
    ctx = FakeContext()
    t = time.perf_counter()
    run_generations(batcher, [ctx], 50)
    assert time.perf_counter() - t < 0.5 and batcher.batches == 50


def test_a_generation_that_stops_submitting_stalls_nobody():
    """One registered generation never comes back (a client that stopped reading): the others go on after the
    short wait, and once it unregisters they no longer wait at all."""
    batcher = StepBatcher(python_decode_step([]), timeout=0.002)
    batcher.register()                                            # the silent one
    t = time.perf_counter()
    run_generations(batcher, [FakeContext() for _ in range(3)], 20)
    assert time.perf_counter() - t < 5
    batcher.unregister()
    assert batcher.active == 0


def test_errors_reach_their_callers():
    # context by context: only the failing step's caller hears it
    batcher = StepBatcher(timeout=0.05)
    batcher.decode_step = None
    contexts = [FakeContext(fail_on=105), FakeContext(), FakeContext()]
    results = [None] * 3

    def gen(i):
        batcher.register()
        try:
            for k in range(10):
                batcher.step(contexts[i], 100 * i + k + (100 if i == 0 else 0))
            results[i] = "ok"
        except RuntimeError as e:
            results[i] = str(e)
        finally:
            batcher.unregister()

    threads = [threading.Thread(target=gen, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["bad token 105", "ok", "ok"]

    # one batched call: its failure reaches every caller in that batch, and the batcher goes on working
    def failing(contexts, tokens):
        raise RuntimeError("batched decode failed")
    batcher = StepBatcher(failing, timeout=1.0)
    errors = []

    def one():
        batcher.register()
        try:
            batcher.step(FakeContext(), 1)
        except RuntimeError as e:
            errors.append(str(e))
        finally:
            batcher.unregister()
    threads = [threading.Thread(target=one) for _ in range(2)]
    batcher.register()          # hold the batch until both have submitted
    for t in threads:
        t.start()
    time.sleep(0.05)
    batcher.unregister()
    for t in threads:
        t.join(10)
    assert errors == ["batched decode failed"] * 2


@contextmanager
def all_decoding_together(model, n):
    """The tiny model decodes in microseconds: without this, one generation could finish before the next
    starts. Each generation's decode loop starts once all n have registered."""
    batcher = model._batcher
    ready, register = threading.Barrier(n), batcher.register

    def held():
        register()
        ready.wait(10)
    batcher.register = held
    try:
        yield
    finally:
        del batcher.register


@pytest.fixture(scope="module")
def model(tiny_gguf):
    m = owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=128, threads=1, max_spare_contexts=4)
    m._batcher.decode_step = python_decode_step(calls := [])
    m.batch_calls = calls
    return m


@pytest.mark.parametrize("options", [{}, {"temperature": 0.8, "top_k": 20, "seed": 7}], ids=["greedy", "seeded"])
def test_batched_answers_are_the_single_user_answers(model, tiny_gguf, options):
    alone = owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=128, threads=1)
    alone.batch_decode = False
    want = [alone.generate(p, max_tokens=24, ignore_eos=True, return_info=True, **options)["tokens"] for p in PROMPTS]
    model.batch_calls.clear()
    steps = model._batcher.steps
    with all_decoding_together(model, 4), ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda p: model.generate(p, max_tokens=24, ignore_eos=True, return_info=True,
                                                   **options)["tokens"], PROMPTS))
    assert got == want
    assert model._batcher.steps - steps == 4 * 23 and model._batcher.active == 0
    assert max(model.batch_calls) > 1          # some steps really ran together


def test_a_stream_closed_mid_way_stalls_nobody(model):
    want = [model.generate(p, max_tokens=30, ignore_eos=True) for p in PROMPTS[1:]]
    streams = [model.generate(p, max_tokens=30, ignore_eos=True, stream=True) for p in PROMPTS]
    got = [[] for _ in PROMPTS]
    model.batch_calls.clear()

    def consume(i):
        for k, piece in enumerate(streams[i]):
            got[i].append(piece)
            if i == 0 and k == 3:
                streams[i].close()              # the client went away
                return
    t = time.perf_counter()
    with all_decoding_together(model, 4), ThreadPoolExecutor(4) as ex:
        list(ex.map(consume, range(4)))
    assert time.perf_counter() - t < 30
    assert ["".join(g) for g in got[1:]] == want
    assert max(model.batch_calls) > 1
    assert model._batcher.active == 0


def test_batching_can_be_turned_off(tiny_gguf, monkeypatch):
    monkeypatch.setenv("OWL_BATCH_DECODE", "0")
    m = owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=64, threads=1)
    assert m.batch_decode is False
    m.generate("Hello", max_tokens=5)
    assert m._batcher.steps == 0


def log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - (z.max() + np.log(np.exp(z - z.max()).sum()))


@pytest.mark.parametrize("options", [{}, {"temperature": 1.0, "top_k": 5, "seed": 3}], ids=["greedy", "seeded"])
def test_logprobs_are_the_log_softmax_of_the_models_logits(model, options):
    info = model.generate("The capital of France is", max_tokens=8, ignore_eos=True, return_info=True, logprobs=5,
                          **options)
    ids = model.tokenize("The capital of France is")
    rows = model.logits(ids + info["tokens"])[len(ids) - 1:-1]        # the logits each token was sampled from
    assert len(info["logprobs"]) == len(info["tokens"]) == 8
    for e, tok, z in zip(info["logprobs"], info["tokens"], rows):
        lp = log_softmax(z)
        assert e["id"] == tok
        assert e["logprob"] == pytest.approx(lp[tok], abs=1e-4)
        assert [t for t, _ in e["top"]] == list(np.argsort(-lp, kind="stable")[:5])
        assert [v for _, v in e["top"]] == pytest.approx(sorted(lp, reverse=True)[:5], abs=1e-4)
    assert model.generate("Hi", max_tokens=3, return_info=True).get("logprobs") is None    # off by default
    s = model.generate("Hi", max_tokens=4, ignore_eos=True, stream=True, logprobs=0)
    list(s)
    assert len(s.logprobs) == 4 and all(e["top"] == [] for e in s.logprobs)
    with pytest.raises(ValueError, match="logprobs"):
        model.generate("Hi", max_tokens=3, logprobs=21)
