"""Micro benchmark of ops.matmul per kernel variant (generic / avx2 / avx2_vnni / avx512 / avx512_vnni / neon).

GEMV (decode, one token) on the matrices of a 1.5B-sized layer (ffn_up/gate 8960x1536 and ffn_down 1536x8960) in
Q4_0, Q8_0 and F16, with 1 and 2 threads: time per call and GB/s of weights streamed. Calls cycle through enough
copies of the matrix (>= --stream-mb in all) that the weights come from memory, not from the last-level cache.
Optionally prefill (--prefill T tokens per call) in GFLOP/s, batched decode (--tokens 1 2 4 8), and the load-time
repacked layouts (--packed, or --both-layouts for each side by side; Q4_1 / Q5_0 / Q5_1 / IQ4_NL are valid random
blocks, as speed does not depend on the values). Each number is the median of --reps calls, timed in
C++ on one persistent thread pool (ops.bench_matmul), taken in --rounds bursts interleaved across configurations.
Prints a table and writes JSON (bench/results/matmul.json).

    PYTHONPATH=python python bench/bench_matmul.py
    # F16 prefill on a CPU with AMX-BF16 runs on the tiles (system_info()["amx"], in the JSON); the AVX-512 panels:
    OWL_AMX=0 PYTHONPATH=python python bench/bench_matmul.py --isas avx512_vnni --types F16 --tokens 1 --prefill 512
    PYTHONPATH=python python bench/bench_matmul.py --isas avx2 --threads 1 2 4 --prefill 64
    # old (file layout) vs new (load-time x8 layout) for the other blocks of 32, at qwen2 shapes:
    PYTHONPATH=python python bench/bench_matmul.py --isas avx512_vnni --types IQ4_NL Q5_0 Q4_1 Q5_1 --threads 1 \
        --shapes 896x896 4864x896 896x4864 1536x8960 --tokens 1 --prefill 128 --both-layouts
    # Q4_K / Q5_K / Q6_K in the file's layout vs BlockQ4_Kx8 / BlockQ5_Kx8 / BlockQ6_Kx8 (decode and prefill):
    PYTHONPATH=python python bench/bench_matmul.py --isas avx512_vnni avx2 --types Q4_K Q5_K Q6_K --threads 1 \
        --shapes 1536x8960 8960x1536 1536x1536 --tokens 1 --prefill 128 --both-layouts
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from owl_cpp import _testing, system_info

HERE = Path(__file__).resolve().parent
TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14,
         "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "IQ4_NL": 20}
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
Q32_TYPES = ("Q4_1", "Q5_0", "Q5_1", "IQ4_NL")
PACKABLE = ("Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K") + Q32_TYPES  # types with a load-time layout (ops.matmul(..., packed=True))
SHAPES = [(8960, 1536), (1536, 8960)]  # rows x cols (output x input features)


def encode(w: np.ndarray, type_name: str) -> np.ndarray:
    if type_name == "F32":
        return w.astype(np.float32).view(np.uint8).reshape(-1)
    if type_name == "F16":
        return w.astype(np.float16).view(np.uint8).reshape(-1)
    if type_name in Q32_TYPES:  # valid blocks of random bytes (speed does not depend on the values)
        import sys
        sys.path.insert(0, str(HERE.parent / "tests"))
        from q32_quant import random_blocks

        return random_blocks(np.random.default_rng(1), type_name, *w.shape, scale=0.05).reshape(-1)
    if type_name in K_TYPES:  # the numpy K-quant quantizer of the tests (ggml's layouts)
        import sys
        sys.path.insert(0, str(HERE.parent / "tests"))
        from kquant_blocks import quantize

        return quantize(w, type_name)
    # Quantize with our own (ggml bit-compatible) quantizers: the gguf package is slow at these sizes.
    q = getattr(_testing.ops, f"quantize_{type_name.lower()}")(w.reshape(-1))
    return np.frombuffer(q, dtype=np.uint8)


def bench_one(raw: np.ndarray, type_name: str, rows: int, cols: int, copies: int, x: np.ndarray, threads: int,
              reps: int, packed: bool = False) -> list[float]:
    return list(_testing.ops.bench_matmul(raw, TYPES[type_name], rows, cols, copies, x, threads, reps, packed=packed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isas", nargs="+", default=None, help="kernel variants (default: all this CPU supports)")
    ap.add_argument("--types", nargs="+", default=["Q4_0", "Q8_0", "F16"], choices=list(TYPES))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--reps", type=int, default=50, help="timed calls per configuration (GEMV)")
    ap.add_argument("--prefill", type=int, default=0, help="also time T-token calls (0: GEMV only)")
    ap.add_argument("--prefill-reps", type=int, default=5)
    ap.add_argument("--tokens", nargs="+", type=int, default=[1],
                    help="tokens per call for the timed calls (batched decode: 1 2 4 8), each with --reps calls")
    ap.add_argument("--packed", action="store_true",
                    help="Q4_0 / Q8_0 / Q4_K / Q5_K / Q6_K / Q4_1 / Q5_0 / Q5_1 / IQ4_NL in the layout a model repacks them into at load "
                         "(where the kernels have one)")
    ap.add_argument("--both-layouts", action="store_true",
                    help="time each packable type in the file's layout and in the load-time one (old vs new)")
    ap.add_argument("--shapes", nargs="+", default=None,
                    help="ROWSxCOLS matrices (default: " + " ".join(f"{r}x{c}" for r, c in SHAPES) + ")")
    ap.add_argument("--stream-mb", type=float, default=128.0, help="total size of the copies cycled through")
    ap.add_argument("--rounds", type=int, default=5, help="bursts per configuration, interleaved")
    ap.add_argument("--out", default=str(HERE / "results" / "matmul.json"))
    a = ap.parse_args()

    supported = _testing.ops.supported_isas()
    isas = a.isas or supported
    for isa in isas:
        if isa not in supported:
            raise SystemExit(f"{isa} is not supported here (supported: {', '.join(supported)})")
    bandwidth = {}
    if hasattr(_testing, "measure_read_bandwidth"):
        for th in a.threads:
            bandwidth[th] = _testing.measure_read_bandwidth(1 << 30, th, 5)

    rng = np.random.default_rng(0)
    before = _testing.ops.active_isa()
    # Every configuration runs in --rounds short bursts, round-robin, so a slow spell of a shared machine hits all
    # of them alike; the reported figure is the median over all calls.
    configs = []
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes] if a.shapes else SHAPES
    for rows, cols in shapes:
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        for type_name in a.types:
            raw = encode(w, type_name)
            copies = max(1, int(np.ceil(a.stream_mb * 1e6 / raw.size)))
            big = np.tile(raw, copies)
            for T, reps in [(t, a.reps) for t in a.tokens] + ([(a.prefill, a.prefill_reps)] if a.prefill > 1 else []):
                x = rng.standard_normal((T, cols)).astype(np.float32)
                layouts = [False, True] if a.both_layouts else [a.packed]
                for isa in isas:
                    for th in a.threads:
                        for packed in layouts:
                            if packed and type_name not in PACKABLE:
                                continue
                            configs.append({"rows": rows, "cols": cols, "type": type_name, "isa": isa, "threads": th,
                                            "packed": packed, "T": T, "reps": reps, "weight_bytes": int(raw.size),
                                            "copies": copies, "_w": big, "_x": x, "_secs": []})
    try:
        for rnd in range(a.rounds):
            for c in configs:
                n = c["reps"] // a.rounds + (1 if rnd < c["reps"] % a.rounds else 0)
                if n:
                    _testing.ops.set_isa(c["isa"])
                    c["_secs"] += bench_one(c["_w"], c["type"], c["rows"], c["cols"], c["copies"], c["_x"],
                                            c["threads"], n, c["packed"])
    finally:
        _testing.ops.set_isa(before)
    rows_out = []
    header = (f"{'matrix':>10} {'type':>6} {'layout':>6} {'isa':>11} {'thr':>3} {'T':>3} {'median ms':>10} {'GB/s':>7} "
              f"{'GFLOP/s':>8}")
    print(header)
    print("-" * len(header))
    for c in configs:
        secs = c.pop("_secs")
        del c["_w"], c["_x"]
        med = statistics.median(secs)
        row = dict(c, median_s=med, min_s=min(secs), gbps=c["weight_bytes"] / med / 1e9,
                   gflops=2.0 * c["rows"] * c["cols"] * c["T"] / med / 1e9)
        rows_out.append(row)
        print(f"{c['rows']:>5}x{c['cols']:<4} {c['type']:>6} {'packed' if c['packed'] else 'file':>6} {c['isa']:>11} "
              f"{c['threads']:>3} {c['T']:>3} "
              f"{med * 1e3:>10.3f} {row['gbps']:>7.2f} {row['gflops']:>8.1f}")
    if bandwidth:
        print("\nread bandwidth (ops roofline): " + ", ".join(f"{th} thr {bw:.1f} GB/s" for th, bw in bandwidth.items()))
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "system_info": dict(system_info()),
              "read_bandwidth_gbs": {str(k): v for k, v in bandwidth.items()}, "rows": rows_out,
              "command": "python bench/bench_matmul.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(a).items() if k != "out" and v is not None)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"JSON: {a.out}")


if __name__ == "__main__":
    main()
