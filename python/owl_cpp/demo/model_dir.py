"""Where the demo model that ships inside the package lives, and how "demo" / no model resolves to it.

  DEMO_DIR            python/owl_cpp/demo/model: an ordinary owl-export directory (decoder.gguf + vision.onnx)
  $OWL_DEMO_DIR       another directory to use instead (tests point it at a tiny model)
  load("demo")        the demo model, unless a file or directory named "demo" exists here (a real path wins)
  model_or_demo()     what chat() / owl-run / owl-server load when given no model: $OWL_MODEL, else the demo
                      model, with NOTICE on stderr

It is trained on the runtime's default chat options (images cut into tiles, greedy decoding), so nothing
about it is special once loaded.
Nothing here imports Pillow, numpy or the runtime.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Union

MODEL_ENV = "OWL_MODEL"
DEMO_ENV = "OWL_DEMO_DIR"
DEMO_NAME = "demo"
DEMO_DIR = Path(__file__).resolve().parent / "model"
MODEL_FILES = ("decoder.gguf", "vision.onnx")
DEMO_MODEL_NAME = "owl-demo"          # what owl-server calls it

NOTICE = ("owl_cpp: no model given, so using the built-in demo model, which was trained only on pictures of "
          "coloured shapes. For real pictures pass a model (model=MODEL_DIR, --model MODEL_DIR or "
          "OWL_MODEL=MODEL_DIR); make one with `owl-export HF_CHECKPOINT_DIR -o MODEL_DIR`.")

_noticed = False
_notice_lock = threading.Lock()


def demo_model_dir() -> Path:
    """The demo model directory ($OWL_DEMO_DIR, else the one shipped in the package). FileNotFoundError if
    it lacks the model files (a source checkout without the model, or a bad $OWL_DEMO_DIR)."""
    override = os.environ.get(DEMO_ENV)
    where = Path(override) if override else DEMO_DIR
    missing = [f for f in MODEL_FILES if not (where / f).is_file()]
    if missing:
        origin = f"${DEMO_ENV} points at {where}" if override else f"the package's demo model directory {where}"
        raise FileNotFoundError(
            f"the built-in demo model is not installed: {origin}, which has no {' or '.join(missing)} "
            f"(a source checkout without the model? install the package with `pip install .`, set {DEMO_ENV} "
            f"to an exported demo model directory, or pass a model of your own)")
    return where


def model_or_demo(given, *, use_env: bool = True, announce: bool = True):
    """The model to load when a caller may give none: `given`, else $OWL_MODEL (when use_env), else the demo
    model directory (NOTICE on stderr when announce). FileNotFoundError saying how to give a model when the demo
    model is not installed either."""
    path = given or (os.environ.get(MODEL_ENV) if use_env else None)
    if path:
        return path
    try:
        where = demo_model_dir()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no model given: pass one (model=MODEL_DIR, --model MODEL_DIR) or set {MODEL_ENV}; "
                                "make one from a Hugging Face checkpoint with `owl-export HF_CHECKPOINT_DIR -o "
                                f"MODEL_DIR`. And {e}") from None
    if announce:
        note_demo_model()
    return where


def is_demo_name(path: Union[str, os.PathLike]) -> bool:
    """True for "demo" when nothing named "demo" exists in the current directory (an existing path wins)."""
    return isinstance(path, str) and path == DEMO_NAME and not os.path.lexists(path)


def resolve(path: Union[str, os.PathLike]) -> Union[str, os.PathLike]:
    """path, or the demo model directory for the name "demo"."""
    return demo_model_dir() if is_demo_name(path) else path


def is_demo_dir(path: Union[str, os.PathLike, None]) -> bool:
    """Whether path is the demo model directory (as demo_model_dir() resolves it now)."""
    if path is None:
        return False
    if is_demo_name(path):
        return True
    try:
        return Path(path).resolve() == demo_model_dir().resolve()
    except FileNotFoundError:
        return False


def note_demo_model(stream=None) -> None:
    """NOTICE on stderr, once per process."""
    global _noticed
    with _notice_lock:
        if _noticed:
            return
        _noticed = True
    print(NOTICE, file=stream or sys.stderr, flush=True)

