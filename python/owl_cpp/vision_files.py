"""Which vision file of a model directory to run.

owl-export writes one file per vision quantization and vision.json saying which is which
(export/owl_export/model_dir.py):
  none     vision.onnx        fp32 (or fp16) graph: the reference numbers, and what a GPU runs
  dynamic  vision.int8.onnx   int8 weights, activations quantized on every call
  static   vision.qdq.onnx    int8 weights and activations, activation scales calibrated at export
vision.json's "default" is the file a CPU runs; on a GPU ("cuda") the fp32/fp16 file is preferred when there is
one. load(..., vision="static") picks another; an older directory without vision.json has vision.onnx alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

MANIFEST = "vision.json"
LEGACY_FILE = "vision.onnx"
QUANTS = ("none", "dynamic", "static")
ALIASES = {"int8": "dynamic", "fp32": "none", "fp16": "none"}


def quant_name(vision: str) -> str:
    """A user's name for a vision file -> its quant ("int8" -> "dynamic", "fp32"/"fp16" -> "none")."""
    if not isinstance(vision, str):
        raise TypeError(f"vision must be a string ({', '.join(QUANTS)}), got {type(vision).__name__}")
    name = ALIASES.get(vision, vision)
    if name not in QUANTS:
        raise ValueError(f"unknown vision file {vision!r}; choose one of {', '.join(QUANTS)} "
                         f"(or {', '.join(ALIASES)})")
    return name


def read_manifest(model_dir: Path) -> Optional[dict]:
    """vision.json of model_dir, checked; None when the directory has none (an export before it existed)."""
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the vision file list ({e}); re-export the model") from e
    files = m.get("files") if isinstance(m, dict) else None
    ok = (isinstance(files, dict) and files and m.get("default") in files
          and all(q in QUANTS and isinstance(e, dict) and isinstance(e.get("file"), str) and e["file"]
                  and "/" not in e["file"] and "\\" not in e["file"] for q, e in files.items()))
    if not ok:
        raise ValueError(f"{path}: not a vision file list owl-export wrote (expected \"default\" and \"files\" "
                         f"of {', '.join(QUANTS)} with file names); re-export the model")
    return m


def pick_vision_file(model_dir, vision: Optional[str] = None, device: str = "cpu") -> Tuple[Path, Optional[str]]:
    """(the vision file to run, its quant or None when the directory predates vision.json).

    vision None: vision.json's default (on device "cuda": its "none" file when listed); else the quant named.
    A name the directory lacks, or a listed file that is missing, is an error naming what there is."""
    d = Path(model_dir)
    manifest = read_manifest(d)
    if manifest is None:
        if vision is not None and quant_name(vision) != "none":
            raise ValueError(f"{d}: no {MANIFEST}, so only {LEGACY_FILE} (exported before owl-export wrote several "
                             f"vision files); re-export with --vision-quant {quant_name(vision)} to get that one")
        return d / LEGACY_FILE, None
    files = manifest["files"]
    if vision is None:
        name = "none" if device == "cuda" and "none" in files else manifest["default"]
    else:
        name = quant_name(vision)
        if name not in files:
            raise ValueError(f"{d}: no {name!r} vision file; this export has {', '.join(files)} ({MANIFEST}); "
                             f"re-export with --vision-quant {name} to add it")
    path = d / files[name]["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {name!r} vision file that {d / MANIFEST} lists is missing; "
                                "re-export the model")
    return path, name


def check_file_quant(path, metadata: dict, quant: Optional[str]) -> None:
    """The file's own `<family>.vision.quant` metadata must be the quant vision.json lists it under."""
    if quant is None:
        return
    for key, value in metadata.items():
        if key.endswith(".vision.quant") and ALIASES.get(value, value) != quant:
            raise ValueError(f"{path}: {key} is {value!r} but {MANIFEST} lists the file as {quant!r}; the "
                             "directory mixes files of different exports, re-export the model")
