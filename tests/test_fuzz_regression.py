"""The fuzzer's inputs (tests/fuzz/): every seed of the corpus and every input that ever crashed the harness must
load or be a clean FormatError/OwlError, in the default run (no clang needed); so must a few hundred byte flips of
the seeds. `pytest -m fuzz` builds the libFuzzer harness (ASan + UBSan) and runs a campaign where clang exists."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import owl_cpp
from owl_cpp import _core

FUZZ = Path(__file__).resolve().parent / "fuzz"
REPO = FUZZ.parent.parent
SEEDS = sorted(p for p in (FUZZ / "corpus").iterdir() if p.suffix == ".gguf")
CRASHES = sorted(p for p in (FUZZ / "crashes").iterdir() if p.is_file() and p.name != "README.md")
CLEAN = (owl_cpp.FormatError, owl_cpp.OwlError)


def exercise(path) -> str:
    """What tests/fuzz/fuzz_gguf.cpp does with an input: "loaded" or the clean error's message."""
    try:
        f = _core.GGUFFile.open(str(path))
        [f[k] for k in f.keys()]
        f.tensors()
        m = _core.Model.load(str(path))
        tok = m.tokenizer
        ids = tok.encode("Hello wörld <s></s><|im_start|> ab 日本\n\t  a")
        tok.decode(ids, render_special=True)
        tok.decode(tok.encode(Path(path).read_bytes()[-64:], False, False))  # arbitrary bytes as text
        if ids:
            ctx = _core.Context(m, n_ctx=4, n_threads=1, n_batch=2, kv_type="f32")
            ctx.eval(ids[:2], all_logits=True)
        return "loaded"
    except CLEAN as e:
        return str(e)


def test_inputs_are_there():
    assert len(SEEDS) >= 5 and CRASHES
    assert sum(p.stat().st_size for p in SEEDS) < 1 << 20


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.name)
def test_seeds_are_valid_models(path):
    # Mutations of a file that loads reach the loader, the repacking and the tokenizers, not just the header.
    assert exercise(path) == "loaded"
    m = _core.Model.load(str(path))
    ctx = _core.Context(m, n_ctx=8, n_threads=1)
    assert np.isfinite(ctx.eval(m.tokenizer.encode("ab a"))).all()


@pytest.mark.parametrize("path", CRASHES, ids=lambda p: p.name)
def test_crashes_are_clean_now(path):
    exercise(path)  # a crash here takes the whole run down: that is the failure


def test_byte_flips_of_the_seeds(tmp_path):
    rng = np.random.default_rng(12)
    seeds = [p.read_bytes() for p in SEEDS]
    outcomes = {"loaded": 0, "error": 0}
    start = time.monotonic()
    for i in range(400):
        b = bytearray(seeds[i % len(seeds)])
        # Mostly the header (keys, tensor infos), where the structure is; sometimes anywhere, or a cut.
        span = len(b) if rng.random() < 0.25 else min(len(b), 1500)
        for _ in range(int(rng.integers(1, 5))):
            b[int(rng.integers(0, span))] = int(rng.integers(0, 256))
        if rng.random() < 0.1:
            del b[int(rng.integers(0, len(b))):]
        p = tmp_path / "m.gguf"
        p.write_bytes(bytes(b))
        outcomes["loaded" if exercise(p) == "loaded" else "error"] += 1
    assert outcomes["error"] > 100 and outcomes["loaded"] > 10, outcomes
    assert time.monotonic() - start < 60


def _fuzzer_env():
    env = dict(os.environ)
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


@pytest.mark.fuzz
def test_libfuzzer_campaign(tmp_path):
    """Builds build-fuzz/fuzz_gguf, replays corpus and crashes, then fuzzes for OWL_FUZZ_SECONDS (default 300)."""
    cxx = os.environ.get("CXX", "clang++")
    if not shutil.which(cxx):
        pytest.skip(f"{cxx} is not installed (apt-get install clang libclang-rt-14-dev)")
    build = subprocess.run([str(FUZZ / "build.sh")], cwd=REPO, capture_output=True, text=True)
    if build.returncode != 0 and "clang_rt.fuzzer" in build.stdout + build.stderr:
        pytest.skip("clang has no libFuzzer runtime (apt-get install libclang-rt-14-dev)")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    harness = REPO / build.stdout.strip().splitlines()[-1]
    # Replay: every seed and every recorded crash once, under the sanitizers.
    replay = subprocess.run([str(harness), *map(str, SEEDS + CRASHES)], capture_output=True, text=True, env=_fuzzer_env())
    assert replay.returncode == 0, replay.stderr[-5000:]
    work = tmp_path / "corpus"
    work.mkdir()
    seconds = int(os.environ.get("OWL_FUZZ_SECONDS", "300"))
    run = subprocess.run([str(harness), f"-dict={FUZZ / 'gguf.dict'}", f"-max_total_time={seconds}", "-timeout=10",
                          "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/", str(work), str(FUZZ / "corpus")],
                         capture_output=True, text=True, env=_fuzzer_env())
    found = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "leak-", "timeout-", "oom-")))
    assert run.returncode == 0 and not found, f"{found} in {tmp_path} (copy them to tests/fuzz/crashes/):\n{run.stderr[-5000:]}"
