"""Which storage type each tensor gets, and the quantization itself.

Rules (they follow llama.cpp's converter and llama-quantize, so files compare like for like):
  f32          everything F32
  f16 / bf16   2-D weights in that type; 1-D tensors (norms, biases) F32
  q8_0         2-D weights Q8_0; 1-D F32
  q4_0         2-D weights Q4_0, except the output matrix (output.weight, or token_embd.weight when the
               embeddings are tied, since it is then the output matrix) which gets Q8_0: the logits are the
               most quantization-sensitive product in the model
  q2_k, q3_k_m, q4_k_s, q4_k_m, q5_k_m, q6_k
               llama.cpp's K-quant mixes: the type depends on the tensor's role and layer (quant_mix.py,
               docs/quantization.md), so these are planned over the whole tensor list (plan_qtypes)
Block formats need the row length to be a multiple of 32; other rows fall back to F16 (K types: quant_mix's
fallbacks first). Q4_0/Q5_0/Q5_1/Q8_0 go through gguf.quants.quantize so blocks are bit-identical to ggml's;
the K types and IQ4_NL through our own quantizers (kquants.py). Given an importance matrix, the types with a
weighted form in ggml (Q2_K..Q6_K, Q4_0, Q4_1, Q5_0, Q5_1) go through imatrix_quants.py instead.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT, LlamaFileType
from gguf.quants import quantize

from . import imatrix_quants, kquants
from .quant_mix import MIXES, plan_mix

QUANT_TYPES: dict[str, QT] = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0}

FILE_TYPES: dict[str, LlamaFileType] = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
    "q4_0": LlamaFileType.MOSTLY_Q4_0,
}

FILE_TYPES.update({name: mix.file_type for name, mix in MIXES.items()})

QUANT_NAMES = tuple(QUANT_TYPES) + tuple(MIXES)


def check_quant(quant: str, *, k_mixes: bool = True) -> str:
    """quant, if it is one of QUANT_NAMES (k_mixes=False: one of the plain types) else a ValueError."""
    if quant in MIXES and not k_mixes:
        raise ValueError(f"--quant {quant}: the K-quant mixes are for the llama/qwen2-style decoders; this model "
                         f"takes {', '.join(QUANT_TYPES)}")
    if quant not in QUANT_TYPES and quant not in MIXES:
        raise ValueError(f"unknown quant {quant!r}; choose one of {', '.join(QUANT_NAMES)}")
    return quant


def is_output_matrix(name: str, tied_embeddings: bool) -> bool:
    return name == "output.weight" or (tied_embeddings and name == "token_embd.weight")


def tensor_qtype(name: str, shape: tuple[int, ...], quant: str, *, tied_embeddings: bool = False) -> QT:
    """Storage type of GGUF tensor `name` with numpy shape `shape` (rows, cols) under `quant` (not a K mix:
    those depend on the other tensors, see plan_qtypes)."""
    check_quant(quant)
    if quant in MIXES:
        raise ValueError(f"{quant} types depend on the whole tensor list: use plan_qtypes")
    if quant == "f32" or len(shape) < 2:
        return QT.F32
    want = QUANT_TYPES[quant]
    if quant == "q4_0" and is_output_matrix(name, tied_embeddings):
        want = QT.Q8_0
    block = GGML_QUANT_SIZES[want][0]
    if shape[-1] % block != 0:
        return QT.F16
    return want


def plan_qtypes(tensors: list[tuple[str, tuple[int, ...]]], quant: str, *, tied_embeddings: bool = False,
                n_gqa: int = 1) -> list[QT]:
    """Storage type of each (GGUF name, numpy shape) under `quant`, in the given order."""
    check_quant(quant)
    if quant in MIXES:
        plan = plan_mix(tensors, quant, n_gqa=n_gqa, tied_embeddings=tied_embeddings)
        return [plan[name] for name, _ in tensors]
    return [tensor_qtype(name, shape, quant, tied_embeddings=tied_embeddings) for name, shape in tensors]


def tensor_nbytes(shape: tuple[int, ...], qtype: QT) -> int:
    """Bytes the tensor occupies in the file (before alignment padding)."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    return n // block * type_size


def quantize_array(data: np.ndarray, qtype: QT, imatrix: np.ndarray | None = None) -> np.ndarray:
    """float32 array -> the array GGUFWriter takes: float32/float16 as is, block types as uint8 rows.

    imatrix: the importance of each column (imatrix.py); used, as llama-quantize does, by the types that have
    a weighted quantizer (imatrix_quants.TYPES) and ignored by the others (Q8_0, F16, ...)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if imatrix is not None and qtype in imatrix_quants.TYPES:
        return imatrix_quants.quantize(data, qtype, imatrix)
    if qtype in kquants.TYPES:
        return kquants.quantize(data, qtype)
    out = quantize(data, qtype)
    if qtype == QT.BF16:            # gguf returns BF16 as raw bytes; keep the element shape readable
        out = out.view(np.uint16)
    return out
