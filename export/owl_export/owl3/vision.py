"""PyTorch reference of the mPLUG-Owl3 vision path: SigLIP-so400m up to hidden_states[-2], then vision2text.

docs/owl3.md §1.2: the feature is `vision_model(pixels, output_hidden_states=True).hidden_states[-2]`, i.e. the
output of encoder layer L-2 (0-based) of L: the last encoder layer, post_layernorm and the MAP head are
never used. docs/owl3.md §1.3: vision2text is Linear(Hv, H) (240728, 241014) or Linear-GELU(erf)-Linear (241101).

SigLIP as in transformers 4.41 (SiglipVisionTransformer):
  x = conv_pxp_stride_p(pixels).flatten(2).T + position_embedding[0..P-1]
  per layer: x = x + out_proj(mha(LN1(x)));  x = x + fc2(gelu_tanh(fc1(LN2(x))))
LayerNorm eps 1e-6; attention scale head_dim^-0.5, softmax in float32.
Pixels [N,3,S,S] -> embeddings [N, P, H] with P = (S // patch)^2 (729 for the real models).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, load_checkpoint
from .variant import VisionConfig, detect_variant


class Owl3VisionReference:
    """SigLIP tower + vision2text over checkpoint tensors named `vision_model.*`, `vision2text_model.*`."""

    def __init__(self, config: VisionConfig, tensors: Mapping[str, torch.Tensor], vision2text: str,
                 text_hidden: int, dtype=torch.float32):
        if vision2text not in ("linear", "mlp"):
            raise ValueError(f"vision2text must be 'linear' or 'mlp', got {vision2text!r}")
        self.config, self.vision2text, self.dtype = config, vision2text, dtype
        self.text_hidden = text_hidden
        c, Hv = config, config.hidden_size
        shapes: dict[str, tuple] = {
            "vision_model.embeddings.patch_embedding.weight": (Hv, c.num_channels, c.patch_size, c.patch_size),
            "vision_model.embeddings.patch_embedding.bias": (Hv,),
            "vision_model.embeddings.position_embedding.weight": (c.num_patches, Hv),
        }
        # Only the layers hidden_states[-2] needs: the last one is loaded by no-one (docs/owl3.md §1.2).
        for i in range(c.num_layers - 1):
            p = f"vision_model.encoder.layers.{i}."
            for n in ("layer_norm1", "layer_norm2"):
                shapes[p + n + ".weight"] = shapes[p + n + ".bias"] = (Hv,)
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes[p + f"self_attn.{n}.weight"] = (Hv, Hv)
                shapes[p + f"self_attn.{n}.bias"] = (Hv,)
            shapes[p + "mlp.fc1.weight"] = (c.intermediate_size, Hv)
            shapes[p + "mlp.fc1.bias"] = (c.intermediate_size,)
            shapes[p + "mlp.fc2.weight"] = (Hv, c.intermediate_size)
            shapes[p + "mlp.fc2.bias"] = (Hv,)
        H = text_hidden
        if vision2text == "linear":
            shapes.update({"vision2text_model.weight": (H, Hv), "vision2text_model.bias": (H,)})
        else:
            shapes.update({"vision2text_model.0.weight": (H, Hv), "vision2text_model.0.bias": (H,),
                           "vision2text_model.2.weight": (H, H), "vision2text_model.2.bias": (H,)})
        self.w: dict[str, torch.Tensor] = {}
        for name, shape in shapes.items():
            if name not in tensors:
                raise CheckpointError(f"checkpoint is missing tensor {name!r} (mPLUG-Owl3 vision path)")
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise CheckpointError(f"{name}: shape {tuple(t.shape)} does not match config {shape}")
            self.w[name] = t.to(dtype)

    @classmethod
    def from_pretrained(cls, hf_dir: str | Path, dtype=torch.float32) -> "Owl3VisionReference":
        config, tensors, _ = load_checkpoint(hf_dir)
        variant = detect_variant(config, tensors.keys())
        return cls(VisionConfig.from_dict(config), tensors, variant.vision2text, int(config["hidden_size"]),
                   dtype)

    # ---------------------------------------------------------------------------------------- pieces

    def embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N,3,S,S] -> [N, P, Hv]: patch conv + learned position embeddings."""
        c, w = self.config, self.w
        if pixels.ndim != 4 or pixels.shape[1] != c.num_channels:
            raise ValueError(f"pixels must be [N,{c.num_channels},S,S], got {tuple(pixels.shape)}")
        side_h, side_w = pixels.shape[2] // c.patch_size, pixels.shape[3] // c.patch_size
        if side_h * side_w != c.num_patches:
            # transformers 4.41 SigLIP does not interpolate position embeddings: the size must match
            raise ValueError(f"pixels {tuple(pixels.shape[2:])} give {side_h}x{side_w} patches; the position "
                             f"table has {c.num_patches} (image_size {c.image_size}, patch {c.patch_size})")
        x = F.conv2d(pixels.to(self.dtype), w["vision_model.embeddings.patch_embedding.weight"],
                     w["vision_model.embeddings.patch_embedding.bias"], stride=c.patch_size)
        x = x.flatten(2).transpose(1, 2)                                    # [N, P, Hv], patches row-major
        return x + w["vision_model.embeddings.position_embedding.weight"]

    def _attention(self, i: int, x: torch.Tensor) -> torch.Tensor:
        c, w, p = self.config, self.w, f"vision_model.encoder.layers.{i}.self_attn."
        N, P, Hv = x.shape

        def heads(name):
            return F.linear(x, w[p + name + ".weight"], w[p + name + ".bias"]).view(
                N, P, c.num_heads, c.head_dim).transpose(1, 2)               # [N, nh, P, hd]

        q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
        scores = (q @ k.transpose(-1, -2)) * c.head_dim ** -0.5
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        probs = F.softmax(scores, dim=-1, dtype=compute).to(x.dtype)
        o = (probs @ v).transpose(1, 2).reshape(N, P, Hv)
        return F.linear(o, w[p + "out_proj.weight"], w[p + "out_proj.bias"])

    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Encoder layer i (pre-LN): [N, P, Hv] -> [N, P, Hv]."""
        c, w, p = self.config, self.w, f"vision_model.encoder.layers.{i}."
        if not 0 <= i < c.num_layers - 1:
            raise IndexError(f"vision layer {i}: only layers 0..{c.num_layers - 2} are used (docs/owl3.md §1.2)")

        def ln(t, n):
            return F.layer_norm(t, (c.hidden_size,), w[p + n + ".weight"], w[p + n + ".bias"], c.layer_norm_eps)

        x = x + self._attention(i, ln(x, "layer_norm1"))
        h = F.gelu(F.linear(ln(x, "layer_norm2"), w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]),
                   approximate="tanh")                                       # gelu_pytorch_tanh
        return x + F.linear(h, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """hidden_states[-2]: embeddings then layers 0..L-2, no post_layernorm. [N, P, Hv]."""
        x = self.embeddings(pixels)
        for i in range(self.config.num_layers - 1):
            x = self.layer(i, x)
        return x

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """vision2text: [N, P, Hv] -> [N, P, H] (docs/owl3.md §1.3)."""
        w = self.w
        if self.vision2text == "linear":
            return F.linear(feats, w["vision2text_model.weight"], w["vision2text_model.bias"])
        h = F.gelu(F.linear(feats, w["vision2text_model.0.weight"], w["vision2text_model.0.bias"]))  # erf GELU
        return F.linear(h, w["vision2text_model.2.weight"], w["vision2text_model.2.bias"])

    # ---------------------------------------------------------------------------------------- API

    @torch.no_grad()
    def forward(self, pixels) -> torch.Tensor:
        """pixels [N,3,S,S] (torch or numpy, preprocessed to [-1,1]) -> image embeddings [N, P, H]."""
        return self.project(self.features(torch.as_tensor(pixels)))

    __call__ = forward
