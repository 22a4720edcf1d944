"""`owl_cpp.load("model.gguf")`: a plain qwen2 / llama GGUF text decoder behind a llama-cpp-python-like API.

  m = owl_cpp.load("qwen2-0.5b-instruct-q8_0.gguf")
  m.generate("The capital of France is", max_tokens=32)
  m.score("Q: 2 + 2 = ? A:", [" 4", " 5"])          # log p of each continuation
  m.logits(m.tokenize("Hello"))                      # [n_tokens, n_vocab]
  m.chat("Hi!"); s = m.session(system="Be brief."); s.ask("Hi!"); s.ask("And?")   # ChatML vocabularies
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .context_slot import PreparedPrompt
from .decoder_model import DecoderModel
from .messages import conversation
from .research import ContinuationScore, prompt_hidden_states, prompt_logits
from .session import Session
from .stops import CHATML_START, special_token_id

Prompt = Union[str, Sequence[int]]


class TextModel(DecoderModel):
    """A GGUF text decoder. generate(), chat() and score() may run from several threads at once; eval(),
    logits() and reset() work on the default context (context_pool.py)."""

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

    # ----- chat: ChatML (Qwen2 and other vocabularies with <|im_start|>) ---------------------------
    def chat(self, prompt: Optional[str] = None, *, messages: Optional[Sequence[dict]] = None, stream: bool = False,
             max_tokens: int = 512, temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95,
             min_p: float = 0.05, repeat_penalty: float = 1.0, seed: Optional[int] = None, stop=None,
             return_info: bool = False, ignore_eos: bool = False):
        """Answers `prompt` (one user turn) or OpenAI-style `messages` (text only) in the ChatML format, with
        no default system prompt. Returns as generate() does; the text is the answer as generated."""
        msgs, _ = conversation(prompt, None, None, messages)
        return self._run(PreparedPrompt(self._chat_ids(msgs)), stream=stream, return_info=return_info,
                         max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                         repeat_penalty=repeat_penalty, seed=seed, stop=stop, ignore_eos=ignore_eos)

    def session(self, system: Optional[str] = None, overflow: str = "shift") -> Session:
        """A multi-turn ChatML conversation with a context of its own (its KV cache). overflow: what happens
        when the history outgrows n_ctx: "shift" drops the oldest whole turns, keeping the system prompt and
        the new question; "error" raises ValueError (session.py)."""
        return Session(self, system, overflow)

    def _chat_ids(self, messages: Sequence[dict]) -> list[int]:
        """Normalized messages -> ChatML ids ending with the assistant header; the same ids a Session builds."""
        msgs = list(messages)
        system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else None
        if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
            msgs.pop()                               # an empty last answer: the header the prompt ends with
        if not msgs or msgs[-1]["role"] != "user":
            raise ValueError("end the messages with a user turn (or an empty assistant turn) to get an answer")
        ids = self._session_start(system)
        for m in msgs:
            if m["role"] == "system":
                raise ValueError("a system message may only come first")
            if m["role"] == "user":
                ids += self._question(m, [], False).ids
            else:     # a Session's answer carries its own tokens (as cached), which need not be the text's split
                ids += (m["ids"] if m.get("ids") is not None else self._answer_ids(m["content"])) + self._turn_end
        return ids

    # ----- session parts (session.py) -------------------------------------------------------------
    def _session_start(self, system: Optional[str]) -> list[int]:
        if special_token_id(self.tokenizer, CHATML_START) is None:
            raise ValueError(f"{self.path}: chat() and session() use the ChatML format, and this vocabulary has "
                             f"no {CHATML_START} token; use generate() with the model's own prompt format")
        return self.tokenize("" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n")

    def _question(self, message: dict, media, cut: bool) -> PreparedPrompt:
        if media:
            raise ValueError("a text model takes no images or videos")
        text = f"<|im_start|>user\n{message['content']}<|im_end|>\n<|im_start|>assistant\n"
        return PreparedPrompt(self.tokenize(text, add_special=False))

    def _encode(self, question: PreparedPrompt):
        return [], None

    def _answer_ids(self, text: str) -> list[int]:
        return self.tokenize(text, add_special=False, special=False)   # the model's words, not control tokens

    @property
    def _turn_end(self) -> list[int]:
        return self.tokenize("<|im_end|>\n", add_special=False)
