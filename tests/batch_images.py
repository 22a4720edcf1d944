"""A folder of generated pictures for the batch tests: demo-model scenes (PNG and JPEG, one in a subfolder, one
large enough to be cut into more crops) and broken files: a truncated JPEG, a text file named .png, zero bytes."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

GOOD = ["a.png", "b.jpg", "c.png", "sub/d.jpg", "sub/e.png", "big.png", "f.jpg"]
BROKEN = {"truncated.jpg": "truncated or corrupt", "text.png": "cannot read as an image",
          "empty.jpg": "cannot read as an image"}


def make_image_folder(root: Path, seed: int = 5) -> Path:
    from owl_cpp.demo import scenes

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in GOOD:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if name == "big.png":
            im = scenes.draw(scenes.random_scene(rng, min_side=600, max_side=640))
        else:
            im = scenes.draw(scenes.random_scene(rng))
        im.save(p, quality=95) if p.suffix == ".jpg" else im.save(p)
    buf = io.BytesIO()
    scenes.draw(scenes.random_scene(rng)).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "text.png").write_text("this is not an image\n")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image extension: not part of the collection\n")
    return root
