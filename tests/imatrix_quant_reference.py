"""A slow scalar transcription of ggml's quantizers WITH an importance matrix, for tests of
owl_export.imatrix_quants: one block at a time, one weight at a time, float32 scalars, sums in loop order,
bytes packed field by field. Written from the algorithm (the description in imatrix_quants.py's docstring and
ggml's block layouts), sharing no code with the vectorised version.
"""
from __future__ import annotations

import struct

import numpy as np

F = np.float32
EPS = F(1e-15)


def nint(v) -> int:
    return int(np.rint(v))                       # ties to even, like ggml's nearest_int


def f16(v) -> tuple[bytes, F]:
    h = np.float16(v)
    return h.tobytes(), F(h)


def fsum(values) -> F:
    s = F(0)
    for v in values:
        s = F(s + v)
    return s


def importance(x, qw, sigma2):
    return [F(q * np.sqrt(F(sigma2 + xi * xi))) for xi, q in zip(x, qw)]


def qx(x, nmax, w):
    """Symmetric search: (scale, L = l + nmax) over candidate inverse scales -(nmax + 0.1k)/max."""
    imax = max(range(len(x)), key=lambda i: (abs(x[i]), -i))
    vmax = x[imax]
    if abs(vmax) < EPS:
        return F(0), [0] * len(x)

    def trial(iscale):
        ls = [max(-nmax, min(nmax - 1, nint(F(iscale * xi)))) for xi in x]
        slx = fsum(F(F(wi * xi) * l) for wi, xi, l in zip(w, x, ls))
        sl2 = fsum(F(F(wi * l) * l) for wi, l in zip(w, ls))
        return ls, slx, sl2

    ls, slx, sl2 = trial(F(F(-nmax) / vmax))
    scale = F(slx / sl2) if sl2 else F(0)
    best, best_ls = F(scale * slx), ls
    for k in range(-9, 10):
        if k == 0:
            continue
        ls, slx, sl2 = trial(F(-F(F(nmax) + F(F(0.1) * F(k))) / vmax))
        if sl2 > 0 and F(slx * slx) > F(best * sl2):
            scale = F(slx / sl2)
            best, best_ls = F(scale * slx), ls
    return scale, [l + nmax for l in best_ls]


def qkx(x, w, nmax, rmin=-0.9, rdelta=0.05, nstep=36):
    """Asymmetric search x ~ scale*L - m: returns scale, m (>= 0), L in [0, nmax]."""
    lo, hi = min(min(x), F(0)), max(x)
    if hi <= lo:
        return F(0), F(-lo), [0] * len(x)
    sw = fsum(w)
    sx = fsum(F(wi * xi) for wi, xi in zip(w, x))

    def err(s, mn, L):
        return fsum(F(wi * F(d * d)) for wi, d in ((wi, F(F(F(s * l) + mn) - xi)) for wi, xi, l in zip(w, x, L)))

    iscale = F(F(nmax) / F(hi - lo))
    L = [max(0, min(nmax, nint(F(iscale * F(xi - lo))))) for xi in x]
    scale, mn = F(1 / iscale), lo
    best = err(scale, mn, L)
    for step in range(nstep + 1):             # like ggml, centred on the best min found so far
        iscale = F(F(F(F(rmin) + F(F(rdelta) * F(step))) + F(nmax)) / F(hi - mn))
        la = [max(0, min(nmax, nint(F(iscale * F(xi - mn))))) for xi in x]
        sl = fsum(F(wi * l) for wi, l in zip(w, la))
        sl2 = fsum(F(F(wi * l) * l) for wi, l in zip(w, la))
        sxl = fsum(F(F(wi * l) * xi) for wi, l, xi in zip(w, la, x))
        D = F(F(sw * sl2) - F(sl * sl))
        if D <= 0:
            continue
        s = F(F(F(sw * sxl) - F(sx * sl)) / D)
        m = F(F(F(sl2 * sx) - F(sl * sxl)) / D)
        if m > 0:
            m, s = F(0), F(sxl / sl2)
        e = err(s, m, la)
        if e < best:
            L, best, scale, mn = la, e, s, m
    return scale, F(-mn), L


def qp(x, w, nmax):
    """Non-negative values -> (scale, L in [0, nmax]) for the K types' sub-block scales and mins."""
    mx = max([F(0)] + list(x))
    if mx < EPS:
        return F(0), [0] * len(x)
    iscale = F(F(nmax) / mx)
    L = [nint(F(iscale * xi)) % 256 for xi in x]
    scale = F(1 / iscale)
    best = fsum(F(F(wi * d) * d) for wi, d in ((wi, F(xi - F(scale * l))) for wi, xi, l in zip(w, x, L)))
    for k in (-4, -3, -2, -1, 1, 2, 3, 4):
        ik = F(F(F(F(0.1) * F(k)) + F(nmax)) / mx)
        sk = F(1 / ik)
        ls = [min(nmax, nint(F(ik * xi))) for xi in x]
        mse = fsum(F(F(wi * d) * d) for wi, d in ((wi, F(xi - F(sk * l))) for wi, xi, l in zip(w, x, ls)))
        if mse < best:
            best, iscale = mse, ik
    ls = [min(nmax, nint(F(iscale * xi))) for xi in x]
    sumlx = fsum(F(F(wi * xi) * l) for wi, xi, l in zip(w, x, ls))
    suml2 = fsum(F(F(wi * l) * l) for wi, l in zip(w, ls))
    L = [l % 256 for l in ls]
    for _ in range(5):
        changed = False
        for i, (xi, wi) in enumerate(zip(x, w)):
            slx = F(sumlx - F(F(wi * xi) * L[i]))
            sl2 = F(suml2 - F(F(wi * L[i]) * L[i]))
            if slx > 0 and sl2 > 0:
                new = min(nmax, nint(F(F(xi * sl2) / slx)))
                if new != L[i]:
                    slx = F(slx + F(F(wi * xi) * new))
                    sl2 = F(sl2 + F(F(wi * new) * new))
                    if F(F(slx * slx) * suml2) > F(F(sumlx * sumlx) * sl2):
                        L[i], sumlx, suml2, changed = new % 256, slx, sl2, True
        if not changed:
            break
    return (F(sumlx / suml2) if suml2 > 0 else F(0)), L


def sigma2(x, factor: int):
    return F(F(F(factor) * fsum(F(v * v) for v in x)) / F(len(x)))


def pack_2bit(L):
    return bytes(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)
                 for j in (0, 128) for l in range(32))


def q2_k(x, qw):
    w = importance(x, qw, sigma2(x, 1))
    L, scales, mins, sw = [], [], [], []
    for j in range(16):
        s, m, l = qkx(x[16 * j:16 * j + 16], w[16 * j:16 * j + 16], 3)
        scales.append(s), mins.append(m), L.extend(l), sw.append(fsum(w[16 * j:16 * j + 16]))
    dm, Ls = qp(scales, sw, 15)
    mm, Lm = qp(mins, sw, 15)
    sc = [(a | (b << 4)) & 255 for a, b in zip(Ls, Lm)]
    db, d = f16(dm)
    mb, dmin = f16(mm)
    for j in range(16):
        dl = F(d * (sc[j] & 15))
        if dl == 0:
            continue
        ml = F(dmin * (sc[j] >> 4))
        for i in range(16 * j, 16 * j + 16):
            L[i] = max(0, min(3, nint(F(F(x[i] + ml) / dl))))
    return bytes(sc) + pack_2bit(L) + db + mb


def q3_k(x, qw):
    w = importance(x, qw, sigma2(x, 2))
    L, scales, sw = [], [], []
    for j in range(16):
        s, l = qx(x[16 * j:16 * j + 16], 4, w[16 * j:16 * j + 16])
        scales.append(s), L.extend(l), sw.append(fsum(w[16 * j:16 * j + 16]))
    dblock, Ls = qx(scales, 32, sw)
    sc = [0] * 12
    for j, l in enumerate(Ls):
        sc[j % 8] |= (l & 15) << (4 * (j // 8))
        sc[8 + j % 4] |= (l >> 4) << (2 * (j // 4))
    db, d = f16(dblock)
    for j in range(16):
        dl = F(d * (Ls[j] - 32))
        if dl == 0:
            continue
        for i in range(16 * j, 16 * j + 16):
            L[i] = max(-4, min(3, nint(F(x[i] / dl)))) + 4
    hmask = [0] * 32
    for i in range(256):
        if L[i] > 3:
            hmask[i % 32] |= 1 << (i // 32)
            L[i] -= 4
    return bytes(hmask) + pack_2bit(L) + bytes(sc) + db


def _k4(x, qw, nmax):
    w = importance(x, qw, sigma2(x, 2))
    L, scales, mins, sw = [], [], [], []
    for j in range(8):
        s, m, l = qkx(x[32 * j:32 * j + 32], w[32 * j:32 * j + 32], nmax)
        scales.append(s), mins.append(m), L.extend(l), sw.append(fsum(w[32 * j:32 * j + 32]))
    dblock, Ls = qp(scales, sw, 63)
    mblock, Lm = qp(mins, sw, 63)
    if nmax == 31:
        Ls, Lm = [min(63, v) for v in Ls], [min(63, v) for v in Lm]
    sc = [0] * 12
    for j in range(8):
        if j < 4:
            sc[j], sc[j + 4] = Ls[j], Lm[j]
        else:
            sc[j + 4] = (Ls[j] & 15) | ((Lm[j] & 15) << 4)
            sc[j - 4] = (sc[j - 4] | ((Ls[j] >> 4) << 6)) & 255
            sc[j] = (sc[j] | ((Lm[j] >> 4) << 6)) & 255
    db, d = f16(dblock)
    mb, dmin = f16(mblock)
    for j in range(8):
        s = sc[j] & 63 if j < 4 else (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4)
        m = sc[j + 4] & 63 if j < 4 else (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)
        dl = F(d * s)
        if dl == 0:
            continue
        ml = F(dmin * m)
        for i in range(32 * j, 32 * j + 32):
            L[i] = max(0, min(nmax, nint(F(F(x[i] + ml) / dl))))
    return db + mb + bytes(sc), L


def q4_k(x, qw):
    head, L = _k4(x, qw, 15)
    return head + bytes(L[j + l] | (L[j + l + 32] << 4) for j in range(0, 256, 64) for l in range(32))


def q5_k(x, qw):
    head, L = _k4(x, qw, 31)
    qh, ql = [0] * 32, []
    for n, j in enumerate(range(0, 256, 64)):
        for l in range(32):
            a, b = L[j + l], L[j + l + 32]
            qh[l] |= ((a >> 4) << (2 * n)) | ((b >> 4) << (2 * n + 1))
            ql.append((a & 15) | ((b & 15) << 4))
    return head + bytes(qh) + bytes(ql)


def q6_k(x, qw):
    scales, L = [], []
    for j in range(16):
        s, l = qx(x[16 * j:16 * j + 16], 32, qw[16 * j:16 * j + 16])
        scales.append(s), L.extend(l)
    imax = max(range(16), key=lambda i: (abs(scales[i]), -i))
    if abs(scales[imax]) < EPS:
        return bytes(210)
    iscale = F(F(-128) / scales[imax])
    db, d = f16(F(1 / iscale))
    sc = [min(127, nint(F(iscale * s))) for s in scales]
    for j in range(16):
        dl = F(d * sc[j])
        if dl == 0:
            continue
        for i in range(16 * j, 16 * j + 16):
            L[i] = max(-32, min(31, nint(F(x[i] / dl)))) + 32
    ql, qh = [0] * 128, [0] * 64
    for h, j in enumerate((0, 128)):
        for l in range(32):
            q = [L[j + l + 32 * k] for k in range(4)]
            ql[64 * h + l] = (q[0] & 15) | ((q[2] & 15) << 4)
            ql[64 * h + l + 32] = (q[1] & 15) | ((q[3] & 15) << 4)
            qh[32 * h + l] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6)
    return bytes(ql) + bytes(qh) + struct.pack("16b", *sc) + db


def _row32(x, qw, s2, fn):
    out = b""
    for b in range(0, len(x), 32):
        out += fn(x[b:b + 32], importance(x[b:b + 32], qw[b:b + 32], s2))
    return out


def _nib(L):
    return bytes((L[j] & 15) | ((L[j + 16] & 15) << 4) for j in range(16))


def _qh(L):
    return struct.pack("<I", sum(((L[j] >> 4) & 1) << j for j in range(32)))


def q4_0_block(x, w):
    d, L = qx(x, 8, w)
    return f16(d)[0] + _nib(L)


def q5_0_block(x, w):
    d, L = qx(x, 16, w)
    return f16(d)[0] + _qh(L) + _nib(L)


def q4_1_block(x, w):
    d, m, L = qkx(x, w, 15)
    return f16(d)[0] + f16(-m)[0] + _nib(L)


def q5_1_block(x, w):
    d, m, L = qkx(x, w, 31)
    return f16(d)[0] + f16(-m)[0] + _qh(L) + _nib(L)


K_TYPES = {"Q2_K": q2_k, "Q3_K": q3_k, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k}
ROW_TYPES = {"Q4_0": q4_0_block, "Q4_1": q4_1_block, "Q5_0": q5_0_block, "Q5_1": q5_1_block}


def quantize(data: np.ndarray, qtype: str, qw: np.ndarray) -> np.ndarray:
    """(rows, cols) float32 -> (rows, bytes) uint8, row by row as ggml_quantize_chunk with an imatrix."""
    rows = []
    for r in np.asarray(data, np.float32):
        x, q = [F(v) for v in r], [F(v) for v in np.asarray(qw, np.float32)]
        if qtype in K_TYPES:
            row = b"".join(K_TYPES[qtype](x[b:b + 256], q[b:b + 256]) for b in range(0, len(x), 256))
        else:
            row = _row32(x, q, sigma2(x, 1), ROW_TYPES[qtype])
        rows.append(np.frombuffer(row, np.uint8))
    return np.stack(rows)
