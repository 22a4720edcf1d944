"""Tiny random mPLUG-Owl2 / mPLUG-Owl (v1) checkpoints in the published layouts, for tests.

  "owl2"  like MAGAer13/mplug-owl2-llama2-7b: config.json = MPLUGOwl2Config (LLaMA fields + visual_config),
          pytorch_model-{i}-of-{n}.bin with shard i holding LLM layer i-1 and the last shard everything else,
          pytorch_model.bin.index.json, the LLaMA SentencePiece tokenizer.model, preprocessor_config.json
  "owl2_1" like Mizukiluke/mplug_owl_2_1: config.json = MPLUGOwl2QwenConfig (Qwen-7B fields + visual_config
          with a CLS-free tower), transformer.* tensors with the fused c_attn as multiway.{0,1}, a Qwen
          qwen.tiktoken tokenizer (ranks, then <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0..204|>)
  "owl1"  like MAGAer13/mplug-owl-llama-7b: config.json = MplugOwlConfig (vision_config,
          visual_abstractor_config, text_config), one pytorch_model.bin

Every parameter is random (norms near but not at 1, biases non-zero, the multiway image branch different
from the text branch): a layout or branch mix-up changes the outputs. The vision tower runs at the real image
size (448 / 224 with patch 14), so the abstractor's position tables have their real 32x32 / 16x16 grids.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..fixtures import random_weights, save_weights, write_json
from ..owl3.fixtures import rand_bias, rand_matrix, rand_norm
from .config import CLIP_MEAN, CLIP_STD

VARIANTS = ("owl2", "owl2_1", "owl1")
# tokenization_qwen.py's specials, written out here as the checkpoint's own code defines them: vocab.py keeps its
# copy, and the tests compare what vocab.py reads with this one
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))


def make_tiny_owl2_checkpoint(out_dir, variant: str = "owl2", *, seed: int = 0, hidden_size: int = 64,
                              num_layers: int = 2, num_heads: int = 4, intermediate_size: int = 128,
                              vision_hidden: int = 32, vision_layers: int = 2, vision_heads: int = 2,
                              vision_intermediate: int = 64, image_size: int | None = None, patch_size: int = 14,
                              num_queries: int = 8, abstractor_layers: int = 2, abstractor_intermediate: int = 48,
                              tokenizer_vocab: int = 1000, dtype: str = "float32") -> Path:
    """Write a tiny random checkpoint directory of `variant` ("owl2" | "owl1"); returns its path."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    if hidden_size % num_heads or vision_hidden % vision_heads:
        raise ValueError("hidden sizes must divide by head counts")
    image_size = image_size or (224 if variant == "owl1" else 448)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if variant == "owl2_1":
        return _make_owl2_1(out, seed=seed, H=hidden_size, L=num_layers, nh=num_heads, I=intermediate_size,
                            Dv=vision_hidden, Lv=vision_layers, nhv=vision_heads, Iv=vision_intermediate,
                            S=image_size, patch=patch_size, Q=num_queries, La=abstractor_layers,
                            Ia=abstractor_intermediate, tokenizer_vocab=tokenizer_vocab, dtype=dtype)
    tok = _write_tokenizer(out, tokenizer_vocab)

    llama = {"vocab_size": tok["size"], "hidden_size": hidden_size, "intermediate_size": intermediate_size,
             "num_hidden_layers": num_layers, "num_attention_heads": num_heads, "num_key_value_heads": num_heads,
             "hidden_act": "silu", "max_position_embeddings": 2048, "initializer_range": 0.02,
             "rms_norm_eps": 1e-6, "use_cache": True, "pad_token_id": 0, "bos_token_id": tok["bos"],
             "eos_token_id": tok["eos"], "pretraining_tp": 1, "tie_word_embeddings": False,
             "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False}
    vision = {"hidden_size": vision_hidden, "intermediate_size": vision_intermediate, "projection_dim": 768,
              "num_hidden_layers": vision_layers, "num_attention_heads": vision_heads, "num_channels": 3,
              "image_size": image_size, "patch_size": patch_size, "hidden_act": "quick_gelu",
              "layer_norm_eps": 1e-6, "attention_dropout": 0.0, "initializer_range": 0.02,
              "initializer_factor": 1.0, "use_flash_attn": False, "model_type": "mplug_owl_vision_model"}
    abstractor = {"num_hidden_layers": abstractor_layers, "num_attention_heads": vision_heads,
                  "hidden_size": vision_hidden, "intermediate_size": abstractor_intermediate,
                  "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": 1e-6,
                  "encoder_hidden_size": vision_hidden, "model_type": "mplug_owl_visual_abstract"}
    if variant == "owl2":
        vision.update(use_cls_token=True, use_post_layernorm=True)
        abstractor.update(add_v2t_pos_emb=False, use_cls_token=True, num_learnable_queries=num_queries,
                          grid_size=image_size // patch_size)
        config = {"architectures": ["MPLUGOwl2LlamaForCausalLM"], "model_type": "mplug_owl2", **llama,
                  "torch_dtype": dtype, "transformers_version": "4.31.0",
                  "visual_config": {"visual_model": vision, "visual_abstractor": abstractor}}
    else:
        config = {"architectures": ["MplugOwlForConditionalGeneration"], "model_type": "mplug-owl",
                  "num_query_tokens": num_queries, "vision_config": vision,
                  "visual_abstractor_config": abstractor, "text_config": {**llama, "model_type": "llama"},
                  "torch_dtype": dtype, "transformers_version": "4.28.1", "tie_word_embeddings": False}
    write_json(out / "config.json", config)
    write_json(out / "generation_config.json", {"bos_token_id": tok["bos"], "eos_token_id": tok["eos"],
                                                  "pad_token_id": 0, "max_length": 4096, "temperature": 0.9,
                                                  "top_p": 0.6, "transformers_version": "4.31.0"})
    write_json(out / "preprocessor_config.json", {
        "crop_size": image_size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD), "resample": 3, "size": image_size})

    lm = random_weights("llama", seed=seed, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                        num_kv_heads=num_heads, intermediate_size=intermediate_size, vocab_rows=tok["size"],
                        tie_word_embeddings=False)
    g = torch.Generator().manual_seed(seed + 4099)
    grid = image_size // patch_size
    vis = random_owl2_vision_weights(g, vision_hidden, vision_layers, vision_intermediate, patch_size, grid)
    abst = random_abstractor_weights(g, vision_hidden, abstractor_layers, abstractor_intermediate, num_queries,
                                     hidden_size)
    if variant == "owl2":
        weights = _multiway(lm, g, num_layers, num_heads)
        weights.update({"model.vision_model." + k: v for k, v in vis.items()})
        weights.update({"model.visual_abstractor." + k: v for k, v in abst.items()})
    else:
        weights = {"language_model." + k: v for k, v in lm.items()}
        weights.update({"vision_model." + k: v for k, v in vis.items()})
        weights["query_tokens"] = abst.pop("query_embeds")
        weights.update({"abstractor." + k: v for k, v in abst.items()})
    weights = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in weights.items()}
    if variant == "owl2":
        _save_owl2_shards(out, weights, num_layers)
    else:
        torch.save(weights, out / "pytorch_model.bin")
    return out


def _make_owl2_1(out: Path, *, seed, H, L, nh, I, Dv, Lv, nhv, Iv, S, patch, Q, La, Ia, tokenizer_vocab, dtype) -> Path:
    """docs/owl2.md PART B: Qwen-7B fields, multiway c_attn (with bias), w1 * silu(w2), a ViT with no CLS token
    and a [256, D] position table (16x16, resized to the grid at run time)."""
    n_tok = _write_qwen_tokenizer(out, tokenizer_vocab)
    n_rows = (n_tok // 64 + 1) * 64                 # padded like Qwen-7B's 151936 rows for 151851 tokens
    endoftext = n_tok - len(QWEN_SPECIALS)
    vision = {"hidden_size": Dv, "intermediate_size": Iv, "num_hidden_layers": Lv, "num_attention_heads": nhv,
              "num_channels": 3, "image_size": S, "patch_size": patch, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
              "use_flash_attn": False, "use_cls_token": False, "use_post_layernorm": True}
    abstractor = {"num_learnable_queries": Q, "hidden_size": Dv, "num_hidden_layers": La, "num_attention_heads": nhv,
                  "intermediate_size": Ia, "layer_norm_eps": 1e-6, "encoder_hidden_size": Dv,
                  "grid_size": S // patch, "use_cls_token": False, "add_v2t_pos_emb": False}
    config = {"architectures": ["MPLUGOwl2QWenForCausalLM"], "model_type": "mplug_owl2_1", "multiway": True,
              "bf16": False, "fp16": False, "fp32": False, "bias_dropout_fusion": True, "emb_dropout_prob": 0.0,
              "attn_dropout_prob": 0.0, "hidden_size": H, "initializer_range": 0.02, "intermediate_size": 2 * I,
              "kv_channels": H // nh, "layer_norm_epsilon": 1e-6, "max_position_embeddings": 8192,
              "no_bias": True, "num_attention_heads": nh, "num_hidden_layers": L, "onnx_safe": None,
              "rotary_emb_base": 10000, "rotary_pct": 1.0, "scale_attn_weights": True, "seq_length": 2048,
              "tie_word_embeddings": False, "tokenizer_type": "QWenTokenizer", "torch_dtype": "bfloat16",
              "transformers_version": "4.32.0", "use_cache": True, "use_dynamic_ntk": True, "use_flash_attn": False,
              "use_logn_attn": True, "vocab_size": n_rows,
              "visual_config": {"visual_model": vision, "visual_abstractor": abstractor}}
    write_json(out / "config.json", config)
    write_json(out / "generation_config.json", {"chat_format": "raw", "eos_token_id": endoftext,
                                                  "pad_token_id": endoftext, "max_new_tokens": 512, "do_sample": False,
                                                  "transformers_version": "4.32.0"})
    write_json(out / "preprocessor_config.json", {
        "crop_size": S, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD), "resample": 3, "size": S})

    g = torch.Generator().manual_seed(seed + 8191)
    w = {"transformer.wte.weight": torch.randn(n_rows, H, generator=g), "transformer.ln_f.weight": rand_norm(g, H),
         "lm_head.weight": rand_matrix(g, n_rows, H, 2.0)}
    for i in range(L):
        p = f"transformer.h.{i}."
        w.update({p + "ln_1.weight": rand_norm(g, H), p + "ln_2.weight": rand_norm(g, H),
                  p + "attn.c_proj.weight": rand_matrix(g, H, H),
                  p + "mlp.w1.weight": rand_matrix(g, I, H), p + "mlp.w2.weight": rand_matrix(g, I, H),
                  p + "mlp.c_proj.weight": rand_matrix(g, H, I)})
        for b in (0, 1):   # text and image branches of the fused Q|K|V
            w[p + f"attn.c_attn.multiway.{b}.weight"] = rand_matrix(g, 3 * H, H)
            w[p + f"attn.c_attn.multiway.{b}.bias"] = rand_bias(g, 3 * H)
    vis = random_owl2_vision_weights(g, Dv, Lv, Iv, patch, S // patch)
    del vis["embeddings.cls_token"]
    vis["embeddings.position_embedding"] = 0.5 * torch.randn(256, Dv, generator=g)
    w.update({"transformer.vision_model." + k: v for k, v in vis.items()})
    abst = random_abstractor_weights(g, Dv, La, Ia, Q, H)
    w.update({"transformer.visual_abstractor." + k: v for k, v in abst.items()})
    w = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in w.items()}
    save_weights(out, w, "bin_sharded")      # two shards + index, as save_pretrained writes them
    return out


# ------------------------------------------------------------------------------------------- weights

def _multiway(lm: dict, g, num_layers: int, num_heads: int) -> dict:
    """Plain LLaMA weights -> Owl2's names: the norms and K/V of each layer get a text (0) and an image (1)
    branch; the image branch is freshly drawn, so mixing the two up shows."""
    out = {}
    for name, t in lm.items():
        parts = name.split(".")
        if parts[0] == "model" and parts[1] == "layers" and parts[-2] in (
                "k_proj", "v_proj", "input_layernorm", "post_attention_layernorm"):
            stem = ".".join(parts[:-1])
            out[f"{stem}.multiway.0.weight"] = t
            out[f"{stem}.multiway.1.weight"] = (rand_norm(g, t.shape[0]) if t.dim() == 1
                                                else rand_matrix(g, t.shape[0], t.shape[1]))
        else:
            out[name] = t
    head_dim = lm["model.layers.0.self_attn.q_proj.weight"].shape[1] // num_heads
    for i in range(num_layers):   # the shards carry the rotary buffer; the exporter ignores it (A6)
        out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = \
            1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    return out


def random_owl2_vision_weights(g, D: int, L: int, I: int, patch: int, grid: int) -> dict:
    """The ViT of docs/owl2.md A3 (names relative to vision_model.)."""
    w = {"embeddings.cls_token": 0.5 * torch.randn(1, 1, D, generator=g),
         "embeddings.patch_embed.weight": torch.randn(D, 3, patch, patch, generator=g) / math.sqrt(3 * patch * patch),
         "embeddings.position_embedding": 0.5 * torch.randn(1, grid * grid + 1, D, generator=g),
         "embeddings.pre_layernorm.weight": rand_norm(g, D), "embeddings.pre_layernorm.bias": rand_bias(g, D),
         "post_layernorm.weight": rand_norm(g, D), "post_layernorm.bias": rand_bias(g, D)}
    for e in range(L):
        p = f"encoder.layers.{e}."
        w.update({p + "input_layernorm.weight": rand_norm(g, D), p + "input_layernorm.bias": rand_bias(g, D),
                  p + "self_attn.query_key_value.weight": rand_matrix(g, 3 * D, D),
                  p + "self_attn.query_key_value.bias": rand_bias(g, 3 * D),
                  p + "self_attn.dense.weight": rand_matrix(g, D, D), p + "self_attn.dense.bias": rand_bias(g, D),
                  p + "post_attention_layernorm.weight": rand_norm(g, D),
                  p + "post_attention_layernorm.bias": rand_bias(g, D),
                  p + "mlp.fc1.weight": rand_matrix(g, I, D), p + "mlp.fc1.bias": rand_bias(g, I),
                  p + "mlp.fc2.weight": rand_matrix(g, D, I), p + "mlp.fc2.bias": rand_bias(g, D)})
    return w


def random_abstractor_weights(g, D: int, L: int, I: int, Q: int, H: int) -> dict:
    """The abstractor of docs/owl2.md A4 (names relative to visual_abstractor.; query_embeds included)."""
    w = {"query_embeds": torch.randn(1, Q, D, generator=g),
         "visual_fc.weight": rand_matrix(g, H, D), "visual_fc.bias": rand_bias(g, H),
         "vit_eos": torch.randn(1, 1, H, generator=g)}
    for a in range(L):
        p = f"encoder.layers.{a}.crossattention."
        w.update({p + "norm1.weight": rand_norm(g, D), p + "norm1.bias": rand_bias(g, D),
                  p + "normk.weight": rand_norm(g, D), p + "normk.bias": rand_bias(g, D)})
        for n in ("query", "key", "value"):
            w.update({p + f"attention.{n}.weight": rand_matrix(g, D, D), p + f"attention.{n}.bias": rand_bias(g, D)})
        w.update({p + "output.out_proj.weight": rand_matrix(g, D, D), p + "output.out_proj.bias": rand_bias(g, D),
                  p + "output.norm2.weight": rand_norm(g, D), p + "output.norm2.bias": rand_bias(g, D),
                  p + "output.mlp.w1.weight": rand_matrix(g, I, D), p + "output.mlp.w1.bias": rand_bias(g, I),
                  p + "output.mlp.w3.weight": rand_matrix(g, I, D), p + "output.mlp.w3.bias": rand_bias(g, I),
                  p + "output.mlp.w2.weight": rand_matrix(g, D, I), p + "output.mlp.w2.bias": rand_bias(g, D),
                  p + "output.mlp.ffn_ln.weight": rand_norm(g, I), p + "output.mlp.ffn_ln.bias": rand_bias(g, I)})
    return w


def _save_owl2_shards(out: Path, weights: dict, num_layers: int) -> None:
    """As the official converter: shard i (1..L) holds LLM layer i-1, the last shard everything else."""
    n = num_layers + 1
    shards: list[dict] = [{} for _ in range(n)]
    for name, t in weights.items():
        parts = name.split(".")
        k = int(parts[2]) if parts[:2] == ["model", "layers"] else n - 1
        shards[k][name] = t
    weight_map = {}
    for k, part in enumerate(shards, 1):
        fname = f"pytorch_model-{k}-of-{n}.bin"
        torch.save(part, out / fname)
        weight_map.update({name: fname for name in part})
    total = sum(t.numel() * t.element_size() for t in weights.values())
    write_json(out / "pytorch_model.bin.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


# ------------------------------------------------------------------------------------------- tokenizer

def _write_tokenizer(out: Path, vocab_size: int) -> dict:
    """The LLaMA-style SentencePiece tokenizer, loaded the way Owl2 loads it: the slow LlamaTokenizer in
    legacy mode (docs/owl2.md A8)."""
    import sentencepiece as spm

    from ..tiny_tokenizers import train_llama_tokenizer
    train_llama_tokenizer(out, vocab_size=vocab_size)
    tc = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc["legacy"] = True
    write_json(out / "tokenizer_config.json", tc)
    sm = json.loads((out / "special_tokens_map.json").read_text(encoding="utf-8"))
    sm["pad_token"] = sm["unk_token"]
    write_json(out / "special_tokens_map.json", sm)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    return {"size": sp.get_piece_size(), "bos": sp.bos_id(), "eos": sp.eos_id()}


def _write_qwen_tokenizer(out: Path, vocab_size: int) -> int:
    """A tiny Qwen (v1) tokenizer: qwen.tiktoken ("base64(bytes) rank" lines; a byte-level BPE trained on the
    project's corpus, its ids as ranks) and tokenizer_config.json; the specials follow the ranks, as in
    tokenization_qwen.py. Returns the number of tokens (ranks + specials)."""
    import base64
    import tempfile

    from ..tiny_tokenizers import train_qwen2_tokenizer
    from ..vocab import byte_level_chars

    with tempfile.TemporaryDirectory() as tmp:
        train_qwen2_tokenizer(tmp, vocab_size=vocab_size)
        vocab = json.loads((Path(tmp) / "vocab.json").read_text(encoding="utf-8"))
    byte_of = {c: b for b, c in enumerate(byte_level_chars())}
    ranks = sorted(vocab.items(), key=lambda kv: kv[1])
    lines = [f"{base64.b64encode(bytes(byte_of[c] for c in tok)).decode()} {rank}" for tok, rank in ranks]
    (out / "qwen.tiktoken").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(out / "tokenizer_config.json", {
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
        "clean_up_tokenization_spaces": True, "model_max_length": 8192, "tokenizer_class": "QWenTokenizer"})
    return len(ranks) + len(QWEN_SPECIALS)
