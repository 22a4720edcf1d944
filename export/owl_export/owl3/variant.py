"""Which mPLUG-Owl3 checkpoint this is, from config.json and the tensor names (docs/owl3.md §1, §2).

Three LM-side architectures share one config schema (`model_type: "mplugowl3"`), so the config alone does not
say which hyper-attention to run; the tensors of the hyper layers do (docs/owl3.md §2.2):

  generation  gate tensor (hyper layers)            vision2text                  cut template
  240728      self_attn.gate_proj.0.{weight,bias}   Linear   (`vision2text_model.weight`)    v2_global
  241014      self_attn.gate  [H]                   Linear                                   v3_global
  241101      none (fused one-softmax attention)    MLP      (`vision2text_model.{0,2}.*`)   v3_global

Any other combination is refused with an error that names what was found and what is missing.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..checkpoint import CheckpointError, TextConfig, UnsupportedModelError

LM_PREFIX = "language_model."
_LAYER = LM_PREFIX + "model.layers.{}.self_attn."

# HyperQwen2Config's default when config.json has no hyper_layers (docs/owl3.md §1.1); 1-based.
DEFAULT_HYPER_LAYERS = (1, 9, 17, 25)
# mPLUGOwl3Config.default_vision_config: used when config.json has no vision_config (docs/owl3.md §1.2).
DEFAULT_VISION_CONFIG = {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
                         "model_type": "siglip_vision_model", "num_attention_heads": 16,
                         "num_hidden_layers": 27, "patch_size": 14}
# SiglipVisionConfig's own defaults, for fields a present vision_config leaves out.
_SIGLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
                    "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}

# (gate kind, vision2text kind) -> generation
_KNOWN = {("proj", "linear"): "240728", ("vector", "linear"): "241014", ("none", "mlp"): "241101"}


class Owl3LayoutError(UnsupportedModelError):
    """The checkpoint says mplugowl3 but its tensors match none of the published layouts."""


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower hyper-parameters (docs/owl3.md §1.2), SiglipVisionConfig defaults applied."""
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    layer_norm_eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patches_per_side(self) -> int:
        # a stride-p conv over S px: floor(S/p) patches; 384/14 -> 27, the last 6 px unused (docs/owl3.md §1.2)
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.patches_per_side ** 2

    @staticmethod
    def from_dict(config: dict) -> "VisionConfig":
        vc = config.get("vision_config")
        if vc is None:
            vc = DEFAULT_VISION_CONFIG
        if not isinstance(vc, dict):
            raise CheckpointError(f"config.json: vision_config must be an object, got {type(vc).__name__}")
        v = {**_SIGLIP_DEFAULTS, **vc}
        if v["hidden_act"] != "gelu_pytorch_tanh":
            raise UnsupportedModelError(f"config.json: vision_config.hidden_act {v['hidden_act']!r} is not "
                                        "supported (SigLIP uses gelu_pytorch_tanh)")
        if v["hidden_size"] % v["num_attention_heads"]:
            raise CheckpointError("config.json: vision_config.hidden_size must divide by num_attention_heads")
        if v["image_size"] < v["patch_size"]:
            raise CheckpointError("config.json: vision_config.image_size is smaller than patch_size")
        return VisionConfig(hidden_size=int(v["hidden_size"]), intermediate_size=int(v["intermediate_size"]),
                            num_layers=int(v["num_hidden_layers"]), num_heads=int(v["num_attention_heads"]),
                            num_channels=int(v["num_channels"]), image_size=int(v["image_size"]),
                            patch_size=int(v["patch_size"]), layer_norm_eps=float(v["layer_norm_eps"]))


@dataclass(frozen=True)
class Owl3Variant:
    """The facts a runtime needs to pick the right code paths (docs/owl3.md headline table)."""
    name: str                        # "240728" | "241014" | "241101"
    hyper_layers: tuple[int, ...]    # 0-based decoder indices (config's hyper_layers are 1-based)
    image_size: int                  # S: pixels per side fed to the vision tower
    patch_size: int
    num_patches: int                 # visual tokens per image/crop: (S // patch)^2
    gate: str                        # "proj": per-head Linear(d,d)+sigmoid; "vector": static [H]; "none"
    fused: bool                      # 241101: visual K/V join the text K/V inside one softmax (§4.2)
    vision2text: str                 # "linear" | "mlp" (Linear-GELU(erf)-Linear)
    cut_template: str                # "v2_global" | "v3_global" (§6.4)
    tie_word_embeddings: bool

    @property
    def mi_rope_offset(self) -> int:
        """MI-Rope position of image j is s_j + offset: s_j+1 for 240728/241014, s_j for 241101 (§4.1, §4.2)."""
        return 0 if self.fused else 1

    def is_hyper(self, layer: int) -> bool:
        return layer in self.hyper_layers


def text_config(config: dict) -> TextConfig:
    """The Qwen2 backbone's hyper-parameters; mplugowl3 configs carry them at top level (docs/owl3.md §1.1)."""
    return TextConfig.from_dict({**config, "model_type": "qwen2"})


def _hyper_layers(config: dict, num_layers: int) -> tuple[int, ...]:
    raw = config.get("hyper_layers", list(DEFAULT_HYPER_LAYERS))
    if not isinstance(raw, list) or not raw or not all(isinstance(x, int) and not isinstance(x, bool)
                                                       for x in raw):
        raise CheckpointError(f"config.json: hyper_layers must be a non-empty list of integers, got {raw!r}")
    bad = [x for x in raw if not 1 <= x <= num_layers]
    if bad:
        raise CheckpointError(f"config.json: hyper_layers {raw} are 1-based and must lie in 1..{num_layers} "
                              f"(num_hidden_layers); out of range: {bad}")
    if len(set(raw)) != len(raw):
        raise CheckpointError(f"config.json: hyper_layers {raw} has duplicates")
    return tuple(sorted(x - 1 for x in raw))


def _gate_kind(names: set[str], hyper: tuple[int, ...]) -> str:
    kinds = {}
    for i in hyper:
        p = _LAYER.format(i)
        missing = [p + n for n in ("v_kv_proj.weight", "v_kv_proj.bias") if p + n not in names]
        if missing:
            raise Owl3LayoutError(f"hyper layer {i} (0-based; config hyper_layers has {i + 1}) lacks "
                                  f"{', '.join(missing)}")
        has_proj = p + "gate_proj.0.weight" in names
        has_vec = p + "gate" in names
        if has_proj and has_vec:
            raise Owl3LayoutError(f"hyper layer {i} has both {p}gate_proj.0.weight and {p}gate; "
                                  "no published layout has both")
        if has_proj and p + "gate_proj.0.bias" not in names:
            raise Owl3LayoutError(f"hyper layer {i} has {p}gate_proj.0.weight but lacks {p}gate_proj.0.bias")
        kinds[i] = "proj" if has_proj else "vector" if has_vec else "none"
    if len(set(kinds.values())) != 1:
        raise Owl3LayoutError(f"hyper layers disagree on the gate tensor: {kinds} (0-based layer -> kind)")
    return next(iter(kinds.values()))


def _vision2text_kind(names: set[str]) -> str:
    linear = ["vision2text_model.weight", "vision2text_model.bias"]
    mlp = [f"vision2text_model.{k}.{t}" for k in (0, 2) for t in ("weight", "bias")]
    if all(n in names for n in linear):
        return "linear"
    if all(n in names for n in mlp):
        return "mlp"
    have = sorted(n for n in names if n.startswith("vision2text_model."))
    raise Owl3LayoutError("no vision->text projection found: expected either "
                          f"{linear} (Linear) or {mlp} (MLP); the checkpoint has {have or 'none'}")


def detect_variant(config: dict, tensor_names: Iterable[str]) -> Owl3Variant:
    """Owl3Variant from config.json and the checkpoint's tensor names; raises Owl3LayoutError if unknown."""
    names = set(tensor_names)
    archs = config.get("architectures") or []
    if config.get("model_type") != "mplugowl3" and "mPLUGOwl3Model" not in archs:
        raise UnsupportedModelError(f"not an mPLUG-Owl3 checkpoint: model_type {config.get('model_type')!r}, "
                                    f"architectures {archs} (expected model_type 'mplugowl3')")
    text = text_config(config)
    vision = VisionConfig.from_dict(config)
    hyper = _hyper_layers(config, text.num_layers)

    stray = [i for i in range(text.num_layers)
             if i not in hyper and _LAYER.format(i) + "v_kv_proj.weight" in names]
    if stray:
        raise Owl3LayoutError(f"layers {stray} (0-based) carry v_kv_proj but are not in config hyper_layers "
                              f"{[i + 1 for i in hyper]} (1-based)")
    if "vision_model.embeddings.patch_embedding.weight" not in names:
        raise Owl3LayoutError("vision tower missing: no vision_model.embeddings.patch_embedding.weight")

    gate, v2t = _gate_kind(names, hyper), _vision2text_kind(names)
    name = _KNOWN.get((gate, v2t))
    if name is None:
        raise Owl3LayoutError(
            f"unknown mPLUG-Owl3 layout: hyper-layer gate {gate!r} with a {v2t} vision2text projection; "
            "known: gate_proj.0 + Linear (240728), gate vector + Linear (241014), no gate + MLP (241101)")
    return Owl3Variant(
        name=name, hyper_layers=hyper, image_size=vision.image_size, patch_size=vision.patch_size,
        num_patches=vision.num_patches, gate=gate, fused=(name == "241101"), vision2text=v2t,
        cut_template="v2_global" if name == "240728" else "v3_global",
        tie_word_embeddings=text.tie_word_embeddings)
