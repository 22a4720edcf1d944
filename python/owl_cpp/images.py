"""Images in, pixels out, for every family: read a path / bytes / PIL image / numpy array, convert to RGB,
resize with Pillow's filters in a fixed pass order, normalize. numpy + Pillow only (no torch at run time).

Choices (the official processors leave them to their callers or to library versions):
- RGB: every mode goes through Pillow's `convert("RGB")`, as the official eval pipelines do; so alpha is
  DROPPED, not composited (RGBA, LA, PA: the colour under a transparent pixel shows), CMYK/P/L/1 use Pillow's
  conversions. Exception: 16-bit integer images ("I;16*" modes, uint16 arrays) are scaled to 8 bits
  (v / 257, rounded): Pillow's conversion clips them at 255, which turns a normal 16-bit photo white.
  Modes "I" and "F" keep Pillow's clip to 0..255. EXIF orientation is not applied (neither does the
  official code).
- Resize: Pillow's filter with the pass order of Pillow <= 12 (horizontal, then vertical), done as two
  one-axis resizes so Pillow 13, which runs the vertical pass first when one axis grows and the other
  shrinks, gives the same bytes as the Pillow the models were built with (docs/owl3.md §5.1).
- Size limits: an image of 0 pixels, or whose pixel count (or the horizontal pass's intermediate,
  new width x old height) exceeds `max_pixels` (default MAX_PIXELS = 8192 x 8192, read at call time, so
  `owl_cpp.images.MAX_PIXELS = ...` raises it), raises ValueError naming the file and the limit. A file's
  size comes from its header: one over the limit is refused before any pixel is decoded (a 13000 x 13000 PNG
  would take 7 s and 0.9 GB), and Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS) still
  applies when opening. Tiny images (1 x 1 upwards) are processed like any other.
- Large JPEGs: when the caller says how large it will resize to (`reduce_to`), a JPEG file at least 4 times
  larger in both dimensions is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (Image.draft), keeping at least
  twice the target size; the limit applies to the decoded size. Its pixels then differ slightly from a full
  decode (the official processors decode fully); smaller JPEGs and other formats are decoded in full.
"""
from __future__ import annotations

import functools
import io
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# Largest image decoded in full: 8192 x 8192 (192 MiB as RGB)
MAX_PIXELS = 8192 * 8192
RESAMPLE_FILTERS = {"bicubic": Image.Resampling.BICUBIC}      # the filters the exporters write


def load_image(src, *, max_pixels: Optional[int] = None, reduce_to: Optional[Tuple[int, int]] = None) -> Image.Image:
    """A path, raw bytes, PIL image or numpy array -> PIL image (any mode; see to_rgb). Checks the size
    from the header, before any pixel is decoded; reduce_to: see the module doc (large JPEG files)."""
    im, what = open_image(src)
    return decode_image(im, what, max_pixels, reduce_to)


def open_image(src) -> Tuple[Image.Image, str]:
    """-> (image with only its header read, the file's name for messages; "" for in-memory images)."""
    if isinstance(src, Image.Image):
        return src, ""
    if isinstance(src, np.ndarray):
        return _from_array(src), ""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(src)), "image bytes"), "image bytes"
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path}: is a directory, not an image file")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: image file not found")
        return _open(path, path), path
    raise TypeError(f"image must be a path, bytes, PIL.Image or numpy array, got {type(src).__name__}")


def decode_image(im: Image.Image, what: str = "", max_pixels: Optional[int] = None,
                 reduce_to: Optional[Tuple[int, int]] = None) -> Image.Image:
    """Decodes an opened image (first frame) after the size check; a corrupt or truncated file fails here,
    naming it. Only files (what != "") are drafted: a caller's PIL image is not changed."""
    if what and reduce_to and im.format == "JPEG" and im.size[0] >= 4 * reduce_to[0] and im.size[1] >= 4 * reduce_to[1]:
        im.draft(None, (2 * reduce_to[0], 2 * reduce_to[1]))
    try:
        check_size(im.size, MAX_PIXELS if max_pixels is None else max_pixels)
    except ValueError as e:
        raise ValueError(f"{what}: {e}" if what else str(e)) from None
    try:
        im.load()
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{what or 'image'}: cannot decode the image, the file is truncated or corrupt ({e})") from e
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
    except ValueError:                  # premultiplied alpha ("La", "RGBa"): Pillow only un-premultiplies first
        try:
            return im.convert({"La": "LA"}.get(im.mode, "RGBA")).convert("RGB")
        except ValueError as e:
            raise ValueError(f"cannot convert a {im.mode!r} image to RGB: {e}") from e


def check_size(size, max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ValueError(f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}; "
                         "downscale it first (or raise owl_cpp.images.MAX_PIXELS)")


def resample_filter(name: str):
    """A resample name as the exporters write it -> Pillow's filter."""
    if name not in RESAMPLE_FILTERS:
        raise ValueError(f"unsupported resample filter {name!r} (supported: {', '.join(sorted(RESAMPLE_FILTERS))})")
    return RESAMPLE_FILTERS[name]


def resize(im: Image.Image, size: Tuple[int, int], resample: str = "bicubic",
           max_pixels: Optional[int] = None) -> Image.Image:
    """Pillow resize to size (w, h), horizontal pass first (Pillow <= 12 order, 8-bit rounding between)."""
    flt = resample_filter(resample)
    w, h = size
    check_size((w, im.size[1]), MAX_PIXELS if max_pixels is None else max_pixels)   # the horizontal pass's output
    if w != im.size[0]:
        im = im.resize((w, im.size[1]), flt)
    if h != im.size[1]:
        im = im.resize((w, h), flt)
    return im


def normalize(im: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB PIL -> [3, h, w] float32: ToTensor (x / 255) then Normalize(mean, std), both in float32.
    Through a 256-entry table per channel: the same float32 arithmetic, done once per byte value instead of
    once per pixel (bit-identical; several times faster, and numpy's take releases the GIL)."""
    x = np.asarray(im, dtype=np.uint8)
    planes = np.ascontiguousarray(x.transpose(2, 0, 1))          # [3, h, w] bytes: contiguous indices for take
    lut = _normalize_table(tuple(map(float, mean)), tuple(map(float, std)))
    out = np.empty(planes.shape, np.float32)
    for c in range(3):
        np.take(lut[c], planes[c], out=out[c])
    return out


@functools.lru_cache(maxsize=16)
def _normalize_table(mean: tuple, std: tuple) -> np.ndarray:
    """[3, 256] float32: (v / 255 - mean[c]) / std[c] for every byte value v, as normalize's definition computes it."""
    v = np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(255)
    lut = (v[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    lut.setflags(write=False)
    return lut
