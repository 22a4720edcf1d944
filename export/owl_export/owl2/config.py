"""What an Owl2-family checkpoint is, read from its config.json (docs/owl2.md A1, A6, PART C).

  variant "owl2"   mPLUG-Owl2 (model_type mplug_owl2): LLaMA-2 with the modality-adaptive module, ViT-L/14 at
                   448 with a CLS token, abstractor with 2-D sin-cos positions; tensors under model.*
  variant "owl2_1" mPLUG-Owl2.1 (model_type mplug_owl2_1, docs/owl2.md PART B): Qwen-7B (v1) whose fused
                   QKV (with bias) has a text and an image weight, a ViT without CLS token whose 16x16 position
                   table is interpolated to the grid, abstractor without the CLS row; tensors under transformer.*
  variant "owl1"   mPLUG-Owl v1 (model_type mplug-owl): plain LLaMA, ViT-L/14 at 224, abstractor without
                   positions, top-level query_tokens; tensors under language_model.*, vision_model.*,
                   abstractor.*

Missing fields take the official code's defaults (configuration_mplug_owl2.py / configuration_mplug_owl.py),
as the published configs were written from those defaults. Sizes the tensors also carry are checked against
them at export (a config that disagrees with its weights is refused, not trusted).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import CheckpointError, TextConfig, UnsupportedModelError, load_config

MODEL_TYPES = {"mplug_owl2": "owl2", "mplug_owl2_1": "owl2_1", "mplug-owl": "owl1"}

# MplugOwlVisionConfig defaults (image_size: 448 in Owl2's code, 224 in v1's)
_VISION_DEFAULTS = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "num_channels": 3, "patch_size": 14, "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-6, "use_cls_token": True, "use_post_layernorm": True}
# MplugOwlVisualAbstractorConfig defaults (intermediate_size: 2816 in Owl2's code, 4096 in v1's)
_ABSTRACTOR_DEFAULTS = {"num_learnable_queries": 64, "hidden_size": 1024, "num_hidden_layers": 6,
                        "num_attention_heads": 16, "layer_norm_eps": 1e-6, "encoder_hidden_size": 1024}
_LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
                   "hidden_act": "silu", "tie_word_embeddings": False, "model_type": "llama"}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Owl2VisionConfig:
    """The ViT (docs/owl2.md A3): pre-LN blocks, per-head interleaved QKV, quick_gelu, CLS first."""
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    use_cls_token: bool = True            # Owl2.1: no CLS token, a 16x16 position table resized to the grid
    hidden_act: str = "quick_gelu"        # the MLP's activation ("quick_gelu" | "gelu")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:          # (CLS +) patches
        return int(self.use_cls_token) + self.grid ** 2


@dataclass(frozen=True)
class AbstractorConfig:
    """The visual abstractor (docs/owl2.md A4, PART C): learned queries cross-attending to [queries; image]."""
    num_queries: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float                 # ffn_ln only; norm1/normk/norm2 use LayerNorm's default 1e-5
    positions: bool                       # Owl2 / 2.1: sin-cos q/k position tables; v1: none
    cls_token: bool = True                # the image keys start with the ViT's CLS token (its position row is 0)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class Owl2Config:
    variant: str                          # "owl2" | "owl2_1" | "owl1"
    text: TextConfig                      # the LLaMA decoder
    vision: Owl2VisionConfig
    abstractor: AbstractorConfig
    bos_token_id: int
    eos_token_id: int

    # tensor-name prefixes of the published layouts (docs/owl2.md A6, PART C)
    @property
    def llm_prefix(self) -> str:          # Owl2 / v1: <prefix>layers.L..., embed_tokens, norm; 2.1: h.L, wte, ln_f
        return {"owl2": "model.", "owl2_1": "transformer.", "owl1": "language_model.model."}[self.variant]

    @property
    def lm_head(self) -> str:
        return "language_model.lm_head.weight" if self.variant == "owl1" else "lm_head.weight"

    @property
    def vision_prefix(self) -> str:
        return "vision_model." if self.variant == "owl1" else self.llm_prefix + "vision_model."

    @property
    def abstractor_prefix(self) -> str:
        return "abstractor." if self.variant == "owl1" else self.llm_prefix + "visual_abstractor."

    @property
    def query_tokens(self) -> str:        # the learned queries [1, Q, D]
        return "query_tokens" if self.variant == "owl1" else self.abstractor_prefix + "query_embeds"

    @property
    def multiway(self) -> bool:           # the modality-adaptive module (docs/owl2.md A5, PART B 1)
        return self.variant in ("owl2", "owl2_1")

    @property
    def image_tokens(self) -> int:        # what one image puts into the sequence: the queries and vit_eos
        return self.abstractor.num_queries + 1

    @staticmethod
    def from_checkpoint(hf_dir) -> "Owl2Config":
        return Owl2Config.from_dict(load_config(Path(hf_dir)))

    @staticmethod
    def from_dict(config: dict) -> "Owl2Config":
        variant = MODEL_TYPES.get(config.get("model_type"))
        if variant is None:
            raise UnsupportedModelError(f"config.json: model_type {config.get('model_type')!r} is not an "
                                        f"mPLUG-Owl2 / mPLUG-Owl checkpoint ({', '.join(MODEL_TYPES)})")
        if variant == "owl2_1":
            text_cfg = _qwen_text_config(config)
            visual = _section(config, "visual_config", {})
            vc = _section(visual, "visual_model", {}, "visual_config.")
            ac = _section(visual, "visual_abstractor", {}, "visual_config.")
            image_size, inter, n_queries = 448, 2816, ac.get("num_learnable_queries", 64)
            where_v, where_a = "visual_config.visual_model", "visual_config.visual_abstractor"
            text = config
        elif variant == "owl2":
            text = {**_LLAMA_DEFAULTS, **{k: v for k, v in config.items() if k != "visual_config"},
                    "model_type": "llama"}
            visual = _section(config, "visual_config", {})
            vc = _section(visual, "visual_model", {}, "visual_config.")
            ac = _section(visual, "visual_abstractor", {}, "visual_config.")
            image_size, inter, n_queries = 448, 2816, ac.get("num_learnable_queries", 64)
            where_v, where_a = "visual_config.visual_model", "visual_config.visual_abstractor"
        else:
            text = {**_LLAMA_DEFAULTS, **_section(config, "text_config", {}), "model_type": "llama"}
            vc = _section(config, "vision_config", {})
            ac = _section(config, "visual_abstractor_config", {})
            image_size, inter, n_queries = 224, 4096, config.get("num_query_tokens", 64)
            where_v, where_a = "vision_config", "visual_abstractor_config"
        v = {**_VISION_DEFAULTS, "image_size": image_size, **vc}
        a = {**_ABSTRACTOR_DEFAULTS, "intermediate_size": inter, **ac}
        if v["hidden_act"] not in ("quick_gelu", "gelu"):
            raise UnsupportedModelError(f"config.json: {where_v}.hidden_act {v['hidden_act']!r} is not supported "
                                        "(quick_gelu or gelu)")
        if not v["use_post_layernorm"]:
            raise UnsupportedModelError(f"config.json: {where_v}: a tower without post-layernorm is not a "
                                        "published layout")
        if not v["use_cls_token"] and variant != "owl2_1":
            raise UnsupportedModelError(f"config.json: {where_v}.use_cls_token false is only known from Owl2.1")
        if not v["use_cls_token"] and int(v["image_size"]) // int(v["patch_size"]) < 1:
            raise CheckpointError(f"config.json: {where_v}: image_size / patch_size leaves no patches")
        for where, d, h in ((where_v, v, "num_attention_heads"), (where_a, a, "num_attention_heads")):
            if int(d["hidden_size"]) % int(d[h]):
                raise CheckpointError(f"config.json: {where}.hidden_size must divide by {h}")
        if int(v["image_size"]) < int(v["patch_size"]):
            raise CheckpointError(f"config.json: {where_v}.image_size is smaller than patch_size")
        if "use_cls_token" in ac and bool(ac["use_cls_token"]) != bool(v["use_cls_token"]):
            raise CheckpointError(f"config.json: {where_a}.use_cls_token disagrees with {where_v}.use_cls_token")
        if int(a.get("encoder_hidden_size", v["hidden_size"])) != int(v["hidden_size"]):
            raise CheckpointError(f"config.json: {where_a}.encoder_hidden_size differs from the vision width")
        return Owl2Config(
            variant=variant,
            text=text_cfg if variant == "owl2_1" else TextConfig.from_dict(text),
            vision=Owl2VisionConfig(hidden_size=int(v["hidden_size"]), intermediate_size=int(v["intermediate_size"]),
                                    num_layers=int(v["num_hidden_layers"]), num_heads=int(v["num_attention_heads"]),
                                    image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
                                    layer_norm_eps=float(v["layer_norm_eps"]), use_cls_token=bool(v["use_cls_token"]),
                                    hidden_act=str(v["hidden_act"])),
            abstractor=AbstractorConfig(num_queries=int(n_queries), hidden_size=int(a["hidden_size"]),
                                        num_layers=int(a["num_hidden_layers"]), num_heads=int(a["num_attention_heads"]),
                                        intermediate_size=int(a["intermediate_size"]),
                                        layer_norm_eps=float(a["layer_norm_eps"]), positions=variant != "owl1",
                                        cls_token=bool(v["use_cls_token"])),
            bos_token_id=int(text.get("bos_token_id", 1)) if variant != "owl2_1" else -1,   # Qwen adds no BOS
            eos_token_id=int(text.get("eos_token_id", 2)) if variant != "owl2_1" else -1,   # 2.1: the tokenizer's <|endoftext|>
        )


def _qwen_text_config(config: dict) -> TextConfig:
    """Qwen-7B (v1) fields as the decoder sizes (docs/owl2.md PART B): the MLP's width is intermediate_size / 2;
    c_attn has a bias, c_proj and the MLP none. Dynamic NTK and logn scaling change nothing up to seq_length,
    which is therefore the context the runtime offers."""
    def need(key):
        if key not in config:
            raise CheckpointError(f"config.json: missing required field {key!r} for mplug_owl2_1")
        return config[key]

    if float(config.get("rotary_pct", 1.0)) != 1.0:
        raise UnsupportedModelError(f"config.json: rotary_pct {config['rotary_pct']} is not supported (1.0)")
    if not config.get("no_bias", True):
        raise UnsupportedModelError("config.json: no_bias false (biases on c_proj and the MLP) is not supported")
    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    return TextConfig(arch="qwen", vocab_size=int(need("vocab_size")), hidden_size=hidden,
                      intermediate_size=int(need("intermediate_size")) // 2, num_layers=int(need("num_hidden_layers")),
                      num_heads=heads, num_kv_heads=heads, head_dim=int(config.get("kv_channels") or hidden // heads),
                      rms_norm_eps=float(config.get("layer_norm_epsilon", 1e-6)),
                      rope_theta=float(config.get("rotary_emb_base", 10000.0)),
                      max_position_embeddings=int(config.get("seq_length", 2048)),
                      tie_word_embeddings=False, qkv_bias=True, o_bias=False)


def _section(config: dict, key: str, default: dict, where: str = "") -> dict:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, dict):
        raise CheckpointError(f"config.json: {where}{key} must be an object, got {type(value).__name__}")
    return value
