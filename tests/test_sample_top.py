"""Sampling from the best candidates only (what a device backend copies back instead of every logit):
top_logits / Backend.top_k select the k best (logit, id) pairs in Sampler's order, and Sampler.sample_top picks
the token Sampler.sample would, random draw included. The host parts run everywhere; Backend.top_k runs on every
backend this build can create (the CUDA kernel, src/cuda/topk.cu, on a GPU machine)."""
import numpy as np
import pytest

from owl_cpp import _core, _testing
from owl_cpp.generation import SamplingOptions

RNG = np.random.default_rng(21)
BACKENDS = _testing.available_backends()


def reference_top(logits, k):
    """numpy: indices sorted by (logit desc, id asc), -0 equal to +0."""
    v = np.asarray(logits, np.float64)
    order = np.lexsort((np.arange(len(v)), -v))
    return [(float(v[i]), int(i)) for i in order[:k]]


def logits_with_ties(n, distinct=None):
    x = RNG.standard_normal(n).astype(np.float32) * 3
    if distinct:  # few distinct values: many ties, broken by id
        x = np.round(x * distinct / 10).astype(np.float32)
    return x


def assert_same_top(got, want):
    assert [i for _, i in got] == [i for _, i in want]
    np.testing.assert_array_equal(np.array([v for v, _ in got]), np.array([v for v, _ in want]))


@pytest.mark.parametrize("n,k", [(1, 1), (5, 3), (5, 9), (1000, 40), (151936, 40), (70000, 256)])
@pytest.mark.parametrize("distinct", [None, 4])
def test_top_logits_is_samplers_order(n, k, distinct):
    x = logits_with_ties(n, distinct)
    assert_same_top(_core.top_logits(x, k), reference_top(x, k))


def test_top_logits_names_the_first_nan():
    x = np.zeros(100, np.float32)
    x[[70, 30]] = np.nan
    with pytest.raises(_core.OwlError, match="token 30 is NaN"):
        _core.top_logits(x, 5)


def sampler(**kw):
    return SamplingOptions(**{"seed": 7, "repeat_penalty": 1.0, **kw}).make_sampler()


@pytest.mark.parametrize("opts", [
    {"temperature": 0.0},                                              # greedy
    {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05},    # the defaults, warm
    {"temperature": 1.5, "top_k": 5, "top_p": 1.0, "min_p": 0.0},
    {"temperature": 1.0, "top_k": 1},
    {"temperature": 0.7, "top_k": 64, "top_p": 0.5, "min_p": 0.0},
])
@pytest.mark.parametrize("distinct", [None, 4])
def test_sample_top_picks_what_sample_picks(opts, distinct):
    full, top = sampler(**opts), sampler(**opts)
    n = 5000
    need = top.candidates_needed(n)
    assert need == (1 if opts["temperature"] == 0 else opts["top_k"])
    picks, picks_top = [], []
    for _ in range(200):  # one random draw per step on both: the generators stay in step
        x = logits_with_ties(n, distinct)
        picks.append(full.sample_logits(x, []))
        picks_top.append(top.sample_top(_core.top_logits(x, need), n))
    assert picks == picks_top
    assert len(set(picks)) > (1 if opts["temperature"] > 0 and opts["top_k"] > 1 else 0)


def test_candidates_needed_is_zero_when_sampling_needs_every_logit():
    assert sampler(temperature=0.8, top_k=0).candidates_needed(1000) == 0          # top-k off
    assert sampler(temperature=0.8, top_k=1000).candidates_needed(1000) == 0       # top-k covers the vocabulary
    assert sampler(temperature=0.0, repeat_penalty=1.1).candidates_needed(1000) == 0  # penalty changes logits first
    assert sampler(temperature=0.0, repeat_penalty=1.1, repeat_last_n=0).candidates_needed(1000) == 1


def test_sample_top_refuses_the_wrong_candidates():
    s = sampler(temperature=0.8, top_k=40)
    x = logits_with_ties(1000)
    with pytest.raises(_core.OwlError, match="needs the 40 best"):
        s.sample_top(_core.top_logits(x, 39), 1000)
    with pytest.raises(_core.OwlError, match="bad candidate"):
        s.sample_top([(1.0, 1000)] * 40, 1000)
    with pytest.raises(_core.OwlError, match="needs the 0 best"):
        sampler(temperature=0.8, top_k=0).sample_top(_core.top_logits(x, 40), 1000)


# ---- Backend.top_k on every backend (the CUDA kernel where there is a GPU; k > 256 is selected on the host) ----

@pytest.fixture(params=BACKENDS)
def be(request):
    return _testing.Backend(request.param, threads=2)


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (2048, 40), (2049, 40), (4096, 256), (151936, 1), (151936, 40),
                                 (151936, 256), (152064, 300), (100, 100), (30, 64)])
@pytest.mark.parametrize("distinct", [None, 3])
def test_backend_top_k(be, n, k, distinct):
    x = logits_with_ties(n, distinct)
    x[RNG.integers(0, n, min(n, 5))] = -0.0  # -0 and +0 tie, broken by id
    x[0] = 0.0
    got = be.top_k(x, k)
    assert_same_top([(0.0 if v == 0 else v, i) for v, i in got], reference_top(x, k))


def test_backend_top_k_switch_selects_on_the_host(be, monkeypatch):
    # OWL_CUDA_TOPK=0 (read per call) sends a device backend's selection to the host: the same pairs either way.
    x = logits_with_ties(151936, 3)
    want = reference_top(x, 40)
    assert_same_top(be.top_k(x, 40), want)
    monkeypatch.setenv("OWL_CUDA_TOPK", "0")
    assert_same_top(be.top_k(x, 40), want)


def test_backend_top_k_extremes(be):
    x = np.array([-np.inf, 3e38, -3e38, np.inf, 1e-45, -1e-45, 0.0, 5.0], np.float32)
    assert_same_top(be.top_k(x, 8), reference_top(x, 8))


def test_backend_top_k_names_the_first_nan(be):
    x = logits_with_ties(10000)
    x[[9000, 4097, 7000]] = np.nan
    with pytest.raises(Exception, match="token 4097 is NaN"):
        be.top_k(x, 40)


# ---- end to end: eval(return_logits=False) leaves a GPU's logits on the device and Sampler.sample selects its
# candidates there (greedy, top-k) or copies the logits when it needs them all (repetition penalty); the tokens
# must be those of the host path on the same backend. On the CPU the logits are always on the host. ----

BACKEND_NAMES = ["cpu"] + (["cuda"] if "cuda" in _core.available_backends() else [])


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("opts", [{"temperature": 0.0}, {"temperature": 0.9, "top_k": 20, "top_p": 0.9},
                                  {"temperature": 0.9, "top_k": 20, "repeat_penalty": 1.3}])
def test_sampling_logits_left_on_the_device(tiny_gguf, backend, opts):
    model = _core.Model.load(str(tiny_gguf("qwen2", "f32")))
    V = model.hparams["n_vocab"]
    prompt = list(range(3, 15))

    def generate(return_logits):
        c = _core.Context(model, 128, 2, kv_type="f32", backend=backend)
        s = sampler(**opts)
        out = []
        c.eval(prompt, return_logits=return_logits)
        for _ in range(16):
            assert c.logits_on_device == (backend == "cuda" and not return_logits)
            out.append(s.sample(c, prompt + out, V))
            c.eval([out[-1]], return_logits=return_logits)
        return out

    assert generate(False) == generate(True)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_copying_a_context_takes_logits_left_on_the_device(tiny_gguf, backend):
    model = _core.Model.load(str(tiny_gguf("qwen2", "f32")))
    V = model.hparams["n_vocab"]
    a = _core.Context(model, 64, 2, kv_type="f32", backend=backend)
    want = a.eval([5, 6, 7])
    a.truncate(0)
    a.eval([5, 6, 7], return_logits=False)
    b = _core.Context(model, 64, 2, kv_type="f32", backend=backend)
    b.copy_state_from(a)
    assert not b.logits_on_device
    greedy = sampler(temperature=0.0)
    assert greedy.sample(b, [], V) == greedy.sample(a, [], V) == int(np.argmax(want))
