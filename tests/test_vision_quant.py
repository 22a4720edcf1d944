"""Static int8 (QDQ) vision towers beside dynamic int8 and fp32: the quantized embeddings against the fp32
graph and the PyTorch reference, a broken calibration caught by the same bounds, vision.json, and the runtime
picking the file (owl_cpp.load(..., vision=...)) with clear errors for missing or corrupt files.

The bounds are set from measurements on these tiny random checkpoints (in the comments) with a margin; a
calibration on mis-preprocessed views (pixels left in 0..1 instead of normalised, so every activation scale is
wrong) falls well below them, which test_wrong_calibration_breaks_the_bound checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import owl_cpp  # noqa: E402
from owl_cpp.vision_files import pick_vision_file  # noqa: E402
from owl_export import cli  # noqa: E402
from owl_export.onnx_common import compare, run_onnx  # noqa: E402
from owl_export.owl3 import Owl3VisionReference  # noqa: E402
from owl_export.owl3.fixtures import make_tiny_owl3_checkpoint  # noqa: E402
from owl_export.owl3.onnx_export import calibration_views  # noqa: E402
from owl_export.vision_quant import quantize_static_qdq  # noqa: E402

# min cosine per held-out view, static int8 vs fp32 (graph or reference). Measured on the tiny "1b" tower
# (seed 3, 30 px): static ~0.99976, dynamic ~0.99978. A broken calibration or scale gives < 0.98.
STATIC_COSINE = 0.997
DYNAMIC_COSINE = 0.998


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(hf_dir, model_dir) with all three vision files, static the default."""
    root = tmp_path_factory.mktemp("vq")
    hf = make_tiny_owl3_checkpoint(root / "hf", "1b", seed=3)
    out = root / "model"
    assert cli.main([str(hf), "-o", str(out), "--quant", "f32", "--vision-quant", "static,dynamic,none", "-q"]) == 0
    return hf, out


@pytest.fixture(scope="module")
def held_out(exported):
    """Views of synthetic pictures the calibration did not see, and the reference's embeddings of them."""
    hf, _ = exported
    ref = Owl3VisionReference.from_pretrained(hf)
    views = calibration_views(ref.config.image_size, 6, first_seed=500)
    return views, [ref(views[i:i + 1]).numpy() for i in range(len(views))]


def _cosines(path, views, want):
    return [compare(run_onnx(path, views[i:i + 1]), w)["cosine"] for i, w in enumerate(want)]


def test_static_is_int8_qdq_with_per_channel_weights(exported):
    _, d = exported
    model = onnx.load(str(d / "vision.qdq.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    inits = {t.name: t for t in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[0]].dims) == 2]
    assert weight_dq, "no int8 weight matrix"
    for n in weight_dq:                         # one scale per output column of each MatMul weight
        assert list(inits[n.input[1]].dims) == [inits[n.input[0]].dims[1]]
    # (a tiny tower: the scales, biases and position table weigh more than at real size, where it is ~0.26)
    assert (d / "vision.qdq.onnx").stat().st_size < 0.8 * (d / "vision.onnx").stat().st_size


def test_static_close_to_fp32_graph_and_reference(exported, held_out):
    _, d = exported
    views, want = held_out
    fp32 = [run_onnx(d / "vision.onnx", views[i:i + 1]) for i in range(len(views))]
    static_vs_ref = _cosines(d / "vision.qdq.onnx", views, want)
    static_vs_fp32 = _cosines(d / "vision.qdq.onnx", views, fp32)
    dynamic_vs_ref = _cosines(d / "vision.int8.onnx", views, want)
    assert min(static_vs_ref) >= STATIC_COSINE and min(static_vs_fp32) >= STATIC_COSINE, (static_vs_ref,
                                                                                          static_vs_fp32)
    assert min(dynamic_vs_ref) >= DYNAMIC_COSINE, dynamic_vs_ref
    # quantized, not a copy of the fp32 graph
    assert max(static_vs_ref) < 1 - 1e-7 and max(dynamic_vs_ref) < 1 - 1e-7


def test_wrong_calibration_breaks_the_bound(exported, held_out, tmp_path):
    """Calibrated on views left in 0..255 (the /255 and the normalisation forgotten), the activation scales fit
    the wrong ranges: cosine ~0.6, far below STATIC_COSINE. (Ranges off by 10x inside -1..1 hardly matter:
    every quantized MatMul reads a LayerNorm output or what follows one.)"""
    hf, d = exported
    views, want = held_out
    ref = Owl3VisionReference.from_pretrained(hf)
    wrong = (calibration_views(ref.config.image_size, 8) + 1) / 2 * 255
    quantize_static_qdq(d / "vision.onnx", tmp_path / "bad.onnx", wrong)
    assert min(_cosines(tmp_path / "bad.onnx", views, want)) < STATIC_COSINE


def test_halved_activation_scales_break_the_bound(exported, held_out, tmp_path):
    """Every activation scale of the static file halved (a wrong scale: half the range clipped): cosine ~0.975."""
    from onnx import numpy_helper

    _, d = exported
    views, want = held_out
    model = onnx.load(str(d / "vision.qdq.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    scales = {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in inits}
    assert scales
    for name in scales:
        t = inits[name]
        t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * 0.5).astype(np.float32), name))
    onnx.save(model, str(tmp_path / "halved.onnx"))
    assert min(_cosines(tmp_path / "halved.onnx", views, want)) < STATIC_COSINE


def test_manifest_records_each_file(exported):
    _, d = exported
    m = json.loads((d / "vision.json").read_text())
    assert m["format"] == 1 and m["default"] == "static"
    assert {q: e["file"] for q, e in m["files"].items()} == {
        "static": "vision.qdq.onnx", "dynamic": "vision.int8.onnx", "none": "vision.onnx"}
    for q, e in m["files"].items():
        assert e["quant"] == q and e["dtype"] == "fp32" and e["bytes"] == (d / e["file"]).stat().st_size
        meta = {p.key: p.value for p in onnx.load(str(d / e["file"])).metadata_props}
        assert meta["owl3.vision.quant"] == q
    assert STATIC_COSINE <= m["files"]["static"]["cosine_vs_fp32"] < 1
    assert "cosine_vs_fp32" not in m["files"]["none"]


def test_runtime_loads_the_default_and_the_one_asked_for(exported):
    _, d = exported
    picked = {}
    for vision in (None, "static", "dynamic", "int8", "none", "fp32"):
        m = owl_cpp.load(d, threads=1, vision=vision)
        picked[vision] = (m.vision_quant, m.vision.path.rsplit("/", 1)[-1])
    assert picked == {None: ("static", "vision.qdq.onnx"), "static": ("static", "vision.qdq.onnx"),
                      "dynamic": ("dynamic", "vision.int8.onnx"), "int8": ("dynamic", "vision.int8.onnx"),
                      "none": ("none", "vision.onnx"), "fp32": ("none", "vision.onnx")}
    # a GPU prefers the float file; without one the CPU default
    assert pick_vision_file(d, None, "cuda")[1] == "none"


def test_runtime_static_embeddings_match_the_file(exported, held_out):
    """The loaded model runs the static file: its image embeddings are that file's output."""
    _, d = exported
    views, _ = held_out
    m = owl_cpp.load(d, threads=1)
    got = m.vision.encode(views[:2])
    for g, i in zip(got, range(2)):
        np.testing.assert_allclose(g, run_onnx(d / "vision.qdq.onnx", views[i:i + 1])[0], rtol=1e-5, atol=1e-5)


def _copy(d, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(d, out)
    return out


def test_missing_or_unknown_vision_file_is_clear(exported, tmp_path):
    _, d = exported
    m = _copy(d, tmp_path)
    (m / "vision.qdq.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"vision.qdq.onnx.*'static'.*re-export"):
        owl_cpp.load(m, threads=1)
    assert owl_cpp.load(m, threads=1, vision="dynamic").vision_quant == "dynamic"   # the others still load
    with pytest.raises(ValueError, match="unknown vision file 'int4'"):
        owl_cpp.load(m, threads=1, vision="int4")
    manifest = json.loads((m / "vision.json").read_text())
    del manifest["files"]["static"]
    manifest["default"] = "dynamic"
    (m / "vision.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"no 'static' vision file; this export has dynamic, none"):
        owl_cpp.load(m, threads=1, vision="static")


def test_corrupt_vision_file_or_list_is_clear(exported, tmp_path):
    _, d = exported
    m = _copy(d, tmp_path)
    (m / "vision.qdq.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match=r"vision.qdq.onnx: cannot load the vision model"):
        owl_cpp.load(m, threads=1)
    shutil.copy(d / "vision.int8.onnx", m / "vision.qdq.onnx")        # the wrong file under the static name
    with pytest.raises(ValueError, match=r"owl3.vision.quant is 'dynamic' but vision.json lists the file as 'static'"):
        owl_cpp.load(m, threads=1)
    (m / "vision.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"vision.json: cannot read"):
        owl_cpp.load(m, threads=1)
    (m / "vision.json").write_text(json.dumps({"default": "static", "files": {"static": {"file": "../x.onnx"}}}))
    with pytest.raises(ValueError, match=r"vision.json: not a vision file list"):
        owl_cpp.load(m, threads=1)


def test_directory_without_vision_json_runs_vision_onnx(exported, tmp_path):
    """An export from before vision.json: vision.onnx alone, whatever it holds."""
    _, d = exported
    m = _copy(d, tmp_path)
    for name in ("vision.json", "vision.qdq.onnx", "vision.int8.onnx"):
        (m / name).unlink()
    model = owl_cpp.load(m, threads=1)
    assert model.vision.path.endswith("vision.onnx") and model.vision_quant is None
    with pytest.raises(ValueError, match="no vision.json.*--vision-quant static"):
        owl_cpp.load(m, threads=1, vision="static")


def test_vision_option_refused_for_text_models(tiny_gguf):
    with pytest.raises(ValueError, match="vision-language model directories"):
        owl_cpp.load(tiny_gguf("qwen2"), vision="static")


def test_owl_run_picks_the_vision_file(exported, tmp_path, capsys):
    from owl_cpp import cli as run_cli
    from owl_export.calibration_images import synthetic_image

    _, d = exported
    synthetic_image(7).save(tmp_path / "a.png")
    args = ["--model", str(d), "--image", str(tmp_path / "a.png"), "-p", "What is it?", "-n", "4", "-t", "1"]
    assert run_cli.main(args + ["--vision", "dynamic"]) == 0
    want = owl_cpp.load(d, threads=1, vision="dynamic").chat(str(tmp_path / "a.png"), "What is it?", max_tokens=4)
    assert capsys.readouterr().out.strip() == want.strip()
    with pytest.raises(SystemExit):                         # argparse refuses an unknown name
        run_cli.main(args + ["--vision", "int4"])
