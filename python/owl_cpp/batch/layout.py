"""How a single-machine batch job uses the cores: its layout, worker count and threads per worker.

  lanes    (default on the CPU) N workers, each a whole pipeline on T threads: it reads and preprocesses an
           image, runs the vision tower on it (an onnxruntime session of T intra-op threads) and answers its
           prompts on a context of its own (T threads), its decode steps on their own. Default: one worker per
           core, one thread each. Throughput over latency: at these sizes neither onnxruntime's kernels nor the
           runtime's scale perfectly with threads (and the decoder's not at all for tiny models), so N
           single-thread pipelines keep N cores busier than one N-thread pipeline; they also keep the cores
           busy while an image is read, hashed and prepared (single-threaded work).
  stages   (default on a GPU) a prep thread, one vision thread running the crops of several images in one
           call, and N workers whose decode steps run as one batched pass (engine.py's StagesJob): larger
           kernel calls, for a device that wants them. Default: 2 workers, the model's threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

LAYOUTS = ("lanes", "stages")


@dataclass(frozen=True)
class Plan:
    layout: str
    workers: int
    threads: Optional[int]      # per worker (lanes: its context and its vision session); None: the model's


def plan(workers: Optional[int] = None, threads: Optional[int] = None, device: str = "cpu",
         layout: Optional[str] = None, cores: Optional[int] = None) -> Plan:
    """The job's shape: what is given is kept, the rest chosen as the module doc says (cores: the machine's
    physical cores, default the runtime's count)."""
    if layout is None:
        layout = "lanes" if device == "cpu" else "stages"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if layout == "stages":
        return Plan(layout, workers or 2, threads)
    if cores is None:
        from .. import _core
        cores = _core.default_threads()
    if workers is None:
        workers = max(1, cores // threads) if threads else max(1, cores)
    return Plan(layout, workers, threads or max(1, cores // workers))
