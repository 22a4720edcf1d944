"""Held-out exact match of the demo model, per question kind, through PyTorch (the training model, batched greedy
decoding) or through the owl_cpp runtime (the exported files, `owl_cpp.chat`). Both ask the same fixed set:
scenes and phrasings drawn from a seed that training never uses.

  python -m owl_export.demo.evaluate MODEL_DIR [--per-kind 100]       # through the runtime
  python -m owl_export.demo.evaluate demo --checkpoint export/owl3-demo  # + agreement with the PyTorch model
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from owl_cpp.demo import questions as Q
from owl_cpp.demo.scenes import Scene, draw, random_scene

HELD_OUT_SEED = 987_654_321          # training draws from its own seed; this one is never used there
TARGETS = {"colour": 0.95, "count": 0.95, "where": 0.95, "shape": 0.85, "describe": 0.60}   # issue #10


@dataclass(frozen=True)
class Item:
    scene: Scene
    kind: str
    question: str
    answer: str


def held_out(per_kind: int, seed: int = HELD_OUT_SEED) -> list[Item]:
    """per_kind questions of every kind, each about its own scene, phrasings cycling through the templates."""
    rng = np.random.default_rng(seed)
    items = []
    for k in range(per_kind):
        for kind in Q.KINDS:
            scene = random_scene(rng)
            q, a = Q.ask(scene, kind, rng, phrasing=k)
            items.append(Item(scene, kind, q, a))
    return items


def score(items: list[Item], answers: list[str]) -> dict:
    """{kind: exact-match accuracy, ..., "average": mean over kinds}; answers compared after strip()."""
    out = {}
    for kind in Q.KINDS:
        pairs = [(it.answer, a.strip()) for it, a in zip(items, answers) if it.kind == kind]
        out[kind] = sum(want == got for want, got in pairs) / max(1, len(pairs))
    out["average"] = float(np.mean([out[k] for k in Q.KINDS]))
    return out


def runtime_answers(model, items: list[Item]) -> list[str]:
    """Greedy answers of a loaded owl_cpp model (the shipped files) to each item, one chat() call each."""
    return [model.chat(draw(it.scene), it.question, max_tokens=48) for it in items]


def checkpoint_answers(checkpoint, items: list[Item]) -> list[str]:
    """Greedy answers of the PyTorch model in an HF-style demo checkpoint directory (torch needed)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from .config import DemoSizes
    from .data import HFTokenizer
    from .model import DemoOwl3
    from .train import torch_answers

    checkpoint = Path(checkpoint)
    tok = HFTokenizer(checkpoint / "tokenizer.json")
    model = DemoOwl3(DemoSizes(), len(tok))
    model.load_named(load_file(str(checkpoint / "model.safetensors")))
    return torch_answers(model, tok, DemoSizes(), items)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m owl_export.demo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model directory (owl-export output), or 'demo' for the shipped one")
    p.add_argument("--per-kind", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--checkpoint", help="also answer with the PyTorch model of this checkpoint directory and "
                   "report how often it agrees with the runtime")
    p.add_argument("--json", help="write the scores here")
    a = p.parse_args(argv)
    import owl_cpp
    model = owl_cpp.load(a.model, threads=a.threads)
    items = held_out(a.per_kind)
    t = time.perf_counter()
    answers = runtime_answers(model, items)
    dt = time.perf_counter() - t
    scores = score(items, answers)
    for kind in Q.KINDS:
        print(f"{kind:9s} {scores[kind]:6.1%}   (target {TARGETS[kind]:.0%})")
    print(f"average   {scores['average']:6.1%}   {len(items)} questions in {dt:.1f} s")
    agreement = None
    if a.checkpoint:
        theirs = checkpoint_answers(a.checkpoint, items)
        agreement = sum(x.strip() == y.strip() for x, y in zip(answers, theirs)) / len(items)
        print(f"the runtime and the PyTorch checkpoint give the same answer to {agreement:.1%} of the questions")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"scores": scores, "seconds": dt, "questions": len(items), "agreement": agreement,
                       "answers": answers}, f, indent=1)
    return 0 if all(scores[k] >= TARGETS[k] for k in Q.KINDS) else 1


if __name__ == "__main__":
    sys.exit(main())
