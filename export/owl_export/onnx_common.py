"""What every vision.onnx export shares, whichever model family it is traced from (owl3/onnx_export.py,
owl2/onnx_export.py).

  interface   input "pixel_values" float32 [N, 3, S, S] with N dynamic, output "image_embeds" float32 [N, P, H]
              (python/owl_cpp/vision.py VisionEncoder reads exactly these names)
  dtypes      fp32 (the reference's graph) or fp16 (weights and arithmetic; a Cast at each end keeps the
              interface float32); quant int8 = onnxruntime dynamic quantization of the fp32 graph
  checking    the written file is run by onnxruntime on random pixels and compared with the fp32 PyTorch
              reference: fp32 must agree to a relative error < FP32_TOLERANCE, fp16 and int8 are measured and
              reported (every variant must at least give finite numbers of the right shape)
  writing     through temporary files renamed at the end: a failed trace or check leaves no file behind

Tracing uses torch's TorchScript-based exporter (dynamo=False): the dynamo exporter needs onnxscript, which
is not a dependency, and tracing records the batch size as a graph value, so N stays dynamic.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

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


def onnx_modules():
    """(onnx, onnxruntime), or an ImportError that says how to get them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"exporting vision.onnx needs onnx and onnxruntime ({e}); "
                          'pip install "owl_cpp[export]"') from e
    return onnx, onnxruntime


# ------------------------------------------------------------------------------------------- tracing

def trace_to_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, output_dims: Sequence[int],
                  metadata: dict[str, str], *, output_name: str = OUTPUT_NAME,
                  axes: tuple[str, str] = ("N", "N")) -> None:
    """Trace `module` (pixels -> embeddings) to ONNX at `path` with a dynamic batch axis.

    The weights must be module state (parameters or buffers): they then become initializers, which
    onnxruntime's quantizer can rewrite; tensors captured any other way become Constant nodes it skips.
    `output_dims` are the output's sizes after the batch axis (shape inference loses them behind the
    reshapes); `metadata` goes into metadata_props. mPLUG-2's video encoder names its own output and axis
    ("video_embeds") and dynamic axes (input "T" frames, output "video_tokens" = 1 + T * tokens per frame)."""
    onnx, _ = onnx_modules()
    with warnings.catch_warnings(), torch.no_grad():
        # the legacy exporter's deprecation notice and the tracer's "converting a shape to a Python int"
        # warnings (the references' input-size checks) say nothing about this graph
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=[output_name], opset_version=OPSET, do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: axes[0]}, output_name: {0: axes[1]}}, dynamo=False)
    model = onnx.load(str(path))
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 1 + len(output_dims):
        raise VisionCheckError(f"{path}: the traced output has rank {len(out_dims)}, expected "
                               f"{1 + len(output_dims)}")
    for dim, value in zip(out_dims[1:], output_dims):
        dim.dim_value = int(value)                     # replaces the generated dim_param (a oneof)
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

def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    _, ort = onnx_modules()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3                       # errors only
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT_NAME: pixels})[0]      # the one output, whatever its name


def compare(got: np.ndarray, want: np.ndarray) -> dict:
    """Relative Frobenius error, cosine similarity of the flattened outputs, max absolute difference."""
    got64, want64 = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    diff = got64 - want64
    return {"rel_err": float(np.linalg.norm(diff) / max(np.linalg.norm(want64), 1e-30)),
            "cosine": float(got64 @ want64 / max(np.linalg.norm(got64) * np.linalg.norm(want64), 1e-30)),
            "max_abs_err": float(np.abs(diff).max())}


def write_checked_onnx(out_path: Path, trace: Callable[[Path], None], *, dtype: str, quant: str,
                       pixels: np.ndarray, want: np.ndarray, fp32_tolerance: float,
                       progress: bool) -> dict:
    """trace(tmp) writes the graph; then int8 quantization when asked, the onnxruntime run on `pixels`,
    the comparison with `want` (the fp32 reference's output), and the rename to `out_path`.

    Returns compare()'s errors. Raises VisionCheckError (and writes nothing) when the output has the wrong
    shape or type, is not finite, or (fp32 without quantization) is further than `fp32_tolerance` from
    `want` in relative error."""
    from .convert_text import _Progress

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_trace = out_path.with_name(f".{out_path.stem}.trace.tmp.onnx")
    tmp_quant = out_path.with_name(f".{out_path.stem}.int8.tmp.onnx")
    steps = ["trace"] + (["quantize"] if quant == "int8" else []) + ["check"]
    bar = _Progress(len(steps), progress, label=out_path.name, unit="steps")
    try:
        trace(tmp_trace)
        bar.update(1, f"traced ({dtype})")
        final = tmp_trace
        if quant == "int8":
            quantize_int8(tmp_trace, tmp_quant)
            final = tmp_quant
            bar.update(1, "quantized (int8)")
        got = run_onnx(final, pixels)
        if got.shape != want.shape or got.dtype != np.float32:
            raise VisionCheckError(f"{out_path}: onnxruntime returned {got.dtype} {got.shape}, "
                                   f"expected float32 {want.shape}")
        if not np.isfinite(got).all():
            raise VisionCheckError(f"{out_path}: onnxruntime's output holds inf or NaN on {len(pixels)} random "
                                   f"images ({dtype}, quant {quant}); not writing it")
        errors = compare(got, want)
        if dtype == "fp32" and quant == "none" and not errors["rel_err"] < fp32_tolerance:
            raise VisionCheckError(
                f"{out_path}: onnxruntime's output differs from the PyTorch reference by a relative error of "
                f"{errors['rel_err']:.3g} (limit {fp32_tolerance:g}) on {len(pixels)} random images; "
                "not writing it")
        bar.update(1, "checked")
        os.replace(final, out_path)
    finally:
        bar.close()
        for t in (tmp_trace, tmp_quant):
            t.unlink(missing_ok=True)
    return errors
