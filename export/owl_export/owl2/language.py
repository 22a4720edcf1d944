"""PyTorch reference of the mPLUG-Owl2 language model: LLaMA with the modality-adaptive module (MAM), and of
mPLUG-Owl v1's plain LLaMA. Written from docs/owl2.md A5, A10 and PART C; the oracle the C++ runtime is tested
against.

Per layer, with m[t] the modality of token t (0 text, 1 image):
  h = RMS_{m}(x);  q = h Wq^T;  k = h Wk_{m}^T;  v = h Wv_{m}^T          (q, o and the MLP are shared)
  q, k = RoPE(q, k, pos)                                                (rotate_half, theta from config)
  K, V = cat(cache, k), cat(cache, v);  x = x + o(softmax(q K^T / sqrt(d) + causal) V)
  x = x + down(silu(gate(RMS2_{m}(x))) * up(RMS2_{m}(x)))
logits = lm_head(RMS_final(x)). The cache holds K after RoPE and V; positions continue from the cache length.
Every decode step of the official code runs with modality 0 (A5); callers pass that explicitly here.
v1 (cfg.multiway False) has one branch: its weights are read from the plain LLaMA names, and modality is ignored.

mPLUG-Owl2.1 (variant "owl2_1", Qwen-7B v1; docs/owl2.md PART B), in the official module names:
  h = ln_1(x);  [q | k | v] = h C_{m}^T + c_{m}   (attn.c_attn.multiway.{0,1}: weight [3H, H] and bias, per token)
  q, k = RoPE(q, k, pos)                          (rotate_half on the whole head, base rotary_emb_base)
  x = x + attn.c_proj(softmax(q K^T / sqrt(d) + causal) V)
  x = x + mlp.c_proj(mlp.w1(ln_2(x)) * silu(mlp.w2(ln_2(x))))          (the silu on w2)
logits = lm_head(ln_f(x)). Only c_attn depends on the modality; Qwen's dynamic NTK and logn scaling change nothing
up to seq_length, which is as long as the runtime goes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, load_checkpoint
from ..reference.decoder import apply_rope, rms_norm, rope_cos_sin
from .config import Owl2Config

IMAGE_TOKEN_INDEX = -200        # the sentinel an `<image>` becomes in the prompt's ids (constants.py, A8)

# per-layer modules with one weight per modality (A5): reference key -> checkpoint suffix (without .weight)
_MULTIWAY = {"attn_norm": "input_layernorm", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "ffn_norm": "post_attention_layernorm"}
_SHARED = {"q": "self_attn.q_proj", "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
           "down": "mlp.down_proj"}


class Owl2LanguageReference:
    """weights: the checkpoint's name -> tensor mapping (full names, `model.` / `language_model.` prefix)."""

    def __init__(self, weights: Mapping[str, torch.Tensor], cfg: Owl2Config, dtype=torch.float32):
        self.cfg, self.c, self.dtype = cfg, cfg.text, dtype
        c, p0 = cfg.text, cfg.llm_prefix
        self.qwen = cfg.variant == "owl2_1"
        if c.o_bias or (c.qkv_bias and not self.qwen):
            raise CheckpointError("attention_bias is not supported for mPLUG-Owl2 / mPLUG-Owl")
        self.n_branches = 2 if cfg.multiway else 1

        def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if name not in weights:
                raise CheckpointError(f"checkpoint is missing tensor {name!r}")
            t = weights[name].to(dtype)
            if tuple(t.shape) != shape:
                raise CheckpointError(f"{name}: shape {tuple(t.shape)}, expected {shape} from config.json")
            return t

        H, I, V = c.hidden_size, c.intermediate_size, c.vocab_size
        Q, KV = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        shapes = {"attn_norm": (H,), "ffn_norm": (H,), "k": (KV, H), "v": (KV, H), "q": (Q, H), "o": (H, Q),
                  "gate": (I, H), "up": (I, H), "down": (H, I)}
        # optional: called as hook(layer_index, hidden [T, H]) after every layer (one-layer tests)
        self.hook = None
        self.lm_head = take(cfg.lm_head, (V, H))
        if self.qwen:
            self.embed_tokens = take(p0 + "wte.weight", (V, H))
            self.norm = take(p0 + "ln_f.weight", (H,))
            self.layers = []
            for i in range(c.num_layers):
                p = f"{p0}h.{i}."
                self.layers.append({
                    "ln_1": take(p + "ln_1.weight", (H,)), "ln_2": take(p + "ln_2.weight", (H,)),
                    # per branch (0 text, 1 image): the fused Q|K|V weight and its bias
                    "c_attn": [(take(p + f"attn.c_attn.multiway.{b}.weight", (3 * Q, H)),
                                take(p + f"attn.c_attn.multiway.{b}.bias", (3 * Q,))) for b in range(2)],
                    "c_proj": take(p + "attn.c_proj.weight", (H, Q)),
                    "w1": take(p + "mlp.w1.weight", (I, H)), "w2": take(p + "mlp.w2.weight", (I, H)),
                    "mlp_c_proj": take(p + "mlp.c_proj.weight", (H, I))})
            return
        self.embed_tokens = take(p0 + "embed_tokens.weight", (V, H))
        self.norm = take(p0 + "norm.weight", (H,))
        self.layers: list[dict] = []
        for i in range(c.num_layers):
            p = f"{p0}layers.{i}."
            layer = {k: take(p + n + ".weight", shapes[k]) for k, n in _SHARED.items()}
            for k, n in _MULTIWAY.items():   # layer[k] = [text, image] (v1: [text])
                names = ([p + n + f".multiway.{b}.weight" for b in range(2)] if cfg.multiway
                         else [p + n + ".weight"])
                layer[k] = [take(name, shapes[k]) for name in names]
            self.layers.append(layer)

    @classmethod
    def from_pretrained(cls, hf_dir: str | Path, dtype=torch.float32) -> "Owl2LanguageReference":
        _, tensors, path = load_checkpoint(hf_dir)
        return cls(tensors, Owl2Config.from_checkpoint(path), dtype)

    # ---------------------------------------------------------------------------------------- input

    def embed(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.c.vocab_size):
            raise ValueError(f"token id out of range [0, {self.c.vocab_size})")
        return self.embed_tokens[ids]

    def splice(self, ids: Sequence[int], image_embeds: Sequence[torch.Tensor] = ()):
        """ids with IMAGE_TOKEN_INDEX sentinels + one [Q+1, H] tensor per sentinel -> (embeds [T, H], modality
        [T]): each sentinel is replaced by its image's rows (modality 1); text tokens get modality 0 (A5)."""
        ids = [int(t) for t in ids]
        n_sent = sum(t == IMAGE_TOKEN_INDEX for t in ids)
        if n_sent != len(image_embeds):
            raise ValueError(f"{n_sent} image sentinels but {len(image_embeds)} images")
        parts, mods, text, it = [], [], [], iter(image_embeds)

        def flush():
            if text:
                parts.append(self.embed(text))
                mods.append(torch.zeros(len(text), dtype=torch.long))
                text.clear()

        for t in ids:
            if t != IMAGE_TOKEN_INDEX:
                text.append(t)
                continue
            flush()
            img = torch.as_tensor(next(it)).to(self.dtype)
            if img.ndim != 2 or img.shape[1] != self.c.hidden_size:
                raise ValueError(f"image embeddings must be [n, {self.c.hidden_size}], got {tuple(img.shape)}")
            parts.append(img)
            mods.append(torch.ones(img.shape[0], dtype=torch.long))
        flush()
        if not parts:
            return torch.zeros(0, self.c.hidden_size, dtype=self.dtype), torch.zeros(0, dtype=torch.long)
        return torch.cat(parts), torch.cat(mods)

    # ---------------------------------------------------------------------------------------- forward

    def _branch(self, weights: list, x: torch.Tensor, modality: torch.Tensor, fn) -> torch.Tensor:
        """y[t] = fn(x[t], weights[m[t]]): each token through its modality's weight (MultiwayNetwork)."""
        if len(weights) == 1:
            return fn(x, weights[0])
        out = None
        for b, w in enumerate(weights):
            sel = modality == b
            if not bool(sel.any()):
                continue
            y = fn(x[sel], w)
            if out is None:
                out = torch.empty(x.shape[0], y.shape[1], dtype=y.dtype)
            out[sel] = y
        return out

    def layer(self, i: int, x: torch.Tensor, modality: torch.Tensor, positions: torch.Tensor, past=None):
        """One decoder layer on x [T, H]; past: (K, V) [nkv, P, d] after RoPE, or None. Returns (x, (K, V))."""
        c, L, T = self.c, self.layers[i], x.shape[0]
        eps, d = c.rms_norm_eps, c.head_dim
        norm = lambda t, w: rms_norm(t, w, eps)                                       # noqa: E731
        if self.qwen:    # Owl2.1: one fused Q|K|V (with bias) per modality, split into contiguous thirds
            qkv = self._branch(L["c_attn"], norm(x, L["ln_1"]), modality, lambda t, wb: F.linear(t, wb[0], wb[1]))
            q, k, v = (part.reshape(T, c.num_heads, d).transpose(0, 1) for part in qkv.split(c.num_heads * d, dim=1))
        else:
            h = self._branch(L["attn_norm"], x, modality, norm)
            q = F.linear(h, L["q"]).view(T, c.num_heads, d).transpose(0, 1)
            k = self._branch(L["k"], h, modality, F.linear).view(T, c.num_kv_heads, d).transpose(0, 1)
            v = self._branch(L["v"], h, modality, F.linear).view(T, c.num_kv_heads, d).transpose(0, 1)
        cos, sin = rope_cos_sin(positions, d, c.rope_theta, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        rep = c.num_heads // c.num_kv_heads
        kk, vv = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
        P = k.shape[1] - T
        scores = (q @ kk.transpose(-1, -2)) / d ** 0.5
        future = torch.ones(T, P + T, dtype=torch.bool).triu(P + 1)                  # key j > query P+t
        scores = scores.masked_fill(future, float("-inf"))
        probs = F.softmax(scores, dim=-1, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        a = (probs.to(x.dtype) @ vv).transpose(0, 1).reshape(T, c.num_heads * d)
        if self.qwen:
            x = x + F.linear(a, L["c_proj"])
            h2 = norm(x, L["ln_2"])
            x = x + F.linear(F.linear(h2, L["w1"]) * F.silu(F.linear(h2, L["w2"])), L["mlp_c_proj"])
            return x, (k, v)
        x = x + F.linear(a, L["o"])
        h2 = self._branch(L["ffn_norm"], x, modality, norm)
        x = x + F.linear(F.silu(F.linear(h2, L["gate"])) * F.linear(h2, L["up"]), L["down"])
        return x, (k, v)

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, modality=None, past=None):
        """embeds [T, H], modality [T] (0 text / 1 image; None: all text), past: what the previous call returned
        (None: an empty cache) -> (logits [T, V], past). Positions continue after the cached ones."""
        x = torch.as_tensor(embeds).to(self.dtype)
        T = x.shape[0]
        m = torch.zeros(T, dtype=torch.long) if modality is None else torch.as_tensor(modality, dtype=torch.long)
        if m.shape != (T,):
            raise ValueError(f"modality must have one entry per token ({T}), got shape {tuple(m.shape)}")
        if bool(((m != 0) & (m != 1)).any()):      # v1: one branch, the modality changes nothing
            raise ValueError("modality entries must be 0 (text) or 1 (image)")
        n_past = 0 if past is None else past[0][0].shape[1]
        positions = torch.arange(n_past, n_past + T)
        new_past = []
        for i in range(self.c.num_layers):
            x, kv = self.layer(i, x, m, positions, None if past is None else past[i])
            new_past.append(kv)
            if self.hook is not None:
                self.hook(i, x)
        logits = F.linear(rms_norm(x, self.norm, self.c.rms_norm_eps), self.lm_head)
        return logits, new_past

    __call__ = forward

    @staticmethod
    def truncate(past, n: int):
        """The cache cut to its first n positions (a conversation rolled back)."""
        return [(k[:, :n], v[:, :n]) for k, v in past]

    @torch.no_grad()
    def greedy(self, embeds: torch.Tensor, modality, n_new: int) -> list[int]:
        """Prefill, then n_new argmax tokens, each decode step with the text branch (A5)."""
        logits, past = self.forward(embeds, modality)
        out = []
        for _ in range(n_new):
            tok = int(logits[-1].argmax())
            out.append(tok)
            logits, past = self.forward(self.embed([tok]), [0], past)
        return out
