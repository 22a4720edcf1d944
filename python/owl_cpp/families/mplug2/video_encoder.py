"""mPLUG-2's video encoder at run time: vision.onnx (frames [T, 3, S, S] -> video tokens [1 + T x patches,
width]) on onnxruntime. One video per run: the frames are one sequence (the temporal convolutions mix them)."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ...vision import open_onnx_session


class VideoEncoder:
    def __init__(self, path, *, threads: Optional[int] = None, device: str = "cpu"):
        self.path = os.fspath(path)
        self.session, self.device = open_onnx_session(self.path, threads, device, "video encoder")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: expected one input (frames) and one output (video tokens), found "
                             f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}")
        self._input, self._output = inputs[0], outputs[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        shape = self._output.shape
        if len(shape) not in (2, 3) or not isinstance(shape[-1], int):
            raise ValueError(f"{self.path}: output {self._output.name} has shape {shape}, expected [tokens, width]")
        self.width = int(shape[-1])
        in_shape = self._input.shape
        if len(in_shape) != 4 or not isinstance(in_shape[-1], int):
            raise ValueError(f"{self.path}: input {self._input.name} has shape {in_shape}, expected "
                             "[frames, 3, size, size]")
        self.image_size = int(in_shape[-1])
        self.input_dtype = np.float16 if self._input.type == "tensor(float16)" else np.float32

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [T, 3, S, S] (preprocessed) -> video tokens [n_tokens, width] float32."""
        if pixels.ndim != 4 or pixels.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"frames must be [T, 3, {self.image_size}, {self.image_size}], got {pixels.shape}")
        out = self.session.run([self._output.name], {self._input.name: pixels.astype(self.input_dtype)})[0]
        out = out.reshape(-1, self.width)
        if not np.isfinite(out).all():
            raise ValueError(f"{self.path}: the video encoder produced non-finite values (NaN/inf); the model "
                             "file is broken")
        return np.ascontiguousarray(out, dtype=np.float32)

