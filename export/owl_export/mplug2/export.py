"""`owl-export` for mPLUG-2 video captioning: the official checkpoint directory (.pth + config_bert*.json +
vocab.txt) -> model directory {vision.onnx, decoder.gguf}.

vision.onnx: the video encoder (video ViT + universal layers, frames a dynamic axis), checked against the
PyTorch reference at export (onnx_export.py); decoder.gguf: the BERT caption decoder, architecture "mplug2",
with the WordPiece vocabulary and the checkpoint's decoding options (language.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..model_dir import make_model_dir, summary_text


def export_mplug2(ckpt_dir: str | Path, out_dir: str | Path, quant: str = "f16", *, vision_dtype: str = "fp32",
                  vision_quant: str = "none", progress: bool = True) -> dict:
    """Returns {"path", "decoder": {...}, "vision": {...}}; prints a summary unless progress is False."""
    from ..quantize import check_quant
    from .config import load_checkpoint
    from .language import read_vocab_tokens, write_decoder_gguf
    from .onnx_export import export_video_encoder

    if vision_dtype != "fp32":
        raise ValueError(f"--vision-dtype {vision_dtype}: mPLUG-2's video encoder is exported in fp32 only")
    check_quant(quant)
    sd, cfg = load_checkpoint(ckpt_dir)                   # every check before the first file is written
    tokens = read_vocab_tokens(ckpt_dir)
    out_dir = make_model_dir(out_dir)
    # vision first: its export-time check is the step left that can fail on a good checkpoint
    vision = export_video_encoder(sd, cfg, out_dir / "vision.onnx", vision_quant, progress=progress)
    decoder = write_decoder_gguf(sd, cfg, tokens, out_dir / "decoder.gguf", quant,
                                 name=Path(ckpt_dir).resolve().name, progress=False)
    summary = {"path": str(out_dir), "decoder": decoder,
               "vision": {**vision, "dtype": "fp32", "check_what": f"a random {vision['check_frames']}-frame video"}}
    if progress:
        print(summary_text(f"{out_dir}: mPLUG-2 video captioning", summary["decoder"], summary["vision"]),
              file=sys.stderr)
    return summary
