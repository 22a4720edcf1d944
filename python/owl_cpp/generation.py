"""Generation, for every family: sampling options, and the decode loop over one context slot."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional

from . import _core
from .context_slot import ContextSlot, PreparedPrompt
from .stops import StopMatcher


@dataclass
class SamplingOptions:
    """The sampling knobs llama.cpp users know. temperature <= 0 means greedy (the default)."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: Optional[int] = None

    def validate(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not (math.isfinite(self.repeat_penalty) and self.repeat_penalty > 0):
            raise ValueError(f"repeat_penalty must be finite and > 0, got {self.repeat_penalty}")
        for name in ("top_k", "repeat_last_n"):          # int32 in the runtime
            if not -2 ** 31 <= getattr(self, name) < 2 ** 31:
                raise ValueError(f"{name} must fit in 32 bits, got {getattr(self, name)}")

    def make_sampler(self) -> "_core.Sampler":
        self.validate()
        p = _core.SamplerParams()
        p.temperature = float(self.temperature)
        p.top_k = int(self.top_k)
        p.top_p = float(self.top_p)
        p.min_p = float(self.min_p)
        p.repeat_penalty = float(self.repeat_penalty)
        p.repeat_last_n = int(self.repeat_last_n)
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(8), "little")
        p.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        return _core.Sampler(p)


def check_max_tokens(max_tokens: int) -> None:
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")


def generate_tokens(slot: ContextSlot, prompt: PreparedPrompt, tokenizer, *, max_tokens: int, sampler,
                    stops: list, terminators: frozenset) -> Iterator[tuple[str, dict]]:
    """Prefill (reusing the slot's cached prefix), then sample until a terminator (not added to the text),
    a stop string, max_tokens or the end of the context. Yields (text piece, {}) and last ("", info)."""
    t0 = time.perf_counter()
    n_evaluated, _ = slot.prefill(prompt)
    t1 = time.perf_counter()
    decoder = _core.StreamDecoder(tokenizer, False)
    matcher = StopMatcher(stops)
    n_tok = len(tokenizer)
    history = list(prompt.ids)
    generated: list[int] = []
    finish = "length"
    while len(generated) < max_tokens:
        if len(history) >= slot.n_ctx:
            finish = "context"
            break
        tok = int(sampler.sample(slot.ctx, history, n_tok))
        if tok in terminators:
            finish = "stop"
            break
        generated.append(tok)
        history.append(tok)
        piece = matcher.push(decoder.push(tok))
        if matcher.stopped:
            finish = "stop"
            if piece:
                yield piece, {}
            break
        if piece:
            yield piece, {}
        if len(generated) < max_tokens:
            slot.append([tok])
    tail = matcher.push(decoder.flush()) + matcher.flush()
    t2 = time.perf_counter()
    yield tail, {
        "tokens": generated,
        "prompt_tokens": len(prompt.ids),
        "prompt_tokens_evaluated": n_evaluated,
        "completion_tokens": len(generated),
        "finish_reason": finish,
        "timings": {
            "prefill_s": t1 - t0,
            "decode_s": t2 - t1,
            "prefill_tokens_per_s": n_evaluated / (t1 - t0) if t1 > t0 else float("inf"),
            "decode_tokens_per_s": len(generated) / (t2 - t1) if generated and t2 > t1 else 0.0,
        },
    }
