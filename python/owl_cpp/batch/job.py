"""What every single-machine batch layout shares: its threads, the queue of finished result records, and how it
stops.

Stopping (Ctrl-C, or a stage's unexpected failure) must be prompt: the stop event is checked between decode
steps of an answer (the answer in progress is dropped, and done again on a rerun), each vision-tower run in
flight is ended through its onnxruntime RunOptions, and stop() waits for all threads together up to one
deadline, not for each in turn. Threads are daemons: one still busy past the deadline (a long prefill) ends
with the process, and writes nothing more (results go through the caller thread, which has stopped reading)."""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Optional

STOP_TIMEOUT = 10.0         # seconds stop() waits for all threads together


class Stopped(Exception):
    """The job was stopped while this answer was running: no result line for it."""


class Job:
    def __init__(self, n_workers: int):
        self.n_workers = n_workers
        self.stop_event = threading.Event()
        self.done: queue.Queue = queue.Queue()          # result records; _END once per worker
        self.threads: list[threading.Thread] = []
        self.fatal: list[BaseException] = []
        self._run_options: list = []                     # onnxruntime RunOptions of runs that stop() ends
        self._lock = threading.Lock()

    # ----- control ---------------------------------------------------------------------------------
    def _spawn(self, target: Callable, name: str, *args) -> None:
        self.threads.append(threading.Thread(target=target, args=args, name=name, daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Tells every thread to stop, ends vision runs in flight and waits for the threads (together) at most
        `timeout` seconds. True when all have ended."""
        self.stop_event.set()
        with self._lock:
            for ro in self._run_options:
                ro.terminate = True
        deadline = time.monotonic() + timeout
        for t in self.threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def run_options(self):
        """onnxruntime RunOptions for one thread's vision runs (stop() terminates them); None without
        onnxruntime (a test double of the tower)."""
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        ro = ort.RunOptions()
        with self._lock:
            self._run_options.append(ro)
            if self.stop_event.is_set():
                ro.terminate = True
        return ro

    def results(self):
        """Result records as they finish, until every worker has ended."""
        ended = 0
        while ended < self.n_workers:
            try:
                rec = self.done.get(timeout=0.2)        # a timeout keeps Ctrl-C prompt
            except queue.Empty:
                continue
            if rec is END:
                ended += 1
            else:
                yield rec
        if self.fatal:
            raise self.fatal[0]

    def finished(self) -> list:
        """The records finished and not yet taken (after stop())."""
        out = []
        while True:
            try:
                rec = self.done.get_nowait()
            except queue.Empty:
                return out
            if rec is not END:
                out.append(rec)

    def _fail(self, e: BaseException) -> None:
        """A stage's unexpected failure (a bug, not a bad image) ends the job with that error, not a hang."""
        self.fatal.append(e)
        self.stop_event.set()

    def _put(self, q: queue.Queue, x) -> bool:
        """Puts x on a bounded queue unless the job stops first."""
        while not self.stop_event.is_set():
            try:
                q.put(x, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Optional[object]:
        """The next item of q, or END once the job stops."""
        while not self.stop_event.is_set():
            try:
                return q.get(timeout=0.2)
            except queue.Empty:
                continue
        return END


END = object()              # a stage has no more to give
