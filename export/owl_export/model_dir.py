"""What every vision-language exporter shares: the output model directory, its vision.json (which vision
file is which) and the summary it prints.

vision.json (read by python/owl_cpp/vision_files.py):
  {"format": 1, "default": "static",                 the file a CPU runs unless the caller picks another
   "files": {"static": {"file": "vision.qdq.onnx", "quant": "static", "dtype": "fp32", "bytes": ...,
                        "cosine_vs_fp32": ...},      min cosine with the fp32 graph on held-out synthetic views
             "none":   {"file": "vision.onnx", ...}}}
"""
from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "vision.json"
MANIFEST_FORMAT = 1
# --vision-quant's default (first = the CPU default), chosen by measurement (docs/vision_quant.md "The default"):
# the fastest file whose embeddings keep a cosine >= 0.999 with fp32 (min over held-out synthetic views, at the
# published size, random weights). Owl3: dynamic int8 fell just short (0.998999), static int8 passed (0.99938)
# at 2.65x fp32. Owl2: neither did (dynamic 0.9959, static 0.9971), so fp32 stays its default. mPLUG-2: dynamic
# int8 (0.99979 on random frames) at 2.5x fp32. fp32 is written beside an int8 default, for GPUs and for the
# reference numbers.
DEFAULT_VISION_QUANTS = {"owl3": ("static", "none"), "owl2": ("none",), "mplug2": ("dynamic", "none")}


def vision_outputs(out_dir: Path, quants) -> dict:
    """quant -> the path its file gets in out_dir (onnx_common.VISION_FILES)."""
    from .onnx_common import VISION_FILES, vision_quant_list
    return {q: Path(out_dir) / VISION_FILES[q] for q in vision_quant_list(quants)}


def default_vision_quants(family: str, dtype: str) -> tuple:
    """What an export writes when --vision-quant is not given: fp16 (a GPU file) alone, else the family's."""
    return ("none",) if dtype != "fp32" else DEFAULT_VISION_QUANTS[family]


def write_vision_manifest(out_dir: Path, summaries: dict) -> dict:
    """vision.json for the files just written (summaries: quant -> the exporter's summary, in --vision-quant's
    order, the first being the default), and the removal of vision files an earlier export left that it does
    not list. Returns the manifest."""
    from .onnx_common import VISION_FILES

    out_dir = Path(out_dir)
    files = {}
    for q, s in summaries.items():
        entry = {"file": Path(s["path"]).name, "quant": q, "dtype": s.get("dtype", "fp32"),
                 "bytes": int(s["file_size"]), "rel_err_vs_reference": s["rel_err"]}
        if "views_cosine_min" in s:
            entry["cosine_vs_fp32"] = s["views_cosine_min"]
        files[q] = entry
    manifest = {"format": MANIFEST_FORMAT, "default": next(iter(summaries)), "files": files}
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out_dir / MANIFEST)
    for q, name in VISION_FILES.items():
        if q not in files and (out_dir / name).exists():
            (out_dir / name).unlink()                   # a file from an earlier export of other quants
    return manifest


def make_model_dir(out_dir) -> Path:
    """-o names a directory (decoder.gguf + vision.onnx go in it); an existing file there is an error."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a directory (-o names the model directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def summary_text(title: str, decoder: dict, vision: dict) -> str:
    """The directory and model, decoder.gguf's type/size/tensors, then a line per vision file and its check.
    vision: one file's summary, or {quant: summary} (the first being the default)."""
    d = decoder
    types = ", ".join(f"{k} x{n}" for k, n in sorted(d["types"].items()))
    lines = [title, f"  decoder.gguf  {d['quant']:<5} {size_text(d['file_size']):>10}  {d['n_tensors']} tensors ({types})"]
    many = vision if "path" not in vision else {vision["quant"]: vision}
    for k, (q, v) in enumerate(many.items()):
        vision_type = {"none": v.get("dtype", "fp32"), "int8": "dynamic"}.get(q, q)
        line = (f"  {Path(v['path']).name:<17} {vision_type:<7} {size_text(v['file_size']):>10}  onnxruntime vs the "
                f"fp32 PyTorch reference on {v.get('check_what') or str(v['check_batch']) + ' random images'}: "
                f"rel err {v['rel_err']:.2e}, cosine {v['cosine']:.6f}")
        if "views_cosine_min" in v:
            line += f"; vs fp32 on {v['held_out_views']} synthetic views: cosine >= {v['views_cosine_min']:.5f}"
        lines.append(line + ("  (default)" if k == 0 and len(many) > 1 else ""))
    return "\n".join(lines)


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
