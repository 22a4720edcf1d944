"""Q4_K / Q5_K / Q6_K repacked at load into BlockQ4_Kx8 / BlockQ5_Kx8 / BlockQ6_Kx8 (8 rows in lanes; decode tiles in
q4kx8_avx2.h / q6kx8_avx2.h, prefill of 16+ tokens on avx512_vnni through the rows-in-lanes kernel reading the same
layout): the bytes against a numpy construction of the documented layout (dtype.h), the products against the exact
emulation of the arithmetic (Q8_K activations, exact integer super-block sums), against the file-layout kernels,
under every thread split, alone and in a batch; and whole models repacked vs OWL_REPACK=0.

Tolerances: the integer sums are exact in both layouts, only the fp32 accumulation order differs, so both stay
within 1e-5 (max |diff| / max |y|) of the emulation, as tests/test_kquant_kernels.py requires of every variant.
From 16 tokens on, avx512_vnni's rows-in-lanes prefill takes the very same values from either layout: bit-identical.
"""
import zlib

import numpy as np
import pytest

import owl_cpp
from owl_cpp import _testing
from kquant_blocks import BLOCK, BLOCK_BYTES, QK_K, TYPE_IDS, random_blocks
from test_kquant_kernels import emulate, q4_k_m_mix, rel_err, write_model

ops = _testing.ops
KX8_TYPES = ["Q4_K", "Q5_K", "Q6_K"]
ALL_ISAS = ["generic", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "neon"]
LANE_ISAS = {"avx2", "avx2_vnni", "avx512_vnni"}  # avx512 without VNNI keeps the file layout (matmul_avx512.inc)
SUPPORTED = ops.supported_isas()
# Odd row counts (partial 8-row groups, and 16-row prefill groups with one 8-row half), one super-block, odd
# super-block counts, and a second column chunk at T = 100 (4352 columns: chunks of 4096 + 256).
SHAPES = [(1, 256), (5, 512), (13, 768), (29, 256), (67, 1280), (9, 4352)]
TOKENS = [1, 3, 16, 100]


# ---- the layout, built in numpy from the documented formulas (dtype.h) ----

def _k4_scales(s):
    """12 bytes of Q4_K / Q5_K scales [n, 12] -> 8 scales, 8 mins [n, 8] (ggml's get_scale_min_k4)."""
    s = s.astype(np.int32)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _quants(b, type_name):
    """Unsigned quants u [n, 256] of each block, in element order (ggml's layouts)."""
    n = len(b)
    u = np.zeros((n, QK_K), np.int32)
    if type_name == "Q6_K":
        ql, qh = b["ql"].astype(np.int32), b["qh"].astype(np.int32)
        for e in range(QK_K):
            h, k, l = e // 128, (e % 128) // 32, e % 32
            u[:, e] = ((ql[:, 64 * h + 32 * (k % 2) + l] >> (4 * (k // 2))) & 15) | (((qh[:, 32 * h + l] >> (2 * k)) & 3) << 4)
        return u
    qs = b["qs"].astype(np.int32)
    for e in range(QK_K):
        c, l = e // 32, e % 32
        u[:, e] = (qs[:, 32 * (c // 2) + l] >> (4 * (c % 2))) & 15
        if type_name == "Q5_K":
            u[:, e] |= ((b["qh"][:, l].astype(np.int32) >> c) & 1) << 4
    return u


def layout_reference(raw, type_name, rows, cols):
    """The x8 layout's bytes: groups of 8 rows (padding rows zero), super-blocks in order within a group."""
    nb = cols // QK_K
    b = np.frombuffer(raw.tobytes(), BLOCK[type_name]).reshape(rows, nb)
    groups = (rows + 7) // 8
    out = []
    for g in range(groups):
        for j in range(nb):
            blk = b[8 * g:8 * g + 8, j]
            n = len(blk)
            u = np.zeros((8, QK_K), np.int32)
            u[:n] = _quants(blk, type_name)
            d = np.zeros(8, np.float16)
            d[:n] = blk["d"]
            parts = [d.view(np.uint8)]
            if type_name == "Q6_K":
                sc = np.zeros((8, 16), np.int8)
                sc[:n] = blk["scales"]
                scx = np.zeros(128, np.int8)
                ql = np.zeros(1024, np.uint8)
                qh = np.zeros(512, np.uint8)
                for i in range(8):
                    for p in range(8):
                        scx[16 * p + 2 * i:16 * p + 2 * i + 2] = sc[i, 2 * p:2 * p + 2]
                    for c in range(8):
                        for q in range(8):
                            v = u[i, 32 * c + 4 * q:32 * c + 4 * q + 4]
                            ql[256 * (c // 2) + 32 * q + 4 * i:][:4] |= ((v & 15) << (4 * (c % 2))).astype(np.uint8)
                            qh[256 * (c // 4) + 32 * q + 4 * i:][:4] |= ((v >> 4) << (2 * (c % 4))).astype(np.uint8)
                parts += [scx.view(np.uint8), ql, qh]
            else:
                dmin = np.zeros(8, np.float16)
                dmin[:n] = blk["dmin"]
                sc8, m8 = np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32)
                sc8[:n], m8[:n] = _k4_scales(blk["scales"])
                sc = np.zeros(64, np.uint8)
                m = np.zeros(64, np.uint8)
                qs = np.zeros(1024, np.uint8)
                qh = np.zeros(256, np.uint8)
                for i in range(8):
                    for c in range(8):
                        sc[8 * c + i] = sc8[i, c]
                        m[16 * (c // 2) + 2 * i + c % 2] = m8[i, c]
                        for q in range(8):
                            v = u[i, 32 * c + 4 * q:32 * c + 4 * q + 4]
                            qs[256 * (c // 2) + 32 * q + 4 * i:][:4] |= ((v & 15) << (4 * (c % 2))).astype(np.uint8)
                            qh[32 * q + 4 * i:][:4] |= ((v >> 4) << c).astype(np.uint8)
                parts += [dmin.view(np.uint8), sc, m]
                if type_name == "Q5_K":
                    parts.append(qh)
                parts.append(qs)
            out.append(np.concatenate(parts))
    return np.concatenate(out)


@pytest.mark.parametrize("type_name", KX8_TYPES)
def test_layout_bytes(type_name):
    rng = np.random.default_rng(zlib.crc32(f"kx8 layout {type_name}".encode()))
    for rows, cols in [(1, 256), (11, 512), (16, 256)]:
        raw = random_blocks(type_name, rows * cols // QK_K, rng)
        got = np.asarray(ops.repack_kx8(raw, TYPE_IDS[type_name], rows, cols))
        want = layout_reference(raw, type_name, rows, cols)
        assert got.size == {"Q4_K": 1184, "Q5_K": 1440, "Q6_K": 1680}[type_name] * ((rows + 7) // 8) * (cols // QK_K)
        np.testing.assert_array_equal(got, want, err_msg=f"{type_name} {rows}x{cols}")


def test_layout_refuses_other_types():
    with pytest.raises(ValueError, match="Q4_K, Q5_K or Q6_K"):
        ops.repack_kx8(np.zeros(84, np.uint8), TYPE_IDS["Q2_K"], 1, 256)


def test_x8_kernel_exists_where_expected(isa_restore):
    for isa in SUPPORTED:
        ops.set_isa(isa)
        for t in KX8_TYPES:
            assert ops.kernels_use_kx8(TYPE_IDS[t]) == (isa in LANE_ISAS), (isa, t)
        for other in (TYPE_IDS["Q2_K"], TYPE_IDS["Q3_K"], 2, 8):
            assert not ops.kernels_use_kx8(other)


@pytest.mark.parametrize("type_name", KX8_TYPES)
@pytest.mark.parametrize("isa", ALL_ISAS)
def test_packed_matches_emulation_and_file_layout(isa, type_name, isa_restore):
    if isa not in SUPPORTED:
        pytest.skip(f"this CPU / build cannot run {isa}")
    ops.set_isa(isa)
    tid = TYPE_IDS[type_name]
    rng = np.random.default_rng(zlib.crc32(f"kx8 {isa} {type_name}".encode()))
    for rows, cols in SHAPES:
        raw = random_blocks(type_name, rows * cols // QK_K, rng)
        bias = rng.standard_normal(rows).astype(np.float32)
        for T in TOKENS:
            x = rng.standard_normal((T, cols)).astype(np.float32)
            b = bias if T % 2 else None
            exact = emulate(raw, type_name, rows, cols, x, b)
            plain = ops.matmul(raw, tid, rows, cols, x, b, threads=2)
            first = None
            for threads in (1, 2, 3):
                got = ops.matmul(raw, tid, rows, cols, x, b, threads=threads, packed=True)
                assert rel_err(got, exact) < 1e-5, (isa, rows, cols, T, threads, rel_err(got, exact))
                assert rel_err(got, plain) < 1e-5, (isa, rows, cols, T, threads, rel_err(got, plain))
                if first is None:
                    first = got
                else:  # any split over threads gives bit-identical results
                    np.testing.assert_array_equal(got, first, err_msg=f"{isa} {rows}x{cols} T={T} threads={threads}")
            if isa not in LANE_ISAS or (isa == "avx512_vnni" and T >= 16):
                # no x8 kernel: the file layout runs; rows-in-lanes prefill: the same arithmetic on the same values
                np.testing.assert_array_equal(first, plain, err_msg=f"{isa} {type_name} {rows}x{cols} T={T}")


@pytest.mark.parametrize("type_name", KX8_TYPES)
def test_prefill_across_token_passes_equals_file_layout(type_name, isa_restore):
    """T = 520 crosses the rows-in-lanes kernel's pass of 512 tokens; every token equals the file layout's bit for
    bit (avx512_vnni) and its result alone in a 16-token call."""
    if "avx512_vnni" not in SUPPORTED:
        pytest.skip("needs avx512_vnni")
    ops.set_isa("avx512_vnni")
    tid = TYPE_IDS[type_name]
    rng = np.random.default_rng(5)
    rows, cols = 21, 512
    raw = random_blocks(type_name, rows * cols // QK_K, rng)
    x = rng.standard_normal((520, cols)).astype(np.float32)
    got = ops.matmul(raw, tid, rows, cols, x, threads=2, packed=True)
    np.testing.assert_array_equal(got, ops.matmul(raw, tid, rows, cols, x, threads=2))
    np.testing.assert_array_equal(ops.matmul(raw, tid, rows, cols, x[504:520], threads=1, packed=True), got[504:520])
    assert rel_err(got, emulate(raw, type_name, rows, cols, x)) < 1e-5


@pytest.mark.parametrize("type_name", KX8_TYPES)
def test_packed_token_does_not_depend_on_batch(type_name, isa_restore):
    """Alone (decode: 4 groups per tile) and in a batch of 11 (one group x 3 or 8 tokens per tile), a token's result
    is the same sequence of operations."""
    rng = np.random.default_rng(11)
    rows, cols = 45, 1024
    tid = TYPE_IDS[type_name]
    raw = random_blocks(type_name, rows * cols // QK_K, rng)
    x = 3 * rng.standard_normal((11, cols)).astype(np.float32)
    x[:, 256:512] = 0  # an all-zero activation super-block: d = 0
    for isa in SUPPORTED:
        ops.set_isa(isa)
        batch = ops.matmul(raw, tid, rows, cols, x, threads=2, packed=True)
        for t in range(11):
            one = ops.matmul(raw, tid, rows, cols, x[t:t + 1], threads=2, packed=True)
            np.testing.assert_array_equal(one[0], batch[t], err_msg=f"{isa} token {t}")


def extreme_blocks(type_name, rows, cols):
    """Every quant at its largest (or, every third block, smallest) under the largest scales and mins: Q4_K's
    eight byte-pair sums reach 8 * 2 * 15 * 127 = 30480 in int16, Q5_K's four 4 * 2 * 31 * 127 = 31496 and Q6_K's
    two 2 * 2 * 63 * 127 = 32004 (vpmaddubsw), and must not wrap."""
    b = np.zeros(rows * cols // QK_K, BLOCK[type_name])
    for f in b.dtype.names:
        if f not in ("d", "dmin", "scales"):
            b[f] = 0xFF
    b["d"] = 0.5
    if type_name == "Q6_K":
        b["scales"] = 127
        b["scales"][1::2] = -128
        b[1::3]["ql"] = 0  # u = 0: -32 under the largest scales
        b[1::3]["qh"] = 0
    else:
        b["scales"] = 0xFF
        b["dmin"] = 0.25
        b[1::3]["qs"] = 0  # value 0 under the largest min
        if type_name == "Q5_K":
            b[1::3]["qh"] = 0
    return b.view(np.uint8).reshape(-1)


@pytest.mark.parametrize("type_name", KX8_TYPES)
def test_packed_extreme_blocks_do_not_saturate(type_name, isa_restore):
    rows, cols = 11, 512
    raw = extreme_blocks(type_name, rows, cols)
    x = np.stack([np.ones(cols), -np.ones(cols), np.where(np.arange(cols) % 3, 1.0, -1.0)]).astype(np.float32)
    x = np.concatenate([x] * 6)  # 18 tokens: the prefill kernel too
    ref = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x, ref=True)
    assert np.abs(ref).max() > 1000  # the blocks are really extreme
    for isa in SUPPORTED:
        ops.set_isa(isa)
        for T in (1, 3, 18):
            got = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x[:T], packed=True)
            assert rel_err(got, ref[:T]) < 1e-5, (isa, T, rel_err(got, ref[:T]))


def test_hostile_blocks_do_not_crash(isa_restore):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((20, 512)).astype(np.float32)
    x[2, 3] = np.nan
    for t in KX8_TYPES:
        raw = rng.integers(0, 256, 5 * 2 * BLOCK_BYTES[t], dtype=np.uint8)
        for isa in SUPPORTED:
            ops.set_isa(isa)
            for T in (1, 6, 20):
                assert ops.matmul(raw, TYPE_IDS[t], 5, 512, x[:T], threads=2, packed=True).shape == (T, 5)


def q5_k_m_mix(name):
    """Q5_K matrices, Q6_K for the output and one ffn_down (llama.cpp's Q5_K_M idea)."""
    return "Q6_K" if name in ("output.weight", "blk.0.ffn_down.weight") else "Q5_K"


@pytest.mark.parametrize("mix", [q4_k_m_mix, q5_k_m_mix], ids=["Q4_K_M", "Q5_K_M"])
def test_repacked_model_equals_file_layout(mix, tmp_path, monkeypatch):
    """A tiny model of K matrices repacked at load gives the logits of the file's layout: a 10-token prompt (x8
    tiles), a 20-token prompt (rows-in-lanes prefill on avx512_vnni) and a decode step. Only the fp32 accumulation
    order differs, which can flip one int8 rounding of a later activation (a ~1e-3 step at an isolated position, as
    for Q4_0x8 in test_decoder_parity.py)."""
    qpath, _ = write_model(tmp_path / "tiny-kx8.gguf", mix)
    packed = owl_cpp.load(qpath, threads=2)
    assert (packed._model.packed_bytes > 0) == ops.kernels_use_kx8(TYPE_IDS["Q6_K"])
    monkeypatch.setenv("OWL_REPACK", "0")
    plain = owl_cpp.load(qpath, threads=2)
    assert plain._model.packed_bytes == 0
    ids = [1, 259, 260, 262, 263, 100, 17, 200, 261, 5, 33, 34, 90, 91, 180, 181, 259, 262, 7, 8]
    for n in (10, 20):
        a, b = np.asarray(packed.logits(ids[:n])), np.asarray(plain.logits(ids[:n]))
        per_row = np.abs(a - b).max(axis=1) / np.abs(b).max()
        assert np.mean(per_row < 1e-5) >= 0.9 and per_row.max() < 5e-3, (n, per_row)
    for m in (packed, plain):
        m.reset()
        m.eval(ids[:-1])
    step_a, step_b = np.asarray(packed.eval(ids[-1:])), np.asarray(plain.eval(ids[-1:]))
    assert np.abs(step_a - step_b).max() / np.abs(step_b).max() < 5e-3


def test_packed_bytes_cover_every_k_matrix(tmp_path):
    """Every Q4_K / Q5_K / Q6_K matrix of the model is repacked (8-row padding, 64-byte alignment), and only those."""
    if not ops.kernels_use_kx8(TYPE_IDS["Q6_K"]):
        pytest.skip("the active kernels keep the file layout")
    qpath, _ = write_model(tmp_path / "tiny-q5km.gguf", q5_k_m_mix)
    info = _testing_tensors(qpath)
    want = 0
    for name, (t, rows, cols) in info.items():
        if t in ("Q4_K", "Q5_K", "Q6_K") and name != "token_embd.weight":
            n = {"Q4_K": 1184, "Q5_K": 1440, "Q6_K": 1680}[t] * ((rows + 7) // 8) * (cols // QK_K)
            want += (n + 63) // 64 * 64
    assert owl_cpp.load(qpath, threads=1)._model.packed_bytes == want


def _testing_tensors(path):
    from gguf import GGUFReader

    out = {}
    for t in GGUFReader(str(path)).tensors:
        cols, rows = (int(v) for v in t.shape[:2]) if len(t.shape) >= 2 else (int(t.shape[0]), 1)
        out[t.name] = (t.tensor_type.name, rows, cols)
    return out
