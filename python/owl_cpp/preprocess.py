"""mPLUG-Owl3 image preprocessing (docs/owl3.md §5, prompts §6.4), numpy + Pillow only (no torch at run time).

  image -> RGB -> adaptive cut: choose a (rows, cols) grid from grid_squ_6, bicubic-resize the whole image to
  (cols*S, rows*S), split into row-major S x S tiles, then append the global view (the whole image resized
  to S x S) -> each view: uint8 / 255, (x - 0.5) / 0.5 -> pixels [N, 3, S, S] float32
  plus the text that replaces the user's `<|image|>` (the cut template of the variant).

Choices (the official processor leaves them to its caller or to library versions):
- RGB: every mode goes through Pillow's `convert("RGB")`, as the official eval pipeline does; so alpha is
  DROPPED, not composited (RGBA, LA, PA: the colour under a transparent pixel shows), CMYK/P/L/1 use Pillow's
  conversions. Exception: 16-bit integer images ("I;16*" modes, uint16 arrays) are scaled to 8 bits
  (v / 257, rounded): Pillow's conversion clips them at 255, which turns a normal 16-bit photo white.
  Modes "I" and "F" keep Pillow's clip to 0..255. EXIF orientation is not applied (neither does the
  official code).
- Resize: Pillow's bicubic with the pass order of Pillow <= 12 (horizontal, then vertical), done as two
  one-axis resizes so Pillow 13, which runs the vertical pass first when one axis grows and the other
  shrinks, gives the same bytes as the Pillow the models were built with (docs/owl3.md §5.1).
- Size limits: an image of 0 pixels, or whose pixel count (or the horizontal pass's intermediate,
  new width x old height) exceeds `max_pixels`, raises ValueError instead of exhausting memory. Tiny images
  (1 x 1 upwards) are processed like any other: the output size does not depend on the input size.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image

IMAGE_TOKEN = "<|image|>"
MEAN = STD = 0.5                                    # per channel, all three (docs/owl3.md §5.1)
# grid_squ_6 anchors as (rows, cols); there is no (1, 1): a cut image always has 3..6 tiles (docs/owl3.md §5.2)
GRID_SQU_6 = ((2, 2), (1, 3), (1, 4), (3, 1), (4, 1), (2, 3), (3, 2))
# generation -> (image size S, cut template), docs/owl3.md §5.1 and §5.4
VARIANT_SETTINGS = {"240728": (384, "v2_global"), "241014": (384, "v3_global"), "241101": (378, "v3_global")}
# Pillow's decompression-bomb error threshold (2 x Image.MAX_IMAGE_PIXELS): about 0.5 GB as RGB
MAX_PIXELS = 2 * 89_478_485
_BICUBIC = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class PreprocessedImage:
    pixels: np.ndarray                  # [N, 3, S, S] float32 in [-1, 1]: tiles row-major, then the global view
    grid: Optional[Tuple[int, int]]     # (rows, cols) of the cut; None when not cut
    prompt: str                         # text that replaces the user's `<|image|>` for this image

    @property
    def num_views(self) -> int:
        return int(self.pixels.shape[0])


# ------------------------------------------------------------------------------------------- input

def load_image(src, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A path, raw bytes, PIL image or numpy array -> PIL image (any mode; see to_rgb). Checks the size
    from the header, before any pixel is decoded."""
    if isinstance(src, Image.Image):
        im = src
    elif isinstance(src, np.ndarray):
        im = _from_array(src)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        im = _open(io.BytesIO(bytes(src)), "image bytes")
    elif isinstance(src, (str, os.PathLike)):
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{os.fspath(src)}: image file not found")
        im = _open(os.fspath(src), os.fspath(src))
    else:
        raise TypeError(f"image must be a path, bytes, PIL.Image or numpy array, got {type(src).__name__}")
    _check_size(im.size, max_pixels)
    try:
        im.load()                       # decode now (first frame), so a corrupt file fails here, clearly
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot decode the image ({e})") from e
    return im


def _open(fp, what: str) -> Image.Image:
    try:
        return Image.open(fp)           # reads the header only
    except (Image.UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{what}: cannot read as an image ({e})") from e


def _from_array(a: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 1|3|4) uint8/uint16/bool -> PIL (uint16 scaled to 8 bits, see module doc)."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = _u16_to_u8(a)
    elif a.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 (or uint16/bool), got {a.dtype}; "
                         "scale float images to 0..255 uint8 first")
    return Image.fromarray(np.ascontiguousarray(a))           # (H,W) -> L, (H,W,3) -> RGB, (H,W,4) -> RGBA


def _u16_to_u8(a: np.ndarray) -> np.ndarray:
    return np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)   # 0 -> 0, 65535 -> 255


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> "RGB" (alpha dropped; 16-bit scaled; see the module doc)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16"):
        return Image.fromarray(_u16_to_u8(np.asarray(im))).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:                  # e.g. "La"/"RGBa" (premultiplied): go through RGBA
        try:
            return im.convert("RGBA").convert("RGB")
        except ValueError as e:
            raise ValueError(f"cannot convert a {im.mode!r} image to RGB: {e}") from e


def _check_size(size, max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ValueError(f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}; "
                         "downscale it first (or raise max_pixels)")


# ------------------------------------------------------------------------------------------- cut

def select_grid(width: int, height: int, image_size: int, anchors=GRID_SQU_6) -> Tuple[int, int]:
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
    return anchors[best]


def cut_prompt(rows: int, cols: int, template: str) -> str:
    """The text that stands for one cut image: rows*cols tile placeholders, then the global one (§6.4)."""
    if template == "v2_global":
        body = "\n".join(" ".join(f"subimg({i},{j}){IMAGE_TOKEN}" for j in range(cols)) for i in range(rows))
        return f"Cut to {rows} rows {cols} columns with a global view\n{body}\nglobal_view{IMAGE_TOKEN}"
    if template == "v3_global":
        body = "\n".join(" ".join(IMAGE_TOKEN for _ in range(cols)) for _ in range(rows))
        return f"<|start_cut|>{rows}*{cols}\n{body}\n{IMAGE_TOKEN}<|end_cut|>"
    raise ValueError(f"unknown cut template {template!r} (expected 'v2_global' or 'v3_global')")


# ------------------------------------------------------------------------------------------- pixels

def resize_bicubic(im: Image.Image, size: Tuple[int, int], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Pillow bicubic to size (w, h), horizontal pass first (Pillow <= 12 order, 8-bit rounding between)."""
    w, h = size
    _check_size((w, im.size[1]), max_pixels)            # the intermediate of the horizontal pass
    if w != im.size[0]:
        im = im.resize((w, im.size[1]), _BICUBIC)
    if h != im.size[1]:
        im = im.resize((w, h), _BICUBIC)
    return im


def normalize(im: Image.Image) -> np.ndarray:
    """RGB PIL -> [3, h, w] float32: ToTensor (x / 255) then Normalize(0.5, 0.5), both in float32."""
    x = np.asarray(im, dtype=np.uint8).astype(np.float32) / np.float32(255)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(image, *, image_size: Optional[int] = None, template: Optional[str] = None,
                     variant: Optional[str] = None, cut: bool = True,
                     max_pixels: int = MAX_PIXELS) -> PreprocessedImage:
    """One image (path, bytes, PIL or numpy) -> pixels [N,3,S,S], grid and prompt text (docs/owl3.md §5, §6.4).

    variant ("240728" | "241014" | "241101") sets the defaults of image_size and template; cut=False gives
    the global view only (videos, or when the caller turns cutting off) and the prompt "<|image|>"."""
    if variant is not None:
        if variant not in VARIANT_SETTINGS:
            raise ValueError(f"unknown variant {variant!r} (expected one of {sorted(VARIANT_SETTINGS)})")
        image_size = image_size or VARIANT_SETTINGS[variant][0]
        template = template or VARIANT_SETTINGS[variant][1]
    if not image_size or image_size < 1:
        raise ValueError("image_size (or variant) is required")
    template = template or "v3_global"
    S = int(image_size)
    im = to_rgb(load_image(image, max_pixels=max_pixels))
    global_view = normalize(resize_bicubic(im, (S, S), max_pixels))
    if not cut:
        return PreprocessedImage(global_view[None], None, IMAGE_TOKEN)
    rows, cols = select_grid(im.size[0], im.size[1], S)
    big = normalize(resize_bicubic(im, (cols * S, rows * S), max_pixels))        # [3, rows*S, cols*S]
    tiles = big.reshape(3, rows, S, cols, S).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, S, S)
    pixels = np.concatenate([tiles, global_view[None]], axis=0)
    return PreprocessedImage(np.ascontiguousarray(pixels), (rows, cols), cut_prompt(rows, cols, template))
