"""owl-run on a tiny exported mPLUG-Owl3 model: one question with -p, a chat on piped stdin, timings, errors."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import owl_cpp
from owl_cpp.cli import main, read_video, sample_frame_indices

# The subprocess must import the same owl_cpp as this process: installed, or from a source tree.
OWL_CPP_PARENT = str(Path(owl_cpp.__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def model_dir(tiny_owl3_model):
    return tiny_owl3_model("1b")[1]


@pytest.fixture(scope="module")
def model(model_dir):
    return owl_cpp.load(model_dir, n_ctx=512, threads=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    paths = []
    for k, (w, h) in enumerate([(60, 40), (30, 30)]):
        p = d / f"img{k}.png"
        Image.fromarray(np.random.RandomState(k).randint(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def run(argv, stdin=""):
    out = io.StringIO()
    rc = main(argv, stdin=io.StringIO(stdin), stdout=out)
    return rc, out.getvalue()


def test_prompt_streams_the_answer(model_dir, model, images, capsys):
    rc, out = run(["--model", str(model_dir), "--image", images[0], "--image", images[1], "-p", "What changed?",
                   "-n", "8", "-t", "2", "-c", "512", "--verbose"])
    assert rc == 0
    assert out == model.chat(images, "What changed?", max_tokens=8) + "\n"
    err = capsys.readouterr().err
    assert "vision" in err and "ms (12 views" in err and "prefill" in err and "decode" in err and "t/s" in err
    rc, out = run(["--model", str(model_dir), "--image", images[0], "-p", "Hi", "-n", "6", "--no-cut"])
    assert rc == 0 and out == model.chat(images[0], "Hi", max_tokens=6, cut=False) + "\n"


def test_piped_stdin_is_a_multi_turn_chat(model_dir, model, images):
    rc, out = run(["--model", str(model_dir), "--image", images[0], "-n", "5", "-c", "512"],
                  stdin="Describe it.\n\nAnd the colours?\n/image " + images[1] + "\nAnd this one?\n")
    assert rc == 0
    s = model.session()
    want = [s.ask("Describe it.", images=[images[0]], max_tokens=5), s.ask("And the colours?", max_tokens=5),
            s.ask("And this one?", images=[images[1]], max_tokens=5)]
    assert out == "".join(w + "\n" for w in want)


def test_errors(model_dir, images, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OWL_MODEL", raising=False)
    monkeypatch.setenv("OWL_DEMO_DIR", str(tmp_path / "no-demo"))     # else the built-in demo model answers
    assert run(["-p", "Hi"])[0] == 2
    assert "OWL_MODEL" in capsys.readouterr().err
    assert run(["--model", str(tmp_path / "none"), "-p", "Hi"])[0] == 2
    assert "owl-export" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert run(["--model", str(model_dir), "--image", str(bad), "-p", "Hi"])[0] == 2
    assert "bad.jpg" in capsys.readouterr().err
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\x00" * 64)
    rc, _ = run(["--model", str(model_dir), "--video", str(video), "-p", "Hi"])
    err = capsys.readouterr().err
    if not any(_importable(m) for m in ("av", "cv2")):
        assert rc == 2 and "PyAV or OpenCV" in err
    rc, out = run(["--model", str(model_dir), "-n", "3"], stdin=f"/image {bad}\nHi\nHello\n")   # chat goes on
    assert rc == 0 and out.count("\n") == 1 and "bad.jpg" in capsys.readouterr().err


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def test_frame_sampling_follows_the_readme():
    assert sample_frame_indices(100, 30) == [0, 30, 60, 90]                       # ~1 frame per second
    idx = sample_frame_indices(1000, 25, max_frames=16)                           # 40 candidates -> 16
    assert len(idx) == 16 and idx[:3] == [25, 75, 150]                            # int(i*2.5 + 1.25) * 25


def test_video_frames_are_decoded_and_sampled(tmp_path):
    """read_video on a real file (PyAV writes it): 100 frames at 5 fps -> every 5th frame, uniform-sampled to 4."""
    av = pytest.importorskip("av")
    video = tmp_path / "v.mkv"
    with av.open(str(video), "w") as c:
        s = c.add_stream("ffv1", rate=5)                       # lossless: frame k is grey level 2k
        s.width, s.height, s.pix_fmt = 16, 16, "yuv444p"
        for k in range(100):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 2 * k, np.uint8), format="rgb24")
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    frames = read_video(str(video), max_frames=4)
    want = [5 * k for k in [int(i * 5 + 2.5) for i in range(4)]]             # 20 candidates, gap 5
    assert want == sample_frame_indices(100, 5, 4)
    assert [round(int(f[8, 8, 0]) / 2) for f in frames] == want


def test_console_script_runs(model_dir, model, images):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([OWL_CPP_PARENT, os.environ.get("PYTHONPATH", "")]),
               OWL_MODEL=str(model_dir))
    r = subprocess.run([sys.executable, "-m", "owl_cpp.cli", "--image", images[1], "-n", "4", "-t", "2", "-c", "512"],
                       input="Hi\n", capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == model.chat(images[1], "Hi", max_tokens=4) + "\n"
