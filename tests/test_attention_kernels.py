"""The attention and SwiGLU kernels of every instruction-set variant this CPU supports, against an independent float64 numpy
attention, on awkward shapes: head dims that are not a multiple of 8, query groups of 1-7 heads, batches longer
than one unit of work, key counts around the 16-key block, Owl3-style visual prefix keys with per-token visibility
(including tokens that see none) with and without the causal text keys.

Tolerance: max |out - want| / max |want| < 2e-5 (fp32 dot products over <= 128 dims and an exp2 polynomial with
< 2e-7 relative error; a wrong mask or a lost rescale is off by > 1e-2). Results must also be bit-identical for
any thread count and for any split of the batch into calls, because a row's arithmetic never depends on which
other rows share its unit.

The KV cache may be float16 (the dtype of k / v decides): every kernel converts it exactly as it reads it, so the
result must equal, bit for bit, that of a float32 cache holding the same (fp16-rounded) values; the float64
reference runs on those values too.
"""
import zlib

import numpy as np
import pytest

from owl_cpp import _testing

ops = _testing.ops
SUPPORTED = ops.supported_isas()


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def numpy_attention(q, k, v, n_past, scale, pk=None, pv=None, visible=None, text=True):
    T, H, D = q.shape
    KV = k.shape[0]
    G = H // KV
    out = np.zeros((T, H, D))
    for t in range(T):
        for h in range(H):
            keys, vals = [], []
            if pk is not None and visible[t] > 0:
                keys.append(pk[:visible[t], h // G])
                vals.append(pv[:visible[t], h // G])
            if text:
                keys.append(k[h // G, :n_past + t + 1])
                vals.append(v[h // G, :n_past + t + 1])
            if not keys:
                continue
            kk = np.concatenate(keys).astype(np.float64)
            vv = np.concatenate(vals).astype(np.float64)
            s = kk @ q[t, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ vv
    return out


def case(rng, T, n_past, H, KV, D, prefix_rows=0):
    ctx = n_past + T + 3
    q = rng.standard_normal((T, H, D)).astype(np.float32) * 2
    k = rng.standard_normal((KV, ctx, D)).astype(np.float32)
    v = rng.standard_normal((KV, ctx, D)).astype(np.float32)
    extra = {}
    if prefix_rows:
        extra["prefix_k"] = rng.standard_normal((prefix_rows, KV, D)).astype(np.float32)
        extra["prefix_v"] = rng.standard_normal((prefix_rows, KV, D)).astype(np.float32)
        vis = rng.integers(0, prefix_rows + 1, T).astype(np.int64)
        vis[0] = 0  # a token that sees no image
        vis[-1] = prefix_rows
        extra["visible"] = np.sort(vis)
    return q, k, v, extra


# (T, n_past, H, KV, D): decode with a long cache, odd head dims, one to seven heads per KV head, batches past a
# unit of work (64 rows), key counts just below / at / above multiples of the 16-key block.
SHAPES = [(1, 0, 2, 1, 8), (1, 47, 14, 2, 64), (1, 300, 7, 1, 128), (3, 13, 4, 4, 12), (13, 0, 6, 2, 20),
          (17, 15, 7, 1, 64), (70, 5, 2, 1, 32), (33, 31, 12, 2, 128), (5, 0, 3, 3, 1), (1, 15, 8, 1, 72),
          (4, 12, 10, 2, 65), (2, 6, 5, 5, 7)]


@pytest.mark.parametrize("isa", SUPPORTED)
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_causal_attention_matches_numpy(isa, shape, isa_restore):
    rng = np.random.default_rng(zlib.crc32(repr((isa, shape)).encode()))
    T, n_past, H, KV, D = shape
    q, k, v, _ = case(rng, T, n_past, H, KV, D)
    scale = 1 / np.sqrt(D)
    want = numpy_attention(q, k, v, n_past, scale)
    ops.set_isa(isa)
    first = ops.attention(q, k, v, n_past, scale, threads=1)
    assert rel_err(first, want) < 2e-5, (isa, shape, rel_err(first, want))
    for threads in (2, 3, 5):
        np.testing.assert_array_equal(ops.attention(q, k, v, n_past, scale, threads=threads), first)
    assert rel_err(ops.attention(q, k, v, n_past, scale, ref=True), want) < 1e-6


@pytest.mark.parametrize("isa", SUPPORTED)
@pytest.mark.parametrize("text", [True, False])
@pytest.mark.parametrize("shape", [(1, 9, 4, 2, 16, 729), (9, 0, 7, 1, 64, 40), (20, 3, 2, 2, 12, 17)])
def test_prefix_attention_matches_numpy(isa, text, shape, isa_restore):
    rng = np.random.default_rng(zlib.crc32(repr((isa, text, shape)).encode()))
    T, n_past, H, KV, D, rows = shape
    q, k, v, extra = case(rng, T, n_past, H, KV, D, prefix_rows=rows)
    scale = 1 / np.sqrt(D)
    want = numpy_attention(q, k, v, n_past, scale, extra["prefix_k"], extra["prefix_v"], extra["visible"], text)
    ops.set_isa(isa)
    got = ops.attention(q, k, v, n_past, scale, threads=2, text=text, **extra)
    assert rel_err(got, want) < 2e-5, (isa, shape, text, rel_err(got, want))
    if not text and extra["visible"][0] == 0:
        assert not got[0].any()  # a token that sees no key at all gets zeros
    assert rel_err(ops.attention(q, k, v, n_past, scale, ref=True, text=text, **extra), want) < 1e-6


def f16_case(rng, T, n_past, H, KV, D, prefix_rows=0):
    """case() with the text cache rounded to float16, and its float32 copy holding the same values."""
    q, k, v, extra = case(rng, T, n_past, H, KV, D, prefix_rows)
    k16, v16 = k.astype(np.float16), v.astype(np.float16)
    return q, k16, v16, k16.astype(np.float32), v16.astype(np.float32), extra


@pytest.mark.parametrize("isa", SUPPORTED)
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_f16_cache_equals_f32_on_rounded_values(isa, shape, isa_restore):
    rng = np.random.default_rng(zlib.crc32(repr(("f16", isa, shape)).encode()))
    T, n_past, H, KV, D = shape
    q, k16, v16, k32, v32, _ = f16_case(rng, T, n_past, H, KV, D)
    scale = 1 / np.sqrt(D)
    want = numpy_attention(q, k32, v32, n_past, scale)
    ops.set_isa(isa)
    first = ops.attention(q, k16, v16, n_past, scale, threads=1)
    np.testing.assert_array_equal(first, ops.attention(q, k32, v32, n_past, scale, threads=1))
    assert rel_err(first, want) < 2e-5, (isa, shape, rel_err(first, want))
    for threads in (2, 3, 5):
        np.testing.assert_array_equal(ops.attention(q, k16, v16, n_past, scale, threads=threads), first)
    ref = ops.attention(q, k16, v16, n_past, scale, ref=True)
    np.testing.assert_array_equal(ref, ops.attention(q, k32, v32, n_past, scale, ref=True))
    assert rel_err(ref, want) < 1e-6


@pytest.mark.parametrize("isa", SUPPORTED)
@pytest.mark.parametrize("text", [True, False])
@pytest.mark.parametrize("shape", [(1, 9, 4, 2, 16, 729), (9, 0, 7, 1, 64, 40), (20, 3, 2, 2, 12, 17)])
def test_f16_cache_with_prefix(isa, text, shape, isa_restore):
    """Float visual prefix keys + an fp16 text cache in one softmax."""
    rng = np.random.default_rng(zlib.crc32(repr(("f16", isa, text, shape)).encode()))
    T, n_past, H, KV, D, rows = shape
    q, k16, v16, k32, v32, extra = f16_case(rng, T, n_past, H, KV, D, prefix_rows=rows)
    scale = 1 / np.sqrt(D)
    want = numpy_attention(q, k32, v32, n_past, scale, extra["prefix_k"], extra["prefix_v"], extra["visible"], text)
    ops.set_isa(isa)
    got = ops.attention(q, k16, v16, n_past, scale, threads=2, text=text, **extra)
    np.testing.assert_array_equal(got, ops.attention(q, k32, v32, n_past, scale, threads=2, text=text, **extra))
    assert rel_err(got, want) < 2e-5, (isa, shape, text, rel_err(got, want))
    assert rel_err(ops.attention(q, k16, v16, n_past, scale, ref=True, text=text, **extra), want) < 1e-6


@pytest.mark.parametrize("isa", SUPPORTED)
def test_f16_conversion_is_exact_for_every_value(isa, isa_restore):
    """All 65536 fp16 bit patterns as the values of a single key (weight exactly 1): out = v as float32, including
    subnormals, infinities and NaNs (only -0 comes out +0: the accumulator starts at +0)."""
    KV, D = 64, 1024
    v = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(KV, 1, D)
    k = np.zeros((KV, 1, D), np.float16)
    q = np.ones((1, KV, D), np.float32)
    ops.set_isa(isa)
    got = ops.attention(q, k, v, 0, 1.0, threads=2)
    np.testing.assert_array_equal(got, v.astype(np.float32).reshape(1, KV, D))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_batch_split_is_bit_identical(dtype):
    """Prefill in one call, in two calls, or token by token (decode) gives identical outputs."""
    rng = np.random.default_rng(5)
    T, H, KV, D = 40, 14, 2, 64
    q, k, v, _ = case(rng, T, 0, H, KV, D)
    k, v = k.astype(dtype), v.astype(dtype)
    whole = ops.attention(q, k, v, 0, 0.125, threads=2)
    for split in (1, 17, 39):
        head = ops.attention(q[:split], k, v, 0, 0.125, threads=2)
        tail = ops.attention(q[split:], k, v, split, 0.125, threads=3)
        np.testing.assert_array_equal(np.concatenate([head, tail]), whole)


def test_extreme_scores_stay_finite():
    """Scores of +-1e4 (far beyond exp's range): the running max keeps every exponent <= 0."""
    T, H, D = 4, 2, 16
    q = np.full((T, H, D), 30.0, np.float32)
    k = np.zeros((1, T, D), np.float32)
    k[0, ::2] = 20.0
    k[0, 1::2] = -20.0
    v = np.arange(T * D, dtype=np.float32).reshape(1, T, D)
    got = ops.attention(q, k, v, 0, 1.0, threads=2)
    assert np.isfinite(got).all()
    want = numpy_attention(q, k, v, 0, 1.0)
    assert rel_err(got, want) < 1e-6


def test_attention_argument_errors():
    q = np.zeros((2, 2, 8), np.float32)
    k = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(ValueError, match="go together"):
        ops.attention(q, k, k, 0, 1.0, prefix_k=np.zeros((3, 1, 8), np.float32))
    with pytest.raises(ValueError, match="visible"):
        ops.attention(q, k, k, 0, 1.0, prefix_k=np.zeros((3, 1, 8), np.float32),
                      prefix_v=np.zeros((3, 1, 8), np.float32), visible=np.array([0, 4]))
    with pytest.raises(ValueError, match="prefix"):
        ops.attention(q, k, k, 0, 1.0, text=False)
    with pytest.raises(ValueError, match="same dtype"):
        ops.attention(q, k.astype(np.float16), k, 0, 1.0)


@pytest.mark.parametrize("isa", SUPPORTED)
def test_swiglu_every_isa(isa, isa_restore):
    """The vectorised SwiGLU (exp by a degree-6 polynomial) vs float64, over lengths with vector tails and gate
    values far outside exp's float range."""
    rng = np.random.default_rng(zlib.crc32(isa.encode()))
    ops.set_isa(isa)
    for n in (1, 7, 8, 9, 4867):
        g = (rng.standard_normal(n) * 6).astype(np.float32)
        if n >= 3:
            g[:3] = [-200.0, 200.0, 0.0]
        u = rng.standard_normal(n).astype(np.float32)
        g64 = g.astype(np.float64)
        want = g64 / (1 + np.exp(-g64)) * u
        for threads in (1, 3):
            got = ops.swiglu(g, u, threads=threads)
            assert np.isfinite(got).all()
            err = np.abs(got - want) / np.maximum(np.abs(want), 1e-3 * np.abs(want).max())
            assert err.max() < 2e-6, (isa, n, float(err.max()))
