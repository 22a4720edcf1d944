"""mPLUG-Owl3 export: decoder.gguf (keys, tensor names/shapes/types/bytes), vision.onnx (onnxruntime vs the
PyTorch reference, dynamic batch, fp16/int8 variants) and the `owl-export` CLI on tiny checkpoints."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from gguf import GGMLQuantizationType as QT, GGUFValueType as VT  # noqa: E402
from gguf.quants import quantize  # noqa: E402

from owl_export import cli  # noqa: E402
from owl_export.checkpoint import load_checkpoint  # noqa: E402
from owl_export.owl3 import Owl3VisionReference  # noqa: E402
from owl_export.owl3.convert import convert_owl3_decoder, export_owl3  # noqa: E402
from owl_export.owl3.fixtures import make_tiny_owl3_checkpoint  # noqa: E402
from owl_export.owl3 import onnx_export  # noqa: E402
from owl_export.owl3.onnx_export import compare, export_vision_onnx, random_pixels, run_onnx  # noqa: E402
from owl_export.quantize import tensor_qtype  # noqa: E402

VARIANTS = ["1b", "2b", "7b-240728", "7b-241101"]
# fixture variant -> (generation, gate kind, 0-based hyper layers of the tiny 4-layer model, tied)
EXPECT = {"1b": ("241014", "vector", [1, 3], True), "2b": ("241014", "vector", [1, 3], True),
          "7b-240728": ("240728", "proj", [0, 2], False), "7b-241101": ("241101", "none", [1, 3], False)}
GRID_SQU_6 = [(2, 2), (1, 3), (1, 4), (3, 1), (4, 1), (2, 3), (3, 2)]   # docs/owl3.md §5.2's order
LAYER_TENSORS = ["attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias",
                 "attn_v.weight", "attn_v.bias", "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight",
                 "ffn_up.weight", "ffn_down.weight"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("owl3-ckpt")
    dirs = {v: make_tiny_owl3_checkpoint(root / v, v, seed=i) for i, v in enumerate(VARIANTS)}
    return dirs.__getitem__


@pytest.fixture(scope="module")
def decoder(tmp_path_factory, ckpt):
    """decoder(variant, quant) -> GGUFReader of the converted decoder.gguf, built once."""
    out, cache = tmp_path_factory.mktemp("owl3-gguf"), {}

    def get(variant, quant="f32"):
        if (variant, quant) not in cache:
            path = out / f"{variant}-{quant}.gguf"
            convert_owl3_decoder(ckpt(variant), path, quant=quant, progress=False)
            cache[variant, quant] = gguf.GGUFReader(path)
        return cache[variant, quant]

    return get


@pytest.fixture(scope="module")
def vision(tmp_path_factory, ckpt):
    """vision(variant, dtype, quant) -> (vision.onnx path, summary), built once."""
    out, cache = tmp_path_factory.mktemp("owl3-onnx"), {}

    def get(variant, dtype="fp32", quant="none"):
        key = (variant, dtype, quant)
        if key not in cache:
            path = out / f"{variant}-{dtype}-{quant}.onnx"
            cache[key] = path, export_vision_onnx(ckpt(variant), path, dtype=dtype, quant=quant, progress=False)
        return cache[key]

    return get


def _field(reader, key):
    f = reader.fields.get(key)
    assert f is not None, f"missing key {key}"
    return f


def _source(ckpt_dir, name):
    return load_checkpoint(ckpt_dir).tensors[name].to(torch.float32).numpy()


# ------------------------------------------------------------------------------------------ decoder.gguf

@pytest.mark.parametrize("variant", VARIANTS)
def test_decoder_keys(decoder, ckpt, variant):
    r = decoder(variant)
    cfg = json.loads((ckpt(variant) / "config.json").read_text())
    gen, gate, hyper, _ = EXPECT[variant]
    assert _field(r, "general.architecture").contents() == "owl3"
    hparams = {"owl3.context_length": cfg["max_position_embeddings"], "owl3.embedding_length": cfg["hidden_size"],
               "owl3.block_count": cfg["num_hidden_layers"], "owl3.feed_forward_length": cfg["intermediate_size"],
               "owl3.attention.head_count": cfg["num_attention_heads"],
               "owl3.attention.head_count_kv": cfg["num_key_value_heads"],
               "owl3.rope.dimension_count": cfg["hidden_size"] // cfg["num_attention_heads"],
               "owl3.vocab_size": cfg["vocab_size"]}
    for key, want in hparams.items():
        assert _field(r, key).contents() == want, key
    assert _field(r, "owl3.rope.freq_base").contents() == pytest.approx(cfg["rope_theta"])
    assert _field(r, "owl3.attention.layer_norm_rms_epsilon").contents() == pytest.approx(1e-6)

    typed = {"owl3.variant": (VT.STRING, gen), "owl3.hyper_gate": (VT.STRING, gate),
             "owl3.fused": (VT.BOOL, gen == "241101"), "owl3.mi_rope_offset": (VT.UINT32, 0 if gen == "241101" else 1),
             "owl3.vision.image_size": (VT.UINT32, cfg["vision_config"]["image_size"]),
             "owl3.vision.patch_size": (VT.UINT32, 4), "owl3.vision.num_patches": (VT.UINT32, 49),
             "owl3.vision.cut_template": (VT.STRING, "v2_global" if gen == "240728" else "v3_global")}
    for key, (vtype, want) in typed.items():
        f = _field(r, key)
        assert f.types == [vtype] and f.contents() == want, key
    arrays = {"owl3.hyper_layers": (VT.INT32, hyper), "owl3.vision.image_mean": (VT.FLOAT32, [0.5] * 3),
              "owl3.vision.image_std": (VT.FLOAT32, [0.5] * 3),
              "owl3.vision.anchors": (VT.INT32, [x for a in GRID_SQU_6 for x in a])}
    for key, (sub, want) in arrays.items():
        f = _field(r, key)
        assert f.types == [VT.ARRAY, sub] and f.contents() == want, key

    # vocabulary padded to the embedding rows; the checkpoint's ChatML template kept
    assert len(_field(r, "tokenizer.ggml.tokens").contents()) == cfg["vocab_size"]
    tc = json.loads((ckpt(variant) / "tokenizer_config.json").read_text())
    assert _field(r, "tokenizer.chat_template").contents() == tc["chat_template"]


def test_anchors_are_grid_squ_6():
    from owl_export.owl3.convert import GRID_SQU_6 as written
    assert [tuple(a) for a in written] == GRID_SQU_6


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoder_tensors_f32(decoder, ckpt, variant):
    r = decoder(variant)
    cfg = json.loads((ckpt(variant) / "config.json").read_text())
    gen, gate, hyper, tied = EXPECT[variant]
    H, d, nkv = cfg["hidden_size"], cfg["hidden_size"] // cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tensors = {t.name: t for t in r.tensors}

    hyper_src = {"hyper_kv.weight": ("v_kv_proj.weight", (2 * nkv * d, H)),
                 "hyper_kv.bias": ("v_kv_proj.bias", (2 * nkv * d,))}
    if gate == "proj":
        hyper_src.update({"hyper_gate_proj.weight": ("gate_proj.0.weight", (d, d)),
                          "hyper_gate_proj.bias": ("gate_proj.0.bias", (d,))})
    elif gate == "vector":
        hyper_src["hyper_gate.weight"] = ("gate", (H,))
    expected = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if not tied else set())
    expected |= {f"blk.{i}.{n}" for i in range(cfg["num_hidden_layers"]) for n in LAYER_TENSORS}
    expected |= {f"blk.{i}.{n}" for i in hyper for n in hyper_src}
    assert set(tensors) == expected
    assert ("output.weight" in tensors) == (not tied)
    assert all(t.tensor_type == QT.F32 for t in tensors.values())

    for i in hyper:
        for gname, (hf_suffix, shape) in hyper_src.items():
            t = tensors[f"blk.{i}.{gname}"]
            assert tuple(reversed(t.shape.tolist())) == shape, gname          # GGUF lists ne reversed
            src = _source(ckpt(variant), f"language_model.model.layers.{i}.self_attn.{hf_suffix}")
            # bit-equal: the interleaved (kv head, K|V, dim) rows of v_kv_proj are kept as they are
            assert np.array_equal(np.asarray(t.data).reshape(shape), src), gname
    emb = _source(ckpt(variant), "language_model.model.embed_tokens.weight")
    assert np.array_equal(np.asarray(tensors["token_embd.weight"].data).reshape(emb.shape), emb)


@pytest.mark.parametrize("variant", ["1b", "7b-240728"])
@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_decoder_quantized_exactly(decoder, ckpt, variant, quant):
    r = decoder(variant, quant)
    tied = EXPECT[variant][3]
    ref = decoder(variant)                      # the f32 file: each tensor's source values (bit-equal, above)
    src = {t.name: np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in ref.tensors}
    for t in r.tensors:
        a = src[t.name]
        want = tensor_qtype(t.name, a.shape, quant, tied_embeddings=tied)
        assert t.tensor_type == want, t.name
        if want in (QT.Q8_0, QT.Q4_0):
            assert np.array_equal(np.asarray(t.data).ravel().view(np.uint8),
                                  quantize(a, want).ravel().view(np.uint8)), t.name
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["token_embd.weight" if tied else "output.weight"] == QT.Q8_0     # q4_0 keeps the logits at Q8_0
    hyper0 = EXPECT[variant][2][0]
    assert types[f"blk.{hyper0}.hyper_kv.weight"] == QT[quant.upper()]
    assert types[f"blk.{hyper0}.hyper_kv.bias"] == QT.F32
    if variant == "7b-240728":   # rows of 16 (tiny head_dim) are not a whole block: F16, as for text
        assert types[f"blk.{hyper0}.hyper_gate_proj.weight"] == QT.F16


# ------------------------------------------------------------------------------------------ vision.onnx

def _reference(ckpt_dir):
    return Owl3VisionReference.from_pretrained(ckpt_dir)


@pytest.mark.parametrize("variant", VARIANTS)
def test_vision_fp32_matches_reference_dynamic_batch(vision, ckpt, variant):
    path, summary = vision(variant)
    ref = _reference(ckpt(variant))
    assert summary["rel_err"] < 1e-4 and summary["check_batch"] == 2
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    S, H = ref.config.image_size, ref.text_hidden
    assert (inp.name, inp.type, inp.shape[1:]) == ("pixel_values", "tensor(float)", [3, S, S])
    assert (out.name, out.type, out.shape[1:]) == ("image_embeds", "tensor(float)", [49, H])
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)      # N is a dynamic axis
    for n in (1, 3):
        pixels = random_pixels(ref, n, seed=10 + n)
        got = sess.run(None, {"pixel_values": pixels})[0]
        assert got.shape == (n, 49, H)
        assert compare(got, ref(pixels).numpy())["rel_err"] < 1e-4, n
    meta = onnx.load(str(path)).metadata_props
    assert {p.key: p.value for p in meta}["owl3.variant"] == EXPECT[variant][0]


@pytest.mark.parametrize("variant", ["1b", "7b-241101"])
def test_vision_int8_is_smaller_and_close(vision, ckpt, variant):
    path32, _ = vision(variant)
    path8, summary = vision(variant, "fp32", "int8")
    ops = {n.op_type for n in onnx.load(str(path8)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert path8.stat().st_size < 0.8 * path32.stat().st_size
    ref = _reference(ckpt(variant))
    pixels = random_pixels(ref, 3, seed=5)
    err = compare(run_onnx(path8, pixels), ref(pixels).numpy())
    # measured ~0.9998 cosine / 2% rel error (dynamic per-tensor int8, AVX2 U8S8); 0.99 leaves room for
    # other CPUs' kernels
    assert err["cosine"] > 0.99 and err["rel_err"] < 0.1, err
    assert summary["cosine"] > 0.99 and 0 < summary["rel_err"] < 0.1


def test_vision_fp16_weights_float32_interface(vision, ckpt):
    path, summary = vision("7b-240728", "fp16")
    model = onnx.load(str(path))
    init_types = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in init_types and onnx.TensorProto.FLOAT not in init_types
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert path.stat().st_size < 0.6 * vision("7b-240728")[0].stat().st_size
    assert summary["rel_err"] < 1e-2 and summary["cosine"] > 0.999


def test_vision_check_failure_leaves_no_file(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", 0.0)     # no graph can pass: the failure path runs
    with pytest.raises(onnx_export.VisionCheckError, match="relative error"):
        export_vision_onnx(ckpt("1b"), tmp_path / "vision.onnx", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_vision_options_are_checked(ckpt, tmp_path):
    with pytest.raises(ValueError, match="int8"):
        export_vision_onnx(ckpt("1b"), tmp_path / "v.onnx", dtype="fp16", quant="int8")
    with pytest.raises(ValueError, match="dtype"):
        export_vision_onnx(ckpt("1b"), tmp_path / "v.onnx", dtype="int4")


# ------------------------------------------------------------------------------------------ CLI

def test_cli_writes_model_dir(ckpt, tmp_path, capsys):
    out = tmp_path / "owl3-tiny"
    # "int8" is dynamic's old name; the first quant listed is the directory's default
    rc = cli.main([str(ckpt("7b-241101")), "-o", str(out), "--quant", "q8_0", "--vision-quant", "static,int8"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["decoder.gguf", "vision.int8.onnx", "vision.json",
                                                     "vision.qdq.onnx"]
    err = capsys.readouterr().err
    assert "241101" in err and "decoder.gguf" in err and "vision.qdq.onnx" in err and "cosine" in err
    r = gguf.GGUFReader(out / "decoder.gguf")
    assert r.fields["owl3.variant"].contents() == "241101"
    assert {t.name: t.tensor_type for t in r.tensors}["blk.1.hyper_kv.weight"] == QT.Q8_0
    manifest = json.loads((out / "vision.json").read_text())
    assert manifest["default"] == "static"
    assert {q: e["file"] for q, e in manifest["files"].items()} == {"static": "vision.qdq.onnx",
                                                                    "dynamic": "vision.int8.onnx"}
    for name in ("vision.qdq.onnx", "vision.int8.onnx"):
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        assert sess.run(None, {"pixel_values": np.zeros((2, 3, 28, 28), np.float32)})[0].shape == (2, 49, 64)
    # a later export of fewer files leaves no stale one behind
    assert cli.main([str(ckpt("7b-241101")), "-o", str(out), "--quant", "q8_0", "--vision-quant", "none", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["decoder.gguf", "vision.json", "vision.onnx"]


def test_export_owl3_summary(ckpt, tmp_path):
    s = export_owl3(ckpt("2b"), tmp_path / "m", "f16", vision_dtype="fp16", progress=False)
    assert s["variant"] == "241014" and s["decoder"]["quant"] == "f16" and s["vision"]["dtype"] == "fp16"
    assert s["vision"]["rel_err"] < 1e-2


def _without(src_dir, dst_dir, drop):
    """Copy of a checkpoint with the tensors whose names contain `drop` removed."""
    from safetensors.torch import load_file, save_file
    shutil.copytree(src_dir, dst_dir)
    w = load_file(str(dst_dir / "model.safetensors"))
    save_file({k: v for k, v in w.items() if drop not in k}, str(dst_dir / "model.safetensors"),
              metadata={"format": "pt"})
    return dst_dir


def test_cli_unknown_layout_names_what_is_missing(ckpt, tmp_path, capsys):
    bad = _without(ckpt("7b-240728"), tmp_path / "bad", "layers.2.self_attn.v_kv_proj")
    out = tmp_path / "out"
    assert cli.main([str(bad), "-o", str(out), "--quant", "f32"]) == 2
    err = capsys.readouterr().err
    assert "owl-export: error:" in err and "language_model.model.layers.2.self_attn.v_kv_proj.weight" in err
    assert "Traceback" not in err and not out.exists()


def test_cli_vision_options_refused_for_text_models(tiny_qwen2_dir, tmp_path, capsys):
    assert cli.main([str(tiny_qwen2_dir), "-o", str(tmp_path / "t.gguf"), "--vision-quant", "int8"]) == 2
    assert "--vision-quant" in capsys.readouterr().err
