"""Decode steps of concurrent generations on one model, run together.

Each generation (its own thread, its own context) decodes one token per step. Run separately, every step reads
all the weights once per generation; run together (`_core.decode_step(contexts, tokens) -> logits [N, n_vocab]`)
the weights are read once per step for all of them, so aggregate throughput grows with the number of active
conversations. The batcher gathers the steps: a generation registers when its decode loop starts and
unregisters when it ends (also on errors, cancellation and a closed stream); step() submits (context, token) and
blocks until its step has run. A batch runs as soon as every registered generation has submitted, or when the
oldest submitted step has waited `timeout` seconds (1 ms), or a tenth of the last batch's time when that is
longer (at most 20 ms): a generation whose consumer is slow never stalls the rest for long.
There is no extra thread: the submitter that completes the batch (or whose wait ran out) runs it and wakes the
others. A generation alone runs its step at once, on its own (a lock and a few comparisons over the direct path).

A runtime built without `_core.decode_step` (an older build) evaluates a batch context by context (ctx.eval),
the same semantics. After a step each context holds its token's logits, as after
eval, so samplers work unchanged. An error in a batched call reaches every caller of that batch; evaluated one
by one, each caller gets its own.

OWL_BATCH_DECODE=0 in the environment (read when a model loads), or `model.batch_decode = False`, turns batching
off: each generation then evaluates its own steps, as before.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

import numpy as np

from . import _core

DEFAULT_TIMEOUT = 0.001     # seconds the first submitted step of a batch waits for the others, at least
MAX_WAIT_FRACTION = 0.1     # ... and up to this fraction of the last batch's time (a slow step: a longer wait is
MAX_WAIT = 0.02             # cheap beside it, and lets the generations just stepped come back), at most MAX_WAIT


def batching_enabled() -> bool:
    return os.environ.get("OWL_BATCH_DECODE", "1").strip().lower() not in ("0", "false", "no", "off")


class _Step:
    __slots__ = ("ctx", "token", "want_logits", "logits", "error", "done")

    def __init__(self, ctx, token: int, want_logits: bool):
        self.ctx, self.token, self.want_logits = ctx, token, want_logits
        self.logits: Optional[np.ndarray] = None
        self.error: Optional[BaseException] = None
        self.done = False


class StepBatcher:
    """One per model; thread-safe. decode_step: the batched call (default: `_core.decode_step` when the runtime
    has it, else None: context by context)."""

    def __init__(self, decode_step: Optional[Callable] = None, timeout: float = DEFAULT_TIMEOUT):
        self.decode_step = decode_step if decode_step is not None else getattr(_core, "decode_step", None)
        self.timeout = float(timeout)
        self._cond = threading.Condition(threading.Lock())
        self._active = 0                    # registered generations
        self._pending: list[_Step] = []     # submitted, not yet taken into a batch
        self._first_at = 0.0               # when the oldest pending step was submitted
        self._running = False              # a batch is being evaluated
        self._wait = self.timeout          # the current wait: timeout, or a tenth of the last batch's time
        self.batches = 0                   # statistics: batches run and steps in them
        self.steps = 0

    @property
    def active(self) -> int:
        return self._active

    # ----- generations --------------------------------------------------------------------------
    def register(self) -> None:
        with self._cond:
            self._active += 1

    def unregister(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()          # waiters for "everyone submitted" may be complete now

    # ----- steps ----------------------------------------------------------------------------------
    def step(self, ctx, token: int, want_logits: bool = False) -> Optional[np.ndarray]:
        """Appends `token` to `ctx` (a context of this model, held by the calling generation), in a batch with
        the other generations' steps. Returns the token's logits [n_vocab] when want_logits, else None."""
        me = _Step(ctx, int(token), want_logits)
        with self._cond:
            if not self._pending:
                self._first_at = time.perf_counter()
            self._pending.append(me)
            while True:
                if me.done:
                    break
                if not self._running:
                    waited = time.perf_counter() - self._first_at
                    if len(self._pending) >= self._active or waited >= self._wait:
                        batch, self._pending, self._running = self._pending, [], True
                        break
                    self._cond.wait(self._wait - waited)
                else:
                    self._cond.wait()            # the running batch's end wakes everyone
        if not me.done:                          # this thread runs the batch (its own step is in it)
            t0 = time.perf_counter()
            try:
                self._run(batch)
            finally:
                took = time.perf_counter() - t0
                with self._cond:
                    self._wait = min(max(self.timeout, MAX_WAIT_FRACTION * took), MAX_WAIT)
                    self._running = False
                    for s in batch:
                        s.done = True
                    if self._pending:            # steps submitted meanwhile wait from now for the batch's own
                        self._first_at = time.perf_counter()     # generations to come back
                    self._cond.notify_all()
        if me.error is not None:
            raise me.error
        return me.logits

    def _run(self, batch: list) -> None:
        self.batches += 1
        self.steps += len(batch)
        if self.decode_step is None or len(batch) == 1:
            for s in batch:
                try:
                    s.logits = s.ctx.eval([s.token], return_logits=s.want_logits)
                except BaseException as e:      # noqa: BLE001 - handed to its own caller
                    s.error = e
            return
        try:
            logits = self.decode_step([s.ctx for s in batch], [s.token for s in batch])
        except BaseException as e:              # noqa: BLE001 - one call for all: every caller hears it
            for s in batch:
                s.error = e
            return
        for i, s in enumerate(batch):
            if s.want_logits:
                s.logits = np.array(logits[i], copy=True)
