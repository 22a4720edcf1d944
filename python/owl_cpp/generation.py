"""Generation, for every family: sampling options, and the decode loop over one context slot."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from . import _core
from .context_slot import ContextSlot, PreparedPrompt
from .step_batcher import StepBatcher
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
                    stops: list, terminators: frozenset, batcher: Optional[StepBatcher] = None,
                    logprobs: Optional[list] = None, top_logprobs: int = 0,
                    constraint=None) -> Iterator[tuple[str, dict]]:
    """Prefill (reusing the slot's cached prefix), then sample until a terminator (not added to the text),
    a stop string, max_tokens or the end of the context. Yields (text piece, {}) and last ("", info).

    batcher: the model's StepBatcher (step_batcher.py): decode steps run in batches with other generations'.
    logprobs: a list to fill, as tokens are sampled, with each sampled token's log-probability under the model
    (log-softmax of its logits, before any sampling filter) and the top_logprobs most likely alternatives:
    {"id", "logprob", "top": [(id, logprob), ...]}; None (the default) computes nothing. It is info["logprobs"].
    constraint: a _core.JsonConstraint (json_mode.py): only tokens it allows are sampled, and generation stops
    (finish "stop") when the JSON value it tracks is complete."""
    want = logprobs is not None
    t0 = time.perf_counter()
    n_evaluated, logits = slot.prefill(prompt, return_logits=want)
    t1 = time.perf_counter()
    decoder = _core.StreamDecoder(tokenizer, False)
    matcher = StopMatcher(stops)
    n_tok = len(tokenizer)
    history = list(prompt.ids)
    generated: list[int] = []
    finish = "length"
    if batcher is not None:
        batcher.register()
    try:
        while len(generated) < max_tokens:
            if len(history) >= slot.n_ctx:
                finish = "context"
                break
            if constraint is None:
                tok = int(sampler.sample(slot.ctx, history, n_tok))
            else:
                tok = int(constraint.sample(sampler, slot.ctx, history, n_tok))
            if tok in terminators:
                finish = "stop"
                break
            if want:                 # one entry per generated token (a terminator is not part of the answer)
                logprobs.append(token_logprobs(logits, tok, top_logprobs))
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
            if constraint is not None and constraint.done:
                finish = "stop"
                break
            if len(generated) < max_tokens:
                if batcher is not None:
                    logits = slot.step(tok, batcher, want)
                else:
                    logits = slot.append([tok], return_logits=want)
    finally:
        if batcher is not None:
            batcher.unregister()
    tail = matcher.push(decoder.flush()) + matcher.flush()
    t2 = time.perf_counter()
    info = {
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
    if want:
        info["logprobs"] = logprobs
    yield tail, info


MAX_TOP_LOGPROBS = 20


def check_logprobs(logprobs) -> Optional[int]:
    """None (off) or the number of alternatives to report per token, 0..MAX_TOP_LOGPROBS."""
    if logprobs is None:
        return None
    if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise ValueError(f"logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}] (alternatives per token) or None, "
                         f"got {logprobs!r}")
    return logprobs


def token_logprobs(logits: np.ndarray, tok: int, top: int) -> dict:
    """The sampled token's log-probability under log_softmax(logits) and the `top` most likely tokens'."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max()
    lse = m + math.log(np.exp(z - m).sum())
    out = {"id": tok, "logprob": float(z[tok] - lse), "top": []}
    if top > 0:
        idx = np.argpartition(-z, top - 1)[:top]
        idx = idx[np.argsort(-z[idx], kind="stable")]
        out["top"] = [(int(i), float(z[i] - lse)) for i in idx]
    return out
