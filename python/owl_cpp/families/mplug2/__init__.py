"""mPLUG-2 video captioning (docs/owl2.md PART D): video preprocessing, the video encoder, the caption
search, the model."""
from .model import Mplug2Model

__all__ = ["Mplug2Model"]
