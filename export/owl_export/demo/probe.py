"""Diagnosis of a demo checkpoint's object lookup (docs/demo.md, "Looking objects up by shape"):

  python -m owl_export.demo.probe CHECKPOINT_DIR [--pictures 300]

1. hyper-attention: for questions about one object, the mass that the position predicting the answer's first
   token puts on that object's patches (all views), per hyper layer, averaged over heads and the best head,
   split by how the question names the object (by shape only, by colour only, by both); and the same at the
   question's words that name the object;
2. a linear probe (trained on half the pictures, scored on the other half) of the shape of the object under
   each object patch, on the vision features (hidden_states[-2]) and on the projected rows (vision2text).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from owl_cpp.demo.scenes import COLOUR_NAMES, SHAPES

from .config import DemoSizes
from .data import HFTokenizer, collate, make_sample, preprocessing, scatter_views
from .model import DemoOwl3
from .train import load_weights


def named_by(question: str) -> str:
    words = question.lower().replace("?", " ").replace(".", " ").split()
    shape = any(s in words for s in SHAPES)
    colour = any(c in words for c in COLOUR_NAMES)
    return "shape+colour" if shape and colour else "shape" if shape else "colour"


def linear_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 200) -> float:
    """Accuracy on the second half of a softmax regression fitted (L-BFGS) on the first half."""
    half = len(x) // 2
    mu, sd = x[:half].mean(0), x[:half].std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:half] @ w + b, y[:half]) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x[half:] @ w + b).argmax(1) == y[half:]).float().mean())


@torch.no_grad()
def diagnose(checkpoint: Path, pictures: int = 300, seed: int = 55555) -> dict:
    s = DemoSizes()
    tok = HFTokenizer(Path(checkpoint) / "tokenizer.json")
    model = DemoOwl3(s, len(tok))
    model.load_named(load_weights(checkpoint))
    prep = preprocessing(s)
    rng = np.random.default_rng(seed)
    mass = {}                       # (layer, named_by) -> [(mean over heads, best head, share of patches)]
    feats_all, rows_all, shape_all = [], [], []
    for lo in range(0, pictures, 16):
        samples = [make_sample(rng, tok, s, prep, n_turns=3, n_objects=int(rng.integers(2, 4)),
                               kinds=["colour", "where", "shape"]) for _ in range(min(16, pictures - lo))]
        b = collate(samples, tok.ids["<|endoftext|>"])
        feats = model.vision_features(b.pixels)
        rows = model.project(feats)
        _, probes, _ = model(b.ids, scatter_views(rows, b), b.starts, b.view_valid, attn_at=(b.lookup_rows, b.lookup_pos))
        how = [named_by(x.turns[turn][1]) if k < x.n_answer_lookups else "(at the naming word)"
               for x in samples for k, (_, _, turn) in enumerate(x.lookups)]
        valid = torch.cat([v.repeat_interleave(s.num_patches) for v in b.view_valid])
        share = (b.lookup_mask.float().sum(1) / valid.view(len(samples), -1)[b.lookup_rows].float().sum(1))
        for layer, p in enumerate(probes):
            m = (p * b.lookup_mask[:, None].float()).sum(-1)                      # [M, heads]
            for k, h in enumerate(how):
                mass.setdefault((layer, h), []).append((float(m[k].mean()), float(m[k].max()), float(share[k])))
        obj = b.patch_targets[..., 0] < len(SHAPES)
        feats_all.append(feats[obj]), rows_all.append(rows[obj]), shape_all.append(b.patch_targets[..., 0][obj])
    y = torch.cat(shape_all)
    out = {"attention": {f"layer {s.hyper_layers[layer]} {h}": {
        "mean_over_heads": float(np.mean([v[0] for v in vals])), "best_head": float(np.mean([v[1] for v in vals])),
        "share_of_patches": float(np.mean([v[2] for v in vals])), "n": len(vals)}
        for (layer, h), vals in sorted(mass.items())},
        "probe_shape": {"vision_features": linear_probe(torch.cat(feats_all), y, len(SHAPES)),
                        "projected_rows": linear_probe(torch.cat(rows_all), y, len(SHAPES)),
                        "object_patches": int(len(y))}}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m owl_export.demo.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (model.safetensors) or ema_weights.pt")
    p.add_argument("--tokenizer", type=Path, help="directory of tokenizer.json when CHECKPOINT is a weights file")
    p.add_argument("--pictures", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the numbers here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.checkpoint.is_file() and a.tokenizer is None:
        p.error("a weights file needs --tokenizer DIR")
    out = diagnose_any(a.checkpoint, a.tokenizer, a.pictures)
    for k, v in out["attention"].items():
        print(f"{k:22s} mass on the object: mean over heads {v['mean_over_heads']:.2f}, best head "
              f"{v['best_head']:.2f} (its patches are {v['share_of_patches']:.0%} of all; n={v['n']})")
    print("linear probe of shape on object patches: " + ", ".join(
        f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v}" for k, v in out["probe_shape"].items()))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def diagnose_any(weights: Path, tokenizer: Path | None, pictures: int) -> dict:
    if tokenizer is None:
        return diagnose(weights, pictures)
    import shutil
    import tempfile
    from safetensors.torch import save_file
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(Path(tokenizer) / "tokenizer.json", Path(d) / "tokenizer.json")
        save_file({k: v.contiguous() for k, v in load_weights(weights).items()}, str(Path(d) / "model.safetensors"))
        return diagnose(Path(d), pictures)


if __name__ == "__main__":
    sys.exit(main())
