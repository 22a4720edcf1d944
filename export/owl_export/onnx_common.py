"""What every vision.onnx export shares, whichever model family it is traced from (owl3/onnx_export.py,
owl2/onnx_export.py).

  interface   input "pixel_values" float32 [N, 3, S, S] with N dynamic, output "image_embeds" float32 [N, P, H]
              (python/owl_cpp/vision.py VisionEncoder reads exactly these names)
  dtypes      fp32 (the reference's graph) or fp16 (weights and arithmetic; a Cast at each end keeps the
              interface float32)
  quants      none (the traced graph), dynamic (onnxruntime dynamic int8 of the fp32 graph: int8 MatMul
              weights, activations quantized per call; "int8" is its old name), static (int8 QDQ: per-channel
              weights, activation scales calibrated on synthetic pictures through the family's preprocessing,
              vision_quant.py). One trace can give several files (write_checked_variants), one per quant,
              named by VISION_FILES; vision.json in the model directory says which is which (model_dir.py).
  checking    every file is run by onnxruntime on random pixels and compared with the fp32 PyTorch
              reference: fp32 must agree to a relative error < FP32_TOLERANCE, the others are measured and
              reported (every variant must at least give finite numbers of the right shape); a quantized file
              is also compared with the fp32 graph on held-out synthetic pictures (views_cosine_min), the
              number that decides which file a CPU runs by default
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
VISION_QUANTS = ("none", "dynamic", "static")
QUANT_ALIASES = {"int8": "dynamic"}          # the name owl-export used before static int8 existed
# the file each quant is written to inside a model directory
VISION_FILES = {"none": "vision.onnx", "dynamic": "vision.int8.onnx", "static": "vision.qdq.onnx"}
INPUT_NAME, OUTPUT_NAME = "pixel_values", "image_embeds"
OPSET = 17                   # first opset with LayerNormalization as one op; every onnxruntime since 1.14 runs it
FP32_TOLERANCE = 1e-4        # fp32 export vs the fp32 PyTorch reference, relative error (the project-wide bound)
CHECK_BATCH = 2


class VisionCheckError(ValueError):
    """The exported graph does not reproduce the reference (a ValueError, so the CLI prints one line)."""


def vision_quant_name(quant: str) -> str:
    """quant, with the old name "int8" read as "dynamic"; an unknown name is a ValueError listing the known."""
    q = QUANT_ALIASES.get(quant, quant)
    if q not in VISION_QUANTS:
        raise ValueError(f"unknown vision quant {quant!r}; choose one of {', '.join(VISION_QUANTS)}")
    return q


def vision_quant_list(quants) -> tuple:
    """'static,none' / ['static', 'none'] / 'int8' -> canonical names, in order, without repeats."""
    items = quants.split(",") if isinstance(quants, str) else list(quants)
    out = tuple(dict.fromkeys(vision_quant_name(q.strip()) for q in items))
    if not out:
        raise ValueError("no vision quant given")
    return out


def check_vision_options(dtype: str, quant) -> None:
    if dtype not in VISION_DTYPES:
        raise ValueError(f"unknown vision dtype {dtype!r}; choose one of {', '.join(VISION_DTYPES)}")
    quants = vision_quant_list(quant)
    if dtype != "fp32" and set(quants) - {"none"}:
        # onnxruntime's quantizers read fp32 weights
        raise ValueError(f"--vision-quant {','.join(quants)} (int8) quantizes the fp32 graph; use it with "
                         "--vision-dtype fp32")


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
def quiet_root_logger():
    """onnxruntime's quantizer logs hints (pre-processing, symbolic shape inference) through the root logger;
    they do not apply here."""
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

    with quiet_root_logger():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False,
                         reduce_range=False, op_types_to_quantize=["MatMul"])


def set_quant_metadata(path: Path, quant: str) -> None:
    """The `<family>.vision.quant` metadata of the file at path := quant (one trace, several quantized files)."""
    onnx, _ = onnx_modules()
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    keys = [k for k in props if k.endswith(".vision.quant")]
    if keys and all(props[k] == quant for k in keys):
        return
    for k in keys:
        props[k] = quant
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


# ------------------------------------------------------------------------------------------- checking

def cpu_session(path: Path):
    _, ort = onnx_modules()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3                       # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    return cpu_session(path).run(None, {INPUT_NAME: pixels})[0]      # the one output, whatever its name


def compare(got: np.ndarray, want: np.ndarray) -> dict:
    """Relative Frobenius error, cosine similarity of the flattened outputs, max absolute difference."""
    got64, want64 = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    diff = got64 - want64
    return {"rel_err": float(np.linalg.norm(diff) / max(np.linalg.norm(want64), 1e-30)),
            "cosine": float(got64 @ want64 / max(np.linalg.norm(got64) * np.linalg.norm(want64), 1e-30)),
            "max_abs_err": float(np.abs(diff).max())}


def write_checked_onnx(out_path: Path, trace: Callable[[Path], None], *, dtype: str, quant: str,
                       pixels: np.ndarray, want: np.ndarray, fp32_tolerance: float, progress: bool,
                       calibration=None) -> dict:
    """One file: write_checked_variants({quant: out_path}, ...)[quant]."""
    quant = vision_quant_name(quant)
    return write_checked_variants({quant: Path(out_path)}, trace, dtype=dtype, pixels=pixels, want=want,
                                  fp32_tolerance=fp32_tolerance, progress=progress, calibration=calibration)[quant]


class Calibration:
    """What static int8 needs from a family: views() -> float32 [N, 3, S, S] calibration input (through the
    family's preprocessing), held_out() -> other views of the same kind for the check, batch: views per
    onnxruntime call (mPLUG-2: the frames of one video)."""

    def __init__(self, views: Callable[[], np.ndarray], held_out: Callable[[], np.ndarray], batch: int = 1):
        self.views, self.held_out, self.batch = views, held_out, batch


def _run_views(path: Path, views: np.ndarray, batch: int) -> list:
    sess = cpu_session(path)
    return [sess.run(None, {INPUT_NAME: np.ascontiguousarray(views[k:k + batch])})[0]
            for k in range(0, len(views), batch)]


def write_checked_variants(outputs: dict, trace: Callable[[Path], None], *, dtype: str, pixels: np.ndarray,
                           want: np.ndarray, fp32_tolerance: float, progress: bool,
                           calibration: Calibration | None = None) -> dict:
    """trace(tmp) writes the graph once; each quant in `outputs` (quant -> path) is then made from it (none:
    the graph itself, dynamic / static: int8 quantization), run by onnxruntime on `pixels`, compared with
    `want` (the fp32 reference's output), and renamed to its path once every one has passed.

    Returns {quant: compare()'s errors (+ for quantized files, views_cosine_min / views_cosine_median: cosine
    with the fp32 graph per held-out view, when calibration is given)}. Raises VisionCheckError (and writes
    nothing) when an output has the wrong shape or type, is not finite, or (fp32 without quantization) is
    further than `fp32_tolerance` from `want` in relative error."""
    from .convert_text import _Progress
    from .vision_quant import quantize_static_qdq

    outputs = {vision_quant_name(q): Path(p) for q, p in outputs.items()}
    if "static" in outputs and calibration is None:
        raise ValueError("static int8 needs calibration views")
    first = next(iter(outputs.values()))
    first.parent.mkdir(parents=True, exist_ok=True)
    tmp_trace = first.with_name(f".{first.stem}.trace.tmp.onnx")
    tmps = {q: (tmp_trace if q == "none" else p.with_name(f".{p.stem}.{q}.tmp.onnx")) for q, p in outputs.items()}
    steps = 1 + sum(q != "none" for q in outputs) + len(outputs)
    bar = _Progress(steps, progress, label=first.name, unit="steps")
    results, held_out, held_out_want = {}, None, None
    try:
        trace(tmp_trace)
        bar.update(1, f"traced ({dtype})")
        for q, tmp in tmps.items():
            if q == "dynamic":
                quantize_int8(tmp_trace, tmp)
            elif q == "static":
                views, seen = calibration.views(), [0]

                def calibrated(n, total=len(views)):      # minutes at the real sizes: say where it is
                    seen[0] += n
                    bar.update(0, f"calibrating (static) {seen[0]}/{total} views")

                quantize_static_qdq(tmp_trace, tmp, views, batch=calibration.batch, progress=calibrated)
            if q != "none":               # the trace says "none"; the quantizers keep the metadata they read
                set_quant_metadata(tmp, q)
                bar.update(1, f"quantized ({q})")
        for q, tmp in tmps.items():
            got = run_onnx(tmp, pixels)
            where = outputs[q]
            if got.shape != want.shape or got.dtype != np.float32:
                raise VisionCheckError(f"{where}: onnxruntime returned {got.dtype} {got.shape}, "
                                       f"expected float32 {want.shape}")
            if not np.isfinite(got).all():
                raise VisionCheckError(f"{where}: onnxruntime's output holds inf or NaN on {len(pixels)} random "
                                       f"images ({dtype}, quant {q}); not writing it")
            errors = compare(got, want)
            if dtype == "fp32" and q == "none" and not errors["rel_err"] < fp32_tolerance:
                raise VisionCheckError(
                    f"{where}: onnxruntime's output differs from the PyTorch reference by a relative error of "
                    f"{errors['rel_err']:.3g} (limit {fp32_tolerance:g}) on {len(pixels)} random images; "
                    "not writing it")
            if q != "none" and calibration is not None:
                if held_out is None:          # the fp32 graph on realistic views: what the quantized files lose
                    held_out = calibration.held_out()
                    held_out_want = _run_views(tmp_trace, held_out, calibration.batch)
                cos = [compare(g, w)["cosine"]
                       for g, w in zip(_run_views(tmp, held_out, calibration.batch), held_out_want)]
                errors.update(views_cosine_min=float(min(cos)), views_cosine_median=float(np.median(cos)),
                              held_out_views=int(len(held_out)))
            results[q] = errors
            bar.update(1, f"checked ({q})")
        for q, tmp in tmps.items():
            os.replace(tmp, outputs[q])
    finally:
        bar.close()
        for t in (tmp_trace, *tmps.values()):
            t.unlink(missing_ok=True)
    return results
