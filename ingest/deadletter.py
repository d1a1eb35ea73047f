"""Dead-letter store: messages the ingest cannot write, kept in SQLite under the data dir for a human to look at.

A message is acked to the broker only after :meth:`DeadLetterStore.add_many` has committed it, so a dead-lettered
message is never lost, and a bad message never blocks the stream behind it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Payload bytes kept per message; ``payload_len`` records the original length.
MAX_STORED_PAYLOAD = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deadletter (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  INTEGER NOT NULL,          -- ms since epoch, when the ingest received the message
    topic        TEXT    NOT NULL,
    payload      BLOB    NOT NULL,          -- first MAX_STORED_PAYLOAD bytes
    payload_len  INTEGER NOT NULL,          -- original length
    reason       TEXT    NOT NULL,          -- ContractError.reason, or influx_rejected
    detail       TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deadletter_reason ON deadletter(reason);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    received_at: int
    topic: str
    payload: bytes
    reason: str
    detail: str = ""
    payload_len: int | None = None  # filled from payload when None
    id: int | None = None

    @property
    def truncated(self) -> bool:
        return self.payload_len is not None and self.payload_len > len(self.payload)


class DeadLetterStore:
    FILENAME = "deadletter.sqlite"

    def __init__(self, path: str | Path, *, max_payload: int = MAX_STORED_PAYLOAD) -> None:
        """Open (create) the store at the SQLite file ``path``; see :meth:`in_dir` for the data-dir layout."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_payload = max_payload
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "PRAGMA synchronous=FULL"
        )  # committed means on disk: the broker is acked right after
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, data_dir: str | Path) -> DeadLetterStore:
        """The store the service uses: ``<data_dir>/deadletter.sqlite``."""
        return cls(Path(data_dir) / cls.FILENAME)

    @classmethod
    def count_in(cls, data_dir: str | Path) -> int:
        """Messages dead-lettered in ``data_dir``, read-only from another process while the service runs."""
        p = Path(data_dir) / cls.FILENAME
        if not p.exists():
            return 0
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM deadletter").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # created but no table yet
        finally:
            db.close()

    def add(
        self, topic: str, payload: bytes, reason: str, detail: str = "", received_at: int | None = None
    ) -> None:
        self.add_many([DeadLetter(received_at or int(time.time() * 1000), topic, payload, reason, detail)])

    def add_many(self, letters: Iterable[DeadLetter]) -> int:
        """Store and commit (one transaction); returns how many were stored."""
        rows = [
            (
                d.received_at,
                d.topic,
                bytes(d.payload[: self.max_payload]),
                d.payload_len if d.payload_len is not None else len(d.payload),
                d.reason,
                d.detail[:4000],
            )
            for d in letters
        ]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO deadletter (received_at, topic, payload, payload_len, reason, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return len(rows)

    def count_by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(
                self._db.execute("SELECT reason, COUNT(*) FROM deadletter GROUP BY reason ORDER BY reason")
            )

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM deadletter").fetchone()[0])

    def list(self, reason: str | None = None, limit: int = 100) -> list[DeadLetter]:
        q = "SELECT id, received_at, topic, payload, payload_len, reason, detail FROM deadletter"
        args: tuple[object, ...] = ()
        if reason is not None:
            q += " WHERE reason = ?"
            args = (reason,)
        q += " ORDER BY id LIMIT ?"
        with self._lock:
            rows = self._db.execute(q, (*args, limit)).fetchall()
        return [
            DeadLetter(
                received_at=r[1],
                topic=r[2],
                payload=bytes(r[3]),
                payload_len=r[4],
                reason=r[5],
                detail=r[6],
                id=r[0],
            )
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DeadLetterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
