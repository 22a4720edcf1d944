"""mPLUG-Owl3 with many images: time and memory on random weights at the 1B size (docs/owl3.md 1.1).

For 1, 8, 32 and 128 images (729 visual tokens each) it measures: visual K/V preparation (v_kv_proj + MI-Rope
in the 4 hyper layers, done once per image), prefill of the text prompt (one 5-token `<|image|>` placeholder
per image), decode t/s, and the decoder state held per image — next to what a design that concatenates the
729 visual tokens of every image into the sequence would hold in its KV cache (all 24 layers) and would have
to prefill.

    python bench/bench_owl3_images.py [--quant q8_0] [--images 1 8 32 128] [--threads 2]

The vision tower (SigLIP-so400m, one 384x384 crop per image) is timed by bench/bench_vision.py; its
per-crop time multiplies the image count.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_random_gguf import ensure  # noqa: E402

P = 729  # visual tokens per image / crop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="q8_0", choices=["q4_0", "q8_0", "f16"])
    ap.add_argument("--images", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--workdir", default=str(HERE / "models"))
    ap.add_argument("--out", default=str(HERE / "results" / "owl3_images.json"))
    a = ap.parse_args()

    from owl_cpp import _core

    path = ensure(Path(a.workdir), "owl3-1b", a.quant)
    model = _core.Model.load(str(path))
    hp = model.hparams
    E = hp["n_embd"]
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'images':>6} | {'vis K/V ms':>10} | {'prefill tok':>11} | {'prefill ms':>10} | {'decode t/s':>10} | "
          f"{'state/img MB':>12} | {'concat KV/img MB':>16} | {'concat prefill tok':>18}")
    for n in a.images:
        header = [151644, 8948, 198, 151645, 198, 151644, 872, 198]       # ChatML header ids (values irrelevant)
        ids, starts = list(header), []
        for _ in range(n):
            starts.append(len(ids))
            ids += [27, 91, 1805, 91, 29, 198]                             # "<|image|>" + "\n"
        ids += [3838, 525, 1493, 30, 151645, 198, 151644, 77091, 198]
        ctx = _core.Context(model, len(ids) + a.decode + 8, a.threads, 512)
        embeds = (rng.standard_normal((P, E)) * 0.5).astype(np.float32)
        t0 = time.perf_counter()
        for s in starts:
            ctx.add_image(embeds, s)
        t1 = time.perf_counter()
        logits = ctx.eval(ids)
        t2 = time.perf_counter()
        tok = int(np.argmax(logits))
        for _ in range(a.decode):
            tok = int(np.argmax(ctx.eval([tok])))
        t3 = time.perf_counter()
        per_image = ctx.visual_bytes / n
        concat_kv = P * ctx.kv_bytes_per_token
        row = {"images": n, "visual_kv_ms": 1e3 * (t1 - t0), "prefill_tokens": len(ids), "prefill_ms": 1e3 * (t2 - t1),
               "decode_tps": a.decode / (t3 - t2), "state_per_image_bytes": per_image,
               "concat_kv_per_image_bytes": concat_kv, "concat_prefill_tokens": len(ids) - 6 * n + P * n}
        rows.append(row)
        print(f"{n:>6} | {row['visual_kv_ms']:>10.0f} | {len(ids):>11} | {row['prefill_ms']:>10.0f} | "
              f"{row['decode_tps']:>10.2f} | {per_image / 1e6:>12.2f} | {concat_kv / 1e6:>16.2f} | "
              f"{row['concat_prefill_tokens']:>18}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"quant": a.quant, "threads": a.threads, "rows": rows,
                                       "command": " ".join(["python"] + sys.argv)}, indent=1))
    print(f"JSON: {a.out}")


if __name__ == "__main__":
    main()
