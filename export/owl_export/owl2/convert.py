"""mPLUG-Owl2 / mPLUG-Owl (v1) HF checkpoint directory -> the decoder GGUF (general.architecture "owl2").

A llama GGUF in llama.cpp's conventions (hyper-parameters as `owl2.*` under llama's key names, Q and K rows
permuted for ggml's NORM rope) whose tensors are the text branch; what the modality-adaptive module adds
(docs/owl2.md A5, A6) is namespaced per block:

  tensors  blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}.weight
                                            text branch (multiway.0; v1: the plain LLaMA weights)
           blk.N.img.attn_norm.weight       input_layernorm.multiway.1            (Owl2 only, every layer)
           blk.N.img.attn_k.weight          self_attn.k_proj.multiway.1 (permuted like attn_k)
           blk.N.img.attn_v.weight          self_attn.v_proj.multiway.1
           blk.N.img.ffn_norm.weight        post_attention_layernorm.multiway.1
           token_embd, output_norm, output  shared
  Owl2.1 (variant "owl2_1", docs/owl2.md PART B; only the fused Q|K|V is per modality):
           blk.N.attn_norm / ffn_norm       transformer.h.N.ln_1 / ln_2 (shared: no img norms)
           blk.N.attn_{q,k,v}.weight/.bias  attn.c_attn.multiway.0 cut in contiguous thirds [q|k|v]
                                            (q and k rows and biases permuted like llama's)
           blk.N.img.attn_{q,k,v}.weight/.bias  attn.c_attn.multiway.1, the same way
           blk.N.attn_output                attn.c_proj
           blk.N.ffn_gate / ffn_up / ffn_down   mlp.w2 (the one under silu) / mlp.w1 / mlp.c_proj
           token_embd, output_norm, output  transformer.wte, transformer.ln_f, lm_head
           context_length = seq_length; the tokenizer from qwen.tiktoken (vocab.py)
  keys     owl2.variant "owl2"|"owl2_1"|"owl1", owl2.image_tokens UINT32 (abstractor queries + vit_eos),
           owl2.vision.image_size UINT32, owl2.vision.image_mean / image_std FLOAT32[3] (CLIP's)
The checkpoints' rotary_emb.inv_freq buffers are not exported (recomputed from rope.freq_base).
"""
from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

import torch

from ..checkpoint import CheckpointError, PrefixView, UnsupportedModelError, load_checkpoint, tensor_shape
from ..convert_text import PlannedTensor, add_text_hparams, format_summary, llama_permute, pad_vocab, \
    plan_tensor, text_tensor_plan, write_gguf
from ..quantize import FILE_TYPES, check_quant
from .config import CLIP_MEAN, CLIP_STD, Owl2Config

ARCH = "owl2"
# the modules with one weight per modality: checkpoint module -> GGUF per-block name (A5, A6)
MULTIWAY = (("input_layernorm", "attn_norm"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
            ("post_attention_layernorm", "ffn_norm"))
IMAGE_TENSORS = tuple(f"img.{g}.weight" for _, g in MULTIWAY)   # blk.N.<these>


def _text_source(name: str) -> str:
    """The checkpoint name of a text-branch tensor: model.layers.N.<multiway module>.weight -> .multiway.0."""
    for module, _ in MULTIWAY:
        if name.endswith(f".{module}.weight") and name.startswith("model.layers."):
            return name[: -len("weight")] + "multiway.0.weight"
    return name


QKV = ("attn_q", "attn_k", "attn_v")
# Owl2.1's image branch: blk.N.<these> (weights and biases of the image Q|K|V)
IMAGE_TENSORS_2_1 = tuple(f"img.{g}.{kind}" for g in QKV for kind in ("weight", "bias"))


def _third(tensors, gguf_name: str, hf_name: str, part: int, permute_heads: int, cache: dict) -> PlannedTensor:
    """Rows [part*n/3, (part+1)*n/3) of a fused [3n, H] weight or [3n] bias (Qwen's c_attn: [q | k | v]).
    cache: the last two fused tensors read (a weight and its bias), so each is read once, not three times."""
    if hf_name not in tensors:
        raise CheckpointError(f"checkpoint is missing tensor {hf_name!r} (needed for {gguf_name})")
    shape = tensor_shape(tensors, hf_name)
    if shape[0] % 3:
        raise CheckpointError(f"{hf_name}: {shape[0]} rows do not split into q, k and v thirds")
    n = shape[0] // 3

    def load() -> np.ndarray:
        if hf_name not in cache:
            while len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[hf_name] = tensors[hf_name].to(torch.float32).numpy()
        a = np.ascontiguousarray(cache[hf_name][part * n:(part + 1) * n])
        return llama_permute(a, permute_heads) if permute_heads else a

    return PlannedTensor(gguf_name, hf_name, (n, *shape[1:]), load)


def _owl2_1_plan(cfg: Owl2Config, tensors) -> list[PlannedTensor]:
    """docs/owl2.md PART B: the text branch under llama.cpp's names (with q/k/v biases), then per block the
    image Q/K/V (weights and biases) from c_attn.multiway.1."""
    c, p0 = cfg.text, cfg.llm_prefix
    H, I, Q = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim
    if c.num_kv_heads != c.num_heads:
        raise CheckpointError("mplug_owl2_1: Qwen-7B has no grouped-query attention (kv heads != heads)")
    want = {"token_embd.weight": (c.vocab_size, H), "output_norm.weight": (H,), "output.weight": (c.vocab_size, H),
            "attn_norm.weight": (H,), "ffn_norm.weight": (H,), "attn_output.weight": (H, Q),
            "ffn_gate.weight": (I, H), "ffn_up.weight": (I, H), "ffn_down.weight": (H, I)}
    for g in QKV:
        want[f"{g}.weight"], want[f"{g}.bias"] = (Q, H), (Q,)
    plan: list[PlannedTensor] = []
    cache: dict = {}

    def check(t: PlannedTensor) -> PlannedTensor:
        name = t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name
        expect = want[name.removeprefix("img.")]
        if t.shape != expect:
            raise CheckpointError(f"{t.source}: shape {t.shape} as {t.name}, expected {expect} from config.json")
        return t

    plan.append(plan_tensor(tensors, "token_embd.weight", p0 + "wte.weight"))
    for i in range(c.num_layers):
        p, b = f"{p0}h.{i}.", f"blk.{i}."
        branch = {}
        for mw, prefix in ((0, b), (1, b + "img.")):
            branch[mw] = []
            for part, g in enumerate(QKV):
                heads = c.num_heads if g in ("attn_q", "attn_k") else 0
                for kind in ("weight", "bias"):
                    hf = f"{p}attn.c_attn.multiway.{mw}.{kind}"
                    branch[mw].append(_third(tensors, f"{prefix}{g}.{kind}", hf, part, heads, cache))
        plan.append(plan_tensor(tensors, b + "attn_norm.weight", p + "ln_1.weight"))
        plan += branch[0]
        plan.append(plan_tensor(tensors, b + "attn_output.weight", p + "attn.c_proj.weight"))
        plan.append(plan_tensor(tensors, b + "ffn_norm.weight", p + "ln_2.weight"))
        plan.append(plan_tensor(tensors, b + "ffn_gate.weight", p + "mlp.w2.weight"))   # silu(w2(x)) * w1(x)
        plan.append(plan_tensor(tensors, b + "ffn_up.weight", p + "mlp.w1.weight"))
        plan.append(plan_tensor(tensors, b + "ffn_down.weight", p + "mlp.c_proj.weight"))
        plan += branch[1]
    plan.append(plan_tensor(tensors, "output_norm.weight", p0 + "ln_f.weight"))
    plan.append(plan_tensor(tensors, "output.weight", cfg.lm_head))
    for t in plan:
        check(t)
    return plan


def owl2_tensor_plan(cfg: Owl2Config, tensors) -> list[PlannedTensor]:
    """llama's tensors (the text branch), each Owl2 block's image-branch tensors right after it.
    tensors: the checkpoint (the v1 LLM is seen without its `language_model.` prefix by the caller)."""
    c = cfg.text
    if cfg.variant == "owl2_1":
        return _owl2_1_plan(cfg, tensors)
    if c.qkv_bias or c.o_bias:
        raise UnsupportedModelError("config.json: attention_bias=true is not supported for mPLUG-Owl2 / mPLUG-Owl")
    plan = text_tensor_plan(c, tensors, _text_source if cfg.multiway else None)
    if not cfg.multiway:
        return plan
    H, KV = c.hidden_size, c.num_kv_heads * c.head_dim
    want = {"attn_norm": (H,), "attn_k": (KV, H), "attn_v": (KV, H), "ffn_norm": (H,)}
    for i in range(c.num_layers):
        planned = []
        for module, g in MULTIWAY:
            hf_name = f"model.layers.{i}.{module}.multiway.1.weight"
            t = plan_tensor(tensors, f"blk.{i}.img.{g}.weight", hf_name, c.num_kv_heads if g == "attn_k" else 0)
            if t.shape != want[g]:
                raise CheckpointError(f"{hf_name}: shape {t.shape}, expected {want[g]} from config.json")
            planned.append(t)
        last = max(k for k, t in enumerate(plan) if t.name.startswith(f"blk.{i}."))
        plan[last + 1:last + 1] = planned
    return plan


def add_owl2_keys(writer: gguf.GGUFWriter, cfg: Owl2Config) -> None:
    A, T = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType
    writer.add_string(f"{ARCH}.variant", cfg.variant)
    writer.add_uint32(f"{ARCH}.image_tokens", cfg.image_tokens)
    writer.add_uint32(f"{ARCH}.vision.image_size", cfg.vision.image_size)
    writer.add_key_value(f"{ARCH}.vision.image_mean", [float(x) for x in CLIP_MEAN], A, sub_type=T.FLOAT32)
    writer.add_key_value(f"{ARCH}.vision.image_std", [float(x) for x in CLIP_STD], A, sub_type=T.FLOAT32)


class PreparedOwl2Decoder:
    """Everything the GGUF needs, read and checked before any file is written."""

    def __init__(self, hf_dir: str | Path, quant: str):
        from ..vocab import load_hf_vocab

        self.quant = check_quant(quant)
        config, tensors, self.hf_path = load_checkpoint(hf_dir)
        self.cfg = Owl2Config.from_dict(config)
        lm = tensors if self.cfg.multiway else PrefixView(tensors, "language_model.")
        self.plan = owl2_tensor_plan(self.cfg, lm)
        self.vocab = pad_vocab(load_hf_vocab(self.hf_path), self.cfg.text.vocab_size)

    def setup(self, writer: gguf.GGUFWriter) -> None:
        from ..vocab import write_vocab

        writer.add_name(self.hf_path.resolve().name)
        writer.add_file_type(int(FILE_TYPES[self.quant]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_text_hparams(writer, self.cfg.text)      # writer.arch = "owl2" gives the owl2.* prefix
        add_owl2_keys(writer, self.cfg)
        write_vocab(writer, self.vocab)

    def write(self, out_path: str | Path, progress: bool = True) -> dict:
        summary = write_gguf(out_path, self.setup, ARCH, self.plan, self.quant,
                             tied_embeddings=self.cfg.text.tie_word_embeddings, progress=progress,
                             n_gqa=self.cfg.text.num_heads // self.cfg.text.num_kv_heads)
        summary["variant"] = self.cfg.variant
        if progress:
            print(format_summary(summary), file=sys.stderr)
        return summary


def convert_owl2_decoder(hf_dir: str | Path, out_path: str | Path, quant: str = "f16",
                         progress: bool = False) -> dict:
    """Write the decoder GGUF of an mPLUG-Owl2 / mPLUG-Owl checkpoint; returns write_gguf's summary plus the
    variant."""
    return PreparedOwl2Decoder(hf_dir, quant).write(out_path, progress)
