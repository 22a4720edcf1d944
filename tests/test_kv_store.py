"""ops.kv_store: src [T, n_head_kv, head_dim] into rows pos0 .. pos0+T-1 of a KV cache [n_head_kv, ctx, head_dim],
float32 (a copy) or float16 (round-to-nearest-even), on every kernel variant this CPU supports and the scalar
reference. float16 results must equal numpy's astype(float16) bit for bit (overflow to inf, subnormals, ties to
even, signed zeros); NaNs must stay NaNs of the same sign (their payload bits may differ: numpy keeps them,
F16C quiets them). Every other element of the cache (poisoned with a sentinel) must be left untouched.
"""
import zlib

import numpy as np
import pytest

from owl_cpp import _core, _testing

ops = _testing.ops
SUPPORTED = ops.supported_isas()
SENTINEL = {np.float16: np.uint16(0x7D5A), np.float32: np.uint32(0x7FA5A5A5)}  # NaNs no store writes
UINT = {np.float16: np.uint16, np.float32: np.uint32}

# Values at the edges of fp16 (as float32): the largest finite, the overflow threshold 65520 (ties to inf) and
# its neighbours, ties to even in the normal range, the smallest normal / subnormal, the 2^-25 tie to zero,
# float32 subnormals, signed zeros, infinities and NaNs (quiet, signalling, with payloads, negative).
SPECIAL = np.array(
    [65504.0, -65504.0, 65519.996, 65520.0, -65520.0, 65536.0, 1e6, -3e38, np.inf, -np.inf,
     1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 2048.0 + 1.0, 2048.0 + 3.0, -(1.0 + 2.0**-11),
     2.0**-14, 2.0**-14 * (1 - 2.0**-11), 2.0**-14 * (1 - 2.0**-12), 2.0**-24, -2.0**-24, 2.0**-25,
     2.0**-25 * (1 + 2.0**-20), 3 * 2.0**-25, 5 * 2.0**-25, 2.0**-26, 1e-40, -1e-40, 0.0, -0.0],
    np.float32)
NANS = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0xFFC00001, 0x7FFFFFFF], np.uint32).view(np.float32)


def awkward_values(rng, shape):
    """Normal values over exponents 2^-30 .. 2^20 (fp16 subnormals and overflow included), with the special
    values and NaNs scattered in."""
    x = rng.standard_normal(shape) * np.exp2(rng.uniform(-30, 20, shape))
    x = x.astype(np.float32).ravel()
    specials = np.concatenate([SPECIAL, NANS])
    idx = rng.choice(x.size, size=min(x.size, 3 * specials.size), replace=False)
    x[idx] = np.resize(specials, idx.size)
    return x.reshape(shape)


def check_cache(cache, src, pos0, dtype):
    """Rows pos0 .. pos0+T of each head hold src as numpy rounds it; the rest is the sentinel."""
    T = src.shape[0]
    with np.errstate(over="ignore"):  # numpy warns on the values that overflow to inf
        want = src.astype(dtype).transpose(1, 0, 2)
    got = cache[:, pos0:pos0 + T]
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    np.testing.assert_array_equal(got.view(UINT[dtype])[~nan], want.view(UINT[dtype])[~nan])
    bits = cache.view(UINT[dtype])
    outside = np.ones(cache.shape, bool)
    outside[:, pos0:pos0 + T] = False
    assert (bits[outside] == SENTINEL[dtype]).all(), "kv_store wrote outside rows pos0 .. pos0+T"


def poisoned(KV, ctx, D, dtype):
    return np.full((KV, ctx, D), SENTINEL[dtype], UINT[dtype]).view(dtype)


# (T, n_head_kv, head_dim, ctx, pos0): decode into the last row, odd head dims and tails of 1-7, a prefill large
# enough for kv_store to split it over threads.
SHAPES = [(1, 2, 64, 10, 9), (1, 1, 8, 1, 0), (5, 3, 13, 8, 2), (3, 4, 1, 5, 1), (17, 2, 7, 40, 20),
          (40, 2, 128, 50, 3), (300, 2, 128, 320, 7)]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("isa", SUPPORTED)
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_kv_store_matches_numpy(shape, isa, dtype, isa_restore):
    rng = np.random.default_rng(zlib.crc32(repr((shape, isa, dtype.__name__)).encode()))
    T, KV, D, ctx, pos0 = shape
    src = awkward_values(rng, (T, KV, D))
    ops.set_isa(isa)
    first = None
    for threads in (1, 3):
        cache = poisoned(KV, ctx, D, dtype)
        ops.kv_store(src, cache, pos0, threads=threads)
        check_cache(cache, src, pos0, dtype)
        if first is None:
            first = cache.copy()
        np.testing.assert_array_equal(cache.view(UINT[dtype]), first.view(UINT[dtype]))
    ref = poisoned(KV, ctx, D, dtype)
    ops.kv_store(src, ref, pos0, ref=True)
    check_cache(ref, src, pos0, dtype)


@pytest.mark.parametrize("isa", SUPPORTED)
def test_kv_store_every_rounding_case(isa, isa_restore):
    """A dense sweep of float32 bit patterns around every fp16 exponent (each fp16 step split 16 ways: ties,
    just above and below them), both signs, against numpy."""
    e = np.arange(-27, 17, dtype=np.int64)                             # binades from below 2^-25 to past 65504
    m = np.arange(0, 1 << 23, 1 << 9, dtype=np.int64)                  # 16 float32 mantissas per fp16 mantissa step
    bits = ((e[:, None] + 127) << 23 | m[None, :]).ravel()
    bits = np.concatenate([bits, bits + 1, bits - 1, bits | 0x80000000])  # neighbours of the ties, negatives
    src = (bits & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    D = 64
    src = np.resize(src, src.size // D * D).reshape(-1, 1, D)
    ops.set_isa(isa)
    cache = poisoned(1, src.shape[0], D, np.float16)
    ops.kv_store(src, cache, 0, threads=2)
    check_cache(cache, src, 0, np.float16)


def test_kv_store_then_attention():
    """What decode does: store the step's keys / values in an fp16 cache, then attend over it."""
    rng = np.random.default_rng(3)
    KV, H, D, ctx = 2, 6, 40, 24
    k16, v16 = np.zeros((KV, ctx, D), np.float16), np.zeros((KV, ctx, D), np.float16)
    k32, v32 = np.zeros((KV, ctx, D), np.float32), np.zeros((KV, ctx, D), np.float32)
    pos = 0
    for T in (7, 1, 1, 5):
        kn = rng.standard_normal((T, KV, D)).astype(np.float32)
        vn = rng.standard_normal((T, KV, D)).astype(np.float32)
        q = rng.standard_normal((T, H, D)).astype(np.float32)
        ops.kv_store(kn, k16, pos)
        ops.kv_store(vn, v16, pos)
        ops.kv_store(kn.astype(np.float16).astype(np.float32), k32, pos)
        ops.kv_store(vn.astype(np.float16).astype(np.float32), v32, pos)
        np.testing.assert_array_equal(ops.attention(q, k16, v16, pos, 0.3, threads=2),
                                      ops.attention(q, k32, v32, pos, 0.3, threads=2))
        pos += T


def test_kv_store_argument_errors():
    src = np.zeros((3, 2, 8), np.float32)
    cache = np.zeros((2, 5, 8), np.float16)
    with pytest.raises(_core.OwlError, match="do not fit"):
        ops.kv_store(src, cache, 3)
    with pytest.raises(_core.OwlError, match="do not fit"):
        ops.kv_store(src, cache, 3, ref=True)
    with pytest.raises(_core.OwlError, match="negative"):
        ops.kv_store(src, cache, -1)
    with pytest.raises(ValueError, match="float32 or float16"):
        ops.kv_store(src, np.zeros((2, 5, 8), np.float64), 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.kv_store(src, np.zeros((2, 8, 5), np.float16).transpose(0, 2, 1), 0)
    readonly = np.zeros((2, 5, 8), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        ops.kv_store(src, readonly, 0)
    with pytest.raises(ValueError, match="n_head_kv"):
        ops.kv_store(src, np.zeros((3, 5, 8), np.float16), 0)
    with pytest.raises(ValueError, match="n_head_kv"):
        ops.kv_store(src, np.zeros((2, 5, 9), np.float16), 0)
    assert not cache.any()  # nothing was written by the failed calls
    ops.kv_store(src[:0], cache, 5)  # no rows at the very end: fine
