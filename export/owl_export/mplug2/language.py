"""mPLUG-2's caption decoder (text_decoder.* of the official .pth) as decoder.gguf, general.architecture "mplug2".

Keys (besides general.* and the WordPiece vocabulary of owl_export.vocab.wordpiece_vocab, tokenizer.ggml.model
"bert"):
  mplug2.embedding_length              hidden size (1024 in the release)
  mplug2.block_count                   decoder layers (12)
  mplug2.attention.head_count          heads (16); head_count_kv is not written (= head_count)
  mplug2.feed_forward_length           FFN width (4096)
  mplug2.context_length                learned positions (512): the longest context the runtime allows
  mplug2.attention.layer_norm_epsilon  every LayerNorm's eps (1e-12)
  mplug2.bos_token_id / eos_token_id   predictor.py's start ([CLS]) and end ([SEP]) tokens
  mplug2.task                          "caption" or "qa" (absent in older files: caption)
  mplug2.caption.{beam_size,min_length,max_length}, mplug2.caption.prompt   the checkpoint's decoding options
                                       (a VideoQA file: mplug2.qa.{beam_size,min_length,max_length} instead;
                                       its decoder cross-attends to question.onnx's memory, not the video)

Tensors ([rows, cols] as numpy sees them; N = layer; every Linear has its bias, every LayerNorm weight + bias):
  token_embd.weight            [V, E]  cls.predictions.decoder.weight (the word embeddings, tied to the output)
  position_embd.weight         [P, E]  bert.embeddings.position_embeddings + token_type_embeddings[0] (folded:
                                       the decoder only ever uses token type 0); kept F32 under every quant
  token_embd_norm.{weight,bias}        bert.embeddings.LayerNorm
  blk.N.attn_{q,k,v}.{weight,bias}     attention.self.{query,key,value}
  blk.N.attn_output.{weight,bias}      attention.output.dense
  blk.N.attn_output_norm.{weight,bias} attention.output.LayerNorm
  blk.N.cross_attn_{q,k,v}.{weight,bias}      crossattention.self.{query,key,value}
  blk.N.cross_attn_output.{weight,bias}       crossattention.output.dense
  blk.N.cross_attn_output_norm.{weight,bias}  crossattention.output.LayerNorm
  blk.N.ffn_up.{weight,bias}           intermediate.dense
  blk.N.ffn_down.{weight,bias}         output.dense
  blk.N.layer_output_norm.{weight,bias}  output.LayerNorm
  output_transform.{weight,bias}       cls.predictions.transform.dense
  output_norm.{weight,bias}            cls.predictions.transform.LayerNorm
  output.bias                  [V]     cls.predictions.decoder.bias (else cls.predictions.bias: tied)
No output.weight: the logits use token_embd (as the reference's load_state_dict tying does).

Quant types: owl_export.quantize's rules (f32, f16, bf16, q8_0, q4_0; 1-D tensors F32; q4_0 keeps the tied
output matrix at Q8_0).
"""
from __future__ import annotations

import sys
from pathlib import Path

import gguf
import torch

from ..convert_text import PlannedTensor, format_summary, write_gguf
from ..quantize import FILE_TYPES, check_quant
from ..vocab import wordpiece_vocab, write_vocab
from .config import DECODER, Mplug2CheckpointError, Mplug2Config, load_checkpoint

ARCH = "mplug2"

_LAYER = {  # GGUF suffix -> official module under text_decoder.bert.encoder.layer.N.
    "attn_q": "attention.self.query", "attn_k": "attention.self.key", "attn_v": "attention.self.value",
    "attn_output": "attention.output.dense", "attn_output_norm": "attention.output.LayerNorm",
    "cross_attn_q": "crossattention.self.query", "cross_attn_k": "crossattention.self.key",
    "cross_attn_v": "crossattention.self.value", "cross_attn_output": "crossattention.output.dense",
    "cross_attn_output_norm": "crossattention.output.LayerNorm",
    "ffn_up": "intermediate.dense", "ffn_down": "output.dense", "layer_output_norm": "output.LayerNorm",
}


def _planned(name: str, source: str, get) -> PlannedTensor:
    t = get()
    return PlannedTensor(name, source, tuple(t.shape), lambda: get().to(torch.float32).numpy())


def mplug2_tensor_plan(sd: dict, cfg: Mplug2Config) -> list[PlannedTensor]:
    """Every tensor of decoder.gguf in write order (module docstring), read from the state dict on demand."""
    E, V = cfg.text_width, cfg.vocab_size

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in sd:
            raise Mplug2CheckpointError(f"checkpoint is missing {key!r}")
        t = sd[key]
        if tuple(t.shape) != shape:
            raise Mplug2CheckpointError(f"{key}: shape {tuple(t.shape)}, expected {shape}")
        return t

    plan: list[PlannedTensor] = []

    def add(name: str, key: str, shape: tuple[int, ...]):
        plan.append(_planned(name, key, lambda: take(key, shape)))

    emb = DECODER + "bert.embeddings."
    add("token_embd.weight", DECODER + "cls.predictions.decoder.weight", (V, E))

    def positions() -> torch.Tensor:  # token type 0 folded in: the decoder never uses another
        types = sd.get(emb + "token_type_embeddings.weight")
        if types is None or types.dim() != 2 or types.shape[1] != E:
            raise Mplug2CheckpointError(f"checkpoint is missing {emb}token_type_embeddings.weight [n, {E}]")
        return take(emb + "position_embeddings.weight", (cfg.max_positions, E)).float() + types[0].float()

    plan.append(_planned("position_embd.weight", emb + "position_embeddings.weight + token_type_embeddings[0]",
                         positions))
    add("token_embd_norm.weight", emb + "LayerNorm.weight", (E,))
    add("token_embd_norm.bias", emb + "LayerNorm.bias", (E,))
    I = cfg.text_intermediate
    for i in range(cfg.decoder_layers):
        p = f"{DECODER}bert.encoder.layer.{i}."
        for suffix, module in _LAYER.items():
            if suffix.endswith("_norm"):
                shape_w = (E,)
            elif suffix == "ffn_up":
                shape_w = (I, E)
            elif suffix == "ffn_down":
                shape_w = (E, I)
            else:
                shape_w = (E, E)
            add(f"blk.{i}.{suffix}.weight", p + module + ".weight", shape_w)
            add(f"blk.{i}.{suffix}.bias", p + module + ".bias", (shape_w[0],))
    c = DECODER + "cls.predictions."
    add("output_transform.weight", c + "transform.dense.weight", (E, E))
    add("output_transform.bias", c + "transform.dense.bias", (E,))
    add("output_norm.weight", c + "transform.LayerNorm.weight", (E,))
    add("output_norm.bias", c + "transform.LayerNorm.bias", (E,))
    bias = c + "decoder.bias" if c + "decoder.bias" in sd else c + "bias"
    add("output.bias", bias, (V,))
    return plan


def add_mplug2_keys(writer: gguf.GGUFWriter, cfg: Mplug2Config) -> None:
    if cfg.hidden_act != "gelu":
        raise Mplug2CheckpointError(f"hidden_act {cfg.hidden_act!r}: the runtime implements the exact (erf) 'gelu'")
    if cfg.encoder_width != cfg.text_width:
        raise Mplug2CheckpointError(f"encoder_width {cfg.encoder_width} != text width {cfg.text_width}: the video tokens "
                                    "the decoder attends to are text-width")
    writer.add_uint32(f"{ARCH}.embedding_length", cfg.text_width)
    writer.add_uint32(f"{ARCH}.block_count", cfg.decoder_layers)
    writer.add_uint32(f"{ARCH}.attention.head_count", cfg.text_heads)
    writer.add_uint32(f"{ARCH}.feed_forward_length", cfg.text_intermediate)
    writer.add_uint32(f"{ARCH}.context_length", cfg.max_positions)
    writer.add_float32(f"{ARCH}.attention.layer_norm_epsilon", cfg.text_eps)
    writer.add_uint32(f"{ARCH}.bos_token_id", cfg.bos_id)
    writer.add_uint32(f"{ARCH}.eos_token_id", cfg.eos_id)
    writer.add_string(f"{ARCH}.task", cfg.task)
    writer.add_uint32(f"{ARCH}.{cfg.task}.beam_size", cfg.beam_size)
    writer.add_uint32(f"{ARCH}.{cfg.task}.min_length", cfg.min_length)
    writer.add_uint32(f"{ARCH}.{cfg.task}.max_length", cfg.max_length)
    if cfg.task == "caption":
        writer.add_string(f"{ARCH}.caption.prompt", cfg.prompt)


def read_vocab_tokens(ckpt_dir: str | Path) -> list[str]:
    path = Path(ckpt_dir) / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt_dir}: no vocab.txt (the bert-large-uncased WordPiece vocabulary)")
    tokens = path.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return tokens


def write_decoder_gguf(sd: dict, cfg: Mplug2Config, tokens: list[str], out_path: str | Path, quant: str = "f16",
                       name: str = "mplug2", progress: bool = False) -> dict:
    """decoder.gguf from a state dict + config + the WordPiece tokens; returns write_gguf's summary."""
    check_quant(quant, k_mixes=False)             # its BERT decoder is not in llama.cpp's mixes
    if len(tokens) > cfg.vocab_size:
        raise Mplug2CheckpointError(f"vocab.txt has {len(tokens)} tokens but the word embeddings only {cfg.vocab_size} rows")
    plan = mplug2_tensor_plan(sd, cfg)
    vocab = wordpiece_vocab(tokens)

    def setup(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name)
        writer.add_file_type(int(FILE_TYPES[quant]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_mplug2_keys(writer, cfg)
        write_vocab(writer, vocab)

    summary = write_gguf(out_path, setup, ARCH, plan, quant, tied_embeddings=True, progress=progress,
                         keep_f32=frozenset({"position_embd.weight"}))
    if progress:
        print(format_summary(summary), file=sys.stderr)
    return summary


def convert_mplug2_decoder(ckpt_dir: str | Path, out_path: str | Path, quant: str = "f16",
                           progress: bool = False) -> dict:
    """The checkpoint directory (.pth + BERT json + vocab.txt) -> decoder.gguf."""
    sd, cfg = load_checkpoint(ckpt_dir)
    return write_decoder_gguf(sd, cfg, read_vocab_tokens(ckpt_dir), out_path, quant,
                              name=Path(ckpt_dir).resolve().name, progress=progress)
