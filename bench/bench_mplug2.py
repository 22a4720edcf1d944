"""mPLUG-2 caption decoding at the published sizes (random weights): owl_cpp against the PyTorch reference,
both ways the reference can run, on one video's tokens (16 frames: 4097 x 1024; the video encoder itself is
bench_vision.py --family mplug2).

  owl_cpp                 decoder.gguf (f32 and q8_0): the video's cross-attention K/V computed once, one
                          context per beam, a KV cache for the prefix
  torch cached            the reference with a KV cache and the video's K/V computed once (what owl_cpp does)
  torch as published      the official search: every step re-runs the whole prefix for every beam, including
                          the cross-attention K/V projection of all 4097 video tokens

Beam search as published (beam 5) for exactly --steps steps (min_length = max_length, so every engine runs
the same number of steps); the published path is slow, so it runs --published-steps steps and its per-step
time is reported (its cost grows with the prefix, so the 20-step figure is a lower bound).

    python bench/bench_mplug2.py [--threads 2] [--steps 20] [--published-steps 4]
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
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE.parent / "export"))

BERT_LARGE_VOCAB = 30522


def decoder_checkpoint(work: Path) -> Path:
    """The caption decoder at bert-large size (12 layers, 1024 wide, 16 heads, FFN 4096, 30522 tokens, 512
    positions) in the official .pth layout; the video tower is cut to a token (only the decoder is timed)."""
    import torch
    from owl_export.mplug2.fixtures import CHECKPOINT_NAME, make_tiny_mplug2_checkpoint, tiny_vocab

    d = work / "mplug2-decoder-large"
    if (d / CHECKPOINT_NAME).exists():
        return d
    make_tiny_mplug2_checkpoint(d, seed=0, vision_width=64, vision_layers=1, num_frames=16, text_width=1024,
                                text_heads=16, text_intermediate=4096, text_encoder_layers=2, num_uni_layer=2,
                                decoder_layers=12, fusion_hidden_layers=1, fusion_layers=1, max_positions=512)
    # the fixture's vocabulary is tiny; the head's cost is the real one's: pad to bert-large-uncased's size
    vocab = tiny_vocab()
    vocab += [f"[pad{i}]" for i in range(BERT_LARGE_VOCAB - len(vocab))]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    obj = torch.load(d / CHECKPOINT_NAME, weights_only=False)
    sd, g = obj["model"], torch.Generator().manual_seed(1)
    for prefix in ("text_decoder.", "text_encoder."):
        key = prefix + "bert.embeddings.word_embeddings.weight"
        if key in sd:
            sd[key] = 0.5 * torch.randn(BERT_LARGE_VOCAB, 1024, generator=g)
    sd["text_decoder.cls.predictions.decoder.weight"] = sd["text_decoder.bert.embeddings.word_embeddings.weight"]
    sd["text_decoder.cls.predictions.bias"] = 0.1 * torch.randn(BERT_LARGE_VOCAB, generator=g)
    sd["text_decoder.cls.predictions.decoder.bias"] = sd["text_decoder.cls.predictions.bias"]
    torch.save(obj, d / CHECKPOINT_NAME)
    return d


def model_dir(ckpt: Path, quant: str) -> Path:
    from owl_export.mplug2.export import export_mplug2

    out = ckpt.parent / f"mplug2-decoder-large-{quant}"
    if not (out / "decoder.gguf").exists():
        export_mplug2(ckpt, out, quant, progress=False)
    return out


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--published-steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quants", nargs="+", default=["f32", "q8_0"], choices=["f32", "f16", "q8_0", "q4_0"])
    ap.add_argument("--workdir", default=str(HERE / "models"))
    ap.add_argument("--out", default=str(HERE / "results" / "mplug2_caption.json"))
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    import owl_cpp
    from owl_cpp import _testing
    from owl_export.mplug2.reference import Mplug2CaptionReference, predictor_beam_search

    torch.set_num_threads(a.threads)
    ckpt = decoder_checkpoint(Path(a.workdir))
    n_tokens = 1 + a.frames * 256
    tokens = np.random.default_rng(0).standard_normal((n_tokens, 1024)).astype(np.float32)
    S, P, B = a.steps, a.published_steps, 5
    rows = []

    def row(engine, steps, seconds, extra=None):
        rows.append({"engine": engine, "steps": steps, "total_ms": 1e3 * seconds, "ms_per_step": 1e3 * seconds / steps,
                     **(extra or {})})
        print(f"{engine:<34} {steps:>5} {1e3 * seconds:>12.0f} {1e3 * seconds / steps:>12.1f}", flush=True)

    print(f"mPLUG-2 caption decoder (bert-large, 12 layers), one video of {a.frames} frames = {n_tokens} tokens, "
          f"beam {B}, {a.threads} threads")
    print(f"{'engine':<34} {'steps':>5} {'total ms':>12} {'ms/step':>12}")
    for quant in a.quants:
        m = owl_cpp.load(model_dir(ckpt, quant), threads=a.threads)
        for steps in (S, P):
            t = timed(lambda: m.caption(tokens=tokens, min_length=steps, max_length=steps), a.reps)
            row(f"owl_cpp {quant}", steps, t)
        t = timed(lambda: m.caption(tokens=tokens, greedy=True, min_length=S, max_length=S), a.reps)
        row(f"owl_cpp {quant} greedy", S, t)
        del m

    ref = Mplug2CaptionReference.from_dir(ckpt)
    cfg, video = ref.cfg, torch.from_numpy(tokens)
    def cached():
        # the reference's cached step; the video's K/V per beam made contiguous once (its expand()ed views make
        # every matmul copy them, 4x slower)
        cross = [(k.expand(B, *k.shape).contiguous(), v.expand(B, *v.shape).contiguous()) for k, v in ref.cross_kv(video)]
        state = {"kv": None}

        def step(alive, parents):
            if state["kv"] is not None:
                state["kv"] = [(k.index_select(0, parents), v.index_select(0, parents)) for k, v in state["kv"]]
            logits, state["kv"] = ref.decoder_step(alive[:, -1:], cross, state["kv"])
            return logits[:, -1, :]
        predictor_beam_search(step, cfg.bos_id, cfg.eos_id, B, P, P)
    t = timed(cached, 1)
    row("torch cached", P, t)

    def published():
        expanded = video.expand(B, *video.shape)

        def step(alive, parents):          # predictor.py: the whole prefix, the video's K/V projected anew
            return ref.decoder_full(alive, ref.cross_kv(expanded))[:, -1, :]
        predictor_beam_search(step, cfg.bos_id, cfg.eos_id, B, P, P)
    t = timed(published, 1)
    row("torch as published", P, t)

    bandwidth = _testing.measure_read_bandwidth(1 << 30, a.threads, 5)
    result = {"command": "python bench/bench_mplug2.py " + " ".join(sys.argv[1:]), "threads": a.threads,
              "video_tokens": n_tokens, "beam": B, "read_bandwidth_gbs": bandwidth, "rows": rows,
              "system_info": dict(owl_cpp.system_info())}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"\nread bandwidth {bandwidth:.1f} GB/s ({a.threads} threads); JSON: {a.out}")


if __name__ == "__main__":
    main()
