"""Builds the PyTorch reference from a GGUF's own (dequantized) weights, so quantized kernels can be checked
exactly (against the weights they really use) apart from the quantization error itself. Matrix products with
Q8_0 / Q4_0 weights round their input to int8 blocks first, as the runtime's kernels (and llama.cpp's) do; with
K-quant weights (Q2_K..Q6_K) to llama.cpp's Q8_K blocks of 256."""
from __future__ import annotations

import re

import gguf
import numpy as np
import torch

from owl_export.checkpoint import TextConfig, load_config
from owl_export.convert_text import llama_unpermute
from owl_export.reference.decoder import TextDecoder, _linear
from quant_reference import q8k_activations, quantized_activations

_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def reference_from_gguf(gguf_path, hf_dir, dtype=torch.float64) -> TextDecoder:
    cfg = TextConfig.from_dict(load_config(hf_dir))
    reader = gguf.GGUFReader(str(gguf_path))
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    tensors, int8_inputs, q8k_inputs = {}, set(), set()
    k_types = {gguf.GGMLQuantizationType[f"Q{b}_K"] for b in range(2, 7)}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # ggml order -> row-major
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", t.name)
        name = f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}" if m else _NAMES[t.name]
        if arch == "llama" and m and m.group(2) in ("attn_q.weight", "attn_k.weight"):
            w = llama_unpermute(w, cfg.num_heads if m.group(2) == "attn_q.weight" else cfg.num_kv_heads)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(w))
        if t.tensor_type in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0):
            int8_inputs.add(name)
        elif t.tensor_type in k_types:
            q8k_inputs.add(name)
    ref = TextDecoder(cfg, tensors, dtype)
    quantized = {id(ref.w[_ref_key(n)]) for n in int8_inputs}
    quantized_k = {id(ref.w[_ref_key(n)]) for n in q8k_inputs}

    def linear(x, w, b=None):
        if id(w) in quantized:
            x = torch.from_numpy(quantized_activations(x.numpy())).to(x.dtype)
        elif id(w) in quantized_k:
            x = torch.from_numpy(q8k_activations(x.numpy())).to(x.dtype)
        return _linear(x, w, b)

    ref.linear = linear
    return ref


def _ref_key(hf_name: str) -> str:
    """HF tensor name -> TextDecoder.w key (e.g. model.layers.0.self_attn.q_proj.weight -> model.layers.0.q_proj)."""
    if hf_name == "model.embed_tokens.weight":
        return "embed"
    if hf_name == "lm_head.weight":
        return "lm_head"
    return hf_name.removesuffix(".weight").replace("self_attn.", "").replace("mlp.", "")
