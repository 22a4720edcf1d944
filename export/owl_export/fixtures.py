"""Tiny random Qwen2 / LLaMA checkpoints in the exact published layout, for tests.

The directory looks like a real download (config.json with the field set of Qwen2-0.5B-Instruct or
Llama-2-7b-hf, generation_config.json, weights under HF names in one of the published file layouts, the
tokenizer files), so the export and runtime code paths under test are the real ones.

Every parameter is re-randomized from a fixed seed with scales chosen so activations keep unit size through
the layers and the final logits spread over several units: greedy tests compare argmax tokens, which
must not tie.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

_TRANSFORMERS_VERSION = {"qwen2": "4.40.1", "llama": "4.31.0.dev0"}   # as in the published configs
_MAX_POSITIONS = {"qwen2": 32768, "llama": 4096}
_ARCH_CLASS = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
_WEIGHT_FORMATS = ("safetensors", "safetensors_sharded", "bin", "bin_sharded")


def make_tiny_checkpoint(out_dir, arch: str = "qwen2", *, seed: int = 0, hidden_size: int = 64,
                         num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                         intermediate_size: int = 128, tie_word_embeddings: bool | None = None,
                         weights_format: str = "safetensors", vocab_size: int = 1000,
                         dtype: str = "float32") -> Path:
    """Write a tiny random HF checkpoint directory; returns its path.

    vocab_size is the tokenizer's training size; for qwen2 the embedding (config vocab_size) is padded
    with unused rows past the tokenizer's size, like Qwen's 151936-row embedding for 151646 tokens.
    """
    if arch not in _ARCH_CLASS:
        raise ValueError(f"arch must be one of {sorted(_ARCH_CLASS)}, got {arch!r}")
    if weights_format not in _WEIGHT_FORMATS:
        raise ValueError(f"weights_format must be one of {_WEIGHT_FORMATS}, got {weights_format!r}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
    if tie_word_embeddings is None:
        tie_word_embeddings = arch == "qwen2"

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _write_tokenizer(out, arch, vocab_size)
    n_rows = (tok["size"] // 64 + 1) * 64 if arch == "qwen2" else tok["size"]

    config = _config(arch, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size,
                     tie_word_embeddings, n_rows, tok, dtype)
    write_json(out / "config.json", config)
    write_json(out / "generation_config.json", _generation_config(arch, tok))

    weights = random_weights(arch, seed=seed, hidden_size=hidden_size, num_layers=num_layers,
                             num_heads=num_heads, num_kv_heads=num_kv_heads,
                             intermediate_size=intermediate_size, vocab_rows=n_rows,
                             tie_word_embeddings=tie_word_embeddings)
    weights = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in weights.items()}
    save_weights(out, weights, weights_format)
    return out


# ------------------------------------------------------------------------------------------- weights

def random_weights(arch: str, *, seed: int, hidden_size: int, num_layers: int, num_heads: int,
                   num_kv_heads: int, intermediate_size: int, vocab_rows: int,
                   tie_word_embeddings: bool) -> dict[str, torch.Tensor]:
    """float32 state dict under HF names, drawn in a fixed order from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    H, I, d = hidden_size, intermediate_size, hidden_size // num_heads

    def matrix(rows, cols, gain=1.0):   # N(0, gain^2/in): unit-variance inputs give gain-sized outputs
        return gain * torch.randn(rows, cols, generator=g) / math.sqrt(cols)

    def norm(n):                        # near 1 but not 1, so a missing/misapplied weight shows
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    def bias(n):
        return 0.1 * torch.randn(n, generator=g)

    # With tied embeddings the current token's own row sits in the residual stream and scores |e|^2 in
    # the logits, so N(0,1) rows make the model echo its input forever; smaller rows plus residual
    # branches of gain 2 keep greedy output varied while the final norm keeps the logit spread at ~2.
    emb_scale = 0.25 if tie_word_embeddings else 1.0
    branch_gain = 2.0
    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": emb_scale * torch.randn(vocab_rows, H, generator=g)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(H)
        w[p + "self_attn.q_proj.weight"] = matrix(num_heads * d, H)
        w[p + "self_attn.k_proj.weight"] = matrix(num_kv_heads * d, H)
        w[p + "self_attn.v_proj.weight"] = matrix(num_kv_heads * d, H)
        if arch == "qwen2":
            w[p + "self_attn.q_proj.bias"] = bias(num_heads * d)
            w[p + "self_attn.k_proj.bias"] = bias(num_kv_heads * d)
            w[p + "self_attn.v_proj.bias"] = bias(num_kv_heads * d)
        w[p + "self_attn.o_proj.weight"] = matrix(H, num_heads * d, branch_gain)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = matrix(I, H)
        w[p + "mlp.up_proj.weight"] = matrix(I, H)
        w[p + "mlp.down_proj.weight"] = matrix(H, I, branch_gain)
    w["model.norm.weight"] = norm(H)
    if not tie_word_embeddings:
        # x2: the final norm gives unit-RMS hidden states, so logits ~ N(0, 4): a spread of several units
        w["lm_head.weight"] = matrix(vocab_rows, H, 2.0)
    return w


def save_weights(out: Path, weights: dict[str, torch.Tensor], fmt: str) -> None:
    from safetensors.torch import save_file

    names = list(weights)
    if fmt == "safetensors":
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(weights, out / "pytorch_model.bin")
    else:
        # two shards, split like save_pretrained does: contiguous runs of tensors in state-dict order
        n_shards = 2
        per = math.ceil(len(names) / n_shards)
        groups = [names[i * per:(i + 1) * per] for i in range(n_shards)]
        stem, ext = ("model", "safetensors") if fmt == "safetensors_sharded" else ("pytorch_model", "bin")
        weight_map = {}
        for k, group in enumerate(groups, 1):
            fname = f"{stem}-{k:05d}-of-{n_shards:05d}.{ext}"
            part = {n: weights[n] for n in group}
            if ext == "safetensors":
                save_file(part, str(out / fname), metadata={"format": "pt"})
            else:
                torch.save(part, out / fname)
            weight_map.update({n: fname for n in group})
        total = sum(t.numel() * t.element_size() for t in weights.values())
        index_name = "model.safetensors.index.json" if ext == "safetensors" else "pytorch_model.bin.index.json"
        write_json(out / index_name, {"metadata": {"total_size": total}, "weight_map": weight_map})


# ------------------------------------------------------------------------------------------- tokenizer

def _write_tokenizer(out: Path, arch: str, vocab_size: int) -> dict:
    """Train the tiny tokenizer into `out`; returns its size and special ids."""
    from .tiny_tokenizers import train_llama_tokenizer, train_qwen2_tokenizer

    if arch == "qwen2":
        train_qwen2_tokenizer(out, vocab_size=vocab_size)
        tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
        ids = dict(tj["model"]["vocab"])
        ids.update({t["content"]: t["id"] for t in tj.get("added_tokens", [])})
        for special in ("<|endoftext|>", "<|im_end|>"):
            if special not in ids:
                raise RuntimeError(f"tiny qwen2 tokenizer lacks {special!r}")
        return {"size": max(ids.values()) + 1, "bos": ids["<|endoftext|>"], "eos": ids["<|im_end|>"]}

    import sentencepiece as spm
    train_llama_tokenizer(out, vocab_size=vocab_size)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    return {"size": sp.get_piece_size(), "bos": sp.bos_id(), "eos": sp.eos_id(),
            "pad": max(sp.pad_id(), 0)}


# ------------------------------------------------------------------------------------------- configs

def _config(arch, H, L, nh, nkv, I, tied, n_rows, tok, dtype) -> dict:
    if arch == "qwen2":   # field set of Qwen2-0.5B-Instruct/config.json, in its order
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": tok["bos"],
            "eos_token_id": tok["eos"],
            "hidden_act": "silu",
            "hidden_size": H,
            "initializer_range": 0.02,
            "intermediate_size": I,
            "max_position_embeddings": _MAX_POSITIONS[arch],
            "max_window_layers": L,
            "model_type": "qwen2",
            "num_attention_heads": nh,
            "num_hidden_layers": L,
            "num_key_value_heads": nkv,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": _MAX_POSITIONS[arch],
            "tie_word_embeddings": tied,
            "torch_dtype": dtype,
            "transformers_version": _TRANSFORMERS_VERSION[arch],
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": n_rows,
        }
    return {               # field set of Llama-2-7b-hf/config.json (+ rope_theta/attention_bias of later revisions)
        "_name_or_path": "meta-llama/Llama-2-7b-hf",
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "bos_token_id": tok["bos"],
        "eos_token_id": tok["eos"],
        "hidden_act": "silu",
        "hidden_size": H,
        "initializer_range": 0.02,
        "intermediate_size": I,
        "max_position_embeddings": _MAX_POSITIONS[arch],
        "model_type": "llama",
        "num_attention_heads": nh,
        "num_hidden_layers": L,
        "num_key_value_heads": nkv,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "transformers_version": _TRANSFORMERS_VERSION[arch],
        "use_cache": True,
        "vocab_size": n_rows,
    }


def _generation_config(arch: str, tok: dict) -> dict:
    if arch == "qwen2":   # Qwen2-0.5B-Instruct/generation_config.json
        return {"bos_token_id": tok["bos"], "pad_token_id": tok["bos"], "do_sample": True,
                "eos_token_id": [tok["eos"], tok["bos"]], "repetition_penalty": 1.1, "temperature": 0.7,
                "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0"}
    return {"bos_token_id": tok["bos"], "do_sample": True, "eos_token_id": tok["eos"],   # Llama-2-7b-hf
            "pad_token_id": tok.get("pad", 0), "temperature": 0.6, "max_length": _MAX_POSITIONS[arch],
            "top_p": 0.9, "transformers_version": _TRANSFORMERS_VERSION[arch]}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
