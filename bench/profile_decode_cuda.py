"""Decode steps of one random-weight decoder on the CUDA backend, for a per-kernel profile: only the decode steps
are inside the profiler range (the prompt before them is not).

    OWL_CUDA_GRAPHS=0 ncu --profile-from-start off --metrics gpu__time_duration.sum --print-summary per-kernel \\
        python bench/profile_decode_cuda.py qwen2-7b q4_0
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_random_gguf import SIZES, ensure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size", choices=list(SIZES))
    ap.add_argument("quant", choices=["q4_0", "q8_0", "f16"])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workdir", default=str(HERE / "models"))
    a = ap.parse_args()
    from owl_cpp import _core

    model = _core.Model.load(str(ensure(Path(a.workdir), a.size, a.quant)))
    ctx = _core.Context(model, a.prompt + a.steps + 8, 1, 512, backend="cuda")
    ctx.eval(list(range(1, a.prompt + 1)))
    ctx.eval([7])  # the first step sizes buffers and instantiates the graph
    cuda = ctypes.CDLL("libcuda.so.1")
    cuda.cuProfilerStart()
    t = time.perf_counter()
    for _ in range(a.steps):
        ctx.eval([7])
    dt = (time.perf_counter() - t) / a.steps
    cuda.cuProfilerStop()
    print(f"{a.size} {a.quant}: {dt * 1e3:.2f} ms per decode step (wall, profiler overhead included)")


if __name__ == "__main__":
    main()
