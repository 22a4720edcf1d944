"""What every vision-language family shares on top of DecoderModel: a model directory (decoder.gguf +
vision.onnx), the vision tower with its embedding cache, chat(), sessions and research access. A family
(families/<family>/model.py) supplies how a conversation becomes a prompt:

  _expand(media, cut) -> preprocessed media (each with .views [N, 3, S, S])
  _build_prompt(messages, expanded) -> a prompt with .ids, .image_starts, .views
  _question(message, media, cut) -> one user turn through the assistant header (for Session)
  _session_start(system) -> ids before the first turn; _answer_ids(text); _turn_end
  SPLICED: whether image embeddings replace their placeholder tokens (Owl2, Owl v1) or are attached to the
  context beside them (Owl3's hyper-attention); VISION_KEYS: vision.onnx metadata that must match the decoder.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from .context_slot import ImageAt, PreparedPrompt
from .decoder_model import DecoderModel
from .image_cache import content_key
from .messages import conversation
from .research import ContinuationScore, PromptHiddenStates, PromptLogits, prompt_hidden_states, prompt_logits
from .session import Session
from .streaming import StrippedText
from .vision import VisionEncoder
from .vision_files import check_file_quant, pick_vision_file

EXPORT_HINT = "create one with `owl-export HF_CHECKPOINT_DIR -o MODEL_DIR`"


def model_directory(model_dir, files, hint: str) -> Path:
    """model_dir as a Path, once it is a directory holding `files` (else FileNotFoundError naming what is missing
    and how to make one: hint)."""
    d = Path(model_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: model directory not found ({hint})")
    for name in files:
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d}: no {name} in the model directory ({hint})")
    return d


class VisionLanguageModel(DecoderModel):
    """A model directory: decoder.gguf + vision files. Options as DecoderModel, plus device ("cpu" | "cuda" |
    "cuda:N": where the decoder and onnxruntime's vision tower run) and vision: which vision file ("none" |
    "dynamic" | "static", vision_files.py; default: the directory's vision.json default, its fp32/fp16 file on a
    GPU). vision_file names a file in the directory directly (bypassing vision.json)."""

    SPLICED = False

    def __init__(self, model_dir, *, n_ctx: Optional[int] = None, threads: Optional[int] = None,
                 device: str = "cpu", vision: Optional[str] = None, vision_file: Optional[str] = None,
                 kv_type: Optional[str] = None, max_spare_contexts: int = 1, n_gpu_layers: Optional[int] = None):
        d = model_directory(model_dir, ("decoder.gguf",), EXPORT_HINT)
        if vision_file is not None:
            if vision is not None:
                raise ValueError("give vision (a quant from vision.json) or vision_file (a file name), not both")
            path, self.vision_quant = model_directory(d, (vision_file,), EXPORT_HINT) / vision_file, None
        else:
            path, self.vision_quant = pick_vision_file(d, vision, device.split(":")[0])
        super().__init__(d / "decoder.gguf", n_ctx=n_ctx, threads=threads, kv_type=kv_type, device=device,
                         n_gpu_layers=n_gpu_layers, max_spare_contexts=max_spare_contexts)
        self.model_dir = d
        self._read_config()
        self.vision = VisionEncoder(path, threads=self.threads, device=device.split(":")[0])
        check_file_quant(path, self.vision.metadata, self.vision_quant)
        self._check_vision_matches()

    def _read_config(self) -> None:
        """The family's constants from decoder.gguf (image size, normalization, ...)."""

    def _vision_keys(self) -> dict:
        """vision.onnx metadata key -> the value decoder.gguf needs."""
        return {}

    def _check_vision_matches(self) -> None:
        """vision.onnx from another export would give embeddings of the wrong width or image size."""
        meta = self.vision.metadata
        for key, value in self._vision_keys().items():
            if key in meta and str(meta[key]) != str(value):
                raise ValueError(f"{self.vision.path}: {key} is {meta[key]} but decoder.gguf needs {value}; "
                                 "the two files come from different exports")

    def cache_stats(self) -> dict:
        """DecoderModel's, plus the image embedding cache's lookups ("image_cache_hits" / "image_cache_misses",
        one per distinct view of a call)."""
        cache = self.vision.cache
        return {**super().cache_stats(), "image_cache_hits": cache.hits, "image_cache_misses": cache.misses}

    # ----- conversation -> prepared prompt --------------------------------------------------------
    def _conversation(self, prompt_or_messages, images, videos, cut: bool):
        if isinstance(prompt_or_messages, str):
            msgs, media = conversation(prompt_or_messages, images, videos)
        else:
            msgs, media = conversation(None, images, videos, prompt_or_messages)
        return msgs, self._expand(media, cut)

    def _prepare(self, messages: Sequence[dict], expanded: Sequence, encoder=None):
        """-> the family's prompt, what the runtime evaluates (ids + image embeddings), vision stats.
        encoder: what runs the vision tower (default self.vision; a batch job's lanes pass their own)."""
        p = self._build_prompt(messages, expanded)
        if len(p.ids) > self.n_ctx:    # before the vision tower spends any time
            raise ValueError(f"prompt of {len(p.ids)} tokens exceeds the context of {self.n_ctx} tokens "
                             f"(load with a larger n_ctx)")
        images, vision = self._encode(p, encoder)
        return p, PreparedPrompt(p.ids, images, self.SPLICED), vision

    def _encode(self, p, encoder=None) -> tuple[list[ImageAt], dict]:
        """The prompt's views through the vision tower (or the image cache) -> [ImageAt] at p's image starts."""
        t0, stats = time.perf_counter(), {}
        encoder = encoder or self.vision
        # an encoder that remembers keys (a batch lane asking several prompts about one image) hashes once
        keys = encoder.content_keys(p.views) if hasattr(encoder, "content_keys") else [content_key(v) for v in p.views]
        embeds = encoder.encode(p.views, keys, stats) if keys else []
        vision = {"vision_s": time.perf_counter() - t0, "views": len(keys),
                  "views_encoded": stats.get("encoded", 0), "views_reused": stats.get("reused", 0)}
        return [ImageAt(s, k, e) for s, k, e in zip(p.image_starts, keys, embeds)], vision

    # ----- chat ----------------------------------------------------------------------------------
    def chat(self, images=None, prompt: Optional[str] = None, *, messages: Optional[Sequence[dict]] = None,
             videos=None, stream: bool = False, max_tokens: int = 512, temperature: float = 0.0, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, seed: Optional[int] = None,
             stop=None, cut: bool = True, return_info: bool = False, ignore_eos: bool = False,
             logprobs: Optional[int] = None, response_format=None):
        """Answers `prompt` about `images` (path, PIL.Image, (H, W, 3) uint8 array, bytes, or a list), or an
        OpenAI-style `messages` list. Images go where the prompt has `<|image|>` markers, else before it.
        videos: a list of videos, each a list of frames (`<|video|>` markers), for families that take them.
        cut: whether a family that cuts large images into tiles does so.

        Returns the text; stream=True: a TextStream of text pieces (its .info is set at the end);
        return_info=True: a dict with the text, tokens, counts, finish_reason and timings (vision_ms, prefill
        and decode tokens/s; prefill counts the tokens evaluated, not those reused from the cache; views
        encoded vs reused from the image cache). ignore_eos=True: no stop at the family's end tokens.
        logprobs=k (0..20): per sampled token its log-probability and the k most likely alternatives' (as
        generate()). response_format="json": the answer is one JSON object (DecoderModel.generate()).
        Safe to call from several threads (context_pool.py says on which context each call runs)."""
        msgs, media = conversation(prompt, images, videos, messages)
        return self._answer(msgs, self._expand(media, cut), stream=stream, return_info=return_info,
                            max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, seed=seed, stop=stop, ignore_eos=ignore_eos,
                            logprobs=logprobs, response_format=response_format)

    def session(self, system: Optional[str] = None, overflow: str = "shift") -> Session:
        """A multi-turn conversation with a context of its own (its KV cache) and this model's image cache.
        overflow: what happens when the history outgrows n_ctx: "shift" drops the oldest whole turns (and
        their images), keeping the system prompt and the new question; "error" raises ValueError (session.py)."""
        return Session(self, system, overflow)

    def _answer(self, messages: Sequence[dict], expanded: Sequence, **options):
        """Generation for normalized messages and their expanded media; options as _run's."""
        _, prepared, vision = self._prepare(messages, expanded)
        return self._run(prepared, vision, **options)

    def _answer_stream(self, prepared: PreparedPrompt, vision: dict, **gen) -> Iterator[tuple[str, dict]]:
        """The decode loop's pieces with the text stripped as the official decode does, and the vision stats."""
        strip, info = StrippedText(), {}
        run = super()._answer_stream(prepared, vision, **gen)
        try:
            for piece, info in run:
                out = strip.push(piece)
                if out:
                    yield out, {}
        finally:
            run.close()                             # stopped early: on_done hears it now
        info.update(text=strip.text, images=vision["views"], views_encoded=vision["views_encoded"],
                    views_reused=vision["views_reused"])
        info["timings"].update(vision_s=vision["vision_s"], vision_ms=1e3 * vision["vision_s"])
        yield "", info

    # ----- research ------------------------------------------------------------------------------
    def _research_prompt(self, prompt_or_messages, images, videos, cut):
        p, prepared, _ = self._prepare(*self._conversation(prompt_or_messages, images, videos, cut))
        return p, prepared

    def logits(self, prompt_or_messages: Union[str, Sequence[dict]], *, images=None, videos=None,
               cut: bool = True) -> PromptLogits:
        """Logits at every position of the chat prompt (as chat() builds it, ending with the assistant
        header): PromptLogits(ids, logits [n_tokens, n_vocab], image_starts)."""
        p, prepared = self._research_prompt(prompt_or_messages, images, videos, cut)
        with self._contexts.borrow() as slot:
            return PromptLogits(p.ids, prompt_logits(slot, prepared), p.image_starts)

    def hidden_states(self, prompt_or_messages: Union[str, Sequence[dict]], *, images=None, videos=None,
                      cut: bool = True) -> PromptHiddenStates:
        """Final-normed hidden states at every position of the chat prompt:
        PromptHiddenStates(ids, hidden_states [n_tokens, n_embd], image_starts)."""
        p, prepared = self._research_prompt(prompt_or_messages, images, videos, cut)
        with self._contexts.borrow() as slot:
            return PromptHiddenStates(p.ids, prompt_hidden_states(slot, prepared), p.image_starts)

    def score(self, prompt_or_messages: Union[str, Sequence[dict]], continuations: Sequence[Union[str, Sequence[int]]],
              *, images=None, videos=None, cut: bool = True) -> list[ContinuationScore]:
        """log p(continuation | chat prompt) at the answer position, for each continuation (text, tokenized as
        the family tokenizes an answer, or token ids): multiple-choice evaluation. The prompt is evaluated
        once; each continuation runs from that cached prefix."""
        if isinstance(continuations, str):
            raise TypeError("continuations must be a list (of strings or of token id lists)")
        _, prepared = self._research_prompt(prompt_or_messages, images, videos, cut)
        conts = [self._answer_ids(c) if isinstance(c, str) else list(c) for c in continuations]
        return self._score(prepared, conts)
