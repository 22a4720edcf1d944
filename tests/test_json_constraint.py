"""The token-level JSON constraint (_core.JsonConstraint): its mask equals testing every token's bytes with the
automaton, special tokens never pass, end-of-generation only once the object is whole, sampling only ever picks
allowed tokens; and the mask's cost on a 150k-token vocabulary."""
import json
import random
import time

import numpy as np
import pytest

from owl_cpp import _core

EOG = 1


def small_vocab():
    """Every single byte, JSON-ish multi-byte pieces, UTF-8 split across tokens, a control token and an EOG."""
    toks = [b"<|ctl|>", b"<|end|>"] + [bytes([b]) for b in range(256)]
    toks += [b'{"', b'":', b'",', b'", "', b'"}', b' "', b'true', b'false', b'null', b'12', b'.5', b'e+', b'\\u',
             b'00e9', b'\\n', b'\xe6\x97', b'\xa5', '日本'.encode(), ' é'.encode(), b'}}', b']}', b'[{', b', ',
             b'\n  ', b'"a"', b'name', b' the', b'-0', b'\xff\xfe', b'', b'"\x01']
    usable = [False, False] + [True] * (len(toks) - 2)
    return toks, usable


def reference_mask(c_machine_bytes, toks, usable, eog_ok):
    """Token i may come next iff the automaton (fed the text so far) takes all its bytes."""
    out = np.zeros(len(toks), bool)
    for i, t in enumerate(toks):
        if i == EOG:
            out[i] = eog_ok
        elif usable[i] and t:
            m = _core.JsonMachine(True)
            assert m.feed(c_machine_bytes) == len(c_machine_bytes)
            out[i] = m.feed(t) == len(t)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_mask_equals_testing_every_token_and_random_walks_end_in_json(seed):
    toks, usable = small_vocab()
    vocab = _core.JsonVocab(toks, usable)
    rng = random.Random(seed)
    c = _core.JsonConstraint(vocab, [EOG])
    text = b""
    for step in range(400):
        mask = c.mask(len(toks))
        m = _core.JsonMachine(True)
        m.feed(text)
        ref = reference_mask(text, toks, usable, m.can_end)
        assert (mask == ref).all(), (text, np.flatnonzero(mask != ref))
        assert all(c.allows(i) == bool(mask[i]) for i in range(len(toks)))
        assert not mask[0] and not mask[toks.index(b"")]            # control and empty tokens: never
        allowed = np.flatnonzero(mask)
        assert len(allowed) > 0
        # Close the value eventually: later steps prefer closing bytes.
        closing = [i for i in allowed if toks[i] in (b'"', b"}", b"]", b"0", b"e", b"l", b"u", b":", b"1")]
        pick = int(rng.choice(closing if step > 150 and closing else list(allowed)))
        c.accept(pick)
        if pick == EOG:
            break
        text += toks[pick]
        if c.done:
            break
    if c.done:
        assert isinstance(json.loads(text), dict)
        assert c.mask(len(toks)).sum() == 1 and c.allows(EOG)        # only the end may follow
    with pytest.raises(RuntimeError, match="cannot continue"):
        c.accept(0)


def test_sampling_only_picks_allowed_tokens_and_follows_the_masked_distribution():
    toks, usable = small_vocab()
    vocab = _core.JsonVocab(toks, usable)
    logits = np.zeros(len(toks), np.float32)
    logits[toks.index(b"a")] = 5.0                 # the model wants "a": not allowed at the start
    logits[toks.index(b"{")] = 1.0
    logits[toks.index(b'{"')] = 1.0
    allowed = _core.JsonConstraint(vocab, [EOG]).mask(len(toks))
    assert not allowed[toks.index(b"a")] and allowed[toks.index(b"{")] and allowed[toks.index(b" ")]
    want = np.where(allowed, np.exp(logits), 0.0)
    want /= want.sum()                            # the masked distribution: softmax over the allowed tokens
    counts = np.zeros(len(toks))
    n = 600
    for seed in range(n):
        p = _core.SamplerParams()
        p.temperature, p.top_k, p.top_p, p.min_p, p.seed = 1.0, 0, 1.0, 0.0, seed
        c = _core.JsonConstraint(vocab, [EOG])
        tok = c.sample_logits(_core.Sampler(p), logits, [])
        assert allowed[tok]
        counts[tok] += 1
    sd = np.sqrt(want * (1 - want) / n)
    assert (np.abs(counts / n - want) <= 4 * sd + 1e-9).all(), (counts / n, want)
    g = _core.SamplerParams()                      # greedy: the best allowed token
    c = _core.JsonConstraint(vocab, [EOG])
    logits[toks.index(b'{"')] = 2.0
    assert toks[c.sample_logits(_core.Sampler(g), logits, [])] == b'{"'
    assert c.resamples == 1


def test_end_of_generation_only_when_the_object_is_whole():
    toks, usable = small_vocab()
    vocab = _core.JsonVocab(toks, usable)
    c = _core.JsonConstraint(vocab, [EOG])
    for t in (b'{"', b"a", b'":', b"1"):
        assert not c.allows(EOG)
        c.accept(toks.index(t))
    c.accept(toks.index(b"}"))
    assert c.done and c.allows(EOG)
    with pytest.raises(ValueError, match="usable flags"):
        _core.JsonVocab([b"a"], [True, False])


def synthetic_vocab(n=150_000, seed=0):
    """A vocabulary shaped like a large BPE one: words with and without a leading space, digits, punctuation and
    JSON pieces, whole and split CJK characters, whitespace runs; a few control tokens."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    punct = ['"', '",', '":', '{"', '"}', '},', '],', '\\n', '\\"', ',', ':', '{', '}', '[', ']', '.', '-', '(', ')']
    seen = {bytes([b]) for b in range(256)}
    toks = sorted(seen)
    while len(toks) < n:
        r = rng.random()
        if r < 0.45:
            t = (" " if rng.random() < 0.6 else "") + "".join(rng.choice(letters) for _ in range(rng.randint(1, 10)))
            t = t.encode()
        elif r < 0.55:
            t = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 3))).encode()
        elif r < 0.65:
            t = "".join(rng.choice(punct) for _ in range(rng.randint(1, 3))).encode()
        elif r < 0.85:
            t = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 3))).encode()
        elif r < 0.95:
            t = chr(rng.randint(0x4E00, 0x9FFF)).encode()[rng.choice([slice(0, 2), slice(1, 3), slice(2, 3)])]
        else:
            t = rng.choice([" ", "\n", "\t"]) * rng.randint(2, 24)
            t = t.encode()
        if t not in seen:
            seen.add(t)
            toks.append(t)
    toks += [b"<|im_start|>", b"<|im_end|>", b"<|endoftext|>"]
    usable = [True] * (len(toks) - 3) + [False] * 3
    return toks, usable


def test_mask_cost_on_a_150k_vocabulary():
    toks, usable = synthetic_vocab()
    t0 = time.perf_counter()
    vocab = _core.JsonVocab(toks, usable)
    build = time.perf_counter() - t0
    eog = len(toks) - 1
    states = {"start": b"", "after {": b"{", "in key": b'{"na', "after key": b'{"name":', "in string": b'{"name": "ab',
              "split UTF-8": b'{"name": "\xe6', "in number": b'{"n": 12', "after value": b'{"a": [1, "x"'}
    results = {}
    for name, prefix in states.items():
        c = _core.JsonConstraint(vocab, [eog])
        for t in prefix:                          # single-byte tokens are ids 0..255, by byte value
            c.accept(t)
        c.mask(len(toks))
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            mask = c.mask(len(toks))
            times.append(time.perf_counter() - t0)
        results[name] = (1e3 * sorted(times)[len(times) // 2], int(mask.sum()))
    # Under a schema (property names matched as literals, typed values).
    from owl_cpp.json_schema import compile_schema
    schema = compile_schema({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                              "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
                             "required": ["name"]})
    for name, prefix in {"schema: key": b'{"', "schema: value": b'{"age": ', "schema: in enum": b'{"tags": ["'}.items():
        c = _core.JsonConstraint(vocab, [eog], schema=schema)
        for t in prefix:
            c.accept(t)
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            mask = c.mask(len(toks))
            times.append(time.perf_counter() - t0)
        results[name] = (1e3 * sorted(times)[len(times) // 2], int(mask.sum()))
    # The full sampling step, fast path (the pick is allowed) and slow path (resampled among the allowed).
    p = _core.SamplerParams()
    p.temperature, p.seed = 0.8, 1
    logits = np.random.default_rng(0).standard_normal(len(toks)).astype(np.float32)
    c = _core.JsonConstraint(vocab, [eog])
    c.accept(ord("{")); c.accept(ord('"'))
    t0 = time.perf_counter()
    for _ in range(20):
        c2 = _core.JsonConstraint(vocab, [eog]); c2.accept(ord("{")); c2.accept(ord('"'))
        c2.sample_logits(_core.Sampler(p), logits, [])
    step_in_string = (time.perf_counter() - t0) / 20
    plain = _core.Sampler(p)
    t0 = time.perf_counter()
    for _ in range(20):
        plain.sample_logits(logits, [])
    step_plain = (time.perf_counter() - t0) / 20
    t0 = time.perf_counter()
    for _ in range(20):
        c3 = _core.JsonConstraint(vocab, [eog])
        c3.sample_logits(_core.Sampler(p), logits, [])       # at the start nearly every pick is refused
    step_start = (time.perf_counter() - t0) / 20
    print(f"\nJSON constraint on {len(toks)} tokens: trie built in {1e3 * build:.0f} ms")
    for name, (ms, n) in results.items():
        print(f"  mask {name:16s} {ms:6.2f} ms  ({n} tokens allowed)")
    print(f"  sample: unconstrained {1e3 * step_plain:.2f} ms, constrained in a string {1e3 * step_in_string:.2f} ms,"
          f" constrained at the start (resampled) {1e3 * step_start:.2f} ms")
    assert results["in string"][1] > 100_000 and results["start"][1] < 1000
    # A few ms at most per step, with room for a loaded 2-core test machine.
    assert max(ms for ms, _ in results.values()) < 15.0
