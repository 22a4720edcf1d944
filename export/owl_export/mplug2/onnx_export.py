"""mPLUG-2's video encoder -> vision.onnx, traced from the PyTorch reference (reference.py encode_video,
docs/owl2.md PART D) and checked with onnxruntime.

  input   "pixel_values"  float32 [T, 3, S, S], T (frames) dynamic, T >= 1; S = 224; frames as
                          python/owl_cpp/families/mplug2/preprocess.py leaves them (nearest resize, CLIP mean/std)
  output  "video_embeds"  float32 [1 + T * grid^2, text width]: the video ViT (local temporal convolutions,
                          per-frame attention), [mean-of-frames CLS ; every frame's patches, time-major],
                          ln_post, [visn_fc + visn_layer_norm], the universal layers, visn_emb_norm(video + out):
                          the tokens the caption decoder cross-attends to (4097 x 1024 for 16 frames)

  quant none  the reference's fp32 graph; the export FAILS unless onnxruntime reproduces the reference on
              random frames to a relative error < 1e-4 (onnx_common.FP32_TOLERANCE)
  quant int8  onnxruntime dynamic int8 quantization of that graph (MatMul weights); its error against the fp32
              reference is measured and reported, the file is refused only when its output is not finite

The graph is traced at TRACE_FRAMES frames and checked at CHECK_FRAMES (a different count), so a frame count
baked in by the tracer fails the export instead of shipping.

Metadata (custom_metadata_map), all strings:
  owl.family "mplug2"; mplug2.embedding_length (output width); mplug2.vision.image_size (S);
  mplug2.vision.image_mean / image_std ("r,g,b"); mplug2.vision.resize ("nearest");
  mplug2.vision.num_frames (the frames the model was trained with: 16); mplug2.vision.tokens_per_frame (grid^2);
  mplug2.vision.dtype ("fp32"); mplug2.vision.quant ("none" | "int8")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..onnx_common import (FP32_TOLERANCE, OPSET, check_vision_options, onnx_modules, trace_to_onnx,
                           write_checked_onnx)
from .config import CLIP_MEAN, CLIP_STD, TEXT_ENCODER, VIDEO, Mplug2Config
from .reference import Mplug2CaptionReference

OUTPUT_NAME = "video_embeds"
AXES = ("T", "video_tokens")
TRACE_FRAMES = 2
CHECK_FRAMES = 3


class VideoEncoderModule(torch.nn.Module):
    """encode_video as a module: the reference's own math (no second copy), with every weight it reads
    registered as a buffer. The buffers are the very tensors the reference holds, so the tracer records them
    as initializers (which the int8 quantizer can rewrite) rather than as Constant nodes."""

    def __init__(self, ref: Mplug2CaptionReference):
        super().__init__()
        self.ref = ref
        uni = tuple(f"{TEXT_ENCODER}encoder.layer.{i}." for i in ref.cfg.universal_layers)
        keep = [k for k in ref.w if k.startswith((VIDEO, "visn_")) or k.startswith(uni)]
        for k in keep:
            self.register_buffer(k.replace(".", "__"), ref.w[k])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.ref.encode_video(pixel_values)


def random_frames(cfg: Mplug2Config, frames: int, seed: int = 0) -> np.ndarray:
    """frames random frames as the preprocessor leaves them: uniform [0, 1], then CLIP mean/std.
    float32 [frames, 3, S, S]."""
    S = cfg.image_size
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(frames, 3, S, S, generator=g)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy()


def metadata(cfg: Mplug2Config, quant: str) -> dict[str, str]:
    return {"owl.family": "mplug2",
            "mplug2.embedding_length": str(cfg.text_width),
            "mplug2.vision.image_size": str(cfg.image_size),
            "mplug2.vision.image_mean": ",".join(repr(float(x)) for x in CLIP_MEAN),
            "mplug2.vision.image_std": ",".join(repr(float(x)) for x in CLIP_STD),
            "mplug2.vision.resize": "nearest",
            "mplug2.vision.num_frames": str(cfg.num_frames),
            "mplug2.vision.tokens_per_frame": str(cfg.tokens_per_frame),
            "mplug2.vision.dtype": "fp32", "mplug2.vision.quant": quant}


def trace_video_encoder(ref: Mplug2CaptionReference, path: Path, meta: dict[str, str]) -> None:
    """Trace encode_video to ONNX at `path`: pixel_values [T,3,S,S] -> video_embeds [1 + T*grid^2, width]."""
    example = torch.zeros(TRACE_FRAMES, 3, ref.cfg.image_size, ref.cfg.image_size)
    trace_to_onnx(VideoEncoderModule(ref).eval(), example, path, (ref.cfg.text_width,), meta,
                  output_name=OUTPUT_NAME, axes=AXES)


def export_video_encoder(sd: dict, cfg: Mplug2Config, out_path: str | Path, quant: str = "none", *,
                         progress: bool = False, seed: int = 0) -> dict:
    """Write vision.onnx for an mPLUG-2 checkpoint (load_checkpoint's (sd, cfg)); returns a summary: path,
    quant, opset, sizes, file_size, the errors against the fp32 reference on CHECK_FRAMES random frames
    (rel_err, cosine, max_abs_err) and "metadata" (what the file's custom_metadata_map holds).

    Raises ValueError for a bad quant, VisionCheckError when the written graph does not reproduce the
    reference (nothing is written then)."""
    check_vision_options("fp32", quant)
    onnx_modules()                                    # fail early and clearly when they are missing
    ref = Mplug2CaptionReference(sd, cfg)             # fp32: the oracle and the traced graph
    pixels = random_frames(cfg, CHECK_FRAMES, seed)
    want = ref.encode_video(torch.from_numpy(pixels)).numpy()
    meta = metadata(cfg, quant)
    out_path = Path(out_path)
    errors = write_checked_onnx(out_path, lambda tmp: trace_video_encoder(ref, tmp, meta), dtype="fp32",
                                quant=quant, pixels=pixels, want=want, fp32_tolerance=FP32_TOLERANCE,
                                progress=progress)
    return {"path": str(out_path), "quant": quant, "opset": OPSET, "image_size": cfg.image_size,
            "tokens_per_frame": cfg.tokens_per_frame, "embedding_length": cfg.text_width,
            "file_size": out_path.stat().st_size, "check_frames": CHECK_FRAMES, **errors, "metadata": meta}
