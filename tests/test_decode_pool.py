"""The ingest's decode worker pool: a worker killed at any moment never stalls the service.

ProcessPoolExecutor (what the ingest used before) hangs for good when a worker is killed while it writes a result
to the shared result queue: no future completes, and interpreter exit hangs too. These tests kill workers in the
middle of large results and ask that every future still completes, and that the pool goes on.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import wait
from concurrent.futures.process import BrokenProcessPool

import pytest

from ingest.decode_pool import DecodePool, RemoteError


def blob(n: int, tag: int) -> tuple[int, bytes]:
    return tag, bytes(n)


def echo_big(_task: bytes, n: int) -> bytes:
    return bytes(n)


def boom(_: int) -> None:
    raise ValueError("a bad chunk")


def die_at_start() -> None:
    os._exit(3)


def wait_until(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


@pytest.mark.timeout(120)
def test_workers_killed_mid_result_stall_nothing() -> None:
    restarts: list[int] = []
    pool = DecodePool(2, blob, on_restart=lambda: restarts.append(1))
    try:
        pool.warm_up(0, -1, timeout=60)
        kills = 0
        for _ in range(5):
            # 4 MB results: a worker spends most of its time writing one, so the kill lands mid-write
            futs = [pool.submit(4_000_000, k) for k in range(12)]
            time.sleep(0.05)
            victim = pool.pids()[0]
            os.kill(victim, signal.SIGKILL)
            kills += 1
            done, not_done = wait(futs, timeout=30)
            assert not not_done, f"{len(not_done)} futures never completed after a worker was killed"
            ok = [f.result() for f in done if f.exception() is None]
            lost = [f for f in done if f.exception() is not None]
            assert all(isinstance(f.exception(), BrokenProcessPool) for f in lost)
            assert all(len(b) == 4_000_000 for _, b in ok)
            assert wait_until(lambda v=victim: v not in pool.pids() and pool.all_alive(), 30)
        assert len(restarts) == kills
        # and the pool still works, in order, on both workers
        futs = [pool.submit(10, k) for k in range(8)]
        assert [f.result(timeout=30)[0] for f in futs] == list(range(8))
    finally:
        pool.shutdown(timeout=5)
    assert not any(p.is_alive() for p in [s.process for s in pool._slots] if p is not None)


def test_a_failing_task_fails_its_future_only() -> None:
    pool = DecodePool(1, boom)
    try:
        f = pool.submit(1)
        with pytest.raises(RemoteError, match="a bad chunk"):
            f.result(timeout=60)
        assert pool.all_alive()
    finally:
        pool.shutdown(timeout=5)


def test_workers_that_cannot_start_give_failed_futures_not_a_wait() -> None:
    restarts: list[int] = []
    pool = DecodePool(1, blob, initializer=die_at_start, on_restart=lambda: restarts.append(1))
    try:
        assert wait_until(lambda: len(restarts) >= 2, 30)  # it keeps trying, backing off
        t0 = time.monotonic()
        results = [pool.submit(1, k) for k in range(3)]
        done, not_done = wait(results, timeout=10)
        assert not not_done and time.monotonic() - t0 < 10
        assert all(isinstance(f.exception(), BrokenProcessPool) for f in done)
    finally:
        pool.shutdown(timeout=5)
    assert len(restarts) < 10  # backed off, not a hot loop


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_large_tasks_and_results_in_flight_never_stall(workers: int) -> None:
    """The stall seen in the throughput benchmark (commit 67bdb7b): the dispatcher blocked writing a task while
    holding the slot's lock, the worker blocked writing a large result, and the reader that would drain it waited
    for that lock. Large tasks and results, many in flight, submitted as fast as possible: every future completes.
    (On 67bdb7b's pool this stalls within the first few tasks, every run.)"""
    pool = DecodePool(workers, echo_big)
    pool.warm_up(b"", 0, timeout=60)
    futs: list = []

    def submitter() -> None:
        for _ in range(200):
            futs.append(pool.submit(bytes(300_000), 1_800_000))  # both far beyond a socket buffer

    t = threading.Thread(target=submitter, name="submitter", daemon=True)
    t.start()
    t.join(30)
    done, not_done = wait(list(futs), timeout=30)
    stalled = t.is_alive() or bool(not_done)
    if stalled:  # don't hang the suite on the broken pool's locks: kill its workers and leave it
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
    assert not stalled, (
        f"stalled: {len(futs)} of 200 tasks submitted, {len(not_done)} in flight never completed"
    )
    assert all(len(f.result()) == 1_800_000 for f in done)
    pool.shutdown()
