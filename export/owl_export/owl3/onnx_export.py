"""mPLUG-Owl3 vision tower -> vision.onnx, traced from our PyTorch reference and checked with onnxruntime.

  input   "pixel_values"  float32 [N, 3, S, S], N dynamic (tiles + global view of every image, preprocessed)
  output  "image_embeds"  float32 [N, P, H]: SigLIP hidden_states[-2] + vision2text (Owl3VisionReference)

  --vision-dtype fp32   the reference's fp32 graph. The export FAILS unless onnxruntime reproduces the
                        PyTorch reference on a random batch to a relative error < 1e-4.
  --vision-dtype fp16   weights and arithmetic in fp16 (meant for GPUs); a Cast at each end keeps the
                        input and output float32, so the runtime feeds both files the same way.
  --vision-quant dynamic  onnxruntime dynamic int8 quantization of the fp32 graph ("int8" is its old name).
  --vision-quant static   int8 QDQ, calibrated on synthetic pictures through the runtime's Owl3 preprocessing
                          (calibration_views; owl_export/vision_quant.py).
For fp16 and the int8 files the error against the fp32 reference is measured and reported, not bounded.
export_vision_files writes several of them from one trace (the model directory's vision.json says which).

The file's interface, tracing, int8 quantization and the check are shared with the Owl2 exporter
(owl_export/onnx_common.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..onnx_common import (CHECK_BATCH, FP32_TOLERANCE, INPUT_NAME, OPSET, OUTPUT_NAME, VISION_DTYPES,  # noqa: F401
                           VISION_QUANTS, Calibration, VisionCheckError, check_vision_options, compare,
                           onnx_modules, quantize_int8, run_onnx, trace_to_onnx, vision_quant_list,
                           write_checked_variants)
from .variant import VisionConfig, detect_variant
from .vision import Owl3VisionReference


# ------------------------------------------------------------------------------------------- tracing

class _VisionGraph(torch.nn.Module):
    """Owl3VisionReference as an nn.Module whose weights are buffers: traced weights that are not module
    state become Constant nodes, which onnxruntime's quantizer skips; buffers become initializers."""

    def __init__(self, ref: Owl3VisionReference):
        super().__init__()
        self.ref = ref
        for name, t in ref.w.items():
            self.register_buffer(name.replace(".", "__"), t)   # the same tensors; names cannot contain "."

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # the reference casts pixels to its dtype; .float() casts fp16 embeddings back (no-op for fp32)
        return self.ref.project(self.ref.features(pixel_values)).float()


def trace_vision(ref: Owl3VisionReference, path: Path, metadata: dict[str, str]) -> None:
    """Export `ref` to ONNX at `path` with a dynamic batch axis; `metadata` goes into metadata_props."""
    S = ref.config.image_size
    example = torch.zeros(CHECK_BATCH, ref.config.num_channels, S, S)
    # the output reads [N, P, H]
    trace_to_onnx(_VisionGraph(ref), example, path, (ref.config.num_patches, ref.text_hidden), metadata)


# ------------------------------------------------------------------------------------------- checking

def random_pixels(ref: Owl3VisionReference, n: int, seed: int = 0) -> np.ndarray:
    """n random views in the preprocessed range [-1, 1], float32 [n, 3, S, S]."""
    S, c = ref.config.image_size, ref.config.num_channels
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, S, S, generator=g) * 2 - 1).numpy()


# ------------------------------------------------------------------------------------------- export

def export_vision_onnx(hf_dir: str | Path, out_path: str | Path, *, dtype: str = "fp32", quant: str = "none",
                       progress: bool = True, seed: int = 0) -> dict:
    """Write vision.onnx for an mPLUG-Owl3 checkpoint; returns a summary with the measured errors.

    Writes through temporary files renamed at the end: a failed trace or check leaves no vision.onnx."""
    (summary,) = export_vision_files(hf_dir, {quant: out_path}, dtype=dtype, progress=progress,
                                     seed=seed).values()
    return summary


def export_vision_files(hf_dir: str | Path, outputs: dict, *, dtype: str = "fp32", progress: bool = True,
                        seed: int = 0) -> dict:
    """outputs: quant -> path. One trace, one file per quant; returns {quant: summary}."""
    quants = vision_quant_list(list(outputs))
    check_vision_options(dtype, quants)
    outputs = dict(zip(quants, (Path(p) for p in outputs.values())))
    onnx_modules()                                    # fail early and clearly when they are missing
    config, tensors, _ = load_checkpoint(hf_dir)
    variant = detect_variant(config, tensors.keys())
    vcfg, hidden = VisionConfig.from_dict(config), int(config["hidden_size"])
    reference = Owl3VisionReference(vcfg, tensors, variant.vision2text, hidden)      # always fp32: the oracle
    traced = reference if dtype == "fp32" else Owl3VisionReference(vcfg, tensors, variant.vision2text, hidden,
                                                                   VISION_DTYPES[dtype])
    pixels = random_pixels(reference, CHECK_BATCH, seed)
    want = reference(pixels).numpy()
    metadata = {"owl.family": "owl3", "owl3.variant": variant.name,
                "owl3.vision.image_size": str(vcfg.image_size), "owl3.vision.num_patches": str(vcfg.num_patches),
                "owl3.embedding_length": str(hidden), "owl3.vision.dtype": dtype,
                "owl3.vision.quant": "none"}                  # each quantized file gets its own
    calibration = Calibration(lambda: calibration_views(vcfg.image_size),
                              lambda: calibration_views(vcfg.image_size, HELD_OUT_VIEWS, first_seed=1000))
    errors = write_checked_variants(outputs, lambda tmp: trace_vision(traced, tmp, metadata), dtype=dtype,
                                    pixels=pixels, want=want, fp32_tolerance=FP32_TOLERANCE, progress=progress,
                                    calibration=calibration)
    return {q: {"path": str(path), "dtype": dtype, "quant": q, "opset": OPSET,
                "image_size": vcfg.image_size, "num_patches": vcfg.num_patches, "hidden_size": hidden,
                "file_size": path.stat().st_size, "check_batch": CHECK_BATCH, **errors[q]}
            for q, path in outputs.items()}


# ------------------------------------------------------------------------------------------- calibration

CALIBRATION_VIEWS = 8            # static int8's calibration set: a few cut pictures' tiles and global views
HELD_OUT_VIEWS = 4               # other pictures' views: the quantized files' cosine with the fp32 graph


def calibration_views(image_size: int, n: int = CALIBRATION_VIEWS, first_seed: int = 0) -> np.ndarray:
    """n views float32 [n, 3, S, S] of synthetic pictures (calibration_images.py) through the runtime's own
    Owl3 preprocessing: the adaptive cut, bicubic resize, (x/255 - 0.5) / 0.5, as owl_cpp feeds vision.onnx."""
    from owl_cpp.families.owl3.image_config import ImagePreprocessing
    from owl_cpp.families.owl3.preprocess import preprocess_image

    from ..calibration_images import synthetic_image
    from ..vision_quant import stack_views
    from .convert import preprocessing_metadata

    prep = ImagePreprocessing.from_metadata(preprocessing_metadata(image_size, "v2_global"), "calibration")
    parts = []
    for seed in range(first_seed, first_seed + max(1, (n + 1) // 2)):   # half as many pictures as views
        pixels = preprocess_image(synthetic_image(seed), prep).pixels
        parts.append(np.concatenate([pixels[-1:], pixels[:-1]]))         # its global view first, then tiles
    return stack_views(parts, n)
