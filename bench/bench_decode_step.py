"""Batched decoding across conversations: aggregate decode tokens/s of _core.decode_step over N contexts of one
model (one pass through the weights per step for all N) against the same N contexts each eval'd on its own, on
a random-weight qwen2-0.5b GGUF (bench/make_random_gguf.py).

Each context first takes a prompt of its own length (--prompt + 7 * i tokens), then --steps greedy-free decode
steps (a fixed token: sampling is not what is measured). The median of --reps runs is reported.

    python bench/bench_decode_step.py                      # q8_0 and q4_0, N = 1 2 4 8, 2 threads
    python bench/bench_decode_step.py --quants q4_0 --contexts 1 4 16 --threads 4
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_random_gguf import ensure  # noqa: E402


def contexts(_core, model, n, threads, prompt):
    cs = []
    for i in range(n):
        c = _core.Context(model, 1024, threads)
        c.eval([1 + (j * 7 + i) % 1000 for j in range(prompt + 7 * i)], return_logits=False)
        cs.append(c)
    return cs


def run_batched(_core, model, n, threads, prompt, steps) -> float:
    cs = contexts(_core, model, n, threads, prompt)
    toks = [42] * n
    _core.decode_step(cs, toks)  # warm-up (scratch, thread pool)
    t0 = time.perf_counter()
    for _ in range(steps):
        _core.decode_step(cs, toks)
    return n * steps / (time.perf_counter() - t0)


def run_sequential(_core, model, n, threads, prompt, steps) -> float:
    cs = contexts(_core, model, n, threads, prompt)
    for c in cs:
        c.eval([42], return_logits=False)
    t0 = time.perf_counter()
    for _ in range(steps):
        for c in cs:
            c.eval([42], return_logits=False)
    return n * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="qwen2-0.5b")
    ap.add_argument("--quants", nargs="+", default=["q8_0", "q4_0"], choices=["q8_0", "q4_0", "f16"])
    ap.add_argument("--contexts", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=str(HERE / "models"))
    ap.add_argument("--out", default=str(HERE / "results" / "decode_step.json"))
    a = ap.parse_args()

    from owl_cpp import _core, system_info

    rows = []
    print(f"{'model':<12} {'quant':<6} {'N':>3} {'sequential t/s':>15} {'decode_step t/s':>16} {'speedup':>8}")
    for quant in a.quants:
        path = ensure(Path(a.workdir), a.size, quant)
        model = _core.Model.load(str(path))
        for n in a.contexts:
            seq = statistics.median(run_sequential(_core, model, n, a.threads, a.prompt, a.steps) for _ in range(a.reps))
            bat = statistics.median(run_batched(_core, model, n, a.threads, a.prompt, a.steps) for _ in range(a.reps))
            rows.append({"model": a.size, "quant": quant, "contexts": n, "sequential_tps": seq, "decode_step_tps": bat,
                         "speedup": bat / seq})
            print(f"{a.size:<12} {quant:<6} {n:>3} {seq:>15.2f} {bat:>16.2f} {bat / seq:>7.2f}x", flush=True)
    result = {"threads": a.threads, "prompt": a.prompt, "steps": a.steps, "reps": a.reps,
              "system_info": dict(system_info()), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"JSON: {a.out}")


if __name__ == "__main__":
    main()
