"""`owl_cpp.load("model.gguf")`: a plain qwen2 / llama GGUF text decoder behind a llama-cpp-python-like API.

  m = owl_cpp.load("qwen2-0.5b-instruct-q8_0.gguf")
  m.generate("The capital of France is", max_tokens=32)
  m.score("Q: 2 + 2 = ? A:", [" 4", " 5"])          # log p of each continuation
  m.logits(m.tokenize("Hello"))                      # [n_tokens, n_vocab]
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from .context_slot import PreparedPrompt
from .decoder_model import DecoderModel
from .research import ContinuationScore, prompt_hidden_states, prompt_logits

Prompt = Union[str, Sequence[int]]


class TextModel(DecoderModel):
    """A GGUF text decoder. generate() and score() may run from several threads at once; eval(), logits()
    and reset() work on the default context (context_pool.py)."""

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of `ids`, evaluated from position 0 in the default context (which then
        holds them, for eval()): [len(ids), n_vocab]."""
        ids = self._check_ids(ids)
        with self._contexts.borrow(wait=True) as slot:
            return prompt_logits(slot, PreparedPrompt(ids))

    def hidden_states(self, prompt: Prompt, add_special: bool = True) -> np.ndarray:
        """Final-normed hidden states at every position of `prompt` (text or ids): [n_tokens, n_embd]."""
        ids = self._prompt_ids(prompt, add_special)
        with self._contexts.borrow() as slot:
            return prompt_hidden_states(slot, PreparedPrompt(ids))

    def score(self, prompt: Prompt, continuations: Sequence[Union[str, Sequence[int]]],
              add_special: bool = True) -> list[ContinuationScore]:
        """log p(continuation | prompt) of each continuation (text, tokenized on its own without BOS, or ids),
        as multiple-choice evaluation uses; one prefill of the prompt serves all of them."""
        if isinstance(continuations, str):
            raise TypeError("continuations must be a list (of strings or of token id lists)")
        ids = self._prompt_ids(prompt, add_special)
        conts = [self.tokenize(c, False) if isinstance(c, (str, bytes)) else list(c) for c in continuations]
        return self._score(PreparedPrompt(ids), conts)
