"""Serving throughput: aggregate decode tokens/s and time to first token for 1, 2, 4, 8 concurrent conversations
against owl-server (--parallel = conversations) and llama.cpp's server (llama-cpp-python's `llama_cpp.server`,
run with the llama-cpp-python environment's python), on random-weight GGUFs (bench/make_random_gguf.py).

Each conversation is a different prompt sent to /v1/completions, streamed, greedy, `max_tokens` new tokens
(ignore_eos on owl-server; random weights almost never produce the end token, and a conversation that stops early
is counted by the tokens it did produce). Aggregate tokens/s = all generated tokens / wall time from the first
request sent to the last answer done; TTFT = time from a request sent to its first text chunk (mean and max over
the conversations). llama-cpp-python's server has one context and answers one request at a time (it has no
parallel-slot option), so there the conversations queue: its row N is N requests queued on one slot.

  python bench/bench_server.py                        # 0.5B and 1.5B, 1/2/4/8 conversations, both servers
  python bench/bench_server.py --sizes qwen2-0.5b --conversations 1 4 --tokens 32 --no-llama

Not part of the test run. Writes bench/results/server.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from make_random_gguf import ensure  # noqa: E402

LLAMA_PYTHON = os.path.expanduser("~/llama-env/bin/python")
PROMPTS = ["The history of the city begins", "Once upon a time in a small village", "def fibonacci(n):\n",
           "The recipe calls for three eggs and", "In the year 1850, the railway", "Dear committee members, I am",
           "The theorem states that every", "Weather report for the coast:"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list, port: int, env=None, timeout: float = 180.0) -> subprocess.Popen:
    log = tempfile.TemporaryFile()             # a pipe nobody reads would fill up and block the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{cmd[:3]} exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd[:3]} did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def one(url: str, prompt: str, tokens: int, extra: dict, t_go: float, out: dict) -> None:
    body = {"model": "x", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    first, chunks, usage_tokens, finish = None, 0, None, None
    with httpx.Client(timeout=600) as http:
        with http.stream("POST", url + "/v1/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if ev.get("usage"):
                    usage_tokens = ev["usage"].get("completion_tokens")
                for c in ev.get("choices") or []:
                    if c.get("text"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - t_go
                    finish = c.get("finish_reason") or finish
    n = usage_tokens if usage_tokens is not None else (tokens if finish == "length" else chunks)
    out.update(ttft=first, tokens=n, end=time.perf_counter())


def run_row(url: str, n: int, tokens: int, extra: dict) -> dict:
    one(url, "Warm up", 4, extra, time.perf_counter(), {})
    results = [{} for _ in range(n)]
    t_go = time.perf_counter()
    threads = [threading.Thread(target=one, args=(url, PROMPTS[i % len(PROMPTS)], tokens, extra, t_go, results[i]))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t_go
    total = sum(r["tokens"] for r in results)
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    return {"conversations": n, "tokens": total, "wall_s": wall, "tokens_per_s": total / wall,
            "ttft_mean_s": sum(ttfts) / len(ttfts), "ttft_max_s": max(ttfts)}


def bench_owl(model: Path, ns: list, tokens: int, threads: int, n_ctx: int, batch: bool) -> list:
    rows = []
    for n in ns:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "OWL_BATCH_DECODE": "1" if batch else "0"}
        proc = start([sys.executable, "-m", "owl_cpp.server", "--model", str(model), "--port", str(port),
                      "--parallel", str(n), "--threads", str(threads), "-c", str(n_ctx), "--no-web-page"], port, env)
        try:
            rows.append(run_row(f"http://127.0.0.1:{port}", n, tokens, {"ignore_eos": True}))
        finally:
            stop(proc)
        print(f"  owl   n={n}: {rows[-1]['tokens_per_s']:.1f} tok/s, ttft {rows[-1]['ttft_mean_s']:.2f} s", flush=True)
    return rows


def bench_llama(model: Path, ns: list, tokens: int, threads: int, n_ctx: int) -> list:
    port = free_port()
    proc = start([LLAMA_PYTHON, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
                  "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx),
                  "--interrupt_requests", "False"], port)
    rows = []
    try:
        for n in ns:
            rows.append(run_row(f"http://127.0.0.1:{port}", n, tokens, {}))
            print(f"  llama n={n}: {rows[-1]['tokens_per_s']:.1f} tok/s, ttft {rows[-1]['ttft_mean_s']:.2f} s",
                  flush=True)
    finally:
        stop(proc)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["qwen2-0.5b", "qwen2-1.5b"])
    ap.add_argument("--quant", default="q8_0")
    ap.add_argument("--conversations", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=512, help="per owl-server context; llama.cpp's one context gets this")
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--no-batch", action="store_true", help="owl-server with OWL_BATCH_DECODE=0")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "server.json"))
    args = ap.parse_args()

    import owl_cpp._core as core
    batcher = "decode_step" if hasattr(core, "decode_step") else "fallback (context by context)"
    if args.no_batch:
        batcher = "off"
    results = {"tokens_per_conversation": args.tokens, "threads": args.threads, "quant": args.quant,
               "owl_batcher": batcher, "sizes": {}}
    for size in args.sizes:
        model = ensure(ROOT / "bench" / "models", size, args.quant)
        print(f"{size} {args.quant} ({batcher}):", flush=True)
        entry = {"owl": bench_owl(model, args.conversations, args.tokens, args.threads, args.n_ctx, not args.no_batch)}
        if not args.no_llama:
            entry["llama_cpp"] = bench_llama(model, args.conversations, args.tokens, args.threads, args.n_ctx)
        results["sizes"][size] = entry
        write(args.out, results)                # after each size: a long run stopped half-way keeps what it has

    print(f"\n{'model':<12} {'conv':>4} | {'owl tok/s':>9} {'x1':>5} {'ttft s':>7} | {'llama tok/s':>11} {'ttft s':>7}")
    for size, entry in results["sizes"].items():
        base = entry["owl"][0]["tokens_per_s"]
        for i, row in enumerate(entry["owl"]):
            ll = entry.get("llama_cpp", [None] * len(entry["owl"]))[i]
            ll_s = f"{ll['tokens_per_s']:>11.1f} {ll['ttft_mean_s']:>7.2f}" if ll else f"{'-':>11} {'-':>7}"
            print(f"{size:<12} {row['conversations']:>4} | {row['tokens_per_s']:>9.1f} {row['tokens_per_s'] / base:>5.2f} "
                  f"{row['ttft_mean_s']:>7.2f} | {ll_s}")
    write(args.out, results)
    print(f"wrote {args.out}")


def write(path: str, results: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
