"""`owl-export` for mPLUG-Owl2 and mPLUG-Owl (v1): HF checkpoint -> model directory {decoder.gguf, vision.onnx}.

decoder.gguf: the LLaMA decoder (general.architecture "owl2", the image branch of the modality-adaptive module
under blk.N.img.*; convert.py); vision.onnx: ViT + visual abstractor + projection + vit_eos, checked against
the PyTorch reference at export (onnx_export.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..model_dir import (default_vision_quants, make_model_dir, summary_text, vision_outputs,
                         write_vision_manifest)

NAMES = {"owl2": "mPLUG-Owl2", "owl2_1": "mPLUG-Owl2.1", "owl1": "mPLUG-Owl"}


def export_owl2(hf_dir: str | Path, out_dir: str | Path, quant: str = "f16", *, vision_dtype: str = "fp32",
                vision_quant=None, progress: bool = True) -> dict:
    """Returns {"path", "variant", "decoder": {...}, "vision": {the default file's summary}, "vision_files":
    {quant: summary}, "vision_manifest": {...}}; prints a summary unless progress is False. vision_quant as
    export_owl3's."""
    from ..onnx_common import check_vision_options
    from .convert import PreparedOwl2Decoder
    from .onnx_export import export_owl2_vision_files

    quants = default_vision_quants("owl2", vision_dtype) if vision_quant is None else vision_quant
    check_vision_options(vision_dtype, quants)
    decoder = PreparedOwl2Decoder(hf_dir, quant)           # all checks before the first file is written
    out_dir = make_model_dir(out_dir)
    # vision first: its export-time check is the step left that can fail on a good checkpoint
    files = export_owl2_vision_files(hf_dir, vision_outputs(out_dir, quants), dtype=vision_dtype,
                                     progress=progress)
    manifest = write_vision_manifest(out_dir, files)
    written = decoder.write(out_dir / "decoder.gguf", progress)
    summary = {"path": str(out_dir), "variant": decoder.cfg.variant, "decoder": written,
               "vision": files[manifest["default"]], "vision_files": files, "vision_manifest": manifest}
    if progress:
        print(format_owl2_summary(summary), file=sys.stderr)
    return summary


def format_owl2_summary(s: dict) -> str:
    return summary_text(f"{s['path']}: {NAMES[s['variant']]}", s["decoder"], s.get("vision_files", s["vision"]))
