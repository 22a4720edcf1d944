"""Q4_K / Q5_K / Q6_K weights on the CUDA backend (src/cuda/matmul_kquant.cu), on a GPU: each type's matmul
against float64 references at decode (matrix-vector, T <= 8) and prefill (GEMM) token counts, get_rows bit for
bit, and a Q4_K_M-style model on the GPU against the CPU. The block arithmetic the kernels share with the host is
tested without a GPU in test_cuda_kquant_blocks.py. Skips without a GPU.

Activations: for T <= 8 the kernels round them to int8 blocks of 32 (the Q4_0 / Q8_0 rule, tests/quant_reference.py)
and multiply exactly; for more tokens they use the fp32 activations. Against the float64 product with those
activations the only differences are fp32 accumulation: 1e-5 of the largest output (as the other types in
test_backend_equivalence.py), and for more tokens on sm_80+ the tensor cores' accumulation drift
(test_cuda_tensor_core.tensor_core_tol). The CPU backend rounds K-quant activations to Q8_K blocks of 256 instead, so the
CPU and the GPU agree only to that rounding (~1e-2 of the largest logit on the tiny model)."""
import numpy as np
import pytest

import owl_cpp
from owl_cpp import _core, _testing
from kquant_blocks import QK_K, TYPE_IDS, quantize
from quant_reference import quantized_activations
from test_cuda_tensor_core import tensor_core_tol
from test_kquant_kernels import LOGIT_TOL, q4_k_m_mix, write_model

HAS_GPU = "cuda" in _core.available_backends()
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU visible")
TYPES = ["Q4_K", "Q5_K", "Q6_K"]
ops = _testing.ops


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert not np.isnan(a).any(), "the op left elements unwritten (NaN poison) or produced NaN"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def cuda():
    return _testing.Backend("cuda", threads=2)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("T", [1, 3, 8, 9, 64])
@pytest.mark.parametrize("rows,cols", [(1, 256), (37, 768), (301, 2048), (67, 4096), (129, 11008)])
def test_kq_matmul_matches_the_reference(cuda, type_name, T, rows, cols):
    rng = np.random.default_rng(rows * 7 + cols + T)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    raw = quantize(w, type_name)
    wd = ops.dequantize(raw, TYPE_IDS[type_name], rows * cols).reshape(rows, cols).astype(np.float64)
    x, bias = rng.standard_normal((T, cols)).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    xr = quantized_activations(x) if T <= 8 else x.astype(np.float64)
    want = xr @ wd.T
    tol = 1e-5 if T <= 8 else tensor_core_tol(cols)  # (the SIMT GEMM of GPUs below sm_80 meets 1e-5 too)
    got = cuda.matmul(raw, TYPE_IDS[type_name], rows, cols, x, bias)
    assert rel(got, want + bias) < tol
    assert rel(cuda.matmul(raw, TYPE_IDS[type_name], rows, cols, x), want) < tol
    # and the CPU's float64 reference with the unrounded activations: the int8 rounding's few 1e-3
    ref = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x, bias, ref=True)
    assert rel(got, ref) < 3e-2


@pytest.mark.parametrize("type_name", TYPES)
def test_kq_get_rows_is_the_cpu_dequantization(cuda, type_name):
    rng = np.random.default_rng(11)
    rows, cols = 23, 1536
    raw = quantize(rng.standard_normal((rows, cols)).astype(np.float32), type_name)
    ids = np.array([22, 0, 5, 5, 13, 1], np.int32)
    got = cuda.get_rows(raw, TYPE_IDS[type_name], rows, cols, ids)
    want = ops.dequantize(raw, TYPE_IDS[type_name], rows * cols).reshape(rows, cols)[ids]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K"])
def test_kq_refused_types_name_themselves(cuda, type_name):
    raw = quantize(np.zeros((2, 256), np.float32), type_name)
    with pytest.raises(Exception, match=f"CUDA backend has no kernel for {type_name}; use the CPU"):
        cuda.matmul(raw, TYPE_IDS[type_name], 2, 256, np.zeros((1, 256), np.float32))


def greedy(model, backend, prompt, steps):
    c = _core.Context(model, 128, 2, 256, kv_type="f32", backend=backend)
    out = []
    logits = c.eval(prompt)
    for _ in range(steps):
        out.append(int(np.argmax(logits)))
        logits = c.eval([out[-1]])
    return out


def test_q4_k_m_model_matches_the_cpu(tmp_path):
    """The tiny llama of test_kquant_kernels.py in a Q4_K_M-like mix (Q4_K, Q6_K for output / one ffn_down / one
    attn_v; token_embd Q4_K): the GPU's logits against the same file on the CPU and against the model dequantized
    to F32, prompt (GEMM, n_batch 256) and one token at a time (matrix-vector), and greedy decoding."""
    qpath, fpath = write_model(tmp_path / "tiny-q4_k_m.gguf", q4_k_m_mix)
    model = _core.Model.load(str(qpath))
    exact = owl_cpp.load(fpath, threads=2).logits  # the dequantized model on the CPU: no activation rounding
    ids = [1, 259, 260, 262, 263, 100, 17, 200, 261, 5, 40, 41]
    want = exact(ids)
    spread = np.abs(want).max()
    cpu = _core.Context(model, 128, 2, 256, kv_type="f32", backend="cpu").eval(ids, all_logits=True)
    noise = 0.0  # the largest GPU - CPU logit difference: the two activation roundings
    # n_batch 256: the 12-token prompt goes through the GEMMs, which take fp32 activations, so the GPU is the
    # exact model to fp32 accuracy; n_batch 1: the matrix-vector kernels round activations to int8 blocks of 32.
    # (Near-ties of this random model can flip between the GPU and the CPU's Q8_K rounding: no argmax check.)
    for n_batch, tol in ((256, 1e-3), (1, LOGIT_TOL)):
        got = _core.Context(model, 128, 2, n_batch, kv_type="f32", backend="cuda").eval(ids, all_logits=True)
        assert np.isfinite(got).all()
        assert np.abs(got - want).max() / spread < tol, (n_batch, np.abs(got - want).max() / spread)
        assert np.abs(got - cpu).max() / spread < 2 * LOGIT_TOL, n_batch
        noise = max(noise, np.abs(got - cpu).max())
    # Greedy decoding: the GPU's tokens, scored by the CPU along the GPU's own sequence, are the CPU's choices or
    # within twice the measured GPU - CPU difference of them (near ties may flip; a wrong kernel's picks do not).
    prompt = ids[:6]
    dev_tokens = greedy(model, "cuda", prompt, 12)
    cpu_tokens = greedy(model, "cpu", prompt, 12)
    seq = prompt + dev_tokens
    scored = _core.Context(model, 128, 2, 256, kv_type="f32", backend="cpu").eval(seq, all_logits=True)
    for i, tok in enumerate(dev_tokens):
        row = scored[len(prompt) - 1 + i]
        assert row[tok] >= row.max() - 2 * noise, (i, dev_tokens, cpu_tokens)
    assert dev_tokens[0] == cpu_tokens[0], (dev_tokens, cpu_tokens)
