"""The durable outbox between sources and uplink (SQLite, WAL).

The guarantees, in the order a reading lives through them:

* ``append`` commits the reading (and the source state that produced it, in the same transaction) before it
  returns, so nothing a source handed over is lost to a crash, and nothing is read twice from a device after one.
  A source with many devices keeps one state *part* per device, so each commit writes that device's state only:
  a forest bus's whole state (ten stations' hour-long windows, ~25 kB) rewritten per reading cost more than the
  reading itself.
* The uplink reads rows in id order through two cursors (backlog and live, see ``edge/uplink.py``) and calls
  ``delete_range`` only after the broker's PUBACK. A crash between publish and PUBACK means a resend, which the
  InfluxDB point identity (edge timestamp) turns into an overwrite, never a double.
* The store is bounded by ``max_readings``; past it the configured drop policy applies and every dropped reading is
  counted in a persisted counter that the status message reports. Never silent.

Ids come from ``AUTOINCREMENT``, so they are never reused: a contiguous id range taken at send time names exactly
the rows of one message, and deleting that range after the PUBACK removes exactly those rows.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cityos.wire import Reading, reading_body

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS source_state (source TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS source_state_part (
    source TEXT NOT NULL,
    part TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (source, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

#: Message sequence numbers are reserved from disk in blocks: increasing across restarts, one write per block.
_SEQ_BLOCK = 1000


@dataclass(frozen=True)
class Row:
    id: int
    created_ms: int
    ts: int
    body: str


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Outbox:
    def __init__(
        self,
        path: str | Path,
        *,
        max_readings: int = 2_000_000,
        drop_policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest",
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_readings = max_readings
        self.drop_policy = drop_policy
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA cache_size=-256")
        self._db.executescript(_SCHEMA)
        self._count = self._db.execute("SELECT count(*) FROM readings").fetchone()[0]
        self._seq_next = self._meta("seq_reserved")
        self._seq_reserved = self._seq_next
        self.appended = 0  # this process's counters, for the status message
        #: Called after each stored reading's commit (the uplink's wake-up: it need not poll an idle outbox).
        self.on_append: Callable[[], None] | None = None
        self.deleted = 0

    # --- writer side (sources) -----------------------------------------------------------------------------

    def append(
        self,
        reading: Reading,
        source: str | None = None,
        state: dict[str, Any] | None = None,
        part: str | None = None,
    ) -> bool:
        """Commit a reading (and its source's state, or one part of it). False if the drop policy refused it."""
        # backfill is decided at send time (edge/uplink.py), never stored
        body = reading_body(reading)
        now = _now_ms()
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                stored = True
                if self._count >= self.max_readings:
                    if self.drop_policy == "drop_newest":
                        stored = False
                        self._bump(cur, "dropped_newest", 1)
                    else:
                        n = self._count - self.max_readings + 1
                        cur.execute(
                            "DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT ?)", (n,)
                        )
                        self._count -= cur.rowcount
                        self._bump(cur, "dropped_oldest", cur.rowcount)
                if stored:
                    cur.execute(
                        "INSERT INTO readings (created_ms, ts, body) VALUES (?, ?, ?)", (now, reading.ts, body)
                    )
                if state is not None and source is not None:
                    if part is None:
                        cur.execute(
                            "INSERT OR REPLACE INTO source_state (source, state) VALUES (?, ?)",
                            (source, json.dumps(state, sort_keys=True)),
                        )
                    else:
                        cur.execute(
                            "INSERT OR REPLACE INTO source_state_part (source, part, state) VALUES (?, ?, ?)",
                            (source, part, json.dumps(state, sort_keys=True)),
                        )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            if stored:
                self._count += 1
                self.appended += 1
        if stored and self.on_append is not None:
            self.on_append()
        return stored

    def load_state(self, source: str) -> dict[str, Any]:
        """The source's state as last committed; its parts, if any, under the reserved key ``"parts"``."""
        with self._lock:
            row = self._db.execute("SELECT state FROM source_state WHERE source = ?", (source,)).fetchone()
            parts = self._db.execute(
                "SELECT part, state FROM source_state_part WHERE source = ? ORDER BY part", (source,)
            ).fetchall()
        state = json.loads(row[0]) if row else {}
        if parts:
            state["parts"] = {k: json.loads(v) for k, v in parts}
        return state

    # --- reader side (uplink) ------------------------------------------------------------------------------

    def max_id(self) -> int:
        with self._lock:
            return self._db.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0]

    def fetch(self, after_id: int, limit: int, upto_id: int | None = None) -> list[Row]:
        """Rows with ``after_id < id [<= upto_id]`` in id order."""
        q = "SELECT id, created_ms, ts, body FROM readings WHERE id > ?"
        args: tuple[int, ...] = (after_id,)
        if upto_id is not None:
            q += " AND id <= ?"
            args += (upto_id,)
        q += " ORDER BY id LIMIT ?"
        with self._lock:
            return [Row(*r) for r in self._db.execute(q, (*args, limit))]

    def delete_range(self, lo: int, hi: int) -> int:
        """Delete rows ``lo <= id <= hi`` (one acknowledged message). Idempotent."""
        with self._lock:
            cur = self._db.execute("DELETE FROM readings WHERE id BETWEEN ? AND ?", (lo, hi))
            self._count -= cur.rowcount
            self.deleted += cur.rowcount
            return cur.rowcount

    def next_seq(self) -> int:
        with self._lock:
            if self._seq_next >= self._seq_reserved:
                self._seq_reserved = self._seq_next + _SEQ_BLOCK
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('seq_reserved', ?)", (self._seq_reserved,)
                )
            seq = self._seq_next
            self._seq_next += 1
            return seq

    # --- introspection -------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._count

    def oldest_age_s(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT created_ms FROM readings ORDER BY id LIMIT 1").fetchone()
        return max(0.0, (_now_ms() - row[0]) / 1000) if row else 0.0

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._db.execute("SELECT key, value FROM meta WHERE key LIKE 'dropped_%'")}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def depth_of(path: Path | str, older_than_s: float = 0.0) -> int:
        """Readings waiting in the outbox at ``path``, read-only, from another process while its agent writes it
        (the developer's tools watch gateways drain this way); with ``older_than_s`` only those stored longer ago
        than that (a gateway always holds the readings of its last linger window). 0 if there is none yet."""
        path = Path(path)
        if not path.exists():
            return 0
        cutoff_ms = int((time.time() - older_than_s) * 1000)
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute("SELECT count(*) FROM readings WHERE created_ms <= ?", (cutoff_ms,)).fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # created but no table yet
        finally:
            db.close()

    # --- internals -----------------------------------------------------------------------------------------

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _bump(cur: sqlite3.Cursor, key: str, n: int) -> None:
        cur.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
            (key, n, n),
        )
