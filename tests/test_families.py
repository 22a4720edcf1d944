"""owl_cpp.load() picks the family from general.architecture; the Owl3 family reads its image preprocessing
from decoder.gguf (a file without a key is a clear error naming it)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import owl_cpp
from gguf_edit import ARRAY, FLOAT32, STRING, UINT32, rewrite
from owl_cpp.families.owl3.image_config import ImagePreprocessing
from owl_export.owl3.convert import preprocessing_metadata


@pytest.fixture(scope="module")
def owl3_dir(tiny_owl3_model):
    return tiny_owl3_model("1b")[1]


def copy_dir(src, dst, **edit):
    shutil.copytree(src, dst)
    rewrite(src / "decoder.gguf", dst / "decoder.gguf", **edit)
    return dst


def test_families_by_architecture(owl3_dir, tiny_gguf, tmp_path):
    m = owl_cpp.load(owl3_dir, n_ctx=64, threads=1)
    assert isinstance(m, owl_cpp.OwlModel) and m.hparams["arch"] == "owl3"
    assert type(owl_cpp.load(owl3_dir / "decoder.gguf", n_ctx=64, threads=1)) is owl_cpp.OwlModel
    for arch in ("qwen2", "llama"):
        t = owl_cpp.load(tiny_gguf(arch, "f32"), n_ctx=64, threads=1)
        assert type(t) is owl_cpp.TextModel and t.hparams["arch"] == arch
    d = tmp_path / "text-dir"
    d.mkdir()
    shutil.copy(tiny_gguf("qwen2", "f32"), d / "decoder.gguf")           # a directory: its decoder.gguf
    assert type(owl_cpp.load(d, n_ctx=64, threads=1)) is owl_cpp.TextModel
    from owl_cpp import OwlModel, Session                                 # the public names still import
    assert OwlModel is owl_cpp.OwlModel and Session.__name__ == "Session"


def test_unsupported_architecture_names_it_and_the_supported_ones(owl3_dir, tmp_path):
    d = copy_dir(owl3_dir, tmp_path / "m", set_keys={"general.architecture": (STRING, "mplug3")})
    with pytest.raises(owl_cpp.FormatError, match=r"'mplug3' is not supported \(supported: llama, mplug2, owl2, owl3, qwen2;"):
        owl_cpp.load(d)


def test_owl3_decoder_outside_its_directory_is_refused(owl3_dir, tmp_path):
    shutil.copy(owl3_dir / "decoder.gguf", tmp_path / "owl3.gguf")
    with pytest.raises(ValueError, match="model directory"):
        owl_cpp.load(tmp_path / "owl3.gguf")


def test_preprocessing_comes_from_the_model_file(owl3_dir, tmp_path):
    m = owl_cpp.load(owl3_dir, n_ctx=64, threads=1)
    assert m.image_config == ImagePreprocessing.from_metadata(preprocessing_metadata(30, "v3_global"))
    d = copy_dir(owl3_dir, tmp_path / "m", set_keys={"owl3.vision.image_mean": (ARRAY, [0.25, 0.5, 0.75], FLOAT32)})
    other = owl_cpp.load(d, n_ctx=64, threads=1)
    assert other.image_config.mean == (0.25, 0.5, 0.75)
    img = np.full((30, 30, 3), 255, np.uint8)
    a, b = m._expand([img], cut=False)[0].views[0], other._expand([img], cut=False)[0].views[0]
    assert np.allclose(a, 1.0) and np.allclose(b[:, 0, 0], [(1 - 0.25) / 0.5, 1.0, (1 - 0.75) / 0.5])


@pytest.mark.parametrize("key", sorted(preprocessing_metadata(30, "v3_global")))
def test_a_missing_preprocessing_key_is_named(owl3_dir, tmp_path, key):
    d = copy_dir(owl3_dir, tmp_path / "m", drop=[key])
    with pytest.raises(ValueError, match=f"missing {key}.*re-export"):
        owl_cpp.load(d)


@pytest.mark.parametrize("key, value, message", [
    ("owl3.vision.resample", (STRING, "lanczos"), "resample"),
    ("owl3.vision.cut_template", (STRING, "v9"), "cut_template"),
    ("owl3.vision.image_std", (ARRAY, [0.5, 0.5], FLOAT32), "image_std"),
    ("owl3.vision.image_size", (STRING, "abc"), r"decoder.gguf: owl3.vision.image_size is 'abc', expected a positive"),
    ("owl3.vision.image_size", (STRING, "30"), r"owl3.vision.image_size is '30'"),         # a string, even of digits
    ("owl3.vision.image_size", (UINT32, 0), r"owl3.vision.image_size is 0"),
    ("owl3.vision.anchors", (ARRAY, ["2", "2"], STRING), r"owl3.vision.anchors is \['2', '2'\]"),
    ("owl3.vision.cut_global_view", (UINT32, 1), "cut_global_view"),
    ("owl3.vision.image_mean", (ARRAY, [float("nan")] * 3, FLOAT32), "image_mean"),
])
def test_a_bad_preprocessing_value_is_named(owl3_dir, tmp_path, key, value, message):
    d = copy_dir(owl3_dir, tmp_path / "m", set_keys={key: value})
    with pytest.raises(ValueError, match=message):
        owl_cpp.load(d)


def test_kv_type_option(tiny_gguf):
    path = tiny_gguf("qwen2", "f32")
    with pytest.raises(ValueError, match="kv_type must be"):
        owl_cpp.load(path, kv_type="q8_0")
    ids = list(range(1, 30))
    f32 = owl_cpp.load(path, n_ctx=64, threads=1, kv_type="f32")
    f16 = owl_cpp.load(path, n_ctx=64, threads=1, kv_type="f16")
    assert f16.kv_type == "f16" and f16._contexts.default.ctx.kv_bytes_per_token < \
        f32._contexts.default.ctx.kv_bytes_per_token
    assert f16._contexts.default.ctx.kv_bytes_per_token * 2 == f32._contexts.default.ctx.kv_bytes_per_token
    # The stated bound (README): with F32 weights, an F16 cache moves logits by < 2e-3 of their range (measured
    # 3.5e-4 .. 6.4e-4 on the tiny models, as llama.cpp's ~5e-4), and the greedy choice nowhere.
    a, b = f32.logits(ids), f16.logits(ids)
    assert np.abs(a - b).max() / np.abs(a).max() < 2e-3
    assert (a.argmax(1) == b.argmax(1)).all()


def test_a_family_class_refuses_another_architecture(owl3_dir):
    """DecoderModel checks a family's general.architecture before any context is made."""
    from owl_cpp.families.owl2 import Owl2Model
    with pytest.raises(ValueError, match=r"architecture 'owl3' is not an mPLUG-Owl2 / mPLUG-Owl decoder \('owl2'\)"):
        Owl2Model(owl3_dir)


@pytest.mark.parametrize("arch", ["gemma", "phi3", "gemma2", "mistral3"])
def test_plain_gguf_of_an_unknown_architecture_is_refused_at_load(tiny_gguf, tmp_path, arch):
    # A text GGUF as downloaded for an architecture the runtime does not run: refused before any weight is read,
    # by owl_cpp.load and by TextModel / the C++ loader alike, naming it and what is supported.
    p = rewrite(tiny_gguf("qwen2", "f32"), tmp_path / f"{arch}.gguf", {"general.architecture": (STRING, arch)})
    with pytest.raises(owl_cpp.FormatError, match=rf"model architecture '{arch}' is not supported \(supported: "
                                                  r"llama, mplug2, owl2, owl3, qwen2; as a plain \.gguf text model: "
                                                  r"llama, qwen2\)"):
        owl_cpp.load(p)
    for load in (lambda: owl_cpp.TextModel(p), lambda: owl_cpp._core.Model.load(str(p))):
        with pytest.raises(owl_cpp.FormatError, match=rf"architecture '{arch}' is not supported \(supported: "
                                                      r"llama, qwen2, owl3, owl2, mplug2\)"):
            load()
