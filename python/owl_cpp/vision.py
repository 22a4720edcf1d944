"""The vision tower at run time: vision.onnx (pixels [N,3,S,S] -> image_embeds [N, P, n_embd]) on
onnxruntime, in front of an ImageEmbeddingCache: views seen before are not run again."""
from __future__ import annotations

import copy
import os
import threading
import warnings
from typing import Optional

import numpy as np

from .image_cache import DEFAULT_MAX_BYTES, ImageEmbeddingCache, content_key

INPUT, OUTPUT = "pixel_values", "image_embeds"


class VisionEncoder:
    """An onnxruntime session for vision.onnx plus the embedding cache. Thread-safe.

    n_encoded counts the views actually run through the network (cache misses), for tests and stats."""

    def __init__(self, path, *, threads: Optional[int] = None, device: str = "cpu", batch_size: int = 8,
                 cache_bytes: int = DEFAULT_MAX_BYTES):
        path = os.fspath(path)
        self.session, self.device = open_onnx_session(path, threads, device, "vision model")
        self.threads = int(threads) if threads else _default_threads()    # onnxruntime's intra-op threads
        self._device_name = device
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if INPUT not in inputs or OUTPUT not in outputs:
            raise ValueError(f"{path}: expected input {INPUT!r} and output {OUTPUT!r}, found inputs "
                             f"{sorted(inputs)} and outputs {outputs}")
        # an fp16 export takes fp16 pixels; everything else float32
        self.input_dtype = np.float16 if inputs[INPUT].type == "tensor(float16)" else np.float32
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)   # owl-export writes owl3.*
        self.batch_size = max(1, int(batch_size))
        # Whether a view's embedding is the same whatever else is in its run: not for dynamically quantized
        # (int8) towers, whose activation scale is taken over the whole batch, nor on a GPU, where kernels may
        # change with the batch size. Batch jobs run the crops of several images together only when it holds.
        quantized = any(k.endswith("vision.quant") and v not in ("", "none") for k, v in self.metadata.items())
        self.batch_invariant = not quantized and self.device == ["CPUExecutionProvider"]
        self.cache = ImageEmbeddingCache(cache_bytes)
        self._count_lock = threading.Lock()
        self.n_encoded = 0

    def with_threads(self, threads: int) -> "VisionEncoder":
        """This tower with its own onnxruntime session of `threads` intra-op threads (the model file loaded
        again) and the same embedding cache: for callers that run the tower from several threads at once, one
        thread each (owl-batch's lanes). Itself when it already has that many."""
        if int(threads) == self.threads:
            return self
        twin = copy.copy(self)
        twin.session, _ = open_onnx_session(self.path, int(threads), self._device_name, "vision model")
        twin.threads, twin._count_lock, twin.n_encoded = int(threads), threading.Lock(), 0
        return twin

    def encode(self, views: np.ndarray, keys: Optional[list] = None, stats: Optional[dict] = None,
               batch_size: Optional[int] = None, run_options=None) -> list:
        """views [N, 3, S, S] -> N embeddings [P, n_embd] float32 (read-only); cached views are not run again.
        keys: content_key of each view, when the caller has them already. stats, when given, gets
        "encoded" (views run through the network) and "reused" (views taken from the cache). batch_size:
        views per network run (default self.batch_size; a batch job runs the crops of several images at once).
        run_options: an onnxruntime.RunOptions for the runs (another thread setting its .terminate = True ends
        a run early, with an exception: how a batch job stops promptly)."""
        step = max(1, int(batch_size)) if batch_size else self.batch_size
        keys = [content_key(v) for v in views] if keys is None else list(keys)
        found = {}
        for k in dict.fromkeys(keys):
            emb = self.cache.get(k)
            if emb is not None:
                found[k] = emb
        todo = {k: v for k, v in zip(keys, views) if k not in found}      # distinct misses, in order
        todo_keys, todo_views = list(todo), list(todo.values())
        whole = isinstance(views, np.ndarray) and len(todo_keys) == len(views)    # every view, in order: no copy
        for b in range(0, len(todo_keys), step):
            batch = (views[b:b + step] if whole else np.stack(todo_views[b:b + step])).astype(self.input_dtype,
                                                                                          copy=False)
            extra = () if run_options is None else (run_options,)
            out = self.session.run([OUTPUT], {INPUT: batch}, *extra)[0]
            if not np.isfinite(out).all():        # NaN/inf would spread through the decoder: a broken export
                rows = np.nonzero(~np.isfinite(out.reshape(len(out), -1)).all(1))[0]
                bad = [keys.index(todo_keys[b + int(i)]) for i in rows]          # index in `views`
                raise ValueError(f"{self.path}: the vision model produced non-finite values (NaN/inf) for view(s) "
                                 f"{bad}; the model file (or its fp16 export) is broken")
            with self._count_lock:
                self.n_encoded += len(batch)
            for k, e in zip(todo_keys[b:b + step], out):
                found[k] = np.ascontiguousarray(e, dtype=np.float32)
                self.cache.put(k, found[k])
        if stats is not None:
            stats["encoded"] = stats.get("encoded", 0) + len(todo_keys)
            stats["reused"] = stats.get("reused", 0) + len(keys) - len(todo_keys)
        return [found[k] for k in keys]

    def clear_cache(self) -> None:
        self.cache.clear()


def open_onnx_session(path: str, threads: Optional[int], device: str, what: str):
    """(an onnxruntime session for the file at path, its providers): every thread on the ops of one graph,
    errors only in the log; device "cpu" | "cuda" (onnxruntime-gpu's provider, else the CPU with a warning).
    A missing file, onnxruntime or a broken model is a clear error naming `what`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"the {what} needs onnxruntime: pip install onnxruntime") from e
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1                  # one graph at a time; the threads go to the ops
    opts.log_severity_level = 3                    # errors only: its warnings are not the user's business
    providers = _providers_for(ort, device)
    try:
        return ort.InferenceSession(path, opts, providers=providers), providers
    except Exception as e:                          # onnxruntime raises its own types for a bad file
        raise ValueError(f"{path}: cannot load the {what} ({e})") from e


def _default_threads() -> int:
    from . import _core
    return _core.default_threads()


def _providers_for(ort, device: str) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        warnings.warn("onnxruntime has no CUDA provider here (install onnxruntime-gpu); the vision tower "
                      "runs on the CPU", RuntimeWarning, stacklevel=4)
        return ["CPUExecutionProvider"]
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
