"""Reading the source and the target, writing the target: every InfluxDB call of the rollups, through the kernel's
client (``cityos.influx``, the v1 API: ``/query`` and ``/write``, nothing else).

A write is one ``/write`` request: a batch's rows, then its progress point (``rollup_progress``, tag ``job``,
field ``until_ms``, stamped at ``until_ms``). A refused or failed write raises :class:`RollupError`: the pass
stops there, with every earlier batch stored, and the next pass resumes after the last one stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cityos.influx import InfluxClient, InfluxError, QueryFn, query_results
from cityos.rollups import DAY_MS, PROGRESS, job_progress, jst_day

__all__ = ["RollupError", "Store", "line"]


class RollupError(InfluxError):
    """A write the target refused or did not take (the message names the database and InfluxDB's answer)."""


def _escape_tag(v: str) -> str:
    return v.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"a rollup field is a number, not {type(v).__name__}")
    if isinstance(v, int):
        return f"{v}i"
    if not math.isfinite(v):
        raise ValueError("a rollup field is finite")
    return repr(float(v))


def line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, Any], ts_ms: int) -> str:
    """One point in line protocol (ms precision); ints are written as integers (``3i``)."""
    t = "".join(f",{k}={_escape_tag(v)}" for k, v in sorted(tags.items()))
    f = ",".join(f"{k}={_field(v)}" for k, v in fields.items())
    return f"{measurement}{t} {f} {ts_ms}"


@dataclass
class Store:
    """The source database (raw, read only) and the target (the rollups), through one client logged in as the
    rollup user; ``client.db`` is the target (where ``/write`` goes)."""

    client: InfluxClient
    source: str
    target: str

    @property
    def query(self) -> QueryFn:
        return lambda db, q: self.client.query_raw(q, db)

    def rows(self, db: str, q: str) -> list[dict[str, Any]]:
        """Every series of every statement of ``q``: ``{"tags": {...}, "rows": [{column: value}]}``."""
        out = []
        for result in query_results(*self.client.query_raw(q, db)):
            for s in result.get("series", []):
                cols = s["columns"]
                out.append({"tags": s.get("tags") or {},
                            "rows": [dict(zip(cols, v, strict=True)) for v in s.get("values", [])]})
        return out

    def newest(self, db: str, measurement: str, field: str, where: str = "") -> int | None:
        """The time of the newest point of ``measurement`` (with ``field``), or None."""
        cond = f" WHERE {where}" if where else ""
        found = [int(r["time"]) for s in self.rows(db, f'SELECT last("{field}") FROM "{measurement}"{cond}')
                 for r in s["rows"]]
        return max(found, default=None)

    def oldest(self, db: str, measurement: str, field: str) -> int | None:
        """The time of the oldest point of ``measurement`` (with ``field``), or None."""
        found = [int(r["time"]) for s in self.rows(db, f'SELECT first("{field}") FROM "{measurement}"')
                 for r in s["rows"]]
        return min(found, default=None)

    def progress(self, job: str) -> int | None:
        """Where ``job`` stopped (its next period's start), from the target; None before its first batch."""
        return job_progress(self.query, self.target, job)

    def resume(self, job: str, measurement: str, field: str, recompute_days: int, now_ms: int
               ) -> tuple[int, int] | None:
        """(progress, cursor) of a job that rolls up whole JST days again while they are recomputed: its progress
        point and the earlier of that point's day and the first day still recomputed; on its first pass the JST
        day of ``measurement``'s oldest ``field`` for both. None: nothing to roll up yet."""
        progress = self.progress(job)
        if progress is None:
            oldest = self.oldest(self.source, measurement, field)
            return None if oldest is None else (jst_day(oldest), jst_day(oldest))
        return progress, min(jst_day(progress), jst_day(now_ms - recompute_days * DAY_MS))

    def write(self, lines: Iterable[str], job: str, until_ms: int) -> None:
        """One request: ``lines``, then the job's progress point. :class:`RollupError` unless all was stored."""
        body = "\n".join([*lines, line(PROGRESS, {"job": job}, {"until_ms": int(until_ms)}, until_ms)])
        res = self.client.write(body.encode())
        if not res.ok:
            raise RollupError(f"write to {self.target} at {self.client.url}: {res.outcome} "
                              f"({res.status or 'no answer'}): {res.message[:300]}")
