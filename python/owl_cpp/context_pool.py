"""A model's contexts, and which one a call runs on.

Weights are loaded once; every conversation needs its own _core.Context (KV cache of n_ctx positions and its
images), and a context runs one call at a time. The policy:
- the model keeps one default context: a call (chat, generate, score, ...) runs there when it is free, so
  consecutive calls reuse their common prefix;
- a call that finds it busy (another thread, or an unfinished stream) takes an idle spare context, or
  makes a new one; afterwards at most `max_spare` idle spares are kept (default 1), the others are freed:
  contexts are memory (n_ctx x the KV bytes per token), so idle ones are not hoarded;
- a Session owns its own context (new_slot), used only by that session.
A stream holds its context until it is exhausted or closed.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from .context_slot import BusyError, ContextSlot


class ContextPool:
    def __init__(self, make_context: Callable[[], object], max_spare: int = 1):
        if max_spare < 0:
            raise ValueError(f"max_spare must be >= 0, got {max_spare}")
        self._make = make_context
        self.max_spare = int(max_spare)
        self.default = ContextSlot(make_context())
        self._spares: list[ContextSlot] = []
        self._lock = threading.Lock()

    def new_slot(self) -> ContextSlot:
        """A context of its own (a Session's)."""
        return ContextSlot(self._make())

    @property
    def n_spare(self) -> int:
        return len(self._spares)

    @contextmanager
    def borrow(self, slot: Optional[ContextSlot] = None, *, wait: bool = False) -> Iterator[ContextSlot]:
        """A slot for one call: `slot` itself when given (BusyError if in use), else the pool's choice
        (module doc). wait=True: the default context, waiting until it is free (raw evaluation)."""
        spare = False
        if slot is not None:
            if not slot.try_acquire():
                raise BusyError("this session is still answering: finish or close its previous stream first")
        elif wait:
            slot = self.default
            slot.acquire()
        else:
            slot = self._take()
            spare = slot is not self.default
        try:
            yield slot
        finally:
            slot.release()
            if spare:
                self._keep_spare(slot)

    def _take(self) -> ContextSlot:
        if self.default.try_acquire():
            return self.default
        with self._lock:
            slot = self._spares.pop() if self._spares else None
        if slot is None:
            slot = ContextSlot(self._make())
        slot.acquire()
        return slot

    def _keep_spare(self, slot: ContextSlot) -> None:
        with self._lock:
            if len(self._spares) < self.max_spare:
                self._spares.append(slot)

    def reset(self) -> None:
        """Empties the default context (waiting for it) and frees the idle spares."""
        with self.borrow(wait=True) as slot:
            slot.reset()
        with self._lock:
            self._spares.clear()
