"""mPLUG-Owl2 / Owl v1 image preprocessing (docs/owl2.md A7, PART C), constants from decoder.gguf:

  owl2.variant               STRING     "owl2" | "owl2_1" | "owl1"
  owl2.image_tokens          UINT32     rows one image puts into the sequence (abstractor queries + vit_eos)
  owl2.vision.image_size     UINT32     S: the tower's input is S x S
  owl2.vision.image_mean/std FLOAT32[3] CLIP's Normalize after x / 255

Modes (the official code has three ways in; each gives different pixels):
  "resize" (default): Owl2's (and Owl2.1's) README and evaluation scripts: stretch to a square of the longer side, then the
           CLIP processor's resize to S x S; Owl v1: one stretch straight to S x S (its processor)
  "pad":   Owl2's CLI: paste onto a square of the longer side filled with the mean colour (122, 116, 104),
           then resize to S x S
  "crop":  the plain CLIP processor: shorter side to S (longer side int(S * long / short)), centre crop
Resizes are Pillow bicubic with Pillow <= 12's pass order (images.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from PIL import Image

from ...images import decode_image, normalize, open_image, resize, to_rgb

PREFIX = "owl2."
VARIANTS = ("owl2", "owl2_1", "owl1")
MODES = ("resize", "pad", "crop")


@dataclass(frozen=True)
class Owl2ImageConfig:
    variant: str
    image_size: int
    image_tokens: int
    mean: tuple
    std: tuple

    @staticmethod
    def from_metadata(meta: Mapping, where: str = "decoder.gguf") -> "Owl2ImageConfig":
        """meta: the GGUF's key -> value. A missing or bad key raises ValueError naming it."""
        def get(name, check, want):
            key = PREFIX + name
            if key not in meta:
                raise ValueError(f"{where}: missing {key}; re-export the model with this version of owl-export")
            value = meta[key]
            if not check(value):
                raise ValueError(f"{where}: {key} is {value!r}, expected {want}")
            return value

        def positive(lo, hi):
            return lambda v: isinstance(v, int) and lo <= v <= hi

        def triple(v):
            return isinstance(v, (list, tuple)) and len(v) == 3 and all(
                isinstance(x, (int, float)) and np.isfinite(x) for x in v)

        std = get("vision.image_std", triple, "3 finite numbers")
        if any(x <= 0 for x in std):
            raise ValueError(f"{where}: {PREFIX}vision.image_std is {std!r}, expected positive values")
        return Owl2ImageConfig(
            variant=get("variant", lambda v: v in VARIANTS, f"one of {VARIANTS}"),
            image_size=get("vision.image_size", positive(1, 4096), "an integer in 1..4096"),
            image_tokens=get("image_tokens", positive(1, 65536), "an integer in 1..65536"),
            mean=tuple(float(x) for x in get("vision.image_mean", triple, "3 finite numbers")),
            std=tuple(float(x) for x in std))

    @property
    def pad_colour(self) -> tuple:
        """expand2square's fill: int(x * 255) of each mean (docs/owl2.md A7)."""
        return tuple(int(x * 255) for x in self.mean)


def preprocess_image(image, config: Owl2ImageConfig, mode: str = "resize") -> np.ndarray:
    """One image (path, bytes, PIL or numpy) -> pixels [3, S, S] float32."""
    if mode not in MODES:
        raise ValueError(f"image mode must be one of {', '.join(MODES)}, got {mode!r}")
    S = config.image_size
    im, what = open_image(image)
    im = to_rgb(decode_image(im, what, None, (S, S)))
    w, h = im.size
    if mode == "pad" and w != h:
        side = max(w, h)
        square = Image.new("RGB", (side, side), config.pad_colour)
        square.paste(im, ((side - w) // 2, (side - h) // 2))
        im = square
    elif mode == "resize" and config.variant != "owl1" and w != h:
        side = max(w, h)
        im = resize(im, (side, side))
    elif mode == "crop" and w != h:
        short, long = min(w, h), max(w, h)
        big = int(S * long / short)
        im = resize(im, (S, big) if w < h else (big, S))
        top, left = (im.size[1] - S) // 2, (im.size[0] - S) // 2
        return normalize(im.crop((left, top, left + S, top + S)), config.mean, config.std)
    return normalize(resize(im, (S, S)), config.mean, config.std)
