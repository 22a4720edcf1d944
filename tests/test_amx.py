"""F16 / BF16 prompts on AMX tiles (src/ops/matmul_amx.cpp), on CPUs that have AMX-BF16 (Sapphire Rapids and
later): against the float64 product at the float kernels' tolerance (normalized error 1e-5; the split into bf16 hi
and lo parts keeps 16 bits of each activation and every bit of an F16 / BF16 weight), the invariants of the float
panels they replace (a token's result does not depend on its batch of 16 or more or on the thread split), the
OWL_AMX=0 switch, and an F16 model's prompt against the AVX-512 panels. Skips on other CPUs."""
import numpy as np
import pytest

import owl_cpp
from owl_cpp import _core, _testing

ops = _testing.ops
TYPES = {"F16": 1, "BF16": 30}
pytestmark = pytest.mark.skipif(not owl_cpp.system_info()["amx"], reason="no AMX-BF16 here (or OWL_AMX=0)")


def weights(type_name, rows, cols, rng, scale=1.0):
    w = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    if type_name == "F16":
        raw = w.astype(np.float16)
        return raw.view(np.uint8).reshape(-1), raw.astype(np.float64)
    bits = ((w.view(np.uint32) + 0x8000) >> 16).astype(np.uint16)  # round to nearest (no NaN here)
    return bits.view(np.uint8).reshape(-1), (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def rel(a, b):
    a = np.asarray(a, np.float64)
    assert not np.isnan(a).any()
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("type_name", ["F16", "BF16"])
@pytest.mark.parametrize("rows,cols,T", [(1, 32, 16), (37, 96, 17), (64, 256, 32), (33, 100, 35), (300, 896, 64),
                                         (200, 1024, 67), (48, 4864, 33), (40, 300, 600), (17, 2304, 1030)])
def test_amx_matches_float64(type_name, rows, cols, T):
    # Rows and tokens not multiples of the 16 x 16 tiles, columns not multiples of 32 or of the 256-column chunk,
    # more than one 512-token block.
    rng = np.random.default_rng(rows * 1000 + cols + T)
    raw, wd = weights(type_name, rows, cols, rng)
    x, bias = rng.standard_normal((T, cols)).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    want = x.astype(np.float64) @ wd.T
    assert rel(ops.matmul(raw, TYPES[type_name], rows, cols, x, bias, threads=2), want + bias) < 1e-5
    assert rel(ops.matmul(raw, TYPES[type_name], rows, cols, x, threads=3), want) < 1e-5


@pytest.mark.parametrize("type_name", ["F16", "BF16"])
def test_amx_tokens_of_any_magnitude(type_name):
    # Each product is relative to its own activations: tokens from 1e-30 to 1e30 keep the tolerance on their own.
    rng = np.random.default_rng(5)
    rows, cols, T = 70, 512, 40
    raw, wd = weights(type_name, rows, cols, rng)
    x = (rng.standard_normal((T, cols)) * (10.0 ** np.linspace(-30, 30, T))[:, None]).astype(np.float32)
    got = ops.matmul(raw, TYPES[type_name], rows, cols, x, threads=2)
    want = x.astype(np.float64) @ wd.T
    for t in range(T):
        assert rel(got[t], want[t]) < 1e-5, t


@pytest.mark.parametrize("type_name", ["F16", "BF16"])
def test_amx_token_does_not_depend_on_batch_or_threads(type_name):
    rng = np.random.default_rng(9)
    rows, cols = 45, 803
    raw, _ = weights(type_name, rows, cols, rng)
    x = rng.standard_normal((70, cols)).astype(np.float32)
    whole = ops.matmul(raw, TYPES[type_name], rows, cols, x, threads=2)
    for t0, t1, threads in ((0, 16, 1), (5, 38, 3), (30, 70, 1), (3, 19, 2)):
        part = ops.matmul(raw, TYPES[type_name], rows, cols, x[t0:t1], threads=threads)
        np.testing.assert_array_equal(part, whole[t0:t1], err_msg=f"tokens {t0}:{t1}, {threads} threads")


@pytest.mark.parametrize("type_name", ["F16", "BF16"])
def test_owl_amx_0_switches_to_the_panels(type_name, monkeypatch):
    rng = np.random.default_rng(3)
    rows, cols, T = 96, 1024, 64
    raw, wd = weights(type_name, rows, cols, rng)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    amx = ops.matmul(raw, TYPES[type_name], rows, cols, x, threads=2)
    monkeypatch.setenv("OWL_AMX", "0")
    assert not owl_cpp.system_info()["amx"]
    panels = ops.matmul(raw, TYPES[type_name], rows, cols, x, threads=2)
    want = x.astype(np.float64) @ wd.T
    assert rel(amx, want) < 1e-5 and rel(panels, want) < 1e-5
    assert not np.array_equal(amx, panels)  # two different summations: the switch took effect


def test_f16_model_prompt_matches_the_panels(tiny_gguf, monkeypatch):
    """A whole F16 model's prompt logits (F32 cache) on AMX against the AVX-512 panels: measured 1.9e-5 apart
    (each product's 3e-6, through the layers), where the F16 rounding of the weights moves them 1.3e-3."""
    model = _core.Model.load(str(tiny_gguf("qwen2", "f16")))
    ids = list(range(3, 60))

    def prompt():
        return _core.Context(model, 128, 2, 256, kv_type="f32").eval(ids, all_logits=True)

    amx = prompt()
    monkeypatch.setenv("OWL_AMX", "0")
    assert rel(amx, prompt()) < 1e-4
