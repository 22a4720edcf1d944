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
  quant dynamic  onnxruntime dynamic int8 quantization of that graph (MatMul weights; "int8" is its old name)
  quant static   int8 QDQ calibrated on synthetic videos (a picture panned across the frames) through the
                 runtime's mPLUG-2 frame preprocessing (calibration_videos; owl_export/vision_quant.py)
                 the int8 files' error against the fp32 reference is measured and reported (also against the
                 fp32 graph on held-out synthetic videos); a file is refused only when its output is not finite

The graph is traced at TRACE_FRAMES frames and checked at CHECK_FRAMES (a different count), so a frame count
baked in by the tracer fails the export instead of shipping.

Metadata (custom_metadata_map), all strings:
  owl.family "mplug2"; mplug2.embedding_length (output width); mplug2.vision.image_size (S);
  mplug2.vision.image_mean / image_std ("r,g,b"); mplug2.vision.resize ("nearest");
  mplug2.vision.num_frames (the frames the model was trained with: 16); mplug2.vision.tokens_per_frame (grid^2);
  mplug2.vision.dtype ("fp32"); mplug2.vision.quant ("none" | "dynamic" | "static"; older files "int8")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..onnx_common import (FP32_TOLERANCE, OPSET, Calibration, check_vision_options, onnx_modules, trace_to_onnx,
                           vision_quant_list, write_checked_variants)
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


CALIBRATION_VIDEOS = 2           # static int8's calibration: videos of CALIBRATION_FRAMES frames
CALIBRATION_FRAMES = 4
HELD_OUT_VIDEOS = 2


def calibration_videos(cfg: Mplug2Config, videos: int = CALIBRATION_VIDEOS, frames: int = CALIBRATION_FRAMES,
                       first_seed: int = 0) -> np.ndarray:
    """videos x frames synthetic frames, float32 [videos * frames, 3, S, S], one video after another: each a
    synthetic picture (calibration_images.py) panned a little from frame to frame, through the
    runtime's frame preprocessing (nearest resize, CLIP normalisation)."""
    from owl_cpp.families.mplug2.preprocess import preprocess_frames

    from ..calibration_images import synthetic_image

    out = []
    for v in range(videos):
        a = np.asarray(synthetic_image(first_seed + v, (640, 480)))
        clip = []
        for t in range(frames):
            dx, dy = (20 * t) % 100, (8 * t) % 80                     # a slow pan over a 400 x 533 window
            clip.append(np.ascontiguousarray(a[dy:dy + 400, dx:dx + 533]))
        out.append(preprocess_frames(clip, cfg.image_size, CLIP_MEAN, CLIP_STD))
    return np.concatenate(out).astype(np.float32)


def export_video_encoder(sd: dict, cfg: Mplug2Config, out_path: str | Path, quant: str = "none", *,
                         progress: bool = False, seed: int = 0) -> dict:
    """Write vision.onnx for an mPLUG-2 checkpoint (load_checkpoint's (sd, cfg)); returns a summary: path,
    quant, opset, sizes, file_size, the errors against the fp32 reference on CHECK_FRAMES random frames
    (rel_err, cosine, max_abs_err) and "metadata" (what the file's custom_metadata_map holds).

    Raises ValueError for a bad quant, VisionCheckError when the written graph does not reproduce the
    reference (nothing is written then)."""
    (summary,) = export_video_encoder_files(sd, cfg, {quant: out_path}, progress=progress, seed=seed).values()
    return summary


def export_video_encoder_files(sd: dict, cfg: Mplug2Config, outputs: dict, *, progress: bool = False,
                               seed: int = 0) -> dict:
    """outputs: quant -> path. One trace, one file per quant; returns {quant: summary}."""
    quants = vision_quant_list(list(outputs))
    check_vision_options("fp32", quants)
    outputs = dict(zip(quants, (Path(p) for p in outputs.values())))
    onnx_modules()                                    # fail early and clearly when they are missing
    ref = Mplug2CaptionReference(sd, cfg)             # fp32: the oracle and the traced graph
    pixels = random_frames(cfg, CHECK_FRAMES, seed)
    want = ref.encode_video(torch.from_numpy(pixels)).numpy()
    meta = metadata(cfg, "none")                      # each quantized file gets its own quant
    calibration = Calibration(lambda: calibration_videos(cfg),
                              lambda: calibration_videos(cfg, HELD_OUT_VIDEOS, first_seed=1000),
                              batch=CALIBRATION_FRAMES)
    errors = write_checked_variants(outputs, lambda tmp: trace_video_encoder(ref, tmp, meta), dtype="fp32",
                                    pixels=pixels, want=want, fp32_tolerance=FP32_TOLERANCE, progress=progress,
                                    calibration=calibration)
    return {q: {"path": str(path), "quant": q, "opset": OPSET, "image_size": cfg.image_size,
                "tokens_per_frame": cfg.tokens_per_frame, "embedding_length": cfg.text_width,
                "file_size": path.stat().st_size, "check_frames": CHECK_FRAMES, **errors[q],
                "metadata": {**meta, "mplug2.vision.quant": q}}
            for q, path in outputs.items()}
