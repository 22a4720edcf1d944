"""Our own numpy quantizers for ggml's K-quant block types (Q2_K..Q6_K) and IQ4_NL, and their decoders.

gguf-py decodes these types but cannot encode them, so the exporter writes the blocks itself. The layouts
are ggml's (one super-block of 256 weights per block; IQ4_NL: 32), so gguf.quants.dequantize and the
runtime read them. The scale searches follow the rules of ggml's reference quantizer without an importance
matrix (what llama-quantize does when given no imatrix), run on every sub-block of a tensor at once:

  Q2_K  16 x 16 weights, 2-bit L in [0,3],  4-bit scale and min per 16 (min-search, weights |x|, abs error)
  Q3_K  16 x 16,         3-bit signed,      6-bit signed scale per 16 (greedy per-weight refinement, w = x^2)
  Q4_K   8 x 32,         4-bit L in [0,15], 6-bit scale and min per 32 (min-search, w = rms + |x|)
  Q5_K   8 x 32,         5-bit L in [0,31], as Q4_K
  Q6_K  16 x 16,         6-bit signed,      8-bit signed scale per 16 (scale search over 19 candidates, w = x^2)
  IQ4_NL     32,         4-bit index into a fixed non-linear table, fp16 scale (15 candidates, w = x^2)

Everything is float32 like the C code, and rounding is round-half-to-even like ggml's nearest_int. The work
is split over row chunks run on a thread pool (numpy releases the GIL), so a 7B export takes minutes.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT

QK_K = 256
_EPS = np.float32(1e-15)           # ggml's GROUP_MAX_EPS: a group with |x| below this is all zero
_F = np.float32
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)

# ------------------------------------------------------------------------------------------- helpers


def _f16(a: np.ndarray) -> np.ndarray:
    """a rounded to fp16 (the stored super-block scale), as float16."""
    return np.asarray(a, np.float32).astype(np.float16)


def _u8(h: np.ndarray) -> np.ndarray:
    """fp16 array (n,) -> its little-endian bytes (n, 2)."""
    return np.ascontiguousarray(h.astype("<f2")).view(np.uint8).reshape(-1, 2)


def _safe(a: np.ndarray, bad: np.ndarray) -> np.ndarray:
    return np.where(bad, _F(1), a)


def _signed_absmax(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Along axis: the value of largest magnitude (its first occurrence, keeping the sign) and that magnitude."""
    i = np.expand_dims(np.abs(x).argmax(axis=axis), axis)
    v = np.take_along_axis(x, i, axis=axis).squeeze(axis)
    return v, np.abs(v)


# The searches below take groups as COLUMNS: x is (group size, number of groups). Per-group scalars then
# broadcast along the long axis and sums over a group add whole rows, which numpy does at full speed (and in
# the C code's order); the callers transpose.


def _min_search(x, w, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """Asymmetric quantization x ~ scale*L - m (L in [0, nmax], m >= 0) of each group, searching nstep+1
    candidate inverse scales around nmax/(max-min) and taking the weighted least-squares scale and min of each
    candidate's rounding (ggml's make_qkx2_quants). Returns scale, m and L (float32, integral)."""
    mn = np.minimum(x.min(axis=0), 0)
    mx = x.max(axis=0)
    sum_w = w.sum(axis=0)
    sum_x = (w * x).sum(axis=0)
    flat = mx == mn

    def levels(iscale):
        l = x - mn
        l *= iscale
        np.rint(l, out=l)
        return np.clip(l, 0, nmax, out=l)

    def err(scale, minv, L):
        diff = scale * L + minv - x         # summed like the C code, so near-ties break the same way
        return (w * (np.abs(diff) if use_mad else diff * diff)).sum(axis=0)

    def sums(l):
        wl = w * l
        return wl.sum(axis=0), (wl * l).sum(axis=0), (wl * x).sum(axis=0)

    iscale = _F(nmax) / _safe(mx - mn, flat)
    L = levels(iscale)
    scale = _F(1) / iscale
    best = err(scale, mn, L)
    # a candidate's levels follow from its inverse scale and the min it was centred on: keep those two and
    # round once at the end, instead of copying the best levels around at every step
    best_iscale, best_base = iscale, mn
    for step in range(nstep + 1):
        # like the C code, later candidates are centred on the best min found so far
        iscale = (_F(rmin) + _F(rdelta) * _F(step) + _F(nmax)) / _safe(mx - mn, mx == mn)
        l = levels(iscale)
        sl, sl2, sxl = sums(l)
        D = sum_w * sl2 - sl * sl
        ok = D > 0
        Ds = _safe(D, ~ok)
        this_scale = (sum_w * sxl - sum_x * sl) / Ds
        this_min = (sl2 * sum_x - sl * sxl) / Ds
        pos = this_min > 0                      # a positive offset is not representable: refit without it
        this_min = np.where(pos, _F(0), this_min)
        this_scale = np.where(pos, sxl / _safe(sl2, sl2 == 0), this_scale)
        cur = err(this_scale, this_min, l)
        better = ok & (cur < best)
        best = np.where(better, cur, best)
        best_iscale = np.where(better, iscale, best_iscale)
        best_base = np.where(better, mn, best_base)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L = x - best_base
    L *= best_iscale
    np.rint(L, out=L)
    np.clip(L, 0, nmax, out=L)
    L *= ~flat
    return np.where(flat, _F(0), scale).astype(np.float32), (-mn).astype(np.float32), L


def _symmetric_search(x, nmax: int, w=None):
    """Symmetric quantization x ~ scale*l, l in [-nmax, nmax-1], with weights w (default x^2): the
    round-to-nearest scale nmax/max and 18 neighbours (nmax +- 0.1k)/max, each refitted by least squares; the
    best fit wins (ggml's make_qx_quants, rmse_type 1). Returns scale and L = l + nmax."""
    v, amax = _signed_absmax(x, axis=0)
    zero = amax < _EPS
    v = _safe(v, zero)
    w = x * x if w is None else w
    wx = w * x

    def attempt(iscale):
        l = x * iscale
        np.rint(l, out=l)
        np.clip(l, -nmax, nmax - 1, out=l)
        return l, (wx * l).sum(axis=0), (w * l * l).sum(axis=0)

    best_iscale = _F(-nmax) / v
    _, sumlx, suml2 = attempt(best_iscale)
    scale = np.where(suml2 != 0, sumlx / _safe(suml2, suml2 == 0), _F(0))
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        iscale = -(_F(nmax) + _F(0.1) * _F(k)) / v
        _, slx, sl2 = attempt(iscale)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        scale = np.where(better, slx / _safe(sl2, sl2 <= 0), scale)
        best = np.where(better, scale * slx, best)
        best_iscale = np.where(better, iscale, best_iscale)
    L = attempt(best_iscale)[0]                          # the winner's levels, rounded once
    L += nmax
    L *= ~zero
    return np.where(zero, _F(0), scale).astype(np.float32), L


def _q3_search(x, nmax: int = 4, passes: int = 5):
    """Symmetric 3-bit quantization with weights x^2: round at nmax/max, then up to 5 passes that move each
    weight to the level that best fits the others' least-squares scale when that lowers the weighted error
    (ggml's make_q3_quants). A pass that changes nothing changes nothing the next time, so all groups run all
    passes. Returns scale and L = l + nmax."""
    v, amax = _signed_absmax(x, axis=0)
    zero = amax < _EPS
    w = x * x
    L = np.clip(np.rint((_F(-nmax) / _safe(v, zero)) * x), -nmax, nmax - 1)
    sumlx = (w * x * L).sum(axis=0)
    suml2 = (w * L * L).sum(axis=0)
    for _ in range(passes):
        for i in range(x.shape[0]):
            xi, wi, li = x[i], w[i], L[i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            pos = slx > 0
            new = np.clip(np.rint(xi * sl2 / _safe(slx, ~pos)), -nmax, nmax - 1)
            slx_n = slx + wi * xi * new
            sl2_n = sl2 + wi * new * new
            take = pos & (new != li) & (sl2_n > 0) & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n)
            L[i] = np.where(take, new, li)
            sumlx = np.where(take, slx_n, sumlx)
            suml2 = np.where(take, sl2_n, suml2)
    scale = np.where(suml2 > 0, sumlx / _safe(suml2, suml2 <= 0), _F(0))
    L += nmax
    L[:, zero] = 0
    return np.where(zero, _F(0), scale).astype(np.float32), L


def _groups(x: np.ndarray, size: int) -> np.ndarray:
    """(nb, block) -> (size, nb * block // size): each group of `size` consecutive weights as a column."""
    return np.ascontiguousarray(x.reshape(-1, size).T)


def _ungroup(L: np.ndarray, nb: int, n_groups: int) -> np.ndarray:
    """Inverse of _groups, as (nb, n_groups, size)."""
    return L.T.reshape(nb, n_groups, -1)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) values in [0,3] -> (nb, 64): byte 32h+l holds L[128h + 32k + l] in bits 2k..2k+1."""
    L = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins (nb, 8) -> ggml's 12-byte packing of Q4_K / Q5_K."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.empty((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _unpack_scale_min_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = q.astype(np.uint8)
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def _requantize(x, d, m, nmax):
    """Final levels from the stored (rounded) scales: clip(round((x + m)/d)), where d != 0."""
    return np.clip(np.rint((x + m[..., None]) / _safe(d, d == 0)[..., None]), 0, nmax)


# ------------------------------------------------------------------------------------------- quantizers
# Each takes float32 (nb, block) and returns uint8 (nb, type_size).


def _quantize_q2_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    xs = _groups(x, 16)
    scales, mins, L = _min_search(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
    scales, mins, L = scales.reshape(nb, 16), mins.reshape(nb, 16), _ungroup(L, nb, 16)
    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    ls = np.clip(np.rint((_F(15) / _safe(max_scale, max_scale <= 0))[:, None] * scales), 0, 15)
    lm = np.clip(np.rint((_F(15) / _safe(max_min, max_min <= 0))[:, None] * mins), 0, 15)
    ls = np.where((max_scale > 0)[:, None], ls, 0)
    lm = np.where((max_min > 0)[:, None], lm, 0)
    d = _f16(np.where(max_scale > 0, max_scale / _F(15), 0))
    dmin = _f16(np.where(max_min > 0, max_min / _F(15), 0))
    dl = d.astype(np.float32)[:, None] * ls
    ml = dmin.astype(np.float32)[:, None] * lm
    L = np.where((dl != 0)[..., None], _requantize(x.reshape(nb, 16, 16), dl, ml, 3), L)
    sc = (ls.astype(np.uint8) | (lm.astype(np.uint8) << 4))
    return np.concatenate([sc, _pack_2bit(L.reshape(nb, 256)), _u8(d), _u8(dmin)], axis=1)


def _quantize_q3_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    scales, L = _q3_search(_groups(x, 16))
    scales, L = scales.reshape(nb, 16), _ungroup(L, nb, 16)
    max_scale, _ = _signed_absmax(scales)
    has = max_scale != 0
    iscale = _F(-32) / _safe(max_scale, ~has)
    l = (np.clip(np.rint(iscale[:, None] * scales), -32, 31) + 32).astype(np.uint8)
    l = np.where(has[:, None], l, np.uint8(0))
    d = _f16(np.where(has, _F(1) / iscale, 0))
    packed = np.empty((nb, 12), np.uint8)
    packed[:, 0:8] = (l[:, :8] & 0xF) | ((l[:, 8:] & 0xF) << 4)
    hi = l >> 4
    packed[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    dl = d.astype(np.float32)[:, None] * (l.astype(np.float32) - 32)
    fresh = np.clip(np.rint(x.reshape(nb, 16, 16) / _safe(dl, dl == 0)[..., None]), -4, 3) + 4
    L = np.where((dl != 0)[..., None], fresh, L).reshape(nb, 8, 32).astype(np.uint8)
    high = L > 3                                    # bit b of hmask[m] is the high bit of weight 32b + m
    hmask = np.zeros((nb, 32), np.uint8)
    for b in range(8):
        hmask |= high[:, b, :].astype(np.uint8) << b
    L = np.where(high, L - 4, L)
    return np.concatenate([hmask, _pack_2bit(L.reshape(nb, 256)), packed, _u8(d)], axis=1)


def _k4_scales(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Q4_K / Q5_K's common part: search each 32-group, store 6-bit scales/mins under fp16 d and dmin,
    requantize with the stored values. Returns d, dmin, 12-byte scales, L (nb, 8, 32)."""
    nb = x.shape[0]
    xs = _groups(x, 32)
    av = np.sqrt((xs * xs).sum(axis=0) / _F(32))
    scales, mins, L = _min_search(xs, av + np.abs(xs), nmax, rmin, 0.1, nstep, False)
    scales, mins, L = scales.reshape(nb, 8), mins.reshape(nb, 8), _ungroup(L, nb, 8)
    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    inv_s = np.where(max_scale > 0, _F(63) / _safe(max_scale, max_scale <= 0), 0)
    inv_m = np.where(max_min > 0, _F(63) / _safe(max_min, max_min <= 0), 0)
    ls = np.clip(np.rint(inv_s[:, None] * scales), 0, 63)
    lm = np.clip(np.rint(inv_m[:, None] * mins), 0, 63)
    d, dmin = _f16(max_scale / _F(63)), _f16(max_min / _F(63))
    dl = d.astype(np.float32)[:, None] * ls
    ml = dmin.astype(np.float32)[:, None] * lm
    L = np.where((dl != 0)[..., None], _requantize(x.reshape(nb, 8, 32), dl, ml, nmax), L)
    return d, dmin, _pack_scale_min_k4(ls, lm), L.astype(np.uint8)


def _quantize_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, L = _k4_scales(x, 15, -1.0, 20)
    L = L.reshape(-1, 4, 2, 32)                     # group pairs (2k, 2k+1) share 32 bytes: low, high nibble
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_u8(d), _u8(dmin), sc, qs], axis=1)


def _quantize_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, L = _k4_scales(x, 31, -0.5, 15)
    L = L.reshape(-1, 4, 2, 32)
    qs = ((L[:, :, 0] & 15) | ((L[:, :, 1] & 15) << 4)).reshape(-1, 128)
    qh = np.zeros((L.shape[0], 32), np.uint8)
    for k in range(4):                              # bit 2k: group 2k's fifth bit, bit 2k+1: group 2k+1's
        qh |= ((L[:, k, 0] >> 4) << (2 * k)) | ((L[:, k, 1] >> 4) << (2 * k + 1))
    return np.concatenate([_u8(d), _u8(dmin), sc, qh, qs], axis=1)


def _quantize_q6_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """qw: importance weights per element (imatrix_quants); ggml's Q6_K uses them alone in its scale search."""
    nb = x.shape[0]
    scales, L = _symmetric_search(_groups(x, 16), 32, None if qw is None else _groups(qw, 16))
    scales, L = scales.reshape(nb, 16), _ungroup(L, nb, 16)
    max_scale, amax = _signed_absmax(scales)
    zero = amax < _EPS
    iscale = _F(-128) / _safe(max_scale, zero)
    d = _f16(np.where(zero, 0, _F(1) / iscale))
    sc = np.minimum(127, np.rint(iscale[:, None] * scales))
    sc = np.where(zero[:, None], 0, sc).astype(np.int8)
    dl = d.astype(np.float32)[:, None] * sc
    fresh = np.clip(np.rint(x.reshape(nb, 16, 16) / _safe(dl, dl == 0)[..., None]), -32, 31) + 32
    L = np.where((dl != 0)[..., None], fresh, L)
    L = np.where(zero[:, None, None], 0, L).astype(np.uint8).reshape(nb, 2, 4, 32)
    ql = np.concatenate([(L[:, :, 0] & 15) | ((L[:, :, 2] & 15) << 4),
                         (L[:, :, 1] & 15) | ((L[:, :, 3] & 15) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), _u8(d)], axis=1)


def _nearest_iq4(a: np.ndarray) -> np.ndarray:
    """Index of the table value nearest to a (ties to the larger one, as ggml's best_index_int8)."""
    i = np.clip(np.searchsorted(IQ4NL_VALUES, a, side="right"), 1, 15)
    lo, hi = IQ4NL_VALUES[i - 1], IQ4NL_VALUES[i]
    return np.where(a - lo < hi - a, i - 1, i)


def _quantize_iq4_nl(x: np.ndarray, ntry: int = 7) -> np.ndarray:
    xc = _groups(x, 32)                                  # one block per column
    w = xc * xc
    v, amax = _signed_absmax(xc, axis=0)
    zero = amax < _EPS
    v = _safe(v, zero)

    def fit(inv):
        q = IQ4NL_VALUES[_nearest_iq4(inv * xc)]
        wq = w * q
        return (wq * xc).sum(axis=0), (wq * q).sum(axis=0)

    sumqx, sumq2 = fit(_F(1) / (-v / IQ4NL_VALUES[0]))
    d = np.where(sumq2 > 0, sumqx / _safe(sumq2, sumq2 <= 0), _F(0))
    best = d * sumqx
    for t in range(-ntry, ntry + 1):
        sqx, sq2 = fit((_F(t) + IQ4NL_VALUES[0]) / v)
        better = (sq2 > 0) & (sqx * sqx > best * sq2)
        d = np.where(better, sqx / _safe(sq2, sq2 <= 0), d)
        best = np.where(better, d * sqx, best)
    d = np.where(zero, _F(0), d).astype(np.float32)
    L = _nearest_iq4(np.where(d != 0, _F(1) / _safe(d, d == 0), 0) * xc).astype(np.uint8).T
    return np.concatenate([_u8(_f16(d)), L[:, :16] | (L[:, 16:] << 4)], axis=1)


_QUANTIZERS = {QT.Q2_K: _quantize_q2_k, QT.Q3_K: _quantize_q3_k, QT.Q4_K: _quantize_q4_k,
               QT.Q5_K: _quantize_q5_k, QT.Q6_K: _quantize_q6_k, QT.IQ4_NL: _quantize_iq4_nl}
TYPES = tuple(_QUANTIZERS)
_CHUNK_BLOCKS = 512                     # blocks per work item: temporaries of ~0.5 MiB stay in cache (2-3x faster than 4 MiB)


def quantize(data: np.ndarray, qtype: QT, *, threads: int | None = None) -> np.ndarray:
    """float array (..., cols) -> uint8 (..., cols // block * type_size) of ggml blocks of `qtype`."""
    if qtype not in _QUANTIZERS:
        raise ValueError(f"kquants has no quantizer for {qtype.name}; it has {', '.join(t.name for t in TYPES)}")
    block, size = GGML_QUANT_SIZES[qtype]
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 0 or data.shape[-1] % block:
        raise ValueError(f"{qtype.name} needs rows whose length is a multiple of {block}; got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"cannot quantize to {qtype.name}: the tensor has NaN or infinite values")
    blocks = np.ascontiguousarray(data).reshape(-1, block)
    out = np.empty((blocks.shape[0], size), np.uint8)
    fn = _QUANTIZERS[qtype]
    map_block_chunks(blocks.shape[0], lambda s, e: fn(blocks[s:e]), out, threads)
    return out.reshape(*data.shape[:-1], data.shape[-1] // block * size)


def map_block_chunks(n_blocks: int, quantize_range, out: np.ndarray, threads: int | None) -> None:
    """out[s:e] = quantize_range(s, e) over chunks of _CHUNK_BLOCKS blocks, on a thread pool (numpy releases the
    GIL) unless one thread or one chunk."""
    starts = range(0, n_blocks, _CHUNK_BLOCKS)

    def run(s):
        out[s:s + _CHUNK_BLOCKS] = quantize_range(s, min(s + _CHUNK_BLOCKS, n_blocks))

    n_threads = threads or min(os.cpu_count() or 1, 16)
    if n_threads == 1 or len(starts) == 1:
        for s in starts:
            run(s)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(run, starts))


# ------------------------------------------------------------------------------------------- decoders
# Written from the layouts alone (not from gguf-py), so tests can hold the two against each other.


def _h(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<f2").astype(np.float32).reshape(-1)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 2, 1, 32)
    return ((q >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3).reshape(-1, 256)


def _dequantize_blocks(b: np.ndarray, qtype: QT) -> np.ndarray:
    nb = b.shape[0]
    if qtype == QT.Q2_K:
        sc, d, dmin = b[:, :16], _h(b[:, 80:82]), _h(b[:, 82:84])
        L = _unpack_2bit(b[:, 16:80]).reshape(nb, 16, 16).astype(np.float32)
        return ((d[:, None] * (sc & 0xF))[..., None] * L - (dmin[:, None] * (sc >> 4))[..., None]).reshape(nb, 256)
    if qtype == QT.Q3_K:
        hmask, qs, s, d = b[:, :32], b[:, 32:96], b[:, 96:108], _h(b[:, 108:110])
        low = np.concatenate([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], axis=1)
        hi = (s[:, 8:12][:, None, :] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3   # [k, m] -> 4k+m
        sc = (low | (hi.reshape(nb, 16) << 4)).astype(np.float32) - 32
        high = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1           # [b, m] -> 32b+m
        L = _unpack_2bit(qs).astype(np.float32) - 4 * (1 - high.reshape(nb, 256))
        return ((d[:, None] * sc)[..., None] * L.reshape(nb, 16, 16)).reshape(nb, 256)
    if qtype in (QT.Q4_K, QT.Q5_K):
        d, dmin = _h(b[:, 0:2]), _h(b[:, 2:4])
        sc, mn = _unpack_scale_min_k4(b[:, 4:16])
        if qtype == QT.Q4_K:
            qs = b[:, 16:144].reshape(nb, 4, 1, 32)
            L = (qs >> np.array([0, 4], np.uint8)[None, None, :, None]) & 15
        else:
            qh, qs = b[:, 16:48], b[:, 48:176].reshape(nb, 4, 1, 32)
            L = (qs >> np.array([0, 4], np.uint8)[None, None, :, None]) & 15
            hb = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1              # bit j = group j
            L = L | (hb.reshape(nb, 4, 2, 32) << 4)
        L = L.reshape(nb, 8, 32).astype(np.float32)
        return ((d[:, None] * sc)[..., None] * L - (dmin[:, None] * mn)[..., None]).reshape(nb, 256)
    if qtype == QT.Q6_K:
        ql, qh = b[:, :128].reshape(nb, 2, 2, 32), b[:, 128:192].reshape(nb, 2, 1, 32)
        sc, d = b[:, 192:208].view(np.int8).astype(np.float32), _h(b[:, 208:210])
        low = np.stack([ql[:, :, 0] & 15, ql[:, :, 1] & 15, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        high = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
        L = (low | (high << 4)).reshape(nb, 16, 16).astype(np.float32) - 32
        return ((d[:, None] * sc)[..., None] * L).reshape(nb, 256)
    if qtype == QT.IQ4_NL:
        d, qs = _h(b[:, 0:2]), b[:, 2:18]
        L = np.concatenate([qs & 15, qs >> 4], axis=1)
        return d[:, None] * IQ4NL_VALUES[L]
    raise ValueError(f"kquants has no decoder for {qtype.name}")


def dequantize(raw: np.ndarray, qtype: QT) -> np.ndarray:
    """uint8 (..., n_bytes) of `qtype` blocks -> float32 (..., n_values)."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.shape[-1] % size:
        raise ValueError(f"{qtype.name} rows are whole {size}-byte blocks; got shape {raw.shape}")
    out = _dequantize_blocks(raw.reshape(-1, size), qtype)
    return out.reshape(*raw.shape[:-1], raw.shape[-1] // size * block)
