"""Static int8 (QDQ) quantization of a traced vision tower, calibrated on synthetic pictures.

  quantize_static_qdq(src, dst, views)   the fp32 graph at src -> the QDQ graph at dst; views: float32
                                         [N, 3, S, S] pixels through the family's own preprocessing
  STATIC_OPTIONS                         the chosen settings (bench/vision_quant_sweep.py measured the others;
                                         docs/vision_quant.md has the table)

Dynamic int8 (onnx_common.quantize_int8) stores MatMul weights in int8 and quantizes each activation on every
call (a pass over it for its range, then the integer GEMM). Static int8 measures each activation's range once,
here, on calibration views and stores the scales in the graph (weights: one scale per output channel).
onnxruntime fuses each QuantizeLinear -> DequantizeLinear -> MatMul (float output) into MatMulIntegerToFloat,
the kernel dynamic int8 ends in, without the per-call range pass. Only the MatMuls with a weight operand are
quantized: int8 softmax probabilities (scale 1/255) erase most of 729 tokens' attention weights, and the
patch Conv, LayerNorm, GELU and the residual Adds cost accuracy in int8 without a measured gain (the sweep).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

INPUT_NAME = "pixel_values"

# What the export uses (see the module doc); a sweep overrides any of these.
STATIC_OPTIONS = {
    "op_types": ("MatMul",),            # the Linear layers and the attention products
    "activation_type": "QUInt8",        # U8S8: the integer GEMM x86's VNNI and AVX2 kernels take directly
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    "calibrate_method": "MinMax",
    "activation_symmetric": False,
    "attention": False,                 # True: QK^T and attention x V in int8 too (MatMuls of two activations)
    "float_outputs": True,              # MatMul outputs stay float: onnxruntime runs MatMulIntegerToFloat, the
                                        # kernel dynamic int8 uses, minus the range pass (no requantization)
}


class _Views:
    """onnxruntime's CalibrationDataReader protocol over `views`, `batch` at a time (get_next -> feed dict)."""

    def __init__(self, views: np.ndarray, batch: int, progress=None):
        self.views, self.batch, self.k, self.progress = views, max(1, int(batch)), 0, progress

    def get_next(self):
        if self.k >= len(self.views):
            return None
        chunk = np.ascontiguousarray(self.views[self.k:self.k + self.batch], dtype=np.float32)
        self.k += len(chunk)
        if self.progress is not None:
            self.progress(len(chunk))
        return {INPUT_NAME: chunk}

    def rewind(self):
        self.k = 0

    def __len__(self):
        return len(self.views)

    def set_range(self, start_index: int, end_index: int):     # used only with CalibStridedMinMax
        self.views = self.views[start_index:end_index]
        self.k = 0


def check_views(views: np.ndarray) -> np.ndarray:
    views = np.asarray(views)
    if views.ndim != 4 or views.shape[0] < 1 or views.shape[1] != 3 or not np.isfinite(views).all():
        raise ValueError(f"calibration views must be finite float32 [N >= 1, 3, S, S], got {views.dtype} "
                         f"{views.shape}")
    return views.astype(np.float32, copy=False)


def quantize_static_qdq(src: Path, dst: Path, views: np.ndarray, *, batch: int = 1, progress=None,
                        cache: Path | None = None, **options) -> dict:
    """Write the static int8 QDQ graph of the fp32 graph at `src` to `dst`, calibrated on `views`.

    options override STATIC_OPTIONS; progress(n) is called after each calibration batch of n views; cache: a
    JSON file for the calibrated ranges (onnxruntime's calibration_cache_path: the ranges depend only on the
    graph, the views and calibrate_method, so a sweep calibrates once per method). Returns the settings used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    unknown = set(options) - set(STATIC_OPTIONS)
    if unknown:
        raise ValueError(f"unknown static quantization option(s) {sorted(unknown)}; known: {sorted(STATIC_OPTIONS)}")
    o = {**STATIC_OPTIONS, **options}
    views = check_views(views)
    extra = {"ActivationSymmetric": bool(o["activation_symmetric"])}
    if o["float_outputs"]:
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
    # (MinMax keeps only each tensor's per-batch min and max; CalibMaxIntermediateOutputs would bound that, but
    # onnxruntime 1.32 then drops the ranges it clears, "No data is collected")
    if o["calibrate_method"] in ("Percentile", "Entropy"):
        extra["CalibTensorRangeSymmetric"] = bool(o["activation_symmetric"])
    # onnxruntime's MatMulConstBOnly is not honoured by the QDQ quantizer (1.32): name the nodes instead
    exclude = [] if o["attention"] else activation_matmuls(src)
    from .onnx_common import quiet_root_logger

    with quiet_root_logger():
        quantize_static(str(src), str(dst), _Views(views, batch, progress), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(o["op_types"]), per_channel=bool(o["per_channel"]),
                        nodes_to_exclude=exclude,
                        reduce_range=bool(o["reduce_range"]), activation_type=QuantType[o["activation_type"]],
                        weight_type=QuantType[o["weight_type"]],
                        calibrate_method=CalibrationMethod[o["calibrate_method"]], extra_options=extra,
                        calibration_cache_path=None if cache is None else str(cache))
    return {**o, "op_types": list(o["op_types"]), "calibration_views": int(len(views))}


def activation_matmuls(path: Path) -> list:
    """Names of the MatMul nodes of the graph at `path` that multiply two activations (no initializer operand):
    the attention's QK^T and probabilities x V."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    weights |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]


def stack_views(parts: Sequence[np.ndarray], limit: int) -> np.ndarray:
    """`limit` views of the preprocessed pictures `parts` (each [n, 3, S, S]) taken round-robin (every
    picture's first view, then every picture's second, ...), so a few pictures each contribute."""
    order = [p[i] for i in range(max(len(p) for p in parts)) for p in parts if i < len(p)]
    if len(order) < limit:
        raise ValueError(f"{len(order)} calibration views, {limit} wanted")
    return np.stack(order[:limit])
