"""Train the demo mPLUG-Owl3 on the shapes task, CPU only, fixed seed:

  python -m owl_export.demo.train -o DIR [--steps 2400] [--batch 32]

writes DIR/checkpoint (an HF-style mPLUG-Owl3 checkpoint: config.json, model.safetensors, tokenizer files),
DIR/model (what `owl-export DIR/checkpoint -o DIR/model --quant q8_0` makes of it) and DIR/train_log.json.
A progress bar shows the loss, the held-out exact match of the last evaluation and the time left.

Recipe (docs/demo.md): AdamW (weight decay on matrices only), warm-up then cosine decay, gradient clipping,
an exponential moving average of the weights for evaluation and for the saved file, and, during training
only, an auxiliary per-patch loss on the vision features (shape, colour and 3x3 cell of the object under each
patch, through a throw-away linear head, background patches weighted down): trained through the language loss
alone the vision tower learns colours and little else. A short curriculum starts with more one-object pictures.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import DemoSizes, config_json, sizes_dict
from .data import (IGNORE, N_CELL_CLASSES, N_COLOUR_CLASSES, N_SHAPE_CLASSES, HFTokenizer, collate, make_sample,
                   preprocessing, prompt_sample, scatter_views, train_tokenizer)
from .evaluate import held_out, score
from .model import DemoOwl3, unused_vision_tensors

KIND_WEIGHTS = {"colour": 1.0, "shape": 1.5, "count": 0.8, "where": 1.2, "describe": 1.5}


def batches(seed: int, tok: HFTokenizer, s: DemoSizes, batch: int, steps: int, curriculum: int, out: queue.Queue,
            shape_focus: float = 1.0, focus: dict | None = None):
    """Producer thread: `steps` batches of samples, deterministic for a seed; shape questions drawn
    shape_focus times as often, and each kind in `focus` that many times as often."""
    rng = np.random.default_rng(seed)
    prep = preprocessing(s)
    kinds = list(KIND_WEIGHTS)
    p = np.array([KIND_WEIGHTS[k] * (shape_focus if k == "shape" else 1.0) * (focus or {}).get(k, 1.0) for k in kinds])
    p /= p.sum()
    try:
        for step in range(steps):
            samples = []
            for _ in range(batch):
                n_obj = 1 if step < curriculum and rng.random() < 0.5 else None
                n_turns = int(rng.integers(1, 4))
                ks = [kinds[int(i)] for i in rng.choice(len(kinds), n_turns, p=p)]
                samples.append(make_sample(rng, tok, s, prep, n_turns=n_turns, n_objects=n_obj, kinds=ks,
                                           cut=rng.random() > 0.1))
            out.put(collate(samples, tok.ids["<|endoftext|>"]))
    except Exception as e:       # handed to the training loop, which would otherwise wait for a batch forever
        out.put(e)


def parse_focus(text: str) -> dict:
    """"colour=4,where=2" -> {"colour": 4.0, "where": 2.0}; kinds from questions.KINDS."""
    from owl_cpp.demo.questions import KINDS
    out = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in KINDS or not weight:
            raise argparse.ArgumentTypeError(f"{part!r}: expected KIND=WEIGHT with KIND one of {', '.join(KINDS)}")
        out[kind] = positive(float)(weight)
    return out


def positive(kind):
    """An argparse type: `kind` of the text, which must be > 0 (and finite)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0 < value < float("inf")):
            raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
        return value
    return parse


def load_weights(path: Path) -> dict:
    """Weights to start from: a checkpoint directory (model.safetensors) or a run's ema_weights.pt."""
    path = Path(path)
    if path.is_dir():
        from safetensors.torch import load_file
        return load_file(str(path / "model.safetensors"))
    return torch.load(path, weights_only=True)


def patch_loss(logits: torch.Tensor, targets: torch.Tensor, shape_focus: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of the three per-patch heads (shape, colour, cell), the shape head's times
    shape_focus. Nine patches in ten show only background: weighted equally they would drown the object
    patches, whose shape and place are what the decoder must look up, so background patches count a tenth."""
    weight = torch.where(targets[..., 0] == N_SHAPE_CLASSES - 1, 0.1, 1.0).reshape(-1)
    total = 0.0
    lo = 0
    for k, n in enumerate((N_SHAPE_CLASSES, N_COLOUR_CLASSES, N_CELL_CLASSES)):
        ce = F.cross_entropy(logits[..., lo:lo + n].reshape(-1, n), targets[..., k].reshape(-1), reduction="none")
        total = total + (shape_focus if k == 0 else 1.0) * (ce * weight).sum() / weight.sum()
        lo += n
    return total / 3


def attention_loss(probes: list, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log of the hyper-attention mass (averaged over heads) that the position predicting an answer's first
    token puts on the visual rows of the object the question names, averaged over lookups and hyper layers;
    and that mass (detached) for the log. Lookup by shape fails when the object's patches do not stand out in
    the visual keys; supervising the attention itself asks for exactly that (docs/demo.md)."""
    if mask.shape[0] == 0:
        zero = torch.zeros(())
        return zero, zero
    m = mask.to(probes[0].dtype)[:, None, :]
    mass = torch.stack([(p * m).sum(-1).mean(-1) for p in probes])            # [layers, M]
    return -torch.log(mass.clamp_min(1e-6)).mean(), mass.detach().mean()


def key_shape_loss(heads, keys: list, batch) -> torch.Tensor:
    """Cross-entropy of a throw-away linear head per hyper layer that reads the shape of the object under each
    patch from that layer's visual keys (before MI-Rope), background patches weighted a tenth as in patch_loss.
    Selecting by shape needs shape in the keys: with neither the keys nor the queries shape-aware the attention
    loss alone starts from a saddle (its gradient on each side is proportional to the other)."""
    target = batch.patch_targets[..., 0].reshape(-1)
    weight = torch.where(target == N_SHAPE_CLASSES - 1, 0.1, 1.0)
    total = 0.0
    for head, k in zip(heads, keys):
        B, VP, D = k.shape
        rows = k.reshape(B * batch.starts.shape[1], -1, D)[batch.view_index].reshape(-1, D)   # real views only
        ce = F.cross_entropy(head(rows), target, reduction="none")
        total = total + (ce * weight).sum() / weight.sum()
    return total / len(keys)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def torch_answers(model: DemoOwl3, tok: HFTokenizer, s: DemoSizes, items, max_new: int = 40) -> list[str]:
    """Batched greedy decoding with full recomputation (the PyTorch side of the runtime-agreement check)."""
    prep = preprocessing(s)
    end = {tok.ids["<|im_end|>"], tok.ids["<|endoftext|>"]}
    answers = [""] * len(items)
    for lo in range(0, len(items), 64):
        chunk = items[lo:lo + 64]
        samples = [prompt_sample(it.scene, it.question, tok, s, prep) for it in chunk]
        b = collate(samples, tok.ids["<|endoftext|>"])
        vis = scatter_views(model.project(model.vision_features(b.pixels)), b)
        seqs = [list(x.ids) for x in samples]
        new = [[] for _ in samples]
        live = list(range(len(samples)))
        limit = max(len(x) for x in seqs) + max_new
        for _ in range(max_new):
            if not live:
                break
            T = max(len(seqs[i]) for i in live)
            ids = torch.full((len(live), T), tok.ids["<|endoftext|>"], dtype=torch.long)
            for r, i in enumerate(live):
                ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            logits = model(ids, vis[live], b.starts[live], b.view_valid[live])
            still = []
            for r, i in enumerate(live):
                t = int(logits[r, len(seqs[i]) - 1].argmax())
                if t in end or len(seqs[i]) >= limit:
                    continue
                seqs[i].append(t)
                new[i].append(t)
                still.append(i)
            live = still
        for k, ids_ in enumerate(new):
            answers[lo + k] = tok.decode(ids_)
    return answers


def save_checkpoint(out: Path, model: DemoOwl3, s: DemoSizes, tok_dir: Path, tok: HFTokenizer) -> None:
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (out / f).write_bytes((tok_dir / f).read_bytes())
    cfg = config_json(s, model.vocab_rows, tok.ids["<|endoftext|>"], tok.ids["<|im_end|>"])
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok.ids["<|endoftext|>"], "pad_token_id": tok.ids["<|endoftext|>"], "do_sample": False,
        "eos_token_id": [tok.ids["<|im_end|>"], tok.ids["<|endoftext|>"]], "transformers_version": "4.41.2"},
        indent=2) + "\n")
    weights = {**model.named_weights(), **unused_vision_tensors(s)}
    save_file({k: v.contiguous() for k, v in sorted(weights.items())}, str(out / "model.safetensors"),
              metadata={"format": "pt"})


def export_model(checkpoint: Path, model_dir: Path) -> None:
    from ..cli import main as owl_export
    # the demo's tower is tiny: fp32 alone, as the package ships it (a directory without vision.json)
    rc = owl_export([str(checkpoint), "-o", str(model_dir), "--quant", "q8_0", "--vision-quant", "none", "--quiet"])
    if rc:
        raise RuntimeError(f"owl-export {checkpoint} failed with status {rc}")


def train(out: Path, steps: int, batch: int, seed: int, lr: float, threads: int, eval_every: int,
          per_kind: int, init: Path | None = None, shape_focus: float = 1.0, focus: dict | None = None,
          attn_supervision: float = 0.0, warmup: int = 100, freeze_vision: bool = False, key_shape: float = 0.0,
          attn_words: bool = False, log=print) -> dict:
    from tqdm import tqdm

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    s = DemoSizes()
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    tok = train_tokenizer(tok_dir, s)
    model = DemoOwl3(s, len(tok), seed=seed)
    if init is not None:      # go on from an earlier run (the tokenizer is trained the same way: same ids)
        model.load_named(load_weights(init))
    if freeze_vision:         # a fine-tune of the decoder's lookup only: no backward through the vision tower
        for n, p in model.named_parameters():
            if n.startswith("vision_model"):
                p.requires_grad_(False)
    ema = copy.deepcopy(model).requires_grad_(False)
    aux = torch.nn.Linear(s.vision_hidden, N_SHAPE_CLASSES + N_COLOUR_CLASSES + N_CELL_CLASSES)
    key_heads = torch.nn.ModuleList(torch.nn.Linear(s.num_kv_heads * s.head_dim, N_SHAPE_CLASSES) for _ in s.hyper_layers)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in trained if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": rest + list(aux.parameters()) + list(key_heads.parameters()), "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    items = held_out(per_kind, seed=seed + 424242)      # quick held-out set, disjoint from the final one
    q: queue.Queue = queue.Queue(maxsize=4)
    threading.Thread(target=batches, args=(seed, tok, s, batch, steps, steps // 5, q, shape_focus, focus), daemon=True).start()
    history, last_eval = [], {}
    bar = tqdm(total=steps, desc="train", unit="step", dynamic_ncols=True)
    t0 = time.time()
    for step in range(steps):
        b = q.get()
        if isinstance(b, Exception):
            raise RuntimeError(f"making training samples failed: {b}") from b
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        with torch.set_grad_enabled(not freeze_vision):
            feats = model.vision_features(b.pixels)
        vis = scatter_views(model.project(feats), b)
        attn = mass = keys_loss = torch.zeros(())
        if attn_supervision > 0 or key_shape > 0:
            use = torch.ones_like(b.lookup_is_word) if attn_words else ~b.lookup_is_word
            logits, probes, keys = model(b.ids, vis, b.starts, b.view_valid,
                                         attn_at=(b.lookup_rows[use], b.lookup_pos[use]))
            attn, mass = attention_loss(probes, b.lookup_mask[use])
            if key_shape > 0:
                keys_loss = key_shape_loss(key_heads, keys, b)
        else:
            logits = model(b.ids, vis, b.starts, b.view_valid)
        lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b.labels.reshape(-1), ignore_index=IGNORE)
        aux_loss = torch.zeros(()) if freeze_vision else patch_loss(aux(feats), b.patch_targets, shape_focus)
        loss = lm + aux_loss + attn_supervision * attn + key_shape * keys_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            k = min(0.995, (step + 1) / (step + 10))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(k).add_(pm, alpha=1 - k)
        history.append({"step": step, "loss": lm.item(), "aux": aux_loss.item(), "attn": attn.item(),
                        "attn_mass": mass.item(), "key_shape": keys_loss.item()})
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            last_eval = score(items, torch_answers(ema, tok, s, items))
            torch.save(ema.named_weights(), out / "ema_weights.pt")     # to go on from (--init) if stopped
            history[-1]["eval"] = last_eval
            log(f"step {step + 1}: " + " ".join(f"{k} {v:.0%}" for k, v in last_eval.items())
                + f"  ({time.time() - t0:.0f} s)")
        bar.set_postfix(loss=f"{lm.item():.3f}", aux=f"{aux_loss.item():.2f}", mass=f"{mass.item():.2f}", keys=f"{keys_loss.item():.2f}",
                        acc=f"{last_eval.get('average', 0):.0%}" if last_eval else "-")
        bar.update(1)
    bar.close()
    minutes = (time.time() - t0) / 60
    save_checkpoint(out / "checkpoint", ema, s, tok_dir, tok)
    final = score(items, torch_answers(ema, tok, s, items))
    summary = {"steps": steps, "batch": batch, "seed": seed, "lr": lr, "threads": threads, "minutes": minutes,
               "init": str(init) if init else None, "shape_focus": shape_focus, "focus": focus,
               "attn_supervision": attn_supervision, "warmup": warmup, "freeze_vision": freeze_vision,
               "key_shape": key_shape, "attn_words": attn_words,
               "sizes": sizes_dict(s), "parameters": sum(p.numel() for p in model.parameters()),
               "held_out_torch": final, "history": history}
    (out / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m owl_export.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    p.add_argument("--steps", type=positive(int), default=2400, help="optimizer steps (default 2400: about an hour on 2 cores)")
    p.add_argument("--batch", type=positive(int), default=32, help="pictures per step (each with 1-3 questions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=positive(float), default=1.5e-3)
    p.add_argument("--threads", type=positive(int), default=2)
    p.add_argument("--eval-every", type=positive(int), default=300)
    p.add_argument("--eval-per-kind", type=positive(int), default=40)
    p.add_argument("--no-export", action="store_true", help="stop after writing the checkpoint")
    p.add_argument("--shape-focus", type=positive(float), default=1.0,
                   help="weight of shape questions and of the per-patch shape loss (the hardest part to learn)")
    p.add_argument("--focus", type=parse_focus, default=None, metavar="KIND=W,...",
                   help="draw these question kinds W times as often, e.g. colour=4,where=4")
    p.add_argument("--attn-supervision", type=float, default=0.0, metavar="W",
                   help="weight of the loss on the hyper-attention mass that an answer's query puts on the object "
                        "the question names (colour, shape, where questions); 0: off")
    p.add_argument("--attn-words", action="store_true",
                   help="supervise the hyper-attention at the question's words naming the object too")
    p.add_argument("--key-shape", type=float, default=0.0, metavar="W",
                   help="weight of a per-patch shape loss on the hyper layers' visual keys; 0: off")
    p.add_argument("--warmup", type=positive(int), default=100, help="warm-up steps of the learning rate")
    p.add_argument("--freeze-vision", action="store_true",
                   help="train the decoder and vision2text only (no per-patch loss, no backward through the tower)")
    p.add_argument("--init", type=Path, help="start from these weights: an earlier run's checkpoint directory or ema_weights.pt")
    a = p.parse_args(argv)
    if not (0 <= a.attn_supervision < float("inf")):
        p.error(f"--attn-supervision {a.attn_supervision}: must be a finite weight >= 0")
    if not (0 <= a.key_shape < float("inf")):
        p.error(f"--key-shape {a.key_shape}: must be a finite weight >= 0")
    summary = train(a.out, a.steps, a.batch, a.seed, a.lr, a.threads, a.eval_every, a.eval_per_kind, a.init, a.shape_focus,
                    a.focus, a.attn_supervision, a.warmup, a.freeze_vision, a.key_shape, a.attn_words)
    print(f"trained {a.steps} steps in {summary['minutes']:.1f} min; held-out (PyTorch): "
          + " ".join(f"{k} {v:.0%}" for k, v in summary["held_out_torch"].items()))
    if not a.no_export:
        export_model(a.out / "checkpoint", a.out / "model")
        print(f"model directory: {a.out / 'model'}  (check it: python -m owl_export.demo.evaluate {a.out / 'model'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
