"""The tensor-core prefill GEMMs of the CUDA backend (src/cuda/matmul_tc.cuh, mma.cuh), which every matmul of more
than 8 tokens with Q4_0, Q8_0, F16 or K-quant weights takes on sm_80+ unless OWL_CUDA_TC=0.

- Q4_0 / Q8_0 (int8 mma): the same integer block sums, scaled and summed in the same fp32 order as the SIMT GEMM,
  so the two must agree bit for bit, and both match the float64 reference of the int8-rounded activations.
- F16 and Q4_K / Q5_K / Q6_K (fp16 mma, fp32 accumulation): activations scaled per token by a power of two and
  split into hi + lo fp16 parts (22 bits of the 24; K-quant weights, dequantized in fp32, split the same way), so
  the products are those of fp32 to 2^-22, also for tokens of 1e-20 or 1e20 (plain fp16 would flush or overflow
  those). The numpy model of that conversion runs without a GPU. The tensor cores' fp32 accumulation rounds toward
  zero, so the sum drifts by up to about 2^-24 of the result per 16 columns (measured on an H200: 1.2e-5 at 4864
  columns, 4.3e-5 at 11008): tensor_core_tol(cols) adds twice that to the SIMT kernels' 1e-5
  (test_backend_equivalence.py). A wrong tile, scale or split is off by 1e-3 or more.

Outputs are poisoned (NaN) before every run by the _testing harness; a NaN never passes a comparison. The GPU
tests skip without a GPU, and the kernels' tests skip on a GPU below sm_80 (where the SIMT GEMMs run)."""
import numpy as np
import pytest

import owl_cpp
from owl_cpp import _testing
from kquant_blocks import TYPE_IDS as KTYPE_IDS
from kquant_blocks import quantize as kquantize
from quant_reference import quantized_activations
from test_ops import TYPES, decode, encode

RNG = np.random.default_rng(15)
HAS_CUDA = "cuda" in _testing.available_backends()


def _tensor_cores() -> bool:
    devices = owl_cpp.system_info()["cuda"]["devices"] if HAS_CUDA else []
    return bool(devices) and int(str(devices[0]["compute_capability"]).split(".")[0]) >= 8


gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible")
tc = pytest.mark.skipif(not _tensor_cores(), reason="no CUDA GPU of sm_80 or later (tensor-core GEMMs)")

# (rows, cols, T): odd row counts (partial 64-row tiles, rows of one warp's 16-row mma tile past the end), token
# counts from just over the matrix-vector limit to several 64-token tiles, an odd block count (96 = 3 blocks of
# 32: the second block of the last stage is padding) and a long row.
SHAPES = [(37, 96, 9), (129, 1024, 64), (300, 4864, 200), (70, 160, 512), (1, 32, 17), (64, 256, 65), (513, 640, 33)]


@pytest.fixture
def be():
    return _testing.Backend("cuda", threads=2)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert not np.isnan(a).any(), "the op left elements unwritten (NaN poison) or produced NaN"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def random_weights(type_name, rows, cols):
    """A random rows x cols matrix encoded as type_name, and its decoded values in float64."""
    raw = encode(RNG.standard_normal((rows, cols)).astype(np.float32), type_name)
    return raw, decode(raw, type_name, (rows, cols)).astype(np.float64)


def matmul(be, monkeypatch, tensor_cores, raw, type_name, rows, cols, x, bias=None):
    monkeypatch.setenv("OWL_CUDA_TC", "1" if tensor_cores else "0")  # read by the backend on every matmul
    return be.matmul(raw.reshape(-1), TYPES[type_name], rows, cols, x, bias)


@gpu
@tc
@pytest.mark.parametrize("type_name", ["Q4_0", "Q8_0"])
@pytest.mark.parametrize("rows,cols,T", SHAPES)
def test_quant_tensor_cores_give_the_simt_bits(be, monkeypatch, type_name, rows, cols, T):
    raw, wd = random_weights(type_name, rows, cols)
    x, bias = RNG.standard_normal((T, cols)).astype(np.float32), RNG.standard_normal(rows).astype(np.float32)
    want = quantized_activations(x) @ wd.T + bias
    got = matmul(be, monkeypatch, True, raw, type_name, rows, cols, x, bias)
    assert rel(got, want) < 1e-5
    simt = matmul(be, monkeypatch, False, raw, type_name, rows, cols, x, bias)
    assert np.array_equal(got, simt), f"max difference {np.abs(got - simt).max():.3e}"
    nobias = matmul(be, monkeypatch, True, raw, type_name, rows, cols, x)
    assert rel(nobias, want - bias) < 1e-5


@gpu
@tc
@pytest.mark.parametrize("rows,cols,T", SHAPES)
def test_f16_tensor_cores_match_fp32(be, monkeypatch, rows, cols, T):
    raw, wd = random_weights("F16", rows, cols)
    x, bias = RNG.standard_normal((T, cols)).astype(np.float32), RNG.standard_normal(rows).astype(np.float32)
    want = x.astype(np.float64) @ wd.T + bias
    got = matmul(be, monkeypatch, True, raw, "F16", rows, cols, x, bias)
    assert rel(got, want) < tensor_core_tol(cols)
    assert rel(matmul(be, monkeypatch, False, raw, "F16", rows, cols, x, bias), want) < 1e-5
    assert rel(matmul(be, monkeypatch, True, raw, "F16", rows, cols, x), want - bias) < tensor_core_tol(cols)


# K-quant weights dequantized as the CPU does, then split into two fp16 parts like the activations: the fp32
# product to ~2^-22 per term, so the SIMT kernel's tolerance (both take the fp32 activations for T > 8).
@gpu
@tc
@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K"])
@pytest.mark.parametrize("rows,cols,T", [(37, 256, 9), (129, 1024, 64), (300, 2048, 200), (70, 512, 512),
                                         (65, 768, 33)])
def test_kquant_tensor_cores_match_fp32(be, monkeypatch, type_name, rows, cols, T):
    raw = kquantize((RNG.standard_normal((rows, cols)) * 0.05).astype(np.float32), type_name)
    wd = _testing.ops.dequantize(raw, KTYPE_IDS[type_name], rows * cols).reshape(rows, cols).astype(np.float64)
    x, bias = RNG.standard_normal((T, cols)).astype(np.float32), RNG.standard_normal(rows).astype(np.float32)
    want = x.astype(np.float64) @ wd.T + bias

    def run(tensor_cores, b):
        monkeypatch.setenv("OWL_CUDA_TC", "1" if tensor_cores else "0")
        return be.matmul(raw, KTYPE_IDS[type_name], rows, cols, x, b)

    assert rel(run(True, bias), want) < tensor_core_tol(cols)
    assert rel(run(False, bias), want) < 1e-5
    assert rel(run(True, None), want - bias) < tensor_core_tol(cols)


def tensor_core_tol(cols):
    """The SIMT GEMMs' 1e-5 plus twice the drift of round-toward-zero fp32 accumulation over cols / 16 mma steps."""
    return 1e-5 + 2 * (cols / 16) * 2.0 ** -24


def per_token_rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert not np.isnan(got).any()
    return max(np.abs(g - w).max() / max(np.abs(w).max(), 1e-300) for g, w in zip(got, want))


@gpu
@tc
def test_f16_tokens_of_any_magnitude(be, monkeypatch):
    # Per-token magnitudes from 1e-20 to 1e20, and one token of zeros: each token is scaled on its own, so every
    # token keeps the fp32 accuracy (plain fp16 would turn the large ones into inf and the small ones into 0).
    rows, cols, T = 100, 512, 40
    raw, wd = random_weights("F16", rows, cols)
    mags = 10.0 ** np.linspace(-20, 20, T)
    x = (RNG.standard_normal((T, cols)) * mags[:, None]).astype(np.float32)
    x[7] = 0
    want = x.astype(np.float64) @ wd.T
    got = matmul(be, monkeypatch, True, raw, "F16", rows, cols, x)
    assert (got[7] == 0).all()
    assert per_token_rel(np.delete(got, 7, 0), np.delete(want, 7, 0)) < tensor_core_tol(cols)


@gpu
@tc
def test_f16_non_finite_activations_reach_only_their_token(be, monkeypatch):
    rows, cols, T = 70, 256, 20
    raw, wd = random_weights("F16", rows, cols)
    x = RNG.standard_normal((T, cols)).astype(np.float32)
    x[3, 17], x[11, 200] = np.nan, np.inf
    got = np.asarray(matmul(be, monkeypatch, True, raw, "F16", rows, cols, x), np.float64)
    assert not np.isfinite(got[3]).any() and not np.isfinite(got[11]).any()
    keep = [t for t in range(T) if t not in (3, 11)]
    assert rel(got[keep], x[keep].astype(np.float64) @ wd.T) < tensor_core_tol(cols)


@gpu
def test_f16_widths_the_tensor_cores_skip_use_the_simt_gemm(be, monkeypatch):
    # cols % 8 != 0: no 16-byte tile loads, so the fp32 GEMM runs whatever OWL_CUDA_TC says.
    rows, cols, T = 13, 100, 33
    raw, wd = random_weights("F16", rows, cols)
    x = RNG.standard_normal((T, cols)).astype(np.float32)
    assert rel(matmul(be, monkeypatch, True, raw, "F16", rows, cols, x), x.astype(np.float64) @ wd.T) < 1e-5


# ---- the F16 conversion, modelled in numpy (runs everywhere) ----

def split_model(x):
    """The kernels' activation conversion (token_shift_kernel, split_pair): per token k = 15 - e with
    max |x| = f 2^e, f in [0.5, 1); hi = fp16(x 2^k), lo = fp16(x 2^k - hi); returns (hi + lo) 2^-k."""
    amax = np.abs(x).max(1)
    _, e = np.frexp(amax)
    k = np.where((amax > 0) & np.isfinite(amax), np.clip(15 - e, -126, 126), 0).astype(np.int32)
    xs = (x * np.ldexp(np.float32(1), k)[:, None].astype(np.float32)).astype(np.float32)
    hi = xs.astype(np.float16)
    lo = (xs - hi.astype(np.float32)).astype(np.float16)
    return (hi.astype(np.float64) + lo.astype(np.float64)) * np.ldexp(1.0, -k)[:, None]


def test_split_keeps_22_bits_per_token():
    T, cols = 12, 2048
    mags = 10.0 ** np.linspace(-30, 30, T)
    x = (RNG.standard_normal((T, cols)) * mags[:, None]).astype(np.float32)
    back = split_model(x)
    amax = np.abs(x).max(1, keepdims=True).astype(np.float64)
    # Each element within 2^-22 of itself, or (for the few below fp16's normal range after scaling) within 2^-39
    # of its token's largest value.
    err = np.abs(back - x)
    assert (err <= np.maximum(2.0 ** -22 * np.abs(x), 2.0 ** -39 * amax)).all()
    w = RNG.standard_normal((64, cols))
    assert per_token_rel(back @ w.T, x.astype(np.float64) @ w.T) < 1e-6


def test_plain_fp16_would_fail_the_tolerance():
    # Why the kernel scales and splits: fp16 alone overflows at 65504 and keeps 11 bits.
    x = (RNG.standard_normal((2, 512)) * np.array([[1.0], [1e6]])).astype(np.float32)
    w = RNG.standard_normal((8, 512))
    want = x.astype(np.float64) @ w.T
    with np.errstate(over="ignore", invalid="ignore"):
        plain = x.astype(np.float16).astype(np.float64) @ w.T
    assert not np.isfinite(plain[1]).all()
    assert np.abs(plain[0] - want[0]).max() / np.abs(want[0]).max() > 1e-5
    assert per_token_rel(split_model(x) @ w.T, want) < 1e-6
