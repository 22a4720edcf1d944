"""The runtime's context API: batches of ids or embeddings (positions, per-token modality), one model shared by
many contexts from several threads, the one-thread-per-context guard, hidden states, and context limits."""
import threading

import gguf
import numpy as np
import pytest

from owl_cpp import _core

N_CTX = 128


@pytest.fixture(scope="module")
def qwen2(tiny_gguf):
    path = tiny_gguf("qwen2", "f32")
    return path, _core.Model.load(str(path))


def token_table(path, name="token_embd.weight"):
    """The F32 tensor `name` of a GGUF as [rows, cols] (ggml stores ne[0] = cols first)."""
    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)
    return np.asarray(t.data, np.float32).reshape(int(t.shape[1]), int(t.shape[0]))


def ids_for(model, n=23, seed=0):
    return np.random.default_rng(seed).integers(0, model.hparams["n_vocab"], n).tolist()


def ctx(model, **kw):
    return _core.Context(model, kw.pop("n_ctx", N_CTX), kw.pop("n_threads", 2), **kw)


def test_embeddings_batch_equals_ids(qwen2):
    path, model = qwen2
    ids = ids_for(model)
    table = token_table(path)
    a = ctx(model).eval(ids, all_logits=True)
    b = ctx(model).decode(embeds=table[ids], all_logits=True)
    np.testing.assert_array_equal(a, b)


def test_explicit_positions_equal_the_default_ones(qwen2):
    _, model = qwen2
    ids = ids_for(model)
    c = ctx(model)
    c.eval(ids[:5])
    a = c.eval(ids[5:], all_logits=True)
    c2 = ctx(model)
    c2.decode(ids=ids[:5], pos=list(range(5)))
    b = c2.decode(ids=ids[5:], pos=list(range(5, len(ids))), all_logits=True)
    np.testing.assert_array_equal(a, b)
    c3 = ctx(model)  # other positions are honoured (rope differs), so the logits differ
    assert not np.allclose(a, c3.decode(ids=ids[5:], pos=list(range(50, 50 + len(ids) - 5)), all_logits=True))


def test_mixed_modality_batch_is_split_at_boundaries(qwen2):
    """A batch text|image|text equals its pieces evaluated one after the other (exactly: the pieces are what
    the context runs), and token-by-token evaluation within float rounding."""
    path, model = qwen2
    ids = ids_for(model, 12, seed=3)
    emb = token_table(path)[ids]
    modality = [0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0]
    whole = ctx(model).decode(embeds=emb, modality=modality, all_logits=True)
    c = ctx(model)
    pieces = [c.decode(embeds=emb[s:e], modality=modality[s:e], all_logits=True)
              for s, e in [(0, 3), (3, 7), (7, 9), (9, 10), (10, 12)]]
    np.testing.assert_array_equal(whole, np.concatenate(pieces))
    c1 = ctx(model)
    one_by_one = np.stack([c1.decode(embeds=emb[i:i + 1], modality=modality[i:i + 1]) for i in range(len(ids))])
    assert np.abs(one_by_one - whole).max() / np.abs(whole).max() < 1e-5


def test_batch_longer_than_n_batch_and_mixed(qwen2):
    _, model = qwen2
    ids = ids_for(model, 40, seed=4)
    ref = ctx(model).eval(ids, all_logits=True)
    out = ctx(model, n_batch=7).decode(ids=ids, modality=[i // 9 % 2 for i in range(40)], all_logits=True)
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5
    last = ctx(model, n_batch=7).decode(ids=ids)
    assert np.abs(last - ref[-1]).max() / np.abs(ref[-1]).max() < 1e-5


def test_hidden_states_give_the_logits(qwen2):
    path, model = qwen2
    ids = ids_for(model)
    c = ctx(model)
    logits = c.eval(ids, all_logits=True)
    hidden = c.hidden_states()
    assert hidden.shape == (len(ids), model.hparams["n_embd"])
    out = token_table(path)  # tied embeddings: the output matrix is token_embd
    assert np.abs(hidden @ out.T - logits).max() / np.abs(logits).max() < 1e-5
    last = c.eval(ids_for(model, 1, seed=9))
    assert c.hidden_states().shape == (1, model.hparams["n_embd"])
    assert np.abs(c.hidden_states()[0] @ out.T - last).max() / np.abs(last).max() < 1e-5


def run_steps(c, ids, steps):
    out = [c.eval(ids)]
    for _ in range(steps):
        out.append(c.eval([int(np.argmax(out[-1]))]))
    return np.stack(out)


def test_two_contexts_on_one_model_from_two_threads_equal_two_models(tiny_gguf):
    path = str(tiny_gguf("qwen2", "q8_0"))
    shared = _core.Model.load(path)
    prompts = [ids_for(shared, 17, seed=1), ids_for(shared, 29, seed=2)]
    expected = [run_steps(ctx(_core.Model.load(path)), p, 12) for p in prompts]
    for _ in range(3):
        got = [None, None]
        contexts = [ctx(shared), ctx(shared)]
        start = threading.Barrier(2)

        def work(i):
            start.wait()
            got[i] = run_steps(contexts[i], prompts[i], 12)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(2):
            np.testing.assert_array_equal(got[i], expected[i])


def test_one_context_from_two_threads_is_an_error_not_corruption(qwen2):
    _, model = qwen2
    c = _core.Context(model, 4096, 1)
    ids = ids_for(model, 1000, seed=5)
    errors, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                c.truncate(0)
                c.eval(ids, return_logits=False)
            except _core.OwlError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(400):
        if errors:
            break
        threading.Event().wait(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert errors and all("in use by another thread" in e for e in errors)
    c.truncate(0)  # still usable, and correct
    ref = ctx(model, n_ctx=4096).eval(ids[:30])
    np.testing.assert_array_equal(c.eval(ids[:30]), ref)


@pytest.mark.parametrize("kwargs,match", [
    ({"n_ctx": 2 ** 59}, "context length"), ({"n_ctx": 0}, "context length"),
    ({"n_batch": 2 ** 62}, "batch size"), ({"n_threads": 100000}, "thread count"), ({"kv_type": "q4"}, "kv_type"),
    ({"backend": "tpu"}, "unknown backend"), ({"backend": "cuda:x"}, "cuda"),
])
def test_context_options_are_checked(qwen2, kwargs, match):
    _, model = qwen2
    with pytest.raises((_core.OwlError, ValueError), match=match):
        ctx(model, **kwargs)


def test_batch_inputs_are_checked(qwen2):
    _, model = qwen2
    c = ctx(model)
    E = model.hparams["n_embd"]
    with pytest.raises(ValueError, match="ids or embeds"):
        c.decode()
    with pytest.raises(ValueError, match="not both"):
        c.decode(ids=[1], embeds=np.zeros((1, E), np.float32))
    with pytest.raises(ValueError, match="embeds must be"):
        c.decode(embeds=np.zeros((2, E + 1), np.float32))
    with pytest.raises(ValueError, match="modality"):
        c.decode(ids=[1, 2], modality=[0, 2])
    with pytest.raises(ValueError, match="one entry per token"):
        c.decode(ids=[1, 2], pos=[0])
    with pytest.raises(_core.OwlError, match="negative"):
        c.decode(ids=[1, 2], pos=[0, -1])
    with pytest.raises(_core.OwlError, match="context overflow"):
        c.decode(embeds=np.zeros((N_CTX + 1, E), np.float32))
    # int64 / Python ints past int32 name the argument and entry (not pybind11's "Unable to cast ... '?'")
    with pytest.raises(ValueError, match=r"pos\[1\] = 2147483648 is not a 32-bit integer"):
        c.decode(ids=[1, 2], pos=[0, 2 ** 31])
    with pytest.raises(ValueError, match=r"ids\[0\]"):
        c.decode(ids=[2 ** 63])
    with pytest.raises(ValueError, match=r"tokens\[1\] = 'a'"):
        c.eval([1, "a"])
    with pytest.raises(ValueError, match="sequence of integers"):
        c.eval("abc")
    bad = np.zeros((2, E), np.float32)
    bad[1, 3] = np.inf
    with pytest.raises(_core.OwlError, match="token 1 holds a non-finite value"):
        c.decode(embeds=bad)
    for n in (2 ** 63 - 1, -2 ** 63, 1):
        with pytest.raises(_core.OwlError, match="cannot truncate"):
            c.truncate(n)
    assert c.n_past == 0  # nothing was evaluated by the failed calls
    c.eval(np.array([1, 2, 3], np.int64))  # numpy ids still work
    assert c.n_past == 3


def test_text_model_cannot_take_attached_images(qwen2):
    _, model = qwen2
    with pytest.raises(_core.OwlError, match="cannot take images"):
        ctx(model).add_image(np.zeros((3, model.hparams["n_embd"]), np.float32), 0)


def test_copy_state_from_forks_a_text_context(qwen2):
    # Beams on a plain decoder: the copy holds the same prefix (F16 cache, rows of every KV head) and continues
    # exactly as the source would; the source is unchanged by the copy's continuation.
    _, m = qwen2
    ids = ids_for(m, 30, seed=4)
    a = _core.Context(m, N_CTX, 2, 8, kv_type="f16")
    a.eval(ids[:20])
    b = _core.Context(m, 64, 1, 8, kv_type="f16")
    b.eval(ids_for(m, 5, seed=9))           # whatever b held before is replaced
    b.copy_state_from(a)
    assert b.n_past == 20
    np.testing.assert_array_equal(b.eval([ids[20]]), a.eval([ids[20]]))
    np.testing.assert_array_equal(b.eval(ids[21:25], all_logits=True), a.eval(ids[21:25], all_logits=True))
    with pytest.raises(_core.OwlError, match="KV cache"):
        _core.Context(m, N_CTX, 1, 8, kv_type="f32").copy_state_from(a)


def test_copy_state_from_refuses_owl3_images(tiny_owl3_model):
    _, model_dir = tiny_owl3_model("1b")
    m = _core.Model.load(str(model_dir / "decoder.gguf"))
    E = m.hparams["n_embd"]
    a = _core.Context(m, 64, 1)
    a.eval([1, 2, 3])
    b = _core.Context(m, 64, 1)
    b.copy_state_from(a)                    # no images: a plain copy
    assert b.n_past == 3
    a.add_image(np.random.default_rng(0).standard_normal((4, E)).astype(np.float32), 3)
    with pytest.raises(_core.OwlError, match="images"):
        b.copy_state_from(a)
    assert b.n_past == 3                    # refused before anything changed
