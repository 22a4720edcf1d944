"""K-quant helpers for the tests and benches, in numpy: ggml's block dtypes, random valid blocks, a small
quantizer (round-to-nearest with per-sub-block scales: not llama.cpp's search, but the same bit layouts, so
gguf.quants.dequantize reads its output), and the Q8_K activation rule of the runtime's kernels."""
from __future__ import annotations

import numpy as np

QK_K = 256
TYPE_IDS = {"Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
BLOCK = {
    "Q2_K": np.dtype([("scales", "u1", 16), ("qs", "u1", 64), ("d", "<f2"), ("dmin", "<f2")]),
    "Q3_K": np.dtype([("hmask", "u1", 32), ("qs", "u1", 64), ("scales", "u1", 12), ("d", "<f2")]),
    "Q4_K": np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qs", "u1", 128)]),
    "Q5_K": np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)]),
    "Q6_K": np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2")]),
}
BLOCK_BYTES = {k: v.itemsize for k, v in BLOCK.items()}  # 84, 110, 144, 176, 210
Q8K = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])


def random_blocks(type_name: str, n_blocks: int, rng, scale: float = 0.01) -> np.ndarray:
    """Random bytes everywhere except finite fp16 super-block scales near `scale`: valid blocks (uint8)."""
    b = np.frombuffer(rng.integers(0, 256, n_blocks * BLOCK_BYTES[type_name], dtype=np.uint8).tobytes(),
                      dtype=BLOCK[type_name]).copy()
    b["d"] = (scale * rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16)
    if "dmin" in BLOCK[type_name].names:
        b["dmin"] = (scale * rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16)
    return b.view(np.uint8).reshape(-1)


def _pack_k4_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 scales and 8 mins (0..63) per block -> the 12 bytes of Q4_K / Q5_K."""
    out = np.zeros(sc.shape[:-1] + (12,), np.uint8)
    out[..., 0:4] = (sc[..., 0:4] & 63) | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = (m[..., 0:4] & 63) | ((m[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 15) | ((m[..., 4:8] & 15) << 4)
    return out


def _pack_k3_scales(s: np.ndarray) -> np.ndarray:
    """16 values 0..63 per block -> the 12 bytes of Q3_K."""
    out = np.zeros(s.shape[:-1] + (12,), np.uint8)
    out[..., 0:8] = (s[..., 0:8] & 15) | ((s[..., 8:16] & 15) << 4)
    hi = s >> 4
    out[..., 8:12] = hi[..., 0:4] | (hi[..., 4:8] << 2) | (hi[..., 8:12] << 4) | (hi[..., 12:16] << 6)
    return out


def _pack_bits(q: np.ndarray, bits: int, group: int) -> np.ndarray:
    """q [n, 256] of `bits`-bit values -> bytes where element e sits at shift bits * ((e % group_span) // width)
    of byte (e // group_span) * width + e % width: ggml's 2-bit (width 32, 4 per byte per 128) and 4-bit
    (width 32, 2 per byte per 64) layouts."""
    per = 8 // bits
    n = q.shape[0]
    q = q.reshape(n, -1, per, group)  # [n, spans, per byte, width]
    out = np.zeros((n, q.shape[1], group), np.uint8)
    for s in range(per):
        out |= (q[:, :, s, :].astype(np.uint8) << (bits * s))
    return out.reshape(n, -1)


def quantize(w: np.ndarray, type_name: str) -> np.ndarray:
    """Rows of w (last axis a multiple of 256) -> blocks of type_name as uint8 bytes."""
    x = np.asarray(w, np.float32).reshape(-1, QK_K)
    n = x.shape[0]
    b = np.zeros(n, BLOCK[type_name])
    if type_name in ("Q2_K", "Q4_K", "Q5_K"):
        sub = 16 if type_name == "Q2_K" else 32
        qmax = {"Q2_K": 3, "Q4_K": 15, "Q5_K": 31}[type_name]
        smax = 15 if type_name == "Q2_K" else 63
        xs = x.reshape(n, -1, sub)
        lo = np.minimum(xs.min(-1), 0)                       # min <= 0: stored as -min >= 0
        scale = (xs.max(-1) - lo) / qmax
        d = scale.max(-1) / smax
        dmin = (-lo).max(-1) / smax
        d16, dmin16 = d.astype(np.float16), dmin.astype(np.float16)
        df, dmf = d16.astype(np.float32)[:, None], dmin16.astype(np.float32)[:, None]
        sc = np.clip(np.round(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, smax).astype(np.uint8)
        m = np.clip(np.round(np.divide(-lo, dmf, out=np.zeros_like(lo), where=dmf > 0)), 0, smax).astype(np.uint8)
        step = (df * sc)[..., None]
        q = np.round(np.divide(xs + (dmf * m)[..., None], step, out=np.zeros_like(xs), where=step > 0))
        q = np.clip(q, 0, qmax).astype(np.uint8).reshape(n, QK_K)
        b["d"], b["dmin"] = d16, dmin16
        if type_name == "Q2_K":
            b["scales"] = sc | (m << 4)
            b["qs"] = _pack_bits(q, 2, 32)
        else:
            b["scales"] = _pack_k4_scales(sc, m)
            b["qs"] = _pack_bits(q & 15, 4, 32)
            if type_name == "Q5_K":
                b["qh"] = _pack_bits((q >> 4).reshape(n, 8, 32).transpose(0, 1, 2).reshape(n, QK_K), 1, 32)
        return b.view(np.uint8).reshape(-1)
    # Symmetric types: q in [-4, 3] (Q3_K) or [-32, 31] (Q6_K) per 16, signed 6-bit / int8 scales.
    half, smax = (4, 31) if type_name == "Q3_K" else (32, 127)
    xs = x.reshape(n, 16, 16)
    amax_i = np.abs(xs).argmax(-1)
    mx = np.take_along_axis(xs, amax_i[..., None], -1)[..., 0]
    scale = -mx / half                                       # the largest magnitude maps to -half
    big = np.abs(scale).argmax(-1)
    ref = np.take_along_axis(scale, big[:, None], -1)[:, 0]
    d = (-ref / (smax + 1) if type_name == "Q3_K" else ref / smax)
    d16 = d.astype(np.float16)
    df = d16.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(scale, df, out=np.zeros_like(scale), where=df != 0)), -smax - 1, smax)
    step = (df * sc)[..., None]
    q = np.round(np.divide(xs, step, out=np.zeros_like(xs), where=step != 0))
    q = np.clip(q, -half, half - 1).astype(np.int16).reshape(n, QK_K) + half  # unsigned
    b["d"] = d16
    if type_name == "Q3_K":
        b["scales"] = _pack_k3_scales((sc.astype(np.int16) + 32).astype(np.uint8))
        b["qs"] = _pack_bits((q & 3).astype(np.uint8), 2, 32)
        b["hmask"] = _pack_bits((q >> 2).astype(np.uint8), 1, 32)
    else:
        b["scales"] = sc.astype(np.int8)
        q = q.astype(np.uint8)
        b["ql"] = _pack_bits((q & 15).reshape(n, 2, 128).reshape(n * 2, 128), 4, 64).reshape(n, 128)
        b["qh"] = _pack_bits((q >> 4).reshape(n, 2, 128).reshape(n * 2, 128), 2, 32).reshape(n, 64)
    return b.view(np.uint8).reshape(-1)


def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    """The runtime's Q8_K rule (llama.cpp's quantize_row_q8_K) over rows of 256: BlockQ8_K records."""
    xb = np.asarray(x, np.float32).reshape(-1, QK_K)
    out = np.zeros(xb.shape[0], Q8K)
    idx = np.abs(xb).argmax(-1)                            # first element of largest magnitude
    mx = xb[np.arange(len(xb)), idx]
    nz = mx != 0
    iscale = np.where(nz, np.float32(-127) / np.where(nz, mx, 1), 0).astype(np.float32)
    v = (iscale[:, None] * xb).astype(np.float32)
    q = np.minimum(np.rint(v), 127).astype(np.int8)       # rint: half to even
    q[~nz] = 0
    out["qs"] = q
    out["bsums"] = q.reshape(-1, 16, 16).astype(np.int32).sum(-1)
    out["d"] = np.where(nz, np.float32(1) / np.where(nz, iscale, 1), 0).astype(np.float32)
    return out


def q8_k_activations(x: np.ndarray) -> np.ndarray:
    """What the kernels multiply with: quantize_q8_k(x) dequantized, float64, x's shape."""
    r = quantize_q8_k(x)
    return (r["qs"].astype(np.float64) * r["d"].astype(np.float64)[:, None]).reshape(np.shape(x))
