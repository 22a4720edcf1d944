"""Where one image's time goes in a batch job, and how each stage scales from 1 to 2 threads.

For each model and each thread count (the decoder context's n_threads and the vision tower's onnxruntime
intra-op threads), per image, medians over --reps rounds with the thread counts interleaved (a loaded machine
drifts; interleaving keeps the ratios fair):
  prep      read + decode + cut + resize + normalize (Python/numpy/Pillow, one thread whatever the setting)
  vision    the image's crops through the vision tower in one run, as chat() runs them (ms per image, and
            per crop)
  prefill   the whole chat prompt evaluated from an empty context (image attached)
  prefill2  the same prompt on a context that holds another image's prompt (what a batch worker pays: the
            system prompt and chat header are reused)
  decode    one token (ms per token, over --tokens greedy steps)
  hash      content keys of the crops (the image cache's blake2b)
  *_cpu     CPU time of the process over the stage (all its threads): on a loaded machine wall times of 2
            threads mean little, but 2 x cpu(t=1) / cpu(t=2) bounds what 2 threads can gain on a quiet one
"scaling" is the 1-thread time over the 2-thread time: two independent 1-thread pipelines beat one 2-thread
pipeline on 2 cores when the stages' scaling is below 2.

  python bench/bench_batch_stages.py --models demo 1b --reps 5
Writes bench/results/batch_stages.json. Not part of the test run.
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
from bench_batch import PROMPT, make_images, model_dirs  # noqa: E402


def stage_times(m, paths: list, tokens: int) -> dict:
    """ms per image of each stage (means over `paths`) on model m (its threads as loaded)."""
    from owl_cpp.context_slot import PreparedPrompt
    from owl_cpp.image_cache import content_key
    from owl_cpp.messages import user_message

    out = {k: [] for k in ("prep", "hash", "vision", "vision_per_crop", "vision_cpu", "prefill", "prefill_cpu",
                           "prefill2", "decode_per_token", "decode_cpu_per_token")}
    cpu = time.process_time                 # every thread of the process: spinning and overhead show up here
    slot = m._contexts.new_slot()
    other = None
    for p in paths:
        t0 = time.perf_counter()
        ex = m._expand([str(p)], True)
        t1 = time.perf_counter()
        views = np.concatenate([e.views for e in ex])
        keys = [content_key(v) for v in views]
        t2, c2 = time.perf_counter(), cpu()
        m.vision.session.run(["image_embeds"], {"pixel_values": views})
        t3, c3 = time.perf_counter(), cpu()
        msg, _ = user_message(PROMPT, [str(p)])
        _, prep, _ = m._prepare([msg], ex)
        if other is not None:               # a context holding another image's prompt: the prefix is reused
            slot.reset()
            slot.prefill(other)
            t4 = time.perf_counter()
            slot.prefill(prep)
            out["prefill2"].append(time.perf_counter() - t4)
        slot.reset()
        t4, c4 = time.perf_counter(), cpu()
        slot.prefill(prep)
        t5, c5 = time.perf_counter(), cpu()
        for i in range(tokens):
            slot.append([7 + i % 5])
        t6, c6 = time.perf_counter(), cpu()
        other = prep
        out["prep"].append(t1 - t0)
        out["hash"].append(t2 - t1)
        out["vision"].append(t3 - t2)
        out["vision_per_crop"].append((t3 - t2) / len(views))
        out["vision_cpu"].append(c3 - c2)
        out["prefill"].append(t5 - t4)
        out["prefill_cpu"].append(c5 - c4)
        out["decode_per_token"].append((t6 - t5) / max(1, tokens))
        out["decode_cpu_per_token"].append((c6 - c5) / max(1, tokens))
    return {k: 1e3 * statistics.mean(v) for k, v in out.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["demo", "1b"])
    ap.add_argument("--images", type=int, default=8, help="images per round (1b: --images-1b)")
    ap.add_argument("--images-1b", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--one-b-layers", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=str(HERE / "models"))
    ap.add_argument("--out", default=str(HERE / "results" / "batch_stages.json"))
    a = ap.parse_args()

    import owl_cpp

    results = {"command": " ".join(["python"] + sys.argv), "cores": owl_cpp._core.default_threads(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench_stages_") as tmp:
        for name in a.models:
            model, _ = model_dirs(name, Path(a.workdir), a.one_b_layers)
            n = a.images_1b if name == "1b" else a.images
            paths = make_images(Path(tmp) / name, n)
            models = {t: owl_cpp.load(model, threads=t) for t in a.threads}
            for m in models.values():
                stage_times(m, paths[:1], 2)                # warm-up: pages the weights in
            runs = {t: [] for t in a.threads}
            for _ in range(a.reps):
                for t in a.threads:                           # interleaved
                    runs[t].append(stage_times(models[t], paths, a.tokens))
            med = {t: {k: statistics.median(r[k] for r in runs[t]) for k in runs[t][0]} for t in a.threads}
            results["models"][name] = {"ms_per_image": {str(t): med[t] for t in a.threads}}
            keys = list(med[a.threads[0]])
            print(f"{name}: ms per image (medians of {a.reps})")
            print("  stage                  " + "".join(f"{'t=' + str(t):>10}" for t in a.threads) + "   scaling")
            for k in keys:
                row = "".join(f"{med[t][k]:10.2f}" for t in a.threads)
                sc = med[a.threads[0]][k] / med[a.threads[-1]][k] if med[a.threads[-1]][k] > 0 else float("nan")
                print(f"  {k:<22} {row}   {sc:5.2f}x")
            del models
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
