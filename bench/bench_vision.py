"""Vision tower speed: the vision files owl-export writes (fp32, dynamic int8, static int8 QDQ) on onnxruntime
against the PyTorch reference in eager mode, for one image at the real size (random weights), timed in the same
run (interleaved repetitions, medians; ratios to fp32 and to dynamic int8). Also the int8 files' embedding
cosine vs fp32, per view of held-out synthetic pictures through the family's preprocessing (min and median),
and on random pixels. Random weights can flatter or hurt int8: no outlier channels as trained towers have, but
no trained structure either; tests/test_vision_quant.py and docs/runtime.md add the trained demo tower.
  --family owl3  one 384x384 crop, SigLIP-so400m (26 of 27 layers, as Owl3 uses hidden_states[-2]) projected to
                 the Owl3-1B decoder width
  --family owl2  one 448x448 image, mPLUG-Owl2's ViT-L/14 (24 layers, 1025 tokens) + visual abstractor (6 layers,
                 64 queries) + projection to 4096 + vit_eos: the 65 embeddings an image becomes
  --family mplug2  one video of --frames frames (16) at 224x224, mPLUG-2's video encoder: CLIP ViT-L/14 with the
                 local temporal convolutions (24 layers, 257 tokens a frame) + the 2 universal BERT-large layers
                 (50 latents; the last one self-attends over all 1 + 256 x frames video tokens); also per frame

    python bench/bench_vision.py [--family owl3|owl2|mplug2] [--threads 2] [--reps 5] [--frames 16]
                                 [--views 6] [--no-eager] [--layers N (owl3: fewer encoder layers)]

The ONNX files are built once (about 2-3 minutes each on 2 cores; static int8 adds its calibration, a few
minutes) and cached in --workdir.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def so400m_reference(layers: int | None = None, outliers: float = 0.0):
    """SigLIP-so400m at 384 px with random weights projected to the Owl3-1B width. layers: encoder layers
    (default the real 27, of which 26 run); outliers > 0 scales 8 fixed channels of every LayerNorm weight by
    that factor, imitating the few very large activation channels of trained ViTs (static int8's hard case)."""
    from owl_export.owl3.variant import DEFAULT_VISION_CONFIG, VisionConfig
    from owl_export.owl3.vision import Owl3VisionReference

    vc = dict(DEFAULT_VISION_CONFIG, **({"num_hidden_layers": layers} if layers else {}))
    cfg = VisionConfig.from_dict({"vision_config": vc})  # the so400m / 384 px tower of docs/owl3.md 1.2
    g = torch.Generator().manual_seed(0)
    Hv, I, H = cfg.hidden_size, cfg.intermediate_size, 896
    ln_weight = torch.ones(Hv)
    if outliers:
        ln_weight[torch.randperm(Hv, generator=g)[:8]] = outliers
    t = {"vision_model.embeddings.patch_embedding.weight": torch.randn(Hv, 3, cfg.patch_size, cfg.patch_size, generator=g) * 0.02,
         "vision_model.embeddings.patch_embedding.bias": torch.zeros(Hv),
         "vision_model.embeddings.position_embedding.weight": torch.randn(cfg.num_patches, Hv, generator=g) * 0.02,
         "vision2text_model.weight": torch.randn(H, Hv, generator=g) / Hv ** 0.5, "vision2text_model.bias": torch.zeros(H)}
    for i in range(cfg.num_layers - 1):
        p = f"vision_model.encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            t[p + n + ".weight"], t[p + n + ".bias"] = ln_weight.clone(), torch.zeros(Hv)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + f"self_attn.{n}.weight"] = torch.randn(Hv, Hv, generator=g) / Hv ** 0.5
            t[p + f"self_attn.{n}.bias"] = torch.zeros(Hv)
        t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"] = torch.randn(I, Hv, generator=g) / Hv ** 0.5, torch.zeros(I)
        t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"] = torch.randn(Hv, I, generator=g) / I ** 0.5, torch.zeros(Hv)
    return Owl3VisionReference(cfg, t, "linear", H)


def owl2_reference(work: Path):
    """The Owl2 tower at its published sizes (docs/owl2.md A1) as a checkpoint of the official layout whose
    decoder is cut to one tiny layer (only the vision side is timed)."""
    from owl_export.owl2.fixtures import make_tiny_owl2_checkpoint
    from owl_export.owl2.vision import Owl2VisionReference

    hf = work / "owl2-vision-448-hf"
    if not (hf / "config.json").exists():
        make_tiny_owl2_checkpoint(hf, "owl2", hidden_size=4096, num_layers=1, num_heads=32, intermediate_size=64,
                                  vision_hidden=1024, vision_layers=24, vision_heads=16, vision_intermediate=4096,
                                  num_queries=64, abstractor_layers=6, abstractor_intermediate=2816)
    return hf, Owl2VisionReference.from_pretrained(hf)


def mplug2_checkpoint(work: Path):
    """mPLUG-2's video encoder at its published sizes (docs/owl2.md PART D: ViT-L/14 at 224, BERT-large width,
    2 universal layers) as a checkpoint of the official layout; the decoder and fusion stacks are cut to what
    the fixture needs (only the video side is timed). About 1.8 GB."""
    from owl_export.mplug2.config import load_checkpoint
    from owl_export.mplug2.fixtures import make_tiny_mplug2_checkpoint

    d = work / "mplug2-video-224"
    if not (d / "mplug2_caption.pth").exists():
        make_tiny_mplug2_checkpoint(d, seed=0, vision_width=1024, vision_layers=24, num_frames=16, text_width=1024,
                                    text_heads=16, text_intermediate=4096, text_encoder_layers=2, num_uni_layer=2,
                                    decoder_layers=2, fusion_hidden_layers=1, fusion_layers=1)
    return load_checkpoint(d)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def eager(ref, pixels):
    return ref.project(ref.features(torch.from_numpy(pixels)))


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def build_files(a, work: Path):
    """-> (what, files {fp32, dynamic, static}, eager(pixels), calibration views, held-out views, batch)."""
    from owl_export.onnx_common import quantize_int8
    from owl_export.vision_quant import quantize_static_qdq

    if a.family == "owl3":
        from owl_export.owl3.onnx_export import calibration_views, trace_vision

        ref = so400m_reference(a.layers + 1 if a.layers else None)
        depth = f"{a.layers} layers" if a.layers else "26 layers"
        what, stem = f"one 384x384 crop, SigLIP-so400m ({depth}) + projection", "siglip-so400m-384" + (
            f"-l{a.layers}" if a.layers else "")
        files = {k: work / f"{stem}-{k}.onnx" for k in ("fp32", "int8", "static")}
        if not files["fp32"].exists():
            trace_vision(ref, files["fp32"], {"note": "random weights, benchmark only"})
        cal = lambda: calibration_views(384)  # noqa: E731
        held = calibration_views(384, a.views, first_seed=1000)
        run_eager, batch, size = (lambda px: eager(ref, px)), 1, 384
    elif a.family == "mplug2":
        from owl_export.mplug2.onnx_export import calibration_videos, export_video_encoder
        from owl_export.mplug2.reference import Mplug2CaptionReference

        sd, cfg = mplug2_checkpoint(work)
        ref, size = Mplug2CaptionReference(sd, cfg), 224
        what = f"one {a.frames}-frame video, mPLUG-2 video ViT-L/14 + 2 universal layers"
        files = {k: work / f"mplug2-video-224-{k}.onnx" for k in ("fp32", "int8", "static")}
        if not files["fp32"].exists():
            export_video_encoder(sd, cfg, files["fp32"], "none")
        cal = lambda: calibration_videos(cfg)  # noqa: E731
        held = calibration_videos(cfg, max(1, a.views // 3), a.frames, first_seed=1000)
        run_eager, batch = (lambda px: ref.encode_video(torch.from_numpy(px))), a.frames
    else:
        from owl_export.owl2.config import Owl2Config
        from owl_export.owl2.onnx_export import calibration_views, export_owl2_vision_onnx

        hf, ref = owl2_reference(work)
        cfg = Owl2Config.from_checkpoint(hf)
        size, what = 448, "one 448x448 image, Owl2 ViT-L/14 + abstractor -> 65 x 4096"
        files = {k: work / f"owl2-vision-448-{k}.onnx" for k in ("fp32", "int8", "static")}
        if not files["fp32"].exists():
            export_owl2_vision_onnx(hf, files["fp32"])
        cal = lambda: calibration_views(cfg)  # noqa: E731
        held = calibration_views(cfg, a.views, first_seed=1000)
        run_eager, batch = ref, 1
    if not files["int8"].exists():
        quantize_int8(files["fp32"], files["int8"])
    if not files["static"].exists():
        t = time.perf_counter()
        quantize_static_qdq(files["fp32"], files["static"], cal(), batch=batch)
        print(f"static int8: calibrated and quantized in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return what, files, run_eager, held, batch, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("owl3", "owl2", "mplug2"), default="owl3")
    ap.add_argument("--frames", type=int, default=16, help="mplug2: frames per video")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--views", type=int, default=6, help="held-out views for the cosine (mplug2: views/3 videos)")
    ap.add_argument("--layers", type=int, default=None, help="owl3 only: encoder layers (default the real 26)")
    ap.add_argument("--no-eager", action="store_true", help="skip the PyTorch eager timing")
    ap.add_argument("--workdir", default=str(HERE / "models"))
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/vision[_owl2].json)")
    a = ap.parse_args()
    from owl_export.onnx_common import compare

    torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    what, files, run_eager, held, batch, size = build_files(a, work)
    out = Path(a.out or HERE / "results" / ("vision.json" if a.family == "owl3" else f"vision_{a.family}.json"))
    n = a.frames if a.family == "mplug2" else 1                     # frames of one video, or one image
    pixels = (np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32) * 2 - 1)
    names = {"fp32": "onnx_fp32", "int8": "onnx_int8", "static": "onnx_static_int8"}
    sessions = {k: ort_session(p, a.threads) for k, p in files.items()}
    run = {k: (lambda s: lambda px: s.run(None, {"pixel_values": px})[0])(s) for k, s in sessions.items()}
    # embeddings: random pixels, and held-out synthetic views (one image, or one video, per run)
    e = {k: r(pixels) for k, r in run.items()}
    eref = run_eager(pixels).numpy()
    chunks = [held[i:i + batch] for i in range(0, len(held), batch)]
    want = [run["fp32"](c) for c in chunks]
    views_cos = {k: [compare(run[k](c), w)["cosine"] for c, w in zip(chunks, want)] for k in ("int8", "static")}
    # timing: warm-up, then the variants interleaved so a load change hits each alike
    times = {k: [] for k in run}
    for r in run.values():
        r(pixels)
    for _ in range(a.reps):
        for k, r in run.items():
            t = time.perf_counter()
            r(pixels)
            times[k].append(time.perf_counter() - t)
    rows = {f"{names[k]}_ms": 1e3 * statistics.median(v) for k, v in times.items()}
    if not a.no_eager:
        rows["pytorch_eager_ms"] = timed(lambda: run_eager(pixels), a.reps)
    result = {"family": a.family, "threads": a.threads, "reps": a.reps, "frames": n, **rows,
              "static_vs_dynamic_speed": rows["onnx_int8_ms"] / rows["onnx_static_int8_ms"],
              "fp32_vs_pytorch": compare(e["fp32"], eref), "int8_vs_fp32": compare(e["int8"], e["fp32"]),
              "static_int8_vs_fp32": compare(e["static"], e["fp32"]),
              "held_out_cosine_vs_fp32": {("dynamic" if k == "int8" else k): {
                  "min": min(v), "median": statistics.median(v), "n": len(v)} for k, v in views_cos.items()},
              "fp32_mb": files["fp32"].stat().st_size / 2**20, "int8_mb": files["int8"].stat().st_size / 2**20,
              "static_int8_mb": files["static"].stat().st_size / 2**20,
              "command": " ".join(["python"] + sys.argv)}
    base = rows["onnx_fp32_ms"]
    print(f"{what:<60}{'ms':>10}{'x fp32':>9}" + (f"{'ms/frame':>10}" if n > 1 else "")
          + f"{'cos min':>10}{'cos med':>10}{'MB':>7}")
    for k in ("pytorch_eager_ms", "onnx_fp32_ms", "onnx_int8_ms", "onnx_static_int8_ms"):
        if k not in rows:
            continue
        q = {"onnx_int8_ms": "int8", "onnx_static_int8_ms": "static"}.get(k)
        mb = {"onnx_fp32_ms": "fp32_mb", "onnx_int8_ms": "int8_mb", "onnx_static_int8_ms": "static_int8_mb"}.get(k)
        print(f"{k:<60}{rows[k]:>10.0f}{base / rows[k]:>9.2f}" + (f"{rows[k] / n:>10.0f}" if n > 1 else "")
              + (f"{min(views_cos[q]):>10.5f}{statistics.median(views_cos[q]):>10.5f}" if q else " " * 20)
              + (f"{result[mb]:>7.0f}" if mb else ""))
    print(f"static int8 is {result['static_vs_dynamic_speed']:.2f}x the speed of dynamic int8; cosine vs fp32 on "
          f"{len(chunks)} held-out synthetic {'videos' if batch > 1 else 'views'} (min/median above), on random "
          f"pixels dynamic {result['int8_vs_fp32']['cosine']:.5f}, static {result['static_int8_vs_fp32']['cosine']:.5f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
