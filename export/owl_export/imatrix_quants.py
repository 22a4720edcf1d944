"""ggml's quantizers WITH an importance matrix (llama-quantize --imatrix), in numpy, vectorised.

Given `quant_weights` qw (one value per input column: the mean of x^2 that column saw in calibration), ggml
switches from the reference searches of kquants.py to weighted ones (its quantize_row_*_impl paths). Per
weight the importance is
  Q2_K          qw * sqrt(s2 + x^2),  s2 = mean of x^2 over the 256-block
  Q3_K Q4_K Q5_K qw * sqrt(s2 + x^2),  s2 = 2 * mean of x^2 over the 256-block
  Q6_K          qw
  Q4_0 Q4_1 Q5_0 Q5_1  qw * sqrt(s2 + x^2), s2 = mean of x^2 over the whole ROW
and the searches are:
  Q2_K Q4_K Q5_K Q4_1 Q5_1  asymmetric min-search (37 candidates, rmin -0.9, step 0.05, squared error);
                  the K types then fit their 4/6-bit sub-block scales and mins by a weighted search of their
                  own (ggml's make_qp_quants, weights = each sub-block's summed importance)
  Q3_K            symmetric search (19 candidates) per 16-group, the 6-bit scales by the same search
  Q6_K Q4_0 Q5_0  symmetric search (19 candidates) with the importance as weights
Q8_0 has no weighted form (ggml ignores the imatrix). Float32 throughout with sums in the C code's order, so
the bytes equal ggml_quantize_chunk's with the same imatrix (tests/test_imatrix_quants.py).
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT

from .kquants import (_EPS, _F, _f16, _groups, _min_search, _pack_2bit, _pack_scale_min_k4, _quantize_q6_k,
                      _requantize, _safe, _symmetric_search, _ungroup, _unpack_scale_min_k4, _u8, map_block_chunks)


def _seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0, one row after another (the C loop's order, not numpy's pairwise one)."""
    return np.ascontiguousarray(a).sum(axis=0)


def _importance(x: np.ndarray, qw: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """qw * sqrt(sigma2 + x^2), sigma2 broadcast per block (rows of x)."""
    return qw * np.sqrt(sigma2[:, None] + x * x)


def _qp_search(x: np.ndarray, w: np.ndarray, nmax: int):
    """Non-negative values x (columns = groups) -> L in [0, nmax] and scale with x ~ scale*L, minimising the
    w-weighted squared error: 9 candidate scales (nmax + 0.1k)/max, then up to 5 passes moving single levels
    (ggml's make_qp_quants). L is kept as the C code's uint8 would hold it, so even a negative x (never met
    in practice) gives its bytes."""
    mx = np.maximum(x.max(axis=0), 0)
    zero = mx < _EPS
    mxs = _safe(mx, zero)
    iscale = _F(nmax) / mxs
    L0 = np.mod(np.rint(iscale * x), 256)
    scale = _F(1) / iscale
    diff = x - scale * L0
    best = _seq_sum(w * diff * diff)
    for k in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_k = (_F(0.1) * _F(k) + _F(nmax)) / mxs
        scale_k = _F(1) / iscale_k
        diff = x - scale_k * np.minimum(np.rint(iscale_k * x), nmax)
        mse = _seq_sum(w * diff * diff)
        better = mse < best
        best = np.where(better, mse, best)
        iscale = np.where(better, iscale_k, iscale)
    l = np.minimum(np.rint(iscale * x), nmax)
    sumlx = _seq_sum(w * x * l)
    suml2 = _seq_sum(w * l * l)
    L = np.mod(l, 256)
    for _ in range(5):                 # a pass that changes nothing changes nothing later: run all five
        for i in range(x.shape[0]):
            xi, wi, li = x[i], w[i], L[i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            ok = (slx > 0) & (sl2 > 0)
            new = np.minimum(np.rint(xi * sl2 / _safe(slx, ~ok)), nmax)
            slx_n = slx + wi * xi * new
            sl2_n = sl2 + wi * new * new
            take = ok & (new != li) & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n)
            L[i] = np.where(take, np.mod(new, 256), li)
            sumlx = np.where(take, slx_n, sumlx)
            suml2 = np.where(take, sl2_n, suml2)
    scale = np.where(suml2 > 0, sumlx / _safe(suml2, suml2 <= 0), _F(0))
    L[:, zero] = 0
    return np.where(zero, _F(0), scale).astype(np.float32), L


def _block_sigma2(x: np.ndarray, factor: int) -> np.ndarray:
    """factor * mean of x^2 over each 256-block (rows of x), summed in order."""
    g = _groups(x, x.shape[1])
    return _F(factor) * _seq_sum(g * g) / _F(x.shape[1])


# ------------------------------------------------------------------------------------------- K types
# Each takes float32 blocks x (nb, 256) and the imatrix values for them qw (nb, 256).


def _q2_k(x, qw):
    nb = x.shape[0]
    w = _importance(x, qw, _block_sigma2(x, 1))
    xs, ws = _groups(x, 16), _groups(w, 16)
    scales, mins, L = _min_search(xs, ws, 3, -0.9, 0.05, 36, False)
    sw = np.ascontiguousarray(_seq_sum(ws).reshape(nb, 16).T)
    dm, Ls = _qp_search(np.ascontiguousarray(scales.reshape(nb, 16).T), sw, 15)
    mm, Lm = _qp_search(np.ascontiguousarray(mins.reshape(nb, 16).T), sw, 15)
    sc = (Ls.T.astype(np.uint8) | (Lm.T.astype(np.uint8) << 4))
    d, dmin = _f16(dm), _f16(mm)
    dl = d.astype(np.float32)[:, None] * (sc & 0xF)
    ml = dmin.astype(np.float32)[:, None] * (sc >> 4)
    L = _ungroup(L, nb, 16)
    L = np.where((dl != 0)[..., None], _requantize(x.reshape(nb, 16, 16), dl, ml, 3), L)
    return np.concatenate([sc, _pack_2bit(L.reshape(nb, 256)), _u8(d), _u8(dmin)], axis=1)


def _q3_k(x, qw):
    nb = x.shape[0]
    w = _importance(x, qw, _block_sigma2(x, 2))
    ws = _groups(w, 16)
    scales, L = _symmetric_search(_groups(x, 16), 4, ws)
    sw = np.ascontiguousarray(_seq_sum(ws).reshape(nb, 16).T)
    d_block, Ls = _symmetric_search(np.ascontiguousarray(scales.reshape(nb, 16).T), 32, sw)
    l = Ls.T.astype(np.uint8)
    packed = np.empty((nb, 12), np.uint8)
    packed[:, 0:8] = (l[:, :8] & 0xF) | ((l[:, 8:] & 0xF) << 4)
    hi = l >> 4
    packed[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    d = _f16(d_block)
    dl = d.astype(np.float32)[:, None] * (l.astype(np.float32) - 32)
    fresh = np.clip(np.rint(x.reshape(nb, 16, 16) / _safe(dl, dl == 0)[..., None]), -4, 3) + 4
    L = np.where((dl != 0)[..., None], fresh, _ungroup(L, nb, 16)).reshape(nb, 8, 32).astype(np.uint8)
    high = L > 3
    hmask = np.zeros((nb, 32), np.uint8)
    for b in range(8):
        hmask |= high[:, b, :].astype(np.uint8) << b
    L = np.where(high, L - 4, L)
    return np.concatenate([hmask, _pack_2bit(L.reshape(nb, 256)), packed, _u8(d)], axis=1)


def _k4(x, qw, nmax):
    nb = x.shape[0]
    w = _importance(x, qw, _block_sigma2(x, 2))
    xs, ws = _groups(x, 32), _groups(w, 32)
    scales, mins, L = _min_search(xs, ws, nmax, -0.9, 0.05, 36, False)
    sw = np.ascontiguousarray(_seq_sum(ws).reshape(nb, 8).T)
    d_block, Ls = _qp_search(np.ascontiguousarray(scales.reshape(nb, 8).T), sw, 63)
    m_block, Lm = _qp_search(np.ascontiguousarray(mins.reshape(nb, 8).T), sw, 63)
    Ls, Lm = Ls.T.astype(np.uint8), Lm.T.astype(np.uint8)
    if nmax == 31:                                      # Q5_K clamps, Q4_K does not (nor needs to)
        Ls, Lm = np.minimum(Ls, 63), np.minimum(Lm, 63)
    packed = _pack_scale_min_k4(Ls, Lm)
    d, dmin = _f16(d_block), _f16(m_block)
    sc, mn = _unpack_scale_min_k4(packed)              # what a decoder reads back
    dl = d.astype(np.float32)[:, None] * sc
    ml = dmin.astype(np.float32)[:, None] * mn
    L = np.where((dl != 0)[..., None], _requantize(x.reshape(nb, 8, 32), dl, ml, nmax), _ungroup(L, nb, 8))
    return d, dmin, packed, L.astype(np.uint8)


def _q4_k(x, qw):
    d, dmin, sc, L = _k4(x, qw, 15)
    L = L.reshape(-1, 4, 2, 32)
    return np.concatenate([_u8(d), _u8(dmin), sc, (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)], axis=1)


def _q5_k(x, qw):
    d, dmin, sc, L = _k4(x, qw, 31)
    L = L.reshape(-1, 4, 2, 32)
    qs = ((L[:, :, 0] & 15) | ((L[:, :, 1] & 15) << 4)).reshape(-1, 128)
    qh = np.zeros((L.shape[0], 32), np.uint8)
    for k in range(4):
        qh |= ((L[:, k, 0] >> 4) << (2 * k)) | ((L[:, k, 1] >> 4) << (2 * k + 1))
    return np.concatenate([_u8(d), _u8(dmin), sc, qh, qs], axis=1)


def _q6_k(x, qw):
    return _quantize_q6_k(x, qw)


# ------------------------------------------------------------------------------------------- 32-blocks
# These take x (nb, 32) and the importance w (nb, 32) already formed (their sigma2 is the whole row's).


def _nibbles(L):
    L = L.astype(np.uint8)
    return (L[:, :16] & 15) | ((L[:, 16:] & 15) << 4)


def _fifth_bits(L):
    """bit j of the little-endian uint32 qh: the fifth bit of weight j."""
    bits = (L.astype(np.uint32) >> 4) & 1
    qh = (bits << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return qh.astype("<u4").view(np.uint8).reshape(-1, 4)


def _q4_0(x, w):
    d, L = _symmetric_search(_groups(x, 32), 8, _groups(w, 32))
    return np.concatenate([_u8(_f16(d)), _nibbles(L.T)], axis=1)


def _q5_0(x, w):
    d, L = _symmetric_search(_groups(x, 32), 16, _groups(w, 32))
    return np.concatenate([_u8(_f16(d)), _fifth_bits(L.T), _nibbles(L.T)], axis=1)


def _asym32(x, w, nmax):
    scale, the_min, L = _min_search(_groups(x, 32), _groups(w, 32), nmax, -0.9, 0.05, 36, False)
    return _u8(_f16(scale)), _u8(_f16(-the_min)), L.T


def _q4_1(x, w):
    d, m, L = _asym32(x, w, 15)
    return np.concatenate([d, m, _nibbles(L)], axis=1)


def _q5_1(x, w):
    d, m, L = _asym32(x, w, 31)
    return np.concatenate([d, m, _fifth_bits(L), _nibbles(L)], axis=1)


_K = {QT.Q2_K: _q2_k, QT.Q3_K: _q3_k, QT.Q4_K: _q4_k, QT.Q5_K: _q5_k, QT.Q6_K: _q6_k}
_ROW = {QT.Q4_0: _q4_0, QT.Q4_1: _q4_1, QT.Q5_0: _q5_0, QT.Q5_1: _q5_1}
TYPES = tuple(_K) + tuple(_ROW)


def quantize(data: np.ndarray, qtype: QT, quant_weights: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """float array (..., cols) and the imatrix's cols values -> uint8 (..., cols // block * type_size), the
    bytes ggml_quantize_chunk writes when given that imatrix."""
    if qtype not in TYPES:
        raise ValueError(f"no imatrix quantizer for {qtype.name}; there is one for {', '.join(t.name for t in TYPES)}")
    block, size = GGML_QUANT_SIZES[qtype]
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 0 or data.shape[-1] % block:
        raise ValueError(f"{qtype.name} needs rows whose length is a multiple of {block}; got shape {data.shape}")
    cols = data.shape[-1]
    qw = np.asarray(quant_weights, dtype=np.float32)
    if qw.shape != (cols,):
        raise ValueError(f"the importance matrix for a {cols}-column tensor needs {cols} values; got shape {qw.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"cannot quantize to {qtype.name}: the tensor has NaN or infinite values")
    if not np.isfinite(qw).all() or (qw < 0).any():
        raise ValueError("the importance matrix has negative, NaN or infinite values")
    rows = np.ascontiguousarray(data).reshape(-1, cols)
    per_row = cols // block
    if qtype in _K:
        fn, second = _K[qtype], np.broadcast_to(qw.reshape(1, per_row, block), (rows.shape[0], per_row, block))
    else:
        # sum of x^2 along each whole row in order (cumsum accumulates sequentially, as the C loop)
        sigma2 = np.cumsum(rows * rows, axis=1, dtype=np.float32)[:, -1] / _F(cols)
        fn, second = _ROW[qtype], qw[None, :] * np.sqrt(sigma2[:, None] + rows * rows)
    blocks = rows.reshape(-1, block)
    second = np.ascontiguousarray(second).reshape(-1, block)
    out = np.empty((blocks.shape[0], size), np.uint8)
    map_block_chunks(blocks.shape[0], lambda s, e: fn(blocks[s:e], second[s:e]), out, threads)
    return out.reshape(*data.shape[:-1], cols // block * size)
