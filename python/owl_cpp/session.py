"""A multi-turn conversation with a context of its own.

Each ask() adds a turn: the user's question and the model's answer. The session keeps each turn's token ids
(and its images' embeddings), so a turn's prompt is the kept ids plus the new question, tokenized alone; the
session's context already holds all but the question (prefix reuse), so a turn costs its own tokens however
long the conversation. Sessions of one model run independently (also from several threads); one session
answers one question at a time (BusyError otherwise).

When the history outgrows the context (overflow="shift", the default), as llama.cpp's context shift: before a
turn whose prompt and answer (max_tokens, at most half the context) would not fit, the oldest whole turns are
dropped, with their images, until the prompt takes at most half the context; the system prompt and the new
question stay. The kept turns then sit at new positions, so they are evaluated again after the system prompt
(the runtime has no K shift); dropping down to half leaves room for the next turns to reuse the cache again.
overflow="error" keeps every turn and raises ValueError once the history and the question leave no room for
an answer. A question that does not fit beside the system prompt alone is a ValueError either way.

The model supplies the family's parts (text_model.py, families/<family>/model.py):
  _session_start(system) -> ids before the first turn
  _question(message, media, cut) -> the question through the assistant header: .ids and what _encode needs
  _encode(question) -> (its images [ImageAt], starts relative to the question; vision stats or None)
  _answer_ids(text) -> an answer's ids from its text; _turn_end -> ids that close an answer
  _run(prepared, vision, slot=..., on_done=..., **options) -> the answer, as chat() returns it
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .context_slot import BusyError, ImageAt, PreparedPrompt
from .messages import user_message

OVERFLOW = ("shift", "error")


@dataclass
class Turn:
    messages: list          # the question and the answer, as messages
    ids: list               # question, assistant header, answer, end of the answer
    images: list            # [ImageAt], starts relative to the turn's first token


class Session:
    """See the module doc. overflow: "shift" (drop the oldest turns) or "error" when the history outgrows
    the context."""

    def __init__(self, model, system: Optional[str] = None, overflow: str = "shift"):
        if overflow not in OVERFLOW:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW)}, got {overflow!r}")
        self.model = model
        self.system = system
        self.overflow = overflow
        self._start = model._session_start(system)
        self._slot = model._contexts.new_slot()
        self._turns: list[Turn] = []
        self.turns_dropped = 0          # turns overflow="shift" has dropped so far

    def reset(self) -> None:
        """Forget the conversation and empty this session's context (other sessions and calls are untouched)."""
        if not self._slot.try_acquire():
            raise BusyError("this session is still answering: finish or close its stream before reset()")
        try:
            self._slot.reset()
        finally:
            self._slot.release()
        self._turns, self.turns_dropped = [], 0

    def ask(self, prompt: str, images=None, videos=None, *, max_tokens: int = 512, stream: bool = False,
            cut: bool = True, **opts):
        """Answers the next user turn; opts as the model's chat() (temperature, ..., return_info). When the
        history and this turn outgrow the context, the session's overflow policy applies (module doc)."""
        msg, media = user_message(prompt, images, videos)
        question = self.model._question(msg, media, cut)
        turns = self._fit(len(question.ids), min(max_tokens, self.model.n_ctx // 2))
        q_images, vision = self.model._encode(question)
        ids, images = list(self._start), []
        for t in turns + [Turn([msg], question.ids, q_images)]:
            images += [ImageAt(len(ids) + im.start, im.key, im.embeds) for im in t.images]
            ids += t.ids
        if vision is not None:     # earlier turns' images come from the session, not from the vision tower
            kept = len(images) - len(q_images)
            vision = dict(vision, views=vision["views"] + kept, views_reused=vision["views_reused"] + kept)
        dropped = len(self._turns) - len(turns)

        def done(text: str, tokens) -> None:
            if tokens is None or self.model.detokenize(tokens) != text:   # stopped early or at a stop string
                tokens = self.model._answer_ids(text)
            answer = {"role": "assistant", "content": text, "ids": list(tokens)}
            self._turns = turns + [Turn([msg, answer], question.ids + answer["ids"] + self.model._turn_end, q_images)]
            self.turns_dropped += dropped

        return self.model._run(PreparedPrompt(ids, images, self.model.SPLICED), vision, slot=self._slot, stream=stream, on_done=done,
                               max_tokens=max_tokens, **opts)

    def _fit(self, n_question: int, reserve: int) -> list[Turn]:
        """The turns to keep before a question of n_question tokens with `reserve` tokens for the answer."""
        n_ctx, fixed = self.model.n_ctx, len(self._start) + n_question
        if fixed >= n_ctx:
            raise ValueError(f"this question ({n_question} tokens) and the system prompt ({len(self._start)}) leave "
                             f"no room for an answer in the context of {n_ctx} tokens; shorten them, send fewer "
                             f"images (or cut=False), or load the model with a larger n_ctx")
        turns, total = list(self._turns), fixed + sum(len(t.ids) for t in self._turns)
        if self.overflow == "error":
            if total >= n_ctx:
                raise ValueError(f"the conversation ({total - n_question} tokens) and this question ({n_question}) "
                                 f"leave no room for an answer in the context of {n_ctx} tokens; reset() the "
                                 f"session, use overflow=\"shift\" to drop the oldest turns, or load the model "
                                 f"with a larger n_ctx")
            return turns
        if total + reserve > n_ctx:
            while turns and total > n_ctx // 2:    # down to half: the next turns fit without another shift
                total -= len(turns.pop(0).ids)
        return turns

    @property
    def messages(self) -> list[dict]:
        """The kept turns as messages (an answer's carries its token ids, "ids"), after the system prompt."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + [m for t in self._turns for m in t.messages]

    @property
    def n_past(self) -> int:
        """Tokens this session's context holds (read without touching the context, which may be busy)."""
        return len(self._slot.tokens)

    @property
    def history(self) -> list[dict]:
        """The kept turns as messages (role, content), e.g. to replay them elsewhere."""
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]


class TemplateSession(Session):
    """A Session of a text model whose GGUF has a chat template (chat_template.py). The template decides how
    the whole conversation reads, so a turn's ids are what it renders for the conversation with the new
    question minus what it rendered for the conversation before (the ids of the two renderings, compared:
    the earlier must be a prefix of the later). When it is not a prefix (templates that rewrite earlier turns,
    e.g. put the system prompt into the last user message; or the oldest turns were just dropped), the turn's
    prompt is the whole rendering, and the context's prefix reuse keeps what still matches.

    The session's context holds `_ids`, the rendering `_text` of the kept turns (None when unknown: the next
    turn renders everything). An answer is kept as the tokens generated where they spell its text."""

    def __init__(self, model, system: Optional[str] = None, overflow: str = "shift"):
        super().__init__(model, system, overflow)
        self._ids, self._text = list(self._start), model._template_start_text(system)

    def reset(self) -> None:
        super().reset()
        self._ids, self._text = list(self._start), self.model._template_start_text(self.system)

    def _head(self) -> list:
        return [{"role": "system", "content": self.system}] if self.system is not None else []

    def ask(self, prompt: str, images=None, videos=None, *, max_tokens: int = 512, stream: bool = False,
            cut: bool = True, **opts):
        msg, media = user_message(prompt, images, videos)
        if media:
            raise ValueError("a text model takes no images or videos")
        model, head = self.model, self._head()
        full_text = model._render(head + self.messages_only(self._turns) + [msg], True)
        question = self._increment(self._text, full_text)
        if question is None:     # the question's own size, as the first turn, for _fit
            n_question = max(1, len(model._template_ids(model._render(head + [msg], True))) - len(self._start))
        else:
            n_question = len(question)
        turns = self._fit(n_question, min(max_tokens, model.n_ctx // 2))
        if len(turns) < len(self._turns):          # turns dropped: render the kept ones afresh
            full_text = model._render(head + self.messages_only(turns) + [msg], True)
            question = None
        ids = self._ids + question if question is not None else model._template_ids(full_text)
        dropped = len(self._turns) - len(turns)
        n_before = len(self._start) + sum(len(t.ids) for t in turns)

        def done(text: str, tokens) -> None:
            if tokens is None or model.detokenize(tokens) != text:   # stopped early or at a stop string
                tokens = model._answer_ids(text)
            answer = {"role": "assistant", "content": text, "ids": list(tokens)}
            closed = None
            try:
                closed = model._render(head + self.messages_only(turns) + [msg, answer], False)
            except ValueError:
                pass
            said = full_text + text
            if closed is not None and closed.startswith(said):
                end, self._text = model.tokenize(closed[len(said):], add_special=False), closed
            else:                                    # the template rewrites the answer (e.g. trims it)
                end, self._text = [], None
            self._ids = ids + list(tokens) + end
            # the turn's share of the context's ids (its length is what _fit counts)
            self._turns = turns + [Turn([msg, answer], self._ids[min(n_before, len(self._ids)):], [])]
            self.turns_dropped += dropped

        return model._run(PreparedPrompt(ids), None, slot=self._slot, stream=stream, on_done=done,
                          max_tokens=max_tokens, **opts)

    def _increment(self, before: Optional[str], after: str) -> Optional[list]:
        """The ids `after` adds to `before` (both renderings), or None when `before` is unknown or not their
        prefix (as text and as ids)."""
        if before is None or not after.startswith(before):
            return None
        a, b = self.model._template_ids(before), self.model._template_ids(after)
        return b[len(a):] if b[:len(a)] == a and len(b) > len(a) else None

    @staticmethod
    def messages_only(turns) -> list:
        return [m for t in turns for m in t.messages]
