"""Times one engine on one GGUF in a fresh process (so peak RSS is its own) and prints JSON.

Runs under either interpreter: ours (`--engine owl`) or the llama-cpp-python environment (`--engine llama`).
Both are driven the same way: evaluate a prompt of random ids in one call (prompt processing), then
decode one token at a time (each step a full forward of one token).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def load(engine: str, path: str, threads: int, n_ctx: int, kv_type=None, image_rows: int = 0):
    if engine == "owl" and (image_rows or _arch(path) == "owl2"):
        return load_spliced(path, threads, n_ctx, kv_type, image_rows)
    if engine == "owl":
        import owl_cpp

        # kv_type only when asked: a baseline build from before the option existed runs with its own default.
        m = owl_cpp.load(path, n_ctx=n_ctx, threads=threads, **({"kv_type": kv_type} if kv_type else {}))

        def eval_tokens(ids, reset=False):
            if reset:
                m.reset()
            m._ctx.eval(list(ids), return_logits=False)

        eval_tokens.kv_bytes_per_token = m._ctx.kv_bytes_per_token
        return m.n_vocab, eval_tokens
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                n_ubatch=512, verbose=False)

    def eval_tokens(ids, reset=False):
        if reset:
            llm.reset()
        llm.eval(list(ids))

    return llm.n_vocab(), eval_tokens


def load_spliced(path: str, threads: int, n_ctx: int, kv_type, image_rows: int):
    """An Owl2-style decoder driven on the context directly: every prompt that reaches position IMAGE_AT has
    `image_rows` random embedding rows (modality image) in place of its tokens there, as one image spliced
    into the prompt; decode steps are text."""
    from owl_cpp import _core

    model = _core.Model.load(path)
    ctx = _core.Context(model, n_ctx, threads, **({"kv_type": kv_type} if kv_type else {}))
    rows = np.random.default_rng(1).standard_normal((image_rows, model.hparams["n_embd"])).astype(np.float32)

    def eval_tokens(ids, reset=False):
        if reset:
            ctx.truncate(0)
        ids, at = list(ids), ctx.n_past
        if image_rows and at <= IMAGE_AT < at + len(ids) and len(ids) > IMAGE_AT - at + image_rows:
            k = IMAGE_AT - at
            if k:
                ctx.eval(ids[:k], return_logits=False)
            ctx.decode(embeds=rows, modality=[1] * image_rows, return_logits=False)
            ids = ids[k + image_rows:]
        ctx.eval(ids, return_logits=False)

    eval_tokens.kv_bytes_per_token = ctx.kv_bytes_per_token
    return model.hparams["n_vocab"], eval_tokens


IMAGE_AT = 6     # "<s> USER: " in Owl2's LLaMA vocabulary, then the image


def _arch(path: str) -> str:
    from owl_cpp import _core
    return str(_core.GGUFFile.open(path)["general.architecture"])


def peak_rss_mb() -> float:
    """This process's resident high-water mark. VmHWM belongs to the address space exec created; ru_maxrss is
    inherited from the parent across fork + exec on Linux (the bench parent maps 1 GiB to measure bandwidth)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["owl", "llama"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, nargs="*", default=[128, 512])
    ap.add_argument("--tg", type=int, default=64, help="decode steps after a --tg-after-token prompt")
    ap.add_argument("--tg-after", type=int, default=128, help="prompt length before the decode steps")
    ap.add_argument("--kv-type", choices=["f16", "f32"], default=None, help="owl's KV cache type (default: its own)")
    ap.add_argument("--image-rows", type=int, default=0,
                    help="owl: splice this many image-modality embedding rows into each prompt (Owl2: 65)")
    a = ap.parse_args()

    t0 = time.perf_counter()
    n_ctx = max(1024, a.tg_after + a.tg + 8)
    n_vocab, eval_tokens = load(a.engine, a.model, a.threads, n_ctx=n_ctx, kv_type=a.kv_type, image_rows=a.image_rows)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = rng.integers(300, min(n_vocab, 30000), n_ctx).tolist()
    out = {"engine": a.engine, "load_s": load_s, "pp": {}, "image_rows": a.image_rows}
    eval_tokens(ids[:8], reset=True)  # warm-up: first touch of the mapped weights
    for n in a.pp:
        t = time.perf_counter()
        eval_tokens(ids[:n], reset=True)
        out["pp"][str(n)] = n / (time.perf_counter() - t)
    eval_tokens(ids[:a.tg_after], reset=True)
    t = time.perf_counter()
    for i in range(a.tg):
        eval_tokens([ids[a.tg_after + i]])
    out["tg"] = a.tg / (time.perf_counter() - t)
    out["peak_rss_mb"] = peak_rss_mb()
    out["kv_bytes_per_token"] = getattr(eval_tokens, "kv_bytes_per_token", None)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
