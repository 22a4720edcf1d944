"""Model internals for research and evaluation, on a prepared prompt (text ids + attached images):
logits at every prompt position, final hidden states, and log-probabilities of continuations
(multiple-choice scoring: one prefill of the shared prompt, each continuation from that cached prefix)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .context_slot import ContextSlot, PreparedPrompt


@dataclass
class PromptLogits:
    ids: list                      # the prompt's token ids
    logits: np.ndarray             # [len(ids), n_vocab] float32: row t predicts token t + 1
    image_starts: list             # where each image's placeholder starts (empty for text)


@dataclass
class PromptHiddenStates:
    ids: list
    hidden_states: np.ndarray      # [len(ids), n_embd] float32, after the final norm (what the output head sees)
    image_starts: list


@dataclass
class ContinuationScore:
    ids: list                      # the continuation's token ids
    token_logprobs: np.ndarray     # [len(ids)] float64: log p(ids[k] | prompt, ids[:k])
    logprob: float                 # their sum
    is_greedy: bool                # every token was the argmax at its position


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def prompt_logits(slot: ContextSlot, prompt: PreparedPrompt) -> np.ndarray:
    """Logits at every position, from an empty cache: [len(ids), n_vocab]."""
    return slot.prefill(prompt, reuse=False, all_logits=True, return_logits=True)[1]


def prompt_hidden_states(slot: ContextSlot, prompt: PreparedPrompt) -> np.ndarray:
    """Final-normed hidden states at every position, from an empty cache: [len(ids), n_embd]."""
    slot.prefill(prompt, reuse=False, all_logits=True, return_logits=False)
    return slot.hidden_states()


def score_continuations(slot: ContextSlot, prompt: PreparedPrompt, continuations: Sequence[Sequence[int]],
                        n_vocab: int) -> list[ContinuationScore]:
    """log p(continuation | prompt) for each continuation: the prompt is evaluated once (reusing what the
    slot has cached), then each continuation from that prefix."""
    conts = [[int(t) for t in c] for c in continuations]
    for k, c in enumerate(conts):
        if not c:
            raise ValueError(f"continuations[{k}] is empty")
        bad = [t for t in c if not 0 <= t < n_vocab]
        if bad:
            raise ValueError(f"continuations[{k}]: token id {bad[0]} is outside the vocabulary of {n_vocab}")
        if len(prompt.ids) + len(c) - 1 > slot.n_ctx:
            raise ValueError(f"prompt of {len(prompt.ids)} tokens + continuations[{k}] of {len(c)} exceed the "
                             f"context of {slot.n_ctx} tokens (load with a larger n_ctx)")
    _, last = slot.prefill(prompt, return_logits=True)
    first = log_softmax(last)
    n = len(prompt.ids)
    out = []
    for c in conts:
        rows = first[None]
        if len(c) > 1:
            slot.truncate(n)
            rows = np.concatenate([rows, log_softmax(slot.append(c[:-1], all_logits=True, return_logits=True))])
        lp = rows[np.arange(len(c)), c]
        greedy = bool(np.all(rows.argmax(axis=-1) == np.asarray(c)))
        out.append(ContinuationScore(c, lp, float(lp.sum()), greedy))
    return out
