"""The "stages" layout (layout.py): one model, four stages running at once.

  prep thread     reads and preprocesses images (cut into crops), in groups of about vision_batch crops
  vision thread   runs the vision tower over a group's crops (several images) in one call; the embeddings land
                  in the model's image cache, where the answering step finds them
  N workers       each with a context of its own (its KV cache): answers every prompt of an image in turn;
                  their decode steps run as one batched pass through the weights (step_batcher.py), and the
                  prompt prefix a context already holds is reused, not recomputed
  caller thread   writes each result line as it comes (engine.py)"""
from __future__ import annotations

import queue
from typing import Optional

from .answer import Task, answer_task, encode_together
from .job import END, Job


class StagesJob(Job):
    def __init__(self, model, tasks: list[Task], workers: int, vision_batch: int, cut: bool, options: dict,
                 cross_image: Optional[bool]):
        super().__init__(workers)
        self.model, self.tasks, self.cross_image = model, tasks, cross_image
        self.vision_batch, self.cut, self.options = max(1, int(vision_batch)), cut, options
        self.grouped: queue.Queue = queue.Queue(maxsize=2)              # preprocessed images, a vision run's worth
        self.ready: queue.Queue = queue.Queue(maxsize=2 * workers)     # preprocessed images, embeddings cached
        self._spawn(self._guard, "owl-batch-prep", self._prep)
        self._spawn(self._guard, "owl-batch-vision", self._vision)
        for i in range(workers):
            self._spawn(self._work, f"owl-batch-{i}")

    def _guard(self, stage) -> None:
        try:
            stage()
        except BaseException as e:          # noqa: BLE001 - handed to the caller thread
            self._fail(e)

    def _prep(self) -> None:
        """Images read and preprocessed, in groups of about vision_batch crops (while the vision thread runs the
        previous group)."""
        group: list[Task] = []
        n_views = 0
        for task in self.tasks:
            if self.stop_event.is_set():
                return
            try:
                task.expanded = self.model._expand([task.ref.path], self.cut)
                n_views += sum(len(e.views) for e in task.expanded)
            except Exception as e:             # noqa: BLE001 - one error line per item of this image
                task.error = e
            group.append(task)
            if n_views >= self.vision_batch:
                if not self._put(self.grouped, group):
                    return
                group, n_views = [], 0
        if group and not self._put(self.grouped, group):
            return
        self._put(self.grouped, END)

    def _vision(self) -> None:
        """Each group's crops through the vision tower in one run (into the image cache), then to the workers."""
        ro = self.run_options()
        while True:
            group = self._get(self.grouped)
            if group is END:
                break
            encode_together(self.model, [t.expanded for t in group if t.expanded is not None], self.vision_batch,
                            self.cross_image, ro)
            for t in group:
                if not self._put(self.ready, t):
                    return
        for _ in range(self.n_workers):
            if not self._put(self.ready, END):   # the workers take what is queued, then end
                return

    def _work(self) -> None:
        try:
            slot = self.model._contexts.new_slot()     # this worker's context: its cache serves its next prompt
            while True:
                task = self._get(self.ready)
                if task is END:
                    break
                if not answer_task(self, slot, task, self.model, self.options):
                    break
        except BaseException as e:                     # noqa: BLE001 - handed to the caller thread
            self._fail(e)
        finally:
            self.done.put(END)
