"""A full disk costs only what cannot be stored (issue 12, item 7), on a small real filesystem (a tmpfs).

What is shown: appends on a full filesystem fail softly, counted per source; the rows the outbox holds are
deleted after their acknowledgement while the disk is still full (sending needs no free space); storing resumes
by itself when space returns, without reopening; an outbox opened on a full filesystem (after a crash, with a
WAL to recover) sends its backlog; and the agent's status tells all of it.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from cityos.wire import Reading
from edge.outbox import Outbox, free_bytes

pytestmark = pytest.mark.timeout(120)


# --- a small filesystem and a way to fill it -------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_fs("2m")``: a fresh tmpfs of that size mounted under tmp_path; unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)],
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem holding ``directory`` to the last byte with a filler file; returns its path."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    if os.write(fd, block) < chunk:
                        break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    assert free_bytes(directory) == 0
    return path


def _reading(i: int, device: str = "st-1") -> Reading:
    return Reading(
        device_id=device, kind="forest_station", ts=1_790_000_000_000 + i,
        values={"x": float(i), "rain_mm": 0.5, "soil_pct": 21.9, "tilt_x_deg": 0.01, "battery_v": 3.61},
    )


def _drain(ob: Outbox, batch: int = 50) -> list[int]:
    """Send everything the outbox holds as the uplink does: fetch in id order, delete each acknowledged range."""
    sent: list[int] = []
    while True:
        rows = ob.fetch(sent[-1] if sent else 0, batch)
        if not rows:
            return sent
        ob.delete_range(rows[0].id, rows[-1].id)
        sent += [r.id for r in rows]


def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


# --- the outbox --------------------------------------------------------------------------------------------------


def test_full_disk_appends_are_counted_sending_goes_on_and_storing_resumes_by_itself(small_fs):
    fs = small_fs("2m")
    ob = Outbox(fs / "o.db")
    assert ob.reserve_bytes == 256 * 1024 and (fs / "o.db.reserve").stat().st_size == ob.reserve_bytes
    for i in range(300):
        assert ob.append(_reading(i), source="bus0", state={"i": i})
    assert ob.counters()["disk_full"] == 0
    filler = fill(fs)

    # Appends on the full disk: some may still fit (the WAL's and the database's free pages), then none do.
    # No exception reaches the source; each reading that could not be stored is counted for its source.
    outcomes = {"bus0": [], "meter0": []}
    for i in range(300, 700):
        src = "bus0" if i % 3 else "meter0"
        outcomes[src].append(ob.append(_reading(i), source=src, state={"i": i}))
    failed = {src: results.count(False) for src, results in outcomes.items()}
    assert failed["bus0"] > 100 and failed["meter0"] > 50
    assert outcomes["bus0"][-20:] == [False] * 20
    assert ob.store_failed_by_source() == failed
    c = ob.counters()
    assert c["store_failed"] == sum(failed.values()) and c["disk_full"] == 1
    held = ob.depth
    assert held == 300 + sum(r.count(True) for r in outcomes.values())

    # Sending needs no free space: every stored row is deleted after its acknowledgement, disk still full.
    assert len(_drain(ob)) == held
    assert ob.depth == 0 and ob.fetch(0, 10) == []
    assert filler.exists() and free_bytes(fs) < 2 * ob.reserve_bytes  # too little to store: still "full"

    # Space returns: appends succeed again within the probe interval, with the same Outbox.
    filler.unlink()
    late = 0
    end = time.monotonic() + 5
    while not ob.append(_reading(10_000 + late), source="bus0", state={"i": 10_000 + late}):
        late += 1
        assert time.monotonic() < end, "storing did not resume after space returned"
        time.sleep(0.01)
    assert ob.counters()["disk_full"] == 0
    assert ob.store_failed_by_source()["bus0"] == failed["bus0"] + late
    for i in range(50):
        assert ob.append(_reading(20_000 + i), source="bus0", state={"i": 20_000 + i})
    assert (fs / "o.db.reserve").stat().st_size == ob.reserve_bytes
    assert ob.load_state("bus0") == {"i": 20_049}
    ob.close()

    # The counts were persisted with the next stored reading: a restarted agent still reports them.
    ob = Outbox(fs / "o.db")
    assert ob.store_failed_by_source() == {"bus0": failed["bus0"] + late, "meter0": failed["meter0"]}
    assert ob.counters()["store_failed"] == sum(failed.values()) + late
    assert [r.ts - 1_790_000_000_000 for r in ob.fetch(0, 1000)] == list(range(10_000 + late, 10_001 + late)) + [
        20_000 + i for i in range(50)
    ]


def test_an_outbox_that_filled_its_own_filesystem_stores_again_once_it_has_sent(small_fs):
    """The broker away for long: the outbox itself fills the disk. Once what it held is sent, the pages freed
    go back to the filesystem and storing resumes, without anyone deleting a file or restarting anything."""
    fs = small_fs("3m")
    ob = Outbox(fs / "o.db")
    i = 0
    while ob.append(_reading(i), source="bus0", state={"i": i}):
        i += 1
    stored = ob.depth
    assert stored == i > 3000 and ob.counters()["disk_full"] == 1
    for j in range(20):
        assert not ob.append(_reading(i + 1 + j), source="bus0")
    assert ob.store_failed_by_source() == {"bus0": 21}

    assert _drain(ob) and ob.depth == 0  # sending needs no free space

    _until(lambda: ob.append(_reading(100_000), source="bus0", state={"i": 100_000}))
    for j in range(1, 200):
        assert ob.append(_reading(100_000 + j), source="bus0", state={"i": 100_000 + j})
    assert ob.counters()["disk_full"] == 0 and ob.depth == 200
    assert free_bytes(fs) >= ob.reserve_bytes  # and the reserve is held again
    assert (fs / "o.db.reserve").stat().st_size == ob.reserve_bytes
    ob.close()


def _crash_writer(path: str, n: int) -> None:
    """Append n readings, then die without closing (a WAL and its index are left for the next open)."""
    ob = Outbox(path)
    for i in range(n):
        ob.append(_reading(i), source="bus0", state={"i": i})
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("how", ["closed", "crashed"])
def test_an_outbox_opened_on_a_full_disk_sends_its_backlog(small_fs, how):
    fs = small_fs("2m")
    path = fs / "o.db"
    if how == "closed":
        ob = Outbox(path)
        for i in range(400):
            ob.append(_reading(i), source="bus0", state={"i": i})
        ob.close()
    else:
        p = mp.get_context("fork").Process(target=_crash_writer, args=(str(path), 400))
        p.start()
        p.join(60)
        assert p.exitcode == -signal.SIGKILL
        assert (fs / "o.db-wal").exists()
    filler = fill(fs)

    ob = Outbox(path)  # no room: the reserve makes room for opening, and is not taken again
    assert ob.depth == 400 and ob.counters()["disk_full"] == 1
    assert ob.load_state("bus0") == {"i": 399}
    sent = _drain(ob)
    assert len(sent) == 400 and ob.depth == 0
    assert not ob.append(_reading(1000), source="bus0")
    assert ob.store_failed_by_source() == {"bus0": 1}

    filler.unlink()
    _until(lambda: ob.append(_reading(1001), source="bus0"))
    assert ob.counters()["disk_full"] == 0
    ob.close()


def test_without_its_reserve_an_outbox_on_a_full_disk_cannot_even_open_and_says_so(small_fs):
    """Why the reserve: SQLite needs room to open (the WAL index). Without one, a restart on a full disk fails,
    as the issue saw; the error is one clear line naming the filesystem, not a traceback."""
    from edge.outbox import OutboxError

    fs = small_fs("1m")
    ob = Outbox(fs / "o.db", reserve_bytes=0)
    for i in range(100):
        ob.append(_reading(i))
    ob.close()
    fill(fs)
    with pytest.raises(OutboxError, match=rf"^the filesystem at {fs} is full \(0 bytes free\): cannot open "):
        Outbox(fs / "o.db", reserve_bytes=0)


# --- the agent ---------------------------------------------------------------------------------------------------


class _Ticker:
    """A source that emits one reading every few milliseconds and counts what it emitted (a stand-in device)."""

    def __init__(self, cfg: Any) -> None:
        self.name = cfg.name
        self.emitted = 0

    def run(self, ctx: Any, stop: threading.Event) -> None:
        i = int(ctx.state.get("i", 0))
        while not stop.wait(0.005):
            i += 1
            ctx.emit(_reading(i, device=f"{self.name}-dev"), state={"i": i})
            self.emitted += 1

    def health(self) -> dict[str, float]:
        return {"readings": float(self.emitted)}


def _register_ticker() -> None:
    from edge.sources.base import SourceConfig, register

    class TickerConfig(SourceConfig):
        type: Literal["test_ticker"]

    register("test_ticker", TickerConfig, _Ticker)


def test_the_agent_on_a_full_disk_keeps_its_sources_running_and_says_so(small_fs, caplog):
    from edge.agent import Agent
    from edge.config import parse_config

    _register_ticker()
    fs = small_fs("4m")
    cfg = parse_config({
        "gateway": {"id": "gw-full-01"},
        # no broker on port 1: the uplink retries quietly; this test is about storing
        "mqtt": {"host": "127.0.0.1", "port": 1, "tls": False, "backoff_max_s": 1.0},
        "outbox": {"path": str(fs / "outbox.db")},
        "health": {"interval_s": 1},
        "sources": [{"type": "test_ticker", "name": "bus0"}, {"type": "test_ticker", "name": "bus1"}],
    })
    agent = Agent(cfg)
    agent.start()
    try:
        _until(lambda: agent.outbox.depth >= 50)
        status = agent.status_fields()["counters"]
        assert status["outbox_disk_full"] == 0 and status["outbox_store_failed"] == 0
        assert status["bus0_store_failed"] == 0

        filler = fill(fs)
        _until(lambda: agent.outbox.store_failed_by_source().get("bus0", 0) >= 20)
        _until(lambda: agent.outbox.store_failed_by_source().get("bus1", 0) >= 20)
        status = agent.status_fields()["counters"]
        assert status["outbox_disk_full"] == 1
        assert status["bus0_store_failed"] >= 20 and status["bus1_store_failed"] >= 20
        assert status["outbox_store_failed"] >= status["bus0_store_failed"] + status["bus1_store_failed"]
        assert status["source_restarts"] == 0  # a full disk is no crash: the sources keep reading
        assert all(t.is_alive() for t in agent._threads)
        full_logs = [r for r in caplog.records if "not stored since the last report" in r.getMessage()]
        assert len(full_logs) == 1 and str(fs) in full_logs[0].getMessage()  # one line, naming the filesystem

        held = agent.outbox.depth
        assert len(_drain(agent.outbox)) >= held  # what it holds goes out (here: acknowledged by hand)

        filler.unlink()
        before = agent.outbox.appended
        _until(lambda: agent.outbox.appended >= before + 50)  # no restart
        _until(lambda: agent.status_fields()["counters"]["outbox_disk_full"] == 0)
        assert agent.status_fields()["counters"]["source_restarts"] == 0
    finally:
        agent.shutdown()
    assert agent.failure is None
