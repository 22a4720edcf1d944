"""Which static int8 (QDQ) settings to ship for the Owl3 vision tower: every variant of
owl_export.vision_quant.STATIC_OPTIONS below against fp32 and dynamic int8, timed in the same run (interleaved
repetitions, medians, ratios to dynamic int8), cosine vs fp32 per held-out view (min and median).

The tower is SigLIP-so400m at 384 px with random weights (bench_vision.so400m_reference) cut to --layers encoder
layers (the speed ratios are per layer; the cosine loss grows with depth, so the chosen settings are measured
again at full depth by bench_vision.py). --outliers F gives 8 channels of every LayerNorm weight the factor F.

    python bench/vision_quant_sweep.py [--layers 6] [--threads 2] [--reps 5] [--outliers 0] [--views 8]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# name -> overrides of STATIC_OPTIONS (empty: the shipped settings)
VARIANTS = {
    "static (shipped)": {},
    "+ attention MatMuls": {"attention": True},
    "requantized MatMul outputs": {"float_outputs": False},
    "int8 activations (S8S8)": {"activation_type": "QInt8"},
    "symmetric activations": {"activation_symmetric": True},
    "+ Conv": {"op_types": ("MatMul", "Conv")},
    "+ Conv, Add, Mul (requantized)": {"op_types": ("MatMul", "Conv", "Add", "Mul"), "float_outputs": False},
    "per-tensor weights": {"per_channel": False},
    "reduce_range (7-bit)": {"reduce_range": True},
    "Percentile": {"calibrate_method": "Percentile"},
    "Entropy": {"calibrate_method": "Entropy"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--views", type=int, default=8, help="calibration views")
    ap.add_argument("--test-views", type=int, default=6)
    ap.add_argument("--outliers", type=float, default=0.0)
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default all)")
    ap.add_argument("--out", default=str(HERE / "results" / "vision_quant_sweep.json"))
    a = ap.parse_args()

    import torch
    from bench_vision import ort_session, so400m_reference
    from owl_export.onnx_common import compare, quantize_int8
    from owl_export.owl3.onnx_export import calibration_views, trace_vision
    from owl_export.vision_quant import quantize_static_qdq

    torch.set_num_threads(a.threads)
    ref = so400m_reference(a.layers + 1, a.outliers)           # hidden_states[-2]: layers + 1 in the config
    cal = calibration_views(384, a.views)
    test = calibration_views(384, a.test_views, first_seed=1000)   # held-out pictures
    work = Path(tempfile.mkdtemp(prefix="vq-sweep-"))
    fp32 = work / "fp32.onnx"
    trace_vision(ref, fp32, {})
    files = {"fp32": fp32, "dynamic int8": work / "dynamic.onnx"}
    quantize_int8(fp32, files["dynamic int8"])
    build_s = {}
    for k, (name, opts) in enumerate(VARIANTS.items()):
        if a.only and name not in a.only:
            continue
        files[name] = work / f"static{k}.onnx"
        t = time.perf_counter()
        quantize_static_qdq(fp32, files[name], cal, **opts)
        build_s[name] = time.perf_counter() - t
        print(f"built {name} in {build_s[name]:.0f} s", file=sys.stderr, flush=True)
    sessions = {n: ort_session(p, a.threads) for n, p in files.items()}
    want = [sessions["fp32"].run(None, {"pixel_values": test[i:i + 1]})[0] for i in range(len(test))]
    cos = {n: [compare(s.run(None, {"pixel_values": test[i:i + 1]})[0], want[i])["cosine"] for i in range(len(test))]
           for n, s in sessions.items()}
    one = test[:1]
    times = {n: [] for n in sessions}
    for n, s in sessions.items():
        s.run(None, {"pixel_values": one})                     # warm-up
    for _ in range(a.reps):                                    # interleaved: load changes hit every variant
        for n, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"pixel_values": one})
            times[n].append(time.perf_counter() - t)
    med = {n: 1e3 * statistics.median(v) for n, v in times.items()}
    best = {n: 1e3 * min(v) for n, v in times.items()}
    rows = [{"variant": n, "ms": med[n], "x_dynamic": med["dynamic int8"] / med[n], "x_fp32": med["fp32"] / med[n],
             "min_ms": best[n], "x_dynamic_min": best["dynamic int8"] / best[n],
             "cosine_min": min(cos[n]), "cosine_median": statistics.median(cos[n]),
             "mb": files[n].stat().st_size / 2**20, "build_s": build_s.get(n)} for n in sessions]
    print(f"SigLIP-so400m 384 px, {a.layers} layers, random weights (outliers {a.outliers}), {a.threads} threads, "
          f"{a.reps} reps; cosine vs fp32 over {len(test)} held-out views")
    print(f"{'variant':<34}{'ms':>8}{'x dyn':>8}{'x fp32':>8}{'min ms':>8}{'x dyn':>8}{'cos min':>10}{'cos med':>10}{'MB':>7}")
    for r in rows:
        print(f"{r['variant']:<34}{r['ms']:>8.0f}{r['x_dynamic']:>8.2f}{r['x_fp32']:>8.2f}"
              f"{r['min_ms']:>8.0f}{r['x_dynamic_min']:>8.2f}"
              f"{r['cosine_min']:>10.5f}{r['cosine_median']:>10.5f}{r['mb']:>7.0f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"layers": a.layers, "threads": a.threads, "reps": a.reps, "outliers": a.outliers,
                               "calibration_views": a.views, "test_views": a.test_views, "rows": rows,
                               "command": " ".join(["python"] + sys.argv)}, indent=1))
    print(f"JSON: {out}")
    for p in work.iterdir():
        p.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
