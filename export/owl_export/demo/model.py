"""A batched, trainable mPLUG-Owl3 (240728 hyper-attention: per-head gate_proj, Linear vision2text) whose
parameters carry the official checkpoint names, so state_dict() is a loadable model.safetensors.

The maths is that of owl_export.owl3 (language.py, vision.py: docs/owl3.md §3-4), written for batches of
padded sequences; tests/test_demo_model.py checks its logits against that reference on a saved checkpoint.

  vision    SigLIP embeddings + encoder layers 0..L-2 (hidden_states[-2]); the last layer, post_layernorm and
            the MAP head exist only in the saved file (random, never used, as in the published layout)
  decoder   Qwen2 (q/k/v biases, GQA, RoPE, SwiGLU, tied embeddings); in each hyper layer the text queries
            also attend to the visual K/V (v_kv_proj of the RMS-normed image rows, MI-Rope at s_j + 1) of
            the images whose placeholder starts before them, merged per head by sigmoid(gate_proj(ctx))
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..reference.decoder import apply_rope, rope_cos_sin
from .config import DemoSizes

LM = "language_model.model."


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class DemoOwl3(nn.Module):
    def __init__(self, s: DemoSizes, vocab_rows: int, seed: int = 0):
        super().__init__()
        self.s, self.vocab_rows = s, vocab_rows
        self.hyper = tuple(x - 1 for x in s.hyper_layers)          # 0-based
        g = torch.Generator().manual_seed(seed)
        self._p = nn.ParameterDict()
        H, d, Hv = s.hidden_size, s.head_dim, s.vision_hidden

        def mat(name, rows, cols, std=0.02):
            self._add(name, torch.randn(rows, cols, generator=g) * std)

        def vec(name, n, value=0.0):
            self._add(name, torch.full((n,), float(value)))

        out_std = 0.02 / math.sqrt(2 * s.num_layers)                # GPT-2 style: residual writes scaled
        self._add(LM + "embed_tokens.weight", torch.randn(vocab_rows, H, generator=g) * 0.02)
        for i in range(s.num_layers):
            p = f"{LM}layers.{i}."
            vec(p + "input_layernorm.weight", H, 1.0)
            vec(p + "post_attention_layernorm.weight", H, 1.0)
            for n, rows in (("q_proj", s.num_heads * d), ("k_proj", s.num_kv_heads * d), ("v_proj", s.num_kv_heads * d)):
                mat(p + f"self_attn.{n}.weight", rows, H)
                vec(p + f"self_attn.{n}.bias", rows)
            mat(p + "self_attn.o_proj.weight", H, s.num_heads * d, out_std)
            mat(p + "mlp.gate_proj.weight", s.intermediate_size, H)
            mat(p + "mlp.up_proj.weight", s.intermediate_size, H)
            mat(p + "mlp.down_proj.weight", H, s.intermediate_size, out_std)
            if i in self.hyper:
                mat(p + "self_attn.v_kv_proj.weight", 2 * s.num_kv_heads * d, H)
                vec(p + "self_attn.v_kv_proj.bias", 2 * s.num_kv_heads * d)
                mat(p + "self_attn.gate_proj.0.weight", d, d)
                vec(p + "self_attn.gate_proj.0.bias", d)
        vec(LM + "norm.weight", H, 1.0)

        v = "vision_model."
        self._add(v + "embeddings.patch_embedding.weight",
                  torch.randn(Hv, 3, s.patch_size, s.patch_size, generator=g) / math.sqrt(3 * s.patch_size ** 2))
        vec(v + "embeddings.patch_embedding.bias", Hv)
        self._add(v + "embeddings.position_embedding.weight", torch.randn(s.num_patches, Hv, generator=g) * 0.02)
        for i in range(s.vision_layers - 1):
            p = f"{v}encoder.layers.{i}."
            for n in ("layer_norm1", "layer_norm2"):
                vec(p + n + ".weight", Hv, 1.0)
                vec(p + n + ".bias", Hv)
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                mat(p + f"self_attn.{n}.weight", Hv, Hv, 0.02 if n != "out_proj" else out_std)
                vec(p + f"self_attn.{n}.bias", Hv)
            mat(p + "mlp.fc1.weight", s.vision_intermediate, Hv)
            vec(p + "mlp.fc1.bias", s.vision_intermediate)
            mat(p + "mlp.fc2.weight", Hv, s.vision_intermediate, out_std)
            vec(p + "mlp.fc2.bias", Hv)
        mat("vision2text_model.weight", H, Hv)
        vec("vision2text_model.bias", H)

    # ------------------------------------------------------------------------------------------ params

    def _add(self, name: str, t: torch.Tensor) -> None:
        self._p[name.replace(".", "__")] = nn.Parameter(t.float())

    def w(self, name: str) -> torch.Tensor:
        return self._p[name.replace(".", "__")]

    def named_weights(self) -> dict[str, torch.Tensor]:
        """Official name -> tensor (detached), the trained part of the checkpoint."""
        return {k.replace("__", "."): v.detach() for k, v in self._p.items()}

    def load_named(self, tensors: dict) -> None:
        with torch.no_grad():
            for k, v in self._p.items():
                v.copy_(tensors[k.replace("__", ".")])

    # ------------------------------------------------------------------------------------------ vision

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N,3,S,S] -> hidden_states[-2]: [N, P, Hv]."""
        s, v = self.s, "vision_model."
        x = F.conv2d(pixels, self.w(v + "embeddings.patch_embedding.weight"),
                     self.w(v + "embeddings.patch_embedding.bias"), stride=s.patch_size)
        x = x.flatten(2).transpose(1, 2) + self.w(v + "embeddings.position_embedding.weight")
        N, P, Hv = x.shape
        nh, hd = s.vision_heads, Hv // s.vision_heads
        for i in range(s.vision_layers - 1):
            p = f"{v}encoder.layers.{i}."

            def ln(t, n):
                return F.layer_norm(t, (Hv,), self.w(p + n + ".weight"), self.w(p + n + ".bias"), 1e-6)

            def lin(t, n):
                return F.linear(t, self.w(p + n + ".weight"), self.w(p + n + ".bias"))

            y = ln(x, "layer_norm1")
            q, k, vv = (lin(y, f"self_attn.{n}").view(N, P, nh, hd).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
            o = F.scaled_dot_product_attention(q, k, vv).transpose(1, 2).reshape(N, P, Hv)
            x = x + lin(o, "self_attn.out_proj")
            x = x + lin(F.gelu(lin(ln(x, "layer_norm2"), "mlp.fc1"), approximate="tanh"), "mlp.fc2")
        return x

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return F.linear(feats, self.w("vision2text_model.weight"), self.w("vision2text_model.bias"))

    # ------------------------------------------------------------------------------------------ decoder

    def forward(self, ids: torch.Tensor, vis: torch.Tensor | None = None, starts: torch.Tensor | None = None,
                view_valid: torch.Tensor | None = None, attn_at: tuple | None = None):
        """ids [B, T] (right padded); vis [B, V, P, H] projected image rows per sample (V views, padded);
        starts [B, V] the token index s_j of each view's placeholder; view_valid [B, V] bool -> logits [B, T, vocab].

        attn_at (training only): (rows [M], positions [M]) -> also return, per hyper layer, the hyper-attention
        probabilities of those query positions over the visual rows, [M, heads, V*P] (a gather of the softmax
        the forward computes anyway), and the visual keys before MI-Rope, [B, V*P, kv_heads * head_dim], as
        (logits, [probs per hyper layer], [keys per hyper layer])."""
        s = self.s
        B, T = ids.shape
        nh, nkv, d, eps = s.num_heads, s.num_kv_heads, s.head_dim, s.rms_norm_eps
        emb = self.w(LM + "embed_tokens.weight")
        h = emb[ids]
        probes, keys = [], []
        cos, sin = rope_cos_sin(torch.arange(T), d, s.rope_theta, h.dtype)
        if vis is not None:
            V, P = vis.shape[1], vis.shape[2]
            vis = vis.reshape(B, V * P, -1)
            s_row = starts.repeat_interleave(P, dim=1)                               # [B, V*P]
            ok_row = view_valid.repeat_interleave(P, dim=1)
            see = (torch.arange(T)[None, :, None] > s_row[:, None, :]) & ok_row[:, None, :]   # [B, T, VP]
            any_see = see.any(-1)                                                    # [B, T]
            vcos, vsin = rope_cos_sin((s_row + 1).reshape(-1), d, s.rope_theta, h.dtype)  # MI-Rope at s_j + 1
            vcos, vsin = vcos.view(B, 1, V * P, d), vsin.view(B, 1, V * P, d)
        for i in range(s.num_layers):
            p = f"{LM}layers.{i}."
            x = _rms(h, self.w(p + "input_layernorm.weight"), eps)

            def proj(n, heads):
                return F.linear(x, self.w(p + f"self_attn.{n}.weight"), self.w(p + f"self_attn.{n}.bias")).view(
                    B, T, heads, d).transpose(1, 2)

            q = apply_rope(proj("q_proj", nh), cos, sin)
            k = apply_rope(proj("k_proj", nkv), cos, sin)
            v = proj("v_proj", nkv)
            rep = nh // nkv
            ctx = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                                 is_causal=True)                     # [B, nh, T, d]
            if vis is not None and i in self.hyper:
                vn = _rms(vis, self.w(p + "input_layernorm.weight"), eps)           # the shared input norm
                kv = F.linear(vn, self.w(p + "self_attn.v_kv_proj.weight"), self.w(p + "self_attn.v_kv_proj.bias"))
                kv = kv.view(B, V * P, nkv, 2, d)                                    # (head, K|V, dim) per row
                vk = apply_rope(kv[:, :, :, 0].transpose(1, 2), vcos, vsin).repeat_interleave(rep, 1)
                vv = kv[:, :, :, 1].transpose(1, 2).repeat_interleave(rep, 1)
                scores = (q @ vk.transpose(-1, -2)) / math.sqrt(d)                  # [B, nh, T, VP]
                scores = scores.masked_fill(~see[:, None], -1e9)                    # finite: no NaN rows
                probs = torch.softmax(scores, -1)
                if attn_at is not None:
                    probes.append(probs[attn_at[0], :, attn_at[1]])                # [M, nh, VP]
                    keys.append(kv[:, :, :, 0].reshape(B, V * P, nkv * d))
                vctx = probs @ vv
                ctx_t = ctx.transpose(1, 2)                                          # [B, T, nh, d]
                g = torch.sigmoid(F.linear(ctx_t, self.w(p + "self_attn.gate_proj.0.weight"),
                                           self.w(p + "self_attn.gate_proj.0.bias")))
                mixed = ctx_t * (1 - g) + vctx.transpose(1, 2) * g
                ctx = torch.where(any_see[:, :, None, None], mixed, ctx_t).transpose(1, 2)
            o = ctx.transpose(1, 2).reshape(B, T, nh * d)
            h = h + F.linear(o, self.w(p + "self_attn.o_proj.weight"))
            x = _rms(h, self.w(p + "post_attention_layernorm.weight"), eps)
            mlp = F.silu(F.linear(x, self.w(p + "mlp.gate_proj.weight"))) * F.linear(x, self.w(p + "mlp.up_proj.weight"))
            h = h + F.linear(mlp, self.w(p + "mlp.down_proj.weight"))
        h = _rms(h, self.w(LM + "norm.weight"), eps)
        logits = h @ emb.T
        return (logits, probes, keys) if attn_at is not None else logits


def unused_vision_tensors(s: DemoSizes, seed: int = 1) -> dict[str, torch.Tensor]:
    """The published layout's vision tensors that hidden_states[-2] never reads: the last encoder layer,
    post_layernorm and the MAP head. Random (from the test fixtures' generator), like any weight no forward
    pass uses."""
    from ..owl3.fixtures import random_vision_weights

    every = random_vision_weights(torch.Generator().manual_seed(seed), s.vision_hidden, s.vision_layers,
                                  s.vision_intermediate, s.patch_size, s.num_patches)
    unused = (f"vision_model.encoder.layers.{s.vision_layers - 1}.", "vision_model.post_layernorm.", "vision_model.head.")
    return {k: v for k, v in every.items() if k.startswith(unused)}
