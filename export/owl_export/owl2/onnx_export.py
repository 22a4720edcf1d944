"""mPLUG-Owl2 / mPLUG-Owl2.1 / mPLUG-Owl (v1) vision path -> vision.onnx, traced from our PyTorch reference
(owl2/vision.py, docs/owl2.md A3, A4, PART B 5, PART C) and checked with onnxruntime.

  input   "pixel_values"  float32 [N, 3, S, S], N dynamic; S = 448 (Owl2, 2.1) or 224 (v1), CLIP-normalised
  output  "image_embeds"  float32 [N, Q+1, n_embd]: visual_fc(abstractor(ViT(pixels))) followed by vit_eos,
                          i.e. the 65 embeddings (real models) that replace one image marker in the prompt

  dtype fp32    the reference's graph; the export FAILS unless onnxruntime reproduces the PyTorch reference
                on a random batch to a relative error < 1e-4 (onnx_common.FP32_TOLERANCE).
  dtype fp16    weights and arithmetic in fp16 (softmax in fp32), float32 at the interface.
  quant int8    onnxruntime dynamic int8 quantization of the fp32 graph.
For fp16 and int8 the error against the fp32 reference is measured and reported; the file is refused only
when its output is not finite. The check images are random pixels in the CLIP-normalised range.

Metadata (custom_metadata_map): owl.family "owl2", owl2.variant ("owl2" | "owl2_1" | "owl1"), owl2.embedding_length
(n_embd of the LLM), owl2.vision.image_size, owl2.image_tokens (Q+1), owl2.vision.dtype, owl2.vision.quant.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import open_weights
from ..onnx_common import (CHECK_BATCH, FP32_TOLERANCE, OPSET, VISION_DTYPES, VisionCheckError,  # noqa: F401
                           check_vision_options, compare, onnx_modules, run_onnx, trace_to_onnx,
                           write_checked_onnx)
from .config import CLIP_MEAN, CLIP_STD, Owl2Config
from .vision import Owl2VisionReference


def random_pixels(cfg: Owl2Config, n: int, seed: int = 0) -> np.ndarray:
    """n random images as the preprocessor leaves them: uniform [0, 1] per channel, then CLIP mean/std.
    float32 [n, 3, S, S]."""
    S = cfg.vision.image_size
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, S, S, generator=g)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy()


def metadata(cfg: Owl2Config, dtype: str, quant: str) -> dict[str, str]:
    return {"owl.family": "owl2", "owl2.variant": cfg.variant,
            "owl2.embedding_length": str(cfg.text.hidden_size),
            "owl2.vision.image_size": str(cfg.vision.image_size),
            "owl2.image_tokens": str(cfg.image_tokens),
            "owl2.vision.dtype": dtype, "owl2.vision.quant": quant}           # of the final file


def trace_owl2_vision(ref: Owl2VisionReference, path: Path, meta: dict[str, str]) -> None:
    """Trace `ref` to ONNX at `path`: pixel_values [N,3,S,S] -> image_embeds [N, Q+1, n_embd]."""
    S = ref.cfg.vision.image_size
    example = torch.zeros(CHECK_BATCH, 3, S, S)
    trace_to_onnx(ref, example, path, (ref.cfg.image_tokens, ref.cfg.text.hidden_size), meta)


def export_owl2_vision_onnx(hf_dir: str | Path, out_path: str | Path, *, dtype: str = "fp32", quant: str = "none",
                            progress: bool = False, seed: int = 0) -> dict:
    """Write vision.onnx for an mPLUG-Owl2, mPLUG-Owl2.1 or mPLUG-Owl (v1) checkpoint; returns a summary with the errors
    measured against the fp32 reference (rel_err, cosine, max_abs_err).

    Raises CheckpointError naming the tensor when a vision/abstractor tensor is missing or mis-shaped,
    VisionCheckError when the written graph does not reproduce the reference; nothing is written then."""
    check_vision_options(dtype, quant)
    onnx_modules()                                    # fail early and clearly when they are missing
    cfg = Owl2Config.from_checkpoint(hf_dir)
    weights = open_weights(hf_dir)
    reference = Owl2VisionReference(weights, cfg)    # always fp32: the oracle
    traced = reference if dtype == "fp32" else Owl2VisionReference(weights, cfg, VISION_DTYPES[dtype])
    pixels = random_pixels(cfg, CHECK_BATCH, seed)
    want = reference(pixels).numpy()
    meta = metadata(cfg, dtype, quant)
    out_path = Path(out_path)
    errors = write_checked_onnx(out_path, lambda tmp: trace_owl2_vision(traced, tmp, meta), dtype=dtype,
                                quant=quant, pixels=pixels, want=want, fp32_tolerance=FP32_TOLERANCE,
                                progress=progress)
    return {"path": str(out_path), "variant": cfg.variant, "dtype": dtype, "quant": quant, "opset": OPSET,
            "image_size": cfg.vision.image_size, "image_tokens": cfg.image_tokens,
            "embedding_length": cfg.text.hidden_size, "file_size": out_path.stat().st_size,
            "check_batch": CHECK_BATCH, **errors}
