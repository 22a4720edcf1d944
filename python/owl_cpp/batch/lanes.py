"""The "lanes" layout (layout.py): N workers, each a whole pipeline on its own threads.

A lane takes the next image, reads and preprocesses it, runs its crops through the vision tower (as chat()
runs them: the image's crops in one run) and answers every prompt about it on a context of its own, then takes
the next image. Lanes share the weights, the vision session (or one of `threads` intra-op threads made for
them, VisionEncoder.with_threads) and the image cache; each has its own KV cache, with the prompt prefix it
holds reused. Every native step releases the GIL (Pillow's decode and resize, numpy, hashing, onnxruntime, the
runtime's prefill and decode), so lanes overlap on the cores; their decode steps are not batched (batching
would put two lanes' steps on one lane's threads while the other waits)."""
from __future__ import annotations

import threading

from ..context_slot import ContextSlot
from ..image_cache import content_key
from .answer import Task, answer_task
from .job import END, Job


class _LaneEncoder:
    """The vision tower as one lane runs it: its run options, so that stop() can end a run in flight, and the
    content keys of the image it is on (its views array, the same object for each of the image's prompts, is
    hashed once, not once per prompt)."""

    def __init__(self, vision, run_options):
        self.vision, self.run_options = vision, run_options
        self._views, self._keys = None, None

    def content_keys(self, views) -> list:
        if views is not self._views:
            self._views, self._keys = views, [content_key(v) for v in views]
        return list(self._keys)

    def encode(self, views, keys=None, stats=None):
        return self.vision.encode(views, keys, stats, run_options=self.run_options)


class LanesJob(Job):
    def __init__(self, model, tasks: list[Task], workers: int, threads: int, cut: bool, options: dict):
        super().__init__(workers)
        self.model, self.tasks, self.threads_per_lane, self.cut, self.options = model, tasks, threads, cut, options
        self.vision = model.vision.with_threads(threads) if hasattr(model.vision, "with_threads") else model.vision
        self._next = 0
        self._take_lock = threading.Lock()
        for i in range(workers):
            self._spawn(self._lane, f"owl-batch-lane-{i}")

    def _take(self):
        with self._take_lock:
            if self._next >= len(self.tasks) or self.stop_event.is_set():
                return END
            task = self.tasks[self._next]
            self._next += 1
            return task

    def _lane(self) -> None:
        try:
            m = self.model
            slot = ContextSlot(m._make_context(self.threads_per_lane), m._contexts.stats)
            encoder = _LaneEncoder(self.vision, self.run_options())
            while True:
                task = self._take()
                if task is END:
                    break
                try:
                    task.expanded = m._expand([task.ref.path], self.cut)
                except Exception as e:         # noqa: BLE001 - one error line per prompt of this image
                    task.error = e
                if not answer_task(self, slot, task, m, self.options, encoder=encoder, batch_decode=False):
                    break
                task.expanded = None           # its pixels are not needed any more
        except BaseException as e:             # noqa: BLE001 - handed to the caller thread
            self._fail(e)
        finally:
            self.done.put(END)
