"""`owl_cpp.load("owl3-model-dir")`: mPLUG-Owl3 = decoder.gguf (C++ runtime) + vision.onnx (onnxruntime).

  m = OwlModel("owl3-7b")
  m.chat(images=["a.jpg"], prompt="What is in this picture?")          # -> text
  for piece in m.chat("a.jpg", "Describe it.", stream=True): ...
  s = m.session(); s.ask("Describe it.", images=["a.jpg"]); s.ask("And the colours?")

One KV cache per model, shared by its calls and sessions: each call evaluates only what differs from what is
cached (text tokens and the images attached to them), so a session's next turn costs its new tokens. The
generation loop, stop strings and sampling are TextModel's; this class adds images to the prefill.
Defaults follow the official generate() path (docs/owl3.md §6.6): greedy, stop at <|im_end|> / <|endoftext|>
(control tokens), the answer decoded and stripped. Unlike the official _decode_text, "!" (token 0) is kept:
dropping it there removes padding of batched generation, which a single answer does not have.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from . import _core
from .generation import SamplingOptions, normalize_stop
from .owl3_prompt import Expanded, Settings, build_prompt, expand_media, normalize_messages, user_message
from .text_model import TextModel
from .vision import VisionEncoder, view_key

EXPORT_HINT = "create one with `owl-export HF_CHECKPOINT_DIR -o MODEL_DIR`"


class OwlModel(TextModel):
    """An exported mPLUG-Owl3 model directory: decoder.gguf + vision.onnx."""

    def __init__(self, model_dir, *, n_ctx: Optional[int] = None, threads: Optional[int] = None,
                 device: str = "cpu", vision_file: str = "vision.onnx"):
        d = Path(model_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: model directory not found ({EXPORT_HINT})")
        for name in ("decoder.gguf", vision_file):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d}: no {name} in the model directory ({EXPORT_HINT})")
        super().__init__(d / "decoder.gguf", n_ctx=n_ctx, threads=threads)
        if self.hparams["arch"] != "owl3":
            raise ValueError(f"{d / 'decoder.gguf'}: architecture {self.hparams['arch']!r} is not an mPLUG-Owl3 "
                             "decoder ('owl3'); load a plain .gguf text model by its file path")
        self.model_dir = d
        self.settings = Settings.for_variant(self.hparams["hyper_variant"], self._meta("owl3.vision.image_size"),
                                             self._meta("owl3.vision.cut_template"))
        self.vision = VisionEncoder(d / vision_file, threads=self.threads, device=device)
        self._check_vision_matches()
        self._views: list[tuple[int, bytes]] = []      # (start, key) of each view attached to the context
        self._pending: list[tuple[int, bytes, np.ndarray]] = []   # the views of the prompt being prefilled
        self._n_evaluated = 0                           # prompt tokens the last prefill actually evaluated

    def _check_vision_matches(self) -> None:
        """vision.onnx from another export would give embeddings of the wrong width or image size."""
        meta, want = self.vision.metadata, {"owl3.embedding_length": self.hparams["n_embd"],
                                            "owl3.vision.image_size": self.settings.image_size}
        for key, value in want.items():
            if key in meta and str(meta[key]) != str(value):
                raise ValueError(f"{self.vision.path}: {key} is {meta[key]} but decoder.gguf needs {value}; "
                                 "the two files come from different exports")

    def _meta(self, key: str):
        f = _core.GGUFFile.open(self.path)
        return f[key] if key in f else None

    @property
    def variant(self) -> str:
        return self.settings.variant

    # ----- cache ---------------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self._views = []

    def _prefill(self, ids: list[int]) -> None:
        """Like TextModel._prefill, but a cached prefix counts only up to the first image that differs: all
        `<|image|>` placeholders have the same tokens, so equal ids do not mean equal images."""
        if len(ids) > self.n_ctx:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the context of {self.n_ctx} tokens "
                             f"(load with a larger n_ctx)")
        new = self._pending
        common = 0
        for a, b in zip(self._cached, ids):
            if a != b:
                break
            common += 1
        j = 0
        while j < min(len(self._views), len(new)) and self._views[j] == new[j][:2]:
            j += 1
        for s, _ in self._views[j:]:                   # cached views that are not in the new prompt
            common = min(common, s)
        for s, _, _ in new[j:]:                         # new views: evaluated from their placeholder on
            common = min(common, s)
        common = min(common, len(ids) - 1)              # recompute at least one token for its logits
        self._ctx.truncate(common)                      # drops the K/V of text and images from `common` on
        self._cached = self._cached[:common]
        self._views = [v for v in self._views if v[0] < common]
        if self._ctx.n_images != len(self._views):
            raise RuntimeError(f"internal: context holds {self._ctx.n_images} images, expected {len(self._views)}")
        for s, key, emb in new[len(self._views):]:
            self._ctx.add_image(emb, s)
            self._views.append((s, key))
        self._ctx.eval(ids[common:], return_logits=False)
        self._cached = list(ids)
        self._n_evaluated = len(ids) - common

    # ----- chat ----------------------------------------------------------------------------------
    def chat(self, images=None, prompt: Optional[str] = None, *, messages: Optional[Sequence[dict]] = None,
             videos=None, stream: bool = False, max_tokens: int = 512, temperature: float = 0.0, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, seed: Optional[int] = None,
             stop=None, cut: bool = True, return_info: bool = False):
        """Answers `prompt` about `images` (path, PIL.Image, (H, W, 3) uint8 array, bytes, or a list), or an
        OpenAI-style `messages` list. Images go where the prompt has `<|image|>` markers, else before it.
        videos: a list of videos, each a list of frames (`<|video|>` markers).

        Returns the text; stream=True: an iterator of text pieces (its .info is set at the end);
        return_info=True: a dict with the text, tokens, counts, finish_reason and timings (vision_ms, prefill
        and decode tokens/s; prefill counts the tokens evaluated, not those reused from the cache)."""
        if (prompt is None) == (messages is None):
            raise ValueError("pass either prompt= or messages=")
        if messages is None:
            msg, media = user_message(prompt, images, videos)
            msgs = [msg]
        else:
            msgs, media = normalize_messages(messages, images, videos)
        expanded = expand_media(media, self.settings, cut)
        return self._answer(msgs, expanded, stream=stream, return_info=return_info, max_tokens=max_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, seed=seed, stop=stop)

    def session(self, system: Optional[str] = None) -> "Session":
        """A multi-turn conversation over this model's KV cache and image cache."""
        return Session(self, system)

    def _answer(self, messages: Sequence[dict], expanded: Sequence[Expanded], *, stream: bool = False,
                return_info: bool = False, max_tokens: int = 512, temperature: float = 0.0, top_k: int = 40,
                top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                seed: Optional[int] = None, stop=None, on_done: Optional[Callable[[str, list], None]] = None):
        """Generation for normalized messages and their preprocessed media (chat and Session build these)."""
        sampler = SamplingOptions(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed).make_sampler()
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        prompt = build_prompt(self.tokenizer, messages, expanded)
        if len(prompt.ids) > self.n_ctx:    # before the vision tower spends any time
            raise ValueError(f"prompt of {len(prompt.ids)} tokens exceeds the context of {self.n_ctx} tokens "
                             f"(load with a larger n_ctx)")
        t0, n0 = time.perf_counter(), self.vision.n_encoded
        keys = [view_key(v) for v in prompt.views]
        embeds = self.vision.encode(prompt.views, keys) if keys else []
        vision = {"vision_s": time.perf_counter() - t0, "views": len(keys),
                  "views_encoded": self.vision.n_encoded - n0}
        run = self._stream(prompt.ids, list(zip(prompt.image_starts, keys, embeds)), max_tokens, sampler,
                           normalize_stop(stop), vision, on_done)
        if stream:
            return TextStream(run)
        info = {}
        for _, info in run:
            pass
        return info if return_info else info["text"]

    def _stream(self, ids, views, max_tokens, sampler, stops, vision, on_done) -> Iterator[tuple[str, dict]]:
        """TextModel._run with this prompt's images, its text stripped as the official decode does."""
        self._pending = views
        strip, raw, info = _Strip(), [], {}
        try:
            for piece, info in self._run(ids, max_tokens, sampler, stops):
                raw.append(piece)
                out = strip.push(piece)
                if out:
                    yield out, {}
        except GeneratorExit:                       # the caller stopped early: what was said still counts
            if on_done is not None and raw:
                on_done("".join(raw), None)
            raise
        finally:
            self._pending = []
        if on_done is not None:
            on_done("".join(raw), info.get("tokens"))
        t = info["timings"]
        info.update(text=strip.text, prompt_tokens_evaluated=self._n_evaluated, images=vision["views"],
                    views_encoded=vision["views_encoded"])
        t.update(vision_s=vision["vision_s"], vision_ms=1e3 * vision["vision_s"],
                 prefill_tokens_per_s=self._n_evaluated / t["prefill_s"] if t["prefill_s"] > 0 else float("inf"))
        yield "", info


class TextStream:
    """The iterator stream=True returns: text pieces; once exhausted, .info holds what return_info gives."""

    def __init__(self, run: Iterator[tuple[str, dict]]):
        self._run, self.info = run, None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while True:
            piece, info = next(self._run)
            if info:
                self.info = info
            if piece:
                return piece

    def close(self) -> None:
        self._run.close()


class _Strip:
    """str.strip() over a stream: leading whitespace dropped, trailing whitespace held until text follows."""

    def __init__(self):
        self.started, self.held, self.parts = False, "", []

    def push(self, s: str) -> str:
        if not self.started:
            s = s.lstrip()
            if not s:
                return ""
            self.started = True
        s = self.held + s
        body = s.rstrip()
        self.held = s[len(body):]
        self.parts.append(body)
        return body

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Session:
    """A conversation: each ask() adds a user turn and the model's answer to the history. The next turn's
    prompt is the whole history; the shared KV cache already holds all but the new turn, and images seen
    before are not encoded again (VisionEncoder cache)."""

    def __init__(self, model: OwlModel, system: Optional[str] = None):
        self.model = model
        self.system = system
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (and free the model's cache)."""
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system is not None else []
        self._expanded: list[Expanded] = []
        self.model.reset()

    def ask(self, prompt: str, images=None, videos=None, *, stream: bool = False, cut: bool = True, **opts):
        """Answers the next user turn; opts as OwlModel.chat (max_tokens, temperature, ..., return_info)."""
        msg, media = user_message(prompt, images, videos)
        expanded = expand_media(media, self.model.settings, cut)
        msgs = self.messages + [msg]

        def done(text: str, tokens) -> None:
            ids = tokens if tokens is not None and self.model.detokenize(tokens) == text else None
            self.messages += [msg, {"role": "assistant", "content": text, "ids": ids}]
            self._expanded += expanded

        return self.model._answer(msgs, self._expanded + expanded, stream=stream, on_done=done, **opts)

    @property
    def history(self) -> list[dict]:
        """The turns so far as messages (role, content), e.g. to replay them elsewhere."""
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]
