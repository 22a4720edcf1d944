"""`owl_cpp.load("model.gguf")`: a plain qwen2 / llama GGUF text decoder behind a llama-cpp-python-like API.

  m = owl_cpp.load("qwen2-0.5b-instruct-q8_0.gguf")
  m.generate("The capital of France is", max_tokens=32)
  m.score("Q: 2 + 2 = ? A:", [" 4", " 5"])          # log p of each continuation
  m.logits(m.tokenize("Hello"))                      # [n_tokens, n_vocab]
  m.chat("Hi!"); s = m.session(system="Be brief."); s.ask("Hi!"); s.ask("And?")

chat() and session() write the conversation with the file's chat template (tokenizer.chat_template, rendered
with jinja2: chat_template.py); a file without one falls back to ChatML when its vocabulary has <|im_start|>,
and otherwise has no chat format (generate() with the model's own prompt format still works).
`m.chat_template = "..."` puts another template in place (None: none, i.e. the ChatML fallback).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .chat_template import TEMPLATE_KEY, ChatTemplate, token_text
from .context_slot import PreparedPrompt
from .decoder_model import DecoderModel
from .messages import conversation
from .research import ContinuationScore, prompt_hidden_states, prompt_logits
from .session import Session, TemplateSession
from .stops import CHATML_START, special_token_id

Prompt = Union[str, Sequence[int]]
_FILE = object()      # chat_template not set: the file's


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

    # ----- chat: the file's chat template, else ChatML (vocabularies with <|im_start|>) ----------------
    def chat(self, prompt: Optional[str] = None, *, messages: Optional[Sequence[dict]] = None, stream: bool = False,
             max_tokens: int = 512, temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95,
             min_p: float = 0.05, repeat_penalty: float = 1.0, seed: Optional[int] = None, stop=None,
             return_info: bool = False, ignore_eos: bool = False, logprobs: Optional[int] = None,
             response_format=None):
        """Answers `prompt` (one user turn) or OpenAI-style `messages` (text only) in the model's chat format
        (module doc), with no default system prompt of ours (a template may have one). Returns as generate()
        does (logprobs too); the text is the answer as generated. response_format="json": the answer is one
        JSON object (generate())."""
        msgs, media = conversation(prompt, None, None, messages)
        if media:
            raise ValueError("a text model takes no images or videos")
        return self._run(PreparedPrompt(self._chat_ids(msgs)), stream=stream, return_info=return_info,
                         max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                         repeat_penalty=repeat_penalty, seed=seed, stop=stop, ignore_eos=ignore_eos, logprobs=logprobs,
                         response_format=response_format)

    def session(self, system: Optional[str] = None, overflow: str = "shift") -> Session:
        """A multi-turn conversation with a context of its own (its KV cache). overflow: what happens
        when the history outgrows n_ctx: "shift" drops the oldest whole turns, keeping the system prompt and
        the new question; "error" raises ValueError (session.py)."""
        if self._chat_template() is not None:
            return TemplateSession(self, system, overflow)
        return Session(self, system, overflow)

    @property
    def chat_template(self) -> Optional[str]:
        """The Jinja chat template chat() and session() use (None: none; ChatML when the vocabulary has it)."""
        t = self._chat_template()
        return None if t is None else t.source

    @chat_template.setter
    def chat_template(self, source: Optional[str]) -> None:
        if source is not None and not isinstance(source, str):
            raise TypeError("chat_template must be a string (a Jinja template) or None")
        self._template = None if source is None else self._compile_template(source, "chat_template")

    def _chat_template(self) -> Optional[ChatTemplate]:
        t = getattr(self, "_template", _FILE)
        if t is _FILE:
            source = self._gguf[TEMPLATE_KEY] if TEMPLATE_KEY in self._gguf else None
            t = self._template = self._compile_template(source, self.path) if isinstance(source, str) and source.strip() else None
        return t

    def _compile_template(self, source: str, where: str) -> ChatTemplate:
        tok = self.tokenizer
        return ChatTemplate(source, bos_token=token_text(tok, tok.bos_id), eos_token=token_text(tok, tok.eos_id),
                            where=where)

    def _render(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        return self._chat_template().render(messages, add_generation_prompt)

    def _template_ids(self, text: str) -> list[int]:
        """A rendering's ids: control tokens parsed, BOS first when the vocabulary wants it and the template
        did not write it (chat_template.py)."""
        ids = self.tokenize(text, add_special=False)
        bos = self.tokenizer.bos_id
        if bos is not None and self._adds_bos and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    @property
    def _adds_bos(self) -> bool:
        bos = self.tokenizer.bos_id
        return bos is not None and self.tokenize("", add_special=True)[:1] == [bos]

    def _template_start_text(self, system: Optional[str]) -> Optional[str]:
        """The rendering before the first turn (the system prompt), or None when the template cannot render
        it alone (many index messages[0]): the first turn then renders the whole conversation."""
        try:
            return self._render([] if system is None else [{"role": "system", "content": system}], False)
        except ValueError:
            return None

    def _chat_ids(self, messages: Sequence[dict]) -> list[int]:
        """Normalized messages -> ids of the prompt for the answer; the same ids a Session builds."""
        msgs = list(messages)
        if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
            msgs.pop()                               # an empty last answer: the header the prompt ends with
        if not msgs or msgs[-1]["role"] != "user":
            raise ValueError("end the messages with a user turn (or an empty assistant turn) to get an answer")
        if self._chat_template() is not None:
            return self._template_ids(self._render(msgs, True))
        system = msgs.pop(0)["content"] if msgs[0]["role"] == "system" else None
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
        if self._chat_template() is not None:
            text = self._template_start_text(system)
            return self._template_ids("" if text is None else text)
        if special_token_id(self.tokenizer, CHATML_START) is None:
            raise ValueError(f"{self.path}: the model has no chat template ({TEMPLATE_KEY}) and its vocabulary "
                             f"no {CHATML_START} token for the ChatML format, so chat() and session() have no "
                             f"prompt format; use generate() with the model's own, or set model.chat_template")
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
