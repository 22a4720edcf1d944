"""PyTorch reference models: plain, readable, no caches. The oracle the C++ runtime is tested against."""
from .decoder import TextDecoder

__all__ = ["TextDecoder"]
