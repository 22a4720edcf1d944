"""Batch inference throughput (images/s): owl-batch on one machine and on a local Ray cluster, next to a plain
loop of owl_cpp.chat calls and the PyTorch reference loop, on the same generated pictures, greedy, one prompt.

Models:
  demo   the shipped demo model (its HF checkpoint export/owl3-demo gives the PyTorch row)
  tiny   the test fixture's tiny random mPLUG-Owl3 (owl_export.owl3.fixtures), exported f32
  1b     random weights at mPLUG-Owl3-1B-241014's sizes (Qwen2-0.5B-size decoder with 4 hyper layers, SigLIP-so400m
         tower at 384 px), exported q8_0 with the int8 vision tower; vocabulary 1k (the fixture tokenizer), so the
         LM head is smaller than the real 151k one. Built once into bench/models/owl3-1b-random (minutes, ~2 GB).

Rows per model (each on a freshly loaded model, so no row finds another's image embeddings cached):
  chat loop           for each image: owl_cpp.chat(image, prompt, model=m)              (the baseline)
  batch default       owl_cpp.batch.run_batch(folder, ..., model=DIR): what owl-batch does with no options
                      (layout.py: on the CPU lanes, one worker per core, one thread each); the model loaded by it
  lanes w=N t=T       run_batch(..., layout="lanes", workers=N, threads=T): N whole pipelines of T threads
  stages w=N [t=T]    run_batch(..., layout="stages", workers=N): prep and vision threads, N workers with
                      batched decode (the layout before lanes; default on a GPU); t=1: the model loaded with
                      threads=1 (runtime and vision tower), the stages' threads then share the cores
  ray a=N             owl_cpp.batch.ray_engine.run_ray(..., actors=N) on ray.init(num_cpus=cores), wall time
                      from submission to the last result, actor start and model loading included (the note
                      gives the time to the first result)
  pytorch loop        per image: preprocessing, the reference vision tower and decoder
                      (export/owl_export/owl3: Owl3Reference, eager fp32; each token a full recompute, as its
                      greedy(); no KV cache), stopped at the same terminators and max_tokens; the first
                      --torch-images images only
"same" counts images whose answer equals the chat loop's (the runtime rows must give all of them).
--repeat R runs every row R times, the rows of a round one after another and the rounds in turn (a loaded
machine drifts: interleaving keeps the ratios fair); each row reports its median images/s and the median of
its per-round ratios to that round's chat loop.

  python bench/bench_batch.py                                   # demo + tiny + 1b, 64 images (1b: 16)
  python bench/bench_batch.py --models demo tiny --images 16    # a quick check
  python bench/bench_batch.py --no-ray --no-torch --repeat 3

Writes bench/results/batch.json and batch.md (the table). Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPT = "What does the image show?"
ONE_B = dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
             hyper_layers=[6, 13, 20, 22], vision_hidden=1152, vision_layers=27, vision_heads=16,
             vision_intermediate=4304, patch_size=14, image_size=384)


# ----------------------------------------------------------------------------------------------- models
def model_dirs(name: str, workdir: Path, one_b_layers: int = 0) -> tuple[str, "Path | None"]:
    """(model directory or "demo", HF checkpoint for the PyTorch row or None)."""
    if name == "demo":
        hf = ROOT / "export" / "owl3-demo"
        return "demo", hf if (hf / "config.json").is_file() else None
    from owl_export.cli import main as owl_export
    from owl_export.owl3.fixtures import make_tiny_owl3_checkpoint

    if name == "tiny":
        root = workdir / "owl3-tiny-random"
        sizes, quant = {}, ["--quant", "f32"]
    elif name == "1b":
        sizes = dict(ONE_B)
        if one_b_layers:          # a cut-down 1b for proving this script: the real widths, fewer layers
            sizes.update(num_layers=one_b_layers, vision_layers=one_b_layers,
                         hyper_layers=list(range(1, one_b_layers + 1)))
        root = workdir / ("owl3-1b-random" + (f"-{one_b_layers}l" if one_b_layers else ""))
        quant = ["--quant", "q8_0", "--vision-quant", "int8"]
    else:
        raise SystemExit(f"unknown model {name!r} (demo, tiny, 1b)")
    out = root / "model"
    if not (out / "decoder.gguf").is_file():
        print(f"building {name} into {root} ...", flush=True)
        hf = make_tiny_owl3_checkpoint(root / "hf", "1b", seed=3, **sizes)
        if owl_export([str(hf), "-o", str(out), *quant, "-q"]) != 0:
            raise SystemExit(f"owl-export failed for {name}")
    return str(out), root / "hf"


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from owl_cpp.demo import scenes

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:04d}.png"
        scenes.draw(scenes.random_scene(rng)).save(p)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------------------------- rows
def row_chat_loop(model: str, paths: list, max_tokens: int, threads) -> tuple[float, dict, dict]:
    import owl_cpp

    m = owl_cpp.load(model, threads=threads)
    t0, c0 = time.perf_counter(), time.process_time()
    answers = {p.name: owl_cpp.chat(str(p), PROMPT, model=m, max_tokens=max_tokens) for p in paths}
    return time.perf_counter() - t0, answers, {"cpu_s": time.process_time() - c0}


def row_batch(model: str, folder: Path, workers, max_tokens: int, threads, vision_batch: int, out: Path,
              layout=None, load_threads=None):
    """run_batch on a model loaded here with load_threads (None: the default; "batch": run_batch loads it)."""
    import owl_cpp
    from owl_cpp.batch import run_batch

    m = model if load_threads == "batch" else owl_cpp.load(model, threads=load_threads,
                                                            max_spare_contexts=max(1, (workers or 2) - 1))
    if out.exists():
        out.unlink()
    s = run_batch(folder, [PROMPT], out, model=m, workers=workers, threads=threads, layout=layout,
                  vision_batch=vision_batch, max_tokens=max_tokens, progress=False)
    return s["wall_s"], answers_of(out), {k: s[k] for k in ("cpu_s", "layout", "workers", "threads", "decode_steps",
                                                            "decode_batches", "prompt_tokens_cached",
                                                            "prompt_tokens_evaluated")}


def row_ray(model: str, folder: Path, actors: int, max_tokens: int, cores: int, out: Path):
    from owl_cpp.batch.ray_engine import run_ray

    if out.exists():
        out.unlink()
    s = run_ray(folder, [PROMPT], out, model=model, actors=actors, threads=max(1, cores // actors),
                max_tokens=max_tokens, progress=False)
    return s["wall_s"], answers_of(out), {"first_result_s": s["first_result_s"]}


def row_torch(model: str, hf: Path, paths: list, max_tokens: int, threads) -> tuple[float, dict]:
    """(wall seconds, answers) over `paths` (the bench passes the first --torch-images of the images).
    The PyTorch reference pipeline: the runtime's preprocessing and prompt (identical to the official
    processor's, tests/test_preprocess.py), then the reference vision tower and decoder in eager fp32."""
    import torch

    import owl_cpp
    from owl_cpp.messages import conversation
    from owl_export.owl3.language import Owl3Reference

    if threads:
        torch.set_num_threads(threads)
    m = owl_cpp.load(model)                 # only for the prompt builder and tokenizer
    ref = Owl3Reference.from_pretrained(hf)
    term = m.terminators
    answers = {}
    t0 = time.perf_counter()
    for p in paths:
        msgs, media = conversation(PROMPT, [str(p)])
        prompt = m._build_prompt(msgs, m._expand(media, True))
        embeds = ref.encode_images(torch.from_numpy(prompt.views))
        seq, new = list(prompt.ids), []
        for _ in range(max_tokens):
            tok = int(ref.forward(seq, embeds, prompt.image_starts)[-1].argmax())
            if tok in term:
                break
            seq.append(tok)
            new.append(tok)
        answers[p.name] = m.detokenize(new).strip()
    return time.perf_counter() - t0, answers


def answers_of(out: Path) -> dict:
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    return {Path(r["id"]).name: r["answer"] for r in recs}


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["demo", "tiny", "1b"])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--images-1b", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-threads", type=int, nargs="+", default=[0, 1],
                    help="stages rows: runtime + vision threads of the model (0: --threads); 1 leaves the cores to "
                    "the stages")
    ap.add_argument("--rows", nargs="+", default=["default", "lanes", "stages", "ray", "torch"],
                    help="which rows besides the chat loop: default lanes stages ray torch")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every row, interleaved (medians reported)")
    ap.add_argument("--torch-images", type=int, default=8, help="images for the PyTorch row (it is slow)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="runtime threads (default: physical cores)")
    ap.add_argument("--vision-batch", type=int, default=16)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-1b", action="store_true", help="also the PyTorch row for 1b (slow: no KV cache)")
    ap.add_argument("--one-b-layers", type=int, default=0, help=argparse.SUPPRESS)   # a cut-down 1b, to prove the script
    ap.add_argument("--workdir", default=str(HERE / "models"))
    ap.add_argument("--out", default=str(HERE / "results" / "batch.json"))
    a = ap.parse_args()

    import owl_cpp

    cores = owl_cpp._core.default_threads()
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    results = {"command": " ".join(["python"] + sys.argv), "cores": cores, "prompt": PROMPT,
               "max_tokens": a.max_tokens, "repeat": a.repeat, "rows": []}
    ray_up = False
    try:
        for name in a.models:
            model, hf = model_dirs(name, Path(a.workdir), a.one_b_layers)
            n = a.images_1b if name == "1b" else a.images
            folder = tmp / f"images-{n}"
            paths = sorted(folder.glob("*.png")) if folder.is_dir() else make_images(folder, n)
            owl_cpp.load(model).chat(str(paths[0]), PROMPT, max_tokens=2)            # page the files in

            # (label, run() -> (wall, answers, extra)), the chat loop first
            rows = [("chat loop", lambda: row_chat_loop(model, paths, a.max_tokens, a.threads))]
            if "default" in a.rows:
                rows.append(("batch default", lambda: row_batch(model, folder, None, a.max_tokens, None, a.vision_batch,
                                                                tmp / f"{name}-default.jsonl", None, "batch")))
            if "lanes" in a.rows:
                for w in a.workers:
                    t = max(1, cores // w)
                    rows.append((f"lanes w={w} t={t}", lambda w=w, t=t: row_batch(
                        model, folder, w, a.max_tokens, t, a.vision_batch, tmp / f"{name}-lanes-{w}.jsonl", "lanes", t)))
            if "stages" in a.rows:
                for w in a.workers:
                    for t in a.batch_threads:
                        rows.append((f"stages w={w}" + (f" t={t}" if t else ""), lambda w=w, t=t: row_batch(
                            model, folder, w, a.max_tokens, None, a.vision_batch, tmp / f"{name}-stages-{w}-{t}.jsonl",
                            "stages", t or a.threads)))
            if "ray" in a.rows and not a.no_ray:
                import ray

                if not ray_up:
                    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
                    ray_up = True
                for w in a.workers:
                    rows.append((f"ray a={w}", lambda w=w: row_ray(model, folder, w, a.max_tokens, cores,
                                                                  tmp / f"{name}-ray-{w}.jsonl")))
            if "torch" in a.rows and not a.no_torch and hf is not None and (name != "1b" or a.torch_1b):
                rows.append(("pytorch loop", lambda: (*row_torch(model, hf, paths[:a.torch_images], a.max_tokens,
                                                                 a.threads), None)))

            runs: dict = {label: [] for label, _ in rows}
            for r in range(a.repeat):
                base_wall = None
                for label, run in rows:
                    wall, answers, extra = run()
                    extra = dict(extra or {})
                    if "cpu_s" in extra:                 # this process's CPU time, every thread (not Ray's actors)
                        extra["cpu_ms_per_image"] = 1e3 * extra.pop("cpu_s") / max(1, len(answers))
                    if label == "chat loop":
                        base_wall, base_round = wall, answers
                        if r == 0:
                            base = answers
                    k = len(answers)
                    ratio = (k / wall) / (n / base_wall)
                    runs[label].append((wall, answers, extra, ratio))
                    print(f"  round {r + 1}/{a.repeat} {name:>5} | {label:<16} | {k / wall:8.2f} img/s | {ratio:5.2f}x",
                          flush=True)
            for label, _ in rows:
                walls = [x[0] for x in runs[label]]
                answers, extra = runs[label][0][1], runs[label][0][2]
                if "cpu_ms_per_image" in extra:
                    extra["cpu_ms_per_image"] = statistics.median(x[2]["cpu_ms_per_image"] for x in runs[label])
                some = [p for p in paths if p.name in answers]
                k = len(some)
                same = min(sum(x[1][p.name] == base[p.name] for p in some) for x in runs[label])
                wall = statistics.median(walls)
                ratio = statistics.median(x[3] for x in runs[label])
                row = {"model": name, "row": label, "images": k, "wall_s": wall, "images_per_s": k / wall,
                       "vs_chat_loop": ratio, "same_answers": same, "rounds": len(walls),
                       "images_per_s_each": [k / w for w in walls], **(extra or {})}
                results["rows"].append(row)
                tail = (f" | first result after {extra['first_result_s']:.1f} s"
                        if extra and extra.get("first_result_s") is not None else "")
                print(f"{name:>5} | {label:<16} | {k / wall:8.2f} img/s | {ratio:5.2f}x | same {same}/{k}" + tail,
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write(Path(a.out), results)


def write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    rounds = results.get("repeat", 1)
    lines = [f"`{results['command']}` ({results['cores']} cores, max_tokens {results['max_tokens']}, greedy"
             + (f"; medians of {rounds} interleaved rounds" if rounds > 1 else "") + ")", "",
             "| model | row | images | images/s | vs chat loop | same answers | CPU ms / image | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        note = (f"first result after {r['first_result_s']:.1f} s (actors started, models loaded; Ray Data "
                f"returns rows by block)" if r.get("first_result_s") is not None else "")
        lines.append(f"| {r['model']} | {r['row']} | {r['images']} | {r['images_per_s']:.2f} | "
                     f"{r['vs_chat_loop']:.2f}x | {r['same_answers']}/{r['images']} | "
                     + (f"{r['cpu_ms_per_image']:.1f}" if r.get("cpu_ms_per_image") is not None else "") + f" | {note} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"JSON: {path}\ntable: {path.with_suffix('.md')}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
