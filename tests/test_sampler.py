"""Sampler: greedy, temperature, top-k, top-p, min-p, repetition penalty; seeded and reproducible."""
import numpy as np
import pytest

from owl_cpp import _core
from owl_cpp.generation import SamplingOptions, StopMatcher


def sampler(**kw):
    return SamplingOptions(**{"seed": 1, **kw}).make_sampler()


def draws(s, logits, n=2000, history=()):
    return np.array([s.sample_logits(logits, list(history)) for _ in range(n)])


LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32))


def test_greedy_is_argmax_and_breaks_ties_to_lowest_id():
    assert sampler().sample_logits(np.array([0.1, 3.0, -1.0, 3.0], np.float32), []) == 1


def test_temperature_one_follows_the_distribution():
    d = draws(sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), LOGITS, 20000)
    freq = np.bincount(d, minlength=5) / len(d)
    np.testing.assert_allclose(freq, [0.5, 0.2, 0.15, 0.1, 0.05], atol=0.015)


def test_low_temperature_sharpens():
    d = draws(sampler(temperature=0.2, top_k=0, top_p=1.0, min_p=0.0), LOGITS)
    assert (d == 0).mean() > 0.95


def test_top_k():
    assert set(draws(sampler(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0), LOGITS)) == {0, 1}


def test_top_p_keeps_smallest_prefix_reaching_p():
    # 0.5 + 0.2 = 0.7 < 0.75 -> the third token is needed, the fourth is not.
    assert set(draws(sampler(temperature=1.0, top_k=0, top_p=0.75, min_p=0.0), LOGITS)) == {0, 1, 2}


def test_min_p_drops_tokens_below_fraction_of_best():
    # 0.25 * 0.5 = 0.125: keeps 0.5, 0.2, 0.15
    assert set(draws(sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.25), LOGITS)) == {0, 1, 2}


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([2.0, 1.9, -1.0, -1.05], np.float32)
    s = sampler(repeat_penalty=1.5)
    assert s.sample_logits(logits, [0]) == 1          # 2.0 / 1.5 < 1.9
    logits = np.array([-1.0, -1.2], np.float32)
    assert sampler(repeat_penalty=1.5).sample_logits(logits, [0]) == 1  # -1.5 < -1.2


def test_repeat_last_n_limits_the_window():
    logits = np.array([2.0, 1.9, 0.0], np.float32)
    assert sampler(repeat_penalty=1.5, repeat_last_n=2).sample_logits(logits, [0, 2, 2]) == 0  # 0 outside window
    assert sampler(repeat_penalty=1.5, repeat_last_n=3).sample_logits(logits, [0, 2, 2]) == 1  # 0 penalised


def test_seed_reproducible_and_seeds_differ():
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = draws(SamplingOptions(seed=42, **kw).make_sampler(), LOGITS, 200)
    b = draws(SamplingOptions(seed=42, **kw).make_sampler(), LOGITS, 200)
    c = draws(SamplingOptions(seed=43, **kw).make_sampler(), LOGITS, 200)
    assert (a == b).all() and (a != c).any()


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=2),
                                 dict(repeat_penalty=0)])
def test_invalid_options_raise(bad):
    with pytest.raises(ValueError):
        SamplingOptions(**bad).make_sampler()


@pytest.mark.parametrize("field,value", [("temperature", float("nan")), ("temperature", 1e39),  # inf as float32
                                         ("top_p", float("nan")), ("min_p", 1.5), ("repeat_penalty", float("inf"))])
def test_core_sampler_refuses_bad_options_with_value_error(field, value):
    p = _core.SamplerParams()
    setattr(p, field, value)
    with pytest.raises(ValueError, match=field):
        _core.Sampler(p)


def test_sample_checks_n_vocab_against_the_context(tiny_gguf):
    """n_vocab past the model's logits used to read past the buffer; NaN logits broke the sort."""
    model = _core.Model.load(str(tiny_gguf("qwen2")))
    ctx = _core.Context(model, 16, 1)
    ctx.eval([1, 2])
    s = sampler()
    V = model.hparams["n_vocab"]
    for n in (V + 1, 2 ** 40, 0, -1):
        with pytest.raises(ValueError, match="n_vocab must be in"):
            s.sample(ctx, [], n)
    assert 0 <= s.sample(ctx, [], V) < V and 0 <= s.sample(ctx, [5], 7) < 7
    with pytest.raises(_core.OwlError, match="token 2 is NaN"):
        s.sample_logits(np.array([0, 1, np.nan], np.float32), [])


def test_stop_matcher_holds_back_partial_stop_strings():
    m = StopMatcher(["</s>", "STOP"])
    out = [m.push(p) for p in ["Hello ", "wor", "ld <", "/", "s> tail"]]
    assert "".join(out) == "Hello world " and m.stopped
    m = StopMatcher(["STOP"])
    assert m.push("ST") == "" and m.push("AY") == "STAY" and m.flush() == ""
