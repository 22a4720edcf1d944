"""owl_export.imatrix_quants: ggml's quantizers with an importance matrix.

- Always: the vectorised quantizers give exactly the bytes of a slow scalar transcription of the algorithm
  (tests/imatrix_quant_reference.py), on blocks that hit the special cases and on imatrices with zeros.
- Always: with non-uniform column importances qw, the qw-weighted reconstruction error sum(qw (x - q)^2) of
  every row is below that of the plain quantizer (measured: totals 0.45-0.78 of the plain ones).
- With -m llama_cpp and OWL_LLAMA_PYTHON set: ggml_quantize_chunk with the same imatrix (libggml-base of
  llama-cpp-python 0.3.36) writes the same bytes, every block, all nine types, three kinds of imatrix.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize as gguf_quantize

import imatrix_quant_reference as reference
from owl_export import imatrix_quants, kquants
from test_kquants import ggml_base_library, weights

TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def importances(kind: str, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gamma":                     # most columns quiet, a few loud: like real activations
        return rng.gamma(0.5, 1.0, cols).astype(np.float32)
    if kind == "sparse":                    # columns no calibration token touched stay 0
        return np.where(rng.random(cols) < 0.3, 0, rng.random(cols) * 5).astype(np.float32)
    if kind == "wide":
        return np.exp(rng.normal(0, 3, cols)).astype(np.float32)
    raise ValueError(kind)


@pytest.mark.parametrize("name", TYPES)
def test_equals_the_scalar_reference(name):
    x = weights(4, 512, seed=3)
    for kind in ("gamma", "sparse"):
        qw = importances(kind, 512, seed=1)
        ours = imatrix_quants.quantize(x, QT[name], qw)
        np.testing.assert_array_equal(ours, reference.quantize(x, name, qw), err_msg=f"{name} {kind}")


def _plain(x, qt):
    return kquants.quantize(x, qt) if qt in kquants.TYPES else gguf_quantize(x, qt)


@pytest.mark.parametrize("name", TYPES)
def test_lowers_the_weighted_error_of_every_row(name):
    qt = QT[name]
    rng = np.random.default_rng(4)
    x = (rng.standard_t(4, (64, 1024)) * 0.02).astype(np.float32)
    qw = np.exp(rng.normal(0, 1.5, 1024)).astype(np.float32)
    back = lambda raw: dequantize(raw, qt).reshape(x.shape)   # noqa: E731
    e_imatrix = (qw * (x - back(imatrix_quants.quantize(x, qt, qw))) ** 2).sum(1)
    e_plain = (qw * (x - back(_plain(x, qt))) ** 2).sum(1)
    print(f"{name}: weighted error with imatrix / without = {e_imatrix.sum() / e_plain.sum():.3f}")
    assert (e_imatrix < e_plain).all()
    assert e_imatrix.sum() < 0.85 * e_plain.sum()


def test_threads_and_chunks_give_the_same_bytes(monkeypatch):
    x, qw = weights(48, 512, seed=2), importances("gamma", 512)
    for qt in (QT.Q4_K, QT.Q5_0):
        one = imatrix_quants.quantize(x, qt, qw, threads=1)
        monkeypatch.setattr(kquants, "_CHUNK_BLOCKS", 7)  # the chunking both quantizers share
        np.testing.assert_array_equal(imatrix_quants.quantize(x, qt, qw, threads=3), one)
        monkeypatch.undo()


@pytest.mark.parametrize("qw, message", [
    (np.ones(100, np.float32), "needs 256 values"),
    (-np.ones(256, np.float32), "negative"),
    (np.full(256, np.nan, np.float32), "NaN"),
])
def test_bad_imatrix_is_a_clear_error(qw, message):
    with pytest.raises(ValueError, match=message):
        imatrix_quants.quantize(np.zeros((2, 256), np.float32), QT.Q4_K, qw)


def test_unweighted_types_are_refused():
    with pytest.raises(ValueError, match="no imatrix quantizer for Q8_0"):
        imatrix_quants.quantize(np.zeros((1, 32), np.float32), QT.Q8_0, np.ones(32, np.float32))


# ------------------------------------------------------------------------------------------- vs ggml itself

def ggml_quantize_with_imatrix(lib, x: np.ndarray, qt: QT, qw: np.ndarray) -> np.ndarray:
    rows, cols = x.shape
    block, size = GGML_QUANT_SIZES[qt]
    out = np.zeros((rows, cols // block * size), np.uint8)
    x, qw = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(qw, np.float32)
    lib.ggml_quantize_chunk(int(qt), x.ctypes.data, out.ctypes.data, 0, rows, cols, qw.ctypes.data)
    return out


@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", TYPES)
def test_matches_ggml_with_the_same_imatrix(name):
    lib = ctypes.CDLL(str(ggml_base_library()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    qt = QT[name]
    size = GGML_QUANT_SIZES[qt][1]
    x = weights(128, 1024, seed=3)
    for kind in ("gamma", "sparse", "wide"):
        qw = importances(kind, 1024, seed=5)
        ours, theirs = imatrix_quants.quantize(x, qt, qw), ggml_quantize_with_imatrix(lib, x, qt, qw)
        same = float((ours.reshape(-1, size) == theirs.reshape(-1, size)).all(1).mean())
        print(f"{name} {kind}: {same:.1%} of blocks bit-identical")
        assert same == 1.0, (kind, same)
