"""An F32/F16/BF16 GGUF -> the same GGUF under another --quant, with our quantizers and type mixes (what
llama-quantize does, for files owl-export or llama.cpp's converter wrote). Used by bench/bench_quant_error.py to
quantize the very file llama.cpp quantizes.

    python -m owl_export.requantize IN.gguf OUT.gguf q4_k_m [--imatrix imatrix.gguf|imatrix.dat]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import gguf
import numpy as np

from .imatrix import Imatrix, read as read_imatrix
from .quantize import FILE_TYPES, QT, check_quant, plan_qtypes, quantize_array, tensor_nbytes

_SOURCE_TYPES = (QT.F32, QT.F16, QT.BF16)


def _n_gqa(reader: gguf.GGUFReader, arch: str) -> int:
    def get(key):
        f = reader.fields.get(f"{arch}.{key}")
        return int(f.contents()) if f is not None and not isinstance(f.contents(), list) else None
    heads, kv = get("attention.head_count"), get("attention.head_count_kv")
    return heads // kv if heads and kv else 1


def requantize_gguf(src: str | Path, dst: str | Path, quant: str, progress: bool = False, imatrix=None) -> dict:
    """Write dst: src's metadata (file_type updated) and tensors quantized as `quant` plans them, weighted by
    imatrix (an imatrix.Imatrix, or a path to llama.cpp's imatrix file) where it has an entry."""
    check_quant(quant)
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    tensors = [(t.name, tuple(int(n) for n in reversed(t.shape.tolist()))) for t in reader.tensors]
    for t in reader.tensors:
        if t.tensor_type not in _SOURCE_TYPES:
            raise ValueError(f"{src}: tensor {t.name!r} is {t.tensor_type.name}; requantize needs F32/F16/BF16")
    names = [n for n, _ in tensors]
    weights = {}
    if imatrix is not None:
        if not isinstance(imatrix, Imatrix):
            imatrix = read_imatrix(imatrix)
        weights = {n: imatrix.for_tensor(n, s[-1]) for n, s in tensors if n in imatrix.sums}
        if not weights:
            raise ValueError(f"the imatrix has no entry for any tensor of {src} (it has e.g. "
                             f"{', '.join(sorted(imatrix.sums)[:3])}): made for another model?")
    qtypes = plan_qtypes(tensors, quant, tied_embeddings="output.weight" not in names, n_gqa=_n_gqa(reader, arch))

    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "quantize.imatrix.")) or key in ("general.architecture", "general.file_type"):
            continue
        value_type = field.types[0]
        sub = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub)
    writer.add_file_type(int(FILE_TYPES[quant]))
    if weights:
        imatrix.add_metadata(writer, len(weights))
    for (name, shape), q in zip(tensors, qtypes):
        writer.add_tensor_info(name, shape, np.dtype(np.float32), tensor_nbytes(shape, q), raw_dtype=q)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, (name, shape), q in zip(reader.tensors, tensors, qtypes):
            data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
            writer.write_tensor_data(quantize_array(data, q, weights.get(name)))
            if progress:
                print(f"\r{name:<40} {q.name:<6}", end="", file=sys.stderr, flush=True)
        writer.close()
        os.replace(tmp, dst)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if progress:
        print(file=sys.stderr)
    return {name: q.name for (name, _), q in zip(tensors, qtypes)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("quant")
    p.add_argument("--imatrix", type=Path, help="llama.cpp imatrix file (GGUF or legacy .dat) to quantize with")
    a = p.parse_args(argv)
    requantize_gguf(a.src, a.dst, a.quant, progress=True, imatrix=a.imatrix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
