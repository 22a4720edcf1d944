"""Random scenes for the demo task: 1-3 shapes of distinct kinds and colours, each in its own cell of a 3x3
layout, on a white, pale plain or noisy background, at a random picture size (the preprocessing resizes).

A scene is pure data (Scene); draw() renders it, and label_map() gives, per pixel, which object covers it
(used by training for its per-patch auxiliary targets). Everything is driven by a numpy Generator, so a
seed fixes the pictures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {"red": (220, 30, 35), "orange": (245, 140, 20), "yellow": (240, 215, 25), "green": (35, 160, 55),
           "blue": (35, 75, 220), "purple": (135, 55, 185), "pink": (245, 120, 185), "black": (25, 25, 25)}
COLOUR_NAMES = tuple(COLOURS)
# cell index r*3 + c -> the words used in answers
CELLS = ("top left", "top middle", "top right", "middle left", "center", "middle right",
         "bottom left", "bottom middle", "bottom right")
# Pale plain backgrounds: far from every object colour, so "what colour" stays unambiguous.
PLAIN_BACKGROUNDS = ((255, 255, 255), (235, 235, 235), (245, 238, 220), (225, 238, 250), (232, 245, 230))
BACKGROUNDS = ("white", "plain", "noisy")


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    cell: int                 # 0..8, row-major in the 3x3 layout
    size: float              # radius as a fraction of the cell's half side, 0.5..0.95
    dx: float                # centre offset inside the cell, fraction of the cell's free margin (-1..1)
    dy: float
    angle: float             # rotation in degrees (folded per shape so a square never turns into a diamond)


@dataclass(frozen=True)
class Scene:
    things: tuple            # Thing, ordered by cell
    background: str          # "white" | "plain" | "noisy"
    bg_colour: tuple
    width: int
    height: int
    noise_seed: int

    def by_shape(self, shape: str) -> Optional[Thing]:
        return next((t for t in self.things if t.shape == shape), None)

    def by_colour(self, colour: str) -> Optional[Thing]:
        return next((t for t in self.things if t.colour == colour), None)


def random_scene(rng: np.random.Generator, *, n_objects: Optional[int] = None, min_side: int = 96,
                 max_side: int = 320, square_fraction: float = 0.75) -> Scene:
    """A random scene. n_objects 1..3 (random when None); picture sides in [min_side, max_side], square with
    probability square_fraction, else an aspect ratio between 3:4 and 4:3."""
    n = int(n_objects) if n_objects is not None else int(rng.integers(1, 4))
    if not 1 <= n <= 3:
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n}")
    shapes = rng.choice(len(SHAPES), n, replace=False)
    colours = rng.choice(len(COLOUR_NAMES), n, replace=False)
    cells = sorted(rng.choice(9, n, replace=False).tolist())
    things = tuple(Thing(SHAPES[int(s)], COLOUR_NAMES[int(c)], int(cell), float(rng.uniform(0.55, 0.95)),
                         float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)), float(rng.uniform(0, 360)))
                   for s, c, cell in zip(shapes, colours, cells))
    side = int(rng.integers(min_side, max_side + 1))
    if rng.random() < square_fraction:
        width = height = side
    else:
        ratio = float(rng.uniform(0.75, 4 / 3))
        width, height = side, max(min_side, int(round(side * ratio)))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    bg = (255, 255, 255) if background != "plain" else PLAIN_BACKGROUNDS[int(rng.integers(len(PLAIN_BACKGROUNDS)))]
    return Scene(things, background, bg, width, height, int(rng.integers(2**31)))


def _geometry(t: Thing, width: int, height: int):
    """(centre x, centre y, radius) in pixels."""
    cw, ch = width / 3, height / 3
    half = min(cw, ch) / 2
    r = t.size * half
    free_x, free_y = max(cw / 2 - r, 0.0), max(ch / 2 - r, 0.0)
    cx = (t.cell % 3 + 0.5) * cw + t.dx * free_x
    cy = (t.cell // 3 + 0.5) * ch + t.dy * free_y
    return cx, cy, r


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float):
    def ring(n, radius, phase, inner=None):
        pts = []
        for k in range(n * (2 if inner else 1)):
            a = math.radians(phase + k * 360 / (n * (2 if inner else 1)))
            rad = radius if not inner or k % 2 == 0 else inner
            pts.append((cx + rad * math.sin(a), cy - rad * math.cos(a)))
        return pts

    if kind == "square":
        return ring(4, r * 0.92, 45 + angle % 30 - 15)     # near axis-aligned: never a diamond
    if kind == "triangle":
        return ring(3, r, angle % 120)
    if kind == "star":
        return ring(5, r, angle % 72, inner=r * 0.42)
    if kind == "diamond":        # a rhombus, taller than wide, rotated a little at most
        a = math.radians((angle % 40) - 20)
        pts = [(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)]
        return [(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)) for x, y in pts]
    if kind == "cross":
        w = 0.33 * r
        arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        a = math.radians(angle % 90)
        return [(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)) for x, y in arm]
    raise ValueError(f"unknown shape {kind!r}")


def _paint(draw: ImageDraw.ImageDraw, t: Thing, width: int, height: int, fill) -> None:
    cx, cy, r = _geometry(t, width, height)
    if t.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(t.shape, cx, cy, r, t.angle), fill=fill)


def draw(scene: Scene) -> Image.Image:
    """The scene as an RGB picture of scene.width x scene.height."""
    w, h = scene.width, scene.height
    if scene.background == "noisy":
        noise = np.random.default_rng(scene.noise_seed).normal(0, 28, (h, w, 3))
        base = np.clip(235 + noise, 0, 255).astype(np.uint8)
        im = Image.fromarray(base, "RGB")
    else:
        im = Image.new("RGB", (w, h), scene.bg_colour)
    d = ImageDraw.Draw(im)
    for t in scene.things:
        _paint(d, t, w, h, COLOURS[t.colour])
    return im


def label_map(scene: Scene) -> np.ndarray:
    """[height, width] int8: the index of the object covering each pixel in scene.things, -1 for background."""
    im = Image.new("L", (scene.width, scene.height), 255)
    d = ImageDraw.Draw(im)
    for k, t in enumerate(scene.things):
        _paint(d, t, scene.width, scene.height, k)
    a = np.asarray(im).astype(np.int16)
    return np.where(a == 255, -1, a).astype(np.int8)
