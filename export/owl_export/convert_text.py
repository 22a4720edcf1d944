"""HF qwen2 / llama checkpoint directory -> one GGUF v3 file in llama.cpp's conventions.

The file is meant to open in llama.cpp itself (so owl_cpp can be benchmarked against it on the same bytes):
same architecture names, metadata keys, tensor names, rope layouts and vocabulary keys as llama.cpp's
convert_hf_to_gguf.py. The pieces (hparams, tensor plan, writer loop) are separate functions so the Owl3
converter can reuse them on its `language_model.` sub-checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import gguf
import numpy as np
import torch

from .checkpoint import CheckpointError, TextConfig, load_checkpoint, tensor_shape
from .quantize import FILE_TYPES, QT, check_quant, plan_qtypes, quantize_array, tensor_nbytes

# ------------------------------------------------------------------------------------------- tensors

# HF per-layer name -> llama.cpp per-block name
_LAYER_NAMES = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
]


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate_half q/k layout -> ggml's interleaved (NORM) rope layout, as llama.cpp's converter does.

    Within each head HF pairs dimension i with i + d/2; ggml's NORM rope pairs 2i with 2i+1. Works for
    weights [n_head*d, in] and biases [n_head*d].
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama_permute (for tests and for reading llama GGUFs back into HF layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclasses.dataclass
class PlannedTensor:
    name: str                                   # GGUF name
    source: str                                 # HF name
    shape: tuple[int, ...]                      # numpy shape (rows, cols); GGUF stores it reversed
    load: Callable[[], np.ndarray]              # float32 data in GGUF layout (permuted if needed)


def plan_tensor(tensors: Mapping[str, torch.Tensor], gguf_name: str, hf_name: str,
                permute_heads: int = 0) -> PlannedTensor:
    """One planned tensor: checkpoint tensor `hf_name` written as `gguf_name`, read only when written."""
    if hf_name not in tensors:
        raise CheckpointError(f"checkpoint is missing tensor {hf_name!r} (needed for {gguf_name})")
    shape = tensor_shape(tensors, hf_name)

    def load() -> np.ndarray:
        a = tensors[hf_name].to(torch.float32).numpy()
        return llama_permute(a, permute_heads) if permute_heads else a

    return PlannedTensor(gguf_name, hf_name, shape, load)


def text_tensor_plan(cfg: TextConfig, tensors: Mapping[str, torch.Tensor],
                     source: Callable[[str], str] | None = None) -> list[PlannedTensor]:
    """Every GGUF tensor of the decoder, in write order, with a loader that reads it on demand.

    source maps each HF name (model.layers.N.input_layernorm.weight, ...) to the checkpoint's name for it
    (Owl2 keeps its text-branch norms and K/V under `...multiway.0.weight`); by default the name itself."""
    plan: list[PlannedTensor] = []

    def add(gguf_name: str, hf_name: str, permute_heads: int = 0):
        plan.append(plan_tensor(tensors, gguf_name, source(hf_name) if source else hf_name, permute_heads))

    add("token_embd.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_layers):
        for hf_suffix, gguf_suffix in _LAYER_NAMES:
            hf_name = f"model.layers.{i}.{hf_suffix}"
            if hf_suffix.startswith("self_attn.") and hf_suffix.endswith(".bias"):
                wanted = cfg.o_bias if "o_proj" in hf_suffix else cfg.qkv_bias
                if not wanted:
                    continue
            heads = 0
            if cfg.arch == "llama" and ".q_proj." in hf_suffix:
                heads = cfg.num_heads
            elif cfg.arch == "llama" and ".k_proj." in hf_suffix:
                heads = cfg.num_kv_heads
            add(f"blk.{i}.{gguf_suffix}", hf_name, heads)
    add("output_norm.weight", "model.norm.weight")
    if not cfg.tie_word_embeddings:
        add("output.weight", "lm_head.weight")

    emb_rows = plan[0].shape[0]
    if emb_rows != cfg.vocab_size:
        raise CheckpointError(f"model.embed_tokens.weight has {emb_rows} rows but config vocab_size is "
                              f"{cfg.vocab_size}")
    return plan


# ------------------------------------------------------------------------------------------- metadata

def add_text_hparams(writer: gguf.GGUFWriter, cfg: TextConfig) -> None:
    """`{arch}.*` keys llama.cpp reads for qwen2 / llama (writer.arch supplies the prefix)."""
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        # llama.cpp assumes head_dim = hidden / heads unless told otherwise
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)


def pad_vocab(vocab, n_vocab: int):
    """Pad the token list to the embedding's row count, as llama.cpp's converter does.

    llama.cpp requires len(tokenizer.ggml.tokens) == n_vocab of token_embd; Qwen pads its embedding with
    unused rows, so those ids get "[PAD{id}]" tokens of type UNUSED (score -1000 where scores exist).
    Per-token list fields of the Vocab dataclass are padded; everything else is left alone.
    """
    tokens = list(vocab.tokens)
    if len(tokens) > n_vocab:
        raise CheckpointError(f"tokenizer has {len(tokens)} tokens but the embedding only {n_vocab} rows")
    if len(tokens) == n_vocab:
        return vocab
    extra = range(len(tokens), n_vocab)
    changes = {}
    for f in dataclasses.fields(vocab):
        val = getattr(vocab, f.name)
        if not isinstance(val, (list, tuple)) or len(val) != len(tokens):
            continue
        if f.name == "tokens":
            changes[f.name] = list(val) + [f"[PAD{i}]" for i in extra]
        elif "score" in f.name:
            changes[f.name] = list(val) + [-1000.0] * len(extra)
        elif "type" in f.name:
            changes[f.name] = list(val) + [int(gguf.TokenType.UNUSED)] * len(extra)
    return dataclasses.replace(vocab, **changes)


# ------------------------------------------------------------------------------------------- writing

class _Progress:
    """A one-line stderr progress bar (no tqdm dependency), redrawn at most ~10 times a second.

    Counts bytes by default; unit="steps" counts whole steps (the vision export's trace/quantize/check)."""

    def __init__(self, total_bytes: int, enabled: bool, label: str = "writing", unit: str = "MiB"):
        self.total, self.done, self.enabled, self.label = max(total_bytes, 1), 0, enabled, label
        self.unit = unit
        self.t0 = self.last = time.time()

    def update(self, nbytes: int, name: str):
        self.done += nbytes
        now = time.time()
        if not self.enabled or (now - self.last < 0.1 and self.done < self.total):
            return
        self.last = now
        frac = self.done / self.total
        amount = (f"{self.done / 2**20:.1f}/{self.total / 2**20:.1f} MiB" if self.unit == "MiB"
                  else f"{self.done}/{self.total} {self.unit}")
        sys.stderr.write(f"\r{self.label} [{'#' * int(30 * frac):<30}] {100 * frac:5.1f}% "
                         f"{amount}  {name[:40]:<40}")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write(f"\r{self.label} done in {time.time() - self.t0:.1f} s" + " " * 90 + "\n")


def write_gguf(out_path: str | Path, writer_setup: Callable[[gguf.GGUFWriter], None], arch: str,
               plan: list[PlannedTensor], quant: str, *, tied_embeddings: bool, progress: bool,
               keep_f32: frozenset[str] = frozenset(), n_gqa: int = 1, imatrix=None) -> dict:
    """Write header, metadata (via writer_setup) and the planned tensors, one tensor in memory at a time.

    Goes through a temporary file renamed at the end, so a failed export never leaves a truncated GGUF.
    Tensors named in keep_f32 stay F32 whatever the quant (mPLUG-2's position table). n_gqa (attention heads
    per KV head) steers one rule of the q2_k mix. imatrix (imatrix.Imatrix) weights the quantizers of the
    tensors it has an entry for, as llama-quantize --imatrix does; the others are quantized without.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    writer_setup(writer)

    planned = plan_qtypes([(t.name, t.shape) for t in plan], quant, tied_embeddings=tied_embeddings, n_gqa=n_gqa)
    qtypes = [QT.F32 if t.name in keep_f32 else q for t, q in zip(plan, planned)]
    sizes = [tensor_nbytes(t.shape, q) for t, q in zip(plan, qtypes)]
    weights = {}
    if imatrix is not None:
        weights = {t.name: imatrix.for_tensor(t.name, t.shape[-1]) for t in plan if t.name in imatrix.sums}
        if not weights:
            raise ValueError(f"the imatrix has no entry for any tensor of this model (it has e.g. "
                             f"{', '.join(sorted(imatrix.sums)[:3])}): made for another model?")
        imatrix.add_metadata(writer, len(weights))
    for t, q, n in zip(plan, qtypes, sizes):
        # logical shape + raw_dtype: the writer then records the element shape, not the byte shape
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), n, raw_dtype=q)

    bar = _Progress(sum(sizes), progress)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, q in zip(plan, qtypes):
            bar.update(0, f"{t.name} ({q.name})")        # K types take seconds per big matrix: say which
            data = quantize_array(t.load(), q, weights.get(t.name))
            writer.write_tensor_data(data)
            bar.update(data.nbytes, t.name)
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()

    return {
        "path": str(out_path),
        "arch": arch,
        "quant": quant,
        "file_type": int(FILE_TYPES[quant]),
        "n_tensors": len(plan),
        "tensor_bytes": sum(sizes),
        "file_size": out_path.stat().st_size,
        "types": dict(Counter(q.name for q in qtypes)),
    }


def read_chat_template(hf_dir: Path):
    """tokenizer_config.json's chat_template (a string, or transformers' list of named templates), or None."""
    from .checkpoint import read_json

    path = Path(hf_dir) / "tokenizer_config.json"
    if not path.is_file():
        return None
    template = read_json(path).get("chat_template")
    return template if isinstance(template, (str, list)) and template else None


def convert_text_model(hf_dir: str | Path, out_path: str | Path, quant: str = "f16",
                       progress: bool = True, imatrix=None) -> dict:
    """Convert a qwen2 / llama HF checkpoint directory to one GGUF file; returns a summary dict.

    imatrix: an imatrix.Imatrix to quantize with (read from a file or collected with imatrix.collect)."""
    from .vocab import load_hf_vocab, write_vocab   # the tokenizer side lives in vocab.py

    check_quant(quant)
    config, tensors, hf_path = load_checkpoint(hf_dir)
    cfg = TextConfig.from_dict(config)
    plan = text_tensor_plan(cfg, tensors)
    vocab = pad_vocab(load_hf_vocab(hf_path), cfg.vocab_size)

    template = read_chat_template(hf_path)

    def setup(writer: gguf.GGUFWriter):
        writer.add_name(hf_path.resolve().name)
        writer.add_file_type(int(FILE_TYPES[quant]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_text_hparams(writer, cfg)
        write_vocab(writer, vocab)
        if template is not None:        # as llama.cpp's converter: chat() then renders it (chat_template.py)
            writer.add_chat_template(template)

    summary = write_gguf(out_path, setup, cfg.arch, plan, quant, tied_embeddings=cfg.tie_word_embeddings,
                         progress=progress, n_gqa=cfg.num_heads // cfg.num_kv_heads, imatrix=imatrix)
    if progress:
        print(format_summary(summary), file=sys.stderr)
    return summary


def format_summary(s: dict) -> str:
    types = ", ".join(f"{k} x{v}" for k, v in sorted(s["types"].items()))
    return (f"{s['path']}: {s['arch']} {s['quant']}, {s['n_tensors']} tensors ({types}), "
            f"{s['tensor_bytes'] / 2**20:.1f} MiB of weights, file {s['file_size'] / 2**20:.1f} MiB")
