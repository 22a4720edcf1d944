"""mPLUG-Owl3 vision tower -> vision.onnx, traced from our PyTorch reference and checked with onnxruntime.

  input   "pixel_values"  float32 [N, 3, S, S], N dynamic (tiles + global view of every image, preprocessed)
  output  "image_embeds"  float32 [N, P, H]: SigLIP hidden_states[-2] + vision2text (Owl3VisionReference)

  --vision-dtype fp32   the reference's fp32 graph. The export FAILS unless onnxruntime reproduces the
                        PyTorch reference on a random batch to a relative error < 1e-4.
  --vision-dtype fp16   weights and arithmetic in fp16 (meant for GPUs); a Cast at each end keeps the
                        input and output float32, so the runtime feeds both files the same way.
  --vision-quant int8   onnxruntime dynamic quantization of the fp32 graph (the CPU-fast file).
For fp16 and int8 the error against the fp32 reference is measured and reported, not bounded.

Tracing uses torch's TorchScript-based exporter (dynamo=False): the dynamo exporter needs onnxscript, which
is not a dependency, and tracing records the batch size as a graph value, so N stays dynamic.
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..convert_text import _Progress
from .variant import VisionConfig, detect_variant
from .vision import Owl3VisionReference

VISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
VISION_QUANTS = ("none", "int8")
INPUT_NAME, OUTPUT_NAME = "pixel_values", "image_embeds"
OPSET = 17                   # first opset with LayerNormalization as one op; every onnxruntime since 1.14 runs it
FP32_TOLERANCE = 1e-4        # fp32 export vs the fp32 PyTorch reference, relative error (the project-wide bound)
CHECK_BATCH = 2


class VisionCheckError(ValueError):
    """The exported graph does not reproduce the reference (a ValueError, so the CLI prints one line)."""


def check_vision_options(dtype: str, quant: str) -> None:
    if dtype not in VISION_DTYPES:
        raise ValueError(f"unknown vision dtype {dtype!r}; choose one of {', '.join(VISION_DTYPES)}")
    if quant not in VISION_QUANTS:
        raise ValueError(f"unknown vision quant {quant!r}; choose one of {', '.join(VISION_QUANTS)}")
    if quant == "int8" and dtype != "fp32":
        # onnxruntime's dynamic quantization reads fp32 weights; the int8 file replaces the fp32 one
        raise ValueError("--vision-quant int8 quantizes the fp32 graph; use it with --vision-dtype fp32")


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"exporting vision.onnx needs onnx and onnxruntime ({e}); "
                          'pip install "owl_cpp[export]"') from e
    return onnx, onnxruntime


# ------------------------------------------------------------------------------------------- tracing

class _VisionGraph(torch.nn.Module):
    """Owl3VisionReference as an nn.Module whose weights are buffers: traced weights that are not module
    state become Constant nodes, which onnxruntime's quantizer skips; buffers become initializers."""

    def __init__(self, ref: Owl3VisionReference):
        super().__init__()
        self.ref = ref
        for name, t in ref.w.items():
            self.register_buffer(name.replace(".", "__"), t)   # the same tensors; names cannot contain "."

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # the reference casts pixels to its dtype; .float() casts fp16 embeddings back (no-op for fp32)
        return self.ref.project(self.ref.features(pixel_values)).float()


def trace_vision(ref: Owl3VisionReference, path: Path, metadata: dict[str, str]) -> None:
    """Export `ref` to ONNX at `path` with a dynamic batch axis; `metadata` goes into metadata_props."""
    onnx, _ = _onnx_modules()
    S = ref.config.image_size
    example = torch.zeros(CHECK_BATCH, ref.config.num_channels, S, S)
    with warnings.catch_warnings(), torch.no_grad():
        # the legacy exporter's deprecation notice and the tracer's "converting a shape to a Python int"
        # warnings (the reference's input-size check) say nothing about this graph
        warnings.simplefilter("ignore")
        torch.onnx.export(_VisionGraph(ref), (example,), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}}, dynamo=False)
    # Shape inference loses P and H behind the reshapes; state them, so the interface reads [N, P, H].
    model = onnx.load(str(path))
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    for dim, value in zip(out_dims[1:], (ref.config.num_patches, ref.text_hidden)):
        dim.dim_value = value                          # replaces the generated dim_param (a oneof)
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


@contextmanager
def _quiet_root_logger():
    """onnxruntime's quantizer logs a pre-processing hint through the root logger; it does not apply here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8: MatMul weights stored int8 (one scale per tensor), activations quantized per call.

    QInt8 weights (U8S8) are the fast path on x86 (AVX2/VNNI) and ARM: on two SigLIP-size layers at 384 px
    (AVX2) they ran 1.7x faster than fp32, QUInt8 weights slower than fp32. The attention's activation x
    activation MatMuls and the patch Conv stay float. Per-channel weights without reduce_range saturate
    the AVX2 (non-VNNI) U8S8 kernel (measured cosine 0.994 on the tiny model), and with reduce_range they
    were less accurate than per-tensor, so these are onnxruntime's defaults, deliberately."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False,
                         reduce_range=False, op_types_to_quantize=["MatMul"])


# ------------------------------------------------------------------------------------------- checking

def random_pixels(ref: Owl3VisionReference, n: int, seed: int = 0) -> np.ndarray:
    """n random views in the preprocessed range [-1, 1], float32 [n, 3, S, S]."""
    S, c = ref.config.image_size, ref.config.num_channels
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, S, S, generator=g) * 2 - 1).numpy()


def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    _, ort = _onnx_modules()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3                       # errors only
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]


def compare(got: np.ndarray, want: np.ndarray) -> dict:
    """Relative Frobenius error, cosine similarity of the flattened outputs, max absolute difference."""
    got64, want64 = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    diff = got64 - want64
    return {"rel_err": float(np.linalg.norm(diff) / max(np.linalg.norm(want64), 1e-30)),
            "cosine": float(got64 @ want64 / max(np.linalg.norm(got64) * np.linalg.norm(want64), 1e-30)),
            "max_abs_err": float(np.abs(diff).max())}


# ------------------------------------------------------------------------------------------- export

def export_vision_onnx(hf_dir: str | Path, out_path: str | Path, *, dtype: str = "fp32", quant: str = "none",
                       progress: bool = True, seed: int = 0) -> dict:
    """Write vision.onnx for an mPLUG-Owl3 checkpoint; returns a summary with the measured errors.

    Writes through temporary files renamed at the end: a failed trace or check leaves no vision.onnx."""
    check_vision_options(dtype, quant)
    _onnx_modules()                                   # fail early and clearly when they are missing
    config, tensors, _ = load_checkpoint(hf_dir)
    variant = detect_variant(config, tensors.keys())
    vcfg, hidden = VisionConfig.from_dict(config), int(config["hidden_size"])
    reference = Owl3VisionReference(vcfg, tensors, variant.vision2text, hidden)      # always fp32: the oracle
    traced = reference if dtype == "fp32" else Owl3VisionReference(vcfg, tensors, variant.vision2text, hidden,
                                                                   VISION_DTYPES[dtype])

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_trace = out_path.with_name(f".{out_path.stem}.trace.tmp.onnx")
    tmp_quant = out_path.with_name(f".{out_path.stem}.int8.tmp.onnx")
    steps = ["trace"] + (["quantize"] if quant == "int8" else []) + ["check"]
    bar = _Progress(len(steps), progress, label="vision.onnx", unit="steps")
    try:
        pixels = random_pixels(reference, CHECK_BATCH, seed)
        want = reference(pixels).numpy()
        trace_vision(traced, tmp_trace, {"owl.family": "owl3", "owl3.variant": variant.name,
                                         "owl3.vision.image_size": str(vcfg.image_size),
                                         "owl3.vision.num_patches": str(vcfg.num_patches),
                                         "owl3.embedding_length": str(hidden), "owl3.vision.dtype": dtype,
                                         "owl3.vision.quant": quant})   # of the final file
        bar.update(1, f"traced ({dtype})")
        final = tmp_trace
        if quant == "int8":
            quantize_int8(tmp_trace, tmp_quant)
            final = tmp_quant
            bar.update(1, "quantized (int8)")
        got = run_onnx(final, pixels)
        expected_shape = (CHECK_BATCH, vcfg.num_patches, hidden)
        if got.shape != expected_shape or got.dtype != np.float32:
            raise VisionCheckError(f"{out_path}: onnxruntime returned {got.dtype} {got.shape}, "
                                   f"expected float32 {expected_shape}")
        errors = compare(got, want)
        if dtype == "fp32" and quant == "none" and not errors["rel_err"] < FP32_TOLERANCE:
            raise VisionCheckError(
                f"{out_path}: onnxruntime's output differs from the PyTorch reference by a relative error of "
                f"{errors['rel_err']:.3g} (limit {FP32_TOLERANCE:g}) on {CHECK_BATCH} random images; "
                "not writing it")
        bar.update(1, "checked")
        os.replace(final, out_path)
    finally:
        bar.close()
        for t in (tmp_trace, tmp_quant):
            t.unlink(missing_ok=True)

    return {"path": str(out_path), "dtype": dtype, "quant": quant, "opset": OPSET,
            "image_size": vcfg.image_size, "num_patches": vcfg.num_patches, "hidden_size": hidden,
            "file_size": out_path.stat().st_size, "check_batch": CHECK_BATCH, **errors}
