"""What mPLUG-Owl2's modality-adaptive module costs: the 7B decoder with its image branch (random weights) next
to the plain LLaMA-2-7B file of the same size, in owl_cpp and in llama.cpp, in one run.

Per quant type, each the median of --reps fresh processes, engines interleaved:
  owl  llama-7b            plain LLaMA file: prefill of 128 tokens, then 64 decode steps
  owl  owl2-7b             the Owl2 file, text only (every token takes the text branch)
  owl  owl2-7b + image     the same 128 positions with one image's 65 rows spliced in at position 6 (the image
                           branch's norms and K/V for those rows; three pieces instead of one)
  llama.cpp llama-7b       the plain file (--llama-python)
and decode as a fraction of the memory-bandwidth roofline (bytes of the text-branch weights per token).

    python bench/bench_owl2.py --llama-python $OWL_LLAMA_PYTHON [--quants q4_0 q8_0] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_decode import bytes_per_token, median_of, run_engine  # noqa: E402
from make_random_gguf import ensure  # noqa: E402

ENGINES = {  # name -> (engine, model size, extra engine_runner args)
    "owl llama": ("owl", "llama-7b", ()),
    "owl owl2": ("owl", "owl2-7b", ()),
    "owl owl2+img": ("owl", "owl2-7b", ("--image-rows", "65")),
    "llama.cpp llama": ("llama", "llama-7b", ()),
}


def text_branch_bytes(model: Path) -> int:
    """What a decode step reads: bytes_per_token without the image branch (blk.N.img.*), which text tokens skip."""
    from owl_cpp import _core

    img = sum(t["nbytes"] for t in _core.GGUFFile.open(str(model)).tensors() if ".img." in t["name"])
    return bytes_per_token(model) - img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quants", nargs="+", default=["q4_0", "q8_0"], choices=["q4_0", "q8_0", "f16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tg", type=int, default=32, help="decode steps after the 128-token prompt")
    ap.add_argument("--workdir", default=str(HERE / "models"), help="where the random GGUFs are cached")
    ap.add_argument("--llama-python", default=os.environ.get("OWL_LLAMA_PYTHON"),
                    help="python of an environment with llama-cpp-python (omit to time owl_cpp alone)")
    ap.add_argument("--out", default=str(HERE / "results" / "owl2_decode.json"))
    a = ap.parse_args()

    from owl_cpp import _testing, system_info

    bandwidth = _testing.measure_read_bandwidth(1 << 30, a.threads, 5)
    engines = [e for e in ENGINES if a.llama_python or not e.startswith("llama.cpp")]
    rows = []
    print(f"{'quant':>6} | {'engine':>16} | {'pp128 t/s':>9} | {'tg t/s':>7} | {'%roof':>5} | {'tg x llama':>10} | "
          f"{'load s':>6} | {'RSS MB':>7}")
    for quant in a.quants:
        runs = {e: [] for e in engines}
        for _ in range(a.reps):
            for e in engines:   # interleaved: slow drifts of a shared machine hit every engine alike
                engine, size, extra = ENGINES[e]
                python = a.llama_python if engine == "llama" else sys.executable
                model = ensure(Path(a.workdir), size, quant)
                runs[e].append(run_engine(python, engine, model, a.threads,
                                          ("--pp", "128", "--tg", str(a.tg), *extra)))
        row = {"quant": quant, "engines": {}}
        for e in engines:
            engine, size, _ = ENGINES[e]
            bpt = text_branch_bytes(ensure(Path(a.workdir), size, quant))
            r = runs[e]
            row["engines"][e] = {"pp128": median_of(r, lambda x: x["pp"]["128"]), "tg": median_of(r, lambda x: x["tg"]),
                                 "load_s": median_of(r, lambda x: x["load_s"]),
                                 "peak_rss_mb": median_of(r, lambda x: x["peak_rss_mb"]),
                                 "bytes_per_token": bpt, "roofline_tg": bandwidth * 1e9 / bpt, "runs": r}
        ref = row["engines"].get("llama.cpp llama")
        for e, v in row["engines"].items():
            ratio = f"{v['tg'] / ref['tg']:.2f}" if ref else "-"
            print(f"{quant:>6} | {e:>16} | {v['pp128']:>9.1f} | {v['tg']:>7.2f} | "
                  f"{100 * v['tg'] / v['roofline_tg']:>4.0f}% | {ratio:>10} | {v['load_s']:>6.2f} | {v['peak_rss_mb']:>7.0f}",
                  flush=True)
        rows.append(row)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": a.threads, "reps": a.reps,
              "read_bandwidth_gbs": bandwidth, "system_info": dict(system_info()), "rows": rows,
              "command": " ".join([Path(sys.executable).name] + sys.argv)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"\nread bandwidth {bandwidth:.1f} GB/s ({a.threads} threads); JSON: {a.out}")


if __name__ == "__main__":
    main()
