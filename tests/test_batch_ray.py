"""owl-batch on Ray (owl_cpp/batch/ray_engine.py): a local Ray cluster started here (2 CPUs, shared by the tests
of this module), the same folder as tests/test_batch.py: the same results as the single-machine run, and one
actor killed in the middle of the job without losing or repeating any result. Skips without Ray
(`pip install ".[ray]"`; .ci/run installs it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from batch_images import BROKEN, GOOD, make_image_folder  # noqa: E402
from owl_cpp.batch import run_batch  # noqa: E402
from owl_cpp.batch.ray_engine import OwlPredictor, run_ray  # noqa: E402

PROMPTS = ["What does the image show?", "How many shapes are there?"]


class DiesOnce(OwlPredictor):
    """Kills its own actor process in the middle of its second batch, once per job (a marker file says it
    happened): the batch is lost with the process, and Ray Data restarts the actor and runs the batch again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        marker = Path(os.environ["OWL_TEST_KILL_MARKER"])
        if self.calls == 2 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(batch)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marker = tmp_path_factory.mktemp("ray") / "killed"
    import ray.cloudpickle
    import test_batch_ray
    ray.cloudpickle.register_pickle_by_value(test_batch_ray)      # DiesOnce travels to the workers by value
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OWL_TEST_KILL_MARKER": str(marker)}})
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def single_machine(tmp_path_factory):
    folder = make_image_folder(tmp_path_factory.mktemp("batch") / "images")
    out = folder.parent / "single.jsonl"
    run_batch(folder, PROMPTS, out, model="demo", workers=2, progress=False)
    return folder, {(r["id"], r["prompt"]): r for r in map(json.loads, out.read_text().splitlines())}


def same_results(got: list[dict], want: dict) -> None:
    assert sorted((r["id"], r["prompt"]) for r in got) == sorted(want)          # each exactly once
    for r in got:
        w = want[(r["id"], r["prompt"])]
        assert (r["answer"], r["error"], r["prompt_index"]) == (w["answer"], w["error"], w["prompt_index"]), r
        if r["error"] is None:
            assert r["prompt_tokens"] == w["prompt_tokens"] and r["completion_tokens"] == w["completion_tokens"]


def test_ray_gives_the_single_machine_results(cluster, single_machine, tmp_path):
    folder, want = single_machine
    out = tmp_path / "ray.jsonl"
    summary = run_ray(folder, PROMPTS, out, model="demo", actors=2, batch_size=3, progress=False)
    same_results([json.loads(x) for x in out.read_text().splitlines()], want)
    assert summary["errors"] == 2 * len(BROKEN) and summary["written"] == 2 * (len(GOOD) + len(BROKEN))
    again = run_ray(folder, PROMPTS, out, model="demo", actors=2, progress=False)           # resumed: nothing left
    assert again["written"] == 0 and again["skipped"] == summary["written"]


def test_an_actor_killed_mid_job_loses_and_repeats_nothing(cluster, single_machine, tmp_path):
    folder, want = single_machine
    out = tmp_path / "killed.jsonl"
    run_ray(folder, PROMPTS, out, model="demo", actors=2, batch_size=2, progress=False, predictor=DiesOnce)
    assert cluster.exists()                          # an actor did die
    same_results([json.loads(x) for x in out.read_text().splitlines()], want)


def test_the_cli_runs_on_ray(cluster, single_machine, tmp_path):
    from owl_cpp.batch.cli import main as owl_batch

    folder, want = single_machine
    out = tmp_path / "cli.jsonl"
    assert owl_batch(["--ray", "--model", "demo", "--images", str(folder), "-p", PROMPTS[0], "-p", PROMPTS[1],
                      "--out", str(out), "--actors", "2", "--no-progress"]) == 0
    same_results([json.loads(x) for x in out.read_text().splitlines()], want)


def test_the_ray_data_recipe(cluster, single_machine, tmp_path):
    """docs/batch.md's recipe: files read by Ray Data (read_binary_files: broken ones become error rows;
    read_images for collections known to decode), OwlPredictor on an actor pool, write_json."""
    import pandas as pd

    folder, want = single_machine
    ds = ray.data.read_binary_files(str(folder), include_paths=True, file_extensions=["png", "jpg"])
    # one actor: the read tasks need a CPU of the two too (two 1-CPU actors would starve them)
    ds = ds.map_batches(OwlPredictor, fn_constructor_kwargs={"model": "demo", "prompts": PROMPTS},
                        batch_size=4, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    ds.write_json(str(tmp_path / "out"))
    got = pd.concat([pd.read_json(f, lines=True) for f in (tmp_path / "out").glob("*.json")])
    recs = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in got.to_dict("records")]
    for r in recs:
        r["id"] = Path(r["id"]).relative_to(folder).as_posix()         # read_binary_files names rows by path
        r["error"] = r["error"] and r["error"].replace("image bytes", str(folder / r["id"]))
    same_results([r for r in recs if r["error"] is None], {k: w for k, w in want.items() if w["error"] is None})
    assert sorted((r["id"], r["prompt"]) for r in recs) == sorted(want)

    pngs = [str(folder / n) for n in GOOD if n.endswith(".png")]
    ds = ray.data.read_images(pngs, include_paths=True, mode="RGB")
    ds = ds.map_batches(OwlPredictor, fn_constructor_kwargs={"model": "demo", "prompts": PROMPTS[:1]},
                        batch_size=4, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    rows = ds.take_all()
    assert len(rows) == len(pngs)
    for r in rows:
        assert r["answer"] == want[(Path(r["id"]).relative_to(folder).as_posix(), PROMPTS[0])]["answer"]
