"""Decode speed on a busy machine: owl_cpp (one or more builds) next to llama.cpp, with 0, 1, 2... competing
processes that each keep one core busy (a tight Python loop), for several thread counts.

Same random-weight GGUF for every engine (make_random_gguf.py). Each measurement is a fresh process (as in
bench_decode.py) that loads the model, evaluates a 128-token prompt (reported as pp t/s), then decodes --tg
tokens one at a time (reported as tg t/s; stops early after --max-s seconds so a pathological case cannot stall
the run). Engines and thread counts are interleaved within each repetition so drifts of a shared machine hit
all alike; the table shows medians over --reps. The competitors are killed at the end, also on errors and ^C.

    python bench/bench_contention.py                                   # owl_cpp from python/, owl only
    python bench/bench_contention.py --llama-python /tmp/llamacpp/bin/python
    python bench/bench_contention.py --owl before=/tmp/old_build after=python   # two builds in the same run

--owl LABEL=DIR: DIR is put on PYTHONPATH to import that build's owl_cpp (default: owl=<repo>/python).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPT = 128


# ---- child: one engine, one load level, one thread count -------------------------------------------------------

def child(a) -> None:
    import numpy as np

    sys.path.insert(0, str(HERE))
    from engine_runner import load

    threads = int(a.threads[0])
    t0 = time.perf_counter()
    n_vocab, eval_tokens = load(a.engine, a.model, threads, n_ctx=PROMPT + a.tg + 16)
    load_s = time.perf_counter() - t0
    ids = np.random.default_rng(0).integers(300, min(n_vocab, 30000), PROMPT + a.tg).tolist()
    eval_tokens(ids[:8], reset=True)  # warm-up: first touch of the mapped weights
    t = time.perf_counter()
    eval_tokens(ids[:PROMPT], reset=True)
    pp = PROMPT / (time.perf_counter() - t)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    n = 0
    while n < a.tg:
        eval_tokens([ids[PROMPT + n]])
        n += 1
        if time.perf_counter() - t > a.max_s:
            break
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({"engine": a.engine, "threads": threads, "load_s": load_s, "pp": pp, "tg": n / wall,
                      "tg_tokens": n, "cpu_ms_per_token": 1e3 * cpu / n}))


# ---- parent ------------------------------------------------------------------------------------------------------

@contextmanager
def competitors(k: int):
    """k processes spinning one core each, in their own sessions; killed (whole process group) on the way out."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(k)]
    try:
        time.sleep(1.0 if k else 0.0)  # let the scheduler settle
        yield procs
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait()


def run_child(python: str, engine: str, model: Path, threads: int, tg: int, max_s: float, pythonpath: str | None) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", "--engine", engine, "--model", str(model),
           "--threads", str(threads), "--tg", str(tg), "--max-s", str(max_s)]
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{engine} ({pythonpath}) failed with {threads} threads:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", choices=["owl", "llama"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help="a GGUF file (default: the random --size/--quant one, created if missing)")
    ap.add_argument("--size", default="qwen2-0.5b")
    ap.add_argument("--quant", default="q4_0", choices=["q4_0", "q8_0", "f16"])
    ap.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2], help="busy processes per level")
    ap.add_argument("--threads", nargs="+", default=["1", "2", "default"],
                    help="thread counts; 'default' is _core.default_threads()")
    ap.add_argument("--tg", type=int, default=96, help="decode steps after a 128-token prompt")
    ap.add_argument("--max-s", type=float, default=20.0, help="stop decoding after this many seconds")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--owl", nargs="+", default=None, metavar="LABEL=DIR",
                    help="owl_cpp builds to compare: DIR goes on PYTHONPATH (default owl=<repo>/python)")
    ap.add_argument("--llama-python", default=os.environ.get("OWL_LLAMA_PYTHON"),
                    help="python of an environment with llama-cpp-python (omit to time owl_cpp alone)")
    ap.add_argument("--workdir", default=str(HERE / "models"), help="where the random GGUFs are cached")
    ap.add_argument("--out", default=str(HERE / "results" / "contention.json"))
    a = ap.parse_args()
    if a.child:
        return child(a)

    sys.path.insert(0, str(HERE))
    from make_random_gguf import SIZES, ensure  # noqa: E402

    if a.size not in SIZES:
        ap.error(f"--size must be one of {list(SIZES)}")
    model = Path(a.model) if a.model else ensure(Path(a.workdir), a.size, a.quant)
    builds = dict(b.split("=", 1) for b in a.owl) if a.owl else {"owl": str(REPO / "python")}
    builds = {k: str(Path(v).resolve()) for k, v in builds.items()}
    default_threads = int(subprocess.run(
        [sys.executable, "-c", "from owl_cpp import _core; print(_core.default_threads())"],
        env={**os.environ, "PYTHONPATH": next(iter(builds.values()))}, capture_output=True, text=True,
        check=True).stdout)
    threads = []
    for t in a.threads:
        n = default_threads if t == "default" else int(t)
        if n not in threads:
            threads.append(n)
    engines = [(label, "owl", sys.executable, path) for label, path in builds.items()]
    if a.llama_python:
        engines.append(("llama.cpp", "llama", a.llama_python, None))
    labels = [e[0] for e in engines]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the competitors' finally runs
    rows = []
    started = time.time()
    print_header(labels)
    for k in a.competitors:
        with competitors(k):
            load_avg = []
            runs = {(label, t): [] for label in labels for t in threads}
            for _ in range(a.reps):
                for t in threads:
                    for label, engine, python, path in engines:
                        runs[(label, t)].append(run_child(python, engine, model, t, a.tg, a.max_s, path))
                        load_avg.append(os.getloadavg()[0])
            for t in threads:
                row = {"competitors": k, "threads": t, "default": t == default_threads,
                       "load_avg_1m": statistics.median(load_avg)}
                for label in labels:
                    r = runs[(label, t)]
                    row[label] = {"tg": statistics.median(x["tg"] for x in r), "pp": statistics.median(x["pp"] for x in r),
                                  "cpu_ms_per_token": statistics.median(x["cpu_ms_per_token"] for x in r), "runs": r}
                # Paired ratios (the runs of one repetition ran back to back): steadier than a ratio of medians
                # when the machine's other load drifts.
                row["ratios"] = {title: statistics.median(x["tg"] / y["tg"] for x, y in zip(row[n]["runs"], row[d]["runs"]))
                                 for title, n, d in ratio_columns(labels)}
                rows.append(row)
                print_row(row, labels)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "model": model.name, "tg": a.tg, "prompt": PROMPT,
              "reps": a.reps, "default_threads": default_threads, "cpus": os.cpu_count(), "engines": labels,
              "owl_builds": builds, "wall_s": time.time() - started, "rows": rows,
              "command": " ".join([Path(sys.executable).name] + sys.argv)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"\n{model.name}, decode of {a.tg} tokens after a {PROMPT}-token prompt, median of {a.reps}; "
          f"{os.cpu_count()} CPUs; took {time.time() - started:.0f} s; JSON: {a.out}")


def ratio_columns(labels: list[str]) -> list[tuple[str, str, str]]:
    """(title, numerator, denominator) of the tg ratio columns (median of per-repetition ratios): the last owl
    build against the first one, and against llama.cpp."""
    owls = [x for x in labels if x != "llama.cpp"]
    cols = []
    if len(owls) > 1:
        cols.append((f"{owls[-1]}/{owls[0]}", owls[-1], owls[0]))
    if "llama.cpp" in labels:
        cols.append((f"{owls[-1]}/llama", owls[-1], "llama.cpp"))
    return cols


def print_header(labels: list[str]) -> None:
    cols = ["busy procs", "threads"] + [f"{x} tg t/s" for x in labels] + [c[0] for c in ratio_columns(labels)]
    cols += [f"{x} pp t/s" for x in labels] + ["load avg"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---:" for _ in cols) + "|", flush=True)


def print_row(row: dict, labels: list[str]) -> None:
    vals = [str(row["competitors"]), f"{row['threads']}{' (default)' if row['default'] else ''}"]
    vals += [f"{row[x]['tg']:.2f}" for x in labels]
    vals += [f"{row['ratios'][title]:.2f}" for title, _, _ in ratio_columns(labels)]
    vals += [f"{row[x]['pp']:.1f}" for x in labels] + [f"{row['load_avg_1m']:.1f}"]
    print("| " + " | ".join(vals) + " |", flush=True)


if __name__ == "__main__":
    main()
