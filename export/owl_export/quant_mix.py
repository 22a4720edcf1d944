"""The K-quant mixes (`--quant q4_k_m` etc.): which ggml type each tensor gets, as llama.cpp's llama-quantize
picks them for llama / qwen2 decoders without an importance matrix (its llama_tensor_get_type), so our files
compare like for like with llama.cpp's. docs/quantization.md has the same table in words.

Per tensor, in llama.cpp's order (blocks by layer, names sorted within a block):
  1-D tensors and *_norm.weight        F32
  output.weight (or token_embd.weight when the embeddings are tied: it is then the output matrix)
                                       Q6_K, or Q8_0 when its rows are not a multiple of 256
  attn_v.weight (any tensor named *attn_v.weight: Owl2's blk.N.img.attn_v too), ffn_down, attn_output
                                       RULES below; i counts these tensors in file order, n = how many there are
                                       (for ffn_down n = the number of layers)
  everything else                      the mix's default type (Owl3's hyper_kv / hyper_gate_proj included)
Then a type whose block does not divide the row length falls back (FALLBACK), and to F16 if that does not
divide either. Not carried over: llama.cpp's special cases for 70B models, MoE experts, Falcon and fused
attn_qkv, none of which our exporters write.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT, LlamaFileType


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


Rule = Callable[[int, int, int], "QT | None"]     # (i, n, n_gqa) -> type, or None for the default


@dataclass(frozen=True)
class Mix:
    default: QT
    file_type: LlamaFileType
    rules: dict[str, Rule] = field(default_factory=dict)   # category -> rule


MIXES: dict[str, Mix] = {
    "q2_k": Mix(QT.Q2_K, LlamaFileType.MOSTLY_Q2_K, {
        "attn_v": lambda i, n, gqa: QT.Q4_K if gqa >= 4 else QT.Q3_K,
        "ffn_down": lambda i, n, gqa: QT.Q3_K,
        "attn_output": lambda i, n, gqa: QT.Q3_K}),
    "q3_k_m": Mix(QT.Q3_K, LlamaFileType.MOSTLY_Q3_K_M, {
        "attn_v": lambda i, n, gqa: QT.Q5_K if i < 2 else QT.Q4_K,
        "ffn_down": lambda i, n, gqa: QT.Q5_K if i < n // 16 else QT.Q4_K,
        "attn_output": lambda i, n, gqa: QT.Q4_K}),
    "q4_k_s": Mix(QT.Q4_K, LlamaFileType.MOSTLY_Q4_K_S, {
        "attn_v": lambda i, n, gqa: QT.Q5_K if i < 4 else None,
        "ffn_down": lambda i, n, gqa: QT.Q5_K if i < n // 8 else None}),
    "q4_k_m": Mix(QT.Q4_K, LlamaFileType.MOSTLY_Q4_K_M, {
        "attn_v": lambda i, n, gqa: QT.Q6_K if more_bits(i, n) else None,
        "ffn_down": lambda i, n, gqa: QT.Q6_K if more_bits(i, n) else None}),
    "q5_k_m": Mix(QT.Q5_K, LlamaFileType.MOSTLY_Q5_K_M, {
        "attn_v": lambda i, n, gqa: QT.Q6_K if more_bits(i, n) else None,
        "ffn_down": lambda i, n, gqa: QT.Q6_K if more_bits(i, n) else None}),
    "q6_k": Mix(QT.Q6_K, LlamaFileType.MOSTLY_Q6_K),
}

# a K type whose 256-block does not divide the row -> the 32-block type llama.cpp uses instead
FALLBACK = {QT.Q2_K: QT.Q4_0, QT.Q3_K: QT.Q4_0, QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}

_LAYER = re.compile(r"^blk\.(\d+)\.")


def category(name: str) -> str:
    """llama.cpp's tensor category by substring: output, token_embd, attn_v, attn_output, ffn_down, other
    (the categories no K mix treats specially are "other")."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for cat, key in (("attn_v", "attn_v.weight"), ("attn_output", "attn_output.weight"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def quantizable(name: str, shape: Sequence[int]) -> bool:
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name


def _layer(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def with_fallback(qtype: QT, cols: int) -> QT:
    if cols % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    qtype = FALLBACK.get(qtype, QT.F16)
    return qtype if cols % GGML_QUANT_SIZES[qtype][0] == 0 else QT.F16


def plan_mix(tensors: Sequence[tuple[str, Sequence[int]]], quant: str, *, n_gqa: int = 1,
             tied_embeddings: bool | None = None) -> dict[str, QT]:
    """name -> storage type for every (name, numpy shape (rows, cols)) under the K mix `quant`.

    n_gqa: attention heads per KV head (Q2_K keeps attn_v in Q4_K from 4 up). tied_embeddings defaults to
    llama.cpp's test: no output.weight among the tensors."""
    if quant not in MIXES:
        raise ValueError(f"unknown K-quant mix {quant!r}; choose one of {', '.join(MIXES)}")
    mix = MIXES[quant]
    names = [n for n, _ in tensors]
    if len(set(names)) != len(names):
        raise ValueError("plan_mix: tensor names repeat")
    if tied_embeddings is None:
        tied_embeddings = "output.weight" not in names
    n_layer = len({_layer(n) for n in names} - {-1})
    n_attn_v = sum(category(n) == "attn_v" and quantizable(n, s) for n, s in tensors)
    counters = {"attn_v": 0, "ffn_down": 0, "attn_output": 0}
    totals = {"attn_v": n_attn_v, "ffn_down": n_layer, "attn_output": n_layer}
    plan: dict[str, QT] = {}
    for name, shape in sorted(tensors, key=lambda t: (_layer(t[0]), t[0])):
        if not quantizable(name, shape):
            plan[name] = QT.F32 if len(shape) < 2 or "_norm.weight" in name else QT.F16
            continue
        cat, cols = category(name), int(shape[-1])
        if cat == "output" or (cat == "token_embd" and tied_embeddings):
            want = QT.Q8_0 if cols % GGML_QUANT_SIZES[mix.default][0] else QT.Q6_K
        elif cat in mix.rules or cat in counters:
            rule = mix.rules.get(cat)
            want = (rule(counters[cat], totals[cat], n_gqa) if rule else None) or mix.default
            counters[cat] += 1
        else:
            want = mix.default
        plan[name] = with_fallback(want, cols)
    return plan
