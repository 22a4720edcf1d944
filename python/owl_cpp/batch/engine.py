"""Batch inference on one machine: one loaded model, its work spread over worker threads in one of two layouts
(layout.py): "lanes" (default on the CPU: one whole pipeline per core, one thread each) or "stages" (default on
a GPU: prep and vision threads feeding workers whose decode steps run batched, stages.py). The caller thread
writes each result line as it comes (results.py) and moves the progress bar.

An image that cannot be read or preprocessed, or a prompt that fails, is one error line; the job goes on.
Ctrl-C stops the workers promptly (job.py: between decode steps; a vision run in flight is ended), writes the
results already finished and raises KeyboardInterrupt: the file holds only whole lines and a rerun resumes."""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, Sequence

from ..messages import user_message
from .answer import Task, answer_one, encode_together, group_items
from .inputs import DEFAULT_PROMPT, check_prompts, collect_images, work_items
from .layout import plan
from .results import ResultsWriter, done_keys, read_results

__all__ = ["Task", "answer_one", "check_prompt_markers", "encode_together", "load_for_batch", "run_batch"]


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


def run_batch(images, prompts: Optional[Sequence[str]] = None, out="results.jsonl", *, model=None,
              workers: Optional[int] = None, vision_batch: int = 16, max_tokens: int = 256, cut: bool = True,
              retry_errors: bool = False, progress: bool = True, threads: Optional[int] = None,
              n_ctx: Optional[int] = None, device: str = "cpu", cross_image_vision: Optional[bool] = None,
              layout: Optional[str] = None, **chat_options) -> dict:
    """Answers every prompt about every image and appends one JSON line per answer (or error) to `out`.

    images: a folder, an image list file, or a list of paths / (id, path) pairs (inputs.py); prompts: the
    questions (default "Describe the image."); model: a loaded model, a model directory, "demo", or None
    ($OWL_MODEL, else the demo model). layout: "lanes" | "stages" (layout.py; default lanes on the CPU,
    stages on a GPU); workers: threads answering at once (default: lanes one per core, stages 2); threads:
    CPU threads per worker (default: lanes cores // workers, stages the model's). A model given loaded keeps
    its threads for its own calls; lanes make their contexts (and, where its tower has more threads, a vision
    session) with `threads`. stages only: vision_batch: crops per vision-tower run; cross_image_vision:
    whether those crops come from several images (None: where that leaves every embedding as chat()
    computes it, encode_together()). max_tokens and chat_options (temperature, stop, ...): as chat().
    Work already in `out` is skipped (retry_errors=True: error lines are done again).
    Returns a summary: counts, wall time, CPU time (this process, all threads), answers/s and images/s, the
    layout (workers, threads per worker), cache and batching statistics."""
    shape = plan(workers, threads, device, layout)
    refs = collect_images(images)
    prompts = check_prompts(prompts if prompts is not None else [DEFAULT_PROMPT])
    check_prompt_markers(prompts)
    m = load_for_batch(model, workers=shape.workers, threads=shape.threads, n_ctx=n_ctx, device=device)
    existing = read_results(out, repair=True)
    items = work_items(refs, prompts, done_keys(existing, retry_errors))
    options = dict(chat_options, max_tokens=max_tokens)
    if shape.layout == "lanes":
        from .lanes import LanesJob
        job = LanesJob(m, group_items(items), shape.workers, shape.threads, cut, options)
    else:
        from .stages import StagesJob
        job = StagesJob(m, group_items(items), shape.workers, vision_batch, cut, options, cross_image_vision)
    bar = _progress_bar(len(items), len(prompts), progress, skipped=len(refs) * len(prompts) - len(items))
    n_err, t0, c0, interrupted = 0, time.perf_counter(), time.process_time(), False
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
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if interrupted:
        print(f"owl-batch: interrupted; {written} results written to {out}; run again to resume", file=sys.stderr)
        raise KeyboardInterrupt
    n_images = len({it.image.id for it in items})
    stages = shape.layout == "stages"
    return {"out": str(out), "images": len(refs), "prompts": len(prompts), "skipped": len(refs) * len(prompts) - len(items),
            "written": written, "errors": n_err, "wall_s": wall, "cpu_s": cpu, "answers_per_s": written / wall if wall > 0 else 0.0,
            "images_per_s": n_images / wall if wall > 0 and written else 0.0, "layout": shape.layout,
            "workers": shape.workers, "threads": shape.threads or m.threads,
            "vision_batch": vision_batch if stages else None,
            "cross_image_vision": bool(getattr(m.vision, "batch_invariant", False) if cross_image_vision is None
                                       else cross_image_vision) if stages else False,
            "decode_batches": m._batcher.batches - batches0,
            "decode_steps": m._batcher.steps - steps0, **m.cache_stats()}


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
