"""`owl-export`: Hugging Face checkpoint directory -> GGUF.

  owl-export HF_DIR -o OUT.gguf --quant f32|f16|bf16|q8_0|q4_0

The checkpoint's config.json model_type picks the exporter from EXPORTERS. Text decoders (qwen2, llama)
become one GGUF file; the Owl3/Owl2 exporters, added later, write a model directory (decoder.gguf +
vision.onnx) and register themselves here the same way.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .quantize import QUANT_NAMES


def _export_text(hf_dir: Path, out: Path, quant: str, progress: bool) -> dict:
    from .convert_text import convert_text_model
    return convert_text_model(hf_dir, out, quant=quant, progress=progress)


# model_type -> exporter(hf_dir, out, quant, progress) -> summary dict
EXPORTERS: dict[str, Callable[[Path, Path, str, bool], dict]] = {
    "qwen2": _export_text,
    "llama": _export_text,
}


class ExportError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def pick_exporter(hf_dir: Path):
    from .checkpoint import load_config
    config = load_config(hf_dir)
    model_type = config.get("model_type")
    if model_type not in EXPORTERS:
        raise ExportError(f"{hf_dir / 'config.json'}: unsupported model_type {model_type!r} "
                          f"(supported: {', '.join(sorted(EXPORTERS))})")
    return EXPORTERS[model_type]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="owl-export", description=__doc__.split("\n\n")[0])
    p.add_argument("hf_dir", type=Path, help="Hugging Face checkpoint directory (config.json + weights + tokenizer)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output path (.gguf for text models)")
    p.add_argument("--quant", choices=QUANT_NAMES, default="f16", help="weight storage type (default f16)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.hf_dir.is_dir():
            raise ExportError(f"{args.hf_dir}: checkpoint directory not found")
        exporter = pick_exporter(args.hf_dir)
        exporter(args.hf_dir, args.out, args.quant, not args.quiet)   # prints its summary unless quiet
    # ValueError covers CheckpointError, UnsupportedModelError and vocab.py's bad-tokenizer errors,
    # all of which name the offending file
    except (ExportError, ValueError, OSError) as e:
        print(f"owl-export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
