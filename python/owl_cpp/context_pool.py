"""A model's contexts, and which one a call runs on.

Weights are loaded once; every conversation needs its own _core.Context (KV cache of n_ctx positions and its
images), and a context runs one call at a time. The policy:
- the model keeps one default context, and idle spare contexts made for concurrent calls;
- a call (chat, generate, score, ...) runs on the free context (the default or an idle spare) whose cache
  serves its prompt best, so that with several conversations on one model (a server whose clients resend
  the whole conversation each turn) a follow-up turn finds its own earlier turns cached. "Best": a context
  whose cached prompt the new prompt keeps whole (prefix_reuse.py; the answer generated after it may differ,
  as a resent answer is tokenized anew), with the longest reusable prefix; an empty context qualifies, with
  nothing reused. Only when every free context holds another prompt, the one that loses the fewest prompt
  tokens. So a new conversation that shares a system prompt with another takes an empty context rather than
  evict that conversation, which would come back and evict it in turn. Ties go to the default context, then
  to the most recently used;
- a call that finds no context free makes a new one; afterwards at most `max_spare` idle spares are kept
  (default 1), the least recently used freed first: contexts are memory (n_ctx x the KV bytes per token),
  so idle ones are not hoarded; reserve() makes spares ahead (a server's slots);
- a Session owns its own context (new_slot), used only by that session.
A stream holds its context until it is exhausted or closed.
"""
from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from .context_slot import BusyError, ContextSlot, PreparedPrompt, PromptStats


class ContextPool:
    def __init__(self, make_context: Callable[[], object], max_spare: int = 1):
        if max_spare < 0:
            raise ValueError(f"max_spare must be >= 0, got {max_spare}")
        self._make = make_context
        self.max_spare = int(max_spare)
        self.stats = PromptStats()          # every slot's prefills, sessions' included
        self.default = ContextSlot(make_context(), self.stats)
        self._spares: list[ContextSlot] = []
        self._lock = threading.Lock()
        self._clock = itertools.count(1)    # ContextSlot.last_used: an order, not a time

    def new_slot(self) -> ContextSlot:
        """A context of its own (a Session's)."""
        return ContextSlot(self._make(), self.stats)

    @property
    def n_spare(self) -> int:
        return len(self._spares)

    def reserve(self, n: int) -> None:
        """Makes idle spares now so that n calls find a context each (at most max_spare spares): their memory
        is taken at once, and calls alternating between conversations keep each one's cache."""
        while True:
            with self._lock:
                if len(self._spares) >= min(n - 1, self.max_spare):
                    return
            self._keep_spare(ContextSlot(self._make(), self.stats))

    @contextmanager
    def borrow(self, slot: Optional[ContextSlot] = None, *, wait: bool = False,
               prompt: Optional[PreparedPrompt] = None) -> Iterator[ContextSlot]:
        """A slot for one call: `slot` itself when given (BusyError if in use), else the pool's choice for
        `prompt` (module doc; None for a call that reuses nothing). wait=True: the default context, waiting
        until it is free (raw evaluation)."""
        spare = False
        if slot is not None:
            if not slot.try_acquire():
                raise BusyError("this session is still answering: finish or close its previous stream first")
        elif wait:
            slot = self.default
            slot.acquire()
        else:
            slot = self._take(prompt)
            spare = slot is not self.default
        try:
            yield slot
        finally:
            slot.last_used = next(self._clock)
            slot.release()
            if spare:
                self._keep_spare(slot)

    def _take(self, prompt: Optional[PreparedPrompt]) -> ContextSlot:
        with self._lock:
            # The free contexts, held while their caches are compared: idle spares are only taken under this
            # lock; the default is acquired (try, never wait) so that no call changes it meanwhile.
            free = [self.default] if self.default.try_acquire() else []
            free += sorted(self._spares, key=lambda s: -s.last_used)      # most recently used first
            if free:
                # max() keeps the first of equals: the default, then the most recently used
                best = max(free, key=lambda s: self._value(s, prompt))
                if best is not self.default:
                    if free[0] is self.default:
                        self.default.release()
                    self._spares.remove(best)
                    best.acquire()                 # idle and out of the list: nobody else can hold it
                return best
        slot = ContextSlot(self._make(), self.stats)    # none free: a new one (outside the lock: it is slow)
        slot.acquire()
        return slot

    @staticmethod
    def _value(slot: ContextSlot, prompt: Optional[PreparedPrompt]) -> tuple[int, int]:
        """(-cached prompt tokens the call throws away, tokens it reuses): the larger the better (module doc).
        prompt None (a call that evaluates from position 0): it reuses nothing."""
        kept = slot.reusable(prompt) if prompt is not None else 0
        return -max(0, slot.n_prompt - kept), kept

    def _keep_spare(self, slot: ContextSlot) -> None:
        with self._lock:
            self._spares.append(slot)
            if len(self._spares) > self.max_spare:     # the least recently used cache is the least likely wanted
                self._spares.remove(min(self._spares, key=lambda s: s.last_used))

    def reset(self) -> None:
        """Empties the default context (waiting for it) and frees the idle spares."""
        with self.borrow(wait=True) as slot:
            slot.reset()
        with self._lock:
            self._spares.clear()
