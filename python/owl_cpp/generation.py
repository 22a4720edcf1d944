"""Generation options and stop-string handling, independent of the model class."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from . import _core


@dataclass
class SamplingOptions:
    """The sampling knobs llama.cpp users know. temperature <= 0 means greedy (the default)."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: Optional[int] = None

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")

    def make_sampler(self) -> "_core.Sampler":
        self.validate()
        p = _core.SamplerParams()
        p.temperature = float(self.temperature)
        p.top_k = int(self.top_k)
        p.top_p = float(self.top_p)
        p.min_p = float(self.min_p)
        p.repeat_penalty = float(self.repeat_penalty)
        p.repeat_last_n = int(self.repeat_last_n)
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(8), "little")
        p.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        return _core.Sampler(p)


def normalize_stop(stop: Union[None, str, Sequence[str]]) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    out = [s for s in stop if s]
    if not all(isinstance(s, str) for s in out):
        raise TypeError("stop must be a string or a list of strings")
    return out


class StopMatcher:
    """Feeds decoded text and releases only what cannot be the start of a stop string."""

    def __init__(self, stops: Iterable[str]):
        self.stops = list(stops)
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.held += text
        cut = min((self.held.find(s) for s in self.stops if s in self.held), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.held = self.held[:cut], ""
            return out
        # Keep the longest tail that is a proper prefix of some stop string.
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.held)), keep, -1):
                if self.held.endswith(s[:n]):
                    keep = n
                    break
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(self.held) - keep :]
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out
