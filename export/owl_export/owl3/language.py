"""PyTorch reference of the mPLUG-Owl3 language model: Qwen2 with hyper-attention in the hyper layers.

Written from docs/owl3.md §3-4; plain code, full recompute, no cache: the oracle the C++ runtime is tested against.
Text-only layers (and hyper layers when there is no image) are exactly `reference.decoder.TextDecoder`.

Hyper layer i, with x_n = RMSNorm(h; input_layernorm_i) and s_j the index of the first token of the j-th
`<|image|>` placeholder (images in placeholder order, P visual tokens each):
  visual K/V  kv = v_kv_proj(RMSNorm(image_embeds; the SAME input_layernorm_i)) -> [N*P, nkv, (K|V), d]
              (channels of kv-head h: K = [h*2d, h*2d+d), V = [h*2d+d, (h+1)*2d)); K rotated by MI-Rope:
              every key of image j at ONE position p_j; V not rotated.                              (§4)
  240728/241014  ctx = causal self-attention;  vctx_i = softmax over images with s_j < i (own softmax);
              for tokens with at least one visible image: ctx_i = ctx_i*(1-g) + vctx_i*g with
              g = sigmoid(gate_proj.0(ctx_i per head)) (240728) or sigmoid(gate) (241014);
              p_j = s_j + 1.                                                                      (§4.1)
  241101      one softmax over [visual ; text]; image j visible to token i iff i >= s_j; p_j = s_j. (§4.2)
  then        h + o_proj(ctx), and the usual MLP block.
Decode with a cache is the same as this full recompute with generated tokens after all images (§4.3).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, PrefixView, load_checkpoint
from ..reference.decoder import TextDecoder, apply_rope, causal_attention, rms_norm, rope_cos_sin
from .variant import LM_PREFIX, Owl3Variant, VisionConfig, detect_variant, text_config
from .vision import Owl3VisionReference

# ------------------------------------------------------------------------------------------ media_offset

def find_image_starts(ids: Sequence[int], placeholder_ids: Sequence[int]) -> list[int]:
    """s_j: index of the first token of each occurrence of the `<|image|>` token sequence (docs/owl3.md §6.3).

    placeholder_ids is the tokenization of "<|image|>" alone (5 ids for the real Qwen2 tokenizer: the
    processor tokenizes it as its own chunk, §6.1-6.2)."""
    ids, pat = [int(t) for t in ids], [int(t) for t in placeholder_ids]
    if not pat:
        raise ValueError("placeholder_ids is empty")
    starts, i = [], 0
    while i + len(pat) <= len(ids):
        if ids[i:i + len(pat)] == pat:
            starts.append(i)
            i += len(pat)
        else:
            i += 1
    return starts


def starts_from_media_offset(media_offset) -> list[int]:
    """Image starts s_j from either official media_offset format (docs/owl3.md §6.3).

    240728/241014: a [1, L, 2] (or [L, 2]) tensor with rows [0, n_i], n_i = #{j : s_j < i}, so image j's
    start is the token before the first row where n_i reaches j+1; rows [0, -1000000] mean "no image".
    241101: a list of start indices, or [tensor([s_0, s_1, ...])] (one list per sample, batch 1)."""
    if isinstance(media_offset, (list, tuple)) and len(media_offset) == 1 and torch.is_tensor(media_offset[0]):
        media_offset = media_offset[0]                       # 241101's [tensor([...])] for one sample
    mo = torch.as_tensor(media_offset)
    if mo.ndim <= 1:
        starts = [int(s) for s in mo.reshape(-1).tolist()]
        _check_starts(starts, None)
        return starts
    if mo.ndim == 3:
        if mo.shape[0] != 1:
            raise ValueError(f"media_offset: batch size {mo.shape[0]}; the reference handles one sample")
        mo = mo[0]
    if mo.ndim != 2 or mo.shape[1] != 2:
        raise ValueError(f"media_offset must be [1, L, 2], [L, 2] or a list of starts; got {tuple(mo.shape)}")
    counts = mo[:, 1].tolist()
    if all(n < 0 for n in counts):                           # [0, -1000000] rows: a text-only sample
        return []
    starts, seen = [], 0
    for i, n in enumerate(counts):
        if n < seen or n > seen + 1:
            raise ValueError(f"media_offset: visible-image count goes {seen} -> {n} at token {i}; it must "
                             "grow by at most one per token")
        if n == seen + 1:
            if i == 0:
                raise ValueError("media_offset: token 0 already sees an image (no placeholder before it)")
            starts.append(i - 1)
            seen = n
    return starts


def _check_starts(starts: Sequence[int], seq_len: int | None) -> None:
    for a, b in zip(starts, starts[1:]):
        if b <= a:
            raise ValueError(f"image starts must be strictly increasing, got {list(starts)}")
    if starts and starts[0] < 0:
        raise ValueError(f"image starts must be >= 0, got {list(starts)}")
    if seq_len is not None and starts and starts[-1] >= seq_len:
        raise ValueError(f"image start {starts[-1]} is past the end of the {seq_len}-token sequence")


# ------------------------------------------------------------------------------------------ attention

def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q: [nh, T, d]; k/v: [nkv, S, d]; mask [T, S] bool, True = attend -> [nh, T, d]. GQA like the text path;
    softmax in float32 (float64 for a float64 oracle). Every row of mask must have a True."""
    n_rep = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(n_rep, dim=0)
    v = v.repeat_interleave(n_rep, dim=0)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.softmax(scores, dim=-1, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    return probs.to(q.dtype) @ v


def mi_rope(k: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate visual keys k [nkv, N*P, d], row r at positions[r]. Computed in float32 and rounded once to
    k's dtype, as the official RotaryEmbedding(use_fp32=True) does (docs/owl3.md §4, §9)."""
    compute = torch.float64 if k.dtype == torch.float64 else torch.float32
    cos, sin = rope_cos_sin(positions, k.shape[-1], theta, compute)
    return apply_rope(k.to(compute), cos, sin).to(k.dtype)


# ------------------------------------------------------------------------------------------ model

class Owl3Reference:
    """mPLUG-Owl3 LM (+ the vision path when built from a directory) over checkpoint tensors."""

    def __init__(self, config: dict, tensors: Mapping[str, torch.Tensor], dtype=torch.float32):
        self.variant: Owl3Variant = detect_variant(config, tensors.keys())
        self.config = text_config(config)
        self.vision_config = VisionConfig.from_dict(config)
        self.dtype = dtype
        self.text = TextDecoder(self.config, PrefixView(tensors, LM_PREFIX), dtype)
        self.vision: Owl3VisionReference | None = None
        c = self.config
        self.hw: dict[str, torch.Tensor] = {}                   # hyper-layer tensors, by short name
        expect = {"v_kv_proj.weight": (2 * c.num_kv_heads * c.head_dim, c.hidden_size),
                  "v_kv_proj.bias": (2 * c.num_kv_heads * c.head_dim,)}
        if self.variant.gate == "proj":
            expect.update({"gate_proj.0.weight": (c.head_dim, c.head_dim), "gate_proj.0.bias": (c.head_dim,)})
        elif self.variant.gate == "vector":
            expect["gate"] = (c.num_heads * c.head_dim,)
        for i in self.variant.hyper_layers:
            for n, shape in expect.items():
                name = f"{LM_PREFIX}model.layers.{i}.self_attn.{n}"
                t = tensors[name]
                if tuple(t.shape) != shape:
                    raise CheckpointError(f"{name}: shape {tuple(t.shape)} does not match config {shape}")
                self.hw[f"{i}.{n}"] = t.to(dtype)

    @classmethod
    def from_pretrained(cls, hf_dir: str | Path, dtype=torch.float32) -> "Owl3Reference":
        config, tensors, _ = load_checkpoint(hf_dir)
        model = cls(config, tensors, dtype)
        model.vision = Owl3VisionReference(model.vision_config, tensors, model.variant.vision2text,
                                           model.config.hidden_size, dtype)
        return model

    # ---------------------------------------------------------------------------------------- inputs

    def _visual_rows(self, image_embeds, n_images: int) -> torch.Tensor:
        """image_embeds as [n_images * P, H] rows: image j = rows [j*P, (j+1)*P) (docs/owl3.md §4)."""
        P, H = self.variant.num_patches, self.config.hidden_size
        if torch.is_tensor(image_embeds) or hasattr(image_embeds, "__array__"):
            parts = [torch.as_tensor(image_embeds)]
        else:
            parts = [torch.as_tensor(t) for t in image_embeds]
        rows = []
        for t in parts:
            if t.shape[-1] != H:
                raise ValueError(f"image embeddings must have width {H} (hidden_size), got {tuple(t.shape)}")
            rows.append(t.reshape(-1, H))
        x = torch.cat(rows) if rows else torch.zeros(0, H)
        if x.shape[0] != n_images * P:
            raise ValueError(f"{n_images} image placeholders need {n_images} x {P} visual rows, "
                             f"got {x.shape[0]} rows")
        return x.to(self.dtype)

    def _prepare(self, T: int, image_embeds, image_starts):
        """(visual rows, starts) or (None, []) for a text-only call."""
        if image_embeds is None and (image_starts is None or len(image_starts) == 0):
            return None, []
        if image_embeds is None or image_starts is None:
            raise ValueError("image_embeds and image_starts go together: pass both or neither")
        starts = [int(s) for s in image_starts]
        _check_starts(starts, T)
        vis = self._visual_rows(image_embeds, len(starts))
        return (vis, starts) if starts else (None, [])

    # ---------------------------------------------------------------------------------------- pieces

    def _qkv(self, i: int, x: torch.Tensor):
        """Text q/k/v of layer i on normed x [T, H], RoPE'd at positions 0..T-1: [nh|nkv, T, d]."""
        c, w, p = self.config, self.text.w, f"model.layers.{i}."
        T = x.shape[0]
        q = F.linear(x, w[p + "q_proj"], w[p + "q_proj.bias"]).view(T, c.num_heads, c.head_dim).transpose(0, 1)
        k = F.linear(x, w[p + "k_proj"], w[p + "k_proj.bias"]).view(T, c.num_kv_heads, c.head_dim).transpose(0, 1)
        v = F.linear(x, w[p + "v_proj"], w[p + "v_proj.bias"]).view(T, c.num_kv_heads, c.head_dim).transpose(0, 1)
        cos, sin = rope_cos_sin(torch.arange(T), c.head_dim, c.rope_theta, x.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def visual_kv(self, i: int, image_embeds, image_starts: Sequence[int]):
        """Visual K (MI-Rope applied) and V of hyper layer i: each [nkv, N*P, d]. What a runtime caches."""
        if not self.variant.is_hyper(i):
            raise ValueError(f"layer {i} is not a hyper layer (hyper layers: {list(self.variant.hyper_layers)})")
        c, P = self.config, self.variant.num_patches
        starts = [int(s) for s in image_starts]
        _check_starts(starts, None)
        vis = self._visual_rows(image_embeds, len(starts))
        vn = rms_norm(vis, self.text.w[f"model.layers.{i}.input_layernorm"], c.rms_norm_eps)   # shared LN
        kv = F.linear(vn, self.hw[f"{i}.v_kv_proj.weight"], self.hw[f"{i}.v_kv_proj.bias"])
        kv = kv.view(-1, c.num_kv_heads, 2, c.head_dim)        # (head, K|V, dim) interleaved per head
        k, v = kv[:, :, 0].transpose(0, 1), kv[:, :, 1].transpose(0, 1)
        pos = torch.tensor([s + self.variant.mi_rope_offset for s in starts], dtype=torch.long)
        if len(pos) and int(pos.max()) >= c.max_position_embeddings:
            raise ValueError(f"MI-Rope position {int(pos.max())} >= max_position_embeddings "
                             f"{c.max_position_embeddings}")
        return mi_rope(k, pos.repeat_interleave(P), c.rope_theta), v

    def _image_of_row(self, n_images: int) -> torch.Tensor:
        return torch.arange(n_images).repeat_interleave(self.variant.num_patches)

    def attention(self, i: int, x: torch.Tensor, image_embeds=None, image_starts=None) -> torch.Tensor:
        """Attention block of layer i on normed input x [T, H] -> o_proj output [T, H].

        Hyper layers with images run the variant's hyper-attention; everything else is plain Qwen2."""
        T = x.shape[0]
        vis, starts = self._prepare(T, image_embeds, image_starts)
        if vis is None or not self.variant.is_hyper(i):
            return self.text.attention(i, x, torch.arange(T))
        c, p = self.config, f"model.layers.{i}."
        q, k, v = self._qkv(i, x)
        kv_k, kv_v = self.visual_kv(i, vis, starts)
        s_of_row = torch.tensor(starts)[self._image_of_row(len(starts))]     # [N*P]: s_j of each visual row
        tok = torch.arange(T)[:, None]
        if self.variant.fused:
            # §4.2: visual first, then text, one softmax; image j visible iff i >= s_j
            mask = torch.cat([tok >= s_of_row[None, :], torch.ones(T, T, dtype=torch.bool).tril()], dim=1)
            ctx = masked_attention(q, torch.cat([kv_k, k], 1), torch.cat([kv_v, v], 1), mask)
            ctx = ctx.transpose(0, 1).reshape(T, c.num_heads * c.head_dim)
        else:
            # §4.1: separate visual softmax over images with s_j < i, merged by the gate where any is visible
            ctx = causal_attention(q, k, v).transpose(0, 1).reshape(T, c.num_heads * c.head_dim)
            mask = tok > s_of_row[None, :]
            rows = mask.any(dim=1)                              # tokens i >= first = s_0 + 1
            if rows.any():
                vctx = masked_attention(q[:, rows], kv_k, kv_v, mask[rows])
                vctx = vctx.transpose(0, 1).reshape(-1, c.num_heads * c.head_dim)
                g = self._gate(i, ctx[rows])
                ctx = ctx.clone()
                ctx[rows] = ctx[rows] * (1 - g) + vctx * g     # tokens before `first` keep ctx unscaled
        return F.linear(ctx, self.text.w[p + "o_proj"], self.text.w[p + "o_proj.bias"])

    def _gate(self, i: int, ctx: torch.Tensor) -> torch.Tensor:
        """Gate g for rows ctx [R, nh*d]: per head from the self-attention output (240728) or static (241014)."""
        c = self.config
        if self.variant.gate == "proj":
            per_head = ctx.view(-1, c.num_heads, c.head_dim)    # the same Linear(d, d) for every head
            g = torch.sigmoid(F.linear(per_head, self.hw[f"{i}.gate_proj.0.weight"], self.hw[f"{i}.gate_proj.0.bias"]))
            return g.reshape(ctx.shape)
        if self.variant.gate == "vector":
            return torch.sigmoid(self.hw[f"{i}.gate"])
        raise AssertionError(f"variant {self.variant.name} has no gate")

    def layer(self, i: int, h: torch.Tensor, image_embeds=None, image_starts=None) -> torch.Tensor:
        """Decoder layer i: [T, H] residual stream in, [T, H] out (§3)."""
        c, w, p = self.config, self.text.w, f"model.layers.{i}."
        h = h + self.attention(i, rms_norm(h, w[p + "input_layernorm"], c.rms_norm_eps), image_embeds, image_starts)
        return h + self.text.mlp(i, rms_norm(h, w[p + "post_attention_layernorm"], c.rms_norm_eps))

    def hidden_states(self, input_ids, image_embeds=None, image_starts=None) -> list[torch.Tensor]:
        """[embeddings, after layer 0, ..., after the last layer (before the final norm)], each [T, H]."""
        h = self.text.embed(input_ids)
        vis, starts = self._prepare(h.shape[0], image_embeds, image_starts)
        out = [h]
        for i in range(self.config.num_layers):
            h = self.layer(i, h, vis, starts if vis is not None else None)
            out.append(h)
        return out

    # ---------------------------------------------------------------------------------------- API

    @torch.no_grad()
    def forward(self, input_ids, image_embeds=None, image_starts=None) -> torch.Tensor:
        """input_ids [T]; image_embeds [n_img, P, H] or a list of [k*P, H] (image order = placeholder
        order); image_starts: s_j per image (see find_image_starts / starts_from_media_offset).
        -> logits [T, vocab] (full recompute): float64 for a float64 oracle, else float32 (§3: `.float()`)."""
        logits = self.text.logits(self.hidden_states(input_ids, image_embeds, image_starts)[-1])
        return logits if logits.dtype == torch.float64 else logits.float()

    __call__ = forward

    @torch.no_grad()
    def encode_images(self, pixels) -> torch.Tensor:
        """Preprocessed pixels [N,3,S,S] -> image embeddings [N, P, H] (needs from_pretrained)."""
        if self.vision is None:
            raise RuntimeError("no vision tower: build the reference with Owl3Reference.from_pretrained")
        return self.vision(pixels)

    @torch.no_grad()
    def greedy(self, input_ids, n_new: int, image_embeds=None, image_starts=None) -> list[int]:
        """n_new argmax tokens, each step a full recompute; new tokens come after every image (§4.3)."""
        seq = [int(t) for t in torch.as_tensor(input_ids, dtype=torch.long).tolist()]
        new: list[int] = []
        for _ in range(n_new):
            nxt = int(self.forward(seq, image_embeds, image_starts)[-1].argmax())
            seq.append(nxt)
            new.append(nxt)
        return new
