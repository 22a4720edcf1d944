"""PyTorch reference of the mPLUG-Owl2 / mPLUG-Owl2.1 / mPLUG-Owl (v1) vision path: ViT, visual abstractor,
visual_fc and vit_eos; what the language model receives for one image.

docs/owl2.md A3 (the ViT), read against `mPLUG-Owl2/mplug_owl2/model/visual_encoder.py`:
  x = [cls ; conv_14x14_stride_14_no_bias(pixels) row-major] + position_embedding     (no interpolation)
  x = pre_layernorm(x)
  per layer: x = x + dense(mha(LN_in(x)));  x = x + fc2(quick_gelu(fc1(LN_post(x))))
  the fused query_key_value output is laid out per head: feature = head*3*hd + {q,k,v}*hd + d
  V = post_layernorm(x) over every token, CLS included: [N, 1+G*G, D]
All ViT LayerNorms use the config's layer_norm_eps (1e-6 in the releases); the scores are (q k^T) * hd^-0.5.

docs/owl2.md A4 (the abstractor), per layer, h starting as the learned queries:
  qn = norm1(h); kv = [qn ; normk(V)]                           (norm1/normk/norm2: LayerNorm's default 1e-5)
  A  = mha(query(qn + q_pos), key(kv + [q_pos ; k_pos]), value(kv))   scores / sqrt(hd), no mask
  h  = qn + out_proj(A)                                          the residual is the NORMED query
  h  = h + w2(ffn_ln(silu(w1(norm2(h))) * w3(norm2(h))))        ffn_ln: the config's layer_norm_eps
then visual_fc(h) and vit_eos appended: [N, Q+1, n_embd].

docs/owl2.md PART B 5 (Owl2.1, `MplugOwlVisionEmbeddings` with use_cls_token false): no CLS token; the learned
`position_embedding` is [256, D] (a 16x16 grid, no batch axis) and `get_abs_pos` resizes it to the actual grid
(32x32 at 448/14) with F.interpolate(bicubic, align_corners=False) in fp32 at every forward. The result depends
on the weights only, so it is computed once here (resized_position_table) and kept as a buffer: the traced graph
adds a constant, with no Resize op. The MLP's activation is ACT2FN[hidden_act]: "gelu" is the exact (erf) GELU,
"quick_gelu" z * sigmoid(1.702 z). The abstractor's k table has no zero CLS row (grid*grid rows).
q_pos / k_pos are fixed sin-cos tables that are not in the checkpoint (docs/owl2.md A4, A6); see
sincos_position_tables.

docs/owl2.md PART C (Owl v1, `mPLUG-Owl/mplug_owl/modeling_mplug_owl.py`): the same arithmetic at 224 px
(a 16x16 grid, 257 tokens), no position tables in the abstractor, the learned queries in the top-level
`query_tokens`. Its LayerNormFp32 computes in fp32 and casts back, which is what this fp32 reference does.
The abstractor's intermediate size is taken from the shape of w1 for v1 (PART C: the code default, 4096,
is not trustworthy); for Owl2 it must match the config.

The reference is an nn.Module whose weights are buffers (persistent: the exporter collects module state
through state_dict), so torch.onnx traces them as initializers (owl2/onnx_export.py). `dtype=torch.float16`
builds the fp16 graph: weights and arithmetic in fp16, the softmax in fp32, pixels cast in and embeddings
cast back to float32 at the ends.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, open_weights, tensor_shape
from .config import Owl2Config

ABSTRACTOR_NORM_EPS = 1e-5          # norm1 / normk / norm2 are built without an eps: nn.LayerNorm's default


# ------------------------------------------------------------------------------------------- positions

def sincos_1d(dim: int, positions) -> np.ndarray:
    """[len(positions), dim] float32: all sines of p*w_k first, then all cosines, w_k = 10000^(-k/(dim/2)).

    Computed in float32 in the order the official code uses (omega, the product, sin and cos), so the
    tables agree with the ones it builds at init to the last bit or close to it."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    k = np.arange(dim // 2, dtype=np.float32)
    k /= np.float32(dim / 2.0)
    omega = np.float32(1.0) / np.float32(10000.0) ** k
    p = np.asarray(positions, dtype=np.float32).reshape(-1)
    angles = np.einsum("m,d->md", p, omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sincos_position_tables(dim: int, num_queries: int, grid: int, cls_token: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The abstractor's fixed position tables (docs/owl2.md A4), float32:

      q_pos [num_queries, dim]         row j = sincos_1d(dim, j)
      k_pos [cls + grid*grid, dim]     row 0 = zeros when cls_token; the patch in grid row i, column j
                                       (token 1 + i*grid + j) = [sincos_1d(dim/2, j) , sincos_1d(dim/2, i)]:
                                       the COLUMN fills the first half, the row the second.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    q_pos = sincos_1d(dim, np.arange(num_queries))
    rows, cols = np.divmod(np.arange(grid * grid), grid)          # token t = row*grid + col
    k_pos = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    if cls_token:
        k_pos = np.concatenate([np.zeros((1, dim), np.float32), k_pos], axis=0)
    return torch.from_numpy(q_pos), torch.from_numpy(k_pos)


def resized_position_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Owl2.1's get_abs_pos (docs/owl2.md PART B 5): the learned [L, D] table, L = s*s, as an s x s image with D
    channels, resized to grid x grid by PyTorch's bicubic (A = -0.75, align_corners=False, borders clamped) in
    float32; rows come back row-major (token = row*grid + col). An s equal to grid returns the table as is,
    as the official code does. Returns float32 [grid*grid, D]."""
    if table.ndim != 2:
        raise ValueError(f"position table must be [L, D], got shape {tuple(table.shape)}")
    L, D = table.shape
    src = math.isqrt(L)
    if src * src != L:
        raise ValueError(f"position table has {L} rows, not a square number: it cannot be a square grid")
    t = table.detach().float()
    if src == grid:
        return t.clone()
    img = t.reshape(1, src, src, D).permute(0, 3, 1, 2)
    out = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(grid * grid, D).contiguous()


# ------------------------------------------------------------------------------------------- layout

OWL21_POSITION_ROWS = 256          # MplugOwlVisionEmbeddings without CLS: nn.Parameter(torch.randn(256, D))
VARIANT_NAMES = {"owl2": "mPLUG-Owl2", "owl2_1": "mPLUG-Owl2.1", "owl1": "mPLUG-Owl (v1)"}


def expected_shapes(cfg: Owl2Config, weights: Mapping) -> dict[str, tuple[str, tuple[int, ...]]]:
    """short name -> (checkpoint tensor name, shape) of every tensor the vision path reads.

    Short names are "v.<name under the vision prefix>" and "a.<name under the abstractor prefix>", plus
    "a.query_tokens" for the learned queries (model.visual_abstractor.query_embeds in Owl2, top-level
    query_tokens in v1)."""
    v, a = cfg.vision, cfg.abstractor
    D, I, p, T = v.hidden_size, v.intermediate_size, v.patch_size, v.num_tokens
    A, Q, H = a.hidden_size, a.num_queries, cfg.text.hidden_size
    if A != D:
        raise CheckpointError(f"config.json: the abstractor's hidden_size {A} differs from the vision width {D}")
    Ia = a.intermediate_size
    vp, ap = cfg.vision_prefix, cfg.abstractor_prefix
    w1 = ap + "encoder.layers.0.crossattention.output.mlp.w1.weight"
    if cfg.variant == "owl1" and a.num_layers and w1 in weights:
        Ia = tensor_shape(weights, w1)[0]      # docs/owl2.md PART C: take it from w1, not the code default

    out: dict[str, tuple[str, tuple[int, ...]]] = {}

    def vis(name, *shape):
        out["v." + name] = (vp + name, shape)

    def abst(name, *shape):
        out["a." + name] = (ap + name, shape)

    vis("embeddings.patch_embed.weight", D, 3, p, p)
    if v.use_cls_token:
        vis("embeddings.cls_token", 1, 1, D)
        vis("embeddings.position_embedding", 1, T, D)
    else:                       # Owl2.1 (PART B 5): 2-D, 16x16 whatever the grid, resized at run time
        vis("embeddings.position_embedding", OWL21_POSITION_ROWS, D)
    for n in ("embeddings.pre_layernorm", "post_layernorm"):
        vis(n + ".weight", D)
        vis(n + ".bias", D)
    for e in range(v.num_layers):
        pre = f"encoder.layers.{e}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            vis(pre + n + ".weight", D)
            vis(pre + n + ".bias", D)
        vis(pre + "self_attn.query_key_value.weight", 3 * D, D)
        vis(pre + "self_attn.query_key_value.bias", 3 * D)
        vis(pre + "self_attn.dense.weight", D, D)
        vis(pre + "self_attn.dense.bias", D)
        vis(pre + "mlp.fc1.weight", I, D)
        vis(pre + "mlp.fc1.bias", I)
        vis(pre + "mlp.fc2.weight", D, I)
        vis(pre + "mlp.fc2.bias", D)

    out["a.query_tokens"] = (cfg.query_tokens, (1, Q, A))
    abst("visual_fc.weight", H, A)
    abst("visual_fc.bias", H)
    abst("vit_eos", 1, 1, H)
    for layer in range(a.num_layers):
        pre = f"encoder.layers.{layer}.crossattention."
        for n in ("norm1", "normk", "output.norm2"):
            abst(pre + n + ".weight", A)
            abst(pre + n + ".bias", A)
        for n in ("attention.query", "attention.key", "attention.value", "output.out_proj"):
            abst(pre + n + ".weight", A, A)
            abst(pre + n + ".bias", A)
        for n in ("w1", "w3"):
            abst(pre + f"output.mlp.{n}.weight", Ia, A)
            abst(pre + f"output.mlp.{n}.bias", Ia)
        abst(pre + "output.mlp.w2.weight", A, Ia)
        abst(pre + "output.mlp.w2.bias", A)
        abst(pre + "output.mlp.ffn_ln.weight", Ia)
        abst(pre + "output.mlp.ffn_ln.bias", Ia)
    return out


def _buffer_name(short: str) -> str:
    return short.replace(".", "__")                     # buffer names cannot contain "."


# ------------------------------------------------------------------------------------------- reference

class Owl2VisionReference(torch.nn.Module):
    """pixels [N,3,S,S] -> the [N, Q+1, n_embd] image embeddings the LLM receives (Owl2, Owl2.1 or Owl v1).

      vit(pixels)            [N, 1+G*G, D]   post_layernorm applied (docs/owl2.md A3); Owl2.1: [N, G*G, D]
      abstractor(vision)     [N, Q, D]       the queries after the last layer (docs/owl2.md A4)
      forward(pixels)        [N, Q+1, H]     visual_fc on the queries, then vit_eos
    """

    def __init__(self, weights: Mapping, cfg: Owl2Config, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg, self.dtype = cfg, dtype
        self._widths: dict[str, int] = {}
        what = VARIANT_NAMES[cfg.variant]
        resize = not cfg.vision.use_cls_token
        for short, (name, shape) in expected_shapes(cfg, weights).items():
            if name not in weights:
                raise CheckpointError(f"checkpoint is missing tensor {name!r} ({what} vision tower / abstractor)")
            got = tensor_shape(weights, name)
            if got != shape:
                raise CheckpointError(f"{name}: shape {got} does not match the config's {shape} "
                                      f"({what} vision tower / abstractor, config.json)")
            t = weights[name]
            if not t.is_floating_point():
                raise CheckpointError(f"{name}: dtype {t.dtype} is not a floating-point type")
            if resize and short == "v.embeddings.position_embedding":
                # get_abs_pos: fp32 from the checkpoint's values, then the graph's dtype; the [256, D] table
                # itself is not kept, so only the resized one becomes an initializer
                try:
                    table = resized_position_table(t, cfg.vision.grid)
                except ValueError as e:
                    raise CheckpointError(f"{name}: {e}") from None
                self.register_buffer("v_pos_grid", table.to(dtype).contiguous())
                continue
            self.register_buffer(_buffer_name(short), t.detach().to(dtype).contiguous())
            if short.endswith(".weight"):
                self._widths[short[:-len(".weight")]] = shape[0]      # a LayerNorm's width (Linear: rows)
        self.positions = cfg.abstractor.positions
        if self.positions:
            q_pos, k_pos = sincos_position_tables(cfg.abstractor.hidden_size, cfg.abstractor.num_queries,
                                                  cfg.vision.grid, cls_token=cfg.abstractor.cls_token)
            self.register_buffer("q_pos", q_pos.to(dtype))
            # the keys are [queries ; image]: their table is [q_pos ; k_pos]
            self.register_buffer("qk_pos", torch.cat([q_pos, k_pos]).to(dtype))

    @classmethod
    def from_pretrained(cls, hf_dir: str | Path, dtype: torch.dtype = torch.float32) -> "Owl2VisionReference":
        return cls(open_weights(hf_dir), Owl2Config.from_checkpoint(hf_dir), dtype)

    def w(self, short: str) -> torch.Tensor:
        return self._buffers[_buffer_name(short)]

    # ---------------------------------------------------------------------------------------- pieces

    def _ln(self, x: torch.Tensor, short: str, eps: float) -> torch.Tensor:
        weight = self.w(short + ".weight")
        # the width as a Python int: the ONNX exporter needs normalized_shape constant
        return F.layer_norm(x, (self._widths[short],), weight, self.w(short + ".bias"), eps)

    def _linear(self, x: torch.Tensor, short: str) -> torch.Tensor:
        return F.linear(x, self.w(short + ".weight"), self.w(short + ".bias"))

    def _softmax(self, scores: torch.Tensor) -> torch.Tensor:
        compute = torch.float64 if scores.dtype == torch.float64 else torch.float32
        return F.softmax(scores, dim=-1, dtype=compute).to(scores.dtype)

    def _vit_layer(self, e: int, x: torch.Tensor) -> torch.Tensor:
        c, pre = self.cfg.vision, f"v.encoder.layers.{e}."
        N, T, D = x.shape
        nh, hd = c.num_heads, c.head_dim
        h = self._ln(x, pre + "input_layernorm", c.layer_norm_eps)
        qkv = self._linear(h, pre + "self_attn.query_key_value")
        qkv = qkv.reshape(N, T, nh, 3, hd).permute(3, 0, 2, 1, 4)      # [3, N, nh, T, hd]: per-head q|k|v
        q, k, v = qkv[0], qkv[1], qkv[2]
        probs = self._softmax((q @ k.transpose(-1, -2)) * hd ** -0.5)
        att = (probs @ v).transpose(1, 2).reshape(N, T, D)               # heads merged head-major
        x = x + self._linear(att, pre + "self_attn.dense")
        h = self._linear(self._ln(x, pre + "post_attention_layernorm", c.layer_norm_eps), pre + "mlp.fc1")
        if c.hidden_act == "gelu":
            h = F.gelu(h)                                                # ACT2FN["gelu"]: exact, erf
        else:
            h = h * torch.sigmoid(1.702 * h)                             # quick_gelu
        return x + self._linear(h, pre + "mlp.fc2")

    def vit(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N,3,S,S] -> last_hidden_state [N, (1+)G*G, D], CLS first when the tower has one, post_layernorm
        applied."""
        c = self.cfg.vision
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, c.image_size, c.image_size):
            # the learned position table is not interpolated (docs/owl2.md A3.2), and Owl2.1's is resized once,
            # for the configured grid (PART B 5): the size must be exact
            raise ValueError(f"pixels must be [N, 3, {c.image_size}, {c.image_size}], got {tuple(pixels.shape)}")
        x = F.conv2d(pixels.to(self.dtype), self.w("v.embeddings.patch_embed.weight"), stride=c.patch_size)
        x = x.flatten(2).transpose(1, 2)                                 # [N, G*G, D], row-major patches
        if c.use_cls_token:
            cls = self.w("v.embeddings.cls_token").expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + self.w("v.embeddings.position_embedding")
        else:                                                            # Owl2.1: the resized 16x16 table
            x = x + self.v_pos_grid
        x = self._ln(x, "v.embeddings.pre_layernorm", c.layer_norm_eps)
        for e in range(c.num_layers):
            x = self._vit_layer(e, x)
        return self._ln(x, "v.post_layernorm", c.layer_norm_eps)

    def _abstractor_layer(self, layer: int, h: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        c, pre = self.cfg.abstractor, f"a.encoder.layers.{layer}.crossattention."
        N, Q, D = h.shape
        nh, hd = c.num_heads, c.head_dim
        qn = self._ln(h, pre + "norm1", ABSTRACTOR_NORM_EPS)
        kv = torch.cat([qn, self._ln(image, pre + "normk", ABSTRACTOR_NORM_EPS)], dim=1)
        q_in, k_in = (qn + self.q_pos, kv + self.qk_pos) if self.positions else (qn, kv)

        def heads(t):                                                    # [N, L, D] -> [N, nh, L, hd]
            return t.reshape(N, t.shape[1], nh, hd).transpose(1, 2)

        q = heads(self._linear(q_in, pre + "attention.query"))
        k = heads(self._linear(k_in, pre + "attention.key"))             # positions go in BEFORE the key
        v = heads(self._linear(kv, pre + "attention.value"))             # values get none
        probs = self._softmax((q @ k.transpose(-1, -2)) / math.sqrt(hd))
        att = (probs @ v).transpose(1, 2).reshape(N, Q, D)
        h = qn + self._linear(att, pre + "output.out_proj")              # residual = the normed queries
        m = self._ln(h, pre + "output.norm2", ABSTRACTOR_NORM_EPS)
        g = F.silu(self._linear(m, pre + "output.mlp.w1")) * self._linear(m, pre + "output.mlp.w3")
        g = self._ln(g, pre + "output.mlp.ffn_ln", c.layer_norm_eps)
        return h + self._linear(g, pre + "output.mlp.w2")

    def abstractor(self, vision_out: torch.Tensor) -> torch.Tensor:
        """vision last_hidden_state [N, (1+)G*G, D] -> the queries after the last layer [N, Q, D]."""
        image = vision_out.to(self.dtype)
        h = self.w("a.query_tokens").expand(image.shape[0], -1, -1)
        for layer in range(self.cfg.abstractor.num_layers):
            h = self._abstractor_layer(layer, h, image)
        return h

    def project(self, queries: torch.Tensor) -> torch.Tensor:
        """[N, Q, D] -> [N, Q+1, H]: visual_fc, then the learned vit_eos as the last token."""
        out = self._linear(queries, "a.visual_fc")
        eos = self.w("a.vit_eos").expand(out.shape[0], -1, -1)
        return torch.cat([out, eos], dim=1)

    # ---------------------------------------------------------------------------------------- API

    def forward(self, pixels) -> torch.Tensor:
        """pixels [N,3,S,S] (torch or numpy, CLIP-normalised) -> float32 image embeddings [N, Q+1, H]."""
        if not isinstance(pixels, torch.Tensor):
            pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        with torch.no_grad():
            return self.project(self.abstractor(self.vit(pixels))).float()
