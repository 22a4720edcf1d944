"""Importance matrices: per input column of each quantized matrix, the mean of x^2 over calibration tokens.

- collect(): runs our PyTorch reference decoder (reference/decoder.py) over calibration text and records, at
  every matrix product whose weight becomes a GGUF tensor, the sum of x^2 per input column and the number of
  tokens (the reference routes every product through one `linear` function, which acts as the forward
  pre-hook).
- read(): llama.cpp's imatrix files, both formats. Their entries are named like our GGUF tensors
  (blk.N.attn_q.weight ...: owl-export writes llama.cpp's names), so they apply as they are.
    GGUF (llama-imatrix's default since 2025): general.type = "imatrix", imatrix.datasets,
      imatrix.chunk_count, imatrix.chunk_size; per entry NAME.in_sum2 (F32, ne [n_cols, n_mat]) and
      NAME.counts (F32, ne [1, n_mat]: tokens seen); value = in_sum2 / counts (1 where counts is 0).
    legacy .dat: int32 n_entries; per entry int32 len, name, int32 ncall, int32 n_values, float32 values
      (mean * ncall); then optionally int32 chunk count, int32 len, dataset name; value = values / ncall.
- write(): our collection in either format, so llama-quantize can use it too (and requantize later).
Mixture-of-experts entries (n_mat > 1) are refused: our exporters write no expert tensors.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GGUF_MAGIC = b"GGUF"

# A small built-in calibration text for when the user has none: prose, dialogue, code, numbers and a few
# languages, so that most columns see some activity. A few hundred tokens: enough to steer the search
# toward the loud columns, not a substitute for a real calibration set (llama.cpp users take ~100k tokens).
BUILTIN_TEXT = """\
The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable
metal type, oil-based ink and a wooden press adapted from those used to make wine. Within fifty years, presses
were working in more than two hundred cities, and the price of a book fell so far that ordinary merchants
could own a small library. Scholars argue about how much the press changed thinking, but nobody doubts that
it changed how quickly ideas travelled.

Q: A train leaves the station at 3 pm and travels 120 km at 80 km/h. When does it arrive?
A: It needs 120 / 80 = 1.5 hours, so it arrives at 4:30 pm.

User: Can you suggest a quick dinner with rice, eggs and spinach?
Assistant: Fry garlic in a little oil, add the spinach until it wilts, then push it aside, scramble two eggs,
stir in the cooked rice and season with soy sauce and pepper. Ready in ten minutes.

def fibonacci(n: int) -> int:
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

for (int i = 0; i < n; ++i) { sum += x[i] * w[i]; }
SELECT name, COUNT(*) FROM orders WHERE total > 100 GROUP BY name ORDER BY 2 DESC;

Photosynthesis converts light energy into chemical energy: in the chloroplasts, water is split, oxygen is
released, and carbon dioxide is fixed into sugars through the Calvin cycle.
Le petit prince demanda au renard pourquoi il ne pouvait pas jouer avec lui, et le renard répondit qu'il
n'était pas apprivoisé. Der Zug fährt um halb neun ab. 今日は天気がいいですね。 El mercado abre a las ocho.
1, 2, 3, 5, 8, 13, 21, 34, 55, 89; 3.14159, 2.71828, 1.41421; 2026-11-30 13:45 UTC; $19.99; 42%.
"""


@dataclass
class Imatrix:
    """Per GGUF tensor name: sum of x^2 per input column (float64) and the number of tokens it saw."""
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    source: str = ""                    # the file it was read from, if any

    def values(self, name: str) -> np.ndarray | None:
        """The column importances llama-quantize uses for tensor `name` (mean of x^2), or None."""
        if name not in self.sums:
            return None
        n = self.counts.get(name, 0)
        if n <= 0:
            return np.ones(self.sums[name].shape, np.float32)
        # float32 division, as llama-quantize does it: the same values to the last bit
        return self.sums[name].astype(np.float32) / np.float32(n)

    def add_metadata(self, writer, n_used: int) -> None:
        """The keys llama-quantize writes into a GGUF it quantized with an imatrix."""
        if self.source:
            writer.add_string("quantize.imatrix.file", self.source)
        if self.datasets:
            writer.add_string("quantize.imatrix.dataset", self.datasets[0])
        writer.add_int32("quantize.imatrix.entries_count", n_used)
        writer.add_int32("quantize.imatrix.chunks_count", int(self.chunk_count))

    def for_tensor(self, name: str, cols: int) -> np.ndarray | None:
        v = self.values(name)
        if v is not None and v.shape != (cols,):
            raise ValueError(f"imatrix entry {name!r} has {v.size} values but the tensor has {cols} columns "
                             "(an imatrix made for another model?)")
        return v


# ------------------------------------------------------------------------------------------- reading

def _strip(name: str) -> str:
    """llama.cpp's graph names can carry a backend prefix and a copy suffix: CUDA0#blk.0.attn_k.weight#0."""
    parts = name.split("#")
    return parts[1] if len(parts) >= 2 else name


def _read_gguf(path: Path) -> Imatrix:
    import gguf

    reader = gguf.GGUFReader(path)
    im = Imatrix()

    def field_value(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    kind = field_value("general.type")
    if kind is not None and kind != "imatrix":
        raise ValueError(f"{path}: a GGUF file of general.type {kind!r}, not an imatrix")
    im.datasets = list(field_value("imatrix.datasets") or [])
    im.chunk_count = int(field_value("imatrix.chunk_count") or 0)
    im.chunk_size = int(field_value("imatrix.chunk_size") or 0)
    tensors = {t.name: t for t in reader.tensors}
    for tname, t in tensors.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = _strip(tname[:-len(".in_sum2")])
        counts = tensors.get(tname[:-len(".in_sum2")] + ".counts")
        if counts is None:
            raise ValueError(f"{path}: {tname} has no matching .counts tensor")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or counts.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{path}: {tname} and its counts must be F32")
        c = np.asarray(counts.data, np.float32).reshape(-1)
        if c.size != 1:
            raise ValueError(f"{path}: {name} holds {c.size} expert matrices; mixture-of-experts imatrices are "
                             "not supported")
        im.sums[name] = np.asarray(t.data, np.float32).reshape(-1).astype(np.float64)
        im.counts[name] = int(round(float(c[0])))
    if not im.sums:
        raise ValueError(f"{path}: no .in_sum2 tensors: not an imatrix file")
    return im


def _read_dat(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ValueError(f"{path}: truncated legacy imatrix file (at byte {pos})")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n_entries,) = take("<i")
    if n_entries < 1 or n_entries > 1_000_000:
        raise ValueError(f"{path}: not an imatrix file (neither GGUF nor the legacy format: {n_entries} entries)")
    im = Imatrix()
    for _ in range(n_entries):
        (n,) = take("<i")
        if not 0 < n < 4096:
            raise ValueError(f"{path}: bad entry name length {n}")
        name = _strip(bytes(take(f"<{n}s")[0]).decode("utf-8", "replace"))
        ncall, nval = take("<ii")
        if nval < 1:
            raise ValueError(f"{path}: entry {name!r} has {nval} values")
        values = np.frombuffer(data, "<f4", nval, pos).astype(np.float64)
        pos += 4 * nval
        # stored: mean * ncall, which llama-quantize divides by ncall (or takes as it is when ncall is 0)
        im.sums[name], im.counts[name] = values, max(ncall, 1)
    if pos + 4 <= len(data):
        (im.chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (n,) = take("<i")
            if 0 < n and pos + n <= len(data):
                im.datasets.append(data[pos:pos + n].decode("utf-8", "replace"))
    return im


def read(path: str | Path) -> Imatrix:
    """An imatrix file of llama.cpp (GGUF or legacy .dat; told apart by the GGUF magic)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: imatrix file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    im = _read_gguf(path) if magic == GGUF_MAGIC else _read_dat(path)
    im.source = str(path)
    return im


# ------------------------------------------------------------------------------------------- writing

def write_gguf(im: Imatrix, path: str | Path) -> None:
    """llama-imatrix's GGUF format (readable by llama-quantize --imatrix)."""
    import gguf

    w = gguf.GGUFWriter(Path(path), "imatrix")       # gguf-py always writes general.architecture; harmless
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", list(im.datasets) or ["owl-export"])
    w.add_uint32("imatrix.chunk_count", int(im.chunk_count))
    w.add_uint32("imatrix.chunk_size", int(im.chunk_size))
    for name in sorted(im.sums):
        w.add_tensor(f"{name}.in_sum2", im.sums[name].astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[im.counts[name]]], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_dat(im: Imatrix, path: str | Path) -> None:
    """The legacy .dat format (what llama.cpp wrote before GGUF imatrices)."""
    ncall = max(int(im.chunk_count), 1)
    out = [struct.pack("<i", len(im.sums))]
    for name in sorted(im.sums):
        b = name.encode()
        mean = im.sums[name] / max(im.counts[name], 1)
        out += [struct.pack("<i", len(b)), b, struct.pack("<ii", ncall, mean.size),
                (mean * ncall).astype("<f4").tobytes()]
    ds = (im.datasets[0] if im.datasets else "owl-export").encode()
    out += [struct.pack("<ii", int(im.chunk_count), len(ds)), ds]
    Path(path).write_bytes(b"".join(out))


def write(im: Imatrix, path: str | Path) -> None:
    """By extension: .dat -> legacy, anything else -> GGUF."""
    (write_dat if str(path).endswith(".dat") else write_gguf)(im, path)


# ------------------------------------------------------------------------------------------- collecting

def tokenize(hf_dir: str | Path, text: str) -> list[int]:
    """text -> ids with the checkpoint's own tokenizer (tokenizer.json, else SentencePiece tokenizer.model)."""
    d = Path(hf_dir)
    if (d / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        return Tokenizer.from_file(str(d / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    if (d / "tokenizer.model").is_file():
        import sentencepiece as spm
        return spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")).encode(text)
    raise ValueError(f"{d}: no tokenizer.json or tokenizer.model to tokenize the calibration text with")


_GGUF_OF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
            "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def collect(hf_dir: str | Path, text, *, chunk: int = 512, progress: bool = False, dataset: str = "") -> Imatrix:
    """Run the checkpoint's decoder (qwen2 / llama) over `text` (a string, or token ids) in chunks of `chunk` tokens and gather the
    imatrix of every matrix the GGUF stores quantized (output.weight, or token_embd.weight when tied, for the
    output product). Each chunk starts with BOS where the model wants one (llama), as llama-imatrix's do.
    The model is held in float32: for models too big for that, use llama.cpp's llama-imatrix and --imatrix."""
    import sys

    import torch
    import torch.nn.functional as F

    from .checkpoint import TextConfig, load_checkpoint
    from .reference.decoder import TextDecoder

    config, tensors, _ = load_checkpoint(hf_dir)
    cfg = TextConfig.from_dict(config)
    ids = tokenize(hf_dir, text) if isinstance(text, str) else [int(i) for i in text]
    if not ids:
        raise ValueError("the calibration text gives no tokens")
    if chunk < 2:
        raise ValueError(f"imatrix chunk of {chunk} tokens: need at least 2")
    bos = config.get("bos_token_id") if cfg.arch == "llama" else None
    model = TextDecoder(cfg, tensors)
    names: dict[int, str] = {}
    for i in range(cfg.num_layers):
        for hf, gg in _GGUF_OF.items():
            names[id(model.w[f"model.layers.{i}.{hf}"])] = f"blk.{i}.{gg}.weight"
    names[id(model.w["lm_head"])] = "token_embd.weight" if cfg.tie_word_embeddings else "output.weight"
    im = Imatrix(datasets=[dataset or "owl-export calibration text"], chunk_size=chunk)

    def recording_linear(x, w, b=None):
        name = names.get(id(w))
        if name is not None:
            x2 = x.detach().to(torch.float64).reshape(-1, x.shape[-1]).square().sum(0).numpy()
            im.sums[name] = im.sums[name] + x2 if name in im.sums else x2
            im.counts[name] = im.counts.get(name, 0) + x.reshape(-1, x.shape[-1]).shape[0]
        return F.linear(x, w, b)

    model.linear = recording_linear
    step = chunk - (bos is not None)
    pieces = [ids[s:s + step] for s in range(0, len(ids), step)]
    for k, piece in enumerate(pieces):
        model.forward(([bos] if bos is not None else []) + piece)
        im.chunk_count += 1
        if progress:
            print(f"\rimatrix: chunk {k + 1}/{len(pieces)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(f"\rimatrix: {len(ids)} tokens in {len(pieces)} chunks, {len(im.sums)} matrices", file=sys.stderr)
    return im
