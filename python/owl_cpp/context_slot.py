"""One conversation's state in the runtime: a _core.Context (KV cache, attached images, scratch) plus what
it holds, so the next prompt evaluates only what differs (prefix_reuse.py). A slot is used by one caller
at a time: callers acquire it first (ContextPool, Session); a _core.Context must never run in two threads."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .prefix_reuse import reusable_prefix


@dataclass(frozen=True)
class ImageAt:
    """An image's embeddings [n_tokens, n_embd] and where its placeholder starts in the prompt."""
    start: int
    key: bytes
    embeds: np.ndarray


@dataclass
class PreparedPrompt:
    """What the runtime evaluates: token ids and the images attached to them, in prompt order.

    Two ways an image enters the sequence: attached (Owl3: the context keeps its embeddings and hyper layers
    attend to them; its placeholder tokens are evaluated as ids) or spliced (Owl2 / Owl v1: its embedding rows
    are evaluated in place of its placeholder tokens, as image-modality tokens)."""
    ids: list
    images: list = field(default_factory=list)       # [ImageAt]
    spliced: bool = False


class BusyError(RuntimeError):
    """The slot is in use (e.g. a session still streaming its previous answer)."""


class PromptStats:
    """Prompt tokens of a model's prefills (all its slots): `cached` reused from a context's KV cache,
    `evaluated` computed. Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.cached = 0
        self.evaluated = 0

    def add(self, cached: int, evaluated: int) -> None:
        with self._lock:
            self.cached += cached
            self.evaluated += evaluated


class ContextSlot:
    def __init__(self, ctx, stats: Optional[PromptStats] = None):
        self.ctx = ctx
        self.tokens: list[int] = []                      # tokens whose K/V are cached, in order
        self.images: list[tuple[int, bytes]] = []        # (start, key) of each attached image
        self.n_prompt = 0                                # how many of `tokens` the last prefill's prompt was
        self.stats = stats
        self.last_used = 0                               # set by the pool on release (its choice, its trimming)
        self.hidden: Optional[np.ndarray] = None         # a spliced prefill's hidden states (hidden_states())
        self._lock = threading.Lock()
        self._owner: Optional[int] = None               # thread that acquired it

    # ----- ownership -----------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        if not self._lock.acquire(blocking=False):
            return False
        self._owner = threading.get_ident()
        return True

    def acquire(self) -> None:
        """Waits until the slot is free; a thread that holds it already (an unfinished stream of its own)
        would wait forever, so that raises BusyError instead."""
        if self._lock.locked() and self._owner == threading.get_ident():
            raise BusyError("the context is held by an unfinished stream of this thread: exhaust or close "
                            "the stream first")
        self._lock.acquire()
        self._owner = threading.get_ident()

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    # ----- state (call with the slot acquired) ---------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self.ctx.n_ctx

    def reusable(self, prompt: PreparedPrompt) -> int:
        """Tokens of `prompt` whose K/V this slot holds already (prefix_reuse.py)."""
        return reusable_prefix(self.tokens, self.images, prompt.ids, [(im.start, im.key) for im in prompt.images])

    def reset(self) -> None:
        self.truncate(0)

    def truncate(self, n: int) -> None:
        self.ctx.truncate(n)
        self.tokens = self.tokens[:n]
        self.n_prompt = min(self.n_prompt, n)
        self.images = [im for im in self.images if im[0] < n]

    def prefill(self, prompt: PreparedPrompt, *, reuse: bool = True, all_logits: bool = False,
                return_logits: bool = False) -> tuple[int, Optional[np.ndarray]]:
        """Evaluates the prompt, keeping the reusable cached prefix (reuse=False: from position 0). At least
        the last token is evaluated, for its logits. Returns (tokens evaluated, logits or None): the last
        token's [n_vocab], or with all_logits those of every evaluated token [n, n_vocab]."""
        ids = list(map(int, prompt.ids))
        if not ids:
            raise ValueError("no tokens to evaluate")
        if len(ids) > self.n_ctx:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the context of {self.n_ctx} tokens "
                             f"(load with a larger n_ctx)")
        common = min(self.reusable(PreparedPrompt(ids, prompt.images)) if reuse else 0, len(ids) - 1)
        if prompt.spliced:     # evaluation never starts inside a spliced image: its rows go in as one piece
            for im in prompt.images:
                if im.start < common < im.start + len(im.embeds):
                    common = im.start
            out = self._prefill_spliced(ids, prompt.images, common, all_logits, return_logits)
        else:
            self.truncate(common)
            for im in prompt.images[len(self.images):]:
                self.ctx.add_image(im.embeds, im.start)
                self.images.append((im.start, im.key))
            if self.ctx.n_images != len(self.images):
                raise RuntimeError(f"internal: context holds {self.ctx.n_images} images, expected {len(self.images)}")
            out = self.ctx.eval(ids[common:], all_logits=all_logits, return_logits=return_logits)
            self.hidden = None
        self.tokens, self.n_prompt = ids, len(ids)
        if self.stats is not None:
            self.stats.add(common, len(ids) - common)
        return len(ids) - common, out

    def _prefill_spliced(self, ids: list, images: list, common: int, all_logits: bool, return_logits: bool):
        """Evaluates ids[common:] in runs: text as token ids, each image's rows as embeddings with the image
        modality."""
        spans = []
        for im in images:
            n = len(im.embeds)
            if im.start < 0 or im.start + n > len(ids):
                raise ValueError(f"image at token {im.start} with {n} rows does not fit a prompt of {len(ids)} tokens")
            if spans and im.start < spans[-1][1]:
                raise ValueError(f"images at tokens {spans[-1][0]} and {im.start} overlap")
            spans.append((im.start, im.start + n, im))
        self.truncate(common)
        logits, hidden, at = [], [], common
        for s0, s1, im in [s for s in spans if s[1] > common] + [(len(ids), len(ids), None)]:
            for kind, end in (("text", s0), ("image", s1)):
                if end <= at:
                    continue
                last = end == len(ids)
                want = return_logits and (all_logits or last)
                if kind == "text":
                    out = self.ctx.eval(ids[at:end], all_logits=all_logits, return_logits=want)
                else:
                    out = self.ctx.decode(embeds=im.embeds, modality=[1] * (end - at), all_logits=all_logits,
                                          return_logits=want)
                if all_logits:
                    logits.append(out)
                    hidden.append(np.asarray(self.ctx.hidden_states()))
                elif last:
                    logits.append(out)
                at = end
        self.images = [(im.start, im.key) for im in images]
        self.hidden = np.concatenate(hidden) if hidden else None
        if not return_logits:
            return None
        return np.concatenate(logits) if all_logits else logits[-1]

    def hidden_states(self) -> np.ndarray:
        """Final-normed hidden states of the rows the last prefill or append returned logits for."""
        return self.hidden if self.hidden is not None else np.asarray(self.ctx.hidden_states())

    def append(self, ids: list, *, all_logits: bool = False, return_logits: bool = False):
        """Evaluates ids after what is cached (raw evaluation, continuations, decode steps)."""
        out = self.ctx.eval(ids, all_logits=all_logits, return_logits=return_logits)
        self.tokens += ids
        self.hidden = None
        return out

    def step(self, token: int, batcher, want_logits: bool = False) -> Optional[np.ndarray]:
        """One decode step through the model's StepBatcher (step_batcher.py), batched with other generations'.
        Returns the token's logits [n_vocab] when want_logits."""
        out = batcher.step(self.ctx, token, want_logits)
        self.tokens.append(int(token))
        self.hidden = None
        return out
