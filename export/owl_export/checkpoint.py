"""Read a Hugging Face checkpoint directory exactly as published.

Layouts understood (the ones transformers writes with save_pretrained):
  model.safetensors
  model-0000i-of-0000n.safetensors  + model.safetensors.index.json
  pytorch_model.bin
  pytorch_model-0000i-of-0000n.bin  + pytorch_model.bin.index.json
Safetensors wins when both kinds are present (as in transformers). Tensors are read lazily, one at a time,
so a 7B checkpoint is never fully resident in memory.

Also here: `TextConfig`, the decoder hyper-parameters read from config.json, shared by the reference
model, the converter and the CLI so that all three interpret a config the same way.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used (bad JSON, bad index, corrupt weights)."""


class UnsupportedModelError(ValueError):
    """config.json describes a model family this exporter does not handle."""


def read_json(path: Path) -> dict:
    """json.load with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_config(hf_dir: str | Path) -> dict:
    hf_dir = _checked_dir(hf_dir)
    return read_json(hf_dir / "config.json")


# --------------------------------------------------------------------------------------------- weights

class _Shard:
    """One weights file; opened on first use."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: Any = None      # safetensors safe_open object, or the dict torch.load returned
        self._names: set[str] = set()

    def _open(self):
        if self._handle is not None:
            return self._handle
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: weights file not found")
        try:
            if self.path.suffix == ".safetensors":
                from safetensors import safe_open
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            else:
                self._handle = _torch_load(self.path)
            self._names = set(self._handle.keys())
        except (FileNotFoundError, CheckpointError):
            raise
        except Exception as e:  # safetensors / pickle errors have many types; all mean "unreadable"
            raise CheckpointError(f"{self.path}: cannot read weights ({type(e).__name__}: {e})") from e
        return self._handle

    def keys(self) -> list[str]:
        return list(self._open().keys())

    def _has(self, name: str):
        h = self._open()
        if name not in self._names:
            raise KeyError(f"{name!r} not in {self.path}")
        return h

    def shape(self, name: str) -> tuple[int, ...]:
        h = self._has(name)
        if self.path.suffix == ".safetensors":
            return tuple(h.get_slice(name).get_shape())   # header only, no data read
        return tuple(h[name].shape)

    def get(self, name: str) -> torch.Tensor:
        h = self._has(name)
        return h.get_tensor(name) if self.path.suffix == ".safetensors" else h[name]


def _torch_load(path: Path) -> dict:
    # weights_only: never run pickled code from a downloaded file. mmap keeps big shards out of RAM;
    # the legacy (non-zip) format cannot be mmapped, so fall back to a plain load for it.
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    return dict(sd)


class TensorStore(Mapping):
    """Read-only mapping name -> torch.Tensor over one or more weight files; tensors load on access."""

    def __init__(self, where: dict[str, _Shard], files: list[Path]):
        self._where = where
        self.files = files

    def __getitem__(self, name: str) -> torch.Tensor:
        shard = self._where.get(name)
        if shard is None:
            raise KeyError(f"tensor {name!r} not in checkpoint ({', '.join(f.name for f in self.files)})")
        return shard.get(name)

    def __contains__(self, name) -> bool:      # Mapping's default would load the tensor
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape without reading the data."""
        if name not in self._where:
            raise KeyError(f"tensor {name!r} not in checkpoint")
        return self._where[name].shape(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"TensorStore({len(self)} tensors in {[f.name for f in self.files]})"


class PrefixView(Mapping):
    """`store` seen without a name prefix: Owl3 keeps its Qwen2 under `language_model.`."""

    def __init__(self, store: Mapping, prefix: str):
        self._store, self._prefix = store, prefix
        self._names = [k[len(prefix):] for k in store if k.startswith(prefix)]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._store[self._prefix + name]

    def __contains__(self, name) -> bool:
        return self._prefix + name in self._store

    def shape(self, name: str) -> tuple[int, ...]:
        return tensor_shape(self._store, self._prefix + name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def tensor_shape(tensors: Mapping, name: str) -> tuple[int, ...]:
    """Shape of tensors[name], without loading it when the mapping can tell (TensorStore, PrefixView)."""
    if hasattr(tensors, "shape"):
        return tuple(tensors.shape(name))
    return tuple(tensors[name].shape)


_LAYOUTS = [  # (single file, index file) in transformers' order of preference
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
]


def open_weights(hf_dir: str | Path) -> TensorStore:
    hf_dir = _checked_dir(hf_dir)
    for single, index in _LAYOUTS:
        if (hf_dir / index).is_file():
            return _open_sharded(hf_dir / index)
        if (hf_dir / single).is_file():
            shard = _Shard(hf_dir / single)
            return TensorStore({k: shard for k in shard.keys()}, [shard.path])
    expected = ", ".join(n for pair in _LAYOUTS for n in pair)
    raise FileNotFoundError(f"{hf_dir}: no weights found (expected one of: {expected})")


def _open_sharded(index_path: Path) -> TensorStore:
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: missing or empty 'weight_map'")
    shards: dict[str, _Shard] = {}
    for fname in sorted(set(weight_map.values())):
        path = index_path.parent / fname
        if not path.is_file():
            raise FileNotFoundError(f"{index_path} names shard {fname!r}, but {path} does not exist")
        shards[fname] = _Shard(path)
    where = {name: shards[fname] for name, fname in weight_map.items()}
    return TensorStore(where, [s.path for s in shards.values()])


class Checkpoint(NamedTuple):
    config: dict
    tensors: TensorStore
    path: Path


def load_checkpoint(hf_dir: str | Path) -> Checkpoint:
    """config.json + a lazy tensor mapping. Unpacks as (config, tensors, path)."""
    hf_dir = _checked_dir(hf_dir)
    return Checkpoint(load_config(hf_dir), open_weights(hf_dir), hf_dir)


def _checked_dir(hf_dir: str | Path) -> Path:
    p = Path(hf_dir)
    if not p.exists():
        raise FileNotFoundError(f"{p}: checkpoint directory not found")
    if not p.is_dir():
        raise NotADirectoryError(f"{p}: expected a checkpoint directory (with config.json), got a file")
    return p


# --------------------------------------------------------------------------------------------- config

TEXT_ARCHS = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


def text_arch(config: dict) -> str:
    """'qwen2' or 'llama' from model_type (or architectures when model_type is absent)."""
    mt = config.get("model_type")
    if mt in TEXT_ARCHS:
        return mt
    archs = config.get("architectures") or []
    if mt is None:
        for a in archs:
            for name, cls in TEXT_ARCHS.items():
                if a == cls:
                    return name
    raise UnsupportedModelError(
        f"unsupported model_type {mt!r} (architectures {archs}); text export supports {sorted(TEXT_ARCHS)}")


@dataclass(frozen=True)
class TextConfig:
    """Decoder hyper-parameters with transformers' defaults applied."""
    arch: str                   # "qwen2" | "llama"
    vocab_size: int             # embedding rows
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool              # q/k/v projections carry a bias
    o_bias: bool                # o_proj carries a bias (llama with attention_bias only)

    @staticmethod
    def from_dict(config: dict) -> "TextConfig":
        arch = text_arch(config)

        def need(key):
            if key not in config:
                raise CheckpointError(f"config.json: missing required field {key!r} for {arch}")
            return config[key]

        if config.get("rope_scaling"):
            raise UnsupportedModelError(f"config.json: rope_scaling {config['rope_scaling']!r} is not supported")
        if config.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"config.json: hidden_act {config['hidden_act']!r} is not supported")
        if config.get("mlp_bias", False):
            raise UnsupportedModelError("config.json: mlp_bias=true is not supported")
        if arch == "qwen2" and config.get("use_sliding_window", False):
            raise UnsupportedModelError("config.json: use_sliding_window=true is not supported")
        heads = need("num_attention_heads")
        hidden = need("hidden_size")
        attention_bias = bool(config.get("attention_bias", False))
        return TextConfig(
            arch=arch,
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_layers=need("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            # transformers' defaults: Qwen2Config 10000.0, LlamaConfig 10000.0 (Llama-2 configs omit it)
            rope_theta=float(config.get("rope_theta", 10000.0)),
            max_position_embeddings=need("max_position_embeddings"),
            # Qwen2Config and LlamaConfig both default tie_word_embeddings to False
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=(arch == "qwen2") or attention_bias,
            o_bias=(arch == "llama") and attention_bias,
        )
