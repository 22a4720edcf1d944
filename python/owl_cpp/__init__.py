"""owl_cpp: run mPLUG-Owl models (and plain qwen2/llama GGUF decoders) with a C++ runtime.

    import owl_cpp
    print(owl_cpp.chat("photo.jpg", "Describe the image."))        # the model in $OWL_MODEL (else the demo model)
    m = owl_cpp.load("owl3-7b")                                     # a directory written by owl-export
    d = owl_cpp.load("demo")                                        # the small demo model shipped inside
    for piece in m.chat(images=["a.jpg", "b.jpg"], prompt="What changed?", stream=True): print(piece, end="")
    s = m.session(); s.ask("Describe it.", images=["a.jpg"]); s.ask("And the colours?")
    m.score("What is it?", [" A cat.", " A dog."], images=["a.jpg"])   # log-probabilities of answers
    t = owl_cpp.load("model.gguf"); print(t.generate("Once upon a time", max_tokens=32))

Layout: family-neutral modules here (messages, image_cache, context_pool/context_slot/prefix_reuse,
session, streaming, stops, generation, research, decoder_model, text_model, vision, loading);
families/<family>/ for each family's prompt building and preprocessing (families/owl3).
"""
from __future__ import annotations

import os
import threading
from typing import Optional

from ._core import FormatError, OwlError, StreamDecoder, Tokenizer
from .context_slot import BusyError
from .demo import model_dir as _demo
from .loading import load
from .research import ContinuationScore, PromptHiddenStates, PromptLogits
from .streaming import TextStream
from .text_model import TextModel

__all__ = ["BusyError", "ContinuationScore", "FormatError", "Owl2Model", "OwlError", "OwlModel", "PromptHiddenStates",
           "PromptLogits", "Session", "StreamDecoder", "TextModel", "TextStream", "Tokenizer", "chat", "load",
           "system_info"]
__version__ = "0.1.0"

LOAD_OPTIONS = ("n_ctx", "threads", "device", "kv_type", "n_gpu_layers")

_loaded: dict = {}     # (path, options) -> model: chat() loads a model once per process
_loading = threading.Lock()


def chat(image=None, prompt: Optional[str] = None, *, model=None, **opts):
    """One answer about `image` (a path, PIL image, array, bytes, or a list of them) from `model` (a loaded
    model or a model directory) or, by default, the model directory in $OWL_MODEL, else the small demo model
    shipped in the package (trained only on pictures of coloured shapes; a line on stderr says so, once).
    opts: load options (n_ctx, threads, device, kv_type, n_gpu_layers) and the model's chat options (stream, max_tokens, ...)."""
    load_opts = {k: opts.pop(k) for k in LOAD_OPTIONS if k in opts}
    if model is None or isinstance(model, (str, os.PathLike)):
        try:
            path = _demo.resolve(_demo.model_or_demo(model))
        except FileNotFoundError as e:
            raise RuntimeError(str(e)) from None
        key = (os.path.abspath(os.fspath(path)), tuple(sorted(load_opts.items())))
        with _loading:
            if key not in _loaded:
                _loaded[key] = load(path, **load_opts)
            model = _loaded[key]
    if isinstance(model, TextModel):
        raise TypeError(f"{type(model).__name__} is a text model without images; use its chat() or generate()")
    return model.chat(image, prompt, **opts)


def system_info() -> dict:
    """Which kernels and how many threads the runtime uses here."""
    from . import _core

    return dict(_core.system_info())


def __getattr__(name):          # the model classes and Session without importing Pillow for text-only use
    if name == "OwlModel":
        from .families.owl3 import OwlModel
        return OwlModel
    if name == "Owl2Model":
        from .families.owl2 import Owl2Model
        return Owl2Model
    if name == "Session":
        from .session import Session
        return Session
    raise AttributeError(f"module 'owl_cpp' has no attribute {name!r}")
