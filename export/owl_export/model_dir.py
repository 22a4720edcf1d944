"""What every vision-language exporter shares: the output model directory and the summary it prints."""
from __future__ import annotations

from pathlib import Path


def make_model_dir(out_dir) -> Path:
    """-o names a directory (decoder.gguf + vision.onnx go in it); an existing file there is an error."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a directory (-o names the model directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def summary_text(title: str, decoder: dict, vision: dict) -> str:
    """Three lines: the directory and model, decoder.gguf's type/size/tensors, vision.onnx's and its check."""
    d, v = decoder, vision
    types = ", ".join(f"{k} x{n}" for k, n in sorted(d["types"].items()))
    vision_type = v["quant"] if v["quant"] != "none" else v["dtype"]
    return "\n".join([
        title,
        f"  decoder.gguf  {d['quant']:<5} {size_text(d['file_size']):>10}  {d['n_tensors']} tensors ({types})",
        f"  vision.onnx   {vision_type:<5} {size_text(v['file_size']):>10}  onnxruntime vs the fp32 PyTorch reference "
        f"on {v.get('check_what') or str(v['check_batch']) + ' random images'}: rel err {v['rel_err']:.2e}, cosine {v['cosine']:.6f}",
    ])


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
