"""Owl3 image preprocessing settings for tests, as owl-export writes them into decoder.gguf and the runtime
reads them back (the runtime package keeps no copy of the official constants)."""
from __future__ import annotations

from owl_cpp.families.owl3.image_config import ImagePreprocessing
from owl_export.owl3.convert import GRID_SQU_6, preprocessing_metadata

OFFICIAL_SIZE = {"240728": 384, "241014": 384, "241101": 378}        # docs/owl3.md §5.1

__all__ = ["GRID_SQU_6", "OFFICIAL_SIZE", "image_config"]


def image_config(image_size: int, generation: str = "241014") -> ImagePreprocessing:
    template = "v2_global" if generation == "240728" else "v3_global"
    return ImagePreprocessing.from_metadata(preprocessing_metadata(image_size, template), "test settings")
