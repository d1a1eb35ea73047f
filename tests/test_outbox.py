"""The outbox's promises, as the uplink and an operator see them."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import pytest

from cityos.wire import Reading
from edge.outbox import Outbox


def _reading(i: int, device: str = "st-1") -> Reading:
    return Reading(device_id=device, kind="forest_station", ts=1_790_000_000_000 + i, values={"x": float(i)})


def test_rows_survive_reopen_in_order_and_delete_only_acknowledged(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    for i in range(10):
        ob.append(_reading(i))
    rows = ob.fetch(0, 4)
    assert [r.ts for r in rows] == [1_790_000_000_000 + i for i in range(4)]
    ob.delete_range(rows[0].id, rows[-1].id)
    ob.close()

    ob = Outbox(tmp_path / "o.db")
    assert ob.depth == 6
    assert [r.ts - 1_790_000_000_000 for r in ob.fetch(0, 100)] == [4, 5, 6, 7, 8, 9]


def test_state_commits_with_the_reading(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    ob.append(_reading(1), source="bus0", state={"last": 1})
    ob.close()
    assert Outbox(tmp_path / "o.db").load_state("bus0") == {"last": 1}


def test_state_parts_commit_one_device_at_a_time(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    ob.append(_reading(1), source="bus0", state={"v": 2})
    ob.append(_reading(2, "st-1"), source="bus0", state={"n": 2}, part="st-1")
    ob.append(_reading(3, "st-2"), source="bus0", state={"n": 3}, part="st-2")
    ob.append(_reading(4, "st-1"), source="bus0", state={"n": 4}, part="st-1")
    ob.append(_reading(5, "x"), source="bus1", state={"n": 5}, part="st-1")
    ob.close()
    ob = Outbox(tmp_path / "o.db")
    assert ob.load_state("bus0") == {"v": 2, "parts": {"st-1": {"n": 4}, "st-2": {"n": 3}}}
    assert ob.load_state("bus1") == {"parts": {"st-1": {"n": 5}}}
    assert ob.load_state("bus2") == {}


def test_drop_oldest_is_bounded_and_counted(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_readings=100)
    for i in range(150):
        ob.append(_reading(i))
    assert ob.depth == 100
    assert ob.counters() == {"dropped_oldest": 50, "store_failed": 0, "disk_full": 0}
    assert ob.fetch(0, 1)[0].ts == 1_790_000_000_000 + 50


def test_drop_newest_keeps_history_and_counts(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_readings=100, drop_policy="drop_newest")
    stored = [ob.append(_reading(i)) for i in range(130)]
    assert stored.count(False) == 30
    assert ob.depth == 100
    assert ob.counters() == {"dropped_newest": 30, "store_failed": 0, "disk_full": 0}
    assert ob.fetch(0, 1000)[-1].ts == 1_790_000_000_000 + 99


def test_sequence_numbers_increase_across_restarts(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    first = [ob.next_seq() for _ in range(5)]
    ob.close()
    ob = Outbox(tmp_path / "o.db")
    later = ob.next_seq()
    assert first == sorted(first) and later > first[-1]


def _writer(path: str, n: int, ready) -> None:
    ob = Outbox(path, synchronous="NORMAL")
    for i in range(n):
        ob.append(_reading(i), source="s", state={"i": i})
        if i == 200:
            ready.set()


def test_sigkill_mid_write_loses_no_committed_reading(tmp_path):
    """What append returned for is there after a SIGKILL, and the source state matches the last reading."""
    path = str(tmp_path / "o.db")
    ready = mp.Event()
    p = mp.get_context("fork").Process(target=_writer, args=(path, 1_000_000, ready))
    p.start()
    assert ready.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    ob = Outbox(path)
    rows = ob.fetch(0, 10_000_000)
    assert len(rows) > 200
    # contiguous from 0, no hole, and the state names exactly the last stored reading
    assert [r.ts - 1_790_000_000_000 for r in rows] == list(range(len(rows)))
    assert ob.load_state("s") == {"i": len(rows) - 1}


def test_the_outbox_keeps_a_reserve_beside_it_and_a_wal_within_half_of_it(tmp_path):
    """The room its own bookkeeping needs on a full disk (tests/test_disk_full.py shows it used)."""
    ob = Outbox(tmp_path / "o.db", reserve_bytes=512 * 1024)
    reserve = tmp_path / "o.db.reserve"
    assert reserve.stat().st_size == 512 * 1024 and reserve.stat().st_blocks * 512 >= 512 * 1024  # allocated
    assert ob._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 64  # 64 pages of 4 KiB: 256 KiB
    assert ob._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental: pages can go back to the disk
    for i in range(3000):
        ob.append(_reading(i))
    assert (tmp_path / "o.db-wal").stat().st_size <= 300 * 1024
    ob.close()
    assert Outbox(tmp_path / "o.db").reserve_bytes >= 256 * 1024  # default: 1/256 of the filesystem, bounded


def test_an_outbox_of_an_older_agent_is_converted_to_incremental_vacuum(tmp_path):
    import sqlite3

    from edge import outbox as outbox_mod

    db = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(outbox_mod._SCHEMA)
    db.execute("INSERT INTO readings (created_ms, ts, body) VALUES (1, 2, '{}')")
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    ob = Outbox(tmp_path / "o.db")
    assert ob._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert [(r.id, r.ts) for r in ob.fetch(0, 10)] == [(1, 2)]
    ob.append(_reading(5))
    assert [r.id for r in ob.fetch(0, 10)] == [1, 2]


def test_a_failed_transaction_leaves_the_count_and_the_state_as_they_were(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_readings=100)
    for i in range(100):
        ob.append(_reading(i), source="s", state={"i": i})
    with pytest.raises(TypeError):  # raised inside the transaction, after the drop-oldest delete: all rolled back
        ob.append(_reading(100), source="s", state={"i": object()})
    assert ob.depth == 100 and len(ob.fetch(0, 1000)) == 100
    assert "dropped_oldest" not in ob.counters()
    assert ob.load_state("s") == {"i": 99}
