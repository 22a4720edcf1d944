"""ops.matmul_many (a layer's Q / K / V in one parallel job) and ops.matmul_swiglu (gate, up and SwiGLU in one job)
against separate ops.matmul / ops.swiglu calls: bit-identical, for every instruction set, mixes of weight types
whose activations share one quantization or need their own (Q4_K_M's Q4_K + Q6_K, Q4_0 beside Q8_0 beside F16),
file and load-time layouts, biases, odd row counts and several thread counts. The fused jobs only regroup rows
between threads, and each (row, token) result never depends on its neighbours, so anything but equality is a bug.
"""
import zlib

import numpy as np
import pytest

from owl_cpp import _testing
from kquant_blocks import QK_K, TYPE_IDS as K_IDS, random_blocks as random_k_blocks
from q32_quant import random_blocks as random_q32_blocks
from test_ops import TYPES, encode

ops = _testing.ops
SUPPORTED = ops.supported_isas()
IDS = {**TYPES, **K_IDS, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "IQ4_NL": 20}
PACKABLE = {"Q4_0", "Q8_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K"}

# (types of Q, K, V), columns: one activation format for all, K-quants sharing Q8_K, three different formats.
MIXES = [
    (("Q4_0", "Q4_0", "Q4_0"), 256),
    (("Q4_K", "Q4_K", "Q6_K"), 512),
    (("Q5_K", "Q2_K", "Q3_K"), 256),
    (("Q8_0", "Q4_0", "F16"), 256),
    (("Q4_1", "IQ4_NL", "Q5_0"), 256),
    (("F32", "BF16", "Q5_1"), 256),
]
ROWS = (37, 16, 9)  # partial 8-row units, and products of one unit
TOKENS = [1, 2, 5, 19]


def random_weight(rng, type_name, rows, cols):
    if type_name in K_IDS:
        raw = random_k_blocks(type_name, rows * cols // QK_K, rng)
    elif type_name in ("Q4_1", "Q5_0", "Q5_1", "IQ4_NL"):
        raw = random_q32_blocks(rng, type_name, rows, cols, scale=0.05)
    else:
        raw = encode(rng.standard_normal((rows, cols)).astype(np.float32) * 0.1, type_name)
    return np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)


def can_pack(types):
    return all(t in PACKABLE for t in types)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "neon"])
@pytest.mark.parametrize("types,cols", MIXES, ids=["-".join(m[0]) for m in MIXES])
def test_matmul_many_equals_separate_matmuls(isa, types, cols, isa_restore):
    if isa not in SUPPORTED:
        pytest.skip(f"this CPU / build cannot run {isa}")
    ops.set_isa(isa)
    rng = np.random.default_rng(zlib.crc32(f"many {isa} {types}".encode()))
    ws = [random_weight(rng, t, r, cols) for t, r in zip(types, ROWS)]
    biases = [rng.standard_normal(ROWS[0]).astype(np.float32), None, rng.standard_normal(ROWS[2]).astype(np.float32)]
    for T in TOKENS:
        x = rng.standard_normal((T, cols)).astype(np.float32)
        for packed in ([False, True] if can_pack(types) else [False]):
            for threads in (1, 2, 3):
                args = [(w, IDS[t], r, cols, b) for w, t, r, b in zip(ws, types, ROWS, biases)]
                got = ops.matmul_many(args, x, threads=threads, packed=packed)
                assert len(got) == 3
                for (w, tid, r, c, b), y in zip(args, got):
                    want = ops.matmul(w, tid, r, c, x, bias=b, threads=threads, packed=packed)
                    assert y.shape == (T, r)
                    assert np.isfinite(want).all()
                    assert np.array_equal(y, want), (isa, types, T, packed, threads, tid)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512_vnni"])
@pytest.mark.parametrize("types,cols", [(("Q4_0", "Q4_0"), 256), (("Q4_K", "Q6_K"), 512), (("F16", "Q8_0"), 256),
                                        (("Q5_1", "Q5_1"), 256)])
def test_matmul_swiglu_equals_two_matmuls_and_swiglu(isa, types, cols, isa_restore):
    if isa not in SUPPORTED:
        pytest.skip(f"this CPU / build cannot run {isa}")
    ops.set_isa(isa)
    rng = np.random.default_rng(zlib.crc32(f"swiglu {isa} {types}".encode()))
    for rows in (8, 45, 200):
        g, u = (random_weight(rng, t, rows, cols) for t in types)
        for T in (1, 4, 17):
            x = rng.standard_normal((T, cols)).astype(np.float32)
            for packed in ([False, True] if can_pack(types) else [False]):
                for threads in (1, 2, 3):
                    out, up = ops.matmul_swiglu((g, IDS[types[0]], rows, cols), (u, IDS[types[1]], rows, cols), x,
                                                threads=threads, packed=packed)
                    gate_y = ops.matmul(g, IDS[types[0]], rows, cols, x, threads=threads, packed=packed)
                    up_y = ops.matmul(u, IDS[types[1]], rows, cols, x, threads=threads, packed=packed)
                    want = ops.swiglu(gate_y.reshape(-1), up_y.reshape(-1)).reshape(T, rows)
                    assert np.array_equal(up, up_y)
                    assert np.array_equal(out, want), (isa, types, rows, T, packed, threads)
                    # and not trivially: the combination is SwiGLU of the two products
                    ref = gate_y / (1 + np.exp(-gate_y.astype(np.float64))) * up_y
                    assert np.allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_fused_products_refuse_bad_arguments():
    rng = np.random.default_rng(7)
    a = random_weight(rng, "Q4_0", 8, 256)
    b = random_weight(rng, "Q4_0", 8, 512)
    x = np.zeros((1, 256), np.float32)
    with pytest.raises(Exception, match="share one input|x must be"):
        ops.matmul_many([(a, 2, 8, 256, None), (b, 2, 8, 512, None)], x)
    with pytest.raises(ValueError, match="at most"):
        ops.matmul_many([(a, 2, 8, 256, None)] * 5, x)
    with pytest.raises(Exception, match="must match"):
        ops.matmul_swiglu((a, 2, 8, 256), (random_weight(rng, "Q4_0", 16, 256), 2, 16, 256), x)
    assert ops.matmul_many([], x) == []
