"""`owl-export`: Hugging Face checkpoint directory -> GGUF file or model directory.

  owl-export HF_DIR -o OUT.gguf --quant f32|f16|bf16|q8_0|q4_0|q2_k|q3_k_m|q4_k_s|q4_k_m|q5_k_m|q6_k
                                                                                 (qwen2, llama)
  owl-export HF_DIR -o MODEL_DIR --quant ... [--vision-dtype fp32|fp16] [--vision-quant Q[,Q...]]
                                                              (mplugowl3, mplug_owl2, mplug_owl2_1, mplug-owl)
  owl-export MPLUG2_DIR -o MODEL_DIR --quant ... [--vision-quant Q[,Q...]]
                                  (mPLUG-2 captioning: the official .pth + config_bert*.json + vocab.txt)
  owl-export HF_DIR -o OUT.gguf --quant q4_k_m --imatrix-text [CALIB.txt] | --imatrix IMATRIX.gguf|.dat
                                  (text models: quantize with an importance matrix, docs/quantization.md)

The checkpoint's config.json model_type picks the exporter from EXPORTERS. Text decoders (qwen2, llama)
become one GGUF file; vision-language models a model directory (decoder.gguf + vision.onnx).

This module imports only the standard library: the export's own dependencies (torch, gguf, ...: the `export`
extra) are imported inside the exporters, so `owl-export --help` works in a runtime-only install and an export
without them ends with a one-line error that says what to install.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

# quantize.QUANT_NAMES, written out here because quantize.py needs gguf (a test keeps the two equal)
QUANT_NAMES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k")
# onnx_common.VISION_QUANTS and QUANT_ALIASES, written out for the same reason (a test keeps them equal)
VISION_QUANT_NAMES = ("none", "dynamic", "static")
VISION_QUANT_ALIASES = {"int8": "dynamic"}

# The modules of pyproject.toml's `export` extra: a missing one gets the install hint, not a traceback.
EXPORT_EXTRA_MODULES = frozenset({"torch", "gguf", "safetensors", "tokenizers", "sentencepiece", "onnx",
                                  "onnxruntime"})
INSTALL_HINT = 'pip install "owl_cpp[export]"'


def _export_text(hf_dir: Path, out: Path, quant: str, progress: bool, imatrix=None, **vision) -> dict:
    if vision:
        raise ExportError(f"{', '.join('--' + k.replace('_', '-') for k in vision)}: only for vision-language "
                          f"models; {hf_dir} is a text model")
    from .convert_text import convert_text_model
    return convert_text_model(hf_dir, out, quant=quant, progress=progress, imatrix=imatrix)


BUILTIN_TEXT = "builtin"        # --imatrix-text with no file: imatrix.BUILTIN_TEXT
# the quants with a weighted quantizer somewhere in their mix (q8_0 and the float types have none)
IMATRIX_QUANTS = ("q4_0", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k")


def load_imatrix(args, hf_dir: Path, progress: bool):
    """The imatrix.Imatrix that --imatrix / --imatrix-text ask for (written to --imatrix-out), or None."""
    if args.imatrix is None and args.imatrix_text is None:
        if args.imatrix_out is not None:
            raise ExportError("--imatrix-out needs --imatrix-text (the imatrix to write is collected from text)")
        return None
    if args.imatrix is not None and args.imatrix_text is not None:
        raise ExportError("--imatrix and --imatrix-text: give one (a file made by llama-imatrix, or text to "
                          "collect one from)")
    if args.quant not in IMATRIX_QUANTS:
        raise ExportError(f"--quant {args.quant} does not use an importance matrix; it helps "
                          f"{', '.join(IMATRIX_QUANTS)}")
    from . import imatrix
    if args.imatrix is not None:
        im = imatrix.read(args.imatrix)
    else:
        if args.imatrix_text == BUILTIN_TEXT:
            text, name = imatrix.BUILTIN_TEXT, "owl-export built-in text"
        else:
            path = Path(args.imatrix_text)
            if not path.is_file():
                raise ExportError(f"--imatrix-text {path}: file not found")
            text, name = path.read_text(encoding="utf-8"), path.name
        im = imatrix.collect(hf_dir, text, chunk=args.imatrix_chunk, progress=progress, dataset=name)
    if args.imatrix_out is not None:
        imatrix.write(im, args.imatrix_out)
        im = imatrix.read(args.imatrix_out)     # quantize with the values as stored (float32), so that
                                                # requantize / llama-quantize with the file give these bytes
    return im


def _export_owl3(hf_dir: Path, out: Path, quant: str, progress: bool, **vision) -> dict:
    from .owl3.convert import export_owl3
    return export_owl3(hf_dir, out, quant, progress=progress, **vision)


def _export_owl2(hf_dir: Path, out: Path, quant: str, progress: bool, **vision) -> dict:
    from .owl2.export import export_owl2
    return export_owl2(hf_dir, out, quant, progress=progress, **vision)


def _export_mplug2(ckpt_dir: Path, out: Path, quant: str, progress: bool, **vision) -> dict:
    from .mplug2.export import export_mplug2
    return export_mplug2(ckpt_dir, out, quant, progress=progress, **vision)


# model_type -> exporter(hf_dir, out, quant, progress, **vision options given) -> summary dict
EXPORTERS: dict[str, Callable[..., dict]] = {
    "qwen2": _export_text,
    "llama": _export_text,
    "mplugowl3": _export_owl3,
    "mplug_owl2": _export_owl2,
    "mplug_owl2_1": _export_owl2,
    "mplug-owl": _export_owl2,
}
# mPLUG-2's official checkpoints are not in the Hugging Face layout: a .pth, the BERT json and vocab.txt
MPLUG2_MARKERS = ("config_bert_large_text.json", "config_bert.json")


class ExportError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def pick_exporter(hf_dir: Path):
    if not (hf_dir / "config.json").is_file() and any((hf_dir / m).is_file() for m in MPLUG2_MARKERS) \
            and any(hf_dir.glob("*.pth")):
        return _export_mplug2
    from .checkpoint import load_config
    config = load_config(hf_dir)
    model_type = config.get("model_type")
    if model_type not in EXPORTERS:
        raise ExportError(f"{hf_dir / 'config.json'}: unsupported model_type {model_type!r} "
                          f"(supported: {', '.join(sorted(EXPORTERS))})")
    return EXPORTERS[model_type]


def vision_quants(text: str) -> tuple:
    """--vision-quant's value: comma-separated names -> canonical names in order (argparse's type=)."""
    names = [VISION_QUANT_ALIASES.get(q.strip(), q.strip()) for q in text.split(",")]
    bad = [q for q in names if q not in VISION_QUANT_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(VISION_QUANT_NAMES)} (comma-separated, "
                                         "the first is the default)")
    return tuple(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="owl-export", description=__doc__.split("\n\n")[0])
    p.add_argument("hf_dir", type=Path, help="Hugging Face checkpoint directory (config.json + weights + tokenizer)")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="output path: a .gguf file for text models, a directory for vision-language models")
    p.add_argument("--quant", choices=QUANT_NAMES, default="f16", help="weight storage type (default f16); q2_k .. q6_k are llama.cpp's K-quant mixes "
                        "(docs/quantization.md), for the llama/qwen2-style decoders, not mPLUG-2")
    # None = not given, so text exporters can refuse them instead of ignoring them
    p.add_argument("--vision-dtype", choices=("fp32", "fp16"), default=None,
                   help="vision.onnx weights: fp32 (default) or fp16 (for GPUs)")
    p.add_argument("--vision-quant", type=vision_quants, default=None, metavar="Q[,Q...]",
                   help="vision files to write, the first being the one a CPU runs by default: none (fp32/fp16 "
                        "vision.onnx), dynamic (int8 weights, activations quantized per call: vision.int8.onnx; "
                        "'int8' is its old name), static (int8 QDQ calibrated on synthetic pictures: "
                        "vision.qdq.onnx). Default: what measured best per family (Owl3 static,none; Owl2 none; "
                        "mPLUG-2 dynamic,none; docs/vision_quant.md); fp16 alone with --vision-dtype fp16")
    p.add_argument("--task", choices=("caption", "qa"), default=None,
                   help="mPLUG-2 only: what the .pth was trained for (default: told by its saved config, its file "
                        "name or its momentum weights; captioning when none says)")
    p.add_argument("--imatrix", type=Path, default=None, metavar="FILE",
                   help="text models: quantize with llama.cpp's importance matrix FILE (llama-imatrix's GGUF or "
                        "legacy .dat), as llama-quantize --imatrix does (docs/quantization.md)")
    p.add_argument("--imatrix-text", nargs="?", const=BUILTIN_TEXT, default=None, metavar="FILE",
                   help="text models: collect an importance matrix by running the model over the UTF-8 text in "
                        "FILE (alone: a short built-in text) and quantize with it")
    p.add_argument("--imatrix-chunk", type=int, default=512, metavar="N",
                   help="tokens per forward pass when collecting (default 512, llama-imatrix's)")
    p.add_argument("--imatrix-out", type=Path, default=None, metavar="FILE",
                   help="also save the collected importance matrix (.dat: legacy format, else GGUF), for "
                        "requantize --imatrix or llama-quantize")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def missing_extra_module(e: BaseException) -> str | None:
    """The `export`-extra module whose absence caused e (searched along e's causes), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ModuleNotFoundError) and e.name:
            top = e.name.partition(".")[0]
            if top in EXPORT_EXTRA_MODULES:
                return top
        e = e.__cause__ or e.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.hf_dir.is_dir():
            raise ExportError(f"{args.hf_dir}: checkpoint directory not found")
        exporter = pick_exporter(args.hf_dir)
        vision = {k: getattr(args, k) for k in ("vision_dtype", "vision_quant") if getattr(args, k) is not None}
        if args.task is not None:
            if exporter is not _export_mplug2:
                raise ExportError(f"--task is for mPLUG-2 checkpoints; {args.hf_dir} is not one")
            vision["task"] = args.task
        if exporter is _export_text:
            vision["imatrix"] = load_imatrix(args, args.hf_dir, not args.quiet)
        elif args.imatrix is not None or args.imatrix_text is not None or args.imatrix_out is not None:
            raise ExportError("--imatrix / --imatrix-text: only for text models (qwen2, llama) today; "
                              f"{args.hf_dir} is a vision-language model")
        exporter(args.hf_dir, args.out, args.quant, not args.quiet, **vision)   # prints its summary unless quiet
    # ValueError covers CheckpointError, UnsupportedModelError, Owl3LayoutError, the vision export's check
    # and vocab.py's bad-tokenizer errors, all of which name the offending file; ImportError a missing
    # dependency, told with the install hint when it belongs to the export extra
    except ImportError as e:
        missing = missing_extra_module(e)
        if missing is None:
            print(f"owl-export: error: {e}", file=sys.stderr)
        else:
            print(f"owl-export: error: exporting needs the Python module {missing!r}, which is not installed; "
                  f"install the export extra: {INSTALL_HINT}", file=sys.stderr)
        return 2
    except (ExportError, ValueError, OSError) as e:
        print(f"owl-export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
