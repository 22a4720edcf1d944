"""mPLUG-Owl3 on the PyTorch side (docs/owl3.md): variant detection, the reference vision path and language model
(the oracle the C++ runtime is tested against), and tiny random checkpoints in the published layout.

  variant    detect_variant(config, tensor_names) -> Owl3Variant (240728 / 241014 / 241101), VisionConfig
  vision     Owl3VisionReference: pixels [N,3,S,S] -> SigLIP hidden_states[-2] -> vision2text -> [N, P, H]
  language   Owl3Reference: Qwen2 + hyper-attention; logits, per-layer and per-component outputs
  fixtures   make_tiny_owl3_checkpoint(out_dir, variant=...)   (imported on demand)
"""
from .language import Owl3Reference, find_image_starts, starts_from_media_offset
from .variant import Owl3LayoutError, Owl3Variant, VisionConfig, detect_variant
from .vision import Owl3VisionReference

__all__ = ["Owl3LayoutError", "Owl3Reference", "Owl3Variant", "Owl3VisionReference", "VisionConfig",
           "detect_variant", "find_image_starts", "starts_from_media_offset"]
