"""mPLUG-Owl3 image preprocessing (docs/owl3.md §5, prompt text §6.4), with the constants of the model file
(image_config.py).

  image -> RGB -> adaptive cut: choose a (rows, cols) grid among the anchors, resize the whole image to
  (cols*S, rows*S), split into row-major S x S tiles, then append the global view (the whole image resized
  to S x S) -> each view: x / 255, (x - mean) / std -> pixels [N, 3, S, S] float32
  plus the text that replaces the user's `<|image|>` (the cut template).
Reading, RGB conversion, resizing and size limits: images.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ...images import decode_image, normalize, open_image, resize, to_rgb
from ...messages import IMAGE_MARKER
from .image_config import ImagePreprocessing


@dataclass(frozen=True)
class PreprocessedImage:
    pixels: np.ndarray                  # [N, 3, S, S] float32: tiles row-major, then the global view
    grid: Optional[Tuple[int, int]]     # (rows, cols) of the cut; None when not cut
    prompt: str                         # text that replaces the user's `<|image|>` for this image

    @property
    def num_views(self) -> int:
        return int(self.pixels.shape[0])


def select_grid(width: int, height: int, image_size: int, anchors) -> Tuple[int, int]:
    """(rows, cols) of the anchor the official "docowl" anchor_rank picks (docs/owl3.md §5.2), arithmetic as
    there: int64 boxes, IoU = inter / (union + 1e-5) in float32, the shape box's y2 = float32(H/W) *
    anchor width truncated to an integer, argmax(shape_iou * 100 + iou), first index on ties."""
    f32 = np.float32
    S = image_size
    best, best_score = 0, None
    for k, (rows, cols) in enumerate(anchors):
        aw, ah = cols * S, rows * S
        area = aw * ah
        # IoU with the image box [0, 0, W, H]
        inter = min(aw, width) * min(ah, height)
        iou = f32(inter) / (f32(area + width * height - inter) + f32(1e-5))
        # IoU with [0, 0, aw, trunc(H/W * aw)]: same aspect ratio as the image, anchor's width
        y2 = int(f32(height / width) * f32(aw))
        s_inter = aw * min(ah, y2)
        shape_iou = f32(s_inter) / (f32(area + aw * y2 - s_inter) + f32(1e-5))
        score = shape_iou * f32(100) + iou
        if best_score is None or score > best_score:
            best, best_score = k, score
    return tuple(anchors[best])


def cut_prompt(rows: int, cols: int, template: str) -> str:
    """The text that stands for one cut image: rows*cols tile placeholders, then the global one (§6.4)."""
    I = IMAGE_MARKER
    if template == "v2_global":
        body = "\n".join(" ".join(f"subimg({i},{j}){I}" for j in range(cols)) for i in range(rows))
        return f"Cut to {rows} rows {cols} columns with a global view\n{body}\nglobal_view{I}"
    if template == "v3_global":
        body = "\n".join(" ".join(I for _ in range(cols)) for _ in range(rows))
        return f"<|start_cut|>{rows}*{cols}\n{body}\n{I}<|end_cut|>"
    raise ValueError(f"unknown cut template {template!r} (expected 'v2_global' or 'v3_global')")


def preprocess_image(image, config: ImagePreprocessing, *, cut: bool = True,
                     max_pixels: Optional[int] = None) -> PreprocessedImage:
    """One image (path, bytes, PIL or numpy) -> pixels [N,3,S,S], grid and prompt text (docs/owl3.md §5, §6.4).
    cut=False gives the global view only (videos, or when the caller turns cutting off) and "<|image|>"."""
    S, c = config.image_size, config

    def view(im, size):
        return normalize(resize(im, size, c.resample, max_pixels), c.mean, c.std)

    im, what = open_image(image)
    # The grid from the full size in the header; the largest view it needs lets a large JPEG decode smaller.
    grid = select_grid(im.size[0], im.size[1], S, c.anchors) if cut and min(im.size) > 0 else None
    reduce_to = (grid[1] * S, grid[0] * S) if grid else (S, S)
    im = to_rgb(decode_image(im, what, max_pixels, reduce_to))
    global_view = view(im, (S, S))
    if not cut:
        return PreprocessedImage(global_view[None], None, IMAGE_MARKER)
    rows, cols = grid
    big = view(im, (cols * S, rows * S))                                           # [3, rows*S, cols*S]
    tiles = big.reshape(3, rows, S, cols, S).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, S, S)
    pixels = np.concatenate([tiles, global_view[None]], axis=0) if c.cut_global_view else tiles
    return PreprocessedImage(np.ascontiguousarray(pixels), (rows, cols), cut_prompt(rows, cols, c.cut_template))
