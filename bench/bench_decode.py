"""owl_cpp vs llama.cpp on the very same random-weight GGUFs at the real decoder sizes.

Prints a table and writes JSON: prompt processing (t/s for 128 and 512 tokens), decode t/s (64 tokens
after a 128-token prompt), load time and peak RSS, each the median of --reps runs with the engines
interleaved; the memory read bandwidth measured in the same run and decode as a fraction of the roofline
(bandwidth / bytes of weights read per token).

    python bench/bench_decode.py --llama-python /path/to/llama-venv/bin/python
    python bench/bench_decode.py --sizes qwen2-7b llama-7b --quants q4_0      # the big ones (slow to create)
    python bench/bench_decode.py --quants q4_1 q5_0 q5_1 iq4_nl --sizes qwen2-tiny --reps 1   # checks the rows
    python bench/bench_decode.py --baseline /tmp/owl_old --kv-f32   # vs an older build (a copy of its python/
                                                                    # owl_cpp package dir), and with an F32 KV cache
    python bench/bench_decode.py --llama-python ~/llama-env/bin/python --sizes qwen2-1.5b --quants q4_k_m q6_k

K-quant names (q4_k_m, q5_k_m, q6_k, q3_k_m, q2_k, ...) with --llama-python are llama.cpp's own quantizer's
output from the f16 file ({size}-{quant}-llama.gguf), so both engines run the file people download; without it
the pure types q2_k .. q6_k are random blocks (make_random_gguf.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_random_gguf import LLAMA_FTYPES, QTYPES, SIZES, ensure, llama_quantized  # noqa: E402


def run_engine(python: str, engine: str, model: Path, threads: int, extra=(), pythonpath=None, tg_after=128) -> dict:
    cmd = [python, str(HERE / "engine_runner.py"), "--engine", engine, "--model", str(model), "--threads", str(threads),
           "--tg-after", str(tg_after), *extra]
    env = dict(os.environ)
    if pythonpath:  # another build of owl_cpp first on the path
        env["PYTHONPATH"] = os.pathsep.join([pythonpath] + [p for p in [env.get("PYTHONPATH")] if p])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if res.returncode != 0:
        how = f"signal {-res.returncode}" if res.returncode < 0 else f"exit code {res.returncode}"
        raise RuntimeError(f"{engine} failed on {model.name} ({how}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bytes_per_token(model: Path) -> int:
    """Weights a decode step reads: every matrix once; of the embedding table only one row (unless tied)."""
    from owl_cpp import _core

    tensors = {t["name"]: t["nbytes"] for t in _core.GGUFFile.open(str(model)).tensors()}
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors["token_embd.weight"]
    return total


def median_of(runs: list[dict], key) -> float:
    return statistics.median(key(r) for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["qwen2-0.5b", "qwen2-1.5b"], choices=list(SIZES))
    ap.add_argument("--quants", nargs="+", default=["q4_0", "q8_0", "f16"],
                    choices=sorted(set(QTYPES) | set(LLAMA_FTYPES)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=str(HERE / "models"), help="where the random GGUFs are cached")
    ap.add_argument("--llama-python", default=os.environ.get("OWL_LLAMA_PYTHON"),
                    help="python of an environment with llama-cpp-python (omit to time owl_cpp alone)")
    ap.add_argument("--baseline", help="a directory holding an older build's owl_cpp package, timed as 'base'")
    ap.add_argument("--kv-f32", action="store_true", help="also time owl with an F32 KV cache ('owl-f32')")
    ap.add_argument("--tg-after", type=int, default=128, help="decode after a prompt of this many tokens")
    ap.add_argument("--llama-src", default="f16", choices=["f16", "q8_0"],
                    help="the file llama.cpp's quantizer makes the K-quant mixes from (q8_0 for 7B: no 13.5 GB f16)")
    ap.add_argument("--out", default=str(HERE / "results" / "decode.json"))
    a = ap.parse_args()

    from owl_cpp import _testing, system_info

    bandwidth = _testing.measure_read_bandwidth(1 << 30, a.threads, 5)
    # name -> (python, engine_runner engine, extra args, PYTHONPATH to put first)
    spec = {"owl": (sys.executable, "owl", (), None)}
    if a.kv_f32:
        spec["owl-f32"] = (sys.executable, "owl", ("--kv-type", "f32"), None)
    if a.baseline:
        spec["base"] = (sys.executable, "owl", (), a.baseline)
    if a.llama_python:
        spec["llama"] = (a.llama_python, "llama", (), None)
    engines = list(spec)
    rows = []
    for size in a.sizes:
        for quant in a.quants:
            if quant in LLAMA_FTYPES and a.llama_python:
                model = llama_quantized(Path(a.workdir), size, quant, a.llama_python, a.threads, a.llama_src)
            elif quant in QTYPES:
                model = ensure(Path(a.workdir), size, quant)
            else:
                raise SystemExit(f"{quant} is a llama.cpp mix: give --llama-python to make it with llama.cpp's quantizer")
            runs = {e: [] for e in engines}
            failed = {}  # a comparison engine that crashed on this file (llama.cpp's AMX build does on some CPUs)
            for _ in range(a.reps):
                for e in engines:  # interleaved so slow drifts of a shared machine hit both alike
                    if e in failed:
                        continue
                    python, engine, extra, path = spec[e]
                    try:
                        runs[e].append(run_engine(python, engine, model, a.threads, extra, path, a.tg_after))
                    except RuntimeError as err:
                        if e == "owl":
                            raise
                        failed[e] = str(err)
                        print(f"note: {str(err).splitlines()[0]}; the row is kept without {e}", file=sys.stderr)
            bpt = bytes_per_token(model)
            row = {"model": size, "quant": quant, "bytes_per_token": bpt, "roofline_tg": bandwidth * 1e9 / bpt}
            for e in engines:
                r = runs[e]
                if e in failed:
                    row[e] = {"failed": failed[e][-1000:]}
                    continue
                row[e] = {"pp128": median_of(r, lambda x: x["pp"]["128"]), "pp512": median_of(r, lambda x: x["pp"]["512"]),
                          "tg": median_of(r, lambda x: x["tg"]), "load_s": median_of(r, lambda x: x["load_s"]),
                          "peak_rss_mb": median_of(r, lambda x: x["peak_rss_mb"]),
                          "kv_bytes_per_token": r[0].get("kv_bytes_per_token"), "runs": r}
            rows.append(row)
            print_row(row, engines, header=len(rows) == 1)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": a.threads, "reps": a.reps, "tg_after": a.tg_after,
              "read_bandwidth_gbs": bandwidth, "system_info": dict(system_info()), "rows": rows,
              "command": " ".join([Path(sys.executable).name] + sys.argv)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"\nread bandwidth {bandwidth:.1f} GB/s ({a.threads} threads); JSON: {a.out}")


def print_row(row: dict, engines: list[str], header: bool) -> None:
    if header:
        cols = ["model", "quant", "MB/tok", "owl pp128", "owl pp512", "owl tg", "%roof"]
        if "llama" in engines:
            cols += ["llama pp128", "llama pp512", "llama tg", "tg x", "pp512 x"]
        if "base" in engines:
            cols += ["base pp512", "base tg", "tg x base", "pp512 x base"]
        if "owl-f32" in engines:
            cols += ["f32kv tg", "KV KB/tok", "f32 KB/tok"]
        cols += ["owl load s", "owl RSS MB"]
        print(" | ".join(f"{c:>11}" for c in cols))
    o = row["owl"]
    vals = [row["model"], row["quant"], f"{row['bytes_per_token'] / 1e6:.0f}", f"{o['pp128']:.1f}", f"{o['pp512']:.1f}",
            f"{o['tg']:.2f}", f"{100 * o['tg'] / row['roofline_tg']:.0f}%"]
    if "llama" in engines and "failed" in row["llama"]:
        vals += ["failed", "-", "-", "-", "-"]
    elif "llama" in engines:
        l = row["llama"]
        vals += [f"{l['pp128']:.1f}", f"{l['pp512']:.1f}", f"{l['tg']:.2f}", f"{o['tg'] / l['tg']:.2f}",
                 f"{o['pp512'] / l['pp512']:.2f}"]
    if "base" in engines and "failed" in row["base"]:
        vals += ["failed", "-", "-", "-"]
    elif "base" in engines:
        b = row["base"]
        vals += [f"{b['pp512']:.1f}", f"{b['tg']:.2f}", f"{o['tg'] / b['tg']:.2f}", f"{o['pp512'] / b['pp512']:.2f}"]
    if "owl-f32" in engines and "failed" in row["owl-f32"]:
        vals += ["failed", "-", "-"]
    elif "owl-f32" in engines:
        f = row["owl-f32"]
        vals += [f"{f['tg']:.2f}", f"{o['kv_bytes_per_token'] / 1024:.0f}", f"{f['kv_bytes_per_token'] / 1024:.0f}"]
    vals += [f"{o['load_s']:.2f}", f"{o['peak_rss_mb']:.0f}"]
    print(" | ".join(f"{v:>11}" for v in vals), flush=True)


if __name__ == "__main__":
    main()
