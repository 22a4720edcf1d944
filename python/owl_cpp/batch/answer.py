"""Answering, for every layout: one prompt about one preprocessed image as chat() answers it, the vision tower
over the crops of several images, and a task (an image and its prompts) turned into result records."""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np

from ..messages import user_message
from .inputs import ImageRef
from .job import Stopped
from .results import answer_record, error_record


class Task:
    """One image and the prompts still to answer about it."""
    __slots__ = ("ref", "items", "expanded", "error")

    def __init__(self, ref: ImageRef, items: list):
        self.ref, self.items, self.expanded, self.error = ref, items, None, None


def group_items(items: list) -> list[Task]:
    """Work items (inputs.work_items: image by image) -> one Task per image."""
    tasks: list[Task] = []
    for it in items:
        if tasks and tasks[-1].ref == it.image:
            tasks[-1].items.append(it)
        else:
            tasks.append(Task(it.image, [it]))
    return tasks


def answer_task(job, slot, task: Task, model, options: dict, encoder=None, batch_decode=None) -> bool:
    """Every prompt of a task on `slot`, each record to job.done. False when the job stopped meanwhile (the
    answer in progress is dropped: a rerun does it)."""
    ref = task.ref
    for it in task.items:
        if job.stop_event.is_set():
            return False
        if task.error is not None:
            rec = error_record(ref.id, ref.path, it.prompt, it.prompt_index, task.error)
        else:
            try:
                rec = answer_one(model, slot, ref.id, ref.path, task.expanded, it.prompt, it.prompt_index, options,
                                 cancel=job.stop_event, encoder=encoder, batch_decode=batch_decode)
            except Stopped:
                return False
        job.done.put(rec)
    return True


def encode_together(model, expanded: list, vision_batch: int, cross_image: Optional[bool] = None,
                    run_options=None) -> None:
    """The crops of several preprocessed images through the vision tower in as few runs as vision_batch allows;
    the embeddings go to the model's image cache, where answering finds them. If the run fails (one bad image
    among them), nothing is cached and each image is encoded alone when answered, the failing one as its error.
    cross_image None: only where the tower gives a view the same embedding whatever shares its run
    (VisionEncoder.batch_invariant: fp32 on the CPU), so that answers stay exactly chat()'s; elsewhere each
    image's crops run on their own, as chat() runs them. True / False: always / never across images.
    run_options: onnxruntime RunOptions (a stopping job terminates the run)."""
    if cross_image is None:
        cross_image = getattr(model.vision, "batch_invariant", False)
    groups = [[v for e in ex for v in e.views] for ex in expanded]
    if cross_image:
        groups = [[v for g in groups for v in g]]
    for views in groups:
        if views:
            try:
                model.vision.encode(np.stack(views), batch_size=vision_batch if cross_image else None,
                                    run_options=run_options)
            except Exception:                   # noqa: BLE001 - see above
                pass


def answer_one(model, slot, image_id: str, path: str, expanded, prompt: str, prompt_index: int,
               options: dict, *, cancel: Optional[threading.Event] = None, encoder=None,
               batch_decode: Optional[bool] = None) -> dict:
    """One prompt about one preprocessed image on `slot` (a context of the model's): the answer chat() gives
    for (image, prompt) with these options, as a result record; an error record if it fails.
    cancel: an event checked between decode steps (and after a vision run); once set, Stopped is raised and
    there is no record. encoder: what runs the vision tower (default model.vision); batch_decode: whether the
    decode steps join other workers' (None: the model's setting)."""
    t0 = time.perf_counter()
    try:
        msg, _ = user_message(prompt, [path])
        _, prepared, vision = model._prepare([msg], expanded, encoder)
        if cancel is not None and cancel.is_set():
            raise Stopped()
        stream = model._run(prepared, vision, slot=slot, stream=True, batch_decode=batch_decode, **options)
        try:
            for _ in stream:
                if cancel is not None and cancel.is_set():
                    raise Stopped()
        finally:
            stream.close()
        info = stream.info
    except Stopped:
        raise
    except Exception as e:                      # noqa: BLE001 - one error line, the job goes on
        if cancel is not None and cancel.is_set():
            raise Stopped() from e              # a vision run ended by stop(), not a bad image
        return error_record(image_id, path, prompt, prompt_index, e)
    return answer_record(image_id, path, prompt, prompt_index, info, time.perf_counter() - t0)
