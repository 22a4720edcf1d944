"""owl_cpp: run mPLUG-Owl models (and plain qwen2/llama GGUF decoders) with a C++ runtime.

    import owl_cpp
    print(owl_cpp.chat("photo.jpg", "Describe the image."))        # the model in $OWL_MODEL
    m = owl_cpp.load("owl3-7b")                                     # a directory written by owl-export
    for piece in m.chat(images=["a.jpg", "b.jpg"], prompt="What changed?", stream=True): print(piece, end="")
    s = m.session(); s.ask("Describe it.", images=["a.jpg"]); s.ask("And the colours?")
    t = owl_cpp.load("model.gguf"); print(t.generate("Once upon a time", max_tokens=32))
"""
from __future__ import annotations

import os
from typing import Optional, Union

from ._core import FormatError, OwlError, StreamDecoder, Tokenizer
from .text_model import TextModel

__all__ = ["FormatError", "OwlError", "OwlModel", "Session", "StreamDecoder", "TextModel", "Tokenizer", "chat",
           "load", "system_info"]
__version__ = "0.1.0"

MODEL_ENV = "OWL_MODEL"
_NO_MODEL = (f"no model given: pass model=MODEL_DIR or set {MODEL_ENV}. Make a model directory from a Hugging "
             f"Face checkpoint with `owl-export /path/to/mPLUG-Owl3-7B-240728 -o owl3-7b --quant q4_0`, then "
             f"`export {MODEL_ENV}=owl3-7b`")


def load(path: Union[str, os.PathLike], *, n_ctx: Optional[int] = None, threads: Optional[int] = None,
         device: str = "cpu"):
    """Loads a model: a model directory from owl-export (decoder.gguf + vision.onnx) -> OwlModel, or a .gguf
    text decoder (qwen2 or llama) -> TextModel. device "cuda" runs the vision tower on onnxruntime's CUDA
    provider where installed; the decoder runs on the CPU."""
    path = os.fspath(path)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "decoder.gguf")):
            raise FileNotFoundError(f"{path}: not a model directory (no decoder.gguf); create one with "
                                    f"`owl-export HF_CHECKPOINT_DIR -o {path}`")
        from .owl3_model import OwlModel
        return OwlModel(path, n_ctx=n_ctx, threads=threads, device=device)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model not found: {path} (expected a model directory or a .gguf file; make one "
                                f"from a Hugging Face checkpoint with `owl-export HF_CHECKPOINT_DIR -o {path}`)")
    if device != "cpu":
        raise ValueError(f"device {device!r}: text models run on the CPU in this build (use device='cpu')")
    return TextModel(path, n_ctx=n_ctx, threads=threads)


_loaded: dict = {}     # (path, options) -> model: chat() loads a model once per process


def chat(image=None, prompt: Optional[str] = None, *, model=None, **opts):
    """One answer about `image` (a path, PIL image, array, bytes, or a list of them) from `model` (a loaded
    OwlModel or a model directory) or, by default, the model directory in $OWL_MODEL.
    opts: load options (n_ctx, threads, device) and OwlModel.chat options (stream, max_tokens, ...)."""
    load_opts = {k: opts.pop(k) for k in ("n_ctx", "threads", "device") if k in opts}
    if model is None or isinstance(model, (str, os.PathLike)):
        path = model if model is not None else os.environ.get(MODEL_ENV)
        if not path:
            raise RuntimeError(_NO_MODEL)
        key = (os.path.abspath(os.fspath(path)), tuple(sorted(load_opts.items())))
        if key not in _loaded:
            _loaded[key] = load(path, **load_opts)
        model = _loaded[key]
    if not hasattr(model, "chat"):
        raise TypeError(f"{type(model).__name__} is a text model without images; use its generate()")
    return model.chat(image, prompt, **opts)


def system_info() -> dict:
    """Which kernels and how many threads the runtime uses here."""
    from . import _core

    return dict(_core.system_info())


def __getattr__(name):          # OwlModel/Session without importing Pillow for text-only use
    if name in ("OwlModel", "Session"):
        from . import owl3_model
        return getattr(owl3_model, name)
    raise AttributeError(f"module 'owl_cpp' has no attribute {name!r}")
