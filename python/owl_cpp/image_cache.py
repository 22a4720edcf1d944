"""Image embeddings cached by the content of the pixels they came from, so a conversation that keeps talking
about the same image runs the vision tower once (the vision tower is the costliest step; its output never changes for the same pixels).

Keys are hashes of the preprocessed pixels (shape and dtype included), so the same image given as a path,
bytes, a PIL image or an array is one entry. The cache holds at most `max_bytes` of embeddings, least
recently used out first. Thread-safe; `hits` / `misses` count lookups, for stats and tests.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Optional

import numpy as np

DEFAULT_MAX_BYTES = 1 << 30


def content_key(pixels: np.ndarray) -> bytes:
    """Content hash of one preprocessed view (shape and dtype included: equal bytes of another size differ)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((pixels.shape, str(pixels.dtype))).encode())
    h.update(np.ascontiguousarray(pixels).data)
    return h.digest()


class ImageEmbeddingCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> Optional[np.ndarray]:
        with self._lock:
            emb = self._entries.get(key)
            if emb is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return emb

    def put(self, key: bytes, emb: np.ndarray) -> None:
        """Keeps emb (read-only from now on) unless it alone is over the budget; evicts the oldest to fit."""
        emb.setflags(write=False)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            if emb.nbytes > self.max_bytes:
                return
            self._entries[key] = emb
            self._bytes += emb.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries
