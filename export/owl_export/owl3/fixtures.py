"""Tiny random mPLUG-Owl3 checkpoints in the exact published layout (docs/owl3.md §1-2), for tests.

The directory looks like a real download: config.json with the published field set (model_type
"mplugowl3", 1-based `hyper_layers`, `vision_config`), generation_config.json, one model.safetensors under
the official names (language_model.*, vision_model.* incl. the unused last encoder layer, post_layernorm and
MAP head, vision2text_model.*), and the Qwen2 tokenizer files. The published repos ship no
preprocessor_config.json (the processor is built in code), so none is written.

Tiny dimensions keep every formula of the real models intact:
  text    hidden 64, 4 heads of 16, 2 KV heads, 4 layers, hyper layers (1-based) [1,3] for 240728 (layer 0
          is a hyper layer, as in the real [1,9,17,25]) and [2,4] for 241014/241101; embedding rows padded
          past the tokenizer like the real 151851 (241101: 151651) rows for 151646 tokens.
  vision  hidden 32, 2 heads, 2 layers (so hidden_states[-2] is the output of layer 0), patch 4;
          image_size 30 for 240728/241014 (30 // 4 = 7 patches per side, 2 px unused, like 384 // 14 = 27
          with 6 px unused) and 28 for 241101 (exactly 7 x 4, like 378 = 27 x 14): 49 visual tokens per image.
Every parameter is re-randomized (norms, biases, gates, position embeddings) so layout bugs show (§10).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..fixtures import random_weights

# variant -> (generation, tied embeddings, tiny hyper_layers 1-based, image_size, extra embedding rows,
#             sliding_window as published)
VARIANTS = {
    "1b": ("241014", True, [2, 4], 30, 205, 32768),
    "2b": ("241014", True, [2, 4], 30, 205, 32768),
    "7b-240728": ("240728", False, [1, 3], 30, 205, 131072),
    "7b-241101": ("241101", False, [2, 4], 28, 5, 131072),
}
# The strings the Owl3 processor writes into prompts: plain text, never special tokens (docs/owl3.md §6.2).
OWL3_MARKERS = ("<|image|>", "<|video|>", "<|start_cut|>", "<|end_cut|>", "<|start_video_frame|>",
                "<|end_video_frame|>")


def make_tiny_owl3_checkpoint(out_dir, variant: str = "1b", *, seed: int = 0, hidden_size: int = 64,
                              num_layers: int = 4, num_heads: int = 4, num_kv_heads: int = 2,
                              intermediate_size: int = 128, hyper_layers: list[int] | None = None,
                              vision_hidden: int = 32, vision_layers: int = 2, vision_heads: int = 2,
                              vision_intermediate: int = 64, patch_size: int = 4, image_size: int | None = None,
                              tokenizer_vocab: int = 1000, dtype: str = "float32") -> Path:
    """Write a tiny random mPLUG-Owl3 checkpoint directory; returns its path.

    variant: "1b" | "2b" (241014: static gate vector, tied embeddings), "7b-240728" (per-head gate_proj),
    "7b-241101" (fused hyper-attention, MLP vision2text). hyper_layers are 1-based, as in config.json."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    gen, tied, default_hyper, default_size, extra_rows, window = VARIANTS[variant]
    hyper_layers = list(hyper_layers or default_hyper)
    image_size = image_size or default_size
    if hidden_size % num_heads or num_heads % num_kv_heads or vision_hidden % vision_heads:
        raise ValueError("hidden sizes must divide by head counts, and num_heads by num_kv_heads")
    if not all(1 <= x <= num_layers for x in hyper_layers):
        raise ValueError(f"hyper_layers {hyper_layers} must be 1-based indices into {num_layers} layers")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _write_tokenizer(out, tokenizer_vocab)
    n_rows = tok["size"] + extra_rows

    config = {   # field set and order of the published config.json files (docs/owl3.md §1, [S9])
        "architectures": ["mPLUGOwl3Model"],
        "auto_map": {"AutoConfig": "configuration_mplugowl3.mPLUGOwl3Config",
                     "AutoModel": "modeling_mplugowl3.mPLUGOwl3Model",
                     "AutoModelForCausalLM": "modeling_mplugowl3.mPLUGOwl3Model"},
        "attention_dropout": 0.0,
        "bos_token_id": tok["endoftext"],
        "eos_token_id": tok["im_end"],
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 32768,
        "max_window_layers": num_layers,
        "model_type": "mplugowl3",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": window,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": n_rows,
        "hyper_layers": hyper_layers,
        "vision_config": {"hidden_size": vision_hidden, "image_size": image_size,
                          "intermediate_size": vision_intermediate, "model_type": "siglip_vision_model",
                          "num_attention_heads": vision_heads, "num_hidden_layers": vision_layers,
                          "patch_size": patch_size},
    }
    _write_json(out / "config.json", config)
    # Qwen2-Instruct-style sampling defaults; unused on the generate() path (docs/owl3.md §6.6)
    _write_json(out / "generation_config.json", {
        "bos_token_id": tok["endoftext"], "pad_token_id": tok["endoftext"], "do_sample": True,
        "eos_token_id": [tok["im_end"], tok["endoftext"]],
        "repetition_penalty": 1.05 if gen == "240728" else 1.2, "temperature": 0.7, "top_p": 0.8,
        "top_k": 20, "transformers_version": "4.41.2"})

    # The LM draws from the plain Qwen2 fixture generator: same seed, same backbone weights.
    lm = random_weights("qwen2", seed=seed, hidden_size=hidden_size, num_layers=num_layers,
                        num_heads=num_heads, num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
                        vocab_rows=n_rows, tie_word_embeddings=tied)
    weights = {"language_model." + k: v for k, v in lm.items()}
    g = torch.Generator().manual_seed(seed + 7919)
    weights.update(_hyper_weights(g, gen, [x - 1 for x in hyper_layers], hidden_size, num_heads, num_kv_heads))
    weights.update(random_vision_weights(g, vision_hidden, vision_layers, vision_intermediate, patch_size,
                                   (image_size // patch_size) ** 2))
    weights.update(_vision2text_weights(g, gen, vision_hidden, hidden_size))
    weights = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in weights.items()}

    from safetensors.torch import save_file
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


# ------------------------------------------------------------------------------------------- weights

def rand_matrix(g, rows, cols, gain=1.0):
    return gain * torch.randn(rows, cols, generator=g) / math.sqrt(cols)


def rand_norm(g, n):                      # near 1 but not 1: a missing or misapplied weight shows
    return 1.0 + 0.1 * torch.randn(n, generator=g)


def rand_bias(g, n):
    return 0.1 * torch.randn(n, generator=g)


def _hyper_weights(g, gen, hyper0, H, nh, nkv) -> dict[str, torch.Tensor]:
    """docs/owl3.md §2.2: v_kv_proj everywhere; gate_proj.0 (240728) or gate (241014); nothing for 241101."""
    d, w = H // nh, {}
    for i in hyper0:
        p = f"language_model.model.layers.{i}.self_attn."
        w[p + "v_kv_proj.weight"] = rand_matrix(g, 2 * nkv * d, H)
        w[p + "v_kv_proj.bias"] = rand_bias(g, 2 * nkv * d)
        if gen == "240728":
            w[p + "gate_proj.0.weight"] = rand_matrix(g, d, d)
            w[p + "gate_proj.0.bias"] = rand_bias(g, d)
        elif gen == "241014":
            w[p + "gate"] = torch.randn(H, generator=g)  # published init is zeros (g = 0.5); spread it out
    return w


def random_vision_weights(g, Hv, L, I, patch, n_pos) -> dict[str, torch.Tensor]:
    """Every vision_model.* tensor of the published file (docs/owl3.md §2.3), the unused ones included."""
    w = {"vision_model.embeddings.patch_embedding.weight":
         torch.randn(Hv, 3, patch, patch, generator=g) / math.sqrt(3 * patch * patch),
         "vision_model.embeddings.patch_embedding.bias": rand_bias(g, Hv),
         "vision_model.embeddings.position_embedding.weight": 0.5 * torch.randn(n_pos, Hv, generator=g)}
    for i in range(L):
        p = f"vision_model.encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            w[p + n + ".weight"], w[p + n + ".bias"] = rand_norm(g, Hv), rand_bias(g, Hv)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[p + f"self_attn.{n}.weight"], w[p + f"self_attn.{n}.bias"] = rand_matrix(g, Hv, Hv), rand_bias(g, Hv)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = rand_matrix(g, I, Hv), rand_bias(g, I)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = rand_matrix(g, Hv, I), rand_bias(g, Hv)
    w["vision_model.post_layernorm.weight"], w["vision_model.post_layernorm.bias"] = rand_norm(g, Hv), rand_bias(g, Hv)
    h = "vision_model.head."
    w[h + "probe"] = torch.randn(1, 1, Hv, generator=g)
    w[h + "attention.in_proj_weight"], w[h + "attention.in_proj_bias"] = rand_matrix(g, 3 * Hv, Hv), rand_bias(g, 3 * Hv)
    w[h + "attention.out_proj.weight"], w[h + "attention.out_proj.bias"] = rand_matrix(g, Hv, Hv), rand_bias(g, Hv)
    w[h + "layernorm.weight"], w[h + "layernorm.bias"] = rand_norm(g, Hv), rand_bias(g, Hv)
    w[h + "mlp.fc1.weight"], w[h + "mlp.fc1.bias"] = rand_matrix(g, I, Hv), rand_bias(g, I)
    w[h + "mlp.fc2.weight"], w[h + "mlp.fc2.bias"] = rand_matrix(g, Hv, I), rand_bias(g, Hv)
    return w


def _vision2text_weights(g, gen, Hv, H) -> dict[str, torch.Tensor]:
    """docs/owl3.md §1.3: Linear(Hv, H), or Sequential(Linear(Hv, H), GELU, Linear(H, H)) for 241101."""
    if gen == "241101":
        return {"vision2text_model.0.weight": rand_matrix(g, H, Hv), "vision2text_model.0.bias": rand_bias(g, H),
                "vision2text_model.2.weight": rand_matrix(g, H, H), "vision2text_model.2.bias": rand_bias(g, H)}
    return {"vision2text_model.weight": rand_matrix(g, H, Hv), "vision2text_model.bias": rand_bias(g, H)}


# ------------------------------------------------------------------------------------------- tokenizer

def _write_tokenizer(out: Path, vocab_size: int) -> dict:
    """The tiny Qwen2 tokenizer, checked for what docs/owl3.md §6.2 says of the Owl3 marker strings."""
    from tokenizers import Tokenizer

    from ..tiny_tokenizers import train_qwen2_tokenizer

    train_qwen2_tokenizer(out, vocab_size=vocab_size)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<", "|", ">")}
    if None in ids.values():
        raise RuntimeError(f"tiny qwen2 tokenizer lacks one of {sorted(k for k, v in ids.items() if v is None)}")
    check_marker_tokenization(tok)
    return {"size": tok.get_vocab_size(with_added_tokens=True), "endoftext": ids["<|endoftext|>"],
            "im_end": ids["<|im_end|>"]}


def check_marker_tokenization(tok) -> None:
    """docs/owl3.md §6.2, the parts a tiny vocabulary can honour: each marker is plain text (no added/special
    token), encodes on its own starting with "<", "|" and ending with "|", ">" (no `<|`/`|>` merges).
    The word inside may take several tokens here (the real vocabulary has `image` as one: 5 tokens)."""
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    lt, bar, gt = tok.token_to_id("<"), tok.token_to_id("|"), tok.token_to_id(">")
    for marker in OWL3_MARKERS:
        if marker in added:
            raise RuntimeError(f"{marker!r} is an added token; Owl3 tokenizes it as plain text")
        ids = tok.encode(marker, add_special_tokens=False).ids
        if len(ids) < 5 or ids[:2] != [lt, bar] or ids[-2:] != [bar, gt]:
            raise RuntimeError(f"{marker!r} encodes to {tok.encode(marker).tokens}; expected '<', '|', ..., "
                               "'|', '>' as in the Qwen2 tokenizer")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
