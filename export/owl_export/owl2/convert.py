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
           (reserved for Owl2.1, not written: blk.N.img.attn_q.weight and .bias on q/k/v)
  keys     owl2.variant "owl2"|"owl1", owl2.image_tokens UINT32 (abstractor queries + vit_eos),
           owl2.vision.image_size UINT32, owl2.vision.image_mean / image_std FLOAT32[3] (CLIP's)
The checkpoints' rotary_emb.inv_freq buffers are not exported (recomputed from rope.freq_base).
"""
from __future__ import annotations

import sys
from pathlib import Path

import gguf

from ..checkpoint import CheckpointError, PrefixView, UnsupportedModelError, load_checkpoint
from ..convert_text import PlannedTensor, add_text_hparams, format_summary, pad_vocab, plan_tensor, \
    text_tensor_plan, write_gguf
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


def owl2_tensor_plan(cfg: Owl2Config, tensors) -> list[PlannedTensor]:
    """llama's tensors (the text branch), each Owl2 block's image-branch tensors right after it.
    tensors: the checkpoint (the v1 LLM is seen without its `language_model.` prefix by the caller)."""
    c = cfg.text
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
                             tied_embeddings=self.cfg.text.tie_word_embeddings, progress=progress)
        summary["variant"] = self.cfg.variant
        if progress:
            print(format_summary(summary), file=sys.stderr)
        return summary


def convert_owl2_decoder(hf_dir: str | Path, out_path: str | Path, quant: str = "f16",
                         progress: bool = False) -> dict:
    """Write the decoder GGUF of an mPLUG-Owl2 / mPLUG-Owl checkpoint; returns write_gguf's summary plus the
    variant."""
    return PreparedOwl2Decoder(hf_dir, quant).write(out_path, progress)
