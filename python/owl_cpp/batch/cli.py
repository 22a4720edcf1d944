"""owl-batch: answer the same prompt(s) about every image of a folder or list; one JSON line per answer.

  owl-batch --model owl3-2b --images photos/ --prompt "Describe the image." --out results.jsonl
  owl-batch --images list.txt --prompts questions.txt --out results.jsonl --workers 2 --threads 1
  owl-batch --ray [ADDRESS] --model /shared/owl3-2b --images /shared/photos --out results.jsonl --actors 8

A rerun with the same --out skips what the file holds (a half-written last line is dropped); a bad image is an
error line; Ctrl-C leaves only whole lines. Exit status 0 when the job ran (error lines included), 2 on bad
arguments, 130 when interrupted (the command then exits at once, without waiting for worker threads still in
native code)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .inputs import check_prompts, read_prompts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="owl-batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", default=None, help="a model directory from owl-export (default: $OWL_MODEL, "
                   "else the built-in demo model, trained only on pictures of coloured shapes)")
    p.add_argument("--images", "-i", required=True, help="a folder (searched recursively for image files) or a "
                   "text file with one image path per line (relative to the file's folder)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", "-p", action="append", default=None,
                   help='a question for every image (repeat for several; default "Describe the image.")')
    g.add_argument("--prompts", default=None, help="a file of prompts: one per line, or a JSON list (.json)")
    p.add_argument("--out", "-o", default="results.jsonl", help="results file, appended to (default results.jsonl)")
    p.add_argument("--layout", choices=("auto", "lanes", "stages"), default="auto",
                   help="how the work uses this machine: lanes (default on the CPU): one whole pipeline per worker "
                   "(read, vision tower, answer), one thread each; stages (default on a GPU): prep and vision "
                   "threads feeding workers whose decode steps run batched")
    p.add_argument("--workers", "-w", type=int, default=None, help="images answered at once on this machine "
                   "(default: lanes one per core, stages 2)")
    p.add_argument("--vision-batch", type=int, default=16, help="stages: image crops per vision-tower run (default 16)")
    p.add_argument("--cross-image-vision", choices=("auto", "on", "off"), default="auto",
                   help="run crops of several images through the vision tower together: auto (default) where the "
                   "tower's numbers do not depend on what shares a run (fp32 on the CPU), so answers equal chat()'s; "
                   "on: also for int8 / GPU towers (faster, answers may differ slightly)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy, as chat()")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-cut", action="store_true", help="do not cut large images into tiles")
    p.add_argument("--retry-errors", action="store_true", help="on a rerun, do the error lines again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads per worker (lanes default: cores / "
                   "workers; stages: the runtime's default) or per actor with --ray (default 1)")
    p.add_argument("-c", "--n-ctx", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (single machine)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (pip install 'owl_cpp[ray]'): ADDRESS ('auto', 'ray://host:10001'), "
                   "or none to use $RAY_ADDRESS or start Ray on this machine")
    p.add_argument("--actors", type=int, default=2, help="with --ray: model replicas (actors) (default 2)")
    p.add_argument("--ray-batch-size", type=int, default=4, help="with --ray: rows per actor call (default 4)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prompts = read_prompts(args.prompts) if args.prompts else check_prompts(args.prompt or ["Describe the image."])
        if (args.workers is not None and args.workers < 1) or args.vision_batch < 1 or args.actors < 1 \
                or args.ray_batch_size < 1 or (args.threads is not None and args.threads < 1):
            raise ValueError("--workers, --threads, --vision-batch, --actors and --ray-batch-size must be >= 1")
        options = dict(model=args.model, vision_batch=args.vision_batch, max_tokens=args.max_tokens,
                       cut=not args.no_cut, retry_errors=args.retry_errors, progress=not args.no_progress,
                       n_ctx=args.n_ctx, temperature=args.temperature, seed=args.seed,
                       cross_image_vision={"auto": None, "on": True, "off": False}[args.cross_image_vision])
        if args.ray is not None:
            from .ray_engine import run_ray
            summary = run_ray(args.images, prompts, args.out, address=args.ray or None, actors=args.actors,
                              batch_size=args.ray_batch_size, threads=args.threads or 1, **options)
        else:
            from .engine import run_batch
            summary = run_batch(args.images, prompts, args.out, workers=args.workers, threads=args.threads,
                                device=args.device, layout=None if args.layout == "auto" else args.layout,
                                **options)
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError) as e:
        print(f"owl-batch: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary), file=sys.stderr)
    return 0


def run() -> None:
    """The owl-batch command: main(), and after Ctrl-C an immediate exit. The results file is closed by then;
    a worker thread still inside a long native call (a prefill, a vision run past its last check) must not
    hold up, or race, the interpreter's shutdown."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
