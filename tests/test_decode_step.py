"""Batched decoding across conversations: _core.decode_step(contexts, tokens) appends tokens[i] to contexts[i] in
one pass through the weights, and leaves every context as if it had eval'd its token alone (logits, hidden
state, n_past), within the rounding of a matmul over N rows instead of one. Checked on the tiny qwen2 / llama
GGUFs (f32, q8_0, q4_0) for N = 1, 2, 4, 7 contexts at different positions (some after a truncate) over 16 greedy
steps, on owl2 with an image in one prompt, on owl3 with an attached image, and the errors (nothing changes)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from owl_cpp import _core

N_CTX = 96
STEPS = 16
# Relative error (max |diff| / max |ref|) between the batched step and single evals. f32 weights: the GEMM over N
# rows sums the same products in another order than the GEMV over one (float rounding only). q8_0 / q4_0: the
# activations are quantized per row either way, so the integer block dots are equal and only the float sums of
# block results differ, again rounding; the bounds leave a wide margin over what is measured (printed with -s).
TOL = {"f32": 1e-5, "q8_0": 1e-4, "q4_0": 1e-4}
MEASURED: dict[str, float] = {}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def make_ctx(model, n_ctx=N_CTX, n_threads=2, **kw):
    return _core.Context(model, n_ctx, n_threads, **kw)


@pytest.fixture(scope="module")
def models(tiny_gguf):
    cache = {}

    def get(arch, quant="f32"):
        if (arch, quant) not in cache:
            cache[arch, quant] = _core.Model.load(str(tiny_gguf(arch, quant)))
        return cache[arch, quant]

    return get


def prompts(model, n, seed=0):
    """n prompts of different lengths; every third is evaluated longer and truncated back (prefix reuse)."""
    rng = np.random.default_rng(seed)
    V = model.hparams["n_vocab"]
    out = []
    for i in range(n):
        length = 3 + 5 * i + int(rng.integers(0, 4))
        extra = 6 if i % 3 == 2 else 0
        out.append((rng.integers(0, V, length + extra).tolist(), length))
    return out


def prefill(model, specs, **kw):
    """Two contexts per prompt (one to decode batched, one alone), each at the prompt's length."""
    pairs = []
    for ids, keep in specs:
        pair = []
        for _ in range(2):
            c = make_ctx(model, **kw)
            c.eval(ids)
            if keep < len(ids):
                c.truncate(keep)
            pair.append(c)
        pairs.append(pair)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def greedy_compare(batched, alone, first_logits, steps=STEPS, exact=False, tol=1e-5, key=None):
    """`steps` greedy steps: the batched contexts through decode_step, their twins each through eval, on the same
    tokens (the twins' argmax). Logits, hidden states and n_past must agree; returns the max relative error."""
    toks = [int(np.argmax(l)) for l in first_logits]
    worst = 0.0
    for step in range(steps):
        want = np.stack([c.eval([t]) for c, t in zip(alone, toks)])
        got = _core.decode_step(batched, toks)
        assert got.shape == want.shape
        for i, (b, a) in enumerate(zip(batched, alone)):
            assert b.n_past == a.n_past
            hb, ha = b.hidden_states(), a.hidden_states()
            assert hb.shape == ha.shape == (1, a.hidden_states().shape[1])
            if exact:
                np.testing.assert_array_equal(got[i], want[i])
                np.testing.assert_array_equal(hb, ha)
            else:
                worst = max(worst, rel_err(got[i], want[i]), rel_err(hb, ha))
        assert worst <= tol, f"step {step}: relative error {worst:.2e} > {tol:.0e}"
        toks = [int(np.argmax(w)) for w in want]
    if key:
        MEASURED[key] = max(MEASURED.get(key, 0.0), worst)
    return toks


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("quant", ["f32", "q8_0", "q4_0"])
@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_batched_step_equals_single_evals(models, arch, quant, n):
    model = models(arch, quant)
    specs = prompts(model, n, seed=n)
    batched, alone = prefill(model, specs)
    assert len({c.n_past for c in batched}) == n  # all at different positions
    first = [a.eval([ids[keep - 1]]) for a, (ids, keep) in zip(alone, specs)]
    for b, (ids, keep) in zip(batched, specs):
        b.eval([ids[keep - 1]])
    # N = 1 runs exactly the ops of eval (a single row through the same kernels): bitwise equal.
    toks = greedy_compare(batched, alone, first, exact=n == 1, tol=TOL[quant], key=f"{arch} {quant}")
    # Afterwards the contexts go on with eval as if they had never been batched.
    for b, a, t in zip(batched, alone, toks):
        got, want = b.eval([t, 5, 7], all_logits=True), a.eval([t, 5, 7], all_logits=True)
        assert rel_err(got, want) <= TOL[quant]
        assert b.n_past == a.n_past


def test_sampler_reads_the_batched_logits(models):
    model = models("qwen2")
    cs = [make_ctx(model) for _ in range(3)]
    for i, c in enumerate(cs):
        c.eval([1 + i, 2, 3][: i + 1])
    logits = _core.decode_step(cs, [4, 5, 6])
    greedy = _core.SamplerParams()
    greedy.temperature = 0.0
    sampler = _core.Sampler(greedy)
    V = model.hparams["n_vocab"]
    for i, c in enumerate(cs):
        assert sampler.sample(c, [], V) == int(np.argmax(logits[i]))


def test_scratch_beyond_the_first_contexts_batch(models):
    """More contexts than the first context's n_batch rows: the step allocates its own scratch."""
    model = models("qwen2")
    specs = prompts(model, 5, seed=3)
    batched, alone = prefill(model, specs, n_batch=2)
    first = [a.eval([1]) for a in alone]
    for b in batched:
        b.eval([1])
    greedy_compare(batched, alone, first, steps=4, tol=TOL["f32"])


def test_different_thread_counts(models):
    """The step runs on the first context's thread pool; the others' thread counts do not matter."""
    model = models("llama")
    specs = prompts(model, 3, seed=5)
    batched = []
    for k, (ids, keep) in enumerate(specs):
        c = make_ctx(model, n_threads=1 + k)
        c.eval(ids[:keep])
        batched.append(c)
    alone, _ = prefill(model, specs)
    first = [a.eval([2]) for a in alone]
    for b in batched:
        b.eval([2])
    greedy_compare(batched, alone, first, steps=4, tol=TOL["f32"])


def test_mixed_kv_types_and_context_lengths(models):
    """Each context's own cache (f16 or f32, any length) is written and attended."""
    model = models("qwen2")
    specs = prompts(model, 4, seed=7)
    opts = [{"kv_type": "f16"}, {"kv_type": "f32", "n_ctx": 300}, {"kv_type": "f32"}, {"kv_type": "f16", "n_ctx": 40}]
    batched, alone = [], []
    for (ids, keep), kw in zip(specs, opts):
        for group in (batched, alone):
            c = make_ctx(model, **kw)
            c.eval(ids[:keep])
            group.append(c)
    first = [a.eval([3]) for a in alone]
    for b in batched:
        b.eval([3])
    greedy_compare(batched, alone, first, steps=8, tol=TOL["f32"])


@pytest.mark.skipif("cuda" not in _core.available_backends(), reason="no CUDA GPU")
def test_cuda_contexts_decode_one_after_another(models):
    """Device contexts have no batched path yet: the step decodes them in turn, with eval's results."""
    model = models("qwen2")
    specs = prompts(model, 3, seed=9)
    batched, alone = prefill(model, specs, backend="cuda")
    first = [a.eval([1]) for a in alone]
    for b in batched:
        b.eval([1])
    greedy_compare(batched, alone, first, steps=4, exact=True)


# ----------------------------------------------------------------------------------------------- owl2, owl3

def test_owl2_with_an_image_in_one_prompt(tmp_path_factory):
    from owl_export.owl2.convert import PreparedOwl2Decoder
    from owl_export.owl2.fixtures import make_tiny_owl2_checkpoint
    from owl_export.owl2.language import IMAGE_TOKEN_INDEX as IMG, Owl2LanguageReference

    root = tmp_path_factory.mktemp("owl2-step")
    make_tiny_owl2_checkpoint(root / "hf", "owl2", num_layers=2)
    PreparedOwl2Decoder(root / "hf", "f32").write(root / "owl2.gguf", progress=False)
    ref = Owl2LanguageReference.from_pretrained(root / "hf", torch.float64)
    model = _core.Model.load(str(root / "owl2.gguf"))
    g = torch.Generator().manual_seed(0)
    img = torch.randn(ref.cfg.image_tokens, ref.c.hidden_size, generator=g, dtype=torch.float64)
    embeds, mod = ref.splice([1, 17, 230, 45, IMG, 12, 99, 7, 300, 31], [img])
    emb = np.asarray(embeds, np.float32)
    mod = [int(m) for m in mod]
    batched, alone = [], []
    for group in (batched, alone):
        c0 = make_ctx(model, n_ctx=256, kv_type="f32")
        first0 = c0.decode(embeds=emb, modality=mod)
        c1 = make_ctx(model, n_ctx=256, kv_type="f32")
        first1 = c1.eval([1, 40, 41, 42, 43])
        c2 = make_ctx(model, n_ctx=256, kv_type="f32")
        first2 = c2.eval([1, 9])
        group += [c0, c1, c2]
    assert batched[0].n_past > 10  # the image's tokens are in the cache
    greedy_compare(batched, alone, [first0, first1, first2], tol=TOL["f32"], key="owl2 f32")


@pytest.mark.parametrize("variant", ["1b", "7b-240728", "7b-241101"])
def test_owl3_with_an_attached_image(tiny_owl3_model, variant):
    """Owl3's hyper layers attend to each context's own images: the step calls the architecture's attention per
    context with that context's state."""
    _, out = tiny_owl3_model(variant)
    model = _core.Model.load(str(out / "decoder.gguf"))
    hp = model.hparams
    rng = np.random.default_rng(1)
    n_img = 9
    img = rng.standard_normal((n_img, hp["n_embd"])).astype(np.float32)
    ids0 = rng.integers(0, hp["n_vocab"], 6 + n_img).tolist()
    ids1 = rng.integers(0, hp["n_vocab"], 4).tolist()
    batched, alone = [], []
    for group in (batched, alone):
        c0 = make_ctx(model, n_ctx=128, kv_type="f32")
        c0.add_image(img, 3)
        first0 = c0.eval(ids0)
        c1 = make_ctx(model, n_ctx=128, kv_type="f32")
        first1 = c1.eval(ids1)
        group += [c0, c1]
    assert batched[0].n_images == 1 and batched[1].n_images == 0
    greedy_compare(batched, alone, [first0, first1], tol=TOL["f32"], key=f"owl3 {variant}")


# ---------------------------------------------------------------------------------------------------- errors

def snapshot(cs):
    return [(c.n_past, c.hidden_states().copy()) for c in cs]


def assert_unchanged(cs, before):
    for c, (n, h) in zip(cs, before):
        assert c.n_past == n
        np.testing.assert_array_equal(c.hidden_states(), h)


def test_errors_change_nothing(models):
    qwen, llama = models("qwen2"), models("llama")
    V = qwen.hparams["n_vocab"]
    a, b, c = make_ctx(qwen), make_ctx(qwen), make_ctx(llama)
    for x in (a, b, c):
        x.eval([1, 2, 3])
    before = snapshot([a, b, c])
    with pytest.raises(_core.OwlError, match="no contexts"):
        _core.decode_step([], [])
    with pytest.raises(ValueError, match="2 contexts but 1 tokens"):
        _core.decode_step([a, b], [1])
    with pytest.raises(_core.OwlError, match="context 2 runs another model"):
        _core.decode_step([a, b, c], [1, 2, 3])
    with pytest.raises(_core.OwlError, match="context 1 is the same as context 0"):
        _core.decode_step([a, a], [1, 2])
    with pytest.raises(_core.OwlError, match=f"token id {V} for context 1 is outside the vocabulary"):
        _core.decode_step([a, b], [1, V])
    with pytest.raises(_core.OwlError, match="token id -1 for context 0"):
        _core.decode_step([a, b], [-1, 2])
    with pytest.raises(ValueError, match="tokens\\[1\\]"):
        _core.decode_step([a, b], [1, 2 ** 40])
    with pytest.raises(TypeError, match="contexts\\[1\\] is a str"):
        _core.decode_step([a, "b"], [1, 2])
    with pytest.raises(TypeError, match="contexts\\[0\\] is None"):
        _core.decode_step([None, b], [1, 2])
    with pytest.raises(TypeError, match="sequence of Context"):
        _core.decode_step(a, [1])
    assert_unchanged([a, b, c], before)
    # a full context
    full = make_ctx(qwen, n_ctx=4)
    full.eval([1, 2, 3, 4])
    with pytest.raises(_core.OwlError, match="context 1 is full"):
        _core.decode_step([a, full, b], [1, 2, 3])
    assert_unchanged([a, b, c], before)
    assert full.n_past == 4
    # still usable
    _core.decode_step([a, b], [4, 5])
    assert (a.n_past, b.n_past) == (4, 4)


def test_busy_context_is_refused(models):
    """A context inside an eval on another thread: the step raises naming it and changes no context; steps that
    got in are correct."""
    model = models("qwen2")
    V = model.hparams["n_vocab"]
    ids = np.random.default_rng(0).integers(0, V, 60).tolist()
    busy = make_ctx(model, n_ctx=4096)
    other = make_ctx(model, n_ctx=4096)
    other.eval([1, 2])
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                busy.truncate(0)
                busy.eval(ids)
            except _core.OwlError:        # the step holds `busy` at this moment (the race goes both ways)
                pass

    t = threading.Thread(target=hammer)
    t.start()
    errors = []
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not errors:
            if other.n_past > 4000:       # a loaded machine lets many steps in before one collides
                other.truncate(2)
            n = other.n_past
            try:
                _core.decode_step([other, busy], [3, 4])
            except _core.OwlError as e:
                errors.append(str(e))
                assert other.n_past == n
    finally:
        stop.set()
        t.join()
    assert errors and all("context 1" in e and "in use by another thread" in e for e in errors)


# ------------------------------------------------------------------------------------------------ speed

def test_speed_printed(models):
    """One step for 4 contexts against 4 single evals (printed; the tiny model is too small to assert on)."""
    model = models("qwen2", "q8_0")
    cs = [make_ctx(model, n_ctx=512) for _ in range(4)]
    for c in cs:
        c.eval([1, 2, 3])
    reps = 40
    t0 = time.perf_counter()
    for _ in range(reps):
        for c in cs:
            c.eval([5])
    single = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        _core.decode_step(cs, [5, 5, 5, 5])
    batched = (time.perf_counter() - t0) / reps
    print(f"\ntiny qwen2 q8_0, 4 contexts: 4 evals {single * 1e3:.3f} ms, one decode_step {batched * 1e3:.3f} ms "
          f"({single / batched:.2f}x)")
    print("measured relative errors:", {k: f"{v:.1e}" for k, v in sorted(MEASURED.items())})
