"""PyTorch reference of the Qwen2 and LLaMA decoders, written from the published architectures.

Semantics follow transformers' Qwen2ForCausalLM / LlamaForCausalLM:
  h = embed[ids]
  per layer:  h = h + o_proj(attn(rope(q(n1(h))), rope(k(n1(h))), v(n1(h))))
              h = h + down(silu(gate(n2(h))) * up(n2(h)))
  logits = lm_head(norm(h))            (lm_head = embed when tie_word_embeddings)
with RMSNorm (x * rsqrt(mean(x^2) + eps)) * w computed in float32 (or float64), rotate_half RoPE,
grouped-query attention, causal softmax scaled by 1/sqrt(head_dim).

This is the oracle the runtime is tested against: plain, no KV cache, every call recomputes everything.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, TextConfig, load_checkpoint


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    # transformers upcasts to float32 for the statistics, then casts back before the weight multiply
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables [T, head_dim] in HF's layout: the frequency vector is repeated twice (cat(f, f))."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(compute) / head_dim))
    freqs = positions.to(compute)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [heads, T, head_dim]; pairs (i, i + head_dim/2) rotate together (NEOX-style layout)."""
    return x * cos + rotate_half(x) * sin


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [nh, T, d], k/v: [nkv, T, d] -> [nh, T, d]. Each group of nh/nkv query heads shares one K/V head."""
    n_rep = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(n_rep, dim=0)
    v = v.repeat_interleave(n_rep, dim=0)
    T = q.shape[1]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)           # True above the diagonal = future
    scores = scores.masked_fill(mask, float("-inf"))
    # transformers does the softmax in float32 even for half-precision weights
    probs = F.softmax(scores, dim=-1, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    return probs.to(q.dtype) @ v


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, w, b)


class TextDecoder:
    """Qwen2 / LLaMA decoder over a name -> tensor mapping in HF naming."""

    def __init__(self, config: TextConfig, tensors: Mapping[str, torch.Tensor], dtype=torch.float32):
        self.config = config
        self.dtype = dtype
        # Every matrix product goes through self.linear(x, w, b): a test can swap in one that rounds x the way a
        # runtime's quantized kernels do (int8 activations), to check those kernels exactly.
        self.linear = _linear
        self.w: dict[str, torch.Tensor] = {}
        c = config

        def take(name: str) -> torch.Tensor:
            if name not in tensors:
                raise CheckpointError(f"checkpoint is missing tensor {name!r} required by {c.arch}")
            return tensors[name].to(dtype)

        self.w["embed"] = take("model.embed_tokens.weight")
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            for n in ("input_layernorm", "post_attention_layernorm"):
                self.w[p + n] = take(p + n + ".weight")
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                self.w[p + n] = take(p + f"self_attn.{n}.weight")
            for n in ("q_proj", "k_proj", "v_proj"):
                self.w[p + n + ".bias"] = take(p + f"self_attn.{n}.bias") if c.qkv_bias else None
            self.w[p + "o_proj.bias"] = take(p + "self_attn.o_proj.bias") if c.o_bias else None
            for n in ("gate_proj", "up_proj", "down_proj"):
                self.w[p + n] = take(p + f"mlp.{n}.weight")
        self.w["norm"] = take("model.norm.weight")
        # tied: transformers makes lm_head share the embedding even if a copy was saved
        self.w["lm_head"] = self.w["embed"] if c.tie_word_embeddings else take("lm_head.weight")
        self._check_shapes()

    @classmethod
    def from_pretrained(cls, hf_dir: str | Path, dtype=torch.float32) -> "TextDecoder":
        config, tensors, _ = load_checkpoint(hf_dir)
        return cls(TextConfig.from_dict(config), tensors, dtype)

    def _check_shapes(self):
        c = self.config
        q_out, kv_out = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        expect = {"embed": (c.vocab_size, c.hidden_size), "norm": (c.hidden_size,),
                  "lm_head": (c.vocab_size, c.hidden_size)}
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            expect.update({p + "q_proj": (q_out, c.hidden_size), p + "k_proj": (kv_out, c.hidden_size),
                           p + "v_proj": (kv_out, c.hidden_size), p + "o_proj": (c.hidden_size, q_out),
                           p + "gate_proj": (c.intermediate_size, c.hidden_size),
                           p + "up_proj": (c.intermediate_size, c.hidden_size),
                           p + "down_proj": (c.hidden_size, c.intermediate_size)})
        for k, shape in expect.items():
            if tuple(self.w[k].shape) != shape:
                raise CheckpointError(f"{k}: shape {tuple(self.w[k].shape)} does not match config {shape}")

    # ---------------------------------------------------------------------------------------- pieces

    def embed(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token id out of range [0, {self.config.vocab_size})")
        return self.w["embed"][ids]

    def attention(self, i: int, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Self-attention of layer i on normed input x [T, H]; returns o_proj output [T, H]."""
        c, w, p = self.config, self.w, f"model.layers.{i}."
        T = x.shape[0]
        q = self.linear(x, w[p + "q_proj"], w[p + "q_proj.bias"]).view(T, c.num_heads, c.head_dim).transpose(0, 1)
        k = self.linear(x, w[p + "k_proj"], w[p + "k_proj.bias"]).view(T, c.num_kv_heads, c.head_dim).transpose(0, 1)
        v = self.linear(x, w[p + "v_proj"], w[p + "v_proj.bias"]).view(T, c.num_kv_heads, c.head_dim).transpose(0, 1)
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = causal_attention(q, k, v).transpose(0, 1).reshape(T, c.num_heads * c.head_dim)
        return self.linear(o, w[p + "o_proj"], w[p + "o_proj.bias"])

    def mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        w, p = self.w, f"model.layers.{i}."
        return self.linear(F.silu(self.linear(x, w[p + "gate_proj"])) * self.linear(x, w[p + "up_proj"]), w[p + "down_proj"])

    def layer(self, i: int, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        c, w, p = self.config, self.w, f"model.layers.{i}."
        h = h + self.attention(i, rms_norm(h, w[p + "input_layernorm"], c.rms_norm_eps), positions)
        return h + self.mlp(i, rms_norm(h, w[p + "post_attention_layernorm"], c.rms_norm_eps))

    def hidden_states(self, ids) -> list[torch.Tensor]:
        """[embeddings, after layer 0, ..., after the last layer (before the final norm)], each [T, H]."""
        h = self.embed(ids)
        positions = torch.arange(h.shape[0])
        out = [h]
        for i in range(self.config.num_layers):
            h = self.layer(i, h, positions)
            out.append(h)
        return out

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(rms_norm(h, self.w["norm"], self.config.rms_norm_eps), self.w["lm_head"])

    # ---------------------------------------------------------------------------------------- API

    @torch.no_grad()
    def forward(self, ids) -> torch.Tensor:
        """ids: list[int] | LongTensor[T] -> logits [T, vocab] (full recompute)."""
        return self.logits(self.hidden_states(ids)[-1])

    __call__ = forward

    @torch.no_grad()
    def greedy(self, ids, n_new: int) -> list[int]:
        """Append n_new argmax tokens; returns only the new ones. Recomputes the whole prefix each step."""
        seq = [int(t) for t in torch.as_tensor(ids, dtype=torch.long).tolist()]
        new: list[int] = []
        for _ in range(n_new):
            nxt = int(self.forward(seq)[-1].argmax())
            seq.append(nxt)
            new.append(nxt)
        return new
