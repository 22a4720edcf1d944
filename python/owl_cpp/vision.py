"""The vision tower at run time: vision.onnx (pixels [N,3,S,S] -> image_embeds [N, P, n_embd]) on onnxruntime,
with the embeddings of each view cached by a hash of its preprocessed pixels, so a conversation that keeps
talking about the same image encodes it once (design.md "Cache what does not change")."""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from typing import Optional

import numpy as np

INPUT, OUTPUT = "pixel_values", "image_embeds"


def view_key(pixels: np.ndarray) -> bytes:
    """Content hash of one preprocessed view [3, S, S] (shape included: equal bytes of another size differ)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((pixels.shape, str(pixels.dtype))).encode())
    h.update(np.ascontiguousarray(pixels).data)
    return h.digest()


class VisionEncoder:
    """An onnxruntime session for vision.onnx plus an LRU cache of per-view embeddings.

    n_encoded counts the views actually run through the network (cache misses), for tests and stats."""

    def __init__(self, path, *, threads: Optional[int] = None, device: str = "cpu", batch_size: int = 8,
                 cache_bytes: int = 1 << 30):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: vision model not found")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("the vision tower needs onnxruntime: pip install onnxruntime") from e
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1                  # one graph at a time; the threads go to the ops
        opts.log_severity_level = 3                    # errors only: its warnings are not the user's business
        self.device = self._providers_for(ort, device)
        try:
            self.session = ort.InferenceSession(path, opts, providers=self.device)
        except Exception as e:                          # onnxruntime raises its own types for a bad file
            raise ValueError(f"{path}: cannot load the vision model ({e})") from e
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
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self.n_encoded = 0

    @staticmethod
    def _providers_for(ort, device: str) -> list:
        if device == "cpu":
            return ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
            warnings.warn("onnxruntime has no CUDA provider here (install onnxruntime-gpu); the vision tower "
                          "runs on the CPU", RuntimeWarning, stacklevel=3)
            return ["CPUExecutionProvider"]
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")

    def encode(self, views: np.ndarray, keys: Optional[list] = None) -> list[np.ndarray]:
        """views [N, 3, S, S] -> N embeddings [P, n_embd] float32; cached views are not run again.
        keys: view_key of each view, when the caller has them already."""
        keys = [view_key(v) for v in views] if keys is None else list(keys)
        found = {k: self._cache[k] for k in keys if k in self._cache}
        todo = {k: v for k, v in zip(keys, views) if k not in found}      # distinct misses, in order
        todo_keys, todo_views = list(todo), list(todo.values())
        for b in range(0, len(todo_keys), self.batch_size):
            batch = np.stack(todo_views[b:b + self.batch_size]).astype(self.input_dtype, copy=False)
            out = self.session.run([OUTPUT], {INPUT: batch})[0]
            self.n_encoded += len(batch)
            for k, e in zip(todo_keys[b:b + self.batch_size], out):
                found[k] = np.ascontiguousarray(e, dtype=np.float32)
        for k in dict.fromkeys(keys):                                       # most recent last
            self._put(k, found[k])
        return [found[k] for k in keys]

    def _put(self, key: bytes, emb: np.ndarray) -> None:
        if key in self._cache:
            self._cache.move_to_end(key)
            return
        self._cache[key] = emb
        self._cached_bytes += emb.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0
