"""A multi-turn conversation with a context of its own.

Each ask() adds a user turn and the model's answer to the history; the next turn's prompt is the whole
history, of which the session's context already holds all but the new turn (prefix reuse), and images seen
before come from the model's image cache. Sessions of one model run independently (also from several
threads); one session answers one question at a time (BusyError otherwise).

The model supplies the family's parts: _expand(media, cut) -> prepared media, and
_answer(messages, media, slot=..., on_done=..., **options).
"""
from __future__ import annotations

from typing import Optional

from .context_slot import BusyError
from .messages import user_message


class Session:
    def __init__(self, model, system: Optional[str] = None):
        self.model = model
        self.system = system
        self._slot = model._contexts.new_slot()
        self.messages: list[dict] = []
        self._media: list = []
        self._clear()

    def _clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        self._media = []

    def reset(self) -> None:
        """Forget the conversation and empty this session's context (other sessions and calls are untouched)."""
        if not self._slot.try_acquire():
            raise BusyError("this session is still answering: finish or close its stream before reset()")
        try:
            self._slot.reset()
        finally:
            self._slot.release()
        self._clear()

    def ask(self, prompt: str, images=None, videos=None, *, stream: bool = False, cut: bool = True, **opts):
        """Answers the next user turn; opts as the model's chat() (max_tokens, temperature, ..., return_info)."""
        msg, media = user_message(prompt, images, videos)
        expanded = self.model._expand(media, cut)
        msgs = self.messages + [msg]

        def done(text: str, tokens) -> None:
            ids = tokens if tokens is not None and self.model.detokenize(tokens) == text else None
            self.messages += [msg, {"role": "assistant", "content": text, "ids": ids}]
            self._media += expanded

        return self.model._answer(msgs, self._media + expanded, slot=self._slot, stream=stream, on_done=done, **opts)

    @property
    def n_past(self) -> int:
        """Tokens this session's context holds (read without touching the context, which may be busy)."""
        return len(self._slot.tokens)

    @property
    def history(self) -> list[dict]:
        """The turns so far as messages (role, content), e.g. to replay them elsewhere."""
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]
