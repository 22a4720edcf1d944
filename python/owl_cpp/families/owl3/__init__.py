"""mPLUG-Owl3 (docs/owl3.md): prompt building, image preprocessing from the model file's constants, the model."""
from .model import OwlModel

__all__ = ["OwlModel"]
