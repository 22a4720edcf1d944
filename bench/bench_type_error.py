"""What each GGUF tensor type costs in accuracy when owl_cpp runs it, next to llama.cpp on the very same files.

One F16 GGUF (a synthetic qwen2 with trained-like weight statistics, or --gguf FILE, e.g. bench/models'
random-weight qwen2-0.5b-f16.gguf at the real size) is quantized by llama.cpp's own quantizer
(llama_model_quantize) to every type we load; both engines then evaluate the F16 file and each quantized file
on the same random-id prompts, and each position's next-token logits are compared with that engine's own F16
logits: relative logit error (RMS of the difference / RMS of the F16 logits), KL(F16 || quantized) and top-1
agreement. The last column compares the two engines on the same quantized file (relative error of owl's
logits vs llama.cpp's): quantization error far above it means the kernels add nothing of their own.

    python bench/bench_type_error.py --llama-python ~/llama-env/bin/python                       # synthetic 4 x 256
    python bench/bench_type_error.py --llama-python ~/llama-env/bin/python --synthetic 8x512
    python bench/bench_type_error.py --llama-python ~/llama-env/bin/python --gguf bench/models/qwen2-0.5b-f16.gguf

Random weights are not a trained model: deep random networks amplify weight noise, so the absolute KL says
little about what a real model loses; the ordering of the types and the two engines' agreement are the point.
Prints a table and writes JSON (bench/results/type_error.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "export"))
sys.path.insert(0, str(HERE.parent / "python"))

from bench_quant_error import compare, llama, synthetic_checkpoint  # noqa: E402

# llama_ftype of each file type llama.cpp's quantizer makes (llama.h); the K names are its usual mixes.
FTYPES = {"q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q5_1": 9, "q5_0": 8, "q4_k_m": 15, "q4_1": 3, "q4_0": 2,
          "iq4_nl": 25, "q3_k_m": 12, "q2_k": 10}


def owl_logits(path: Path, ids: list[list[int]], n_ctx: int, threads: int, out: Path) -> None:
    """owl_cpp's logits of every position of every prompt, saved as llama's runner saves them."""
    import owl_cpp

    m = owl_cpp.load(str(path), n_ctx=n_ctx, threads=threads)
    res = {}
    for i, seq in enumerate(ids):
        m.reset()
        res[f"p{i}"] = np.asarray(m._ctx.eval(list(seq), all_logits=True, return_logits=True), np.float32)
    np.savez(out, **res)
    del m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-python", required=True, help="python of an environment with llama-cpp-python")
    p.add_argument("--gguf", type=Path, help="an F16 GGUF to start from (default: a synthetic checkpoint)")
    p.add_argument("--synthetic", default="4x256", help="LAYERSxHIDDEN of the synthetic model")
    p.add_argument("--quants", nargs="+", default=list(FTYPES), choices=list(FTYPES))
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, help="keep the files here (default: a temporary directory, removed)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "type_error.json")
    a = p.parse_args()
    import gguf

    work = a.work or Path(tempfile.mkdtemp(prefix="type_error_"))
    work.mkdir(parents=True, exist_ok=True)
    if a.gguf:
        f16, desc = a.gguf, f"{a.gguf.name}"
    else:
        from owl_export.convert_text import convert_text_model

        layers, hidden = map(int, a.synthetic.split("x"))
        f16 = work / "f16.gguf"
        convert_text_model(synthetic_checkpoint(work / "synthetic", layers, hidden), f16, quant="f16", progress=False)
        desc = f"synthetic qwen2 {layers} layers x {hidden} (t-distributed, scaled rows/channels, outliers)"
    n_vocab = next(int(t.shape[1]) for t in gguf.GGUFReader(f16).tensors if t.name == "token_embd.weight")
    rng = np.random.default_rng(0)
    ids = [[int(v) for v in rng.integers(0, min(n_vocab, 1000), a.prompt_len)] for _ in range(a.prompts)]
    n_ctx = max(256, a.prompt_len + 8)

    def evaluate(path: Path) -> tuple[np.lib.npyio.NpzFile, np.lib.npyio.NpzFile]:
        owl_out, llama_out = work / f"{path.stem}.owl.npz", work / f"{path.stem}.llama.npz"
        owl_logits(path, ids, n_ctx, a.threads, owl_out)
        llama(a.llama_python, dict(op="eval", model=str(path), n_ctx=n_ctx, threads=a.threads, ids=ids,
                                   kv_type=1, out=str(llama_out)))  # an F16 KV cache, as owl's default
        return np.load(owl_out), np.load(llama_out)

    ref_owl, ref_llama = evaluate(f16)
    rows = [{"quant": "f16", "file_mib": f16.stat().st_size / 2**20,
             "owl_vs_llama_rel_err": compare(ref_llama, ref_owl)["rel_logit_err"]}]
    print(f"f16: owl vs llama.cpp rel err {rows[0]['owl_vs_llama_rel_err']:.5f}", flush=True)
    for quant in a.quants:
        path = work / f"{quant}.gguf"
        q = llama(a.llama_python, dict(op="quantize", src=str(f16), dst=str(path), ftype=FTYPES[quant],
                                       threads=a.threads))
        if q["rc"] != 0:
            raise RuntimeError(f"llama_model_quantize {quant} returned {q['rc']}")
        got_owl, got_llama = evaluate(path)
        row = {"quant": quant, "file_mib": path.stat().st_size / 2**20,
               "owl": compare(ref_owl, got_owl), "llama": compare(ref_llama, got_llama),
               "owl_vs_llama_rel_err": compare(got_llama, got_owl)["rel_logit_err"]}
        rows.append(row)
        o, l = row["owl"], row["llama"]
        print(f"{quant:7} {row['file_mib']:8.2f} MiB  owl: rel {o['rel_logit_err']:.4f} KL {o['kl_mean']:.5f} "
              f"top-1 {o['top1']:.3f} | llama.cpp: rel {l['rel_logit_err']:.4f} KL {l['kl_mean']:.5f} "
              f"top-1 {l['top1']:.3f} | owl vs llama.cpp {row['owl_vs_llama_rel_err']:.5f}", flush=True)
        path.unlink()  # real-size files add up; the logits are kept

    a.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": desc, "positions": a.prompts * a.prompt_len, "threads": a.threads, "rows": rows,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python bench/bench_type_error.py " + " ".join(sys.argv[1:])}
    a.out.write_text(json.dumps(result, indent=1))
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)  # real-size files and logits take gigabytes
    print(f"\n{desc}; {result['positions']} positions; -> {a.out}")
    print("| type | MiB | owl rel err | owl KL | owl top-1 | llama.cpp rel err | llama.cpp KL | llama.cpp top-1 | "
          "owl vs llama.cpp |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows[1:]:
        o, l = r["owl"], r["llama"]
        print(f"| {r['quant']} | {r['file_mib']:.1f} | {o['rel_logit_err']:.4f} | {o['kl_mean']:.5f} | {o['top1']:.3f} | "
              f"{l['rel_logit_err']:.4f} | {l['kl_mean']:.5f} | {l['top1']:.3f} | {r['owl_vs_llama_rel_err']:.5f} |")


if __name__ == "__main__":
    main()
