"""Partial offload on a GPU (n_gpu_layers): the first layers on CUDA, the rest and the output head on the CPU,
against the CPU alone; only the span's weights resident on the GPU, one copy per split; the decode step's graph
over the GPU span; the out-of-memory message. Skips without a GPU (the CPU side of the split, and the hand-off
between two CPU backends, are tests/test_partial_offload.py). On the GPU machine: tests/run_gpu_checks.sh."""
import numpy as np
import pytest

import owl_cpp
from owl_cpp import _core
from test_partial_offload import N_LAYER, gguf  # noqa: F401  (the 4-layer tiny checkpoints)

pytestmark = pytest.mark.skipif("cuda" not in _core.available_backends(), reason="no CUDA GPU visible")

# As test_cuda.py: float weights agree to rounding (f32 cache), Q8_0 rounds activations to int8 on both sides,
# where a value at a .5 boundary can land one step apart at a few positions. A wrong span is off by O(1).
TOL = {"f32": (1e-4, 1e-4), "q8_0": (2e-3, 5e-2)}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.isfinite(a).all(), "non-finite logits"
    return float(np.abs(a - b).max() / np.abs(b).max())


def teacher_forced(model, ids, steps, backend="cpu", n_gpu_layers=-1, n_batch=256):
    c = _core.Context(model, 128, 2, n_batch, kv_type="f32", backend=backend, n_gpu_layers=n_gpu_layers)
    prompt, rest = ids[: len(ids) - steps], ids[len(ids) - steps:]
    out = [c.eval(prompt, all_logits=True)]
    for t in rest:
        out.append(c.eval([t])[None])
    return np.concatenate(out), c


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("quant", ["f32", "q8_0"])
@pytest.mark.parametrize("n", [1, N_LAYER // 2, N_LAYER - 1])
def test_partial_offload_matches_cpu(gguf, arch, quant, n):  # noqa: F811
    model = _core.Model.load(str(gguf(arch, quant)))
    ids = np.random.default_rng(7).integers(0, model.hparams["n_vocab"], 40).tolist()
    cpu, _ = teacher_forced(model, ids, 12)
    for n_batch in (256, 7):
        got, c = teacher_forced(model, ids, 12, "cuda", n, n_batch)
        assert c.spans[0][0].startswith("cuda:0") and c.spans[1][0].startswith("cpu")
        assert [s[1:] for s in c.spans] == [(0, n), (n, N_LAYER)]
        errs = [rel(got[i], cpu[i]) for i in range(len(ids))]
        median, worst = TOL[quant]
        assert np.median(errs) < median and max(errs) < worst, \
            f"n_batch {n_batch}: median {np.median(errs):.2e}, worst {max(errs):.2e} at {int(np.argmax(errs))}"


def test_split_decode_graph_equals_single_launches(gguf, monkeypatch):  # noqa: F811
    """The GPU span of a decode step runs as a recorded graph; without graphs the same kernels run one by one."""
    model = _core.Model.load(str(gguf("qwen2", "f32")))
    ids = np.random.default_rng(2).integers(0, model.hparams["n_vocab"], 50).tolist()
    graphs, _ = teacher_forced(model, ids, 20, "cuda", 2)
    monkeypatch.setenv("OWL_CUDA_GRAPHS", "0")
    single, _ = teacher_forced(model, ids, 20, "cuda", 2)
    np.testing.assert_array_equal(graphs, single)


def test_copy_state_and_truncate_on_a_split(gguf):  # noqa: F811
    model = _core.Model.load(str(gguf("llama", "f32")))
    a = _core.Context(model, 96, 2, kv_type="f32", backend="cuda", n_gpu_layers=2)
    b = _core.Context(model, 64, 2, kv_type="f32", backend="cuda", n_gpu_layers=2)
    cpu = _core.Context(model, 96, 2, kv_type="f32")
    prompt = list(range(3, 25))
    a.eval(prompt)
    cpu.eval(prompt)
    b.copy_state_from(a)
    np.testing.assert_array_equal(b.eval([7, 8, 9], all_logits=True), a.eval([7, 8, 9], all_logits=True))
    a.truncate(10)
    cpu.truncate(10)
    assert rel(a.eval([40, 41, 42], all_logits=True), cpu.eval([40, 41, 42], all_logits=True)) < 1e-4


def free_bytes():
    return owl_cpp.system_info()["cuda"]["devices"][0]["free_bytes"]


def test_only_the_span_weights_are_resident(tmp_path):
    """Layers of about 13 MiB: a split context copies its own layers' weights to the GPU once per split (the
    per-model state is keyed by the range), a second context of the same split copies none: the first takes
    about three layers more GPU memory than the second, less than the whole model."""
    from owl_export.convert_text import convert_text_model
    from owl_export.fixtures import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "hf", "llama", seed=1, hidden_size=512, num_heads=8, num_kv_heads=4,
                                intermediate_size=1536, num_layers=4)
    convert_text_model(ckpt, tmp_path / "m.gguf", quant="f32", progress=False)
    model = _core.Model.load(str(tmp_path / "m.gguf"))
    layer = 4 * (4 * 512 * 512 + 3 * 512 * 1536)  # bytes of one layer's matrices (wk/wv are half: an upper bound)
    keep = [_core.Context(model, 16, 1, backend="cuda", n_gpu_layers=1)]  # the CUDA context and first copy exist
    f0 = free_bytes()
    keep.append(_core.Context(model, 16, 1, backend="cuda", n_gpu_layers=3))
    f1 = free_bytes()
    keep.append(_core.Context(model, 16, 1, backend="cuda", n_gpu_layers=3))
    f2 = free_bytes()
    first, second = f0 - f1, f1 - f2
    assert first - second > 2 * 0.6 * layer, (first, second)   # three layers + embeddings, not none
    assert first - second < 3 * layer + (8 << 20), (first, second)   # not the whole model's four


def test_out_of_gpu_memory_names_the_kv_cache_and_n_gpu_layers(gguf):  # noqa: F811
    model = _core.Model.load(str(gguf("qwen2", "f32")))
    with pytest.raises(_core.OwlError, match=r"GPU memory.*KV cache of layers 0-0 needs \d+ MiB.*n_gpu_layers"):
        _core.Context(model, 2 ** 31, 1, backend="cuda", n_gpu_layers=1)


def test_load_with_n_gpu_layers_generates_what_the_cpu_generates(gguf):  # noqa: F811
    path = gguf("qwen2", "f32")
    cpu = owl_cpp.load(path, n_ctx=128, threads=2, kv_type="f32")
    dev = owl_cpp.load(path, n_ctx=128, threads=2, device="cuda", kv_type="f32", n_gpu_layers=2)
    assert len(dev._ctx.spans) == 2
    prompt = list(range(3, 15))
    assert dev.generate(prompt, max_tokens=16) == cpu.generate(prompt, max_tokens=16)
