"""Batch inference over an image collection: every image (x every prompt) answered, one JSON line each.

    from owl_cpp.batch import run_batch
    run_batch("photos/", ["Describe the image."], "results.jsonl", model="owl3-2b", workers=2)

engine.py runs on one machine (one model, N contexts, batched decode, batched vision tower); ray_engine.py
spreads the same work over a Ray cluster (`pip install "owl_cpp[ray]"`); cli.py is `owl-batch`."""
from .engine import run_batch
from .inputs import DEFAULT_PROMPT, ImageRef, collect_images, read_prompts
from .results import RESULT_FIELDS, read_results

__all__ = ["DEFAULT_PROMPT", "ImageRef", "RESULT_FIELDS", "collect_images", "read_prompts", "read_results",
           "run_batch"]
