"""Vision tower speed: vision.onnx with onnxruntime (fp32 and dynamic int8) against the PyTorch reference in
eager mode, for one image at the real size (random weights). Also reports the int8 embedding error vs fp32.
  --family owl3  one 384x384 crop, SigLIP-so400m (26 of 27 layers, as Owl3 uses hidden_states[-2]) projected to
                 the Owl3-1B decoder width
  --family owl2  one 448x448 image, mPLUG-Owl2's ViT-L/14 (24 layers, 1025 tokens) + visual abstractor (6 layers,
                 64 queries) + projection to 4096 + vit_eos: the 65 embeddings an image becomes
  --family mplug2  one video of --frames frames (16) at 224x224, mPLUG-2's video encoder: CLIP ViT-L/14 with the
                 local temporal convolutions (24 layers, 257 tokens a frame) + the 2 universal BERT-large layers
                 (50 latents; the last one self-attends over all 1 + 256 x frames video tokens); also per frame

    python bench/bench_vision.py [--family owl3|owl2|mplug2] [--threads 2] [--reps 5] [--frames 16]

The ONNX files are built once (about 2-3 minutes each on 2 cores) and cached in --workdir.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("owl3", "owl2", "mplug2"), default="owl3")
    ap.add_argument("--frames", type=int, default=16, help="mplug2: frames per video")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workdir", default=str(HERE / "models"))
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/vision[_owl2].json)")
    a = ap.parse_args()
    from owl_export.owl3.onnx_export import compare, quantize_int8, trace_vision

    torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if a.family == "owl3":
        ref, size, what = so400m_reference(), 384, "one 384x384 crop, SigLIP-so400m (26 layers) + projection"
        fp32, int8 = work / "siglip-so400m-384-fp32.onnx", work / "siglip-so400m-384-int8.onnx"
        if not fp32.exists():
            trace_vision(ref, fp32, {"note": "random weights, benchmark only"})
        if not int8.exists():
            quantize_int8(fp32, int8)
        run_eager = lambda px: eager(ref, px)  # noqa: E731
    elif a.family == "mplug2":
        from owl_export.mplug2.onnx_export import export_video_encoder
        from owl_export.mplug2.reference import Mplug2CaptionReference

        sd, cfg = mplug2_checkpoint(work)
        ref, size = Mplug2CaptionReference(sd, cfg), 224
        what = f"one {a.frames}-frame video, mPLUG-2 video ViT-L/14 + 2 universal layers"
        fp32, int8 = work / "mplug2-video-224-fp32.onnx", work / "mplug2-video-224-int8.onnx"
        for path, quant in ((fp32, "none"), (int8, "int8")):
            if not path.exists():
                export_video_encoder(sd, cfg, path, quant)
        run_eager = lambda px: ref.encode_video(torch.from_numpy(px))  # noqa: E731
    else:
        from owl_export.owl2.onnx_export import export_owl2_vision_onnx

        hf, ref = owl2_reference(work)
        size, what = 448, "one 448x448 image, Owl2 ViT-L/14 + abstractor -> 65 x 4096"
        fp32, int8 = work / "owl2-vision-448-fp32.onnx", work / "owl2-vision-448-int8.onnx"
        for path, quant in ((fp32, "none"), (int8, "int8")):
            if not path.exists():
                export_owl2_vision_onnx(hf, path, quant=quant)
        run_eager = ref
    out = Path(a.out or HERE / "results" / ("vision.json" if a.family == "owl3" else f"vision_{a.family}.json"))
    n = a.frames if a.family == "mplug2" else 1                     # frames of one video, or one image
    pixels = (np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32) * 2 - 1)
    s32, s8 = ort_session(fp32, a.threads), ort_session(int8, a.threads)
    e32 = s32.run(None, {"pixel_values": pixels})[0]
    e8 = s8.run(None, {"pixel_values": pixels})[0]
    eref = run_eager(pixels).numpy()
    rows = {
        "pytorch_eager_ms": timed(lambda: run_eager(pixels), a.reps),
        "onnx_fp32_ms": timed(lambda: s32.run(None, {"pixel_values": pixels}), a.reps),
        "onnx_int8_ms": timed(lambda: s8.run(None, {"pixel_values": pixels}), a.reps),
    }
    result = {"family": a.family, "threads": a.threads, "reps": a.reps, "frames": n, **rows,
              "fp32_vs_pytorch": compare(e32, eref), "int8_vs_fp32": compare(e8, e32),
              "fp32_mb": fp32.stat().st_size / 2**20, "int8_mb": int8.stat().st_size / 2**20,
              "command": " ".join(["python"] + sys.argv)}
    print(f"{what:<60}{'ms':>10}{'x eager':>10}" + (f"{'ms/frame':>10}" if n > 1 else ""))
    for k in ("pytorch_eager_ms", "onnx_fp32_ms", "onnx_int8_ms"):
        print(f"{k:<60}{rows[k]:>10.0f}{rows['pytorch_eager_ms'] / rows[k]:>10.2f}"
              + (f"{rows[k] / n:>10.0f}" if n > 1 else ""))
    print(f"int8 vs fp32 embeddings: rel err {result['int8_vs_fp32']['rel_err']:.2e}, "
          f"cosine {result['int8_vs_fp32']['cosine']:.5f}; files {result['fp32_mb']:.0f} MB / {result['int8_mb']:.0f} MB")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
