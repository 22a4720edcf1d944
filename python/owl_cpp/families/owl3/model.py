"""`owl_cpp.load("owl3-model-dir")`: mPLUG-Owl3 = decoder.gguf (C++ runtime) + vision.onnx (onnxruntime).

  m = OwlModel("owl3-7b")
  m.chat(images=["a.jpg"], prompt="What is in this picture?")          # -> text
  for piece in m.chat("a.jpg", "Describe it.", stream=True): ...
  s = m.session(); s.ask("Describe it.", images=["a.jpg"]); s.ask("And the colours?")
  m.score("Which animal is it?", [" A cat.", " A dog."], images=["a.jpg"])   # multiple choice

Each call runs on a context of the model's pool (context_pool.py) and evaluates only what differs from what
that context holds (text tokens and the images attached to them); a session has a context of its own, so its
next turn costs its new tokens. Images are encoded once (image_cache.py). Defaults follow the official
generate() path (docs/owl3.md §6.6): greedy, stop at <|im_end|> / <|endoftext|>, the answer decoded and stripped.
Unlike the official _decode_text, "!" (token 0) is kept: dropping it there removes padding of batched
generation, which a single answer does not have.
"""
from __future__ import annotations

from typing import Sequence

from ...stops import special_token_ids
from ...vision_language import VisionLanguageModel
from .image_config import ImagePreprocessing
from .media import Expanded, expand_media
from .prompt import (ANSWER_END, TERMINATORS, Owl3Prompt, answer_chunk_ids, build_prompt, question_prompt,
                     system_chunk, tokenize_chunks)


class OwlModel(VisionLanguageModel):
    """An exported mPLUG-Owl3 model directory: decoder.gguf + vision.onnx. Options as VisionLanguageModel."""

    ARCH = "owl3"
    FAMILY = "mPLUG-Owl3"

    def _read_config(self) -> None:
        self.image_config = ImagePreprocessing.from_metadata(self._gguf, str(self.model_dir / "decoder.gguf"))

    def _vision_keys(self) -> dict:
        return {"owl3.embedding_length": self.hparams["n_embd"], "owl3.vision.image_size": self.image_config.image_size}

    def _terminators(self) -> frozenset:
        return special_token_ids(self.tokenizer, TERMINATORS) or super()._terminators()

    @property
    def variant(self) -> str:
        """"240728" | "241014" | "241101" (docs/owl3.md §1)."""
        return self.hparams["hyper_variant"]

    # ----- conversation -> prompt ------------------------------------------------------------------
    def _expand(self, media, cut: bool = True) -> list[Expanded]:
        return expand_media(media, self.variant, self.image_config, cut)

    def _build_prompt(self, messages: Sequence[dict], expanded: Sequence[Expanded]) -> Owl3Prompt:
        return build_prompt(self.tokenizer, messages, expanded)

    # ----- session parts (session.py) -------------------------------------------------------------
    def _session_start(self, system) -> list[int]:
        return tokenize_chunks(self.tokenizer, [system_chunk(system)])[0]

    def _question(self, message: dict, media, cut: bool) -> Owl3Prompt:
        return question_prompt(self.tokenizer, message, self._expand(media, cut))

    def _answer_ids(self, text: str) -> list[int]:
        return answer_chunk_ids(self.tokenizer, text)

    @property
    def _turn_end(self) -> list[int]:
        return tokenize_chunks(self.tokenizer, ANSWER_END)[0]
