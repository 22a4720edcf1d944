"""The thread pool (owl/threadpool.h) through _testing.bench.PoolProbe: chunks claimed dynamically must cover [0, n)
exactly once with valid thread indices; a worker the OS does not run must not hold up the caller; exceptions
in fn reach the caller; misuse (two callers at once, a call from inside fn) raises instead of deadlocking;
a failed constructor raises instead of aborting; and the split never changes a model's logits."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import owl_cpp
from owl_cpp import _testing

PoolProbe = _testing.bench.PoolProbe
CPT = _testing.bench.CHUNKS_PER_THREAD


def check_cover(chunks, n: int, threads: int, chunks_per_thread: int = CPT) -> None:
    """Contiguous, non-empty, exactly once over [0, n), as many chunks as promised, thread indices in range."""
    spans = sorted((b, e) for b, e, _ in chunks)
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (b0, e0), (b1, _) in zip(spans, spans[1:]):
        assert e0 == b1
    assert all(e > b for b, e in spans)
    expected = 1 if threads == 1 else min(n, chunks_per_thread * threads)
    assert len(chunks) == expected
    sizes = [e - b for b, e in spans]
    assert max(sizes) - min(sizes) <= 1  # near-equal
    assert all(0 <= t < threads for _, _, t in chunks)


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 28, 100, 1001, 65536 + 17])
def test_every_item_once(threads, n):
    pool = PoolProbe(threads)
    assert pool.size == threads
    for _ in range(3):  # a pool is reused: the job counter must not leak between calls
        check_cover(pool.chunks(n), n, threads)


@pytest.mark.parametrize("chunks_per_thread", [1, 2, 8])
def test_chunks_per_thread(chunks_per_thread):
    pool = PoolProbe(3)
    for n in (1, 2, 5, 24, 1000):
        check_cover(pool.chunks(n, chunks_per_thread), n, 3, chunks_per_thread)


def test_huge_and_empty_ranges():
    pool = PoolProbe(3)
    assert pool.chunks(0) == [] and pool.chunks(-5) == []
    for n in (2**31 + 11, 2**62 + 3, 2**63 - 1):  # no overflow in the chunk bounds
        check_cover(pool.chunks(n), n, 3)


def test_many_small_jobs():
    """Thousands of back-to-back jobs: workers arriving late (after the caller claimed everything) must claim
    nothing of a finished job and nothing twice of a new one."""
    pool = PoolProbe(4)
    for i in range(3000):
        n = 1 + i % 37
        check_cover(pool.chunks(n), n, 4)


def test_workers_take_part():
    """The index contract with real parallelism: chunks that take a while are spread over the threads."""
    pool = PoolProbe(2)
    seen = set()
    deadline = time.monotonic() + 20  # on a loaded machine the worker may sit out a back-off pause (<= 2 s)
    while time.monotonic() < deadline:
        chunks = pool.chunks(64, work_us=100)
        check_cover(chunks, 64, 2)
        seen |= {t for _, _, t in chunks}
        if seen == {0, 1}:
            break
    assert seen == {0, 1}


def test_stalled_worker_does_not_hold_up_the_caller():
    """Worker 1 is stuck in a signal handler (as if descheduled) while 200 jobs run: they all finish before it is
    released, none of their chunks ran on it, and the pool still works with it afterwards."""
    pool = PoolProbe(3)
    in_time, threads = pool.stalled_worker(1, 64, 200)
    assert in_time
    assert len(threads) == 200 * min(64, 3 * CPT)
    assert 1 not in threads
    check_cover(pool.chunks(1000, work_us=20), 1000, 3)


def test_stall_backs_off_then_recovers():
    """A worker that stalls inside a chunk (preempted) is benched: the caller runs the next ops alone, with the
    same chunks; the worker is let back in after a pause."""
    pool = PoolProbe(2)
    pool.stall_in_chunk(64, stall_ms=20)
    after = pool.chunks(64, work_us=50)
    check_cover(after, 64, 2)
    assert {t for _, _, t in after} == {0}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        chunks = pool.chunks(64, work_us=50)
        check_cover(chunks, 64, 2)
        if any(t != 0 for _, _, t in chunks):
            break
    else:
        pytest.fail("the workers never came back after the stall")


def test_idle_pool_sleeps():
    """Workers spin and yield only for a couple of ms after the last job, then sleep: an idle pool costs ~0% CPU."""
    import resource

    pool = PoolProbe(4)
    pool.chunks(1000, work_us=20)
    time.sleep(0.05)  # past the spin and yield phases
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.5)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 0.05, f"{cpu:.3f} s of CPU in 0.5 s of idling"
    check_cover(pool.chunks(100), 100, 4)  # and wakes up for the next job


@pytest.mark.parametrize("kind, exc", [("owl", owl_cpp.OwlError), ("std", RuntimeError)])
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_exception_reaches_the_caller(kind, exc, threads):
    pool = PoolProbe(threads)
    n = 1000
    for at in (0, 499, n - 1, -1):  # first chunk, middle, last, every chunk
        with pytest.raises(exc, match=r"chunk \[\d+, \d+\) failed"):
            pool.throw_at(n, at, kind, work_us=20)
        check_cover(pool.chunks(n), n, threads)  # the pool is fine afterwards


def test_concurrent_use_raises():
    pool = PoolProbe(2)
    msg = pool.concurrent(100)
    assert "thread pool is in use by another thread" in msg
    check_cover(pool.chunks(100), 100, 2)


def test_reentrant_call_raises():
    for threads in (1, 2, 3):
        pool = PoolProbe(threads)
        with pytest.raises(owl_cpp.OwlError, match="thread pool is in use"):
            pool.reentrant(50)
        check_cover(pool.chunks(50), 50, threads)


def test_concurrent_hammering_never_corrupts():
    """Two Python threads (GIL released in the calls) on one pool: each call either covers its range exactly
    or raises the in-use error; nothing hangs."""
    pool = PoolProbe(3)
    errors, results = [], []

    def hammer():
        for i in range(300):
            n = 50 + i % 50
            try:
                results.append((n, pool.chunks(n, work_us=5)))
            except owl_cpp.OwlError as e:
                assert "in use" in str(e)
                errors.append(e)

    workers = [threading.Thread(target=hammer) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert not w.is_alive()
    assert len(results) + len(errors) == 600
    for n, chunks in results:
        check_cover(chunks, n, 3)


def test_constructor_failure_raises_and_cleans_up():
    """300 threads under an address-space limit that admits a few: the constructor stops and joins the threads
    it made and raises (it used to abort with 'terminate called without an active exception')."""
    code = textwrap.dedent("""
        import resource
        from owl_cpp import _testing
        _testing.bench.PoolProbe(2).chunks(10)  # load everything first
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + (96 << 20), hard))
        try:
            _testing.bench.PoolProbe(300)
        except (RuntimeError, MemoryError) as e:
            print("raised:", type(e).__name__, e)
        else:
            print("no error")
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        p = _testing.bench.PoolProbe(4)
        assert sorted(b for b, e, t in p.chunks(100)) == sorted(set(b for b, e, t in p.chunks(100)))
        print("pool ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "raised:" in res.stdout, res.stdout
    assert "pool ok" in res.stdout


@pytest.fixture(scope="module")
def wide_gguf(tmp_path_factory) -> Path:
    """A tiny qwen2 wide enough that every op splits into many chunks (256 hidden, 1024 ffn, 4 kv heads)."""
    from owl_export.convert_text import convert_text_model
    from owl_export.fixtures import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("wide")
    ckpt = make_tiny_checkpoint(root / "ckpt", "qwen2", seed=5, hidden_size=256, num_layers=2, num_heads=8,
                                num_kv_heads=4, intermediate_size=1024)
    out = root / "wide-q4_0.gguf"
    convert_text_model(ckpt, out, quant="q4_0", progress=False)
    return out


def test_decode_logits_identical_for_any_thread_count(wide_gguf):
    """Prefill and 12 greedy decode steps give bit-identical logits with 1, 2 and 3 threads."""
    runs = []
    for threads in (1, 2, 3):
        m = owl_cpp.load(wide_gguf, n_ctx=256, threads=threads)
        ids = m.tokenize("the quick brown fox jumps over the lazy dog " * 3)
        logits = [np.asarray(m.logits(ids))]
        tok = int(np.argmax(logits[0][-1]))
        for _ in range(12):
            step = np.asarray(m.eval([tok]))
            logits.append(step)
            tok = int(np.argmax(step))
        runs.append(logits)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
