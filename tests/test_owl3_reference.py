"""The mPLUG-Owl3 PyTorch reference (export/owl_export/owl3) against docs/owl3.md and independent computations.

Tiny random checkpoints of the three LM-side variants (docs/owl3.md headline table) are written in the published
layout; the checks:
- variant detection (and clear errors for broken layouts), the checkpoint layout itself;
- vision: hidden_states[-2] of SigLIP recomputed with torch.nn modules, vision2text, the unused last pixels;
- language: text-only == the plain Qwen2 TextDecoder; one hyper layer's attention == an independent float64
  implementation (SDPA, complex-number RoPE, per-head channel slicing of v_kv_proj); visibility boundaries
  (i > s_j vs i >= s_j); gates at -inf-ish give exactly the text-only model; the fused softmax equals the
  mix of a visual-only and a text-only softmax weighted by their partition functions;
- media_offset conversions and an end-to-end pass from preprocessed pixels to greedy tokens.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from owl_export.checkpoint import CheckpointError, TextConfig, UnsupportedModelError, load_checkpoint
from owl_export.owl3 import (Owl3LayoutError, Owl3Reference, detect_variant,
                             find_image_starts, starts_from_media_offset)
from owl_export.owl3.fixtures import OWL3_MARKERS, make_tiny_owl3_checkpoint
from owl_export.reference.decoder import TextDecoder

VARIANTS = ["1b", "7b-240728", "7b-241101"]
EXPECTED = {   # name, hyper layers 0-based, image_size, gate, fused, vision2text, template, tied
    "1b": ("241014", (1, 3), 30, "vector", False, "linear", "v3_global", True),
    "7b-240728": ("240728", (0, 2), 30, "proj", False, "linear", "v2_global", False),
    "7b-241101": ("241101", (1, 3), 28, "none", True, "mlp", "v3_global", False),
}
P = 49                       # (30 // 4)^2 = (28 // 4)^2 visual tokens per image in the tiny checkpoints
LM = "language_model."


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("owl3")
    return {v: make_tiny_owl3_checkpoint(root / v, v, seed=3) for v in VARIANTS}


@pytest.fixture(scope="module")
def refs(dirs):
    return {v: Owl3Reference.from_pretrained(d, torch.float64) for v, d in dirs.items()}


def state(d: Path) -> tuple[dict, dict]:
    config, tensors, _ = load_checkpoint(d)
    return config, {k: tensors[k] for k in tensors}


def images(n: int, seed: int, H: int = 64) -> torch.Tensor:
    return torch.randn(n, P, H, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


IDS = list(range(30, 70))    # 40 tokens; images start at 6, 15, 27
STARTS = [6, 15, 27]


# ------------------------------------------------------------------------------------------- layout

@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_detection(dirs, variant):
    config, tensors = state(dirs[variant])
    v = detect_variant(config, tensors)
    got = (v.name, v.hyper_layers, v.image_size, v.gate, v.fused, v.vision2text, v.cut_template,
           v.tie_word_embeddings)
    assert got == EXPECTED[variant]
    assert v.num_patches == P and v.mi_rope_offset == (0 if v.fused else 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_layout(dirs, variant):
    config, tensors = state(dirs[variant])
    assert config["model_type"] == "mplugowl3" and config["architectures"] == ["mPLUGOwl3Model"]
    assert [i - 1 for i in config["hyper_layers"]] == list(EXPECTED[variant][1])      # 1-based on disk
    assert set(config["vision_config"]) == {"hidden_size", "image_size", "intermediate_size", "model_type",
                                            "num_attention_heads", "num_hidden_layers", "patch_size"}
    assert (LM + "lm_head.weight" in tensors) != config["tie_word_embeddings"]
    # the unused parts of the published file are there too (docs/owl3.md §2.3)
    assert "vision_model.post_layernorm.weight" in tensors and "vision_model.head.probe" in tensors
    assert "vision_model.encoder.layers.1.mlp.fc2.bias" in tensors
    kv = tensors[LM + f"model.layers.{EXPECTED[variant][1][0]}.self_attn.v_kv_proj.weight"]
    assert tuple(kv.shape) == (2 * 2 * 16, 64)                                        # [2*nkv*d, H]
    for name, t in tensors.items():                                                   # all re-randomized
        assert not torch.all(t == 0) and not torch.all(t == 1), name


def test_broken_layouts(dirs):
    config, tensors = state(dirs["7b-240728"])
    names = set(tensors)
    kv = LM + "model.layers.2.self_attn.v_kv_proj.weight"
    with pytest.raises(Owl3LayoutError, match="v_kv_proj.weight"):
        detect_variant(config, names - {kv})
    with pytest.raises(Owl3LayoutError, match="vision2text_model.weight"):
        detect_variant(config, names - {"vision2text_model.weight"})
    mlp = {f"vision2text_model.{k}.{t}" for k in (0, 2) for t in ("weight", "bias")}
    with pytest.raises(Owl3LayoutError, match="unknown mPLUG-Owl3 layout"):
        detect_variant(config, (names - {"vision2text_model.weight", "vision2text_model.bias"}) | mlp)
    with pytest.raises(Owl3LayoutError, match="disagree"):
        detect_variant(config, names - {LM + "model.layers.2.self_attn.gate_proj.0.weight"})
    with pytest.raises(Owl3LayoutError, match="not in config hyper_layers"):
        detect_variant(config, names | {LM + "model.layers.1.self_attn.v_kv_proj.weight"})
    with pytest.raises(Owl3LayoutError, match="vision tower"):
        detect_variant(config, names - {"vision_model.embeddings.patch_embedding.weight"})
    with pytest.raises(CheckpointError, match="hyper_layers"):
        detect_variant({**config, "hyper_layers": [0, 2]}, names)          # 0 is not a 1-based index
    with pytest.raises(UnsupportedModelError, match="mplugowl3"):
        detect_variant({**config, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, names)
    del tensors[LM + "model.layers.0.self_attn.gate_proj.0.bias"]
    with pytest.raises(Owl3LayoutError, match="gate_proj.0.bias"):
        Owl3Reference(config, tensors)


def test_markers_are_plain_text(dirs):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(dirs["1b"] / "tokenizer.json"))
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    assert added == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    for m in OWL3_MARKERS:
        toks = tok.encode(m).tokens
        assert toks[:2] == ["<", "|"] and toks[-2:] == ["|", ">"], (m, toks)
    cfg = json.loads((dirs["1b"] / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.token_to_id("<|im_end|>")
    assert cfg["vocab_size"] > tok.get_vocab_size()                      # padded embedding rows


# ------------------------------------------------------------------------------------------- vision

def _nn_siglip_layer(t: dict, i: int) -> torch.nn.TransformerEncoderLayer:
    """SigLIP encoder layer i as torch.nn's pre-norm TransformerEncoderLayer (gelu tanh, eps 1e-6)."""
    layer = torch.nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, layer_norm_eps=1e-6, batch_first=True,
                                             norm_first=True, activation=lambda x: F.gelu(x, approximate="tanh"))
    layer = layer.double().train()                    # train(): the plain math path, no fused fast path
    p = f"vision_model.encoder.layers.{i}."
    pairs = [(layer.self_attn.in_proj_weight, torch.cat([t[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])),
             (layer.self_attn.in_proj_bias, torch.cat([t[p + f"self_attn.{n}_proj.bias"] for n in "qkv"]))]
    for mod, name in ((layer.self_attn.out_proj, "self_attn.out_proj"), (layer.linear1, "mlp.fc1"),
                      (layer.linear2, "mlp.fc2"), (layer.norm1, "layer_norm1"), (layer.norm2, "layer_norm2")):
        pairs += [(mod.weight, t[p + name + ".weight"]), (mod.bias, t[p + name + ".bias"])]
    with torch.no_grad():
        for param, value in pairs:
            param.copy_(value)
    return layer


@pytest.mark.parametrize("variant", ["1b", "7b-241101"])
def test_vision_hidden_states_minus_2(dirs, refs, variant):
    """hidden_states = [embeddings, layer 0, layer 1] rebuilt from torch.nn; the feature is [-2]."""
    _, t = state(dirs[variant])
    t = {k: v.double() for k, v in t.items()}
    S = EXPECTED[variant][2]
    pixels = torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        conv = torch.nn.Conv2d(3, 32, 4, 4).double()
        conv.weight.copy_(t["vision_model.embeddings.patch_embedding.weight"])
        conv.bias.copy_(t["vision_model.embeddings.patch_embedding.bias"])
        hs = [conv(pixels).flatten(2).transpose(1, 2) + t["vision_model.embeddings.position_embedding.weight"]]
        for i in range(2):
            hs.append(_nn_siglip_layer(t, i)(hs[-1]))
        if EXPECTED[variant][5] == "linear":
            proj = F.linear(hs[-2], t["vision2text_model.weight"], t["vision2text_model.bias"])
        else:
            seq = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64)).double()
            for k in (0, 2):
                seq[k].weight.copy_(t[f"vision2text_model.{k}.weight"])
                seq[k].bias.copy_(t[f"vision2text_model.{k}.bias"])
            proj = seq(hs[-2])
    vision = refs[variant].vision
    feats = vision.features(pixels)
    assert torch.allclose(feats, hs[-2], atol=1e-10)
    assert (feats - hs[-1]).abs().max() > 0.1                           # not the last layer's output
    out = vision(pixels)
    assert out.shape == (2, P, 64) and torch.allclose(out, proj, atol=1e-10)
    with pytest.raises(IndexError):
        vision.layer(1, feats)                                          # the last layer is never run


def test_vision_ignores_trailing_pixels(refs):
    """image_size 30, patch 4: the conv reads 28 px; the last 2 rows/cols never matter (384 vs 14*27)."""
    vision = refs["1b"].vision
    a = torch.rand(1, 3, 30, 30, dtype=torch.float64)
    b = a.clone()
    b[:, :, 28:, :] = -1
    b[:, :, :, 28:] = 1
    assert torch.equal(vision(a), vision(b))
    with pytest.raises(ValueError, match="patches"):
        vision(torch.zeros(1, 3, 34, 34, dtype=torch.float64))


# ------------------------------------------------------------------------------------------- language

@pytest.mark.parametrize("variant", VARIANTS)
def test_text_only_is_plain_qwen2(dirs, refs, variant):
    config, tensors = state(dirs[variant])
    qwen2 = {k: v for k, v in config.items() if k not in ("hyper_layers", "vision_config", "auto_map")}
    qwen2.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    plain = TextDecoder(TextConfig.from_dict(qwen2), {k[len(LM):]: v for k, v in tensors.items() if k.startswith(LM)},
                        torch.float64)
    assert torch.allclose(refs[variant](IDS), plain(IDS), atol=1e-12, rtol=0)
    # empty image lists are a text-only call as well
    assert torch.equal(refs[variant](IDS, torch.zeros(0, P, 64, dtype=torch.float64), []), refs[variant](IDS))


@pytest.mark.parametrize("variant", VARIANTS)
def test_visibility_boundaries(refs, variant):
    """Changing image j changes exactly the tokens that see it: i > s_j (240728/241014), i >= s_j (241101)."""
    ref = refs[variant]
    fused = ref.variant.fused
    base = ref(IDS, images(3, 0), STARTS)
    text_only = ref(IDS)
    first_seen = STARTS[0] if fused else STARTS[0] + 1
    # before the first image: untouched (allclose: the fused softmax row is longer, so summation may differ)
    assert torch.allclose(base[:first_seen], text_only[:first_seen], atol=1e-12, rtol=0)
    assert (base[first_seen:] - text_only[first_seen:]).abs().amax(1).min() > 1e-3
    for j, s in enumerate(STARTS):
        other = images(3, 0)
        other[j] = images(1, 100 + j)[0]
        changed = ref(IDS, other, STARTS)
        seen = s if fused else s + 1
        assert torch.allclose(changed[:seen], base[:seen], atol=1e-12, rtol=0), j
        assert (changed[seen:] - base[seen:]).abs().amax(1).min() > 1e-3, j


def _rope_complex(t: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on (x[k], x[k + d/2]) pairs as a complex rotation. t [..., n, d], pos [n]."""
    d = t.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(len(pos), d // 2, dtype=torch.float64), pos.double()[:, None] * inv)
    z = torch.complex(t[..., : d // 2], t[..., d // 2:]) * rot
    return torch.cat([z.real, z.imag], dim=-1)


def _independent_hyper_attention(t: dict, variant, layer: int, x: torch.Tensor, img: torch.Tensor, starts):
    """docs/owl3.md §4 re-implemented from the text: returns (o_proj output [T, H], pieces for further checks)."""
    H, nh, nkv, d, theta = 64, 4, 2, 16, 1e6
    p = LM + f"model.layers.{layer}."
    T = x.shape[0]
    lin = lambda z, n: z @ t[p + f"self_attn.{n}.weight"].T + t[p + f"self_attn.{n}.bias"]  # noqa: E731
    pos = torch.arange(T)
    q = _rope_complex(lin(x, "q_proj").view(T, nh, d).transpose(0, 1), pos, theta)        # [nh, T, d]
    k = _rope_complex(lin(x, "k_proj").view(T, nkv, d).transpose(0, 1), pos, theta)
    v = lin(x, "v_proj").view(T, nkv, d).transpose(0, 1)
    vn = img * torch.rsqrt(img.pow(2).mean(-1, keepdim=True) + 1e-6) * t[p + "input_layernorm.weight"]
    W, b = t[p + "self_attn.v_kv_proj.weight"], t[p + "self_attn.v_kv_proj.bias"]
    Kv = torch.stack([vn @ W[h * 2 * d: h * 2 * d + d].T + b[h * 2 * d: h * 2 * d + d] for h in range(nkv)])
    Vv = torch.stack([vn @ W[h * 2 * d + d: (h + 1) * 2 * d].T + b[h * 2 * d + d: (h + 1) * 2 * d] for h in range(nkv)])
    s_row = torch.tensor(starts).repeat_interleave(P)
    Kv = _rope_complex(Kv, s_row + (0 if variant.fused else 1), theta)                      # MI-Rope
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    i = torch.arange(T)[:, None]
    if variant.fused:
        mask = torch.cat([i >= s_row, causal], dim=1)
        ctx = F.scaled_dot_product_attention(q, torch.cat([Kv, k], 1), torch.cat([Vv, v], 1), attn_mask=mask,
                                             enable_gqa=True)
    else:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, enable_gqa=True)
        vis = i > s_row
        rows = vis.any(1)
        vctx = F.scaled_dot_product_attention(q[:, rows], Kv, Vv, attn_mask=vis[rows], enable_gqa=True)
        c = ctx[:, rows].transpose(0, 1)                                                        # [R, nh, d]
        if variant.gate == "proj":
            g = torch.sigmoid(c @ t[p + "self_attn.gate_proj.0.weight"].T + t[p + "self_attn.gate_proj.0.bias"])
        else:
            g = torch.sigmoid(t[p + "self_attn.gate"]).view(nh, d)
        ctx = ctx.clone()
        ctx[:, rows] = (c * (1 - g) + vctx.transpose(0, 1) * g).transpose(0, 1)
    out = ctx.transpose(0, 1).reshape(T, H) @ t[p + "self_attn.o_proj.weight"].T
    return out, dict(q=q, k=k, v=v, Kv=Kv, Vv=Vv, s_row=s_row)


@pytest.mark.parametrize("variant", VARIANTS)
def test_hyper_attention_matches_independent(dirs, refs, variant):
    ref = refs[variant]
    _, t = state(dirs[variant])
    t = {k: v.double() for k, v in t.items()}
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    img = images(3, 7)
    for layer in ref.variant.hyper_layers:
        expect, _ = _independent_hyper_attention(t, ref.variant, layer, x, img.reshape(-1, 64), STARTS)
        got = ref.attention(layer, x, img, STARTS)
        assert torch.allclose(got, expect, atol=1e-10), (variant, layer, float((got - expect).abs().max()))
    # the visual K/V a runtime caches: channel layout and MI-Rope
    layer = ref.variant.hyper_layers[0]
    _, pieces = _independent_hyper_attention(t, ref.variant, layer, x, img.reshape(-1, 64), STARTS)
    K, V = ref.visual_kv(layer, img, STARTS)
    assert torch.allclose(K, pieces["Kv"], atol=1e-10) and torch.allclose(V, pieces["Vv"], atol=1e-10)
    with pytest.raises(ValueError, match="not a hyper layer"):
        ref.visual_kv(next(i for i in range(4) if i not in ref.variant.hyper_layers), img, STARTS)


def test_fused_softmax_is_a_partition_weighted_mix(dirs, refs):
    """241101: one softmax over [visual; text] == (Z_v ctx_v + Z_t ctx_t) / (Z_v + Z_t) per row and head."""
    ref = refs["7b-241101"]
    _, t = state(dirs["7b-241101"])
    t = {k: v.double() for k, v in t.items()}
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    layer = ref.variant.hyper_layers[0]
    _, pc = _independent_hyper_attention(t, ref.variant, layer, x, images(3, 8).reshape(-1, 64), STARTS)
    q, k, v, Kv, Vv, s_row = (pc[n] for n in ("q", "k", "v", "Kv", "Vv", "s_row"))
    rep = lambda z: z.repeat_interleave(2, dim=0)  # noqa: E731  (4 query heads over 2 KV heads)
    i = torch.arange(40)[:, None]
    st = (q @ rep(k).transpose(1, 2) / 4.0).masked_fill(~torch.ones(40, 40, dtype=torch.bool).tril(), -math.inf)
    sv = (q @ rep(Kv).transpose(1, 2) / 4.0).masked_fill(~(i >= s_row), -math.inf)
    lt, lv = st.logsumexp(-1, keepdim=True), sv.logsumexp(-1, keepdim=True)             # log Z_t, log Z_v
    ctx_t = st.softmax(-1) @ rep(v)
    ctx_v = torch.nan_to_num(sv.softmax(-1)) @ rep(Vv)                                   # rows before s_0: none
    w_v = torch.exp(lv - torch.logaddexp(lt, lv))                                        # visual share
    assert torch.all(w_v[:, :STARTS[0]] == 0) and torch.all(w_v[:, STARTS[0]:] > 0)
    ctx = (1 - w_v) * ctx_t + w_v * ctx_v
    expect = ctx.transpose(0, 1).reshape(40, 64) @ t[LM + f"model.layers.{layer}.self_attn.o_proj.weight"].T
    assert torch.allclose(ref.attention(layer, x, images(3, 8), STARTS), expect, atol=1e-10)


@pytest.mark.parametrize("variant", ["1b", "7b-240728"])
def test_closed_gate_is_text_only(dirs, variant):
    """sigmoid(gate) ~ 0 (static vector at -40; or gate_proj.0 with zero weight and bias -40) removes every
    visual contribution: logits equal the text-only model's, and no (1-g) scaling leaks in."""
    config, tensors = state(dirs[variant])
    for i in EXPECTED[variant][1]:
        p = LM + f"model.layers.{i}.self_attn."
        if variant == "1b":
            tensors[p + "gate"] = torch.full_like(tensors[p + "gate"], -40.0)
        else:
            tensors[p + "gate_proj.0.weight"] = torch.zeros_like(tensors[p + "gate_proj.0.weight"])
            tensors[p + "gate_proj.0.bias"] = torch.full_like(tensors[p + "gate_proj.0.bias"], -40.0)
    ref = Owl3Reference(config, tensors, torch.float64)
    assert torch.allclose(ref(IDS, images(3, 1), STARTS), ref(IDS), atol=1e-9, rtol=0)
    # wide open (g ~ 1): rows that see an image output the visual attention alone, earlier rows plain attention
    for i in EXPECTED[variant][1]:
        p = LM + f"model.layers.{i}.self_attn."
        key = p + ("gate" if variant == "1b" else "gate_proj.0.bias")
        tensors[key] = torch.full_like(tensors[key], 40.0)
    ref = Owl3Reference(config, tensors, torch.float64)
    t = {k: v.double() for k, v in tensors.items()}
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    layer = EXPECTED[variant][1][0]
    _, pc = _independent_hyper_attention(t, ref.variant, layer, x, images(3, 1).reshape(-1, 64), STARTS)
    vis = torch.arange(40)[:, None] > pc["s_row"]
    first = STARTS[0] + 1
    vctx = F.scaled_dot_product_attention(pc["q"][:, first:], pc["Kv"], pc["Vv"], attn_mask=vis[first:],
                                          enable_gqa=True)
    wo = t[LM + f"model.layers.{layer}.self_attn.o_proj.weight"]
    got = ref.attention(layer, x, images(3, 1), STARTS)
    assert torch.allclose(got[first:], vctx.transpose(0, 1).reshape(-1, 64) @ wo.T, atol=1e-9)
    assert torch.allclose(got[:first], ref.attention(layer, x)[:first], atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_oracle_tracks_float64(dirs, refs, variant):
    """The bf16 reference (§9 dtypes) runs every path and stays near the float64 one."""
    ref16 = Owl3Reference.from_pretrained(dirs[variant], torch.bfloat16)
    S = EXPECTED[variant][2]
    pixels = torch.rand(3, 3, S, S, generator=torch.Generator().manual_seed(1)) * 2 - 1
    e16, e64 = ref16.encode_images(pixels), refs[variant].encode_images(pixels.double())
    assert e16.dtype == torch.bfloat16 and (e16.double() - e64).abs().max() < 0.1 * e64.abs().max()
    l16, l64 = ref16(IDS, e16, STARTS), refs[variant](IDS, e64, STARTS)
    assert l16.dtype == torch.float32
    assert (l16.double() - l64).abs().max() < 0.15 * l64.abs().max()


def test_image_embed_formats_and_errors(refs):
    ref = refs["7b-240728"]
    img = images(3, 4)
    a = ref(IDS, img, STARTS)
    b = ref(IDS, [img[0].reshape(P, 64), img[1:].reshape(2 * P, 64)], STARTS)     # a cut image's [k*P, H]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="visual rows"):
        ref(IDS, img[:2], STARTS)
    with pytest.raises(ValueError, match="increasing"):
        ref(IDS, img, [6, 6, 27])
    with pytest.raises(ValueError, match="past the end"):
        ref(IDS, img, [6, 15, 40])
    with pytest.raises(ValueError, match="together"):
        ref(IDS, img, None)


def test_media_offset_conversions():
    T = 40
    rows = torch.tensor([[0, sum(s < i for s in STARTS)] for i in range(T)])        # 240728/241014 format
    assert starts_from_media_offset(rows[None]) == STARTS
    assert starts_from_media_offset(rows) == STARTS
    assert starts_from_media_offset([torch.tensor(STARTS)]) == STARTS                 # 241101 format
    assert starts_from_media_offset(STARTS) == STARTS
    assert starts_from_media_offset(torch.tensor([[0, -1000000]] * T)[None]) == []     # no image
    bad = rows.clone()
    bad[20, 1] = 3
    with pytest.raises(ValueError, match="grow by at most one"):
        starts_from_media_offset(bad)
    assert find_image_starts([1, 27, 91, 5, 91, 29, 2, 27, 91, 5, 91, 29], [27, 91, 5, 91, 29]) == [1, 7]


# ------------------------------------------------------------------------------------------- end to end

def _preprocess(img, variant):
    """The runtime's preprocessing with the settings owl-export writes into decoder.gguf."""
    from owl_cpp.families.owl3.image_config import ImagePreprocessing
    from owl_cpp.families.owl3.preprocess import preprocess_image
    from owl_export.owl3.convert import preprocessing_metadata
    meta = preprocessing_metadata(variant.image_size, variant.cut_template)
    return preprocess_image(img, ImagePreprocessing.from_metadata(meta))


@pytest.mark.parametrize("variant", ["7b-240728", "7b-241101"])
def test_end_to_end_cut_image(dirs, variant):
    """Image -> preprocess (cut) -> vision -> prompt chunks -> placeholders -> logits and greedy tokens."""
    import numpy as np
    from tokenizers import Tokenizer

    ref = Owl3Reference.from_pretrained(dirs[variant])                 # float32, as exported
    gen = ref.variant
    img = (np.arange(20 * 50 * 3).reshape(20, 50, 3) * 7 % 256).astype(np.uint8)  # wide: 1 x 3 or so
    out = _preprocess(img, gen)
    assert out.pixels.shape == (out.num_views, 3, gen.image_size, gen.image_size)
    embeds = ref.encode_images(torch.from_numpy(out.pixels))
    assert embeds.shape == (out.num_views, P, 64)

    tok = Tokenizer.from_file(str(dirs[variant] / "tokenizer.json"))
    text = ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n"
            f"{out.prompt}What is it?<|im_end|>\n<|im_start|>assistant\n")           # §6.1 canonical prompt
    chunks = [c for c in re.split(r"(<\|image\|>)", text) if c]        # §6.1: a placeholder is its own chunk
    ids = [i for c in chunks for i in tok.encode(c).ids]
    starts = find_image_starts(ids, tok.encode("<|image|>").ids)
    assert len(starts) == out.num_views == out.grid[0] * out.grid[1] + 1
    logits = ref(ids, embeds, starts)
    assert logits.shape == (len(ids), ref.config.vocab_size) and torch.isfinite(logits).all()
    assert (logits[-1] - ref(ids)[-1]).abs().max() > 1e-3              # the image matters
    assert len(ref.greedy(ids, 2, embeds, starts)) == 2
