"""The CUDA backend's K-quant block code (src/cuda/kquant_block.h), compiled for the host into
_testing.cuda_kquant, on any machine: the device layout written at upload, the dequantization that get_rows and
the GEMM's tile loader run (bit-identical to the CPU's dequantize_row), and the sub-block dot products of the
matrix-vector kernel, walked unit by unit as that kernel walks a row.

The matrix-vector kernel multiplies the weights' integer quants with the activations rounded to int8 blocks of 32
(quantize_x_kernel, the Q4_0 / Q8_0 rounding; one block per 32-element sub-block, so its {d, sum} pair enters
once per sub-block) rather than Q8_K blocks of 256: finer activation scales, no new quantizer on the device, and
each sub-block's product is an exact integer sum. With unit scales (d = dmin = 1, activation scale 1) the header's
result is that integer, so it must equal the reference exactly."""
import numpy as np
import pytest

from owl_cpp import _testing
from kquant_blocks import BLOCK, BLOCK_BYTES, QK_K, TYPE_IDS, quantize, random_blocks

ops = _testing.ops
kq = _testing.cuda_kquant
TYPES = ["Q4_K", "Q5_K", "Q6_K"]
SHAPES = [(1, 256), (3, 512), (5, 768), (2, 2816)]  # rows x cols: one super-block, odd counts, 11 super-blocks


def blocks(type_name, rows, cols, rng, special=True):
    """Random valid blocks, with some super-block scales set to awkward values (negative, subnormal, zero, the
    largest fp16) so the fp16 decode and the rounding order are exercised."""
    raw = random_blocks(type_name, rows * cols // QK_K, rng)
    if special:
        b = raw.view(BLOCK[type_name])
        vals = np.array([-0.02, 6e-8, 0.0, 65504.0, 3e-5], np.float16)
        b["d"][: len(vals)] = vals[: len(b)]
        if "dmin" in BLOCK[type_name].names:
            b["dmin"][1: 1 + len(vals)] = vals[: max(len(b) - 1, 0)]
    return raw


def file_dequantize(raw, type_name, rows, cols):
    row_bytes = cols // QK_K * BLOCK_BYTES[type_name]
    return np.stack([ops.dequantize(raw[r * row_bytes:(r + 1) * row_bytes], TYPE_IDS[type_name], cols)
                     for r in range(rows)])


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_device_layout_dequantizes_bit_identically(type_name, rows, cols):
    rng = np.random.default_rng(rows * 1000 + cols)
    raw = blocks(type_name, rows, cols, rng)
    dev = kq.pack(raw, TYPE_IDS[type_name], rows, cols)
    nb = cols // QK_K
    row_bytes = kq.row_bytes(TYPE_IDS[type_name], cols)
    assert row_bytes % 16 == 0 and dev.size == rows * row_bytes
    if type_name == "Q6_K":  # 208-byte blocks, then the d's, zero-padded to 16 bytes
        assert row_bytes == nb * 208 + (2 * nb + 15) // 16 * 16
        pad = dev.reshape(rows, row_bytes)[:, nb * 210:]
        assert not pad.any()
    else:  # the file's bytes
        np.testing.assert_array_equal(dev, raw)
    got = kq.dequantize(dev, TYPE_IDS[type_name], rows, cols)
    want = file_dequantize(raw, type_name, rows, cols)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # bit for bit, signed zeros included


@pytest.mark.parametrize("type_name", TYPES)
def test_quantized_weights_round_trip(type_name):
    """Blocks from a quantizer of real-looking weights (small scales, most quants mid-range), not just random bytes."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((7, 1024)).astype(np.float32) * 0.05
    raw = quantize(w, type_name)
    dev = kq.pack(raw, TYPE_IDS[type_name], 7, 1024)
    got = kq.dequantize(dev, TYPE_IDS[type_name], 7, 1024)
    want = file_dequantize(raw, type_name, 7, 1024)
    np.testing.assert_array_equal(got, want)
    assert np.abs(got - w).max() < 0.05  # and they are the weights, roughly (a wrong decode is off by O(0.1))


def unit_scale_blocks(type_name, n, rng):
    raw = random_blocks(type_name, n, rng)
    b = raw.view(BLOCK[type_name])
    b["d"] = 1.0
    if "dmin" in BLOCK[type_name].names:
        b["dmin"] = 1.0
    return raw


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("cols", [256, 1280])
def test_sub_dots_are_exact_integer_sums(type_name, cols):
    """d = dmin = 1 and activation scales 1: each sub-block's result is sum(q_w * sc - m) * q_x over its 32
    elements, an integer the header must return exactly; random activations, then the extremes (+-127 everywhere,
    and against the largest quants) where an int16 or float24 overflow would show."""
    rng = np.random.default_rng(cols)
    raw = unit_scale_blocks(type_name, cols // QK_K, rng)
    dev = kq.pack(raw, TYPE_IDS[type_name], 1, cols)
    w = file_dequantize(raw, type_name, 1, cols)[0].astype(np.float64)  # sc * q - m: integers
    assert np.array_equal(w, np.round(w))
    ones = np.ones(cols // 32, np.float32)
    for xq in (rng.integers(-127, 128, cols), np.full(cols, 127), np.full(cols, -127),
               np.where(w > 0, 127, -127), np.where(w > 0, -127, 127)):
        xq = xq.astype(np.int8)
        got = kq.sub_dots(dev, TYPE_IDS[type_name], cols, xq, ones)
        want = (w * xq).reshape(-1, 32).sum(-1)
        np.testing.assert_array_equal(got.astype(np.float64), want)


def integer_parts(raw, type_name, cols):
    """The weights as d * a + dmin * b exactly, with a = sc * q and b = -m (integers) and d, dmin per element:
    the CPU dequantizer run on copies of the blocks with (d, dmin) set to (1, 0) and (0, 1)."""
    def with_scales(d, dmin):
        c = raw.copy()
        v = c.view(BLOCK[type_name])
        v["d"] = d
        if "dmin" in BLOCK[type_name].names:
            v["dmin"] = dmin
        return file_dequantize(c, type_name, 1, cols)[0].astype(np.float64)
    v = raw.view(BLOCK[type_name])
    d = np.repeat(v["d"].astype(np.float64), QK_K)
    has_min = "dmin" in BLOCK[type_name].names
    dmin = np.repeat(v["dmin"].astype(np.float64), QK_K) if has_min else np.zeros(cols)
    return d, with_scales(1, 0), dmin, with_scales(0, 1) if has_min else np.zeros(cols)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("cols", [256, 2816])
def test_sub_dots_with_scales_match_float64(type_name, cols):
    """Real scales: each sub-block's result against the exact float64 sum of (d * sc * q - dmin * m) * q_x * d_x,
    within 1e-6 of the sum of the two parts' magnitudes (the header rounds d * d_x and dmin * d_x once each and
    adds them through two FMAs: a few 2^-24). One wrong quant or scale moves a sub-block by ~1/32 of that."""
    rng = np.random.default_rng(cols + 1)
    raw = blocks(type_name, 1, cols, rng, special=False)
    dev = kq.pack(raw, TYPE_IDS[type_name], 1, cols)
    d, a, dmin, b = integer_parts(raw, type_name, cols)
    w = file_dequantize(raw, type_name, 1, cols)[0].astype(np.float64)
    assert np.abs(d * a + dmin * b - w).max() <= 1e-6 * np.abs(w).max()  # the parts are the weights
    xq = rng.integers(-127, 128, cols).astype(np.int8)
    xd = (rng.uniform(0.5, 2.0, cols // 32) * 1e-2).astype(np.float32)
    x = xq.astype(np.float64) * np.repeat(xd.astype(np.float64), 32)
    got = kq.sub_dots(dev, TYPE_IDS[type_name], cols, xq, xd).astype(np.float64)
    want = ((d * a + dmin * b) * x).reshape(-1, 32).sum(-1)
    scale = ((np.abs(d * a) + np.abs(dmin * b)) * np.abs(x)).reshape(-1, 32).sum(-1)
    err = np.abs(got - want) / scale
    assert err.max() < 1e-6, err.max()


def test_bad_arguments_are_value_errors():
    raw = random_blocks("Q4_K", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="K-quant"):
        kq.pack(raw, TYPE_IDS["Q3_K"], 1, 256)
    with pytest.raises(ValueError, match="multiple of 256"):
        kq.pack(raw, TYPE_IDS["Q4_K"], 1, 128)
    with pytest.raises(ValueError, match="wrong size"):
        kq.pack(raw, TYPE_IDS["Q4_K"], 2, 256)
    with pytest.raises(ValueError, match="overflows"):  # rows x row bytes past int64: refused, not wrapped
        kq.pack(raw, TYPE_IDS["Q4_K"], 2**62, 256)
    with pytest.raises(ValueError, match="overflows"):
        kq.dequantize(raw, TYPE_IDS["Q4_K"], 2**62, 256)
    with pytest.raises(ValueError, match="rows must be positive"):
        kq.pack(raw, TYPE_IDS["Q4_K"], 0, 256)
    with pytest.raises(ValueError, match="wrong size"):
        kq.dequantize(raw[:-1], TYPE_IDS["Q4_K"], 1, 256)
    with pytest.raises(ValueError, match="wrong size"):
        kq.sub_dots(raw, TYPE_IDS["Q4_K"], 256, np.zeros(255, np.int8), np.ones(8, np.float32))
