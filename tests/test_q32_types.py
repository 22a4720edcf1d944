"""Q4_1, Q5_0, Q5_1 and IQ4_NL weights: dequantization bit-identical to gguf.quants (quantized data and random
bytes, NaN / inf scales included), and every matmul kernel variant this CPU runs against the float64 references.

Tolerances. Against a float64 emulation of the kernels' own arithmetic (activations rounded to int8 blocks of 32 as
llama.cpp does, then exact products), which pins the kernels down: 1e-6 of the largest sum of |products| (fp32
rounding of each block's terms; Q4_1 / Q5_1 sum d*sum(q x) and m*sum(x) separately, which can cancel, so |y| itself
is no scale: one 1x32 dot came out 1.2e-5 of |y| off). Against the plain float64 product, the error the activation
rounding adds, as tests/test_kernels_isa.py measured it (median 5.4e-3 of max |y|): 1.5e-2 from 256 outputs on, 3e-2
from 32 (the weights here have a mean of 0.3, which the minima of Q4_1 / Q5_1 must carry; one draw reached 1.02e-2)."""
import zlib

import numpy as np
import pytest

from owl_cpp import _testing
from q32_quant import TYPES, dequantize, quantize, random_blocks
from quant_reference import quantized_activations

ops = _testing.ops
SUPPORTED = ops.supported_isas()
ALL_ISAS = ["generic", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "neon"]
# Rows not a multiple of 4 / 8 / threads; one block; odd block counts (kernels that take blocks in pairs); more
# columns than one cache chunk at T = 64 (3072 int8 columns), with an odd block in the last chunk (4128).
SHAPES = [(1, 32), (3, 32), (7, 64), (13, 96), (33, 160), (67, 2080), (9, 4128)]
TOKENS = [1, 2, 3, 5, 17, 64]


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def emulate(raw, type_name, rows, cols, x, bias):
    w = dequantize(raw, type_name, rows, cols).astype(np.float64)
    return quantized_activations(x) @ w.T + (0 if bias is None else bias.astype(np.float64))


def emulation_err(got, raw, type_name, rows, cols, x, bias):
    """max |got - emulation| / max sum |products| (see the top)."""
    w = dequantize(raw, type_name, rows, cols).astype(np.float64)
    xq = quantized_activations(x)
    want = xq @ w.T + (0 if bias is None else bias.astype(np.float64))
    scale = (np.abs(xq) @ np.abs(w).T).max()
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(scale, 1e-30))


def bits_equal(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("type_name", list(TYPES))
def test_dequantize_matches_gguf(type_name):
    rng = np.random.default_rng(zlib.crc32(type_name.encode()))
    rows, cols = 5, 256
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 3 + 0.5
    raw = quantize(w, type_name)
    got = np.stack([ops.dequantize(raw[r], TYPES[type_name], cols) for r in range(rows)])
    want = dequantize(raw, type_name, rows, cols)
    bits_equal(got, want)
    assert np.abs(got - w).max() < 0.35 * np.abs(w).max()  # the quantizer's blocks really hold w


@pytest.mark.parametrize("type_name", list(TYPES))
def test_dequantize_random_bytes(type_name):
    """Any bytes are a valid block: every scale bit pattern (NaN and inf included, which just propagate) and every
    qh / nibble pattern."""
    rng = np.random.default_rng(1 + zlib.crc32(type_name.encode()))
    raw = random_blocks(rng, type_name, 64, 32 * 40)
    for r in range(raw.shape[0]):
        bits_equal(ops.dequantize(raw[r], TYPES[type_name], 32 * 40), dequantize(raw[r], type_name, 1, 32 * 40)[0])
    special = random_blocks(rng, type_name, 1, 32 * 4)
    for i, h in enumerate([0x7C00, 0xFC00, 0x7E00, 0x0001]):  # inf, -inf, NaN, the smallest subnormal
        special[0, i * (special.shape[1] // 4):][:2] = np.frombuffer(np.uint16(h).tobytes(), np.uint8)
    bits_equal(ops.dequantize(special[0], TYPES[type_name], 128), dequantize(special, type_name, 1, 128)[0])


def test_named_and_sized():
    for name, tid in TYPES.items():
        w = np.zeros((1, 64), np.float32)
        assert quantize(w, name).shape == (1, 2 * {"Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "IQ4_NL": 18}[name])
        with pytest.raises(ValueError, match="bad matrix shape"):
            ops.matmul(np.zeros(40, np.uint8), tid, 1, 48, np.zeros((1, 48), np.float32))


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("type_name", list(TYPES))
def test_every_isa_matches_reference(isa, type_name, isa_restore):
    if isa not in SUPPORTED:
        pytest.skip(f"this CPU / build cannot run {isa}")
    ops.set_isa(isa)
    rng = np.random.default_rng(zlib.crc32(f"{isa} {type_name}".encode()))
    for rows, cols in SHAPES:
        raw = quantize(rng.standard_normal((rows, cols)).astype(np.float32) + 0.3, type_name)
        bias = rng.standard_normal(rows).astype(np.float32)
        for T in TOKENS:
            x = rng.standard_normal((T, cols)).astype(np.float32)
            b = bias if T % 2 else None
            ref = ops.matmul(raw, TYPES[type_name], rows, cols, x, b, ref=True)
            first = None
            for threads in (1, 2, 3):
                got = ops.matmul(raw, TYPES[type_name], rows, cols, x, b, threads=threads)
                e = emulation_err(got, raw, type_name, rows, cols, x, b)
                assert e < 1e-6, (isa, type_name, rows, cols, T, threads, e)
                if rows * T >= 32:
                    err = rel_err(got, ref)
                    assert err < (1.5e-2 if rows * T >= 256 else 3e-2), (isa, type_name, rows, cols, T, threads, err)
                if first is None:
                    first = got
                else:  # any split over threads gives bit-identical results
                    np.testing.assert_array_equal(got, first, err_msg=f"{isa} {type_name} {rows}x{cols} T={T}")


@pytest.mark.parametrize("type_name", list(TYPES))
def test_random_bytes_every_isa(type_name, isa_restore):
    """Blocks of random bytes with sane scales (every qh / nibble pattern, minima of either sign) match the
    emulation; NaN / inf scales run through without a crash, giving non-finite values only in their rows."""
    rng = np.random.default_rng(3 + zlib.crc32(type_name.encode()))
    rows, cols = 21, 32 * 37
    raw = random_blocks(rng, type_name, rows, cols, scale=0.05)
    x = rng.standard_normal((6, cols)).astype(np.float32)
    x[:, 64:96] = 0  # an all-zero activation block: scale 0
    exact = emulate(raw, type_name, rows, cols, x, None)
    scale = (np.abs(quantized_activations(x)) @ np.abs(dequantize(raw, type_name, rows, cols)).T.astype(np.float64)).max()
    hostile = raw.copy()
    hostile[4, 0:2] = np.frombuffer(np.uint16(0x7E00).tobytes(), np.uint8)  # NaN scale in row 4
    hostile[9, 0:2] = np.frombuffer(np.uint16(0x7C00).tobytes(), np.uint8)  # inf scale in row 9
    for isa in SUPPORTED:
        ops.set_isa(isa)
        for T in (1, 6):
            got = ops.matmul(raw, TYPES[type_name], rows, cols, x[:T], threads=2)
            assert np.abs(got - exact[:T]).max() < 1e-6 * scale, (isa, T)
        bad = ops.matmul(hostile, TYPES[type_name], rows, cols, x, threads=2)
        finite = np.ones(rows, bool)
        finite[[4, 9]] = False
        assert np.isfinite(bad[:, finite]).all(), isa
        assert not np.isfinite(bad[:, 4]).any(), isa
        np.testing.assert_allclose(bad[:, finite], exact[:, finite], rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("type_name", list(TYPES))
def test_token_does_not_depend_on_batch(type_name, isa_restore):
    rng = np.random.default_rng(7)
    rows, cols = 29, 224
    raw = quantize(rng.standard_normal((rows, cols)).astype(np.float32), type_name)
    x = rng.standard_normal((7, cols)).astype(np.float32)
    for isa in SUPPORTED:
        ops.set_isa(isa)
        batch = ops.matmul(raw, TYPES[type_name], rows, cols, x, threads=2)
        for t in range(7):
            one = ops.matmul(raw, TYPES[type_name], rows, cols, x[t:t + 1], threads=2)
            np.testing.assert_array_equal(one[0], batch[t], err_msg=f"{isa} {type_name} token {t}")


@pytest.mark.parametrize("type_name", list(TYPES))
def test_extreme_levels_do_not_saturate(type_name, isa_restore):
    """The largest levels (Q5: 31, IQ4_NL: -127 / 113) against activations at +-127, where 16-bit pair sums of
    byte products come closest to overflowing."""
    rows, cols = 6, 96
    raw = np.zeros((rows, cols // 32, {"Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "IQ4_NL": 18}[type_name]), np.uint8)
    raw[..., 0:2] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)
    if type_name in ("Q4_1", "Q5_1"):
        raw[..., 2:4] = np.frombuffer(np.float16(-1.5).tobytes(), np.uint8)
    raw[0::2, :, -16:] = 0xFF  # every nibble 15 (table level 113)
    raw[1::2, :, -16:] = 0x00  # every nibble 0 (table level -127)
    if type_name in ("Q5_0", "Q5_1"):
        off = 2 if type_name == "Q5_0" else 4
        raw[0::2, :, off:off + 4] = 0xFF  # bit 4 set: level 31
    raw = raw.reshape(rows, -1)
    x = np.stack([np.ones(cols), -np.ones(cols), np.where(np.arange(cols) % 3, 1.0, -1.0)]).astype(np.float32)
    ref = ops.matmul(raw, TYPES[type_name], rows, cols, x, ref=True)
    for isa in SUPPORTED:
        ops.set_isa(isa)
        got = ops.matmul(raw, TYPES[type_name], rows, cols, x)
        assert rel_err(got, ref) < 1e-6, isa


# ---- the load-time x8 layouts (repack_q32.cpp, q32x8_avx2.h) ----

LANE_ISAS = ("avx2", "avx2_vnni", "avx512", "avx512_vnni")  # variants with x8 kernels; the others read the file's copy
# Rows not a multiple of 8 (a padded last group) and fewer than 8; an odd block count; more columns than one cache
# chunk at T = 100 (1920 int8 columns).
PACKED_SHAPES = [(1, 32), (5, 96), (13, 160), (29, 224), (67, 2080)]
PACKED_TOKENS = [1, 3, 16, 100]


def test_x8_kernels_exist_where_expected(isa_restore):
    for isa in SUPPORTED:
        ops.set_isa(isa)
        for name, tid in TYPES.items():
            assert ops.kernels_use_q32x8(tid) == (isa in LANE_ISAS), (isa, name)
        assert not ops.kernels_use_q32x8(2)  # Q4_0 has its own layout


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("type_name", list(TYPES))
def test_packed_matches_reference(isa, type_name, isa_restore):
    """The x8 copy against the emulation (exact integer block dots, fp32 sums), the file-layout kernel (the same
    numbers up to the fp32 summation order), and itself under any thread split."""
    if isa not in SUPPORTED:
        pytest.skip(f"this CPU / build cannot run {isa}")
    ops.set_isa(isa)
    assert ops.kernels_use_q32x8(TYPES[type_name]) == (isa in LANE_ISAS)
    rng = np.random.default_rng(zlib.crc32(f"x8 {isa} {type_name}".encode()))
    for rows, cols in PACKED_SHAPES:
        raw = quantize(rng.standard_normal((rows, cols)).astype(np.float32) + 0.3, type_name)
        w = dequantize(raw, type_name, rows, cols).astype(np.float64)
        bias = rng.standard_normal(rows).astype(np.float32)
        for T in PACKED_TOKENS:
            x = rng.standard_normal((T, cols)).astype(np.float32)
            b = bias if T % 2 else None
            xq = quantized_activations(x)
            scale = (np.abs(xq) @ np.abs(w).T).max()
            plain = ops.matmul(raw, TYPES[type_name], rows, cols, x, b)
            first = None
            for threads in (1, 2, 3):
                got = ops.matmul(raw, TYPES[type_name], rows, cols, x, b, threads=threads, packed=True)
                e = emulation_err(got, raw, type_name, rows, cols, x, b)
                assert e < 1e-6, (isa, type_name, rows, cols, T, threads, e)
                assert np.abs(got - plain).max() < 2e-6 * scale, (isa, type_name, rows, cols, T, threads)
                if first is None:
                    first = got
                else:
                    np.testing.assert_array_equal(got, first, err_msg=f"{isa} {type_name} {rows}x{cols} T={T}")


@pytest.mark.parametrize("type_name", list(TYPES))
def test_packed_token_does_not_depend_on_batch(type_name, isa_restore):
    rng = np.random.default_rng(11)
    rows, cols = 21, 288
    raw = quantize(rng.standard_normal((rows, cols)).astype(np.float32), type_name)
    x = rng.standard_normal((9, cols)).astype(np.float32)
    for isa in SUPPORTED:
        ops.set_isa(isa)
        batch = ops.matmul(raw, TYPES[type_name], rows, cols, x, threads=2, packed=True)
        for t in range(9):
            one = ops.matmul(raw, TYPES[type_name], rows, cols, x[t:t + 1], threads=2, packed=True)
            np.testing.assert_array_equal(one[0], batch[t], err_msg=f"{isa} {type_name} token {t}")
        mid = ops.matmul(raw, TYPES[type_name], rows, cols, x[2:7], threads=3, packed=True)
        np.testing.assert_array_equal(mid, batch[2:7], err_msg=f"{isa} {type_name} tokens 2..6")


@pytest.mark.parametrize("type_name", list(TYPES))
def test_packed_random_bytes_and_extremes(type_name, isa_restore):
    """Every qh / nibble pattern through the reordered high bits, and the largest levels against +-127 activations
    (the int16 bounds of the vpmaddubsw forms), in the x8 layout."""
    rng = np.random.default_rng(5 + zlib.crc32(type_name.encode()))
    rows, cols = 19, 32 * 37
    raw = random_blocks(rng, type_name, rows, cols, scale=0.05)
    x = rng.standard_normal((5, cols)).astype(np.float32)
    exact = emulate(raw, type_name, rows, cols, x, None)
    scale = (np.abs(quantized_activations(x)) @ np.abs(dequantize(raw, type_name, rows, cols)).T.astype(np.float64)).max()
    rows2, cols2 = 11, 96
    ext = np.zeros((rows2, cols2 // 32, {"Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "IQ4_NL": 18}[type_name]), np.uint8)
    ext[..., 0:2] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)
    if type_name in ("Q4_1", "Q5_1"):
        ext[..., 2:4] = np.frombuffer(np.float16(-1.5).tobytes(), np.uint8)
    ext[0::2, :, -16:] = 0xFF
    if type_name in ("Q5_0", "Q5_1"):
        off = 2 if type_name == "Q5_0" else 4
        ext[0::2, :, off:off + 4] = 0xFF
    ext = ext.reshape(rows2, -1)
    x2 = np.stack([np.ones(cols2), -np.ones(cols2), np.where(np.arange(cols2) % 3, 1.0, -1.0)]).astype(np.float32)
    ref2 = ops.matmul(ext, TYPES[type_name], rows2, cols2, x2, ref=True)
    for isa in SUPPORTED:
        ops.set_isa(isa)
        for T in (1, 5):
            got = ops.matmul(raw, TYPES[type_name], rows, cols, x[:T], threads=2, packed=True)
            assert np.abs(got - exact[:T]).max() < 1e-6 * scale, (isa, T)
        assert rel_err(ops.matmul(ext, TYPES[type_name], rows2, cols2, x2, packed=True), ref2) < 1e-6, isa


def test_packed_refuses_other_types():
    with pytest.raises(ValueError, match="packed=True needs"):
        ops.matmul(np.zeros(34 * 2, np.uint8), 1, 2, 17, np.zeros((1, 17), np.float32), packed=True)
