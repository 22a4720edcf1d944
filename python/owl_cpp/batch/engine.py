"""Batch inference on one machine: one loaded model, four stages running at once.

  prep thread     reads and preprocesses images (cut into crops), in groups of about vision_batch crops
  vision thread   runs the vision tower over a group's crops (several images) in one call; the embeddings land
                  in the model's image cache, where the answering step finds them
  N workers       each with a context of its own (its KV cache): answers every prompt of an image in turn;
                  their decode steps run as one batched pass through the weights (step_batcher.py), and the
                  prompt prefix a context already holds (system prompt and chat header before the image; with
                  several prompts, the image and all before the question) is reused, not recomputed
  caller thread   writes each result line as it comes (results.py) and moves the progress bar

An image that cannot be read or preprocessed, or a prompt that fails, is one error line; the job goes on.
Ctrl-C stops the stages, writes the results already finished and raises KeyboardInterrupt: the file holds only
whole lines and a rerun resumes."""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import Optional, Sequence

import numpy as np

from ..messages import user_message
from .inputs import DEFAULT_PROMPT, ImageRef, WorkItem, check_prompts, collect_images, work_items
from .results import ResultsWriter, answer_record, done_keys, error_record, read_results

_END = object()            # a stage has no more to give


class _Task:
    """One image and the prompts still to answer about it."""
    __slots__ = ("ref", "items", "expanded", "error")

    def __init__(self, ref: ImageRef, items: list):
        self.ref, self.items, self.expanded, self.error = ref, items, None, None


def load_for_batch(model=None, *, workers: int = 2, threads: Optional[int] = None, n_ctx: Optional[int] = None,
                   device: str = "cpu"):
    """The model a batch job runs (a loaded model is used as it is; a path, "demo" or None is loaded, None
    meaning $OWL_MODEL else the demo model), checked to take images."""
    from ..demo import model_dir as demo
    from ..loading import load
    from ..vision_language import VisionLanguageModel

    if model is None or isinstance(model, (str, os.PathLike)):
        model = load(demo.resolve(demo.model_or_demo(model)), threads=threads, n_ctx=n_ctx, device=device,
                     max_spare_contexts=max(1, workers - 1))
    if not isinstance(model, VisionLanguageModel) or not hasattr(model, "_expand"):
        raise TypeError(f"{type(model).__name__} does not answer questions about images; batch jobs need an "
                        "image model (mPLUG-Owl3, mPLUG-Owl2 / 2.1, mPLUG-Owl)")
    return model


def check_prompt_markers(prompts: Sequence[str]) -> None:
    """Each prompt takes the one image: at most one <|image|> marker (where the image goes), no videos."""
    for q in prompts:
        try:
            user_message(q, ["image"])
        except ValueError as e:
            raise ValueError(f"prompt {q!r}: {e}") from None


def run_batch(images, prompts: Optional[Sequence[str]] = None, out="results.jsonl", *, model=None, workers: int = 2,
              vision_batch: int = 16, max_tokens: int = 256, cut: bool = True, retry_errors: bool = False,
              progress: bool = True, threads: Optional[int] = None, n_ctx: Optional[int] = None,
              device: str = "cpu", cross_image_vision: Optional[bool] = None, **chat_options) -> dict:
    """Answers every prompt about every image and appends one JSON line per answer (or error) to `out`.

    images: a folder, an image list file, or a list of paths / (id, path) pairs (inputs.py); prompts: the
    questions (default "Describe the image."); model: a loaded model, a model directory, "demo", or None
    ($OWL_MODEL, else the demo model). workers: contexts answering at once (one thread each);
    vision_batch: crops per vision-tower run; cross_image_vision: whether those crops come from several images
    (None: where that leaves every embedding as chat() computes it, encode_together()); max_tokens and
    chat_options (temperature, stop, ...): as chat().
    Work already in `out` is skipped (retry_errors=True: error lines are done again).
    Returns a summary: counts, wall time, answers/s and images/s, cache and batching statistics."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    refs = collect_images(images)
    prompts = check_prompts(prompts if prompts is not None else [DEFAULT_PROMPT])
    check_prompt_markers(prompts)
    m = load_for_batch(model, workers=workers, threads=threads, n_ctx=n_ctx, device=device)
    existing = read_results(out, repair=True)
    items = work_items(refs, prompts, done_keys(existing, retry_errors))
    job = _Job(m, _group(items), workers, vision_batch, cut, dict(chat_options, max_tokens=max_tokens),
               cross_image_vision)
    bar = _progress_bar(len(items), len(prompts), progress, skipped=len(refs) * len(prompts) - len(items))
    n_err, t0, interrupted = 0, time.perf_counter(), False
    batches0, steps0 = m._batcher.batches, m._batcher.steps
    with ResultsWriter(out) as writer:
        job.start()
        try:
            for rec in job.results():
                writer.write(rec)
                n_err += rec["error"] is not None
                if bar is not None:
                    bar.update(1)
                    if n_err:
                        bar.set_postfix(errors=n_err, refresh=False)
        except KeyboardInterrupt:
            interrupted = True
            job.stop()
            for rec in job.finished():         # answers complete before the interrupt still count
                writer.write(rec)
                n_err += rec["error"] is not None
        finally:
            job.stop()
            if bar is not None:
                bar.close()
        written = writer.written
    wall = time.perf_counter() - t0
    if interrupted:
        print(f"owl-batch: interrupted; {written} results written to {out}; run again to resume", file=sys.stderr)
        raise KeyboardInterrupt
    n_images = len({it.image.id for it in items})
    return {"out": str(out), "images": len(refs), "prompts": len(prompts), "skipped": len(refs) * len(prompts) - len(items),
            "written": written, "errors": n_err, "wall_s": wall, "answers_per_s": written / wall if wall > 0 else 0.0,
            "images_per_s": n_images / wall if wall > 0 and written else 0.0, "workers": workers,
            "vision_batch": vision_batch, "cross_image_vision": bool(getattr(m.vision, "batch_invariant", False)
                                                                    if cross_image_vision is None else cross_image_vision),
            "decode_batches": m._batcher.batches - batches0,
            "decode_steps": m._batcher.steps - steps0, **m.cache_stats()}


def _group(items: list[WorkItem]) -> list[_Task]:
    tasks: list[_Task] = []
    for it in items:
        if tasks and tasks[-1].ref == it.image:
            tasks[-1].items.append(it)
        else:
            tasks.append(_Task(it.image, [it]))
    return tasks


def _progress_bar(total: int, n_prompts: int, enabled: bool, skipped: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    if skipped:
        print(f"owl-batch: {skipped} results already in the output file; {total} to go", file=sys.stderr)
    return tqdm(total=total, unit="img" if n_prompts == 1 else "answer", smoothing=0.05, dynamic_ncols=True,
                file=sys.stderr)


class _Job:
    def __init__(self, model, tasks: list[_Task], workers: int, vision_batch: int, cut: bool, options: dict,
                 cross_image: Optional[bool]):
        self.model, self.tasks, self.n_workers, self.cross_image = model, tasks, workers, cross_image
        self.vision_batch, self.cut, self.options = max(1, int(vision_batch)), cut, options
        self.stop_event = threading.Event()
        self.grouped: queue.Queue = queue.Queue(maxsize=2)              # preprocessed images, a vision run's worth
        self.ready: queue.Queue = queue.Queue(maxsize=2 * workers)     # preprocessed images, embeddings cached
        self.done: queue.Queue = queue.Queue()                          # result records; _END per worker
        self.threads: list[threading.Thread] = []
        self.fatal: list[BaseException] = []

    # ----- control ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.threads = [threading.Thread(target=self._guard, args=(self._prep, self.grouped), name="owl-batch-prep",
                                         daemon=True),
                        threading.Thread(target=self._guard, args=(self._vision, self.ready), name="owl-batch-vision",
                                         daemon=True)]
        for i in range(self.n_workers):
            self.threads.append(threading.Thread(target=self._guard, args=(self._work, None), name=f"owl-batch-{i}",
                                                 daemon=True))
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)          # a worker ends after its current answer

    def results(self):
        """Result records as they finish, until every worker has ended."""
        ended = 0
        while ended < self.n_workers:
            try:
                rec = self.done.get(timeout=0.2)        # a timeout keeps Ctrl-C prompt
            except queue.Empty:
                continue
            if rec is _END:
                ended += 1
            else:
                yield rec
        if self.fatal:
            raise self.fatal[0]

    def finished(self) -> list:
        out = []
        while True:
            try:
                rec = self.done.get_nowait()
            except queue.Empty:
                return out
            if rec is not _END:
                out.append(rec)

    def _guard(self, stage, downstream: Optional[queue.Queue]) -> None:
        """A stage's unexpected failure (a bug, not a bad image) ends the job with that error, not a hang: the
        stages after it are told there is no more (workers tell the caller thread themselves)."""
        try:
            stage()
        except BaseException as e:          # noqa: BLE001 - handed to the caller thread
            self.fatal.append(e)
            self.stop_event.set()
            if downstream is not None:
                for _ in range(self.n_workers if downstream is self.ready else 1):
                    downstream.put(_END)

    def _put(self, q: queue.Queue, x) -> bool:
        while not self.stop_event.is_set():
            try:
                q.put(x, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    # ----- stages ----------------------------------------------------------------------------------
    def _prep(self) -> None:
        """Images read and preprocessed, in groups of about vision_batch crops (while the vision thread runs the
        previous group)."""
        group: list[_Task] = []
        n_views = 0
        for task in self.tasks:
            if self.stop_event.is_set():
                break
            try:
                task.expanded = self.model._expand([task.ref.path], self.cut)
                n_views += sum(len(e.views) for e in task.expanded)
            except Exception as e:             # noqa: BLE001 - one error line per item of this image
                task.error = e
            group.append(task)
            if n_views >= self.vision_batch:
                if not self._put(self.grouped, group):
                    break
                group, n_views = [], 0
        if group:
            self._put(self.grouped, group)
        self.grouped.put(_END)

    def _vision(self) -> None:
        """Each group's crops through the vision tower in one run (into the image cache), then to the workers."""
        while True:
            group = self.grouped.get()
            if group is _END:
                break
            if not self.stop_event.is_set():
                encode_together(self.model, [t.expanded for t in group if t.expanded is not None], self.vision_batch,
                                self.cross_image)
            for t in group:
                self._put(self.ready, t)
        for _ in range(self.n_workers):
            self.ready.put(_END)                # the workers take what is queued, then end

    def _work(self) -> None:
        slot = self.model._contexts.new_slot()         # this worker's context: its cache serves its next prompt
        try:
            while True:
                task = self.ready.get()
                if task is _END:
                    break
                for it in task.items:
                    if self.stop_event.is_set():
                        break
                    self.done.put(self._answer(slot, task, it))
        finally:
            self.done.put(_END)

    def _answer(self, slot, task: _Task, it: WorkItem) -> dict:
        ref = task.ref
        if task.error is not None:
            return error_record(ref.id, ref.path, it.prompt, it.prompt_index, task.error)
        return answer_one(self.model, slot, ref.id, ref.path, task.expanded, it.prompt, it.prompt_index, self.options)


def encode_together(model, expanded: list, vision_batch: int, cross_image: Optional[bool] = None) -> None:
    """The crops of several preprocessed images through the vision tower in as few runs as vision_batch allows;
    the embeddings go to the model's image cache, where answering finds them. If the run fails (one bad image
    among them), nothing is cached and each image is encoded alone when answered, the failing one as its error.
    cross_image None: only where the tower gives a view the same embedding whatever shares its run
    (VisionEncoder.batch_invariant: fp32 on the CPU), so that answers stay exactly chat()'s; elsewhere each
    image's crops run on their own, as chat() runs them. True / False: always / never across images."""
    if cross_image is None:
        cross_image = getattr(model.vision, "batch_invariant", False)
    groups = [[v for e in ex for v in e.views] for ex in expanded]
    if cross_image:
        groups = [[v for g in groups for v in g]]
    for views in groups:
        if views:
            try:
                model.vision.encode(np.stack(views), batch_size=vision_batch if cross_image else None)
            except Exception:                   # noqa: BLE001 - see above
                pass


def answer_one(model, slot, image_id: str, path: str, expanded, prompt: str, prompt_index: int,
               options: dict) -> dict:
    """One prompt about one preprocessed image on `slot` (a context of the model's): the answer chat() gives
    for (image, prompt) with these options, as a result record; an error record if it fails."""
    t0 = time.perf_counter()
    try:
        msg, _ = user_message(prompt, [path])
        _, prepared, vision = model._prepare([msg], expanded)
        info = model._run(prepared, vision, slot=slot, return_info=True, **options)
    except Exception as e:                      # noqa: BLE001 - one error line, the job goes on
        return error_record(image_id, path, prompt, prompt_index, e)
    return answer_record(image_id, path, prompt, prompt_index, info, time.perf_counter() - t0)
