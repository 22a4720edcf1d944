"""The CUDA backend end to end: the same GGUF on the CPU and on the GPU gives the same logits, prompt and decode,
for every weight type, both KV cache types and Owl3's image paths. The op-level checks are in
test_backend_equivalence.py (it covers every backend available here). Without a GPU only the build report and
the errors for an unavailable device run; on the GPU machine: `python -m pytest -q tests/test_cuda.py
tests/test_backend_equivalence.py`."""
import numpy as np
import pytest

import owl_cpp
from owl_cpp import _core

HAS_GPU = "cuda" in _core.available_backends()
gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU visible")


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.isfinite(a).all(), "non-finite logits"
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_system_info_reports_the_cuda_build():
    info = owl_cpp.system_info()
    cuda = info["cuda"]
    assert isinstance(cuda["compiled"], bool)
    if cuda["compiled"]:
        assert cuda["architectures"] and cuda["runtime_version"] > 0
    assert ("cuda" in info["backends"]) == bool(cuda["devices"])
    for d in cuda["devices"]:
        assert d["name"] and d["total_bytes"] > 0 and d["compute_capability"]


@pytest.mark.skipif(HAS_GPU, reason="checks the message without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_gguf):
    with pytest.raises(ValueError, match="CUDA"):
        owl_cpp.load(tiny_gguf("qwen2"), device="cuda")
    with pytest.raises((_core.OwlError, ValueError), match="cuda"):
        _core.Context(_core.Model.load(str(tiny_gguf("qwen2"))), 64, 1, backend="cuda")


def test_unknown_devices_are_refused(tiny_gguf):
    for bad in ("gpu", "cuda:", "cuda:1x", "CUDA"):
        with pytest.raises(ValueError, match="device must be"):
            owl_cpp.load(tiny_gguf("qwen2"), device=bad)


def teacher_forced(model, backend, ids, steps, kv_type, n_batch=256, images=()):
    """Logits of every prompt position, then of `steps` decode steps fed the tokens in ids[len(prompt):]."""
    c = _core.Context(model, 256, 2, n_batch, kv_type=kv_type, backend=backend)
    for emb, start in images:
        c.add_image(emb, start)
    prompt, rest = ids[: len(ids) - steps], ids[len(ids) - steps:]
    out = [c.eval(prompt, all_logits=True)]
    for t in rest:
        out.append(c.eval([t])[None])
    return np.concatenate(out)


# Float weights: the same sums in another order, so the logits agree to float rounding, amplified a little
# through the layers, and more with an F16 cache (a value a rounding away from an fp16 boundary can be stored one
# fp16 step apart). Q8_0 / Q4_0 round activations to int8 on both, where the same happens at .5 boundaries: most
# positions agree closely, a few by up to a few percent. A wrong kernel is off by O(1) everywhere.
FLOAT_TOL = {"f32": (1e-4, 1e-4), "f16": (2e-4, 1e-3)}  # by KV cache type: (median, worst)
QUANT_TOL = (2e-3, 5e-2)


@gpu
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("quant", ["f32", "f16", "bf16", "q8_0", "q4_0"])
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_text_model_logits_match_the_cpu(tiny_gguf, arch, quant, kv_type):
    model = _core.Model.load(str(tiny_gguf(arch, quant)))
    rng = np.random.default_rng(5)
    ids = rng.integers(0, model.hparams["n_vocab"], 40).tolist()
    cpu = teacher_forced(model, "cpu", ids, 12, kv_type)
    for n_batch in (256, 7):  # one prompt piece (GEMM path) and small pieces (matrix-vector path)
        got = teacher_forced(model, "cuda", ids, 12, kv_type, n_batch=n_batch)
        errs = [rel(got[i], cpu[i]) for i in range(len(ids))]
        median, worst = QUANT_TOL if quant in ("q8_0", "q4_0") else FLOAT_TOL[kv_type]
        assert np.median(errs) < median and max(errs) < worst, \
            f"n_batch {n_batch}: median {np.median(errs):.2e}, worst {max(errs):.2e} at position {int(np.argmax(errs))}"
        assert (got.argmax(-1) == cpu.argmax(-1)).mean() > 0.95


@gpu
@pytest.mark.parametrize("variant", ["1b", "7b-240728", "7b-241101"])
def test_owl3_with_images_matches_the_cpu(tiny_owl3_model, variant):
    _, model_dir = tiny_owl3_model(variant)
    model = _core.Model.load(str(model_dir / "decoder.gguf"))
    H = model.hparams["n_embd"]
    rng = np.random.default_rng(9)
    images = [(rng.standard_normal((10, H)).astype(np.float32), 3), (rng.standard_normal((10, H)).astype(np.float32), 20)]
    ids = rng.integers(0, model.hparams["n_vocab"], 48).tolist()
    cpu = teacher_forced(model, "cpu", ids, 10, "f32", images=images)
    got = teacher_forced(model, "cuda", ids, 10, "f32", images=images)
    assert rel(got, cpu) < 1e-4


@gpu
def test_contexts_share_the_model_weights_on_the_gpu(tiny_gguf):
    model = _core.Model.load(str(tiny_gguf("qwen2", "q8_0")))
    ids = list(range(1, 30))
    a = _core.Context(model, 128, 1, backend="cuda")
    b = _core.Context(model, 128, 1, backend="cuda")
    np.testing.assert_array_equal(a.eval(ids), b.eval(ids))
    assert a.backend.startswith("cuda:0")


@gpu
def test_out_of_gpu_memory_is_an_error_naming_the_size(tiny_gguf):
    model = _core.Model.load(str(tiny_gguf("qwen2")))
    with pytest.raises(_core.OwlError, match="GPU memory"):
        _core.Context(model, 2 ** 31, 1, backend="cuda")  # a KV cache of terabytes


@gpu
def test_load_on_cuda_generates_what_the_cpu_generates(tiny_gguf):
    # F32 weights and cache: the two paths agree to ~1e-6, so greedy choices cannot flip on a near tie.
    path = tiny_gguf("qwen2", "f32")
    cpu = owl_cpp.load(path, n_ctx=128, threads=2, kv_type="f32")
    dev = owl_cpp.load(path, n_ctx=128, device="cuda", kv_type="f32")
    prompt = list(range(3, 15))
    want = cpu.generate(prompt, max_tokens=16)
    assert dev.generate(prompt, max_tokens=16) == want


@gpu
def test_decode_graphs_give_the_logits_of_single_launches(tiny_gguf, monkeypatch):
    # 60 prompt tokens + 20 steps: the attention's split count changes on the way (the graph is re-instantiated).
    model = _core.Model.load(str(tiny_gguf("qwen2", "q4_0")))
    ids = np.random.default_rng(2).integers(0, model.hparams["n_vocab"], 80).tolist()
    graphs = teacher_forced(model, "cuda", ids, 20, "f16")
    monkeypatch.setenv("OWL_CUDA_GRAPHS", "0")
    np.testing.assert_array_equal(teacher_forced(model, "cuda", ids, 20, "f16"), graphs)
