"""Sizes of the demo model (a feasibility run on 2 cores picked them; see docs/demo.md) and its config.json in
the published mPLUG-Owl3 layout (the same field set as the real checkpoints, owl_export.owl3.fixtures)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DemoSizes:
    # decoder (Qwen2 with hyper layers)
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 512
    hyper_layers: tuple = (2, 4)          # 1-based, as config.json writes them
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    # vision tower (SigLIP; features read at hidden_states[-2], so the last layer is never used)
    image_size: int = 112
    patch_size: int = 14
    vision_hidden: int = 128
    vision_heads: int = 4
    vision_intermediate: int = 512
    vision_layers: int = 3
    # byte-level BPE (256 byte symbols + merges), before the three special tokens
    bpe_vocab: int = 512

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def config_json(s: DemoSizes, vocab_rows: int, bos_id: int, eos_id: int) -> dict:
    """config.json of the demo checkpoint: model_type mplugowl3, tied embeddings, 240728-style hyper layers."""
    return {
        "architectures": ["mPLUGOwl3Model"],
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": s.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": s.intermediate_size,
        "max_position_embeddings": 4096,
        "max_window_layers": s.num_layers,
        "model_type": "mplugowl3",
        "num_attention_heads": s.num_heads,
        "num_hidden_layers": s.num_layers,
        "num_key_value_heads": s.num_kv_heads,
        "rms_norm_eps": s.rms_norm_eps,
        "rope_theta": s.rope_theta,
        "sliding_window": 4096,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_rows,
        "hyper_layers": list(s.hyper_layers),
        "vision_config": {"hidden_size": s.vision_hidden, "image_size": s.image_size,
                          "intermediate_size": s.vision_intermediate, "model_type": "siglip_vision_model",
                          "num_attention_heads": s.vision_heads, "num_hidden_layers": s.vision_layers,
                          "patch_size": s.patch_size},
    }


def sizes_dict(s: DemoSizes) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()}
