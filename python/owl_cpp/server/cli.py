"""owl-server: an OpenAI-compatible server over one model. Binds to 127.0.0.1 unless --host says otherwise."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="owl-server", description=__doc__)
    p.add_argument("--model", "-m", default=None, help="a model directory from owl-export or a .gguf text model "
                   "(default: $OWL_MODEL, else the built-in demo model, trained only on pictures of coloured shapes)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--parallel", type=int, default=1, help="generations at once, each with its own context")
    p.add_argument("--queue", type=int, default=16, help="requests that may wait for a free slot (503 beyond)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--allow-local-dir", default=None, help="image and video paths may name files in this directory "
                   "(none by default)")
    p.add_argument("--no-fetch", action="store_true", help="refuse http(s) image and video URLs (fetched by default, "
                   "10 s, 20 MB per image)")
    p.add_argument("--max-images", type=int, default=8, help="images per request (400 beyond; default 8)")
    p.add_argument("--max-image-bytes", type=int, default=20 << 20, help="bytes per image (default 20 MiB)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="width x height per image (default owl_cpp.images.MAX_PIXELS, 8192 x 8192)")
    p.add_argument("--max-video-bytes", type=int, default=64 << 20, help="bytes per video_url part (default 64 MiB)")
    p.add_argument("--max-videos", type=int, default=4,
                   help="videos per request for mPLUG-Owl3 (mPLUG-2 takes exactly one; default 4)")
    p.add_argument("--no-batch", action="store_true", help="decode each generation on its own instead of batching "
                   "the decode steps of concurrent ones (for debugging; also OWL_BATCH_DECODE=0)")
    p.add_argument("--no-web-page", action="store_true", help="do not serve the chat page at / (the API is unaffected)")
    p.add_argument("-c", "--n-ctx", type=int, default=None)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=None, metavar="N",
                   help="with a GPU device: the first N decoder layers on the GPU, the rest on the CPU (default: all)")
    p.add_argument("--vision", choices=("none", "dynamic", "static", "int8", "fp32", "fp16"), default=None,
                   help="which vision file runs (default: the model directory's vision.json default)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print('owl-server needs the server extra: pip install "owl_cpp[server]" (FastAPI + uvicorn)', file=sys.stderr)
        return 2
    if args.parallel < 1 or args.queue < 0:
        print("--parallel must be >= 1 and --queue >= 0", file=sys.stderr)
        return 2
    if args.max_images < 0 or args.max_image_bytes < 1 or (args.max_image_pixels is not None and args.max_image_pixels < 1):
        print("--max-images must be >= 0, --max-image-bytes and --max-image-pixels >= 1", file=sys.stderr)
        return 2
    if args.max_videos < 0 or args.max_video_bytes < 1:
        print("--max-videos must be >= 0 and --max-video-bytes >= 1", file=sys.stderr)
        return 2
    from .. import load
    from ..demo import model_dir as demo
    from .app import create_app

    try:
        path = demo.model_or_demo(args.model)
    except FileNotFoundError as e:
        print(f"owl-server: error: {e}", file=sys.stderr)
        return 2
    name = demo.DEMO_MODEL_NAME if demo.is_demo_dir(path) else None
    # Each concurrent generation needs a context: keep as many ready as there are slots.
    model = load(path, n_ctx=args.n_ctx, threads=args.threads, device=args.device,
                 max_spare_contexts=max(1, args.parallel - 1), vision=args.vision, n_gpu_layers=args.n_gpu_layers)
    if args.no_batch:
        model.batch_decode = False
    app = create_app(model, model_name=name, api_key=args.api_key, parallel=args.parallel, queue=args.queue,
                     fetch_images=not args.no_fetch, local_image_dir=args.allow_local_dir,
                     max_images=args.max_images, max_image_bytes=args.max_image_bytes,
                     max_image_pixels=args.max_image_pixels, max_video_bytes=args.max_video_bytes,
                     max_videos=args.max_videos, web_page=not args.no_web_page)
    if not args.no_web_page:
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"owl-server: chat page at http://{host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
