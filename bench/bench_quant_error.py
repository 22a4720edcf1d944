"""Quantization error of our K-quant mixes vs llama.cpp's own quantizer, on the very same F16 file.

For each --quants mix: our file (owl_export.requantize: our quantizers and type mix) and llama.cpp's
(llama_model_quantize, no imatrix) are made from one F16 GGUF; llama.cpp (llama-cpp-python, --llama-python)
evaluates the F16 file and both quantized files on the same token sequences, and we compare each position's
next-token logits with the F16 file's: relative logit error (RMS of the difference / RMS of the F16 logits),
KL(F16 || quantized) and top-1 agreement. The evaluator is llama.cpp for all three files, so only the weights
differ. Prints a table and writes JSON to bench/results/.

Model: --hf DIR (a qwen2/llama Hugging Face checkpoint, exported to F16 by owl-export; text prompts), --demo
(the demo model's trained decoder, text only: real trained weights, but hidden 192, so most matrices take
llama.cpp's 32-block fallbacks and only ffn_down is K-quantized) or, by default, a synthetic checkpoint (--synthetic LAYERSxHIDDEN, FFN 2.75x) whose weights have some structure of
trained ones: heavy tails (Student-t, 4 degrees of freedom), per-row and per-input-channel scales (log-normal)
and a few outlier input channels; random token ids as prompts. Not a trained model: its KL says how the
two quantizers compare, not what a real model loses.

    python bench/bench_quant_error.py --llama-python ~/llama-env/bin/python                        # synthetic
    python bench/bench_quant_error.py --llama-python ~/llama-env/bin/python --demo
    python bench/bench_quant_error.py --llama-python ~/llama-env/bin/python --hf /models/Qwen2-0.5B-Instruct

--imatrix adds a row per mix: our quantizers with an importance matrix collected by owl_export.imatrix on
calibration data that is not the evaluation data (synthetic: other random ids; demo: other generated
conversations; --hf: --imatrix-text FILE, else imatrix.BUILTIN_TEXT). llama.cpp's quantizer with an imatrix
cannot be driven from llama-cpp-python (the imatrix is a C++ map in llama_model_quantize_params), so there is
no llama.cpp+imatrix row: tests/test_imatrix_quants.py holds our weighted quantizers to ggml's, tensor by tensor.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "export"))

# the K mixes, and the plain types for reference rows (our q4_0 keeps the output matrix in Q8_0 where llama.cpp's
# puts it in Q6_K when its rows are a multiple of 256, so there that row differs in one tensor)
LLAMA_FTYPE = {"q2_k": 10, "q3_k_m": 12, "q4_k_s": 14, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18, "q4_0": 2, "q8_0": 7}
TEXTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n",
    "Question: A train leaves the station at 3 pm and travels 120 km at 80 km/h. When does it arrive?\nAnswer:",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts of plant cells,",
    "Le petit prince demanda au renard pourquoi il ne pouvait pas jouer avec lui, et le renard répondit",
    "1. Preheat the oven to 180 degrees. 2. Mix the flour, sugar and butter. 3.",
]
RUNNER = r"""
import ctypes, json, sys
import numpy as np
import llama_cpp
req = json.load(sys.stdin)
if req["op"] == "quantize":
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = req["ftype"], req["threads"]
    t = __import__("time").time()
    rc = llama_cpp.llama_model_quantize(req["src"].encode(), req["dst"].encode(), ctypes.byref(p))
    json.dump({"rc": rc, "seconds": __import__("time").time() - t}, sys.stdout)
else:
    llm = llama_cpp.Llama(model_path=req["model"], n_ctx=req["n_ctx"], n_threads=req["threads"], n_batch=512,
                          logits_all=True, verbose=False, type_k=req.get("kv_type", 0), type_v=req.get("kv_type", 0))
    seqs = req.get("ids") or [llm.tokenize(t.encode(), add_bos=True, special=True) for t in req["texts"]]
    out = {}
    for i, ids in enumerate(seqs):
        llm.reset()
        llm.eval(ids)
        out[f"p{i}"] = np.array(llm.scores[:len(ids)], np.float32)  # a copy: scores is reused
        out[f"ids{i}"] = np.asarray(ids, np.int64)
    np.savez(req["out"], **out)
    json.dump({"n": len(seqs)}, sys.stdout)
"""


def llama(python: str, req: dict) -> dict:
    res = subprocess.run([python, "-c", RUNNER], input=json.dumps(req), capture_output=True, text=True,
                         timeout=7200)
    if res.returncode != 0:
        raise RuntimeError(f"llama-cpp-python failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout)


def synthetic_checkpoint(out: Path, layers: int, hidden: int, seed: int = 0) -> Path:
    """A qwen2-shaped checkpoint (heads of 64, 4 per KV head) with trained-like weight statistics."""
    import torch
    from safetensors.torch import load_file, save_file
    from owl_export.fixtures import make_tiny_checkpoint

    heads = hidden // 64
    ffn = int(hidden * 2.75) // 256 * 256
    hf = make_tiny_checkpoint(out, "qwen2", seed=seed, hidden_size=hidden, intermediate_size=ffn,
                              num_layers=layers, num_heads=heads, num_kv_heads=max(1, heads // 4))
    path = hf / "model.safetensors"
    sd = load_file(path)
    rng = np.random.default_rng(seed)
    for name, w in sd.items():
        if w.ndim != 2:
            continue
        rows, cols = w.shape
        std = float(w.float().std())
        x = rng.standard_t(4, (rows, cols)) / np.sqrt(2.0)             # unit variance, heavy tails
        x *= np.exp(rng.normal(0, 0.3, (rows, 1)))                   # rows of different size
        col = np.exp(rng.normal(0, 0.4, (1, cols)))                  # input channels of different size
        col[0, rng.choice(cols, max(1, cols // 100), replace=False)] *= 6   # a few outlier channels
        sd[name] = torch.from_numpy((x * col / np.sqrt(np.mean(col ** 2)) * std).astype(np.float32))
    save_file(sd, path)
    return hf


DEMO_TEXTS = [
    "<|im_start|>user\nWhat colour is the star?<|im_end|>\n<|im_start|>assistant\npurple<|im_end|>",
    "<|im_start|>user\nHow many shapes are there?<|im_end|>\n<|im_start|>assistant\nthree<|im_end|>",
    "<|im_start|>user\nWhere is the red circle?<|im_end|>\n<|im_start|>assistant\ntop left<|im_end|>",
    "<|im_start|>user\nWhat does the image show?<|im_end|>\n<|im_start|>assistant\nan orange triangle at "
    "the top left, a red cross at the bottom left and a purple star at the bottom middle.<|im_end|>",
]


def demo_text_checkpoint(out: Path) -> Path:
    """The demo model's trained decoder (export/owl3-demo) as a plain qwen2 checkpoint: its language_model
    tensors without the hyper-attention's image projections, i.e. what Owl3 runs for a text-only prompt."""
    from safetensors.torch import load_file, save_file

    src = HERE.parent / "export" / "owl3-demo"
    out.mkdir(parents=True, exist_ok=True)
    prefix = "language_model."
    sd = {k[len(prefix):]: v for k, v in load_file(src / "model.safetensors").items()
          if k.startswith(prefix) and ".v_kv_proj." not in k and ".gate_proj.0." not in k and not k.endswith(".gate")}
    save_file(sd, out / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    for k in ("vision_config", "hyper_layers"):
        config.pop(k, None)
    config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    return out


def compare(ref_npz, q_npz) -> dict:
    rel, kls, top1 = [], [], []
    for key in [k for k in ref_npz.files if k.startswith("p")]:
        a = ref_npz[key].astype(np.float64)
        b = q_npz[key].astype(np.float64)
        rel += list(np.sqrt(((b - a) ** 2).mean(-1) / (a ** 2).mean(-1)))
        la = a - a.max(-1, keepdims=True)
        la -= np.log(np.exp(la).sum(-1, keepdims=True))
        lb = b - b.max(-1, keepdims=True)
        lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
        kls += list((np.exp(la) * (la - lb)).sum(-1))
        top1 += list(a.argmax(-1) == b.argmax(-1))
    return {"rel_logit_err": float(np.mean(rel)), "kl_mean": float(np.mean(kls)), "kl_p99": float(np.percentile(kls, 99)),
            "top1": float(np.mean(top1)), "positions": len(kls)}


def same_tensors(a: Path, b: Path) -> tuple[int, int]:
    """How many tensors two GGUFs store with the same type and bytes, of how many."""
    import gguf
    ta = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(b).tensors}
    return sum(ta[n] == tb.get(n) for n in ta), len(ta)


def print_row(row: dict) -> None:
    print(f"{row['quant']:7} {row['quantizer']:9} {row['file_mib']:7.2f} MiB  rel err {row['rel_logit_err']:.4f}  "
          f"KL {row['kl_mean']:.5f} (p99 {row['kl_p99']:.4f})  top-1 {row['top1']:.3f}  "
          f"quantize {row['quantize_s']:.1f} s", flush=True)


def calibration_imatrix(a, hf: Path, n_vocab: int, work: Path):
    """An importance matrix from data other than the evaluation's (saved in work/imatrix.gguf)."""
    from owl_export import imatrix
    if a.demo:
        from owl_export.demo.config import DemoSizes
        from owl_export.demo.data import tokenizer_corpus
        data = "".join(tokenizer_corpus(DemoSizes(), seed=7, n_scenes=40)).replace("<|image|>", "")
        chunk, name = 512, "demo conversations (seed 7)"
    elif a.hf:
        data = a.imatrix_text.read_text(encoding="utf-8") if a.imatrix_text else imatrix.BUILTIN_TEXT
        chunk, name = 512, str(a.imatrix_text or "built-in text")
    else:
        rng = np.random.default_rng(1)                  # the evaluation's prompts use seed 0
        data = [int(v) for v in rng.integers(0, min(int(n_vocab), 1000), a.prompts * a.prompt_len)]
        chunk, name = a.prompt_len, "random ids (seed 1)"
    im = imatrix.collect(hf, data, chunk=chunk, dataset=name)
    imatrix.write(im, work / "imatrix.gguf")
    print(f"imatrix: {sum(im.counts.values()) // max(len(im.counts), 1)} tokens of {name}, {len(im.sums)} matrices",
          flush=True)
    return imatrix.read(work / "imatrix.gguf")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-python", required=True, help="python of an environment with llama-cpp-python")
    p.add_argument("--hf", type=Path, help="a qwen2/llama HF checkpoint (default: synthetic weights)")
    p.add_argument("--demo", action="store_true",
                   help="the demo model's trained decoder (hidden 192: K types only in ffn_down, the rest "
                        "llama.cpp's 32-block fallbacks)")
    p.add_argument("--synthetic", default="8x512", help="LAYERSxHIDDEN of the synthetic model (default 8x512)")
    p.add_argument("--quants", nargs="+", default=list(LLAMA_FTYPE), choices=list(LLAMA_FTYPE))
    p.add_argument("--prompts", type=int, default=8, help="random-id prompts for the synthetic model")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, help="keep the files here (default: a temporary directory, removed)")
    p.add_argument("--imatrix", action="store_true", help="add rows quantized with an importance matrix")
    p.add_argument("--imatrix-text", type=Path, help="calibration text for --hf (default: the built-in text)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "quant_error.json")
    a = p.parse_args()
    from owl_export.convert_text import convert_text_model
    from owl_export.requantize import requantize_gguf

    work = a.work or Path(tempfile.mkdtemp(prefix="quant_error_"))
    work.mkdir(parents=True, exist_ok=True)
    texts = TEXTS
    if a.demo:
        hf, texts = demo_text_checkpoint(work / "demo"), DEMO_TEXTS
        model_desc = "the demo model's trained decoder (export/owl3-demo, text only, qwen2 4 x 192)"
    elif a.hf:
        hf, model_desc = a.hf, f"HF checkpoint {a.hf.name}"
    else:
        layers, hidden = map(int, a.synthetic.split("x"))
        hf = synthetic_checkpoint(work / "synthetic", layers, hidden)
        model_desc = f"synthetic qwen2 {layers} layers x {hidden} (t-distributed, scaled rows/channels, outliers)"
    f16 = work / "f16.gguf"
    convert_text_model(hf, f16, quant="f16", progress=False)
    import gguf
    n_vocab = next(t.shape[1] for t in gguf.GGUFReader(f16).tensors if t.name == "token_embd.weight")
    rng = np.random.default_rng(0)
    ids = None if a.hf or a.demo else [[int(v) for v in rng.integers(0, min(int(n_vocab), 1000), a.prompt_len)]
                             for _ in range(a.prompts)]
    evaluate = dict(op="eval", n_ctx=max(512, a.prompt_len + 8), threads=a.threads, ids=ids, texts=texts)
    llama(a.llama_python, {**evaluate, "model": str(f16), "out": str(work / "f16.npz")})
    ref = np.load(work / "f16.npz")

    im = calibration_imatrix(a, hf, n_vocab, work) if a.imatrix else None
    rows = []
    for quant in a.quants:
        ours, theirs = work / f"ours-{quant}.gguf", work / f"llama-{quant}.gguf"
        t0 = time.time()
        requantize_gguf(f16, ours, quant)
        t_ours = time.time() - t0
        q = llama(a.llama_python, dict(op="quantize", src=str(f16), dst=str(theirs), ftype=LLAMA_FTYPE[quant],
                                       threads=a.threads))
        if q["rc"] != 0:
            raise RuntimeError(f"llama_model_quantize {quant} returned {q['rc']}")
        same, total = same_tensors(ours, theirs)
        print(f"{quant}: {same} of {total} tensors identical (type and bytes) to llama.cpp's", flush=True)
        for who, path, secs in (("ours", ours, t_ours), ("llama.cpp", theirs, q["seconds"])):
            llama(a.llama_python, {**evaluate, "model": str(path), "out": str(work / f"{path.stem}.npz")})
            row = {"quant": quant, "quantizer": who, "file_mib": path.stat().st_size / 2**20,
                   "tensors_identical_to_llama_cpp": f"{same}/{total}",
                   "quantize_s": secs, **compare(ref, np.load(work / f"{path.stem}.npz"))}
            rows.append(row)
            print_row(row)
        if im is not None:
            path = work / f"ours-imatrix-{quant}.gguf"
            t0 = time.time()
            requantize_gguf(f16, path, quant, imatrix=im)
            secs = time.time() - t0
            llama(a.llama_python, {**evaluate, "model": str(path), "out": str(work / f"{path.stem}.npz")})
            row = {"quant": quant, "quantizer": "ours+imx", "file_mib": path.stat().st_size / 2**20,
                   "tensors_identical_to_llama_cpp": "-", "quantize_s": secs,
                   **compare(ref, np.load(work / f"{path.stem}.npz"))}
            rows.append(row)
            print_row(row)

    a.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": model_desc, "imatrix_data": im.datasets if im is not None else None, "f16_mib": f16.stat().st_size / 2**20, "positions": rows[0]["positions"],
              "threads": a.threads, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    a.out.write_text(json.dumps(result, indent=1))
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)  # real-size files and logits take gigabytes
    print(f"\n{model_desc}; F16 {result['f16_mib']:.1f} MiB; {result['positions']} positions; -> {a.out}")
    print(f"{'quant':8}{'quantizer':11}{'MiB':>8}{'rel err':>9}{'KL':>10}{'top-1':>7}")
    for r in rows:
        print(f"{r['quant']:8}{r['quantizer']:11}{r['file_mib']:8.2f}{r['rel_logit_err']:9.4f}"
              f"{r['kl_mean']:10.5f}{r['top1']:7.3f}")


if __name__ == "__main__":
    main()
