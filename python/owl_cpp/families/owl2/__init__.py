"""mPLUG-Owl2 and mPLUG-Owl (v1) (docs/owl2.md PART A, C): prompts, image preprocessing, the model."""
from .model import Owl2Model

__all__ = ["Owl2Model"]
