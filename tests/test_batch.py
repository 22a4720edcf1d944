"""owl-batch on one machine (owl_cpp/batch): every good image answered exactly as a per-image chat() call
answers it (greedy, demo model) in both layouts, every broken file one error line; lanes: each image's crops in
a run of its own, one thread per lane; stages: the crops of several images in one vision run, decode steps of
the workers batched; the cached prompt prefix reused, resume after a finished run, a half-written last line,
Ctrl-C, and a stop that comes promptly (between decode steps, a vision run ended)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import owl_cpp
from batch_images import BROKEN, GOOD, make_image_folder
from owl_cpp.batch import read_results, run_batch
from owl_cpp.batch.cli import main as owl_batch

PROMPTS = ["What does the image show?", "How many shapes are there?"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("batch") / "images")


@pytest.fixture(scope="module")
def reference(folder):
    """(image id, prompt) -> the answer of a per-image chat() call on a model of its own."""
    m = owl_cpp.load("demo")
    return {(name, q): m.chat(str(folder / name), q) for name in GOOD for q in PROMPTS}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class CountingSession:
    """Wraps the vision tower's onnxruntime session: the batch size of every run."""

    def __init__(self, session):
        self.session, self.sizes = session, []

    def run(self, outputs, feeds, *run_options):
        self.sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(outputs, feeds, *run_options)


@pytest.mark.parametrize("layout,threads", [("lanes", 1), ("lanes", 2), ("stages", None)])
def test_every_image_answered_as_chat_answers_it(folder, reference, tmp_path, layout, threads):
    """The reference ran on a model of the default threads (2 on the CI machine): lanes of one thread (their
    contexts and, for a model loaded with more, a vision session of their own) give the same answers."""
    m = owl_cpp.load("demo", max_spare_contexts=2, threads=threads)
    m.vision.session = counting = CountingSession(m.vision.session)
    out = tmp_path / "results.jsonl"
    summary = run_batch(folder, PROMPTS, out, model=m, workers=2, vision_batch=12, progress=False, layout=layout,
                        threads=1 if layout == "lanes" else None)
    assert (summary["layout"], summary["workers"], summary["threads"]) == (layout, 2, 1 if layout == "lanes" else m.threads)
    recs = lines(out)
    assert sorted((r["id"], r["prompt"]) for r in recs) == sorted((n, q) for n in GOOD + list(BROKEN) for q in PROMPTS)
    for r in recs:
        if r["id"] in BROKEN:
            assert r["answer"] is None and BROKEN[r["id"]] in r["error"] and r["id"] in r["error"], r
        else:
            assert r["error"] is None and r["answer"] == reference[(r["id"], r["prompt"])], r
            assert r["prompt_index"] == PROMPTS.index(r["prompt"]) and r["completion_tokens"] >= 1
            assert r["finish_reason"] == "stop" and r["total_ms"] > 0 and r["image"] == str(folder / r["id"])
    assert summary["written"] == len(recs) and summary["errors"] == 2 * len(BROKEN)
    if layout == "stages":
        # crops of several images went through the vision tower together (a demo image is at most 5 views)
        assert max(counting.sizes) > 5 and sum(counting.sizes) == m.vision.n_encoded
    elif threads == 1:
        # lanes on the model's own session: one run per image (none twice: the second prompt finds the cache)
        views = {n: len(m._expand([str(folder / n)], True)[0].views) for n in GOOD}
        assert len(counting.sizes) == len(GOOD) and max(counting.sizes) <= max(views.values())
        assert sum(counting.sizes) == m.vision.n_encoded
    else:
        # a model of 2 threads: the lanes ran a 1-thread session of their own, sharing the image cache
        assert counting.sizes == [] and m.vision.cache.misses > 0


def test_the_workers_decode_steps_run_batched(folder, tmp_path):
    """Long answers (ignore_eos) keep both workers decoding at once: their steps run as batches, and the
    answers stay those of chat() with the same options."""
    m = owl_cpp.load("demo", max_spare_contexts=2)
    out = tmp_path / "long.jsonl"
    opts = dict(max_tokens=40, ignore_eos=True)
    summary = run_batch(folder, PROMPTS[:1], out, model=m, workers=2, progress=False, layout="stages", **opts)
    assert summary["decode_steps"] > summary["decode_batches"]
    ref = owl_cpp.load("demo")
    for r in lines(out):
        if r["error"] is None:
            assert r["completion_tokens"] == 40 and r["answer"] == ref.chat(str(folder / r["id"]), PROMPTS[0], **opts)


def test_the_cached_prompt_prefix_is_reused(folder, reference, tmp_path, monkeypatch):
    """One worker: an image's second prompt keeps the image and all before the question from the first (and
    its crops are hashed once, not once per prompt); with the question placed before the image (<|image|>
    marker), the next image keeps the question too."""
    import owl_cpp.batch.lanes as lanes

    hashed = []
    monkeypatch.setattr(lanes, "content_key", lambda v, real=lanes.content_key: hashed.append(1) or real(v))
    m = owl_cpp.load("demo")
    out = tmp_path / "r.jsonl"
    run_batch(folder, PROMPTS, out, model=m, workers=1, progress=False)
    assert len(hashed) == sum(len(m._expand([str(folder / n)], True)[0].views) for n in GOOD)
    by_key = {(r["id"], r["prompt"]): r for r in lines(out)}
    for name in GOOD:
        ids = [m._build_prompt(*m._conversation(q, [str(folder / name)], None, True)).ids for q in PROMPTS]
        common = next(i for i, (a, b) in enumerate(zip(*ids)) if a != b)
        assert by_key[(name, PROMPTS[1])]["prompt_tokens_cached"] == common

    q = "Answer about this picture: how many shapes are there? <|image|>"
    out2 = tmp_path / "r2.jsonl"
    run_batch(folder, [q], out2, model=m, workers=1, progress=False)
    answered = [r for r in lines(out2) if r["error"] is None]
    head = m.tokenize(q.split("<|image|>")[0], add_special=False)
    assert all(r["prompt_tokens_cached"] >= len(head) for r in answered[1:])
    assert all(r["answer"] == m.chat(str(folder / r["id"]), q) for r in answered)


def test_a_rerun_skips_done_work_and_drops_a_half_written_line(folder, reference, tmp_path):
    m = owl_cpp.load("demo")
    out = tmp_path / "results.jsonl"
    listing = tmp_path / "list.txt"
    listing.write_text("# three of them\n" + "".join(f"{os.path.relpath(folder / n, tmp_path)}\n" for n in GOOD[:3]))
    run_batch(listing, PROMPTS[:1], out, model=m, progress=False)
    assert len(lines(out)) == 3
    first = out.read_bytes()
    summary = run_batch(listing, PROMPTS[:1], out, model=m, progress=False)       # nothing left to do
    assert summary["written"] == 0 and summary["skipped"] == 3 and out.read_bytes() == first

    full = [f"{os.path.relpath(folder / n, tmp_path)}" for n in GOOD]
    listing.write_text("\n".join(full) + "\n")
    with open(out, "ab") as f:                      # a kill in the middle of writing a line
        f.write(b'{"id": "' + full[3].encode() + b'", "prompt": "What')
    summary = run_batch(listing, PROMPTS[:1], out, model=m, progress=False)
    recs = lines(out)                               # every line whole JSON again
    assert out.read_bytes().startswith(first) and summary["written"] == len(GOOD) - 3
    assert sorted(r["id"] for r in recs) == sorted(full)
    for r in recs:
        assert r["answer"] == reference[(Path(os.path.normpath(tmp_path / r["id"])).relative_to(folder).as_posix(), PROMPTS[0])]


def test_errors_are_done_again_only_when_asked(folder, tmp_path):
    m = owl_cpp.load("demo")
    out = tmp_path / "r.jsonl"
    run_batch(folder, PROMPTS[:1], out, model=m, progress=False)
    assert run_batch(folder, PROMPTS[:1], out, model=m, progress=False)["written"] == 0
    summary = run_batch(folder, PROMPTS[:1], out, model=m, retry_errors=True, progress=False)
    assert summary["written"] == summary["errors"] == len(BROKEN)
    assert len(read_results(out)) == len(GOOD) + len(BROKEN)        # a later line for a key replaces the earlier


def test_cli_runs_and_refuses_bad_arguments(folder, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS[:1]))
    assert owl_batch(["--model", "demo", "--images", str(folder), "--prompts", str(prompts), "--out", str(out),
                      "--workers", "1", "--no-progress"]) == 0
    assert len(lines(out)) == len(GOOD) + len(BROKEN)
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["written"] == len(GOOD) + len(BROKEN)
    assert owl_batch(["--images", str(folder), "--workers", "0", "--out", str(out)]) == 2
    assert owl_batch(["--images", str(folder), "-p", "<|image|> and <|image|>?", "--out", str(out)]) == 2
    assert "prompt '<|image|> and <|image|>?'" in capsys.readouterr().err
    assert owl_batch(["--images", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert owl_batch(["--model", "demo", "--images", str(folder), "-p", "Hi", "-p", "Hi", "--out", str(out)]) == 2
    assert "appears twice" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["lanes", "stages"])
def test_ctrl_c_leaves_a_valid_file_and_a_rerun_completes(tmp_path, layout):
    folder = tmp_path / "many"
    from owl_cpp.demo import scenes
    import numpy as np
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(24):                              # large pictures: many crops each, so the job takes a while
        scenes.draw(scenes.random_scene(rng, min_side=500, max_side=640)).save(folder / f"{i:02d}.png")
    out = tmp_path / "r.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "owl_cpp.batch.cli", "--model", "demo", "--images", str(folder), "--out", str(out),
           "--workers", "1", "--no-progress", "-p", PROMPTS[0], "-p", PROMPTS[1], "--layout", layout]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240                    # a loaded CI machine is slow to import and load the model
    while time.time() < deadline and proc.poll() is None and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.01)
    assert proc.poll() is None and out.exists() and out.read_text().count("\n") >= 3, "no 3 results before Ctrl-C"
    proc.send_signal(signal.SIGINT)
    try:
        err = proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("owl-batch did not exit within 120 s of Ctrl-C: " + proc.communicate()[1][-2000:])
    n = len(lines(out))                             # whole lines only
    assert proc.returncode == 130 and "interrupted" in err and 3 <= n < 48, (proc.returncode, n, err[-500:])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    recs = lines(out)
    assert len(recs) == 48 and len({(r["id"], r["prompt"]) for r in recs}) == 48
    assert all(r["error"] is None for r in recs)


def test_an_int8_vision_tower_runs_each_image_alone(folder, tmp_path):
    """A dynamically quantized (int8) tower takes its activation scale over the whole run, so a view's embedding
    depends on what shares its run: by default each image's crops then run on their own, as chat() runs them
    (one run per image, of at most its crops: crops seen before, plain background tiles, come from the cache)."""
    from owl_export.cli import main as owl_export
    from owl_export.owl3.fixtures import make_tiny_owl3_checkpoint

    hf = make_tiny_owl3_checkpoint(tmp_path / "hf", "1b", seed=3)
    assert owl_export([str(hf), "-o", str(tmp_path / "m"), "--quant", "f32", "--vision-quant", "int8", "-q"]) == 0
    m = owl_cpp.load(tmp_path / "m", max_spare_contexts=2)
    assert not m.vision.batch_invariant and owl_cpp.load("demo").vision.batch_invariant
    m.vision.session = counting = CountingSession(m.vision.session)
    out = tmp_path / "r.jsonl"
    run_batch(folder, PROMPTS[:1], out, model=m, workers=2, max_tokens=12, progress=False, layout="stages")
    ref = owl_cpp.load(tmp_path / "m")
    views = {n: len(ref._expand([str(folder / n)], True)[0].views) for n in GOOD}
    assert len(counting.sizes) == len(GOOD) and max(counting.sizes) <= max(views.values())
    assert sum(r["error"] is None for r in lines(out)) == len(GOOD)
    # lanes of one thread (their own 1-thread session of the int8 tower) answer as chat() on the default threads
    lanes = tmp_path / "lanes.jsonl"
    run_batch(folder, PROMPTS[:1], lanes, model=owl_cpp.load(tmp_path / "m"), workers=2, threads=1, max_tokens=12,
              progress=False, layout="lanes")
    answered = [r for r in lines(lanes) if r["error"] is None]
    assert len(answered) == len(GOOD)
    assert all(r["answer"] == ref.chat(str(folder / r["id"]), PROMPTS[0], max_tokens=12) for r in answered)


def test_the_layout_plan():
    from owl_cpp.batch.layout import plan

    assert plan(cores=2) == plan(device="cpu", cores=2) and plan(cores=2).layout == "lanes"
    assert (plan(cores=2).workers, plan(cores=2).threads) == (2, 1)            # one single-thread lane per core
    assert (plan(2, cores=8).workers, plan(2, cores=8).threads) == (2, 4)      # the cores shared out
    assert (plan(threads=2, cores=8).workers, plan(threads=3, cores=8).workers) == (4, 2)
    assert (plan(cores=1).workers, plan(5, cores=2).threads) == (1, 1)
    assert plan(device="cuda") == plan(layout="stages") and plan(device="cuda").workers == 2
    assert plan(device="cuda").threads is None and plan(3, 2, layout="stages").threads == 2
    for bad in (dict(layout="rows"), dict(workers=0), dict(threads=0)):
        with pytest.raises(ValueError):
            plan(**bad)


class FlipsAfter:
    """A stop event that is set from its n-th look on."""

    def __init__(self, n: int):
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_a_stop_ends_an_answer_between_decode_steps(folder):
    """answer_one looks at the stop event after the vision run and between decode steps: once set, the answer
    is dropped (Stopped, no record) after a few steps of a long one, and its context is free again."""
    from owl_cpp.batch.answer import answer_one
    from owl_cpp.batch.job import Stopped

    m = owl_cpp.load("demo")
    slot = m._contexts.new_slot()
    ex = m._expand([str(folder / GOOD[0])], True)
    steps = m._batcher.steps
    with pytest.raises(Stopped):
        answer_one(m, slot, "a", "a.png", ex, PROMPTS[0], 0, dict(max_tokens=500, ignore_eos=True),
                   cancel=FlipsAfter(6), batch_decode=True)
    assert 0 < m._batcher.steps - steps < 10 and not slot.busy
    with pytest.raises(Stopped):                  # set before: no decoding at all
        answer_one(m, slot, "a", "a.png", ex, PROMPTS[0], 0, dict(max_tokens=5), cancel=FlipsAfter(0))
    rec = answer_one(m, slot, "a", "a.png", ex, PROMPTS[0], 0, dict(max_tokens=500), cancel=FlipsAfter(10 ** 6))
    assert rec["answer"] == m.chat(str(folder / GOOD[0]), PROMPTS[0])


def test_stop_ends_vision_runs_and_waits_for_all_threads_together():
    """stop() terminates the onnxruntime runs of the job (a run in flight raises; one started later too) and
    gives its threads one deadline together: three threads that ignore it cost the timeout once, not thrice."""
    import threading

    from owl_cpp.batch.job import Job

    job = Job(3)
    ro = job.run_options()
    release = threading.Event()
    for i in range(3):
        job._spawn(release.wait, f"stuck-{i}", 3.0)
    job.start()
    t0 = time.perf_counter()
    assert job.stop(timeout=0.5) is False
    assert time.perf_counter() - t0 < 1.5 and ro.terminate and job.run_options().terminate
    release.set()
    assert job.stop(timeout=5) is True

    m = owl_cpp.load("demo")
    views = m._expand([grey_image()], True)[0].views
    with pytest.raises(Exception, match="terminate"):
        m.vision.encode(views, run_options=ro)


def grey_image():
    import numpy as np
    return np.full((64, 64, 3), 128, np.uint8)
