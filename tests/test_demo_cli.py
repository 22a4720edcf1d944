"""The built-in demo model's plumbing, on a tiny random Owl3 model standing in for it through $OWL_DEMO_DIR:
load("demo"), chat() / owl-run / owl-server without a model (and the one stderr line that says so),
owl-run --demo (picture saved and shown, five questions streamed with the right answers), and the errors
where no demo model is installed. Random weights answer gibberish: these
tests check the wiring, not the answers' accuracy."""
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
from owl_cpp.cli import main as owl_run
from owl_cpp.demo import model_dir as demo
from owl_cpp.demo.cli_demo import objects_named, picture_questions, same_answer
from owl_cpp.demo.questions import KINDS, ask
from owl_cpp.demo.scenes import draw, random_scene

OWL_CPP_PARENT = str(Path(owl_cpp.__file__).resolve().parent.parent)
RUN = ["-t", "1", "-c", "1024"]       # owl-run's load options for the tiny model


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A tiny random Owl3 model shaped like the real demo model: variant 240728, image size 112, patch 14."""
    from owl_export.cli import main as owl_export
    from owl_export.owl3.fixtures import make_tiny_owl3_checkpoint

    root = tmp_path_factory.mktemp("demo-model")
    hf = make_tiny_owl3_checkpoint(root / "hf", "7b-240728", seed=3, image_size=112, patch_size=14)
    assert owl_export([str(hf), "-o", str(root / "model"), "--quant", "f32", "-q"]) == 0
    return root / "model"


@pytest.fixture(scope="module")
def model(demo_dir):
    return owl_cpp.load(demo_dir, n_ctx=1024, threads=1)


@pytest.fixture
def env(demo_dir, monkeypatch, tmp_path):
    """$OWL_DEMO_DIR at the tiny model, no $OWL_MODEL, the notice not yet printed, a fresh current directory."""
    monkeypatch.setenv(demo.DEMO_ENV, str(demo_dir))
    monkeypatch.delenv("OWL_MODEL", raising=False)
    monkeypatch.setattr(demo, "_noticed", False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("pic") / "shapes.png"
    draw(random_scene(np.random.default_rng(1), n_objects=2)).resize((200, 200)).save(p)
    return str(p)


class FakeTTY(io.StringIO):
    encoding = "utf-8"

    def isatty(self):
        return True


def run(argv, stdout=None):
    out = stdout or io.StringIO()
    return owl_run(argv, stdin=io.StringIO(""), stdout=out), out.getvalue()


def scene_and_questions(seed):
    """What owl-run --demo --seed draws and asks: (scene, [(kind, question, truth)])."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    return scene, [(kind, *ask(scene, kind, rng)) for kind in KINDS]


# ------------------------------------------------------------------------------------------- resolving "demo"

def test_load_demo_resolves_to_the_demo_dir(env, demo_dir):
    assert demo.demo_model_dir() == demo_dir
    m = owl_cpp.load("demo", n_ctx=256, threads=1)
    assert Path(m.model_dir) == demo_dir
    (env / "demo").mkdir()                       # a directory named "demo" here wins over the built-in model
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        owl_cpp.load("demo")


def test_a_missing_demo_model_is_a_clear_error(env, monkeypatch, capsys, picture):
    monkeypatch.setenv(demo.DEMO_ENV, str(env / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"OWL_DEMO_DIR points at .*nowhere.*decoder\.gguf"):
        demo.demo_model_dir()
    with pytest.raises(FileNotFoundError, match="demo model is not installed"):
        owl_cpp.load("demo")
    with pytest.raises(RuntimeError, match="OWL_MODEL.*owl-export.*demo model is not installed"):
        owl_cpp.chat(picture, "Hi")
    monkeypatch.delenv(demo.DEMO_ENV)
    monkeypatch.setattr(demo, "DEMO_DIR", env / "pkg" / "model")   # a source checkout without the model
    with pytest.raises(FileNotFoundError, match=r"package's demo model directory .*pkg.model.*pip install \."):
        demo.demo_model_dir()
    for argv in (["--image", picture, "-p", "Hi"], ["--demo"]):
        assert run(argv)[0] == 2
        err = capsys.readouterr().err
        assert "OWL_MODEL" in err and "owl-export" in err and "demo model is not installed" in err
    assert not (env / "owl-demo.png").exists()
    pytest.importorskip("uvicorn")
    from owl_cpp.server.cli import main as owl_server
    assert owl_server([]) == 2
    assert "demo model is not installed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- no model given

def test_chat_without_a_model_uses_the_demo_model_and_says_so_once(env, model, demo_dir, picture, capsys,
                                                                   monkeypatch):
    want = model.chat(picture, "Hi", max_tokens=5)
    assert owl_cpp.chat(picture, "Hi", max_tokens=5, threads=1, n_ctx=1024) == want
    assert owl_cpp.chat(picture, "Hi", max_tokens=5, threads=1, n_ctx=1024) == want
    err = capsys.readouterr().err
    assert err == demo.NOTICE + "\n" and "\n" not in demo.NOTICE           # one line, once per process
    assert "model=" in err and "OWL_MODEL" in err and "owl-export" in err and "coloured shapes" in err
    monkeypatch.setattr(demo, "_noticed", False)
    assert owl_cpp.chat(picture, "Hi", model=demo_dir, max_tokens=5, threads=1, n_ctx=1024) == want
    assert owl_cpp.chat(picture, "Hi", model="demo", max_tokens=5, threads=1, n_ctx=1024) == want
    monkeypatch.setenv("OWL_MODEL", str(demo_dir))
    assert owl_cpp.chat(picture, "Hi", max_tokens=5, threads=1, n_ctx=1024) == want
    assert capsys.readouterr().err == ""                                      # a model given: no notice


def test_owl_run_without_a_model_uses_the_demo_model(env, model, picture, capsys):
    rc, out = run(["--image", picture, "-p", "Hi", "-n", "6", *RUN])
    assert rc == 0 and out == model.chat(picture, "Hi", max_tokens=6) + "\n"
    assert capsys.readouterr().err == demo.NOTICE + "\n"


def test_owl_server_without_a_model_serves_the_demo_model(env, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from owl_cpp.server.cli import main as owl_server

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    assert owl_server(["-t", "1", "-c", "512"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == demo.NOTICE and err.count(demo.NOTICE) == 1         # then the chat page's address
    assert served["host"] == "127.0.0.1"
    models = TestClient(served["app"]).get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [demo.DEMO_MODEL_NAME]


# ------------------------------------------------------------------------------------------- owl-run --demo

def test_owl_run_demo_end_to_end(env, demo_dir, model):
    """The console script in a subprocess, stdout a pipe: no picture, no colour, five questions with answers."""
    environ = {k: v for k, v in os.environ.items() if k != "OWL_MODEL"}
    environ.update(PYTHONPATH=os.pathsep.join([OWL_CPP_PARENT, os.environ.get("PYTHONPATH", "")]),
                   OWL_DEMO_DIR=str(demo_dir), PYTHONIOENCODING="utf-8", TERM="xterm-256color")
    r = subprocess.run([sys.executable, "-m", "owl_cpp.cli", "--demo", "--seed", "5", "-n", "6", *RUN],
                       capture_output=True, text=True, encoding="utf-8", env=environ, cwd=env, timeout=120)
    assert r.returncode == 0, r.stderr
    scene, asked = scene_and_questions(5)
    saved = Image.open(env / "owl-demo.png")
    assert saved.format == "PNG" and np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(draw(scene)))
    assert "saved the picture to owl-demo.png" in r.stderr and "--seed 5" in r.stderr
    assert demo.NOTICE not in r.stderr                        # --demo asked for the demo model: nothing to say
    assert "\x1b[" not in r.stdout and "\u2580" not in r.stdout
    assert r.stdout.count("\n[") == len(KINDS) == 5
    picture = draw(scene)
    for kind, question, truth in asked:
        answer = model.chat(picture, question, max_tokens=6)
        mark = "✓" if same_answer(answer, truth) else "✗"
        assert f"[{kind}] {question}\n  {answer}\n  {mark} expected: {truth} · first token " in r.stdout
    assert "tokens/s" in r.stdout and r.stdout.rstrip().endswith("of 5 answers as expected")


def test_owl_run_demo_on_a_terminal_shows_the_picture(env, monkeypatch, capsys):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.delenv("NO_COLOR", raising=False)
    save = env / "pics" / "scene.png"
    save.parent.mkdir()
    rc, out = run(["--demo", "--seed", "2", "--save", str(save), "-n", "2", *RUN], FakeTTY())
    assert rc == 0 and save.is_file() and not (env / "owl-demo.png").exists()
    assert f"saved the picture to {save}" in capsys.readouterr().err
    lines = out.split("\n")
    assert lines[0].count("\u2580") == 48 and lines[0].startswith("\x1b[38;2;") and lines[0].endswith("\x1b[0m")
    scene, _ = scene_and_questions(2)
    assert sum("\u2580" in line for line in lines) == round(scene.height / scene.width * 48 / 2)
    assert "\x1b[31m✗\x1b[0m expected" in out or "\x1b[32m✓\x1b[0m expected" in out
    rc, out = run(["--demo", "--image", str(save), "-n", "2", *RUN], FakeTTY())     # a picture of yours: shown too
    assert rc == 0 and out.split("\n")[0] == lines[0] and out.count("\n[") == 5
    for env_var, value in (("NO_COLOR", "1"), ("TERM", "dumb")):
        with monkeypatch.context() as m:
            m.setenv(env_var, value)
            rc, out = run(["--demo", "--seed", "2", "-n", "2", *RUN], FakeTTY())
            assert rc == 0 and "\x1b" not in out and "\u2580" not in out and out.count("\n[") == 5


def test_owl_run_demo_about_a_picture_of_yours(env, model, picture, capsys):
    rc, out = run(["--demo", "--image", picture, "-n", "6", *RUN])
    assert rc == 0 and "expected" not in out and not (env / "owl-demo.png").exists()
    description = model.chat(picture, "Describe the image.", max_tokens=6)
    asked = [("describe", "Describe the image.")] + picture_questions(description)
    assert [k for k, _ in asked] == ["describe", "count", "colour", "shape", "where"]
    for kind, question in asked:
        assert f"[{kind}] {question}\n  {model.chat(picture, question, max_tokens=6)}\n  first token " in out
    assert capsys.readouterr().err == ""


def test_owl_run_demo_with_a_model_of_yours(env, demo_dir, monkeypatch, capsys):
    monkeypatch.setenv(demo.DEMO_ENV, str(env / "nowhere"))      # not needed: --model says which
    monkeypatch.setenv("OWL_MODEL", str(env / "nowhere"))        # nor $OWL_MODEL: --demo ignores it
    rc, out = run(["--demo", "--model", str(demo_dir), "--seed", "3", "-n", "2", *RUN])
    assert rc == 0 and out.count("\n[") == 5
    assert run(["--demo", "--seed", "3", "-n", "2", *RUN])[0] == 2       # no --model: the demo model, missing
    capsys.readouterr()


def test_owl_run_demo_argument_errors(env, picture, capsys):
    for argv, message in ((["--save", "x.png", "--image", picture, "-p", "Hi"], "--save goes with --demo"),
                          (["--demo", "--image", picture, "--image", picture], "one picture"),
                          (["--demo", "-p", "Hi"], "its own questions"),
                          (["--demo", "--image", picture, "--save", "x.png"], "with --image there is none")):
        assert run(argv + RUN)[0] == 2
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- helpers

def test_answers_compare_loosely_and_descriptions_name_objects():
    assert same_answer(" Red.", "red") and same_answer("top  left", "top left") and not same_answer("2", "3")
    assert same_answer("a red star at the top left and a blue circle in the center",
                       "a red star at the top left and a blue circle in the center.")
    assert objects_named("A red star at the top left and an orange circle in the center.") == \
        [("red", "star"), ("orange", "circle")]
    assert picture_questions("a purple diamond in the center.")[1:] == [
        ("colour", "What colour is the diamond?"), ("shape", "What shape is the purple object?"),
        ("where", "Where is the diamond?")]
    assert picture_questions("gibberish")[1][1] == "What colour is the circle?"
