"""mPLUG-Owl2 / mPLUG-Owl2.1 / mPLUG-Owl (v1) vision path: the PyTorch reference (owl_export/owl2/vision.py)
against a NumPy implementation written here from docs/owl2.md A3, A4, PART B 5 and PART C alone, the
abstractor's sin-cos tables against their formula, Owl2.1's bicubic position resize against PyTorch's definition,
and vision.onnx (fp32 / fp16 / int8, dynamic batch, metadata, bad checkpoints).

The NumPy side runs in float64 and shares no code with the reference; only the checkpoint reader and the
config parser are common. Each documented quirk it encodes (per-head interleaved QKV, the residual being the
NORMED query, the 1e-5 abstractor norms against the config eps elsewhere, column-then-row positions, and for
Owl2.1 the erf GELU and the bicubic's A = -0.75 / align_corners=False) is shown to matter: flipping it moves the
result far outside the tolerance (test_each_quirk_is_detected).
"""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from owl_export.checkpoint import CheckpointError, open_weights  # noqa: E402
from owl_export.onnx_common import VisionCheckError  # noqa: E402
from owl_export.owl2 import onnx_export  # noqa: E402
from owl_export.owl2.config import Owl2Config  # noqa: E402
from owl_export.owl2.fixtures import make_tiny_owl2_checkpoint  # noqa: E402
from owl_export.owl2.onnx_export import compare, export_owl2_vision_onnx, random_pixels  # noqa: E402
from owl_export.owl2.vision import (Owl2VisionReference, resized_position_table,  # noqa: E402
                                    sincos_position_tables)

VARIANTS = ["owl2", "owl2_1", "owl1"]
# docs/owl2.md A6 / PART B / PART C: where the vision tensors live in each published layout
PREFIXES = {"owl2": ("model.vision_model.", "model.visual_abstractor.", "model.visual_abstractor.query_embeds"),
            "owl2_1": ("transformer.vision_model.", "transformer.visual_abstractor.",
                       "transformer.visual_abstractor.query_embeds"),
            "owl1": ("vision_model.", "abstractor.", "query_tokens")}
TOKENS = {"owl2": 1025, "owl2_1": 1024, "owl1": 257}       # what the ViT hands the abstractor (CLS +) patches


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("owl2-ckpt")
    seeds = {"owl2": 3, "owl1": 4, "owl2_1": 5}                 # owl2 / owl1 keep the seeds they had before 2.1
    dirs = {v: make_tiny_owl2_checkpoint(root / v, v, seed=seeds[v]) for v in VARIANTS}
    return dirs.__getitem__


@pytest.fixture(scope="module")
def vision(tmp_path_factory, ckpt):
    """vision(variant, dtype, quant) -> (vision.onnx path, summary), built once."""
    out, cache = tmp_path_factory.mktemp("owl2-onnx"), {}

    def get(variant, dtype="fp32", quant="none"):
        key = (variant, dtype, quant)
        if key not in cache:
            path = out / f"{variant}-{dtype}-{quant}.onnx"
            cache[key] = path, export_owl2_vision_onnx(ckpt(variant), path, dtype=dtype, quant=quant)
        return cache[key]

    return get


def _vision_weights(variant, ckpt_dir) -> dict:
    """The vision/abstractor tensors of a checkpoint, as torch float32 (the reference's input)."""
    vp, ap, qt = PREFIXES[variant]
    return {k: t.float() for k, t in open_weights(ckpt_dir).items() if k.startswith((vp, ap)) or k == qt}


def _small_activations(variant, w: dict) -> dict:
    """The same weights scaled so that the inputs of each kind of LayerNorm have a variance near 1e-6, where
    an eps of 1e-5 and one of 1e-6 give clearly different results (at unit variance they differ by ~1e-6,
    below any fp32 tolerance)."""
    vp, ap, qt = PREFIXES[variant]
    w = dict(w)
    small = [vp + "embeddings.patch_embed.weight", vp + "embeddings.cls_token", vp + "embeddings.position_embedding",
             vp + "post_layernorm.weight", vp + "post_layernorm.bias", qt]          # pre_layernorm, normk, norm1
    layer0 = ap + "encoder.layers.0.crossattention."
    small += [layer0 + n for n in ("norm1.weight", "norm1.bias", "output.out_proj.weight", "output.out_proj.bias",
                                   "output.mlp.w3.weight", "output.mlp.w3.bias")]    # norm2, ffn_ln
    for name in small:
        if name in w:                                      # Owl2.1 has no cls_token
            w[name] = w[name] * 1e-3
    return w


# ------------------------------------------------------------------------------------------- NumPy, from the doc

def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sincos(dim, pos):
    """A4: w_k = 1/10000^(k/(dim/2)), row = [sin(p w_0..), cos(p w_0..)]."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2) / (dim / 2))
    a = np.outer(np.asarray(pos, np.float64), omega)
    return np.concatenate([np.sin(a), np.cos(a)], axis=1)


def _cubic(d, A):
    """PyTorch's cubic convolution kernel (upsample_bicubic2d: cubic_convolution1/2) at distance d >= 0."""
    if d <= 1:
        return ((A + 2) * d - (A + 3)) * d * d + 1
    if d < 2:
        return ((A * d - 5 * A) * d + 8 * A) * d - 4 * A
    return 0.0


def _bicubic_matrix(n_in, n_out, A=-0.75, align_corners=False):
    """[n_out, n_in] weights of one axis of torch bicubic: source x = (i + 0.5) * n_in / n_out - 0.5
    (align_corners=False; True: i * (n_in - 1) / (n_out - 1)), NOT clamped at 0; taps floor(x)-1 .. floor(x)+2
    with weights cubic(|x - tap|), each tap index clamped into [0, n_in - 1] (replicated borders)."""
    M = np.zeros((n_out, n_in))
    for i in range(n_out):
        if align_corners:
            x = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            x = (i + 0.5) * n_in / n_out - 0.5
        x0 = int(np.floor(x))
        for tap in range(x0 - 1, x0 + 3):
            M[i, min(max(tap, 0), n_in - 1)] += _cubic(abs(x - tap), A)
    return M


def numpy_resize_table(table, grid, A=-0.75, align_corners=False):
    """PART B 5, get_abs_pos: [s*s, D] as an s x s image (token = row*s + col) -> bicubic -> [grid*grid, D]."""
    t = np.asarray(table, np.float64)
    s = int(round(np.sqrt(t.shape[0])))
    if s == grid:
        return t
    M = _bicubic_matrix(s, grid, A, align_corners)
    img = t.reshape(s, s, -1)
    return np.einsum("ia,jb,abd->ijd", M, M, img).reshape(grid * grid, -1)


def _gelu_erf(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _tables(dim, n_queries, grid, rows_first=False):
    q_pos = _sincos(dim, np.arange(n_queries))
    k_pos = np.zeros((1 + grid * grid, dim))
    for i in range(grid):                        # grid row i, column j -> token 1 + i*grid + j
        for j in range(grid):
            first, second = (i, j) if rows_first else (j, i)
            k_pos[1 + i * grid + j] = np.concatenate([_sincos(dim // 2, [first])[0], _sincos(dim // 2, [second])[0]])
    return q_pos, k_pos


def numpy_owl2_vision(W: dict, cfg: Owl2Config, pixels: np.ndarray, quirks=()):
    """docs/owl2.md A3 + A4 (+ PART C for owl1) in float64. Returns (ViT output, image embeddings).

    quirks deliberately break one documented detail: "qkv_blocks" (q|k|v as three blocks, CLIP style),
    "residual_h" (the abstractor residual on the incoming h), "abstractor_eps" (config eps for
    norm1/normk/norm2), "vit_eps" (1e-5 in the ViT), "ffn_eps" (1e-5 for ffn_ln), "rows_first" (k table
    row features first), "other_gelu" (erf GELU where quick_gelu is configured and vice versa), and for
    Owl2.1's position resize "bicubic_a05" (Pillow's A = -0.5) and "align_corners" (align_corners=True)."""
    vp, ap, qt = PREFIXES[cfg.variant]
    W = {k: v.double().numpy() for k, v in W.items()}
    vc, ac = cfg.vision, cfg.abstractor
    D, nh, P, S = vc.hidden_size, vc.num_heads, vc.patch_size, vc.image_size
    G, hd = S // P, vc.hidden_size // vc.num_heads
    vit_eps = 1e-5 if "vit_eps" in quirks else vc.layer_norm_eps
    x = pixels.astype(np.float64)
    N = x.shape[0]

    # A3.1-3: patches row by row (token = row*G + col), conv without bias, CLS first, learned positions, pre-LN
    patches = x.reshape(N, 3, G, P, G, P).transpose(0, 2, 4, 1, 3, 5).reshape(N, G * G, 3 * P * P)
    x = patches @ W[vp + "embeddings.patch_embed.weight"].reshape(D, -1).T
    if vc.use_cls_token:
        cls = np.broadcast_to(W[vp + "embeddings.cls_token"], (N, 1, D))
        x = np.concatenate([cls, x], axis=1) + W[vp + "embeddings.position_embedding"][0]
    else:                       # PART B 5: no CLS; the [256, D] table resized bicubically to the G x G grid
        x = x + numpy_resize_table(W[vp + "embeddings.position_embedding"], G,
                                   A=-0.5 if "bicubic_a05" in quirks else -0.75,
                                   align_corners="align_corners" in quirks)
    x = _ln(x, W[vp + "embeddings.pre_layernorm.weight"], W[vp + "embeddings.pre_layernorm.bias"], vit_eps)
    T = x.shape[1]
    for e in range(vc.num_layers):                               # A3.4
        p = vp + f"encoder.layers.{e}."
        h = _ln(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"], vit_eps)
        qkv = h @ W[p + "self_attn.query_key_value.weight"].T + W[p + "self_attn.query_key_value.bias"]
        if "qkv_blocks" in quirks:
            q, k, v = (t.reshape(N, T, nh, hd) for t in np.split(qkv, 3, axis=-1))
        else:                                                    # feature = head*3*hd + {q,k,v}*hd + d
            qkv = qkv.reshape(N, T, nh, 3, hd)
            q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # [N, heads, T, hd]; matmul, not einsum: BLAS
        a = _softmax((q @ k.transpose(0, 1, 3, 2)) * hd ** -0.5)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(N, T, D)
        x = x + o @ W[p + "self_attn.dense.weight"].T + W[p + "self_attn.dense.bias"]
        m = _ln(x, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"], vit_eps)
        f = m @ W[p + "mlp.fc1.weight"].T + W[p + "mlp.fc1.bias"]
        if (vc.hidden_act == "gelu") != ("other_gelu" in quirks):
            f = _gelu_erf(f)                                     # ACT2FN["gelu"]: erf
        else:
            f = f / (1.0 + np.exp(-1.702 * f))                   # quick_gelu
        x = x + f @ W[p + "mlp.fc2.weight"].T + W[p + "mlp.fc2.bias"]
    V = _ln(x, W[vp + "post_layernorm.weight"], W[vp + "post_layernorm.bias"], vit_eps)   # A3.5

    # A4 (owl2) / PART C (owl1: no positions, queries at the top level)
    Q, A, ah = ac.num_queries, ac.hidden_size, ac.num_heads
    ahd = A // ah
    neps = ac.layer_norm_eps if "abstractor_eps" in quirks else 1e-5
    feps = 1e-5 if "ffn_eps" in quirks else ac.layer_norm_eps
    if cfg.variant in ("owl2", "owl2_1"):
        q_pos, k_pos = _tables(A, Q, G, rows_first="rows_first" in quirks)
        if cfg.variant == "owl2_1":
            k_pos = k_pos[1:]                                    # PART B 5: no zero CLS row
        qk_pos = np.concatenate([q_pos, k_pos])
    h = np.broadcast_to(W[qt], (N, Q, A))

    def heads(t):
        return t.reshape(N, t.shape[1], ah, ahd)

    for layer in range(ac.num_layers):
        p = ap + f"encoder.layers.{layer}.crossattention."
        qn = _ln(h, W[p + "norm1.weight"], W[p + "norm1.bias"], neps)
        kv = np.concatenate([qn, _ln(V, W[p + "normk.weight"], W[p + "normk.bias"], neps)], axis=1)
        q_in, k_in = (qn + q_pos, kv + qk_pos) if cfg.variant != "owl1" else (qn, kv)
        q = heads(q_in @ W[p + "attention.query.weight"].T + W[p + "attention.query.bias"])
        k = heads(k_in @ W[p + "attention.key.weight"].T + W[p + "attention.key.bias"])
        v = heads(kv @ W[p + "attention.value.weight"].T + W[p + "attention.value.bias"])
        a = _softmax(np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(ahd))
        o = np.einsum("nhqk,nkhd->nqhd", a, v).reshape(N, Q, A)
        base = h if "residual_h" in quirks else qn
        h = base + o @ W[p + "output.out_proj.weight"].T + W[p + "output.out_proj.bias"]
        m = _ln(h, W[p + "output.norm2.weight"], W[p + "output.norm2.bias"], neps)
        g1 = m @ W[p + "output.mlp.w1.weight"].T + W[p + "output.mlp.w1.bias"]
        g3 = m @ W[p + "output.mlp.w3.weight"].T + W[p + "output.mlp.w3.bias"]
        g = _ln(g1 / (1.0 + np.exp(-g1)) * g3, W[p + "output.mlp.ffn_ln.weight"], W[p + "output.mlp.ffn_ln.bias"],
                feps)
        h = h + g @ W[p + "output.mlp.w2.weight"].T + W[p + "output.mlp.w2.bias"]
    out = h @ W[ap + "visual_fc.weight"].T + W[ap + "visual_fc.bias"]
    eos = np.broadcast_to(W[ap + "vit_eos"], (N, 1, out.shape[-1]))
    return V, np.concatenate([out, eos], axis=1)


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.fixture(scope="module")
def setups(ckpt):
    """setups(variant, small) -> (cfg, weights, reference, pixels [2,3,S,S]), built once."""
    cache = {}

    def get(variant, small=False):
        if (variant, small) not in cache:
            cfg = Owl2Config.from_checkpoint(ckpt(variant))
            w = _vision_weights(variant, ckpt(variant))
            if small:
                w = _small_activations(variant, w)
            cache[variant, small] = cfg, w, Owl2VisionReference(w, cfg), random_pixels(cfg, 2, seed=7)
        return cache[variant, small]

    return get


# ------------------------------------------------------------------------------------------- reference vs NumPy

@pytest.mark.parametrize("small", [False, True], ids=["plain", "small-activations"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_matches_numpy_from_the_doc(setups, variant, small):
    cfg, w, ref, pixels = setups(variant, small)
    V_np, out_np = numpy_owl2_vision(w, cfg, pixels)
    px = torch.from_numpy(pixels)
    V = ref.vit(px)
    T = TOKENS[variant]
    assert V.shape == (2, T, cfg.vision.hidden_size) and T == cfg.vision.num_tokens
    assert _rel(V.numpy(), V_np) < 1e-5
    queries = ref.abstractor(V)
    assert queries.shape == (2, cfg.abstractor.num_queries, cfg.abstractor.hidden_size)
    out = ref(pixels)
    assert out.dtype == torch.float32 and out.shape == (2, cfg.image_tokens, cfg.text.hidden_size)
    assert _rel(out.numpy(), out_np) < 1e-5
    # the last row is vit_eos itself, the same for every image
    eos = w[PREFIXES[variant][1] + "vit_eos"].numpy().reshape(-1)
    assert np.array_equal(out[0, -1].numpy(), eos) and np.array_equal(out[1, -1].numpy(), eos)


QUIRKS = [("owl2", False, "qkv_blocks"), ("owl1", False, "qkv_blocks"), ("owl2", False, "residual_h"),
          ("owl1", False, "residual_h"), ("owl2", False, "rows_first"), ("owl2", True, "abstractor_eps"),
          ("owl1", True, "abstractor_eps"), ("owl2", True, "vit_eps"), ("owl1", True, "vit_eps"),
          ("owl2", True, "ffn_eps"), ("owl1", True, "ffn_eps"), ("owl2", False, "other_gelu"),
          ("owl2_1", False, "qkv_blocks"), ("owl2_1", False, "residual_h"), ("owl2_1", False, "rows_first"),
          ("owl2_1", False, "other_gelu"), ("owl2_1", False, "bicubic_a05"), ("owl2_1", False, "align_corners"),
          ("owl2_1", True, "abstractor_eps"), ("owl2_1", True, "vit_eps"), ("owl2_1", True, "ffn_eps")]


_REFERENCE_OUT: dict = {}


@pytest.mark.parametrize("variant,small,quirk", QUIRKS)
def test_each_quirk_is_detected(setups, variant, small, quirk):
    """The comparison above has teeth: getting any one documented detail wrong misses by far more than 1e-5."""
    cfg, w, ref, pixels = setups(variant, small)
    _, wrong = numpy_owl2_vision(w, cfg, pixels, quirks=(quirk,))
    key = (variant, small)
    if key not in _REFERENCE_OUT:                                # one reference forward per setup
        _REFERENCE_OUT[key] = ref(pixels).numpy()
    assert _rel(_REFERENCE_OUT[key], wrong) > 1e-3, quirk


def test_input_size_is_exact(setups):
    cfg, _, ref, _ = setups("owl1")
    with pytest.raises(ValueError, match=r"\[N, 3, 224, 224\]"):
        ref(np.zeros((1, 3, 448, 448), np.float32))


# ------------------------------------------------------------------------------------------- sin-cos tables

def test_sincos_tables_follow_the_formula():
    D, Q, G = 1024, 64, 32                                      # the real Owl2 sizes
    q_pos, k_pos = (t.numpy() for t in sincos_position_tables(D, Q, G))
    assert q_pos.dtype == np.float32 and q_pos.shape == (Q, D) and k_pos.shape == (1 + G * G, D)
    assert not k_pos[0].any()                                    # the CLS row is zeros
    want_q, want_k = _tables(D, Q, G)
    # float32 arithmetic, as the official code: the argument p*w (p < 64) is rounded to ~4e-6
    assert np.abs(q_pos - want_q).max() < 1e-5
    assert np.abs(k_pos - want_k).max() < 1e-5
    # spelled out for one patch: grid row 0, column 5 -> token 6 = [sincos(512, 5), sincos(512, 0)]
    w = 1.0 / 10000.0 ** (np.arange(256) / 256)
    np.testing.assert_allclose(k_pos[6], np.concatenate([np.sin(5 * w), np.cos(5 * w), np.zeros(256), np.ones(256)]),
                               atol=1e-6)
    # rows first would be a different table, far beyond the tolerance
    _, rows_first = _tables(D, Q, G, rows_first=True)
    assert np.abs(k_pos - rows_first).max() > 0.5
    # without the CLS row: the grid only
    _, k_nocls = sincos_position_tables(D, Q, G, cls_token=False)
    assert np.array_equal(k_nocls.numpy(), k_pos[1:])


# ------------------------------------------------------------------------------------------- Owl2.1's position resize

def _torch_bicubic(table: np.ndarray, grid: int, align_corners=False) -> np.ndarray:
    s = int(round(math.sqrt(table.shape[0])))
    img = torch.from_numpy(np.ascontiguousarray(table, np.float32)).reshape(1, s, s, -1).permute(0, 3, 1, 2)
    out = torch.nn.functional.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=align_corners)
    return out.permute(0, 2, 3, 1).reshape(grid * grid, -1).numpy()


def test_owl21_config_of_the_fixture(setups):
    cfg, w, ref, _ = setups("owl2_1")
    assert (cfg.variant, cfg.vision.use_cls_token, cfg.vision.hidden_act, cfg.abstractor.cls_token) == \
        ("owl2_1", False, "gelu", False)
    assert cfg.vision.grid == 32 and cfg.vision.num_tokens == 1024
    assert cfg.image_tokens == cfg.abstractor.num_queries + 1
    assert tuple(w["transformer.vision_model.embeddings.position_embedding"].shape) == (256, cfg.vision.hidden_size)
    # the abstractor's key table: the queries' rows, then grid*grid patch rows and no zero CLS row
    assert ref.qk_pos.shape == (cfg.abstractor.num_queries + 1024, cfg.abstractor.hidden_size)
    assert ref.v_pos_grid.shape == (1024, cfg.vision.hidden_size) and ref.v_pos_grid.dtype == torch.float32


@pytest.mark.parametrize("src,grid", [(16, 32), (5, 13), (16, 7), (3, 4)])
def test_numpy_bicubic_is_torch_bicubic(src, grid):
    """The NumPy resize, written from PyTorch's definition (A = -0.75, source (i + 0.5) * in/out - 0.5 unclamped,
    taps clamped to the border), is what F.interpolate(bicubic, align_corners=False) computes, up and down."""
    table = np.random.default_rng(src * 100 + grid).standard_normal((src * src, 6))
    want = _torch_bicubic(table, grid)
    got = numpy_resize_table(table, grid)
    assert got.shape == (grid * grid, 6)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    np.testing.assert_allclose(resized_position_table(torch.from_numpy(table), grid).numpy(), want, rtol=0, atol=1e-6)
    # and the flipped definitions are different functions
    assert np.abs(numpy_resize_table(table, grid, A=-0.5) - want).max() > 1e-2
    assert np.abs(numpy_resize_table(table, grid, align_corners=True) - want).max() > 1e-2
    np.testing.assert_allclose(numpy_resize_table(table, grid, align_corners=True),
                               _torch_bicubic(table, grid, align_corners=True), atol=1e-5)


def test_reference_resized_table_is_get_abs_pos(setups):
    """The buffer the graph adds: the fixture's [256, D] table resized 16x16 -> 32x32, against NumPy float64 and
    against F.interpolate; Pillow's A = -0.5 or align_corners=True would be far off."""
    cfg, w, ref, _ = setups("owl2_1")
    table = w["transformer.vision_model.embeddings.position_embedding"].numpy()
    got = ref.v_pos_grid.numpy()
    want = numpy_resize_table(table, 32)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-6, err                                       # fp32 vs float64: ~1e-7
    assert np.array_equal(got, _torch_bicubic(table, 32))
    for wrong in (numpy_resize_table(table, 32, A=-0.5), numpy_resize_table(table, 32, align_corners=True)):
        assert np.abs(got - wrong).max() / np.abs(want).max() > 1e-2
    # corner patch (0, 0): source -0.25 in both axes, taps -2..1 clamped to 0,0,0,1
    m = _bicubic_matrix(16, 32)[0]
    assert np.allclose(m[:2], [_cubic(1.75, -0.75) + _cubic(0.75, -0.75) + _cubic(0.25, -0.75), _cubic(1.25, -0.75)])


def test_resize_keeps_a_same_size_table_and_refuses_non_square():
    table = torch.randn(256, 4)
    assert torch.equal(resized_position_table(table, 16), table)     # get_abs_pos returns it untouched
    with pytest.raises(ValueError, match="255 rows, not a square number"):
        resized_position_table(torch.randn(255, 4), 32)
    with pytest.raises(ValueError, match=r"must be \[L, D\]"):
        resized_position_table(torch.randn(1, 256, 4), 32)


def test_sincos_tables_need_a_width_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_tables(30, 4, 2)


# ------------------------------------------------------------------------------------------- vision.onnx

@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_fp32_matches_reference_dynamic_batch(vision, ckpt, setups, variant):
    path, summary = vision(variant)
    cfg, _, ref, _ = setups(variant)
    S, QE, H = cfg.vision.image_size, cfg.image_tokens, cfg.text.hidden_size
    assert summary["rel_err"] < 1e-5 and summary["check_batch"] == 2                 # measured ~5e-7
    assert (summary["variant"], summary["image_tokens"], summary["embedding_length"]) == (variant, QE, H)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("pixel_values", "tensor(float)", [3, S, S])
    assert (out.name, out.type, out.shape[1:]) == ("image_embeds", "tensor(float)", [QE, H])
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)         # N is a dynamic axis
    three = random_pixels(cfg, 3, seed=11)
    got3 = sess.run(None, {"pixel_values": three})[0]
    assert got3.shape == (3, QE, H)
    assert compare(got3, ref(three).numpy())["rel_err"] < 1e-5
    for i in range(3):                         # one image at a time gives the same rows as the batch of three
        got1 = sess.run(None, {"pixel_values": three[i:i + 1]})[0]
        assert got1.shape == (1, QE, H)
        assert compare(got1[0], got3[i])["rel_err"] < 1e-6, i
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    assert meta["owl2.variant"] == variant and meta["owl2.embedding_length"] == str(H)
    assert meta["owl2.vision.image_size"] == str(S) and meta["owl2.image_tokens"] == str(QE)
    assert meta["owl2.vision.dtype"] == "fp32" and meta["owl2.vision.quant"] == "none"


def test_onnx_owl21_adds_a_constant_table(vision, setups):
    """The resized position table is an initializer of the graph, computed at export: no Resize op, no
    [256, D] table."""
    path, summary = vision("owl2_1")
    cfg, _, ref, _ = setups("owl2_1")
    model = onnx.load(str(path))
    assert "Resize" not in {n.op_type for n in model.graph.node}
    D = cfg.vision.hidden_size
    shapes = {tuple(i.dims) for i in model.graph.initializer}
    assert (1024, D) in shapes and (256, D) not in shapes and (1, 1, D) not in shapes    # no cls_token either
    table = next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if tuple(i.dims) == (1024, D))
    assert np.array_equal(table, ref.v_pos_grid.numpy())
    assert "Erf" in {n.op_type for n in model.graph.node}                             # the exact GELU


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_fp16_weights_float32_interface(vision, setups, variant):
    path, summary = vision(variant, "fp16")
    model = onnx.load(str(path))
    init_types = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in init_types and onnx.TensorProto.FLOAT not in init_types
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert path.stat().st_size < 0.6 * vision(variant)[0].stat().st_size
    # measured ~1e-3 relative, cosine 0.9999994 (fp16 rounding through 2+2 layers)
    assert summary["rel_err"] < 1e-2 and summary["cosine"] > 0.9999
    cfg, _, ref, _ = setups(variant)
    pixels = random_pixels(cfg, 1, seed=12)
    err = compare(onnx_export.run_onnx(path, pixels), ref(pixels).numpy())
    assert 0 < err["rel_err"] < 1e-2 and err["cosine"] > 0.9999, err
    assert {p.key: p.value for p in model.metadata_props}["owl2.vision.dtype"] == "fp16"


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_int8_is_quantized_and_close(vision, setups, variant):
    path, summary = vision(variant, "fp32", "int8")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert path.stat().st_size < vision(variant)[0].stat().st_size
    cfg, _, ref, _ = setups(variant)
    pixels = random_pixels(cfg, 2, seed=13)
    err = compare(onnx_export.run_onnx(path, pixels), ref(pixels).numpy())
    # measured ~2.5% relative, cosine 0.9997 (dynamic per-tensor int8); the bounds leave room for other CPUs
    assert err["cosine"] > 0.995 and 1e-4 < err["rel_err"] < 0.1, err
    assert summary["cosine"] > 0.995 and 1e-4 < summary["rel_err"] < 0.1
    assert {p.key: p.value for p in model.metadata_props}["owl2.vision.quant"] == "dynamic"   # "int8" is the quant's old name


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_static_int8_is_qdq_and_close(vision, setups, variant):
    """Static int8 (QDQ), calibrated on synthetic pictures through the Owl2 preprocessing: close to the fp32
    reference on other synthetic pictures (a broken calibration lands far below: tests/test_vision_quant.py)."""
    path, summary = vision(variant, "fp32", "static")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    cfg, _, ref, _ = setups(variant)
    views = onnx_export.calibration_views(cfg, 3, first_seed=300)
    cos = [compare(onnx_export.run_onnx(path, views[i:i + 1]), ref(views[i:i + 1]).numpy())["cosine"]
           for i in range(len(views))]
    assert min(cos) > 0.997 and summary["views_cosine_min"] > 0.997, (cos, summary)
    assert {p.key: p.value for p in model.metadata_props}["owl2.vision.quant"] == "static"


def test_onnx_check_failure_leaves_no_file(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", 0.0)     # no graph can pass: the failure path runs
    with pytest.raises(VisionCheckError, match="relative error"):
        export_owl2_vision_onnx(ckpt("owl1"), tmp_path / "vision.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_options_are_checked(ckpt, tmp_path):
    with pytest.raises(ValueError, match="int8"):
        export_owl2_vision_onnx(ckpt("owl1"), tmp_path / "v.onnx", dtype="fp16", quant="int8")
    with pytest.raises(ValueError, match="dtype"):
        export_owl2_vision_onnx(ckpt("owl1"), tmp_path / "v.onnx", dtype="int4")


# ------------------------------------------------------------------------------------------- bad checkpoints

def _owl1_with(src, dst, edit):
    """Copy of the (single-file) owl1 checkpoint with edit(weights dict) applied."""
    shutil.copytree(src, dst)
    w = torch.load(dst / "pytorch_model.bin", weights_only=True)
    edit(w)
    torch.save(w, dst / "pytorch_model.bin")
    return dst


def test_wrong_shape_names_the_tensor(ckpt, tmp_path):
    name = "vision_model.encoder.layers.1.self_attn.query_key_value.weight"
    bad = _owl1_with(ckpt("owl1"), tmp_path / "bad", lambda w: w.__setitem__(name, w[name][:, :-1].clone()))
    out = tmp_path / "out" / "vision.onnx"
    with pytest.raises(CheckpointError, match=r"query_key_value\.weight: shape \(96, 31\) does not match") as e:
        export_owl2_vision_onnx(bad, out)
    assert name in str(e.value) and "(96, 32)" in str(e.value)
    assert not out.exists()


def test_missing_tensor_names_it(ckpt, tmp_path):
    name = "abstractor.encoder.layers.1.crossattention.normk.bias"
    bad = _owl1_with(ckpt("owl1"), tmp_path / "bad", lambda w: w.pop(name))
    with pytest.raises(CheckpointError, match="missing tensor") as e:
        export_owl2_vision_onnx(bad, tmp_path / "vision.onnx")
    assert repr(name) in str(e.value)


def _sharded_with(src, dst, name, edit):
    """Copy of a sharded checkpoint with edit(weights of the shard holding `name`) applied."""
    shutil.copytree(src, dst)
    index = json.loads((dst / "pytorch_model.bin.index.json").read_text())
    shard = dst / index["weight_map"][name]
    w = torch.load(shard, weights_only=True)
    edit(w)
    torch.save(w, shard)
    return dst


@pytest.mark.parametrize("shape,why", [((1, 256, 32), "Owl2's 3-D layout"), ((255, 32), "not 16x16"),
                                       ((1024, 32), "already at the grid"), ((256, 31), "wrong width")])
def test_owl21_wrong_position_table_is_refused_by_name(ckpt, tmp_path, shape, why):
    """Owl2.1's table is [256, D] (PART B 5: the official module holds nn.Parameter(256, D)); anything else is
    refused by name before tracing."""
    name = "transformer.vision_model.embeddings.position_embedding"
    bad = _sharded_with(ckpt("owl2_1"), tmp_path / "bad", name,
                        lambda w: w.__setitem__(name, torch.randn(*shape)))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + r": shape " +
                       re.escape(str(shape)) + r" does not match the config's \(256, 32\)"):
        export_owl2_vision_onnx(bad, tmp_path / "vision.onnx")
    assert not (tmp_path / "vision.onnx").exists()


def test_owl21_missing_position_table_names_it(ckpt, tmp_path):
    name = "transformer.vision_model.embeddings.position_embedding"
    bad = _sharded_with(ckpt("owl2_1"), tmp_path / "bad", name, lambda w: w.pop(name))
    index = json.loads((bad / "pytorch_model.bin.index.json").read_text())
    del index["weight_map"][name]                              # gone from the index too, as in a real checkpoint
    (bad / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"missing tensor .*mPLUG-Owl2\.1") as e:
        export_owl2_vision_onnx(bad, tmp_path / "vision.onnx")
    assert repr(name) in str(e.value)


def test_wrong_shape_in_a_sharded_owl2_checkpoint(ckpt, tmp_path):
    """Owl2's layout: the vision tensors sit in the last of the per-layer shards (docs/owl2.md A6). A position
    table without the CLS row (1024 rows, Owl2.1-like) is refused by name, before anything is traced."""
    bad = tmp_path / "bad"
    shutil.copytree(ckpt("owl2"), bad)
    index = json.loads((bad / "pytorch_model.bin.index.json").read_text())
    name = "model.vision_model.embeddings.position_embedding"
    shard = bad / index["weight_map"][name]
    w = torch.load(shard, weights_only=True)
    w[name] = w[name][:, 1:].clone()
    torch.save(w, shard)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + r": shape \(1, 1024, 32\) does not match "
                                              r"the config's \(1, 1025, 32\)"):
        export_owl2_vision_onnx(bad, tmp_path / "vision.onnx")
    assert not (tmp_path / "vision.onnx").exists()
