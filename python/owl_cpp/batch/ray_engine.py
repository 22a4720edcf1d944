"""Batch inference on a Ray cluster (`pip install "owl_cpp[ray]"`): Ray Data spreads the rows over actors,
each loading the model once (OwlPredictor); the driver writes results.jsonl as rows come back.

    owl-batch --ray [ADDRESS] --model DIR --images FOLDER --prompt "..." --out results.jsonl --actors 4

Faults: Ray Data restarts a dead actor and runs its lost batch again (its actor pools retry without limit by
default); a lost batch never reached the driver, and the driver writes each (image id, prompt) once whatever
comes back, so every result is in the file exactly once. The image paths must be readable on every node (a
shared filesystem); for object stores use the recipe in docs/batch.md (read_binary_files -> OwlPredictor).

OwlPredictor works in your own Ray Data pipelines: rows with an image ("image": an (H, W, 3) uint8 array as
ray.data.read_images gives, or "bytes" as read_binary_files gives, or "path") and optionally "id" (else "path")
and "prompt" (else every prompt given to the constructor); it returns the result fields of results.py."""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from .engine import answer_one, check_prompt_markers, encode_together, load_for_batch
from .inputs import DEFAULT_PROMPT, check_prompts, collect_images, work_items
from .results import RESULT_FIELDS, ResultsWriter, done_keys, error_record, read_results, result_key


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError('Ray is not installed; batch jobs on a Ray cluster need the ray extra: '
                          'pip install "owl_cpp[ray]"') from e
    return ray


class OwlPredictor:
    """A Ray Data map_batches class: the model is loaded once per actor (threads: its CPU threads)."""

    def __init__(self, model: str = "demo", prompts: Optional[Sequence[str]] = None, *, threads: int = 1,
                 n_ctx: Optional[int] = None, vision_batch: int = 16, max_tokens: int = 256, cut: bool = True,
                 cross_image_vision: Optional[bool] = None, **chat_options):
        self.model = load_for_batch(model, workers=1, threads=threads, n_ctx=n_ctx)
        self.prompts = check_prompts(prompts) if prompts is not None else [DEFAULT_PROMPT]
        check_prompt_markers(self.prompts)
        self.slot = self.model._contexts.new_slot()
        self.vision_batch, self.cut, self.cross_image = vision_batch, cut, cross_image_vision
        self.options = dict(chat_options, max_tokens=max_tokens)

    def __call__(self, batch: dict) -> dict:
        n = len(next(iter(batch.values())))
        rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        images = [self._source(r) for r in rows]
        expanded: dict = {}                          # one preprocessing per image, also when it has several rows
        for r, (image_id, path, src) in zip(rows, images):
            if image_id not in expanded:
                try:
                    expanded[image_id] = self.model._expand([src], self.cut)
                except Exception as e:                # noqa: BLE001 - its rows become error records
                    expanded[image_id] = e
        encode_together(self.model, [x for x in expanded.values() if not isinstance(x, Exception)],
                        self.vision_batch, self.cross_image)
        out = {f: [] for f in RESULT_FIELDS}
        for r, (image_id, path, _) in zip(rows, images):
            if "prompt" in r:
                todo = [(str(r["prompt"]), int(r.get("prompt_index", 0)))]
            else:
                todo = [(q, k) for k, q in enumerate(self.prompts)]
            for prompt, index in todo:
                ex = expanded[image_id]
                rec = (error_record(image_id, path, prompt, index, ex) if isinstance(ex, Exception) else
                       answer_one(self.model, self.slot, image_id, path, ex, prompt, index, self.options))
                for f in RESULT_FIELDS:
                    out[f].append(rec[f])
        return {f: np.array(v, dtype=object) for f, v in out.items()}

    @staticmethod
    def _source(row: dict) -> tuple:
        """(id, path or "", what to preprocess) of a row."""
        path = str(row["path"]) if row.get("path") is not None else ""
        if row.get("image") is not None:
            src = np.asarray(row["image"])
        elif row.get("bytes") is not None:
            src = bytes(row["bytes"])
        elif path:
            src = path
        else:
            raise ValueError("a row needs an 'image' (array), 'bytes' or 'path' column")
        image_id = str(row["id"]) if row.get("id") is not None else path
        return image_id, path, src


def _plain(v):
    """A value from a Ray row as JSON takes it."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:        # a null float column may come back as NaN
        return None
    return v


def run_ray(images, prompts: Optional[Sequence[str]] = None, out="results.jsonl", *, model=None,
            address: Optional[str] = None, actors: int = 2, batch_size: int = 4, threads: int = 1,
            n_ctx: Optional[int] = None, vision_batch: int = 16, max_tokens: int = 256, cut: bool = True,
            retry_errors: bool = False, progress: bool = True, cross_image_vision: Optional[bool] = None,
            predictor=OwlPredictor, **chat_options) -> dict:
    """run_batch()'s job on Ray: `actors` actors of `threads` CPUs each, `batch_size` rows per call. Connects
    to the cluster at `address` ("auto", "ray://host:10001", ...) or, when Ray is not initialized and address
    is None, starts a local one. Same inputs, output file and resume as run_batch; rows come back in any order.
    model must be a path every node can read, or "demo" (None: $OWL_MODEL, else "demo").
    predictor: the map_batches class (OwlPredictor or a subclass). The summary's first_result_s: seconds until
    the first result came back (actors started, models loaded)."""
    ray = _ray()
    if actors < 1 or batch_size < 1:
        raise ValueError(f"actors and batch_size must be >= 1, got {actors} and {batch_size}")
    refs = collect_images(images)
    prompts = check_prompts(prompts if prompts is not None else [DEFAULT_PROMPT])
    check_prompt_markers(prompts)
    model = os.fspath(model) if model is not None else os.environ.get("OWL_MODEL") or "demo"
    existing = read_results(out, repair=True)
    items = work_items(refs, prompts, done_keys(existing, retry_errors))
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    t0, written, n_err, seen, first = time.perf_counter(), 0, 0, set(), None
    bar = None
    if progress:
        from .engine import _progress_bar
        bar = _progress_bar(len(items), len(prompts), True, skipped=len(refs) * len(prompts) - len(items))
    with ResultsWriter(out) as writer:
        try:
            if items:
                rows = [{"id": it.image.id, "path": os.path.abspath(it.image.path), "prompt": it.prompt,
                         "prompt_index": it.prompt_index} for it in items]
                ds = ray.data.from_items(rows).map_batches(
                    predictor, fn_constructor_kwargs=dict(model=model, prompts=prompts, threads=threads, n_ctx=n_ctx,
                                                          vision_batch=vision_batch, max_tokens=max_tokens, cut=cut,
                                                          cross_image_vision=cross_image_vision, **chat_options),
                    batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
                    batch_format="numpy")
                for row in ds.iter_rows():
                    rec = {f: _plain(row.get(f)) for f in RESULT_FIELDS}
                    if result_key(rec) in seen:       # idempotent output: a retried batch's result comes once
                        continue
                    seen.add(result_key(rec))
                    writer.write(rec)
                    if first is None:
                        first = time.perf_counter() - t0
                    n_err += rec["error"] is not None
                    if bar is not None:
                        bar.update(1)
        except KeyboardInterrupt:
            print(f"owl-batch: interrupted; {writer.written} results written to {out}; run again to resume",
                  file=sys.stderr)
            raise
        finally:
            if bar is not None:
                bar.close()
        written = writer.written
    wall = time.perf_counter() - t0
    n_images = len({it.image.id for it in items})
    return {"out": str(out), "images": len(refs), "prompts": len(prompts),
            "skipped": len(refs) * len(prompts) - len(items), "written": written, "errors": n_err, "wall_s": wall,
            "answers_per_s": written / wall if wall > 0 else 0.0,
            "images_per_s": n_images / wall if wall > 0 and written else 0.0, "actors": actors,
            "first_result_s": first}
