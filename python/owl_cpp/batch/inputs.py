"""What a batch job answers: the images (a folder, a list file or a Python list) and the prompts, as work items.

An image's id is how results name it: its path relative to the folder it was found in, the line of the list
file as written, or, for a Python list, the path as given (an "id" of your own with (id, path) pairs).
Work goes image by image, every prompt of an image together, so that one worker answers all questions about
an image with its embeddings and its KV cache at hand."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_PROMPT = "Describe the image."


@dataclass(frozen=True)
class ImageRef:
    id: str             # the name results carry
    path: str           # where the file is read from


@dataclass(frozen=True)
class WorkItem:
    image: ImageRef
    prompt: str
    prompt_index: int

    @property
    def key(self) -> tuple:
        return (self.image.id, self.prompt)


def collect_images(source: Union[str, os.PathLike, Sequence]) -> list[ImageRef]:
    """A folder (every file with an image extension below it, sorted; files with other extensions are left
    out, so a broken file needs an image's name to be seen), a list file (one path per line, relative to the
    list file's folder; blank lines and lines starting with # skipped), or a list of paths / (id, path) pairs."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            found = [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and not f.is_dir()]
            refs = [ImageRef(f.relative_to(p).as_posix(), str(f)) for f in sorted(found)]
        elif p.is_file():
            refs = [ImageRef(line, str(p.parent / line)) for line in _lines(p)]
        else:
            raise FileNotFoundError(f"{p}: no such folder or image list file")
    else:
        refs = []
        for x in source:
            if isinstance(x, (tuple, list)) and len(x) == 2:
                refs.append(ImageRef(str(x[0]), os.fspath(x[1])))
            elif isinstance(x, (str, os.PathLike)):
                refs.append(ImageRef(os.fspath(x), os.fspath(x)))
            else:
                raise TypeError(f"images must be paths or (id, path) pairs, got {type(x).__name__}")
    seen = set()
    for r in refs:
        if r.id in seen:
            raise ValueError(f"image id {r.id!r} appears twice in the image list; ids name results, so they "
                             "must be unique")
        seen.add(r.id)
    return refs


def read_prompts(path: Union[str, os.PathLike]) -> list[str]:
    """A prompts file: a JSON list of strings (.json), else one prompt per line (blank lines skipped; a literal
    "\\n" in a line is a newline)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: prompts file not found")
    if p.suffix.lower() == ".json":
        prompts = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts):
            raise ValueError(f"{p}: a .json prompts file must hold a list of strings")
    else:
        prompts = [line.replace("\\n", "\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return check_prompts(prompts, str(p))


def check_prompts(prompts: Iterable[str], where: str = "prompts") -> list[str]:
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{where}: no prompts")
    for q in prompts:
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{where}: every prompt must be a non-empty string, got {q!r}")
    if len(set(prompts)) != len(prompts):
        raise ValueError(f"{where}: a prompt appears twice (results are keyed by image id and prompt)")
    return prompts


def work_items(images: Sequence[ImageRef], prompts: Sequence[str], done: Optional[set] = None) -> list[WorkItem]:
    """Every (image, prompt) not in `done` (keys (image id, prompt)), image by image."""
    done = done or set()
    return [WorkItem(im, q, k) for im in images for k, q in enumerate(prompts) if (im.id, q) not in done]


def _lines(p: Path) -> list[str]:
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out
