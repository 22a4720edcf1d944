"""A slow, one-block-at-a-time reference of ggml's reference K-quant / IQ4_NL quantizers (no importance matrix),
written as plain loops from the algorithm's description, for tests of owl_export.kquants.

It returns the reconstructed weights (what a decoder gives back), not the bytes: the tests compare error
levels, and that our vectorised quantizer reaches the reference's. Arithmetic is float64 except where the
stored format rounds (fp16 super-block scales, integer sub-block scales).
"""
from __future__ import annotations

import math

import numpy as np

IQ4NL = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


def nint(v: float) -> int:
    return int(np.rint(v))


def f16(v: float) -> float:
    return float(np.float16(v))


def clamp(v, lo, hi):
    return max(lo, min(hi, v))


def min_search(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """scale, m, L with x ~ scale*L - m: best of nstep+1 refitted candidates (weighted squared/abs error)."""
    mn, mx = min(min(x), 0.0), max(x)
    if mx == mn:
        return 0.0, -mn, [0] * len(x)
    sw = sum(w)
    sx = sum(wi * xi for wi, xi in zip(w, x))

    def error(s, m, L):
        return sum(wi * (abs(s * l + m - xi) if use_mad else (s * l + m - xi) ** 2) for wi, xi, l in zip(w, x, L))

    iscale = nmax / (mx - mn)
    L = [clamp(nint(iscale * (xi - mn)), 0, nmax) for xi in x]
    scale = 1 / iscale
    best = error(scale, mn, L)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * step + nmax) / (mx - mn)
        la = [clamp(nint(iscale * (xi - mn)), 0, nmax) for xi in x]
        sl = sum(wi * l for wi, l in zip(w, la))
        sl2 = sum(wi * l * l for wi, l in zip(w, la))
        sxl = sum(wi * l * xi for wi, l, xi in zip(w, la, x))
        D = sw * sl2 - sl * sl
        if D <= 0:
            continue
        s, m = (sw * sxl - sx * sl) / D, (sl2 * sx - sl * sxl) / D
        if m > 0:
            m, s = 0.0, sxl / sl2
        e = error(s, m, la)
        if e < best:
            L, best, scale, mn = la, e, s, m
    return scale, -mn, L


def symmetric_search(x, nmax):
    """make_qx_quants, weights x^2: scale (L in [-nmax, nmax-1] not needed by the callers)."""
    imax = max(range(len(x)), key=lambda i: abs(x[i]))
    if abs(x[imax]) < 1e-15:
        return 0.0
    vmax = x[imax]

    def fit(iscale):
        ls = [clamp(nint(iscale * xi), -nmax, nmax - 1) for xi in x]
        return sum(xi ** 3 * l for xi, l in zip(x, ls)), sum(xi * xi * l * l for xi, l in zip(x, ls))

    slx, sl2 = fit(-nmax / vmax)
    scale = slx / sl2 if sl2 else 0.0
    best = scale * slx
    for k in [k for k in range(-9, 10) if k]:
        slx, sl2 = fit(-(nmax + 0.1 * k) / vmax)
        if sl2 > 0 and slx * slx > best * sl2:
            scale = slx / sl2
            best = scale * slx
    return scale


def q3_search(x, nmax=4):
    """make_q3_quants with refinement: scale."""
    imax = max(range(len(x)), key=lambda i: abs(x[i]))
    if abs(x[imax]) < 1e-15:
        return 0.0
    iscale = -nmax / x[imax]
    L = [clamp(nint(iscale * xi), -nmax, nmax - 1) for xi in x]
    w = [xi * xi for xi in x]
    slx_all = sum(wi * xi * l for wi, xi, l in zip(w, x, L))
    sl2_all = sum(wi * l * l for wi, l in zip(w, L))
    for _ in range(5):
        changed = 0
        for i, xi in enumerate(x):
            slx = slx_all - w[i] * xi * L[i]
            if slx <= 0:
                continue
            sl2 = sl2_all - w[i] * L[i] * L[i]
            new = clamp(nint(xi * sl2 / slx), -nmax, nmax - 1)
            if new == L[i]:
                continue
            slx += w[i] * xi * new
            sl2 += w[i] * new * new
            if sl2 > 0 and slx * slx * sl2_all > slx_all * slx_all * sl2:
                L[i], slx_all, sl2_all = new, slx, sl2
                changed += 1
        if not changed:
            break
    return slx_all / sl2_all if sl2_all > 0 else 0.0


def _asym_block(x, group, nmax, scale_bits, rmin, nstep, weights, use_mad):
    """Q2_K / Q4_K / Q5_K: groups searched, scales/mins quantized to scale_bits under fp16 d/dmin, requantized."""
    top = (1 << scale_bits) - 1
    groups = [x[i:i + group] for i in range(0, len(x), group)]
    found = [min_search(g, weights(g), nmax, rmin, 0.1, nstep, use_mad) for g in groups]
    max_s = max([0.0] + [s for s, _, _ in found])
    max_m = max([0.0] + [m for _, m, _ in found])
    d = f16(max_s / top) if max_s > 0 else 0.0
    dmin = f16(max_m / top) if max_m > 0 else 0.0
    out = []
    for g, (s, m, L) in zip(groups, found):
        ls = clamp(nint(top / max_s * s), 0, top) if max_s > 0 else 0
        lm = clamp(nint(top / max_m * m), 0, top) if max_m > 0 else 0
        dl, ml = d * ls, dmin * lm
        if dl:
            L = [clamp(nint((xi + ml) / dl), 0, nmax) for xi in g]
        out += [dl * l - ml for l in L]
    return out


def _sym_block(x, scales, levels, lo, hi, inv_top, max_sc):
    """Q3_K / Q6_K: signed sub-block scales under an fp16 d, then requantize each weight."""
    amax_i = max(range(len(scales)), key=lambda i: abs(scales[i]))
    vmax = scales[amax_i]
    if abs(vmax) < 1e-15:
        return [0.0] * len(x)
    iscale = -inv_top / vmax
    d = f16(1 / iscale)
    out = []
    for j, s in enumerate(scales):
        sc = clamp(nint(iscale * s), -inv_top, max_sc)
        dl = d * sc
        g = x[j * levels:(j + 1) * levels]
        out += [dl * clamp(nint(xi / dl), lo, hi) if dl else 0.0 for xi in g]
    return out


def reconstruct_block(x: list[float], qtype: str) -> list[float]:
    if qtype == "Q2_K":
        return _asym_block(x, 16, 3, 4, -0.5, 15, lambda g: [abs(v) for v in g], True)
    if qtype in ("Q4_K", "Q5_K"):
        def w(g):
            av = math.sqrt(sum(v * v for v in g) / len(g))
            return [av + abs(v) for v in g]
        nmax, rmin, nstep = (15, -1.0, 20) if qtype == "Q4_K" else (31, -0.5, 15)
        return _asym_block(x, 32, nmax, 6, rmin, nstep, w, False)
    if qtype == "Q3_K":
        return _sym_block(x, [q3_search(x[i:i + 16]) for i in range(0, 256, 16)], 16, -4, 3, 32, 31)
    if qtype == "Q6_K":
        return _sym_block(x, [symmetric_search(x[i:i + 16], 32) for i in range(0, 256, 16)], 16, -32, 31, 128, 127)
    if qtype == "IQ4_NL":
        return _iq4nl_block(x)
    raise ValueError(qtype)


def _nearest(v):
    return min(range(16), key=lambda i: (abs(IQ4NL[i] - v), -i))


def _iq4nl_block(x, ntry=7):
    imax = max(range(len(x)), key=lambda i: abs(x[i]))
    vmax = x[imax]
    if abs(vmax) < 1e-15:
        return [0.0] * len(x)

    def fit(inv):
        q = [IQ4NL[_nearest(inv * xi)] for xi in x]
        return sum(xi ** 3 * qi for xi, qi in zip(x, q)), sum(xi * xi * qi * qi for xi, qi in zip(x, q))

    sqx, sq2 = fit(IQ4NL[0] / -vmax)
    d = sqx / sq2 if sq2 > 0 else 0.0
    best = d * sqx
    for t in range(-ntry, ntry + 1):
        sqx, sq2 = fit((t + IQ4NL[0]) / vmax)
        if sq2 > 0 and sqx * sqx > best * sq2:
            d = sqx / sq2
            best = d * sqx
    dh = f16(d)
    return [dh * IQ4NL[_nearest(xi / d)] if d else 0.0 for xi in x]


def reconstruct(data: np.ndarray, qtype: str) -> np.ndarray:
    block = 32 if qtype == "IQ4_NL" else 256
    rows = np.asarray(data, np.float64).reshape(-1, block)
    return np.array([reconstruct_block(list(map(float, r)), qtype) for r in rows]).reshape(np.shape(data))
