"""`owl-export` for mPLUG-2 video captioning and VideoQA: the official checkpoint directory (.pth +
config_bert*.json + vocab.txt) -> model directory {vision.onnx, decoder.gguf} (+ question.onnx for VideoQA).

vision.onnx: the video encoder (video ViT + universal layers, frames a dynamic axis), checked against the
PyTorch reference at export (onnx_export.py); decoder.gguf: the BERT caption decoder, architecture "mplug2",
with the WordPiece vocabulary and the checkpoint's decoding options (language.py). A VideoQA checkpoint
(config.detect_task, or task="qa") also gets question.onnx: the question through the text encoder and the fusion
layers, giving the memory the answer decoder attends to (question_export.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..model_dir import (default_vision_quants, make_model_dir, summary_text, vision_outputs,
                         write_vision_manifest)


def export_mplug2(ckpt_dir: str | Path, out_dir: str | Path, quant: str = "f16", *, vision_dtype: str = "fp32",
                  vision_quant=None, progress: bool = True, task: str | None = None) -> dict:
    """Returns {"path", "task", "decoder": {...}, "vision": {...}} (+ "question": {...} for VideoQA); prints a
    summary unless progress is False. task: "caption" or "qa" (None: detected from the checkpoint); vision_quant
    as export_owl3's ("vision" is the default file's summary, "vision_files" every file's)."""
    from ..quantize import check_quant
    from .config import load_checkpoint
    from .language import read_vocab_tokens, write_decoder_gguf
    from ..onnx_common import check_vision_options
    from .onnx_export import export_video_encoder_files

    if vision_dtype != "fp32":
        raise ValueError(f"--vision-dtype {vision_dtype}: mPLUG-2's video encoder is exported in fp32 only")
    check_quant(quant, k_mixes=False)             # its BERT decoder is not in llama.cpp's mixes
    quants = default_vision_quants("mplug2", vision_dtype) if vision_quant is None else vision_quant
    check_vision_options(vision_dtype, quants)
    sd, cfg = load_checkpoint(ckpt_dir, task)             # every check before the first file is written
    tokens = read_vocab_tokens(ckpt_dir)
    out_dir = make_model_dir(out_dir)
    # vision first: its export-time check is the step left that can fail on a good checkpoint
    files = export_video_encoder_files(sd, cfg, vision_outputs(out_dir, quants), progress=progress)
    files = {q: {**v, "dtype": "fp32", "check_what": f"a random {v['check_frames']}-frame video"}
             for q, v in files.items()}
    manifest = write_vision_manifest(out_dir, files)
    question = None
    if cfg.task == "qa":                                  # checked at export too: before the decoder is written
        from .question_export import export_question_encoder
        question = export_question_encoder(sd, cfg, out_dir / "question.onnx")
    elif (out_dir / "question.onnx").exists():
        (out_dir / "question.onnx").unlink()              # a caption export over an old QA directory
    decoder = write_decoder_gguf(sd, cfg, tokens, out_dir / "decoder.gguf", quant,
                                 name=Path(ckpt_dir).resolve().name, progress=False)
    summary = {"path": str(out_dir), "task": cfg.task, "decoder": decoder, "vision": files[manifest["default"]],
               "vision_files": files, "vision_manifest": manifest}
    if question is not None:
        summary["question"] = question
    if progress:
        what = "video question answering" if cfg.task == "qa" else "video captioning"
        print(summary_text(f"{out_dir}: mPLUG-2 {what}", summary["decoder"], files), file=sys.stderr)
        if cfg.task == "qa":
            q = summary["question"]
            print(f"  question.onnx: {q['file_size'] / 1e6:.1f} MB, fp32, memory vs reference rel err "
                  f"{q['rel_err']:.1e} (question rows {q['question_rel_err']:.1e})", file=sys.stderr)
    return summary
