"""owl_cpp.load(): the model family from the GGUF's general.architecture.

  a model directory (owl-export's output)  -> its decoder.gguf says the family: "owl3" -> OwlModel,
                                              "owl2" (mPLUG-Owl2 and mPLUG-Owl v1) -> Owl2Model
  a .gguf file                             -> "qwen2" / "llama" -> TextModel; an Owl3 decoder.gguf ->
                                              OwlModel of its directory (vision.onnx beside it)
  "demo" (when nothing of that name is here) -> the demo model shipped in the package (demo/model_dir.py)
anything else is a FormatError (a ValueError) naming the architecture and the supported ones.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from . import _core
from .decoder_model import check_device, check_n_gpu_layers
from .demo import model_dir as demo
from .families import MEDIA_FAMILIES, SUPPORTED, TEXT_ARCHITECTURES, media_model_class

DECODER_FILE = "decoder.gguf"
ARCH_KEY = "general.architecture"
EXPORT_HINT = "make one from a Hugging Face checkpoint with `owl-export HF_CHECKPOINT_DIR -o {path}`"


def architecture(gguf_path: Union[str, os.PathLike]) -> str:
    f = _core.GGUFFile.open(os.fspath(gguf_path))
    if ARCH_KEY not in f:
        raise _core.FormatError(f"{os.fspath(gguf_path)}: no {ARCH_KEY} key: not a model file")
    return str(f[ARCH_KEY])


def load(path: Union[str, os.PathLike], *, n_ctx: Optional[int] = None, threads: Optional[int] = None,
         device: str = "cpu", kv_type: Optional[str] = None, max_spare_contexts: int = 1,
         vision: Optional[str] = None, n_gpu_layers: Optional[int] = None):
    """Loads a model: a model directory from owl-export or a .gguf file; the family comes from the file.
    "demo" loads the small demo model shipped in the package (pictures of coloured shapes only), unless a file
    or directory named "demo" exists in the current directory.
    n_ctx: positions per context (default: the training context, at most 4096); threads: CPU threads
    (default: physical cores); device "cuda" (or "cuda:N") runs the decoder on the GPU, and the vision tower on
    onnxruntime's CUDA provider where installed; n_gpu_layers: with a GPU device, only the first n layers run on
    it and the rest (and the output head) on the CPU, for a GPU smaller than the model (None or -1: all layers;
    mPLUG-Owl3 and mPLUG-2 keep image / video state on one device and take only -1 or 0); kv_type: KV cache storage, "f16" or "f32" (default: the runtime's);
    max_spare_contexts: idle contexts kept for concurrent calls (a server keeps one per slot); vision: which
    vision file of a model directory runs, "none" (fp32/fp16) | "dynamic" | "static" (int8), default the one
    its vision.json names for CPUs (vision_files.py)."""
    path = os.fspath(demo.resolve(path))
    check_device(device)
    check_n_gpu_layers(n_gpu_layers)
    if os.path.isdir(path):
        gguf = Path(path) / DECODER_FILE
        if not gguf.is_file():
            raise FileNotFoundError(f"{path}: not a model directory (no {DECODER_FILE}); "
                                    + EXPORT_HINT.format(path=path))
    elif os.path.exists(path):
        gguf = Path(path)
    else:
        raise FileNotFoundError(f"model not found: {path} (expected a model directory or a .gguf file; "
                                + EXPORT_HINT.format(path=path) + ")")
    arch = architecture(gguf)
    opts = dict(n_ctx=n_ctx, threads=threads, kv_type=kv_type, device=device, max_spare_contexts=max_spare_contexts,
                n_gpu_layers=n_gpu_layers)
    if arch in MEDIA_FAMILIES:
        if gguf.name != DECODER_FILE:
            raise ValueError(f"{gguf}: an {arch!r} decoder works inside its model directory (named "
                             f"{DECODER_FILE}, beside vision.onnx); load that directory")
        return media_model_class(arch)(gguf.parent, vision=vision, **opts)
    if vision is not None:
        raise ValueError(f"{gguf}: vision={vision!r} is for vision-language model directories; this is a "
                         f"{arch!r} text model")
    if arch in TEXT_ARCHITECTURES:
        from .text_model import TextModel
        return TextModel(gguf, **opts)
    raise _core.FormatError(f"{gguf}: model architecture {arch!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED)}; as a plain .gguf text model: "
                            f"{', '.join(TEXT_ARCHITECTURES)})")
