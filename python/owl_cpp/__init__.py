"""owl_cpp: run mPLUG-Owl models (and plain qwen2/llama GGUF decoders) with a C++ runtime."""
from ._core import FormatError, OwlError

__all__ = ["FormatError", "OwlError"]
