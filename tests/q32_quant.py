"""Blocks of Q4_1 / Q5_0 / Q5_1 / IQ4_NL for tests: gguf.quants where it can quantize, a plain numpy IQ4_NL
quantizer (gguf 0.19 only dequantizes it), and blocks of random bytes."""
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import quants

TYPES = {"Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "IQ4_NL": 20}
BLOCK_BYTES = {"Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "IQ4_NL": 18}
SCALE_FIELDS = {"Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "IQ4_NL": (0,)}  # byte offsets of fp16 d (and m)
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


def quantize_iq4_nl(w):
    """Rows of a multiple of 32 -> IQ4_NL blocks [rows, nb * 18]: d = (the largest-magnitude value) / -127, each
    element the nearest table level (a plain quantizer, not ggml's search; any valid blocks do for the tests)."""
    rows, cols = w.shape
    blocks = w.reshape(rows, cols // 32, 32).astype(np.float32)
    imax = np.abs(blocks).argmax(-1)[..., None]
    d = (np.take_along_axis(blocks, imax, -1) / np.float32(-127)).astype(np.float16)
    df = d.astype(np.float32)
    safe = np.where(df == 0, np.float32(1), df)
    q = np.abs(blocks[..., None] / safe[..., None] - IQ4NL_VALUES).argmin(-1).astype(np.uint8)
    qs = q[..., :16] | (q[..., 16:] << 4)
    return np.concatenate([d.view(np.uint8).reshape(rows, -1, 2), qs], -1).reshape(rows, -1)


def quantize(w, type_name):
    """float32 [rows, cols] -> the type's blocks as uint8 [rows, row_bytes]."""
    if type_name == "IQ4_NL":
        return quantize_iq4_nl(w)
    return np.asarray(quants.quantize(np.asarray(w, np.float32), QT[type_name]), np.uint8)


def dequantize(raw, type_name, rows, cols):
    return quants.dequantize(np.asarray(raw, np.uint8).reshape(rows, -1), QT[type_name]).reshape(rows, cols)


def random_blocks(rng, type_name, rows, cols, scale=None):
    """Random bytes for every field; with `scale`, the fp16 scale (and minimum) fields set to finite values of about
    that size (so every quant bit pattern is exercised with sane numbers)."""
    nb = cols // 32
    raw = rng.integers(0, 256, (rows, nb, BLOCK_BYTES[type_name]), dtype=np.uint8)
    if scale is not None:
        for off in SCALE_FIELDS[type_name]:
            v = (scale * rng.uniform(-1, 1, (rows, nb))).astype(np.float16)
            raw[..., off:off + 2] = v.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, -1)
