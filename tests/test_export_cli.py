"""`owl-export` in a runtime-only install (`pip install .`, without the `export` extra).

Each check runs the command in a fresh interpreter in which importing the extra's modules fails exactly as it
does when they are not installed (a meta path finder raising ModuleNotFoundError), so what is tested is what a
user of such an install sees: --help prints the help, and an export ends with one line naming the missing module
and the command that installs it, exit status 2, no traceback.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import owl_export
from owl_export import cli

# The subprocess must import the same owl_export as this process: installed, or from the source tree.
OWL_EXPORT_PARENT = str(Path(owl_export.__file__).resolve().parent.parent)
EXTRA = sorted(cli.EXPORT_EXTRA_MODULES - {"onnxruntime"})     # onnxruntime is also a runtime dependency
HINT = 'pip install "owl_cpp[export]"'

# argv[1]: comma-separated modules to block; argv[2:]: owl-export's arguments. Runs owl-export's entry point
# (console script `owl-export = owl_export.cli:main`) after installing the blocker.
RUNNER = r"""
import sys

BLOCKED = set(filter(None, sys.argv[1].split(",")))


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
for name in BLOCKED:                      # the blocker itself works
    try:
        __import__(name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"blocker failed: {name} imported")

from owl_export.cli import main

sys.argv = ["owl-export"] + sys.argv[2:]
sys.exit(main())
"""


def owl_export_without(blocked, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (OWL_EXPORT_PARENT, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", RUNNER, ",".join(blocked), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def assert_one_line_hint(r: subprocess.CompletedProcess, module: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("owl-export: error:") and repr(module) in lines[0] and HINT in lines[0], lines[0]


def test_help_needs_no_export_extra():
    r = owl_export_without(EXTRA, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: owl-export") and r.stderr == ""
    for option in ["--out", "--quant", "--vision-dtype", "--vision-quant", "q4_0"]:
        assert option in r.stdout


def test_export_without_extra_says_what_to_install(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    r = owl_export_without(EXTRA, hf, "-o", tmp_path / "out.gguf")
    assert_one_line_hint(r, "torch")                       # the first one the export imports
    assert not (tmp_path / "out.gguf").exists()


def test_usage_errors_still_come_first():
    r = owl_export_without(EXTRA, "/nonexistent", "-o", "x.gguf", "--quant", "q3_k")
    assert r.returncode == 2 and "invalid choice: 'q3_k'" in r.stderr and "Traceback" not in r.stderr


def test_each_missing_module_is_named(tmp_path, tiny_qwen2_dir):
    pytest.importorskip("torch")
    r = owl_export_without(["gguf"], tiny_qwen2_dir, "-o", tmp_path / "out.gguf", "-q")
    assert_one_line_hint(r, "gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_missing_onnx_is_named_for_owl3(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("gguf")
    from owl_export.owl3.fixtures import make_tiny_owl3_checkpoint

    hf = make_tiny_owl3_checkpoint(tmp_path / "hf", "1b")
    r = owl_export_without(["onnx"], hf, "-o", tmp_path / "model", "-q")
    assert_one_line_hint(r, "onnx")
    assert not (tmp_path / "model" / "decoder.gguf").exists()      # it fails before writing the decoder


def test_quant_names_match_the_quantizer():
    quantize = pytest.importorskip("owl_export.quantize")     # needs gguf
    assert cli.QUANT_NAMES == quantize.QUANT_NAMES


def test_vision_quant_names_match_the_exporter_and_runtime():
    onnx_common = pytest.importorskip("owl_export.onnx_common")     # needs torch
    from owl_cpp import vision_files
    assert cli.VISION_QUANT_NAMES == onnx_common.VISION_QUANTS == vision_files.QUANTS
    assert cli.VISION_QUANT_ALIASES == onnx_common.QUANT_ALIASES
    assert cli.vision_quants("static, int8,static") == ("static", "dynamic")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["x", "-o", "y", "--vision-quant", "int4"])


def test_missing_extra_module_follows_causes():
    try:
        try:
            raise ModuleNotFoundError("No module named 'gguf.quants'", name="gguf.quants")
        except ImportError as e:
            raise ImportError("exporting needs gguf") from e
    except ImportError as outer:
        assert cli.missing_extra_module(outer) == "gguf"
    assert cli.missing_extra_module(ModuleNotFoundError("x", name="PIL")) is None
    assert cli.missing_extra_module(ImportError("cannot import name 'x' from 'torch'")) is None


def test_every_owl2_model_type_has_an_exporter():
    """Each model_type the Owl2 exporter reads (config.MODEL_TYPES) is routed to it by the CLI (Owl2.1's
    mplug_owl2_1 once was not)."""
    pytest.importorskip("torch")
    from owl_export.owl2.config import MODEL_TYPES

    for model_type in MODEL_TYPES:
        assert cli.EXPORTERS.get(model_type) is cli._export_owl2, model_type


def test_mplug2_checkpoint_directory_is_recognised(tmp_path):
    """The official mPLUG-2 layout has no config.json: a .pth beside the BERT json picks the mPLUG-2 exporter."""
    (tmp_path / "mplug2_caption.pth").write_bytes(b"")
    (tmp_path / "config_bert_large_text.json").write_text("{}")
    assert cli.pick_exporter(tmp_path) is cli._export_mplug2
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')        # an HF directory wins
    assert cli.pick_exporter(tmp_path) is cli._export_text
