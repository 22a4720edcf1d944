"""owl_export.quant_mix: the per-tensor types of the K-quant mixes, as llama.cpp's llama-quantize picks them.

The expected mixes are written out by layer (not recomputed with the module's own helpers). With -m llama_cpp
and OWL_LLAMA_PYTHON set, the plan is also held against llama.cpp's own choice on the same F16 files
(llama_model_quantize, then the types it wrote), and our requantization of those files is byte-identical.
"""
from __future__ import annotations

import os
import subprocess
import sys

import gguf
import pytest
from gguf import GGMLQuantizationType as QT

from owl_export.quant_mix import MIXES, plan_mix
from owl_export.quantize import check_quant, plan_qtypes, tensor_qtype


def layout(n_layer: int, hidden: int = 256, ffn: int = 512, vocab: int = 1000, kv: int = 256, *,
           tied: bool = False, qkv_bias: bool = False, owl2_image: bool = False, owl3_hyper=()):
    """(GGUF name, numpy shape) of a llama/qwen2 decoder in convert_text's order (+ Owl2/Owl3 extras)."""
    t = [("token_embd.weight", (vocab, hidden))]
    for i in range(n_layer):
        b = f"blk.{i}."
        t += [(b + "attn_norm.weight", (hidden,)), (b + "attn_q.weight", (hidden, hidden)),
              (b + "attn_k.weight", (kv, hidden)), (b + "attn_v.weight", (kv, hidden))]
        if qkv_bias:
            t += [(b + "attn_q.bias", (hidden,)), (b + "attn_k.bias", (kv,)), (b + "attn_v.bias", (kv,))]
        t += [(b + "attn_output.weight", (hidden, hidden)), (b + "ffn_norm.weight", (hidden,)),
              (b + "ffn_gate.weight", (ffn, hidden)), (b + "ffn_up.weight", (ffn, hidden)),
              (b + "ffn_down.weight", (hidden, ffn))]
        if owl2_image:
            t += [(b + "img.attn_norm.weight", (hidden,)), (b + "img.attn_k.weight", (kv, hidden)),
                  (b + "img.attn_v.weight", (kv, hidden)), (b + "img.ffn_norm.weight", (hidden,))]
        if i in owl3_hyper:
            t += [(b + "hyper_kv.weight", (2 * kv, hidden)), (b + "hyper_kv.bias", (2 * kv,))]
    t += [("output_norm.weight", (hidden,))]
    if not tied:
        t += [("output.weight", (vocab, hidden))]
    return t


def expected(tensors, default, *, attn_v=None, ffn_down=None, attn_output=None, output=QT.Q6_K, token_embd=None):
    """The plan spelled out: dicts layer -> type for the special roles, everything else `default`."""
    want = {}
    for name, shape in tensors:
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        if len(shape) == 1:
            want[name] = QT.F32
        elif name == "output.weight":
            want[name] = output
        elif name == "token_embd.weight":
            want[name] = token_embd or default
        elif name.endswith(".attn_v.weight") and attn_v:
            want[name] = attn_v.get(layer, default)
        elif name.endswith(".ffn_down.weight") and ffn_down:
            want[name] = ffn_down.get(layer, default)
        elif name.endswith(".attn_output.weight") and attn_output:
            want[name] = attn_output
        else:
            want[name] = default
    return want


LLAMA8 = layout(8)                                              # untied, 1 head per KV head
QWEN16 = layout(16, kv=64, tied=True, qkv_bias=True)            # tied, 4 heads per KV head
# llama.cpp's "more bits" layers: first and last eighth, every third between
MORE_BITS_8 = (0, 3, 6, 7)
MORE_BITS_16 = (0, 1, 4, 7, 10, 13, 14, 15)


def layers(which, qtype):
    return {i: qtype for i in which}


@pytest.mark.parametrize("quant, default", [("q4_k_m", QT.Q4_K), ("q5_k_m", QT.Q5_K)])
def test_k_m_mixes(quant, default):
    assert plan_mix(LLAMA8, quant) == expected(LLAMA8, default, attn_v=layers(MORE_BITS_8, QT.Q6_K),
                                               ffn_down=layers(MORE_BITS_8, QT.Q6_K))
    # tied embeddings: token_embd is the output matrix and gets its type
    assert plan_mix(QWEN16, quant, n_gqa=4) == expected(
        QWEN16, default, attn_v=layers(MORE_BITS_16, QT.Q6_K), ffn_down=layers(MORE_BITS_16, QT.Q6_K),
        token_embd=QT.Q6_K)


def test_q4_k_s():
    assert plan_mix(LLAMA8, "q4_k_s") == expected(LLAMA8, QT.Q4_K, attn_v=layers(range(4), QT.Q5_K),
                                                  ffn_down={0: QT.Q5_K})
    assert plan_mix(QWEN16, "q4_k_s", n_gqa=4) == expected(
        QWEN16, QT.Q4_K, attn_v=layers(range(4), QT.Q5_K), ffn_down={0: QT.Q5_K, 1: QT.Q5_K}, token_embd=QT.Q6_K)


def test_q3_k_m():
    attn_v = {i: QT.Q5_K if i < 2 else QT.Q4_K for i in range(16)}
    assert plan_mix(LLAMA8, "q3_k_m") == expected(LLAMA8, QT.Q3_K, attn_v=attn_v, attn_output=QT.Q4_K,
                                                  ffn_down=layers(range(8), QT.Q4_K))
    assert plan_mix(QWEN16, "q3_k_m", n_gqa=4) == expected(
        QWEN16, QT.Q3_K, attn_v=attn_v, attn_output=QT.Q4_K, token_embd=QT.Q6_K,
        ffn_down={0: QT.Q5_K, **layers(range(1, 16), QT.Q4_K)})


def test_q2_k_keeps_attn_v_in_q4_k_with_grouped_query_attention():
    common = dict(ffn_down=layers(range(16), QT.Q3_K), attn_output=QT.Q3_K)
    assert plan_mix(LLAMA8, "q2_k") == expected(LLAMA8, QT.Q2_K, attn_v=layers(range(8), QT.Q3_K), **common)
    assert plan_mix(QWEN16, "q2_k", n_gqa=4) == expected(QWEN16, QT.Q2_K, attn_v=layers(range(16), QT.Q4_K),
                                                         token_embd=QT.Q6_K, **common)


def test_q6_k():
    assert plan_mix(LLAMA8, "q6_k") == expected(LLAMA8, QT.Q6_K)


def test_fallbacks_when_rows_are_not_a_multiple_of_256():
    # hidden 64: every matrix but ffn_down (rows of 512) falls back; output to Q8_0, 48-wide rows to F16
    t = layout(8, hidden=64, kv=64) + [("blk.0.odd.weight", (64, 48))]
    for quant, small in [("q2_k", QT.Q4_0), ("q3_k_m", QT.Q4_0), ("q4_k_m", QT.Q5_0), ("q5_k_m", QT.Q5_1),
                         ("q6_k", QT.Q8_0)]:
        plan = plan_mix(t, quant)
        assert plan["output.weight"] == QT.Q8_0
        assert plan["blk.1.attn_q.weight"] == small, quant
        assert plan["blk.0.odd.weight"] == QT.F16
        assert plan["blk.1.ffn_down.weight"] == plan_mix(LLAMA8, quant)["blk.1.ffn_down.weight"]
    plan = plan_mix(t, "q4_k_m")
    assert plan["blk.0.attn_v.weight"] == QT.Q8_0          # Q6_K's fallback
    assert plan["blk.1.attn_v.weight"] == QT.Q5_0          # Q4_K's
    assert plan["blk.2.attn_k.weight"] == QT.Q5_0


def test_owl2_image_attn_v_counts_as_attn_v():
    """Owl2's image-branch V (blk.N.img.attn_v.weight) is an attn_v to llama.cpp's name match, so the 'more
    bits' rule runs over all 2L of them in file order (text then image per layer)."""
    t = layout(4, owl2_image=True)
    plan = plan_mix(t, "q4_k_m")
    v = [plan[f"blk.{i}.{p}attn_v.weight"] for i in range(4) for p in ("", "img.")]
    assert v == [QT.Q6_K, QT.Q4_K, QT.Q4_K, QT.Q6_K, QT.Q4_K, QT.Q4_K, QT.Q6_K, QT.Q6_K]
    assert plan["blk.0.img.attn_k.weight"] == QT.Q4_K and plan["blk.0.img.attn_norm.weight"] == QT.F32


def test_owl3_hyper_tensors_take_the_default():
    plan = plan_mix(layout(4, tied=True, qkv_bias=True, owl3_hyper=(1, 3)), "q4_k_m")
    assert plan["blk.1.hyper_kv.weight"] == QT.Q4_K and plan["blk.1.hyper_kv.bias"] == QT.F32


def test_plan_qtypes_keeps_order_and_plain_quants():
    t = LLAMA8
    assert plan_qtypes(t, "q4_k_m") == [plan_mix(t, "q4_k_m")[n] for n, _ in t]
    assert plan_qtypes(t, "q8_0") == [tensor_qtype(n, s, "q8_0") for n, s in t]
    with pytest.raises(ValueError, match="plan_qtypes"):
        tensor_qtype("blk.0.attn_q.weight", (256, 256), "q4_k_m")


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown K-quant mix 'q4_k'"):
        plan_mix(LLAMA8, "q4_k")
    with pytest.raises(ValueError, match="unknown quant 'q4_k'"):
        check_quant("q4_k")
    with pytest.raises(ValueError, match="K-quant mixes are for the llama/qwen2-style decoders"):
        check_quant("q4_k_m", k_mixes=False)
    assert set(MIXES) == {"q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k"}


# ------------------------------------------------------------------------------------------- vs llama.cpp

LLAMA_FTYPE = {"q2_k": 10, "q3_k_m": 12, "q4_k_s": 14, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread = int(sys.argv[3]), 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


@pytest.mark.llama_cpp
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_plan_equals_llama_quantize(arch, tmp_path):
    python = os.environ.get("OWL_LLAMA_PYTHON")
    if not python:
        pytest.skip("set OWL_LLAMA_PYTHON to the python of an environment with llama-cpp-python")
    from owl_export.convert_text import convert_text_model
    from owl_export.fixtures import make_tiny_checkpoint
    from owl_export.requantize import requantize_gguf

    # 16 layers so every rule has layers on both sides; qwen2 with 4 heads per KV head, tied embeddings
    kw = dict(num_heads=4, num_kv_heads=4) if arch == "llama" else dict(num_heads=8, num_kv_heads=2)
    hf = make_tiny_checkpoint(tmp_path / "hf", arch, seed=0, hidden_size=256, intermediate_size=512,
                              num_layers=16, **kw)
    f16 = tmp_path / "f16.gguf"
    convert_text_model(hf, f16, quant="f16", progress=False)
    tensors = [(t.name, tuple(int(d) for d in reversed(t.shape))) for t in gguf.GGUFReader(f16).tensors]
    for quant, ftype in LLAMA_FTYPE.items():
        out = tmp_path / f"{quant}.gguf"
        subprocess.run([python, "-c", QUANTIZE, str(f16), str(out), str(ftype)], check=True, capture_output=True)
        theirs = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
        ours = plan_mix(tensors, quant, n_gqa=kw["num_heads"] // kw["num_kv_heads"])
        assert ours == theirs, (quant, {n: (ours[n].name, theirs[n].name) for n in ours if ours[n] != theirs[n]})
        # and our requantization of the same F16 file stores the very same bytes
        requantize_gguf(f16, tmp_path / f"ours-{quant}.gguf", quant)
        mine = {t.name: bytes(t.data) for t in gguf.GGUFReader(tmp_path / f"ours-{quant}.gguf").tensors}
        assert mine == {t.name: bytes(t.data) for t in gguf.GGUFReader(out).tensors}, quant
    print(sys.version.split()[0], "llama.cpp plans equal for", arch)
