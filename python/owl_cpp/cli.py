"""`owl-run`: ask an exported mPLUG-Owl3, mPLUG-Owl2 or mPLUG-Owl model about images (Owl3: or a video),
streaming the answer; or chat with a llama / qwen2 GGUF text model (in its chat template).

  owl-run --model owl3-7b --image photo.jpg -p "What is in this picture?"
  owl-run --model owl3-7b --image a.jpg --image b.jpg -p "What changed?"
  owl-run --model owl3-7b --video clip.mp4 -p "What happens?"          (needs PyAV or OpenCV)
  owl-run --model owl3-7b --image photo.jpg                            (chat: one question per line on stdin;
                                                                        /image PATH adds an image to the next
                                                                        question, /reset starts over)
  owl-run --model qwen2-0.5b-instruct-q8_0.gguf -p "Hi!"              (a text model; without -p: a chat)
  owl-run --model mplug2-msrvtt --video clip.mp4                       (mPLUG-2: prints the video's caption;
                                                                        --video FOLDER: its images are the frames)
  owl-run --model mplug2-msrvtt-qa --video clip.mp4 -p "what is he doing?"   (mPLUG-2 VideoQA: prints the answer)
  owl-run --demo [--seed N] [--save PATH]                              (a random picture of coloured shapes and
                                                                        five questions about it, to the built-in
                                                                        demo model; --image PATH: about a picture)

Without --model and $OWL_MODEL, the built-in demo model answers (trained only on pictures of coloured shapes).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from .demo.cli_demo import MAX_TOKENS as DEMO_MAX_TOKENS, SAVE_DEFAULT as DEMO_SAVE

MAX_FRAMES = 16          # the README's MAX_NUM_FRAMES (docs/owl3.md §6.5)
MAX_TOKENS = 512
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="owl-run", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=None,
                   help="model directory written by owl-export, or a llama / qwen2 .gguf text model (default: $OWL_MODEL, "
                   "else the built-in demo model)")
    p.add_argument("-i", "--image", action="append", default=[], help="an image file (repeat for several)")
    p.add_argument("--video", action="append", default=[], help="a video file (Owl3: sampled at 1 frame/s, at most "
                   "--max-frames frames; mPLUG-2: 16 frames at the centres of equal intervals), or for mPLUG-2 a "
                   "folder of frame images")
    p.add_argument("--max-frames", type=int, default=None,
                   help=f"frames per video (default: Owl3 {MAX_FRAMES}, mPLUG-2 the model's, 16)")
    p.add_argument("--greedy", action="store_true", help="mPLUG-2: argmax decoding instead of the published "
                   "beam search")
    p.add_argument("-p", "--prompt", help="the question; without it, read questions from stdin, one per line")
    p.add_argument("-n", "--max-tokens", type=int, default=None,
                   help=f"answer length limit (default {MAX_TOKENS}; --demo: {DEMO_MAX_TOKENS})")
    p.add_argument("--temp", type=float, default=0.0, help="temperature; 0 = greedy, as the official code (default)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="sampling seed; with --demo, also picks the picture "
                   "and the questions (default: random)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("-c", "--n-ctx", type=int, default=None, help="context length in tokens (default 4096)")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=None, metavar="N",
                   help="with --device cuda: run only the first N decoder layers on the GPU and the rest on the CPU, "
                        "for a GPU smaller than the model (default: all layers on the GPU)")
    p.add_argument("--kv-type", choices=("f16", "f32"), default=None,
                   help="KV cache storage (default f16: half the memory of f32)")
    p.add_argument("--vision", choices=("none", "dynamic", "static", "int8", "fp32", "fp16"), default=None,
                   help="which vision file of the model directory runs: none (fp32/fp16), dynamic or static int8 "
                        "(default: the one its vision.json names for CPUs)")
    p.add_argument("--no-cut", action="store_true", help="Owl3: do not cut images into tiles (global view only)")
    p.add_argument("--image-mode", choices=("resize", "pad", "crop"), default=None,
                   help="Owl2 / Owl v1: how an image becomes square: stretch (resize, the default), pad with the "
                   "mean colour (pad, as the official CLI) or centre-crop (crop)")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr after each answer")
    p.add_argument("--demo", action="store_true", help="draw a random picture of coloured shapes, save it, show "
                   "it (on a colour terminal) and ask the built-in demo model (or --model) five questions about it, "
                   "with the right answers; with --image, ask about that picture")
    p.add_argument("--save", metavar="PATH", help=f"with --demo: where to save the picture (default {DEMO_SAVE})")
    return p


# ------------------------------------------------------------------------------------------- video

def sample_frame_indices(n_frames: int, fps: float, max_frames: int = MAX_FRAMES) -> list[int]:
    """The README's encode_video: every round(fps)-th frame (about 1 per second); if more than max_frames,
    uniform_sample: gap = len / n, element int(i * gap + gap / 2) for i < n."""
    step = max(1, round(fps or 1))
    idx = list(range(0, n_frames, step))
    if len(idx) > max_frames:
        gap = len(idx) / max_frames
        idx = [idx[int(i * gap + gap / 2)] for i in range(max_frames)]
    return idx


def read_video(path: str, max_frames: int = MAX_FRAMES) -> list:
    """A video file -> the sampled RGB frames as (H, W, 3) uint8 arrays (video_io.py: PyAV or OpenCV)."""
    from . import video_io
    return video_io.read_frames(path, lambda count, fps: sample_frame_indices(count, fps, max_frames))


# ------------------------------------------------------------------------------------------- run

def _answer(ask, prompt: str, images, videos, args, out, text_model: bool = False) -> None:
    stream = ask(prompt, images, videos, stream=True, **_gen_options(args, text_model))
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    if args.verbose and stream.info:
        print(timing_line(stream.info), file=sys.stderr)


def _gen_options(args, text_model: bool = False) -> dict:
    opts = dict(max_tokens=args.max_tokens, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed)
    return opts if text_model else dict(opts, cut=not args.no_cut)


def timing_line(info: dict) -> str:
    t = info["timings"]
    vision = (f"vision {t['vision_ms']:.1f} ms ({info['images']} views, {info['views_encoded']} encoded) | "
              if "vision_ms" in t else "")
    return (vision + f"prefill {info['prompt_tokens_evaluated']} tokens, {t['prefill_tokens_per_s']:.1f} t/s | "
            f"decode {info['completion_tokens']} tokens, {t['decode_tokens_per_s']:.1f} t/s | "
            f"{info['finish_reason']}")


def _interactive(model, images, videos, args, stdin, out) -> None:
    session = model.session()
    text_model = not hasattr(model, "vision")
    tty = stdin.isatty()
    while True:
        if tty:
            out.write("> ")
            out.flush()
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/image "):
            if text_model:
                print("owl-run: error: a text model takes no images", file=sys.stderr)
                continue
            images.append(line[len("/image "):].strip())
            continue
        if line == "/reset":
            session.reset()
            continue
        try:
            if text_model:
                _answer(lambda p, i, v, **kw: session.ask(p, **kw), line, images, videos, args, out, True)
            else:
                _answer(session.ask, line, images, videos, args, out)
        except (ValueError, FileNotFoundError) as e:     # a bad image or a long prompt: say so, keep chatting
            print(f"owl-run: error: {e}", file=sys.stderr)
        images, videos = [], []


def _text_model(model, path, args, stdin, out) -> int:
    """owl-run with a GGUF text model: -p answers one question, else a chat on stdin (chat format: the
    file's chat template, else ChatML; text_model.py)."""
    if args.image or args.video or args.demo or args.image_mode is not None or args.no_cut:
        raise ValueError(f"{path} is a text model: it takes no images or videos (--image, --video, --demo, "
                         f"--image-mode, --no-cut are for mPLUG-Owl models)")
    if args.prompt is not None:
        _answer(lambda p, i, v, **kw: model.chat(p, **kw), args.prompt, [], [], args, out, True)
    else:                        # (a model with no chat format fails at session(), before reading stdin)
        _interactive(model, [], [], args, stdin, out)
    return 0


def _caption(model, path, args, out) -> int:
    """owl-run with mPLUG-2: the caption of each --video (a file, or a folder whose images are the frames); a
    VideoQA model answers -p about each --video instead."""
    qa = getattr(model, "task", "caption") == "qa"
    if qa and (args.image or args.prompt is None or args.demo or not args.video):
        raise ValueError(f"{path} is an mPLUG-2 VideoQA model: give it --video FILE_OR_FOLDER and the question as "
                         "-p (no --image or --demo)")
    if not qa and (args.image or args.prompt is not None or args.demo or not args.video):
        raise ValueError(f"{path} is an mPLUG-2 captioning model: give it --video FILE_OR_FOLDER (no --image, -p "
                         "or --demo: it captions videos; questions need a VideoQA checkpoint's export)")
    for video in args.video:
        if os.path.isdir(video):
            names = sorted(n for n in os.listdir(video) if n.lower().endswith(FRAME_EXTENSIONS))
            if not names:
                raise ValueError(f"{video}: a folder of frames, but no images ({', '.join(FRAME_EXTENSIONS)}) in it")
            video = [os.path.join(video, n) for n in names]
        if qa:
            info = model.answer(video, args.prompt, greedy=args.greedy, frames=args.max_frames, return_info=True)
        else:
            info = model.caption(video, greedy=args.greedy, frames=args.max_frames, return_info=True)
        out.write(info["text"] + "\n")
        out.flush()
        if args.verbose:
            t = info["timings"]
            question = f" | question {t['question_ms']:.0f} ms" if qa else ""
            print(f"video {t['video_ms']:.0f} ms ({info['frames']} frames, {info['tokens']} tokens){question} | "
                  f"decode {t['decode_ms']:.0f} ms ({len(info['ids'])} tokens, "
                  f"{'greedy' if args.greedy else 'beam search'})", file=sys.stderr)
    return 0


def main(argv: Optional[list[str]] = None, stdin=None, stdout=None) -> int:
    args = build_parser().parse_args(argv)
    stdin, out = stdin or sys.stdin, stdout or sys.stdout
    if args.save and not args.demo:
        print("owl-run: error: --save goes with --demo", file=sys.stderr)
        return 2
    if args.max_tokens is None:
        args.max_tokens = DEMO_MAX_TOKENS if args.demo else MAX_TOKENS
    try:
        from .demo.model_dir import model_or_demo
        # --demo ignores $OWL_MODEL (its questions are for the demo model) and needs no notice
        path = model_or_demo(args.model, use_env=not args.demo, announce=not args.demo)
        from . import load
        model = load(path, n_ctx=args.n_ctx, threads=args.threads, device=args.device, kv_type=args.kv_type,
                     vision=args.vision, n_gpu_layers=args.n_gpu_layers)
        if not hasattr(model, "vision"):
            return _text_model(model, path, args, stdin, out)
        if hasattr(model, "caption"):
            return _caption(model, path, args, out)
        if args.image_mode is not None:
            if not hasattr(model, "image_mode"):
                raise ValueError(f"--image-mode is for mPLUG-Owl2 / mPLUG-Owl models; {path} is not one")
            model.image_mode = args.image_mode
        if args.demo:
            from .demo.cli_demo import run_demo
            return run_demo(model, args, _gen_options(args), out, sys.stderr)
        videos = [read_video(v, args.max_frames or MAX_FRAMES) for v in args.video]
        if args.prompt is not None:
            _answer(lambda p, i, v, **kw: model.chat(i, p, videos=v, **kw), args.prompt, args.image, videos,
                    args, out)
        else:
            _interactive(model, list(args.image), videos, args, stdin, out)
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"owl-run: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
