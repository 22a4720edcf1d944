"""`owl_cpp.load("owl2-model-dir")`: mPLUG-Owl2, mPLUG-Owl2.1 or mPLUG-Owl (v1) = decoder.gguf (C++ runtime, general.architecture
"owl2"; owl2.variant says which) + vision.onnx (ViT + visual abstractor on onnxruntime: image_tokens rows per image).

  m = owl_cpp.load("owl2-7b")
  m.chat("a.jpg", "What is in this picture?")
  s = m.session(); s.ask("Describe it.", images=["a.jpg"]); s.ask("And the colours?")
  m.image_mode = "pad"          # "resize" (default) | "pad" | "crop": the official ways in (preprocess.py)

Each image's rows are spliced into the sequence where its marker stands and run through the image branch of
the modality-adaptive module (Owl2; v1 has one branch); text and every generated token take the text branch.
Defaults follow the official evaluation path (docs/owl2.md A9): greedy, stop at </s>, the answer stripped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...messages import Video, describe
from ...vision_language import VisionLanguageModel
from .preprocess import MODES, Owl2ImageConfig, preprocess_image
from .prompt import Owl2Prompt, answer_ids, build_prompt, head_text, question_prompt, tokenize_pieces, turn_end_ids


class Owl2Model(VisionLanguageModel):
    """An exported mPLUG-Owl2 / mPLUG-Owl model directory. Options as VisionLanguageModel."""

    ARCH = "owl2"
    FAMILY = "mPLUG-Owl2 / mPLUG-Owl"
    SPLICED = True

    def _read_config(self) -> None:
        self.image_config = Owl2ImageConfig.from_metadata(self._gguf, str(self.model_dir / "decoder.gguf"))
        self._image_mode = "resize"
        bos = self.tokenizer.bos_id
        if self.image_config.variant != "owl2_1" and (bos is None or bos < 0):   # Qwen (2.1) has none
            raise ValueError(f"{self.path}: the tokenizer has no BOS token, which every Owl2 / Owl v1 prompt starts with")
        self._bos = -1 if bos is None else int(bos)

    def _check_n_ctx(self, n_ctx: int) -> None:
        limit = self.hparams["n_ctx_train"]
        if self._gguf["owl2.variant"] == "owl2_1" and n_ctx > limit:
            # past seq_length Owl2.1 scales rope (dynamic NTK) and queries (log-n), which the runtime lacks
            raise ValueError(f"{self.path}: mPLUG-Owl2.1 runs up to its seq_length of {limit} positions here "
                             f"(n_ctx={n_ctx} asked); beyond it the official model rescales its rotary positions, "
                             "which owl_cpp does not implement")

    def _vision_keys(self) -> dict:
        c = self.image_config
        return {"owl2.embedding_length": self.hparams["n_embd"], "owl2.vision.image_size": c.image_size,
                "owl2.image_tokens": c.image_tokens, "owl2.variant": c.variant}

    @property
    def variant(self) -> str:
        """"owl2" (mPLUG-Owl2) | "owl2_1" (mPLUG-Owl2.1) | "owl1" (mPLUG-Owl v1)."""
        return self.image_config.variant

    @property
    def image_mode(self) -> str:
        """How an image becomes S x S pixels: "resize" (default), "pad" or "crop" (preprocess.py)."""
        return self._image_mode

    @image_mode.setter
    def image_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"image_mode must be one of {', '.join(MODES)}, got {mode!r}")
        self._image_mode = mode

    # ----- conversation -> prompt ------------------------------------------------------------------
    def _expand(self, media, cut: bool = True) -> np.ndarray:
        """Images -> pixels [n, 3, S, S]. These models do not cut images into tiles (cut is ignored) and take
        no videos."""
        views = []
        for k, m in enumerate(media):
            if isinstance(m, Video):
                raise ValueError(f"{self.FAMILY} models take images, not videos (video {k})")
            try:
                views.append(preprocess_image(m, self.image_config, self._image_mode))
            except (ValueError, FileNotFoundError, IsADirectoryError) as e:
                raise type(e)(f"image {k} ({describe(m)}): {e}") from e
        S = self.image_config.image_size
        return np.stack(views) if views else np.zeros((0, 3, S, S), np.float32)

    def _encode(self, p, encoder=None):
        """VisionLanguageModel's, plus a check that each image gives the rows its placeholders hold: a vision.onnx
        from another export (without the metadata _check_vision_matches reads) would leave placeholders unfilled."""
        images, vision = super()._encode(p, encoder)
        n = self.image_config.image_tokens
        for k, im in enumerate(images):
            if im.embeds.shape != (n, self.hparams["n_embd"]):
                raise ValueError(f"{self.vision.path}: image {k} gave embeddings of shape {im.embeds.shape}, but "
                                 f"decoder.gguf expects ({n}, {self.hparams['n_embd']}); the two files come from "
                                 "different exports")
        return images, vision

    def _build_prompt(self, messages: Sequence[dict], views: np.ndarray) -> Owl2Prompt:
        return build_prompt(self.tokenizer, messages, views, self.variant, self.image_config.image_tokens, self._bos)

    # ----- session parts (session.py) -------------------------------------------------------------
    def _session_start(self, system) -> list[int]:
        ids, _ = tokenize_pieces(self.tokenizer, head_text(system, self.variant), 0, self._bos, add_bos=False)
        return ids if self.variant == "owl2_1" else [self._bos] + ids

    def _question(self, message: dict, media, cut: bool) -> Owl2Prompt:
        return question_prompt(self.tokenizer, message, self._expand(media, cut), self.variant,
                               self.image_config.image_tokens, self._bos)

    def _answer_ids(self, text: str) -> list[int]:
        return answer_ids(self.tokenizer, text)

    @property
    def _turn_end(self) -> list[int]:
        return turn_end_ids(self.tokenizer, self.variant, self.eos_token_id)
