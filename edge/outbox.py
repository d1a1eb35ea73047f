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

A full filesystem costs only what cannot be stored
--------------------------------------------------
SQLite in WAL mode needs free space for deletes too: a DELETE writes pages to the WAL, and a checkpoint (which
lets the WAL start over) writes them into the database file, which grows if the WAL holds pages appended since
the last one. On a full filesystem a gateway could then neither store nor *send* (the delete after the PUBACK
failed), and a restart did not help (opening needs room for the WAL index). So:

* **A reserve.** The outbox keeps a file of ``reserve_bytes`` beside the database (``<path>.reserve``,
  allocated, never written to; by default 1/256 of the filesystem, 256 KiB to 8 MiB). The WAL is kept to half of
  it (``wal_autocheckpoint``, ``journal_size_limit``), so what the reserve frees always covers a checkpoint's
  growth and a WAL's worth of deletes. When the outbox's own bookkeeping (a delete after a PUBACK, a sequence
  block) fails for lack of space, the reserve is given up and the write retried: sending what the outbox holds
  needs no free space. It is also given up while the database opens, so a gateway restarted on a full disk
  opens its backlog and sends it.
* **Appends fail softly.** A reading that cannot be stored (``SQLITE_FULL``) is rolled back (if SQLite has not
  already), counted per source (``store_failed``: in memory at once, persisted with the next stored reading) and
  dropped; ``append`` returns False and raises nothing, so a source keeps reading its devices. One warning a
  minute says so, naming the filesystem and its free bytes. While the reserve is given up, nothing is appended
  (an append would eat the room the deletes need); appends resume by themselves, without a restart, once the
  filesystem has room for the reserve and as much again (checked at most once a second, on append). Space
  returns either from outside (a log rotated, a file deleted) or from the outbox itself: the database is
  ``auto_vacuum=INCREMENTAL``, so the pages a drain freed are given back to the filesystem (``_shrink``), and an
  outbox that filled its own disk during a long outage stores again once it has sent enough. (An outbox of an
  older agent is converted at open when it is small; a large one keeps its pages, and waits for space.)
* **Measured** on a real tmpfs of 1-4 MiB (``tests/test_disk_full.py``): without a reserve, a full disk let
  neither a DELETE nor a reopen through (the WAL could not grow, a checkpoint could not grow the database, the
  WAL index could not be created); with it, everything held is deleted after its acknowledgement while the disk
  stays full, and a reopen after a clean close or a crash sends its backlog.
* **The truth in the status.** ``counters()`` reports ``disk_full`` (1 while readings cannot be stored) and
  ``store_failed``; ``store_failed_by_source()`` the per-source counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
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

log = logging.getLogger("cityos.edge.outbox")

#: The reserve's default: this fraction of the outbox's filesystem, within these bounds.
RESERVE_FRACTION = 256
RESERVE_MIN_BYTES = 256 * 1024
RESERVE_MAX_BYTES = 8 * 1024 * 1024
#: While the reserve is given up, how often an append may check whether space has returned.
_PROBE_INTERVAL_S = 1.0
#: At most one "cannot store" warning this often (with the count since the last one).
_FULL_LOG_INTERVAL_S = 60.0
#: Meta keys of the persisted store-failure counters, one per source: ``store_failed:<source>``.
_FAILED_KEY = "store_failed"

_SQLITE_IOERR_SHMSIZE = 4874  # the WAL index (-shm) could not be extended: a full filesystem, as SQLite says it


class OutboxError(RuntimeError):
    """The outbox cannot be opened at its path (the message says why, without the setting's name)."""


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_FULL, _SQLITE_IOERR_SHMSIZE)


def free_bytes(path: Path) -> int:
    """Bytes this user may still write on the filesystem holding ``path`` (a directory)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding ``path`` (an existing directory), for messages."""
    path = path.resolve()
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


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
        reserve_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_readings = max_readings
        self.drop_policy = drop_policy
        self._lock = threading.Lock()
        self._dir = self._usable_dir()
        self._reserve_path = self.path.with_name(self.path.name + ".reserve")
        if reserve_bytes is None:
            st = os.statvfs(self._dir)
            reserve_bytes = st.f_blocks * st.f_frsize // RESERVE_FRACTION
            reserve_bytes = min(RESERVE_MAX_BYTES, max(RESERVE_MIN_BYTES, reserve_bytes))
        self.reserve_bytes = reserve_bytes
        # Opening needs room (the WAL index, a WAL left by a crash): the reserve gives it, and is taken again below.
        self._reserve_held = False
        self._give_up_reserve()
        self._db = self._open(synchronous)
        self._count = self._db.execute("SELECT count(*) FROM readings").fetchone()[0]
        self._seq_next = self._meta("seq_reserved")
        self._seq_reserved = self._seq_next
        self.appended = 0  # this process's counters, for the status message
        #: Called after each stored reading's commit (the uplink's wake-up: it need not poll an idle outbox).
        self.on_append: Callable[[], None] | None = None
        self.deleted = 0
        # A full filesystem (see the module's docstring).
        self._store_failed: dict[str, int] = {
            k[len(_FAILED_KEY) + 1:]: int(v)
            for k, v in self._db.execute("SELECT key, value FROM meta WHERE key LIKE 'store_failed:%'")
        }
        self._unsaved_failed: dict[str, int] = {}  # counted, not yet persisted
        self._full = False  # the last append failed for lack of space
        self._pending_deletes: list[tuple[int, int]] = []  # acknowledged ranges a full disk kept us from deleting
        self._next_probe = 0.0
        self._failed_since_log = 0
        self._last_full_log = 0.0
        self._last_resume_log = 0.0
        self._seq_unsaved_logged = False
        self._delete_blocked_logged = False
        if not self._take_reserve():
            self._full = True
            log.warning(
                "outbox: the filesystem at %s has no room for the outbox's %d-byte reserve (%d bytes free): "
                "sending what it holds, storing nothing new until space returns",
                mount_point(self._dir), self.reserve_bytes, free_bytes(self._dir),
            )

    def _usable_dir(self) -> Path:
        """The outbox's directory, created if need be, or OutboxError saying what is wrong with the path."""
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise OutboxError(f"cannot create the directory {parent}: a file of that name exists") from None
        except OSError as exc:
            raise OutboxError(f"cannot create the directory {parent}: {exc.strerror or exc}") from None
        if self.path.is_dir():
            raise OutboxError(f"{self.path} is a directory, not a database file")
        if not os.access(parent, os.W_OK | os.X_OK):
            why = "a read-only filesystem" if os.statvfs(parent).f_flag & os.ST_RDONLY else "not writable by this user"
            raise OutboxError(f"the directory {parent} is {why} (uid {os.geteuid()})")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise OutboxError(f"{self.path} is not readable and writable by this user (uid {os.geteuid()})")
        return parent

    def _small_enough_to_convert(self) -> bool:
        size = self.path.stat().st_size
        return size <= RESERVE_MAX_BYTES and free_bytes(self._dir) >= 2 * size + 2 * self.reserve_bytes

    def _open(self, synchronous: str) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # Incremental vacuum: on a full disk, the pages a drain freed can be given back to the filesystem
            # (see _shrink). Set before the first table; an older, small outbox is converted (a quick VACUUM).
            if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            elif db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2 and self._small_enough_to_convert():
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                with contextlib.suppress(sqlite3.Error):  # no room: it stays as it is
                    db.execute("VACUUM")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA cache_size=-256")
            # The WAL stays within half the reserve: what the reserve frees then covers a checkpoint and the deletes.
            wal_pages = max(16, self.reserve_bytes // (2 * db.execute("PRAGMA page_size").fetchone()[0]))
            db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
            db.execute(f"PRAGMA journal_size_limit={self.reserve_bytes // 2}")
            db.executescript(_SCHEMA)
            return db
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            if _is_full(exc):
                raise OutboxError(
                    f"the filesystem at {mount_point(self._dir)} is full ({free_bytes(self._dir)} bytes free): "
                    f"cannot open {self.path}"
                ) from None
            raise OutboxError(f"cannot open {self.path} as an SQLite database: {exc}") from None

    # --- writer side (sources) -----------------------------------------------------------------------------

    def append(
        self,
        reading: Reading,
        source: str | None = None,
        state: dict[str, Any] | None = None,
        part: str | None = None,
    ) -> bool:
        """Commit a reading (and its source's state, or one part of it). False if the drop policy refused it or
        the filesystem has no room for it (counted per source in ``store_failed``); never raises for that."""
        # backfill is decided at send time (edge/uplink.py), never stored
        body = reading_body(reading)
        now = _now_ms()
        key = source or ""
        with self._lock:
            if not self._reserve_held and not self._recover():
                self._count_failed(key)
                return False
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                stored = True
                dropped = 0
                if self._count >= self.max_readings:
                    if self.drop_policy == "drop_newest":
                        stored = False
                        self._bump(cur, "dropped_newest", 1)
                    else:
                        n = self._count - self.max_readings + 1
                        cur.execute(
                            "DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT ?)", (n,)
                        )
                        dropped = cur.rowcount
                        self._bump(cur, "dropped_oldest", dropped)
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
                for src, n in self._unsaved_failed.items():  # failures counted while full, persisted now
                    self._bump(cur, f"{_FAILED_KEY}:{src}", n)
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                if not _is_full(exc):
                    raise
                self._full = True
                self._count_failed(key)
                # Only a commit checkpoints by itself: without one the WAL cannot start over, even where the
                # database has free pages for new readings (a drain freed them). At most once a second.
                t = time.monotonic()
                if t >= self._next_probe:
                    self._next_probe = t + _PROBE_INTERVAL_S
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                return False
            except BaseException:
                self._rollback()
                raise
            self._unsaved_failed.clear()
            self._count -= dropped
            if self._full:
                self._full = False
                self._log_resumed()
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
        """Delete rows ``lo <= id <= hi`` (one acknowledged message). Idempotent. Needs no free space: on a full
        filesystem the reserve makes room; a range that still cannot be deleted is retried with the next one (its
        rows would at worst be sent again after a reconnect: at-least-once, never lost)."""
        with self._lock:
            self._pending_deletes.append((lo, hi))
            return self._flush_deletes()

    def next_seq(self) -> int:
        with self._lock:
            if self._seq_next >= self._seq_reserved:
                self._seq_reserved = self._seq_next + _SEQ_BLOCK
                try:
                    self._bookkeeping(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('seq_reserved', ?)", (self._seq_reserved,)
                    )
                except sqlite3.Error as exc:
                    if not _is_full(exc):
                        raise
                    # (boot_id, seq) stays unique without it: a restarted agent has a new boot id
                    if not self._seq_unsaved_logged:
                        self._seq_unsaved_logged = True
                        log.warning("outbox: the filesystem is full: message sequence numbers go on unsaved")
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
        """For the status message: readings dropped by the drop policy (``dropped_oldest``/``dropped_newest``),
        readings that could not be stored for lack of space (``store_failed``, all sources), and whether that is
        happening now (``disk_full``: the last append failed, or the reserve is given up)."""
        with self._lock:
            out = {k: v for k, v in self._db.execute("SELECT key, value FROM meta WHERE key LIKE 'dropped_%'")}
            out["store_failed"] = sum(self._store_failed.values())
            out["disk_full"] = int(self._full or not self._reserve_held)
            return out

    def store_failed_by_source(self) -> dict[str, int]:
        """Readings that could not be stored for lack of space, per source (``""``: appends without a source, e.g.
        the gateway's health readings), since the outbox was created."""
        with self._lock:
            return dict(self._store_failed)

    @property
    def disk_full(self) -> bool:
        return self._full or not self._reserve_held

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

    def _rollback(self) -> None:
        """End a failed transaction, if SQLite has not already (it rolls back by itself on a full disk: a blind
        ROLLBACK then fails with "no transaction is active" and hides the real error)."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _bookkeeping(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        """A write of the outbox's own (a delete, a sequence block): on a full filesystem, give up the reserve and
        try once more. Raises what the retry raised."""
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            self._rollback()
            if not (_is_full(exc) and self._reserve_held):
                raise
        self._give_up_reserve()
        self._full = True  # nothing is appended until the reserve is back
        with contextlib.suppress(sqlite3.Error):  # let the WAL start over, in the room the reserve left
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error:
            self._rollback()
            raise

    def _flush_deletes(self) -> int:
        deleted = 0
        while self._pending_deletes:
            lo, hi = self._pending_deletes[0]
            try:
                cur = self._bookkeeping("DELETE FROM readings WHERE id BETWEEN ? AND ?", (lo, hi))
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise
                if not self._delete_blocked_logged:
                    self._delete_blocked_logged = True
                    log.warning(
                        "outbox: cannot delete acknowledged readings yet, the filesystem at %s is full even without "
                        "the reserve (%d bytes free): retrying with the next acknowledgement",
                        mount_point(self._dir), free_bytes(self._dir),
                    )
                break
            self._delete_blocked_logged = False
            self._pending_deletes.pop(0)
            self._count -= cur.rowcount
            self.deleted += cur.rowcount
            deleted += cur.rowcount
        return deleted

    def _give_up_reserve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._reserve_path.unlink()
        if self._reserve_held:
            log.warning(
                "outbox: the filesystem at %s is full: gave up the outbox's %d-byte reserve so that sending goes on; "
                "storing nothing new until space returns", mount_point(self._dir), self.reserve_bytes,
            )
        self._reserve_held = False

    def _take_reserve(self) -> bool:
        """Allocate the reserve file (not write it: a reserve costs no flash wear) if the filesystem has room for it
        and as much again (so that taking it does not leave the disk full at once). False if not."""
        if self.reserve_bytes <= 0:
            self._reserve_held = True
            return True
        if free_bytes(self._dir) < 2 * self.reserve_bytes:
            return False
        try:
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self._reserve_path.unlink()
            return False
        self._reserve_held = True
        return True

    def _recover(self) -> bool:
        """With the reserve given up: has space returned (room for the reserve and as much again)? If so take the
        reserve again and delete what the full disk left acknowledged. Checked at most once a second."""
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + _PROBE_INTERVAL_S
        self._shrink()
        if not self._take_reserve():
            return False
        self._last_resume_log = 0.0  # space has returned: always worth its line
        with contextlib.suppress(sqlite3.Error):  # else tried again with the next delete
            self._flush_deletes()
        return True

    def _log_resumed(self) -> None:
        """Storing works again: say so, at most once a minute (near the edge of a full disk, appends can succeed
        and fail by turns as the WAL starts over), and always after the reserve was given up and taken again."""
        now = time.monotonic()
        if self._last_resume_log and now - self._last_resume_log < _FULL_LOG_INTERVAL_S:
            return
        self._last_resume_log = now
        log.warning(
            "outbox: storing readings again (%d bytes free on the filesystem at %s); %d reading(s) could not be "
            "stored since the last report", free_bytes(self._dir), mount_point(self._dir), self._failed_since_log,
        )
        self._failed_since_log = 0

    def _shrink(self) -> None:
        """Give pages a drain freed back to the filesystem, as many as the reserve (and as much again) lacks, at
        most half a WAL's worth per call (each moved page is written to the WAL): an outbox that filled its own
        filesystem stores again once it has sent enough, without anyone deleting a file."""
        missing = 2 * self.reserve_bytes - free_bytes(self._dir)
        if missing <= 0:
            return
        try:
            page = self._db.execute("PRAGMA page_size").fetchone()[0]
            free_pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            wal_pages = self._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            n = min(free_pages, -(-missing // page), max(1, wal_pages // 2))
            if n > 0:
                # executescript: steps the pragma to its end (execute frees one page per step, i.e. one)
                self._db.executescript(f"PRAGMA incremental_vacuum({int(n)});")
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the database file shrinks here
        except sqlite3.Error:
            self._rollback()

    def _count_failed(self, key: str) -> None:
        """One reading not stored for lack of space: counted (persisted with the next stored reading), logged at
        most once a minute."""
        self._store_failed[key] = self._store_failed.get(key, 0) + 1
        self._unsaved_failed[key] = self._unsaved_failed.get(key, 0) + 1
        self._failed_since_log += 1
        now = time.monotonic()
        if now - self._last_full_log >= _FULL_LOG_INTERVAL_S or self._last_full_log == 0.0:
            self._last_full_log = now
            by_source = ", ".join(f"{k or 'health'}: {v}" for k, v in sorted(self._unsaved_failed.items()))
            resumes = "" if self._reserve_held else f", storing resumes at {2 * self.reserve_bytes}"
            log.warning(
                "outbox: no room for new readings on the filesystem at %s (%d bytes free%s): %d reading(s) not "
                "stored since the last report (%s); what the outbox holds is still sent, and storing resumes by "
                "itself when space returns",
                mount_point(self._dir), free_bytes(self._dir), resumes, self._failed_since_log, by_source,
            )
            self._failed_since_log = 0

    @staticmethod
    def _bump(cur: sqlite3.Cursor, key: str, n: int) -> None:
        cur.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
            (key, n, n),
        )
