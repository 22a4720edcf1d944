"""mPLUG-2's caption search, as published (models/predictor.py, _fast_translate_batch, at batch 1), over any
step function, in numpy: the runtime drives it with one context per beam (model.py).

  step(tokens [B], parents [B] | None) -> next-token logits [B, V] (float32)
      tokens: the token each beam appends now; parents[i]: the beam whose history beam i continues (None on
      the first step, when every beam is the start token alone). The caller keeps each beam's cache.

What the published search does, which we keep float op for float op (docs/owl2.md PART D):
- scores are log(softmax(logits)); before step `min_length` the end token gets -1e20;
- GNMT length penalty ((5 + step + 1) / 6) ** alpha; the top B over all beams x vocabulary is taken on
  (log_probs + beam score) / penalty, and the beam score kept is that value times the penalty again;
- a beam whose new token is the end token is recorded as a finished hypothesis but stays alive; when the top
  beam ends, or at max_length, every beam is recorded and the search stops; the answer is the best recorded
  hypothesis (a stable sort, descending), which may have finished steps earlier.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

Step = Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]
NEG_EOS = np.float32(-1e20)


def log_softmax_as_published(logits: np.ndarray) -> np.ndarray:
    """log(softmax(x)) in float32 (the published code takes the log of the softmax, not log_softmax)."""
    x = logits.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    with np.errstate(divide="ignore"):          # a probability that underflows to 0 is -inf there too
        return np.log(e / e.sum(axis=-1, keepdims=True, dtype=np.float32))


def beam_search(step: Step, bos_id: int, eos_id: int, beam_size: int = 5, min_length: int = 4,
                max_length: int = 20, alpha: float = 0.6) -> list[tuple[float, list[int]]]:
    """The recorded hypotheses, best first (at most beam_size): [(score, ids with the leading bos)]."""
    if beam_size < 1 or max_length < 1 or min_length < 0:
        raise ValueError(f"beam_size and max_length must be >= 1 and min_length >= 0, got {beam_size}, "
                         f"{max_length}, {min_length}")
    B = beam_size
    alive = np.full((B, 1), bos_id, dtype=np.int64)
    beam_scores = np.array([0.0] + [-np.inf] * (B - 1), dtype=np.float32)
    hyps: list[tuple[float, list[int]]] = []
    parents = None
    for t in range(max_length):
        logits = np.asarray(step(alive[:, -1].copy(), parents), dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] != B:
            raise ValueError(f"step returned logits of shape {logits.shape}, expected ({B}, n_vocab)")
        V = logits.shape[1]
        if V < B:
            raise ValueError(f"beam size {B} exceeds the vocabulary of {V} tokens")
        log_probs = log_softmax_as_published(logits)
        if t < min_length:
            log_probs[:, eos_id] = NEG_EOS
        penalty = np.float32(((5.0 + (t + 1)) / 6.0) ** alpha)
        cand = ((log_probs + beam_scores[:, None]) / penalty).reshape(-1)
        best = np.argsort(-cand, kind="stable")[:B]        # ties: the lower index first
        top = cand[best]
        beam_scores = top * penalty
        parents, tokens = best // V, best % V
        alive = np.concatenate([alive[parents], tokens[:, None]], axis=1)
        finished = tokens == eos_id
        if t + 1 == max_length:
            finished[:] = True
        if finished[0]:                                   # the top beam ended: record every beam, stop
            finished[:] = True
        for j in np.nonzero(finished)[0]:
            hyps.append((float(top[j]), alive[j].tolist()))
        if finished[0]:
            return sorted(hyps, key=lambda h: h[0], reverse=True)[:B]
    raise AssertionError("unreachable: the last step finishes every beam")


def greedy_search(step: Step, bos_id: int, eos_id: int, max_length: int = 20,
                  min_length: int = 0) -> list[int]:
    """Argmax decoding from bos with one beam (step's parents are always None): the ids after bos, the end
    token included when it came. Before min_length the end token cannot win."""
    ids: list[int] = []
    token = bos_id
    for t in range(max_length):
        logits = np.asarray(step(np.array([token], dtype=np.int64), None), dtype=np.float32)[0].copy()
        if t < min_length:
            logits[eos_id] = -np.inf
        token = int(np.argmax(logits))
        ids.append(token)
        if token == eos_id:
            break
    return ids
