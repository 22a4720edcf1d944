"""Shared pytest fixtures: tiny random HF checkpoints in the official layouts and their GGUF conversions.

  tiny_qwen2_dir   Qwen2 checkpoint dir (tied embeddings, q/k/v biases, padded embedding rows)
  tiny_llama_dir   LLaMA checkpoint dir (separate lm_head, SentencePiece tokenizer)
  tiny_gguf        factory: tiny_gguf(arch, quant) -> Path of the converted GGUF, cached per (arch, quant)

All are session-scoped: built once per test run, read-only for tests (copy before modifying).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent

# Let the tests run from a source checkout without `pip install`: the export package lives in export/.
try:
    import owl_export  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_REPO / "export"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    from owl_export.fixtures import make_tiny_checkpoint
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen2", "qwen2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from owl_export.fixtures import make_tiny_checkpoint
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llama", "llama", seed=1)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_qwen2_dir, tiny_llama_dir):
    """tiny_gguf(arch, quant) -> Path: the tiny checkpoint of `arch` converted with `quant`, built once."""
    from owl_export.convert_text import convert_text_model

    dirs = {"qwen2": tiny_qwen2_dir, "llama": tiny_llama_dir}
    out_dir = tmp_path_factory.mktemp("gguf")
    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, quant: str = "f32") -> Path:
        key = (arch, quant)
        if key not in cache:
            out = out_dir / f"tiny-{arch}-{quant}.gguf"
            convert_text_model(dirs[arch], out, quant=quant, progress=False)
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_owl3_model(tmp_path_factory):
    """tiny_owl3_model(variant) -> (hf_dir, model_dir): a tiny mPLUG-Owl3 checkpoint ("1b", "7b-240728",
    "7b-241101") and its f32 export by owl-export (the fp32 vision file alone: the tests compare it with the
    PyTorch reference), built once per session."""
    from owl_export.cli import main as owl_export
    from owl_export.owl3.fixtures import make_tiny_owl3_checkpoint

    cache: dict[str, tuple[Path, Path]] = {}

    def get(variant: str) -> tuple[Path, Path]:
        if variant not in cache:
            root = tmp_path_factory.mktemp(f"owl3-{variant}")
            hf = make_tiny_owl3_checkpoint(root / "hf", variant, seed=3)   # a seed whose greedy answers vary
            assert owl_export([str(hf), "-o", str(root / "model"), "--quant", "f32", "--vision-quant", "none",
                                "-q"]) == 0
            cache[variant] = (hf, root / "model")
        return cache[variant]

    return get


@pytest.fixture
def isa_restore():
    """Puts back the kernel variant that was active before the test (tests switch it with ops.set_isa)."""
    from owl_cpp import _testing

    before = _testing.ops.active_isa()
    yield
    _testing.ops.set_isa(before)


class Scripted:
    """Stands in for _core.Sampler: returns the given tokens in order."""

    def __init__(self, tokens):
        self.tokens = list(tokens)

    def sample(self, ctx, history, n_vocab):
        return self.tokens.pop(0)


@pytest.fixture
def script(monkeypatch):
    """script(tokens): generation on any model then samples exactly these tokens, in order."""
    from owl_cpp.generation import SamplingOptions

    def use(tokens):
        monkeypatch.setattr(SamplingOptions, "make_sampler", lambda self: Scripted(tokens))
    return use
