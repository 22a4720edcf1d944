"""The backend-equivalence harness: every op of every backend this build can create, against float64 numpy
references, on awkward shapes. Outputs are poisoned (NaN) before each op, so an element an op fails to write
shows up; a new backend (CUDA) is covered by appearing in available_backends()."""
import numpy as np
import pytest

from owl_cpp import _testing
from kquant_blocks import TYPE_IDS as KTYPE_IDS
from kquant_blocks import q8_k_activations
from kquant_blocks import quantize as kquantize
from quant_reference import quantized_activations
from test_ops import TYPES, decode, encode, numpy_rope

RNG = np.random.default_rng(77)
BACKENDS = _testing.available_backends()


@pytest.fixture(params=BACKENDS)
def be(request):
    return _testing.Backend(request.param, threads=2)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert not np.isnan(a).any(), "the op left elements unwritten (NaN poison) or produced NaN"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def decode_kq(raw, type_name, shape):
    return _testing.ops.dequantize(raw, KTYPE_IDS[type_name], int(np.prod(shape))).reshape(shape)


def rnd(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16", "Q8_0", "Q4_0"])
@pytest.mark.parametrize("rows,cols,T", [(1, 32, 1), (13, 64, 3), (37, 96, 17), (64, 256, 40), (8, 32, 8), (70, 160, 9),
                                         (300, 896, 1), (130, 4864, 2), (200, 1024, 67)])
def test_matmul(be, type_name, rows, cols, T):
    w = rnd(rows, cols)
    raw = encode(w, type_name)
    wd = decode(raw, type_name, (rows, cols)).astype(np.float64)
    x, bias = rnd(T, cols), rnd(rows)
    quant = type_name in ("Q8_0", "Q4_0")  # their kernels round activations to int8 blocks, as llama.cpp does
    xr = quantized_activations(x) if quant else x.astype(np.float64)
    want = xr @ wd.T + bias
    got = be.matmul(raw.reshape(-1), TYPES[type_name], rows, cols, x, bias)
    assert rel(got, want) < 1e-5
    assert rel(be.matmul(raw.reshape(-1), TYPES[type_name], rows, cols, x), want - bias) < 1e-5


# K-quant weights: each backend rounds the activations its own way, the CPU to Q8_K blocks of 256 (as llama.cpp),
# the CUDA kernels to int8 blocks of 32 for T <= 8 (the Q4_0 / Q8_0 rounding) and not at all for more tokens; the
# reference takes the same activations, so what remains is fp32 accumulation.
def kquant_activations(be, x):
    if be.name.startswith("cuda"):
        return quantized_activations(x) if x.shape[0] <= 8 else x.astype(np.float64)
    return q8_k_activations(x)


@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K"])
@pytest.mark.parametrize("rows,cols,T", [(1, 256, 1), (13, 512, 3), (37, 768, 8), (70, 1280, 9), (33, 256, 64),
                                         (300, 2048, 1), (129, 4096, 2), (65, 1024, 67)])
def test_matmul_kquant(be, type_name, rows, cols, T):
    raw = kquantize(rnd(rows, cols, scale=0.05), type_name)
    wd = decode_kq(raw, type_name, (rows, cols)).astype(np.float64)
    x, bias = rnd(T, cols), rnd(rows)
    want = kquant_activations(be, x) @ wd.T + bias
    assert rel(be.matmul(raw, KTYPE_IDS[type_name], rows, cols, x, bias), want) < 1e-5
    assert rel(be.matmul(raw, KTYPE_IDS[type_name], rows, cols, x), want - bias) < 1e-5


@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K"])
def test_get_rows_kquant(be, type_name):
    raw = kquantize(rnd(11, 512), type_name)
    ids = np.array([10, 0, 3, 3, 7], np.int32)
    want = decode_kq(raw, type_name, (11, 512))[ids]
    assert rel(be.get_rows(raw, KTYPE_IDS[type_name], 11, 512, ids), want) == 0


@pytest.mark.parametrize("type_name", ["F32", "F16", "Q8_0", "Q4_0"])
def test_get_rows(be, type_name):
    table = rnd(11, 64)
    raw = encode(table, type_name)
    ids = np.array([10, 0, 3, 3, 7], np.int32)
    want = decode(raw, type_name, table.shape)[ids]
    assert rel(be.get_rows(raw.reshape(-1), TYPES[type_name], 11, 64, ids), want) == 0


# CUDA paths: float4 rows held in registers (n % 4 == 0, n <= 16384) with one thread per float4 (896: 224 threads;
# 3584: 896), 1024 threads with 1-4 float4s each (4096, 8192, 16384), and the scalar kernel for odd widths (37,
# 4098) and rows too long for the registers (16388).
@pytest.mark.parametrize("T,n", [(1, 8), (5, 896), (17, 100), (1, 3584), (2, 4096), (3, 8192), (1, 16384), (2, 16388),
                                 (3, 37), (1, 4098)])
def test_rms_norm(be, T, n):
    x, w = rnd(T, n, scale=5), rnd(n)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6) * w
    assert rel(be.rms_norm(x, w, 1e-6), want) < 1e-6


@pytest.mark.parametrize("T,n", [(1, 8), (5, 1024), (3, 37), (2, 4098)])
def test_layer_norm_and_gelu(be, T, n):
    x, w, b = rnd(T, n, scale=3) + 20, rnd(n), rnd(n)
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    want = (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + 1e-12) * w + b
    assert rel(be.layer_norm(x, w, b, 1e-12), want) < 1e-5
    from math import erf, sqrt
    g = rnd(T, n, scale=3)
    want_g = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))(g.astype(np.float64))
    assert rel(be.gelu(g), want_g) < 1e-6


@pytest.mark.parametrize("neox", [True, False])
# The decode shapes of a 7B's Q and K (one token, 28 and 4 heads), several tokens of many heads, and a pair count
# that is no power of two.
@pytest.mark.parametrize("T,H,D", [(1, 1, 2), (3, 4, 64), (9, 2, 128), (1, 28, 128), (1, 4, 128), (7, 28, 128),
                                   (5, 3, 6)])
def test_rope(be, neox, T, H, D):
    x = rnd(T, H * D)
    pos = np.array(RNG.integers(0, 40000, T), np.int32)
    want = numpy_rope(x.reshape(T, H, D), pos, 1e6, neox).reshape(T, H * D)
    assert np.abs(be.rope(x, H, D, pos, 1e6, neox) - want).max() < 1e-5


@pytest.mark.parametrize("shape", [(1, 7), (3, 896), (300, 33)])
def test_add_copy_swiglu(be, shape):
    x, y = rnd(*shape), rnd(*shape, scale=4)
    assert rel(be.add(x, y), x.astype(np.float64) + y) < 1e-7
    assert rel(be.copy(x), x) == 0
    g = y.astype(np.float64)
    assert rel(be.swiglu(y, x), g / (1 + np.exp(-g)) * x) < 1e-6


@pytest.mark.parametrize("T,KV,D", [(1, 1, 2), (5, 2, 64), (33, 3, 16)])
def test_split_kv(be, T, KV, D):
    kv = rnd(T, KV * 2 * D)
    k, v = be.split_kv(kv, KV, D)
    parts = kv.reshape(T, KV, 2, D)
    assert rel(k, parts[:, :, 0].reshape(T, KV * D)) == 0
    assert rel(v, parts[:, :, 1].reshape(T, KV * D)) == 0


@pytest.mark.parametrize("broadcast", [False, True])
@pytest.mark.parametrize("T,C", [(1, 8), (7, 96), (40, 33)])
def test_gate_mix(be, broadcast, T, C):
    x, y = rnd(T, C), rnd(T, C)
    gate = rnd(1 if broadcast else T, C, scale=3)
    mask = np.array([(t * 7) % 3 for t in range(T)], np.int64)  # some rows masked off (0)
    s = 1 / (1 + np.exp(-gate.astype(np.float64)))
    want = x * (1 - s) + y * s
    want[mask == 0] = x[mask == 0]
    assert rel(be.gate_mix(x, y, gate, mask), want) < 1e-6
    assert rel(be.gate_mix(x, y, gate), x * (1 - s) + y * s) < 1e-6


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("T,KV,D,ctx,pos0", [(1, 1, 8, 4, 3), (5, 2, 64, 9, 2), (17, 3, 6, 17, 0)])
def test_kv_store_writes_only_its_rows(be, kv_type, T, KV, D, ctx, pos0):
    src = rnd(T, KV * D, scale=3)
    cache = be.kv_store(src, KV, D, ctx, pos0, kv_type)
    got = (cache.view(np.float16).astype(np.float32) if kv_type == "f16" else cache).reshape(KV, ctx, D)
    want = src.reshape(T, KV, D).transpose(1, 0, 2)
    if kv_type == "f16":
        want = want.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got[:, pos0:pos0 + T], want)
    untouched = np.delete(got, np.s_[pos0:pos0 + T], axis=1)
    assert np.isnan(untouched).all(), "kv_store wrote outside its rows"


def attention_ref(q, k, v, n_past, H, KV, D, scale, prefix=None, text=True):
    """q [T][H*D]; k, v [KV][ctx][D]; prefix = (pk, pv [rows][KV][D], visible [T])."""
    T = q.shape[0]
    G = H // KV
    out = np.zeros((T, H, D))
    qh = q.reshape(T, H, D).astype(np.float64)
    for t in range(T):
        for h in range(H):
            keys, vals = [], []
            if prefix is not None:
                pk, pv, vis = prefix
                keys.append(pk[: vis[t], h // G]), vals.append(pv[: vis[t], h // G])
            if text:
                keys.append(k[h // G, : n_past + t + 1]), vals.append(v[h // G, : n_past + t + 1])
            K, V = np.concatenate(keys).astype(np.float64), np.concatenate(vals).astype(np.float64)
            if len(K) == 0:
                continue
            s = K @ qh[t, h] * scale
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ V
    return out.reshape(T, H * D)


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("T,n_past,H,KV,D", [(1, 0, 2, 1, 8), (1, 37, 4, 2, 64), (13, 0, 4, 4, 32), (7, 20, 6, 2, 18),
                                             (70, 3, 2, 1, 64), (1, 3000, 8, 2, 128), (3, 700, 4, 4, 96)])
def test_attention(be, kv_type, T, n_past, H, KV, D):
    ctx = n_past + T + 5
    q, k, v = rnd(T, H * D), rnd(KV, ctx, D), rnd(KV, ctx, D)
    if kv_type == "f16":  # the cache holds the values rounded; the reference reads the same ones
        k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    scale = 1 / np.sqrt(D)
    got = be.attention(q, k.reshape(KV * ctx, D), v.reshape(KV * ctx, D), n_past, H, KV, D, ctx, scale, kv_type=kv_type)
    assert rel(got, attention_ref(q, k, v, n_past, H, KV, D, scale)) < 1e-5


@pytest.mark.parametrize("text", [True, False])
def test_attention_with_prefix_keys(be, text):
    T, n_past, H, KV, D, rows = 9, 4, 4, 2, 16, 21
    ctx = n_past + T
    q, k, v = rnd(T, H * D), rnd(KV, ctx, D), rnd(KV, ctx, D)
    pk, pv = rnd(rows, KV, D), rnd(rows, KV, D)
    visible = np.array([0, 0, 5, 5, 5, 21, 21, 21, 21], np.int64)
    got = be.attention(q, k.reshape(KV * ctx, D), v.reshape(KV * ctx, D), n_past, H, KV, D, ctx, 0.3,
                       pk.reshape(rows, KV * D), pv.reshape(rows, KV * D), visible, text)
    assert rel(got, attention_ref(q, k, v, n_past, H, KV, D, 0.3, (pk, pv, visible), text)) < 1e-5


def test_ops_check_their_shapes(be):
    with pytest.raises(Exception, match="columns"):
        be.matmul(encode(rnd(4, 32), "F32").reshape(-1), 0, 4, 32, rnd(2, 31))
    with pytest.raises(Exception, match="shapes differ"):
        be.add(rnd(2, 3), rnd(3, 2))
    with pytest.raises(Exception, match="outside the cache"):
        be.kv_store(rnd(3, 8), 1, 8, 4, 2, "f32")
