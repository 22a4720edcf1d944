"""Every CPU op against its plain reference (C++ *_ref) and an independent numpy formula, on awkward shapes."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from owl_cpp import _testing
from quant_reference import quantized_activations

ops = _testing.ops
RNG = np.random.default_rng(1234)
TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8, "BF16": 30}


def encode(w: np.ndarray, type_name: str) -> np.ndarray:
    """Weights in storage form (bytes per row), made with the gguf package so layouts are ggml's."""
    if type_name == "F32":
        return w.astype(np.float32).view(np.uint8)
    if type_name == "F16":
        return w.astype(np.float16).view(np.uint8)
    return np.asarray(quants.quantize(w.astype(np.float32), QT[type_name]), dtype=np.uint8)


def decode(raw: np.ndarray, type_name: str, shape) -> np.ndarray:
    if type_name == "F32":
        return raw.view(np.float32).reshape(shape)
    if type_name == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    return quants.dequantize(raw, QT[type_name]).reshape(shape).astype(np.float32)


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("type_name", list(TYPES))
def test_dequantize_matches_gguf_package(type_name):
    w = RNG.standard_normal((3, 96)).astype(np.float32)
    raw = encode(w, type_name).reshape(3, -1)
    want = decode(raw.reshape(-1), type_name, (3, 96))
    for r in range(3):
        got = ops.dequantize(raw[r], TYPES[type_name], 96)
        np.testing.assert_array_equal(got, want[r])


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0"])
def test_quantize_bit_identical_to_gguf_package(type_name):
    # Include blocks of zeros, a single spike and ties at .5 to hit the rounding edge cases.
    x = RNG.standard_normal(32 * 40).astype(np.float32) * 3
    x[:32] = 0
    x[32:64] = 0
    x[40] = -7.5
    x[64:96] = np.linspace(-4, 4, 32)
    ours = getattr(ops, f"quantize_{type_name.lower()}")(x)
    theirs = bytes(np.asarray(quants.quantize(x.reshape(1, -1), QT[type_name]), dtype=np.uint8).reshape(-1))
    assert ours == theirs


# rows x cols x tokens: rows not multiple of threads/SIMD width, 1 token, many tokens, cols of one block.
SHAPES = [(1, 32, 1), (7, 64, 1), (33, 96, 3), (130, 256, 1), (65, 160, 17), (257, 512, 64)]


@pytest.mark.parametrize("type_name", list(TYPES))
@pytest.mark.parametrize("rows,cols,T", SHAPES)
def test_matmul_against_reference(type_name, rows, cols, T):
    if type_name == "BF16":
        w = RNG.standard_normal((rows, cols)).astype(np.float32)
        raw = (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)  # truncate to bf16
        wf = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(rows, cols)
    else:
        w = RNG.standard_normal((rows, cols)).astype(np.float32)
        raw = encode(w, type_name)
        wf = decode(raw.reshape(-1), type_name, (rows, cols))
    x = RNG.standard_normal((T, cols)).astype(np.float32)
    bias = RNG.standard_normal(rows).astype(np.float32)
    want = x.astype(np.float64) @ wf.T.astype(np.float64) + bias
    ref = ops.matmul(raw.reshape(-1), TYPES[type_name], rows, cols, x, bias, ref=True)
    assert rel_err(ref, want) < 1e-6
    # The fast kernels round activations to int8 blocks for Q8_0 / Q4_0 weights (as llama.cpp does): compare
    # them with that exact arithmetic; other types use the float activations themselves.
    xe = quantized_activations(x) if type_name in ("Q8_0", "Q4_0") else x.astype(np.float64)
    fast_want = xe @ wf.T.astype(np.float64) + bias
    for threads in (1, 2, 3):
        got = ops.matmul(raw.reshape(-1), TYPES[type_name], rows, cols, x, bias, threads=threads)
        # fp32 accumulation over `cols` terms: error grows like sqrt(cols) * eps
        assert rel_err(got, fast_want) < 1e-5, (threads, rel_err(got, fast_want))


def test_matmul_rejects_bad_buffers():
    with pytest.raises(ValueError):
        ops.matmul(np.zeros(10, np.uint8), TYPES["F32"], 2, 32, np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError):
        ops.matmul(np.zeros(34, np.uint8), TYPES["Q8_0"], 1, 33, np.zeros((1, 33), np.float32))
    with pytest.raises(ValueError):
        ops.matmul(np.zeros(4 * 32, np.uint8), TYPES["F32"], 1, 32, np.zeros((1, 31), np.float32))


@pytest.mark.parametrize("type_name", list(TYPES))
def test_get_rows_dequantizes_rows(type_name):
    table = RNG.standard_normal((50, 64)).astype(np.float32)
    if type_name == "BF16":
        pytest.skip("embedding tables are never stored as BF16 by our exporter; matmul covers BF16 decoding")
    raw = encode(table, type_name)
    tf = decode(raw.reshape(-1), type_name, (50, 64))
    ids = np.array([0, 49, 7, 7, 13], np.int32)
    np.testing.assert_array_equal(ops.get_rows(raw.reshape(-1), TYPES[type_name], 50, 64, ids), tf[ids])
    with pytest.raises(IndexError):
        ops.get_rows(raw.reshape(-1), TYPES[type_name], 50, 64, np.array([50], np.int32))


@pytest.mark.parametrize("T,n", [(1, 8), (5, 896), (17, 100)])
def test_rms_norm(T, n):
    x = RNG.standard_normal((T, n)).astype(np.float32) * 5
    w = RNG.standard_normal(n).astype(np.float32)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6) * w
    assert rel_err(ops.rms_norm(x, w, 1e-6, ref=True), want) < 1e-6
    assert rel_err(ops.rms_norm(x, w, 1e-6, threads=2), want) < 1e-6


def numpy_rope(x, pos, base, neox):
    T, H, D = x.shape
    inv = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = pos[:, None].astype(np.float64) * inv[None, :]          # [T, D/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x = x.astype(np.float64)
    if neox:
        a, b = x[..., : D // 2], x[..., D // 2:]
        return np.concatenate([a * c - b * s, a * s + b * c], -1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("T,H,D", [(1, 1, 2), (3, 4, 64), (9, 2, 128)])
def test_rope(neox, T, H, D):
    x = RNG.standard_normal((T, H, D)).astype(np.float32)
    pos = np.array(RNG.integers(0, 40000, T), np.int32)
    want = numpy_rope(x, pos, 1e6, neox)
    assert np.abs(ops.rope(x, pos, 1e6, neox, ref=True) - want).max() < 1e-5
    assert np.abs(ops.rope(x, pos, 1e6, neox, threads=2) - want).max() < 1e-5


def test_rope_layouts_are_related_by_the_llama_permutation():
    # ggml's interleaved rope on permuted rows equals neox rope on the original rows: the reason
    # llama GGUFs store attn_q/attn_k permuted.
    T, H, D = 4, 3, 16
    x = RNG.standard_normal((T, H, D)).astype(np.float32)
    pos = np.arange(T, dtype=np.int32) + 5
    perm = np.arange(D).reshape(2, D // 2).T.reshape(-1)  # [0, D/2, 1, D/2+1, ...]
    neox = ops.rope(x, pos, 10000.0, True)
    norm = ops.rope(x[..., perm], pos, 10000.0, False)
    np.testing.assert_allclose(norm, neox[..., perm], atol=1e-6)


def numpy_layer_norm(x, w, b, eps):
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    return (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


@pytest.mark.parametrize("T,n", [(1, 8), (5, 1024), (17, 100)])
def test_layer_norm(T, n):
    # An offset mean (BERT's residual stream is not centred) and eps 1e-12: a one-pass variance would lose digits.
    x = (RNG.standard_normal((T, n)) * 3 + 20).astype(np.float32)
    w, b = RNG.standard_normal(n).astype(np.float32), RNG.standard_normal(n).astype(np.float32)
    want = numpy_layer_norm(x, w, b, 1e-12)
    assert rel_err(ops.layer_norm(x, w, b, 1e-12, ref=True), want) < 1e-6
    assert rel_err(ops.layer_norm(x, w, b, 1e-12, threads=2), want) < 1e-6
    assert rel_err(ops.layer_norm(x, w, b, 1e-2, threads=2), numpy_layer_norm(x, w, b, 1e-2)) < 1e-6


def test_gelu_is_the_erf_form():
    x = np.concatenate([RNG.standard_normal(3001) * 4, [0.0, -10.0, 10.0, -3.0]]).astype(np.float32)
    want = torch_free_gelu(x)
    assert rel_err(ops.gelu(x, ref=True), want) < 1e-6
    assert rel_err(ops.gelu(x, threads=2), want) < 1e-6
    # Not the tanh approximation (they differ by ~1e-3 near |x| = 2).
    tanh = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x.astype(np.float64) ** 3)))
    assert np.abs(ops.gelu(x, threads=2) - tanh).max() > 1e-4


def torch_free_gelu(x):
    from math import erf, sqrt
    return np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in x.astype(np.float64)])


def test_swiglu_and_softmax():
    g = RNG.standard_normal(1001).astype(np.float32) * 4
    u = RNG.standard_normal(1001).astype(np.float32)
    want = g / (1 + np.exp(-g.astype(np.float64))) * u
    assert rel_err(ops.swiglu(g, u, ref=True), want) < 1e-6
    assert rel_err(ops.swiglu(g, u, threads=2), want) < 1e-6
    x = RNG.standard_normal(777).astype(np.float32) * 30
    e = np.exp(x.astype(np.float64) - x.max())
    want = e / e.sum()
    assert rel_err(ops.softmax(x, ref=True), want) < 1e-6
    assert rel_err(ops.softmax(x), want) < 1e-5
    big = np.array([1e30, -1e30, 0], np.float32)  # no overflow to inf/nan
    assert np.isfinite(ops.softmax(big)).all()


def numpy_attention(q, k, v, n_past, scale):
    T, H, D = q.shape
    G = H // k.shape[0]
    out = np.zeros((T, H, D))
    for t in range(T):
        for h in range(H):
            n = n_past + t + 1
            s = k[h // G, :n].astype(np.float64) @ q[t, h] * scale
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v[h // G, :n]
    return out


@pytest.mark.parametrize("T,n_past,H,KV,D", [(1, 0, 2, 1, 8), (1, 37, 4, 2, 64), (13, 0, 4, 4, 32), (7, 20, 6, 2, 16), (64, 3, 2, 1, 64)])
def test_attention(T, n_past, H, KV, D):
    ctx = n_past + T + 5  # stride larger than the used positions, like a real cache
    q = RNG.standard_normal((T, H, D)).astype(np.float32)
    k = RNG.standard_normal((KV, ctx, D)).astype(np.float32)
    v = RNG.standard_normal((KV, ctx, D)).astype(np.float32)
    scale = 1 / np.sqrt(D)
    want = numpy_attention(q, k, v, n_past, scale)
    assert rel_err(ops.attention(q, k, v, n_past, scale, ref=True), want) < 1e-6
    for threads in (1, 2):
        assert rel_err(ops.attention(q, k, v, n_past, scale, threads=threads), want) < 1e-5


def test_attention_rejects_overflowing_shapes():
    q = np.zeros((4, 2, 8), np.float32)
    k = np.zeros((1, 5, 8), np.float32)
    with pytest.raises(ValueError):
        ops.attention(q, k, k, 2, 1.0)  # 2 + 4 positions > stride 5
