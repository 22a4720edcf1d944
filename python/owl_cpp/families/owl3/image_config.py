"""How an mPLUG-Owl3 model wants its images, read from decoder.gguf (owl-export writes the official
processor's constants there, docs/owl3.md §5): the runtime has no copy of them, so a model exported with other
settings is preprocessed with its own.

  owl3.vision.image_size       UINT32     S: every view is S x S
  owl3.vision.image_mean/std   FLOAT32[3] Normalize(mean, std) after ToTensor (x / 255)
  owl3.vision.resample         STRING     resize filter ("bicubic": Pillow's, Pillow <= 12 pass order)
  owl3.vision.anchors          INT32[]    the cut grids as (rows, cols) pairs, in the processor's order
  owl3.vision.anchor_strategy  STRING     how a grid is chosen ("docowl": the official anchor_rank)
  owl3.vision.cut_global_view  BOOL       a cut image also gets the whole image as a last view
  owl3.vision.cut_template     STRING     the text of a cut image ("v2_global" | "v3_global", docs/owl3.md §6.4)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ...images import resample_filter

PREFIX = "owl3.vision."
ANCHOR_STRATEGIES = ("docowl",)
CUT_TEMPLATES = ("v2_global", "v3_global")


class MissingKeyError(ValueError):
    """decoder.gguf lacks a preprocessing key (an export from an older owl-export, or another tool)."""


@dataclass(frozen=True)
class ImagePreprocessing:
    image_size: int
    mean: tuple
    std: tuple
    resample: str
    anchors: tuple                  # ((rows, cols), ...)
    anchor_strategy: str
    cut_global_view: bool
    cut_template: str

    @staticmethod
    def from_metadata(meta: Mapping, where: str = "decoder.gguf") -> "ImagePreprocessing":
        """meta: the GGUF's key -> value (a _core.GGUFFile or a dict). Missing or bad keys raise, naming the key."""
        def get(name):
            key = PREFIX + name
            if key not in meta:
                raise MissingKeyError(f"{where}: missing {key}, a preprocessing constant the runtime reads from "
                                      "the model file; re-export the model with this version of owl-export")
            return meta[key]

        def bad(name, value, want):
            return ValueError(f"{where}: {PREFIX}{name} is {value!r}, expected {want}")

        size = get("image_size")
        if not isinstance(size, int) or size < 1:
            raise bad("image_size", size, "a positive integer")
        per_channel = {}
        for name in ("image_mean", "image_std"):
            v = get(name)
            if (not isinstance(v, (list, tuple)) or len(v) != 3
                    or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
                raise bad(name, v, "3 finite numbers (R, G, B)")
            per_channel[name] = tuple(float(x) for x in v)
        if any(s == 0 for s in per_channel["image_std"]):
            raise bad("image_std", per_channel["image_std"], "non-zero values")
        resample = get("resample")
        try:
            resample_filter(resample)
        except ValueError as e:
            raise ValueError(f"{where}: {PREFIX}resample: {e}") from None
        flat = get("anchors")
        if (not isinstance(flat, (list, tuple)) or not flat or len(flat) % 2
                or not all(isinstance(x, int) and x >= 1 for x in flat)):
            raise bad("anchors", flat, "(rows, cols) pairs of positive integers")
        strategy = get("anchor_strategy")
        if strategy not in ANCHOR_STRATEGIES:
            raise bad("anchor_strategy", strategy, " or ".join(map(repr, ANCHOR_STRATEGIES)))
        global_view = get("cut_global_view")
        if not isinstance(global_view, bool):
            raise bad("cut_global_view", global_view, "a bool")
        template = get("cut_template")
        if template not in CUT_TEMPLATES:
            raise bad("cut_template", template, " or ".join(map(repr, CUT_TEMPLATES)))
        if template.endswith("_global") and not global_view:
            raise ValueError(f"{where}: {PREFIX}cut_template {template!r} has a global view but "
                             f"{PREFIX}cut_global_view is false")
        anchors = tuple((int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2))
        return ImagePreprocessing(int(size), per_channel["image_mean"], per_channel["image_std"], resample, anchors,
                                  strategy, global_view, template)
