"""Deterministic synthetic pictures for calibrating a statically quantized vision tower (vision_quant.py).

Static int8 fixes every activation's scale at export from the ranges seen on calibration views, so those views
must span what photos give the tower: smooth regions (sky, walls), hard-edged objects, fine texture, text.
We own no photo set we could ship or download, so each picture is drawn from a seed:

  a two- or four-corner colour gradient (lighting), several filled shapes in random colours (objects), a patch
  of noise and a blurred copy of part of the picture (texture and defocus), rows of short dark strokes or
  bitmap-font letters (text), and JPEG-like sensor noise over all of it.

Sizes and aspect ratios vary (portrait, landscape, square) so Owl3's adaptive cut picks different grids, as it
would on real photos. The same seed always gives the same pixels (numpy's PCG64 and Pillow's drawing only).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZES = ((640, 480), (480, 640), (512, 512), (800, 450), (384, 768), (1024, 576), (300, 300), (720, 540))


def _gradient(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """[h, w, 3] float: bilinear blend of four random corner colours (a two-colour ramp when two are equal)."""
    corners = rng.uniform(0, 255, (4, 3))
    if rng.random() < 0.5:
        corners[2:] = corners[:2]                 # a vertical ramp only
    y = np.linspace(0, 1, h)[:, None, None]
    x = np.linspace(0, 1, w)[None, :, None]
    top = corners[0] * (1 - x) + corners[1] * x
    bottom = corners[2] * (1 - x) + corners[3] * x
    return top * (1 - y) + bottom * y


def _colour(rng: np.random.Generator) -> tuple:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _shapes(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.03, 0.3) * w, rng.uniform(0.03, 0.3) * h
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse(box, fill=_colour(rng))
        elif kind == 1:
            draw.rectangle(box, fill=_colour(rng), outline=_colour(rng), width=int(rng.integers(0, 6)))
        elif kind == 2:
            n = int(rng.integers(3, 8))
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            draw.polygon([(cx + rx * np.cos(t), cy + ry * np.sin(t)) for t in a], fill=_colour(rng))
        else:
            draw.line([(rng.uniform(0, w), rng.uniform(0, h)) for _ in range(int(rng.integers(2, 5)))],
                      fill=_colour(rng), width=int(rng.integers(1, 12)))


def _text(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    """A block of text-like lines: bitmap-font letters or short strokes, dark on whatever is below."""
    x0, y0 = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.7) * h
    ink = tuple(int(c) for c in rng.integers(0, 60, 3)) if rng.random() < 0.7 else _colour(rng)
    step = int(rng.integers(10, 24))
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:-"
    for row in range(int(rng.integers(2, 8))):
        y = y0 + row * step
        if rng.random() < 0.5:
            word = "".join(letters[int(i)] for i in rng.integers(0, len(letters), int(rng.integers(8, 40))))
            draw.text((x0, y), word, fill=ink)
        else:
            x = x0
            for _ in range(int(rng.integers(5, 30))):
                dx = rng.uniform(2, step * 0.6)
                draw.line([(x, y + rng.uniform(0, step * 0.5)), (x + dx, y + rng.uniform(0, step * 0.5))],
                          fill=ink, width=int(rng.integers(1, 3)))
                x += dx + rng.uniform(1, 6)


def synthetic_image(seed: int, size: tuple | None = None) -> Image.Image:
    """One RGB picture drawn from `seed`; size (width, height) defaults to one of SIZES picked by the seed."""
    rng = np.random.default_rng([0x5EED, seed])
    w, h = size or SIZES[seed % len(SIZES)]
    im = Image.fromarray(np.clip(_gradient(rng, w, h), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    _shapes(rng, draw, w, h)
    _text(rng, draw, w, h)
    # a noisy patch (foliage, gravel) and a defocused region
    pw, ph = int(rng.uniform(0.1, 0.4) * w), int(rng.uniform(0.1, 0.4) * h)
    px, py = int(rng.uniform(0, w - pw)), int(rng.uniform(0, h - ph))
    patch = rng.integers(0, 256, (max(ph, 1), max(pw, 1), 3), dtype=np.uint8)
    im.paste(Image.fromarray(patch, "RGB"), (px, py))
    bx, by = int(rng.uniform(0, w / 2)), int(rng.uniform(0, h / 2))
    region = im.crop((bx, by, bx + w // 2, by + h // 2)).filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 6))))
    im.paste(region, (bx, by))
    # sensor noise everywhere
    a = np.asarray(im, dtype=np.float32) + rng.normal(0, float(rng.uniform(1, 8)), (h, w, 3))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def synthetic_images(n: int, first_seed: int = 0) -> list:
    """n pictures, seeds first_seed .. first_seed + n - 1."""
    return [synthetic_image(first_seed + k) for k in range(n)]
