"""mPLUG-2 captioning end to end: a tiny random checkpoint in the official .pth layout -> `owl-export` -> model
directory -> owl_cpp.load(dir).caption(video), against the PyTorch reference (owl_export/mplug2/reference.py,
itself checked against the official code): the same frames give the same video tokens (ONNX), the same beam
search hypothesis and the same greedy ids; and the CLI."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("gguf")

import owl_cpp  # noqa: E402
from owl_export import cli as export_cli  # noqa: E402
from owl_export.mplug2.fixtures import make_tiny_mplug2_checkpoint  # noqa: E402
from owl_export.mplug2.reference import Mplug2CaptionReference  # noqa: E402
from owl_export.mplug2.tokenizer import BertWordPiece  # noqa: E402
from mplug2_videos import random_video, reference_video_tokens  # noqa: E402

FRAMES = 3          # the tiny checkpoint's model_num_frames


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # a longer decoder and more positions than the default fixture, so 20-token captions fit
    return make_tiny_mplug2_checkpoint(tmp_path_factory.mktemp("m2") / "ckpt", seed=11, max_positions=40)


@pytest.fixture(scope="module")
def model_dir(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("m2") / "model"
    assert export_cli.main([str(ckpt), "-o", str(out), "--quant", "f32", "--vision-quant", "none", "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    return owl_cpp.load(model_dir, threads=2)


@pytest.fixture(scope="module")
def ref(ckpt):
    return Mplug2CaptionReference.from_dir(ckpt)


def test_load_gives_the_mplug2_model(model):
    from owl_cpp.families.mplug2 import Mplug2Model
    assert isinstance(model, Mplug2Model)
    assert model.options == {"prompt": "a video of", "beam_size": 5, "min_length": 4, "max_length": 20}
    assert model.video_config.num_frames == FRAMES


def test_video_tokens_match_reference(model, ref):
    video = random_video(0)
    got = model.video_tokens(video)
    want = reference_video_tokens(ref, video, model).numpy()
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_caption_matches_reference(model, ref, ckpt, seed):
    video = random_video(seed)
    info = model.caption(video, return_info=True)
    ids, score = ref.beam_search(reference_video_tokens(ref, video, model))
    assert info["ids"] == ids[1:]
    assert info["score"] == pytest.approx(score, rel=1e-4, abs=1e-5)
    tok = BertWordPiece.from_file(ckpt / "vocab.txt")
    assert info["text"] == tok.caption_text(ids, "a video of")
    assert model.caption(video) == info["text"]


@pytest.mark.parametrize("seed", [3, 4])
def test_greedy_matches_reference_for_20_tokens(model, ref, seed):
    video = random_video(seed)
    got = model.caption(video, greedy=True, min_length=0, max_length=20, return_info=True)["ids"]
    want = ref.greedy(reference_video_tokens(ref, video, model), 20)
    assert got == want


def test_options_and_errors(model):
    video = random_video(5)
    short = model.caption(video, beam_size=2, max_length=3, min_length=1, return_info=True)
    assert 1 <= len(short["ids"]) <= 3
    with pytest.raises(ValueError, match="beam_size"):
        model.caption(video, beam_size=0)
    with pytest.raises(ValueError, match="max_length"):
        model.caption(video, max_length=10_000)
    with pytest.raises(ValueError, match="min_length"):
        model.caption(video, min_length=30, max_length=20)
    with pytest.raises(FileNotFoundError):
        model.caption("/nonexistent/clip.mp4")
    with pytest.raises(NotImplementedError, match="caption"):
        model.chat(videos=[video], prompt="what happens?")


def test_q8_0_export_captions(ckpt, tmp_path):
    """A Q8_0 directory loads and captions (its logits against f32 are held per step in test_mplug2_decoder.py;
    greedy ids of a tiny random model, whose logits lie close together, are not a fair comparison)."""
    out = tmp_path / "q8"
    assert export_cli.main([str(ckpt), "-o", str(out), "--quant", "q8_0", "-q"]) == 0
    q8 = owl_cpp.load(out, threads=2)
    assert q8.metadata("general.file_type") == 7                 # MOSTLY_Q8_0
    # the default export: the family's int8 video encoder runs, the fp32 one is there to pick
    from owl_export.model_dir import DEFAULT_VISION_QUANTS
    assert q8.vision_quant == DEFAULT_VISION_QUANTS["mplug2"][0]
    assert owl_cpp.load(out, threads=2, vision="none").vision.path.endswith("vision.onnx")
    info = q8.caption(random_video(0), return_info=True)
    assert 1 <= len(info["ids"]) <= 20 and all(0 <= i < q8.n_vocab for i in info["ids"])


def test_owl_run_prints_the_caption(model, model_dir, tmp_path):
    """owl-run --video takes a video file or a folder of frame images (in name order)."""
    from PIL import Image
    video = random_video(6, n=12)
    paths = []
    for i, frame in enumerate(video):
        paths.append(tmp_path / f"frame{i:02d}.png")
        Image.fromarray(frame).save(paths[-1])
    r = subprocess.run([sys.executable, "-m", "owl_cpp.cli", "--model", str(model_dir), "--video", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == model.caption([str(p) for p in paths])
    r = subprocess.run([sys.executable, "-m", "owl_cpp.cli", "--model", str(model_dir), "--video", str(tmp_path),
                        "-p", "what happens?"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "caption" in r.stderr


def test_caption_from_tokens(model):
    video = random_video(7)
    tokens = model.video_tokens(video)
    assert model.caption(tokens=tokens) == model.caption(video)
    with pytest.raises(ValueError, match="one of the two"):
        model.caption(video, tokens=tokens)
    with pytest.raises(ValueError, match="video tokens must be"):
        model.caption(tokens=tokens[:, :5])
