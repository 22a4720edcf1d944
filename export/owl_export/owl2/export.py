"""`owl-export` for mPLUG-Owl2 and mPLUG-Owl (v1): HF checkpoint -> model directory {decoder.gguf, vision.onnx}.

decoder.gguf: the LLaMA decoder (general.architecture "owl2", the image branch of the modality-adaptive module
under blk.N.img.*; convert.py); vision.onnx: ViT + visual abstractor + projection + vit_eos, checked against
the PyTorch reference at export (onnx_export.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..owl3.convert import _size
from .config import Owl2Config

NAMES = {"owl2": "mPLUG-Owl2", "owl2_1": "mPLUG-Owl2.1", "owl1": "mPLUG-Owl"}


def export_owl2(hf_dir: str | Path, out_dir: str | Path, quant: str = "f16", *, vision_dtype: str = "fp32",
                vision_quant: str = "none", progress: bool = True) -> dict:
    """Returns {"path", "variant", "decoder": {...}, "vision": {...}}; prints a summary unless progress is False."""
    from ..owl3.onnx_export import check_vision_options
    from ..quantize import check_quant
    from .convert import convert_owl2_decoder
    from .onnx_export import export_owl2_vision_onnx

    check_vision_options(vision_dtype, vision_quant)
    check_quant(quant)
    cfg = Owl2Config.from_checkpoint(hf_dir)               # a config we cannot use fails before any file is written
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a directory (-o names the model directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    vision = export_owl2_vision_onnx(hf_dir, out_dir / "vision.onnx", dtype=vision_dtype, quant=vision_quant,
                                     progress=progress)
    decoder = convert_owl2_decoder(hf_dir, out_dir / "decoder.gguf", quant=quant, progress=progress)
    summary = {"path": str(out_dir), "variant": cfg.variant, "decoder": decoder, "vision": vision}
    if progress:
        print(format_owl2_summary(summary), file=sys.stderr)
    return summary


def format_owl2_summary(s: dict) -> str:
    d, v = s["decoder"], s["vision"]
    types = ", ".join(f"{k} x{n}" for k, n in sorted(d["types"].items()))
    vision_type = v["quant"] if v["quant"] != "none" else v["dtype"]
    return "\n".join([
        f"{s['path']}: {NAMES[s['variant']]}",
        f"  decoder.gguf  {d['quant']:<5} {_size(d['file_size']):>10}  {d['n_tensors']} tensors ({types})",
        f"  vision.onnx   {vision_type:<5} {_size(v['file_size']):>10}  onnxruntime vs the fp32 PyTorch reference: "
        f"rel err {v['rel_err']:.2e}",
    ])
