"""Model families by GGUF `general.architecture`. A family with media (images, video) has its own package
here (prompt building, preprocessing, the model class); plain text decoders are TextModel. Imported lazily,
so text-only use does not load Pillow or onnxruntime."""
from __future__ import annotations

import importlib

TEXT_ARCHITECTURES = ("llama", "qwen2")
MEDIA_FAMILIES = {"owl3": ("owl_cpp.families.owl3", "OwlModel"),        # architecture -> (module, class)
                  "owl2": ("owl_cpp.families.owl2", "Owl2Model"),
                 "mplug2": ("owl_cpp.families.mplug2", "Mplug2Model")}
SUPPORTED = tuple(sorted(TEXT_ARCHITECTURES + tuple(MEDIA_FAMILIES)))


def media_model_class(arch: str):
    module, name = MEDIA_FAMILIES[arch]
    return getattr(importlib.import_module(module), name)
