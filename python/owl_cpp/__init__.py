"""owl_cpp: run mPLUG-Owl models (and plain qwen2/llama GGUF decoders) with a C++ runtime.

    import owl_cpp
    m = owl_cpp.load("model.gguf")
    print(m.generate("Once upon a time", max_tokens=32))
"""
from __future__ import annotations

import os
from typing import Optional, Union

from ._core import FormatError, OwlError, StreamDecoder, Tokenizer
from .text_model import TextModel

__all__ = ["FormatError", "OwlError", "StreamDecoder", "TextModel", "Tokenizer", "load", "system_info"]
__version__ = "0.1.0"


def load(path: Union[str, os.PathLike], *, n_ctx: Optional[int] = None, threads: Optional[int] = None,
         device: str = "cpu") -> TextModel:
    """Loads a model: a .gguf text decoder (qwen2 or llama)."""
    if device != "cpu":
        raise ValueError(f"device {device!r} is not available in this build (only 'cpu')")
    return TextModel(path, n_ctx=n_ctx, threads=threads)


def system_info() -> dict:
    """Which kernels and how many threads the runtime uses here."""
    from . import _core

    return dict(_core.system_info())
