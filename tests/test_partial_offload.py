"""Partial offload (n_gpu_layers): a context's layers [0, N) on one backend, layers [N, n_layer) and the output
head on a CPU backend, the hidden state handed over between them, each span with the KV caches of its own layers.

Without a GPU the split runs between two CPU backends (_core.Context(backend="cpu", n_gpu_layers=N)): the same
kernels on the same thread count over the same rows, so every logit must be bit-identical to the unsplit
context's; any difference means the hand-off, a span's cache indexing or its piece scratch is wrong. Checked on
4-layer qwen2 (tied embeddings, q/k/v biases) and llama (own output matrix, Q4_0) decoders for N = 0, 1, 2, 3, 4,
-1 and 99: prefill in pieces (n_batch 5), all_logits, greedy decode, truncate + re-eval, copy_state_from,
decode_step (which runs split contexts one by one); owl2's image pieces; owl3 refusing a split; the residency
ranges a device would upload (each weight once across the spans); the errors and the Python plumbing. The CUDA
side (a GPU span) is tests/test_cuda_offload.py."""
from __future__ import annotations

import numpy as np
import pytest

import owl_cpp
from owl_cpp import _core, _testing

N_LAYER = 4
N_CTX = 64
THREADS = 2
SPLITS = [0, 1, 2, 3, 4, -1, 99]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    """gguf(arch, quant) -> path of a 4-layer tiny checkpoint converted with quant (built once per module)."""
    from owl_export.convert_text import convert_text_model
    from owl_export.fixtures import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("offload")
    cache = {}

    def get(arch, quant="f32"):
        if (arch, quant) not in cache:
            ckpt = root / f"{arch}-hf"
            if not ckpt.exists():
                make_tiny_checkpoint(ckpt, arch, seed=5, num_layers=N_LAYER)
            out = root / f"{arch}-{quant}.gguf"
            convert_text_model(ckpt, out, quant=quant, progress=False)
            cache[arch, quant] = out
        return cache[arch, quant]

    return get


@pytest.fixture(scope="module", params=[("qwen2", "f32"), ("llama", "q4_0")], ids=["qwen2-f32", "llama-q4_0"])
def model(request, gguf):
    return _core.Model.load(str(gguf(*request.param)))


def ctx(model, n_gpu_layers=-1, n_ctx=N_CTX, n_batch=5, **kw):
    return _core.Context(model, n_ctx, THREADS, n_batch=n_batch, n_gpu_layers=n_gpu_layers, **kw)


def expected_spans(n):
    on_device = N_LAYER if n < 0 else min(n, N_LAYER)
    if on_device in (0, N_LAYER):
        return [(0, N_LAYER)]
    return [(0, on_device), (on_device, N_LAYER)]


def same(a, b):
    """Bit-identical logits / hidden states (the two-CPU split runs the same float operations)."""
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("n", SPLITS)
def test_split_gives_the_unsplit_logits(model, n):
    assert model.hparams["n_layer"] == N_LAYER
    rng = np.random.default_rng(n + 10)
    V = model.hparams["n_vocab"]
    ref, split = ctx(model), ctx(model, n)
    assert [(a, b) for _, a, b in split.spans] == expected_spans(n)
    assert split.kv_bytes_per_token == ref.kv_bytes_per_token
    # A prompt of 17 tokens in pieces of 5: every piece crosses the hand-off with its own rows.
    prompt = rng.integers(0, V, 17).tolist()
    same(split.eval(prompt, all_logits=True), ref.eval(prompt, all_logits=True))
    same(split.hidden_states(), ref.hidden_states())
    # Greedy decode: one row per step through both spans.
    tok = int(np.argmax(ref.eval([int(prompt[-1])])))
    split.eval([int(prompt[-1])])
    for _ in range(6):
        a, b = split.eval([tok]), ref.eval([tok])
        same(a, b)
        same(split.hidden_states(), ref.hidden_states())
        tok = int(np.argmax(b))
    assert split.n_past == ref.n_past == 24
    # Truncate (prefix reuse) and evaluate other tokens over the kept prefix: each span's cache is cut alike.
    split.truncate(9)
    ref.truncate(9)
    more = rng.integers(0, V, 8).tolist()
    same(split.eval(more, all_logits=True), ref.eval(more, all_logits=True))
    # The last-token path (pruned last layer) of a multi-piece batch.
    tail = rng.integers(0, V, 7).tolist()
    same(split.eval(tail), ref.eval(tail))


@pytest.mark.parametrize("n", [1, 3])
def test_copy_state_from_a_split_context(model, n):
    """A fork copies every span's cache prefix: the copy continues exactly as the source (and as unsplit)."""
    rng = np.random.default_rng(3)
    V = model.hparams["n_vocab"]
    prompt = rng.integers(0, V, 13).tolist()
    src, ref = ctx(model, n), ctx(model)
    src.eval(prompt)
    ref.eval(prompt)
    fork = ctx(model, n, n_ctx=N_CTX + 16)   # another n_ctx: the cache rows of each head move
    fork.copy_state_from(src)
    assert fork.n_past == src.n_past == 13
    same(fork.hidden_states(), src.hidden_states())
    cont = rng.integers(0, V, 6).tolist()
    a, b, c = fork.eval(cont, all_logits=True), src.eval(cont, all_logits=True), ref.eval(cont, all_logits=True)
    same(a, b)
    same(a, c)


def test_copy_state_from_needs_the_same_split(model):
    a, b, plain = ctx(model, 1), ctx(model, 2), ctx(model)
    a.eval([1, 2, 3])
    with pytest.raises(_core.OwlError, match=r"copy_state_from: the source context places its layers as .*layers 0-0.*"
                                             r"this one as .*layers 0-1.*n_gpu_layers"):
        b.copy_state_from(a)
    with pytest.raises(_core.OwlError, match="same split"):
        plain.copy_state_from(a)
    assert b.n_past == 0 and plain.n_past == 0


def test_decode_step_runs_split_contexts_one_by_one(model):
    """decode_step batches only unsplit CPU contexts; with a split one among them each context decodes alone,
    which is exactly its own eval."""
    rng = np.random.default_rng(4)
    V = model.hparams["n_vocab"]
    prompts = [rng.integers(0, V, k).tolist() for k in (5, 9, 3)]
    splits = [1, -1, 3]
    stepped = [ctx(model, n) for n in splits]
    alone = [ctx(model) for _ in splits]
    toks = []
    for s, a, p in zip(stepped, alone, prompts):
        s.eval(p)
        toks.append(int(np.argmax(a.eval(p))))
    for _ in range(4):
        out = _core.decode_step(stepped, toks)
        for i, (s, a) in enumerate(zip(stepped, alone)):
            ref = a.eval([toks[i]])
            same(out[i], ref)
            same(s.hidden_states(), a.hidden_states())
            toks[i] = int(np.argmax(ref))


def test_owl2_image_pieces_cross_the_split(tmp_path_factory):
    """Owl2 keeps nothing per context beyond its caches: image pieces (their own K/V weights per layer) and text
    pieces both run through a split."""
    from owl_export.owl2.convert import PreparedOwl2Decoder
    from owl_export.owl2.fixtures import make_tiny_owl2_checkpoint

    root = tmp_path_factory.mktemp("owl2-offload")
    make_tiny_owl2_checkpoint(root / "hf", "owl2", num_layers=3)
    PreparedOwl2Decoder(root / "hf", "f32").write(root / "owl2.gguf", progress=False)
    m = _core.Model.load(str(root / "owl2.gguf"))
    E = m.hparams["n_embd"]
    rng = np.random.default_rng(6)
    embeds = rng.standard_normal((14, E)).astype(np.float32)
    modality = [0] * 3 + [1] * 8 + [0] * 3
    for n in (1, 2):
        ref = _core.Context(m, 64, THREADS, n_batch=6)
        split = _core.Context(m, 64, THREADS, n_batch=6, n_gpu_layers=n)
        assert len(split.spans) == 2
        same(split.decode(embeds=embeds, modality=modality, all_logits=True),
             ref.decode(embeds=embeds, modality=modality, all_logits=True))
        same(split.eval([5, 6]), ref.eval([5, 6]))


def test_owl3_refuses_a_split(tmp_path_factory):
    """Owl3's per-context visual K/V live on one backend beside its hyper layers: a split is a clear error
    naming the architecture and the values that work; -1 and 0 work."""
    from owl_export.owl3.convert import convert_owl3_decoder
    from owl_export.owl3.fixtures import make_tiny_owl3_checkpoint

    root = tmp_path_factory.mktemp("owl3-offload")
    hf = make_tiny_owl3_checkpoint(root / "hf", "1b", seed=3)
    convert_owl3_decoder(hf, root / "decoder.gguf", "f32")
    m = _core.Model.load(str(root / "decoder.gguf"))
    with pytest.raises(_core.OwlError, match=r"'owl3' architecture keeps per-conversation state .* use n_gpu_layers -1 "
                                             r".* or 0"):
        _core.Context(m, 32, 1, n_gpu_layers=1)
    for n in (-1, 0, m.hparams["n_layer"]):
        assert len(_core.Context(m, 32, 1, n_gpu_layers=n).spans) == 1


def test_bad_n_gpu_layers(model, gguf):
    with pytest.raises(_core.OwlError, match=r"n_gpu_layers must be -1 .* got -2"):
        ctx(model, -2)
    with pytest.raises(TypeError):
        ctx(model, "2")
    path = gguf("qwen2")
    for bad in (-2, -100):
        with pytest.raises(ValueError, match=rf"n_gpu_layers must be -1 .* got {bad}"):
            owl_cpp.load(path, n_gpu_layers=bad)
    for bad in ("3", 1.5, 2.0, True):
        with pytest.raises(ValueError, match="n_gpu_layers must be an integer"):
            owl_cpp.load(path, n_gpu_layers=bad)


def test_python_plumbing(gguf):
    """load() takes n_gpu_layers; on the CPU every layer is there already, so it is ignored (one span)."""
    path = gguf("qwen2")
    m = owl_cpp.load(path, threads=1, n_gpu_layers=2)
    assert m.n_gpu_layers == 2 and m.device == "cpu"
    assert len(m._ctx.spans) == 1
    assert owl_cpp.load(path, threads=1).n_gpu_layers == -1
    from owl_cpp.cli import build_parser
    assert build_parser().parse_args(["--n-gpu-layers", "7"]).n_gpu_layers == 7
    assert build_parser().parse_args(["-ngl", "3", "-n", "5"]).n_gpu_layers == 3
    from owl_cpp.server.cli import build_parser as server_parser
    assert server_parser().parse_args(["--n-gpu-layers", "5"]).n_gpu_layers == 5


@pytest.mark.skipif("cuda" in _core.available_backends(), reason="a GPU is visible here")
def test_cuda_without_a_gpu_still_fails_clearly(gguf):
    with pytest.raises(ValueError, match="device 'cuda'"):
        owl_cpp.load(gguf("qwen2"), device="cuda", n_gpu_layers=2)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_device_ranges_cover_the_model_once(model, n):
    """What a device span makes resident (Backend::attach's WeightRange): layers [0, n) and the embeddings on
    the device, layers [n, L) and the head on the CPU; together every weight of the whole model, none twice
    except a tied embedding / output matrix, which both ends read."""
    whole_m, whole_v = _testing.weights_in_range(model, 0, 1 << 40, True, True)
    dev_m, dev_v = _testing.weights_in_range(model, 0, n, True, False)
    cpu_m, cpu_v = _testing.weights_in_range(model, n, 1 << 40, False, True)
    assert set(dev_m) | set(cpu_m) == set(whole_m)
    assert set(dev_v) | set(cpu_v) == set(whole_v)
    tied = model.hparams["arch"] == "qwen2"
    assert len(set(dev_m) & set(cpu_m)) == (1 if tied else 0)
    assert not set(dev_v) & set(cpu_v)
    assert len(dev_m) == 1 + 7 * n                       # token_embd + 7 matrices per layer
    layer_only_m, _ = _testing.weights_in_range(model, n, n + 1, False, False)
    assert len(layer_only_m) == (7 if n < N_LAYER else 0)
