"""mPLUG-Owl3 HF checkpoint directory -> model directory: decoder.gguf (here) + vision.onnx (onnx_export.py).

decoder.gguf is a qwen2 GGUF in llama.cpp's conventions under general.architecture "owl3": the qwen2
hyper-parameters as `owl3.*`, qwen2's tensor names from the `language_model.` sub-checkpoint, and only what
Owl3 adds is new (docs/owl3.md §2.2, §4, §5):

  keys     owl3.variant "240728"|"241014"|"241101", owl3.hyper_layers INT32[] (0-based),
           owl3.hyper_gate "proj"|"vector"|"none", owl3.fused BOOL, owl3.mi_rope_offset UINT32,
           owl3.vision.{patch_size, num_patches} UINT32, tokenizer.chat_template (when the checkpoint has one)
           and the image preprocessing the runtime reads (it keeps no copy of these constants):
           owl3.vision.image_size UINT32, owl3.vision.image_mean/image_std FLOAT32[3], owl3.vision.resample
           STRING, owl3.vision.anchors INT32[] ((rows, cols) pairs), owl3.vision.anchor_strategy STRING,
           owl3.vision.cut_global_view BOOL, owl3.vision.cut_template STRING
  tensors  blk.N.hyper_kv.{weight [2*nkv*d, H], bias}   self_attn.v_kv_proj, rows kept in the checkpoint's
                                                        interleaved (kv head, K|V, dim) order
           blk.N.hyper_gate_proj.{weight [d, d], bias}  self_attn.gate_proj.0   (240728)
           blk.N.hyper_gate.weight [H]                  self_attn.gate          (241014)
"""
from __future__ import annotations

import sys
from pathlib import Path

import gguf

from ..checkpoint import CheckpointError, PrefixView, TextConfig, load_checkpoint
from ..convert_text import (PlannedTensor, add_text_hparams, pad_vocab, plan_tensor, read_chat_template,
                            text_tensor_plan, write_gguf)
from ..model_dir import (default_vision_quants, make_model_dir, summary_text, vision_outputs,
                         write_vision_manifest)
from ..quantize import FILE_TYPES, check_quant
from .variant import LM_PREFIX, Owl3Variant, detect_variant, text_config

ARCH = "owl3"
_SELF_ATTN = "model.layers.{}.self_attn."

# The official image processor's constants (docs/owl3.md §5.1, §5.2): ToTensor then Normalize(0.5, 0.5);
# torchvision's BICUBIC resize of a PIL image (= Pillow's bicubic); cut_cfg anchors grid_squ_6 as (rows, cols),
# anchor_strategy docowl, add_global True. The image size and cut template depend on the variant (variant.py).
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
RESAMPLE = "bicubic"
GRID_SQU_6 = ((2, 2), (1, 3), (1, 4), (3, 1), (4, 1), (2, 3), (3, 2))      # no (1, 1): 3..6 tiles
ANCHOR_STRATEGY = "docowl"
CUT_GLOBAL_VIEW = True


# ------------------------------------------------------------------------------------------- tensors

def owl3_tensor_plan(cfg: TextConfig, variant: Owl3Variant, lm_tensors) -> list[PlannedTensor]:
    """qwen2's tensors, each hyper layer's extra tensors right after its block. lm_tensors: the checkpoint
    seen without its `language_model.` prefix."""
    plan = text_tensor_plan(cfg, lm_tensors)
    d, H, kv_rows = cfg.head_dim, cfg.hidden_size, 2 * cfg.num_kv_heads * cfg.head_dim
    for i in variant.hyper_layers:
        p = _SELF_ATTN.format(i)
        extra = [(f"blk.{i}.hyper_kv.weight", p + "v_kv_proj.weight", (kv_rows, H)),
                 (f"blk.{i}.hyper_kv.bias", p + "v_kv_proj.bias", (kv_rows,))]
        if variant.gate == "proj":
            extra += [(f"blk.{i}.hyper_gate_proj.weight", p + "gate_proj.0.weight", (d, d)),
                      (f"blk.{i}.hyper_gate_proj.bias", p + "gate_proj.0.bias", (d,))]
        elif variant.gate == "vector":
            extra += [(f"blk.{i}.hyper_gate.weight", p + "gate", (H,))]
        planned = []
        for gguf_name, hf_name, want in extra:
            t = plan_tensor(lm_tensors, gguf_name, hf_name)
            if t.shape != want:
                raise CheckpointError(f"{LM_PREFIX}{hf_name}: shape {t.shape}, expected {want} from config.json "
                                      f"(hidden {H}, {cfg.num_kv_heads} KV heads of {d})")
            planned.append(t)
        last = max(k for k, t in enumerate(plan) if t.name.startswith(f"blk.{i}."))
        plan[last + 1:last + 1] = planned
    return plan


# ------------------------------------------------------------------------------------------- metadata

def preprocessing_metadata(image_size: int, cut_template: str) -> dict:
    """The owl3.vision.* preprocessing keys and their values, as decoder.gguf carries them."""
    v = f"{ARCH}.vision."
    return {v + "image_size": int(image_size), v + "image_mean": list(IMAGE_MEAN), v + "image_std": list(IMAGE_STD),
            v + "resample": RESAMPLE, v + "anchors": [int(x) for rows_cols in GRID_SQU_6 for x in rows_cols],
            v + "anchor_strategy": ANCHOR_STRATEGY, v + "cut_global_view": CUT_GLOBAL_VIEW,
            v + "cut_template": cut_template}


def add_owl3_keys(writer: gguf.GGUFWriter, variant: Owl3Variant) -> None:
    """The owl3.* keys that are not qwen2's: which hyper-attention to run, and how to preprocess images."""
    A, T = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType
    writer.add_string(f"{ARCH}.variant", variant.name)
    writer.add_key_value(f"{ARCH}.hyper_layers", list(variant.hyper_layers), A, sub_type=T.INT32)
    writer.add_string(f"{ARCH}.hyper_gate", variant.gate)
    writer.add_bool(f"{ARCH}.fused", variant.fused)
    writer.add_uint32(f"{ARCH}.mi_rope_offset", variant.mi_rope_offset)
    writer.add_uint32(f"{ARCH}.vision.patch_size", variant.patch_size)
    writer.add_uint32(f"{ARCH}.vision.num_patches", variant.num_patches)
    for key, value in preprocessing_metadata(variant.image_size, variant.cut_template).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            sub = T.FLOAT32 if isinstance(value[0], float) else T.INT32
            writer.add_key_value(key, value, A, sub_type=sub)


# ------------------------------------------------------------------------------------------- conversion

class PreparedDecoder:
    """Everything decoder.gguf needs, read and checked: a bad checkpoint fails here, before any file is
    written (export_owl3 prepares the decoder before it exports the vision tower)."""

    def __init__(self, hf_dir: str | Path, quant: str):
        from ..vocab import load_hf_vocab

        self.quant = check_quant(quant)
        config, tensors, self.hf_path = load_checkpoint(hf_dir)
        self.variant = detect_variant(config, tensors.keys())   # refuses unknown layouts with what is missing
        self.cfg = text_config(config)
        self.plan = owl3_tensor_plan(self.cfg, self.variant, PrefixView(tensors, LM_PREFIX))
        self.vocab = pad_vocab(load_hf_vocab(self.hf_path), self.cfg.vocab_size)  # plan checked the rows
        self.chat_template = read_chat_template(self.hf_path)   # unused by our Owl3 prompts (§6.1): for generic tools

    def setup(self, writer: gguf.GGUFWriter) -> None:
        from ..vocab import write_vocab

        writer.add_name(self.hf_path.resolve().name)
        writer.add_file_type(int(FILE_TYPES[self.quant]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_text_hparams(writer, self.cfg)                  # writer.arch = "owl3" gives the owl3.* prefix
        add_owl3_keys(writer, self.variant)
        write_vocab(writer, self.vocab)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)

    def write(self, out_path: str | Path, progress: bool = True) -> dict:
        summary = write_gguf(out_path, self.setup, ARCH, self.plan, self.quant,
                             tied_embeddings=self.cfg.tie_word_embeddings, progress=progress,
                             n_gqa=self.cfg.num_heads // self.cfg.num_kv_heads)
        summary["variant"] = self.variant.name
        return summary


def convert_owl3_decoder(hf_dir: str | Path, out_path: str | Path, quant: str = "f16",
                         progress: bool = True) -> dict:
    """Write decoder.gguf for an mPLUG-Owl3 checkpoint; returns write_gguf's summary plus the variant."""
    return PreparedDecoder(hf_dir, quant).write(out_path, progress)


def export_owl3(hf_dir: str | Path, out_dir: str | Path, quant: str = "f16", *, vision_dtype: str = "fp32",
                vision_quant=None, progress: bool = True) -> dict:
    """HF checkpoint -> model directory out_dir/{decoder.gguf, vision files, vision.json}; prints a summary
    unless progress is False. vision_quant: "static,none", a sequence, or None (default_vision_quants); the
    first is the CPU default. Returns {"path", "variant", "gate", "hyper_layers", "decoder": {...},
    "vision": {the default file's summary}, "vision_files": {quant: summary}, "vision_manifest": {...}}."""
    from .onnx_export import check_vision_options, export_vision_files

    quants = default_vision_quants("owl3", vision_dtype) if vision_quant is None else vision_quant
    check_vision_options(vision_dtype, quants)
    decoder = PreparedDecoder(hf_dir, quant)                # all checks before the first file is written
    out_dir = make_model_dir(out_dir)
    # vision first: its export-time check is the step left that can fail on a good checkpoint
    files = export_vision_files(hf_dir, vision_outputs(out_dir, quants), dtype=vision_dtype, progress=progress)
    manifest = write_vision_manifest(out_dir, files)
    written = decoder.write(out_dir / "decoder.gguf", progress)
    v = decoder.variant
    summary = {"path": str(out_dir), "variant": v.name, "gate": v.gate, "hyper_layers": list(v.hyper_layers),
               "decoder": written, "vision": files[manifest["default"]], "vision_files": files,
               "vision_manifest": manifest}
    if progress:
        print(format_owl3_summary(summary), file=sys.stderr)
    return summary


def format_owl3_summary(s: dict) -> str:
    return summary_text(f"{s['path']}: mPLUG-Owl3 {s['variant']} (gate {s['gate']}, hyper layers {s['hyper_layers']})",
                        s["decoder"], s.get("vision_files", s["vision"]))
