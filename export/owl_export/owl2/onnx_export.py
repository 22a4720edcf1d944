"""mPLUG-Owl2 / mPLUG-Owl2.1 / mPLUG-Owl (v1) vision path -> vision.onnx, traced from our PyTorch reference
(owl2/vision.py, docs/owl2.md A3, A4, PART B 5, PART C) and checked with onnxruntime.

  input   "pixel_values"  float32 [N, 3, S, S], N dynamic; S = 448 (Owl2, 2.1) or 224 (v1), CLIP-normalised
  output  "image_embeds"  float32 [N, Q+1, n_embd]: visual_fc(abstractor(ViT(pixels))) followed by vit_eos,
                          i.e. the 65 embeddings (real models) that replace one image marker in the prompt

  dtype fp32    the reference's graph; the export FAILS unless onnxruntime reproduces the PyTorch reference
                on a random batch to a relative error < 1e-4 (onnx_common.FP32_TOLERANCE).
  dtype fp16    weights and arithmetic in fp16 (softmax in fp32), float32 at the interface.
  quant dynamic onnxruntime dynamic int8 quantization of the fp32 graph ("int8" is its old name).
  quant static  int8 QDQ calibrated on synthetic pictures through the runtime's Owl2 preprocessing
                (calibration_views; owl_export/vision_quant.py).
For fp16 and the int8 files the error against the fp32 reference is measured and reported; a file is refused
only when its output is not finite. The check images are random pixels in the CLIP-normalised range; the int8
files are also compared with the fp32 graph on held-out synthetic pictures.

Metadata (custom_metadata_map): owl.family "owl2", owl2.variant ("owl2" | "owl2_1" | "owl1"), owl2.embedding_length
(n_embd of the LLM), owl2.vision.image_size, owl2.image_tokens (Q+1), owl2.vision.dtype, owl2.vision.quant.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import open_weights
from ..onnx_common import (CHECK_BATCH, FP32_TOLERANCE, OPSET, VISION_DTYPES, Calibration,  # noqa: F401
                           VisionCheckError, check_vision_options, compare, onnx_modules, run_onnx, trace_to_onnx,
                           vision_quant_list, write_checked_variants)
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


CALIBRATION_VIEWS = 8            # static int8's calibration pictures (one view each)
HELD_OUT_VIEWS = 4


def calibration_views(cfg: Owl2Config, n: int = CALIBRATION_VIEWS, first_seed: int = 0) -> np.ndarray:
    """n synthetic pictures (calibration_images.py) through the runtime's Owl2 preprocessing (resize to a square,
    CLIP normalisation): float32 [n, 3, S, S]."""
    from owl_cpp.families.owl2.preprocess import Owl2ImageConfig, preprocess_image

    from ..calibration_images import synthetic_image

    prep = Owl2ImageConfig(variant=cfg.variant, image_size=cfg.vision.image_size, image_tokens=cfg.image_tokens,
                           mean=tuple(CLIP_MEAN), std=tuple(CLIP_STD))
    return np.stack([preprocess_image(synthetic_image(first_seed + k), prep) for k in range(n)])


def export_owl2_vision_onnx(hf_dir: str | Path, out_path: str | Path, *, dtype: str = "fp32", quant: str = "none",
                            progress: bool = False, seed: int = 0) -> dict:
    """Write vision.onnx for an mPLUG-Owl2, mPLUG-Owl2.1 or mPLUG-Owl (v1) checkpoint; returns a summary with the errors
    measured against the fp32 reference (rel_err, cosine, max_abs_err).

    Raises CheckpointError naming the tensor when a vision/abstractor tensor is missing or mis-shaped,
    VisionCheckError when the written graph does not reproduce the reference; nothing is written then."""
    (summary,) = export_owl2_vision_files(hf_dir, {quant: out_path}, dtype=dtype, progress=progress,
                                          seed=seed).values()
    return summary


def export_owl2_vision_files(hf_dir: str | Path, outputs: dict, *, dtype: str = "fp32", progress: bool = False,
                             seed: int = 0) -> dict:
    """outputs: quant -> path. One trace, one file per quant; returns {quant: summary}."""
    quants = vision_quant_list(list(outputs))
    check_vision_options(dtype, quants)
    outputs = dict(zip(quants, (Path(p) for p in outputs.values())))
    onnx_modules()                                    # fail early and clearly when they are missing
    cfg = Owl2Config.from_checkpoint(hf_dir)
    weights = open_weights(hf_dir)
    reference = Owl2VisionReference(weights, cfg)    # always fp32: the oracle
    traced = reference if dtype == "fp32" else Owl2VisionReference(weights, cfg, VISION_DTYPES[dtype])
    pixels = random_pixels(cfg, CHECK_BATCH, seed)
    want = reference(pixels).numpy()
    meta = metadata(cfg, dtype, "none")              # each quantized file gets its own quant
    calibration = Calibration(lambda: calibration_views(cfg),
                              lambda: calibration_views(cfg, HELD_OUT_VIEWS, first_seed=1000))
    errors = write_checked_variants(outputs, lambda tmp: trace_owl2_vision(traced, tmp, meta), dtype=dtype,
                                    pixels=pixels, want=want, fp32_tolerance=FP32_TOLERANCE, progress=progress,
                                    calibration=calibration)
    return {q: {"path": str(path), "variant": cfg.variant, "dtype": dtype, "quant": q, "opset": OPSET,
                "image_size": cfg.vision.image_size, "image_tokens": cfg.image_tokens,
                "embedding_length": cfg.text.hidden_size, "file_size": path.stat().st_size,
                "check_batch": CHECK_BATCH, **errors[q]}
            for q, path in outputs.items()}
