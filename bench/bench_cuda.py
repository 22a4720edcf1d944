"""owl_cpp's CUDA backend on random-weight GGUFs at the real decoder sizes, against the GPU's memory roofline
and a PyTorch bf16 reference (Hugging Face eager, same shapes) on the same GPU.

Prints a table and writes JSON: prompt processing (t/s over --prompt tokens; "pp simt" is the same prompt with
the tensor-core GEMMs switched off, OWL_CUDA_TC=0, the A/B of the prefill kernels), decode (t/s over --gen tokens
after --tg-after tokens of prompt), each the median of --reps; the device-to-device copy bandwidth measured in
the same run (bytes read + written, through PyTorch) and decode as a fraction of the roofline (bandwidth / bytes
of weights one decode step reads).

    python bench/bench_cuda.py                                   # Owl3 1B/2B/7B and Owl2 7B decoders, all types
    python bench/bench_cuda.py --sizes qwen2-7b --quants q4_0 --no-torch
    python bench/bench_cuda.py --sizes qwen2-1.5b qwen2-7b --quants q4_k q6_k --no-torch   # the K-quant kernels
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_decode import bytes_per_token  # noqa: E402
from make_random_gguf import SIZES, ensure  # noqa: E402


def copy_bandwidth(gib: float = 4.0) -> float | None:
    """Bytes/s of a device-to-device copy (read + write counted), median of 10, through PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    n = int(gib * (1 << 30))
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n / statistics.median(times)


def time_owl(path: Path, prompt: int, tg_after: int, gen: int, reps: int, tc_ab: bool = False,
             sample_ab: bool = False) -> dict:
    from owl_cpp import _core

    t0 = time.perf_counter()
    model = _core.Model.load(str(path))
    ctx = _core.Context(model, max(prompt, tg_after + gen) + 8, 1, 512, backend="cuda")
    load_s = time.perf_counter() - t0
    ids = np.random.default_rng(0).integers(0, 1000, max(prompt, tg_after)).tolist()
    ctx.eval(ids[:32])  # warm up (first launches, workspace)

    def prompt_rate() -> float:
        pp = []
        for _ in range(reps):
            ctx.truncate(0)
            t = time.perf_counter()
            ctx.eval(ids[:prompt])
            pp.append(prompt / (time.perf_counter() - t))
        return statistics.median(pp)

    pp = prompt_rate()
    pp_simt = None
    if tc_ab:  # the same prompt on the SIMT GEMMs (OWL_CUDA_TC=0 is read on every matmul)
        old = os.environ.get("OWL_CUDA_TC")
        os.environ["OWL_CUDA_TC"] = "0"
        try:
            pp_simt = prompt_rate()
        finally:
            if old is None:
                del os.environ["OWL_CUDA_TC"]
            else:
                os.environ["OWL_CUDA_TC"] = old

    def decode_rate(step) -> float:
        tg = []
        for _ in range(reps):
            ctx.truncate(0)
            ctx.eval(ids[:tg_after])
            times = []
            for i in range(gen):
                t = time.perf_counter()
                step(int(ids[i % len(ids)]))
                times.append(time.perf_counter() - t)
            tg.append(1.0 / statistics.median(times))
        return statistics.median(tg)

    tg = decode_rate(lambda tok: ctx.eval([tok]))
    tg_pick = tg_pick_host = None
    if sample_ab:  # a step plus the greedy pick: selected on the device (one pair back) vs every logit back
        greedy, V = _core.Sampler(_core.SamplerParams()), model.hparams["n_vocab"]
        tg_pick = decode_rate(lambda tok: (ctx.eval([tok], return_logits=False), greedy.sample(ctx, [], V)))
        tg_pick_host = decode_rate(lambda tok: (ctx.eval([tok]), greedy.sample(ctx, [], V)))
    del ctx, model
    return {"load_s": load_s, "pp": pp, "pp_simt": pp_simt, "tg": tg, "tg_pick_device": tg_pick,
            "tg_pick_host": tg_pick_host}


def time_torch(size: str, prompt: int, tg_after: int, gen: int, reps: int) -> dict | None:
    """The same decoder shape in Hugging Face transformers, bf16, random init on the GPU, eager attention."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    arch, E, L, H, KV, F, V, tied = SIZES[size]
    kw = dict(hidden_size=E, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=KV,
              intermediate_size=F, vocab_size=V, tie_word_embeddings=tied, max_position_embeddings=32768)
    cls = transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM
    cfg = (transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config)(**kw)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = cls(cfg).eval()
    torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, 1000, (1, max(prompt, tg_after)), device="cuda")

    def run(n_prompt, steps):
        with torch.inference_mode():
            out = model(input_ids=ids[:, :n_prompt], use_cache=True)
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            times = []
            for _ in range(steps):
                torch.cuda.synchronize()
                t = time.perf_counter()
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            return times

    run(32, 2)
    pp = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        run(prompt, 0)
        torch.cuda.synchronize()
        pp.append(prompt / (time.perf_counter() - t))
    tg = [1.0 / statistics.median(run(tg_after, gen)) for _ in range(reps)]
    del model
    torch.cuda.empty_cache()
    return {"pp": statistics.median(pp), "tg": statistics.median(tg)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["qwen2-0.5b", "qwen2-1.5b", "qwen2-7b", "llama-7b"], choices=list(SIZES))
    # q4_k / q5_k / q6_k: every matrix in that type (make_random_gguf.py), so not qwen2-0.5b (896 columns)
    ap.add_argument("--quants", nargs="+", default=["q4_0", "q8_0", "f16"],
                    choices=["q4_0", "q8_0", "f16", "q4_k", "q5_k", "q6_k"])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--tg-after", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch bf16 reference")
    ap.add_argument("--no-graphs", action="store_true", help="launch every kernel on its own (OWL_CUDA_GRAPHS=0)")
    ap.add_argument("--no-tc-ab", action="store_true",
                    help="skip timing the prompt again on the SIMT GEMMs (OWL_CUDA_TC=0) next to the tensor cores")
    ap.add_argument("--sample-ab", action="store_true",
                    help="also time decode steps with a greedy pick: on the device (pick dev) and from every logit "
                         "copied back (pick host)")
    ap.add_argument("--workdir", default=str(HERE / "models"))
    ap.add_argument("--out", default=str(HERE / "results" / "cuda.json"))
    a = ap.parse_args()

    if a.no_graphs:
        os.environ["OWL_CUDA_GRAPHS"] = "0"
    from owl_cpp import _core
    info = _core.system_info()["cuda"]
    if "cuda" not in _core.available_backends():
        sys.exit("no CUDA GPU visible (system_info: %s)" % info)
    gpu = info["devices"][0]
    bw = copy_bandwidth()
    print(f"GPU: {gpu['name']} ({gpu['total_bytes'] / 2**30:.0f} GiB), copy bandwidth "
          f"{bw / 1e9:.0f} GB/s" if bw else f"GPU: {gpu['name']}, bandwidth not measured (no torch)", flush=True)
    rows = []
    hdr = f"{'model':<12} {'type':<5} {'GB/tok':>7} {'pp t/s':>9} {'pp simt':>9} {'tg t/s':>8} {'pick dev':>8} {'pick host':>9} {'roof t/s':>9} {'of roof':>8} {'torch pp':>9} {'torch tg':>9}"
    print(hdr, flush=True)
    for size in a.sizes:
        ref = None if a.no_torch else time_torch(size, a.prompt, a.tg_after, a.gen, a.reps)
        for quant in a.quants:
            path = ensure(Path(a.workdir), size, quant)
            bpt = bytes_per_token(path)
            r = time_owl(path, a.prompt, a.tg_after, a.gen, a.reps, tc_ab=not a.no_tc_ab, sample_ab=a.sample_ab)
            roof = bw / bpt if bw else None
            row = {"size": size, "quant": quant, "bytes_per_token": bpt, **r, "roofline_tg": roof,
                   "fraction_of_roofline": r["tg"] / roof if roof else None,
                   "torch_bf16_pp": ref["pp"] if ref else None, "torch_bf16_tg": ref["tg"] if ref else None}
            rows.append(row)
            f = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
            print(f"{size:<12} {quant:<5} {bpt / 1e9:7.2f} {r['pp']:9.0f} {f(r['pp_simt'], '9.0f')} {r['tg']:8.1f} "
                  f"{f(r['tg_pick_device'], '8.1f')} {f(r['tg_pick_host'], '9.1f')} {f(roof, '9.0f')} "
                  f"{f(row['fraction_of_roofline'], '8.2f')} {f(row['torch_bf16_pp'], '9.0f')} {f(row['torch_bf16_tg'], '9.1f')}",
                  flush=True)
    out = {"gpu": gpu, "cuda": {k: info[k] for k in ("runtime_version", "driver_version", "architectures")},
           "copy_bandwidth_Bps": bw, "args": vars(a), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
