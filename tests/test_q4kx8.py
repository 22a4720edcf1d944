"""Q4_K repacked at load into BlockQ4_Kx8 (8 rows in lanes, q4kx8_avx2.h; prefill of 16+ tokens on avx512_vnni
through the rows-in-lanes kernel reading the same layout): against the exact emulation of the arithmetic (Q8_K
activations, exact integer super-block sums), against the file-layout kernels, under every thread split, alone and in
a batch; and whole models repacked vs OWL_REPACK=0.

Tolerances: the integer sums are exact in both layouts, only the fp32 accumulation order differs, so both stay
within 1e-5 (max |diff| / max |y|) of the emulation, as tests/test_kquant_kernels.py requires of every variant.
From 16 tokens on, avx512_vnni's rows-in-lanes prefill takes the very same values from either layout: bit-identical.
"""
import zlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import owl_cpp
from owl_cpp import _testing
from kquant_blocks import BLOCK, QK_K, random_blocks
from test_kquant_kernels import emulate, q4_k_m_mix, rel_err, write_model

ops = _testing.ops
Q4_K = 12
ALL_ISAS = ["generic", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "neon"]
LANE_ISAS = {"avx2", "avx2_vnni", "avx512_vnni"}  # avx512 without VNNI keeps the file layout (matmul_avx512.inc)
SUPPORTED = ops.supported_isas()
# Odd row counts (partial 8-row groups, and 16-row prefill groups with one 8-row half), one super-block, odd
# super-block counts, and a second column chunk at T = 100 (4352 columns: chunks of 4096 + 256).
SHAPES = [(1, 256), (5, 512), (13, 768), (29, 256), (67, 1280), (9, 4352)]
TOKENS = [1, 3, 16, 100]


def test_x8_kernel_exists_where_expected(isa_restore):
    for isa in SUPPORTED:
        ops.set_isa(isa)
        assert ops.kernels_use_q4kx8() == (isa in LANE_ISAS), isa


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_packed_matches_emulation_and_file_layout(isa, isa_restore):
    if isa not in SUPPORTED:
        pytest.skip(f"this CPU / build cannot run {isa}")
    ops.set_isa(isa)
    rng = np.random.default_rng(zlib.crc32(f"q4kx8 {isa}".encode()))
    for rows, cols in SHAPES:
        raw = random_blocks("Q4_K", rows * cols // QK_K, rng)
        bias = rng.standard_normal(rows).astype(np.float32)
        for T in TOKENS:
            x = rng.standard_normal((T, cols)).astype(np.float32)
            b = bias if T % 2 else None
            exact = emulate(raw, "Q4_K", rows, cols, x, b)
            plain = ops.matmul(raw, Q4_K, rows, cols, x, b, threads=2)
            first = None
            for threads in (1, 2, 3):
                got = ops.matmul(raw, Q4_K, rows, cols, x, b, threads=threads, packed=True)
                assert rel_err(got, exact) < 1e-5, (isa, rows, cols, T, threads, rel_err(got, exact))
                assert rel_err(got, plain) < 1e-5, (isa, rows, cols, T, threads, rel_err(got, plain))
                if first is None:
                    first = got
                else:  # any split over threads gives bit-identical results
                    np.testing.assert_array_equal(got, first, err_msg=f"{isa} {rows}x{cols} T={T} threads={threads}")
            if isa == "avx512_vnni" and T >= 16:  # the same rows-in-lanes arithmetic on the same values
                np.testing.assert_array_equal(first, plain, err_msg=f"{rows}x{cols} T={T}")


def test_packed_token_does_not_depend_on_batch(isa_restore):
    """Alone (decode: 4 groups per tile) and in a batch of 11 (one group x 3 or 8 tokens per tile), a token's result
    is the same sequence of operations."""
    rng = np.random.default_rng(11)
    rows, cols = 45, 1024
    raw = random_blocks("Q4_K", rows * cols // QK_K, rng)
    x = 3 * rng.standard_normal((11, cols)).astype(np.float32)
    x[:, 256:512] = 0  # an all-zero activation super-block: d = 0
    for isa in SUPPORTED:
        ops.set_isa(isa)
        batch = ops.matmul(raw, Q4_K, rows, cols, x, threads=2, packed=True)
        for t in range(11):
            one = ops.matmul(raw, Q4_K, rows, cols, x[t:t + 1], threads=2, packed=True)
            np.testing.assert_array_equal(one[0], batch[t], err_msg=f"{isa} token {t}")


def test_packed_extreme_blocks_do_not_saturate(isa_restore):
    """Every nibble 15 and every 6-bit scale and min 63 (or all zero), against activations of +-1 (Q8_K's +-127):
    eight byte-pair sums reach 8 * 2 * 15 * 127 = 30480 in int16 (vpmaddubsw) and must not wrap."""
    rows, cols = 11, 512
    b = np.zeros(rows * cols // QK_K, BLOCK["Q4_K"])
    b["scales"] = 0xFF
    b["qs"] = 0xFF
    b["d"] = 0.5
    b["dmin"] = 0.25
    b[1::3]["qs"] = 0  # value 0 under the largest min
    raw = b.view(np.uint8).reshape(-1)
    x = np.stack([np.ones(cols), -np.ones(cols), np.where(np.arange(cols) % 3, 1.0, -1.0)]).astype(np.float32)
    ref = ops.matmul(raw, Q4_K, rows, cols, x, ref=True)
    assert np.abs(ref).max() > 1000  # the blocks are really extreme
    for isa in SUPPORTED:
        ops.set_isa(isa)
        for T in (1, 3):
            got = ops.matmul(raw, Q4_K, rows, cols, x[:T], packed=True)
            assert rel_err(got, ref[:T]) < 1e-5, (isa, T, rel_err(got, ref[:T]))


def test_hostile_blocks_do_not_crash(isa_restore):
    rng = np.random.default_rng(9)
    raw = rng.integers(0, 256, 5 * 2 * 144, dtype=np.uint8)
    x = rng.standard_normal((20, 512)).astype(np.float32)
    x[2, 3] = np.nan
    for isa in SUPPORTED:
        ops.set_isa(isa)
        for T in (1, 6, 20):
            assert ops.matmul(raw, Q4_K, 5, 512, x[:T], threads=2, packed=True).shape == (T, 5)


def test_repacked_model_equals_file_layout(tmp_path, monkeypatch):
    """A Q4_K_M-style tiny model (Q4_K matrices, Q6_K output) repacked at load gives the logits of the file's layout:
    a 10-token prompt (x8 tiles), a 20-token prompt (rows-in-lanes prefill on avx512_vnni) and a decode step. Only
    the fp32 accumulation order differs, which can flip one int8 rounding of a later activation (a ~1e-3 step at an
    isolated position, as for Q4_0x8 in test_decoder_parity.py)."""
    qpath, _ = write_model(tmp_path / "tiny-q4km.gguf", q4_k_m_mix)
    packed = owl_cpp.load(qpath, threads=2)
    assert (packed._model.packed_bytes > 0) == ops.kernels_use_q4kx8()
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
