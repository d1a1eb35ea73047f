"""The forest stations per 10 minutes, hour and JST day, and their readings at caution or above
(``forest_station_10m``/``_1h``/``_1d``, ``forest_alert_10m`` and, joined per JST day, ``forest_alert_1d``:
:mod:`cityos.rollups`, docs/api.md "Pre-aggregation").

* **New data**: each pass rolls up the 10-minute buckets that have ended since the job's progress point (one JST
  day per batch), then every hour and day those complete (their earlier part read back from the target), and
  keeps the new readings at caution or above as spans per station and 10 minutes
  (:class:`cityos.landslide.AlertSpan`). The progress
  point is the end of the last complete bucket: a reader takes rows before it and raw points after it. Then each
  JST day the spans cover wholly gets its spans joined (job ``forest_alert_days``, from its own progress point or
  the first day still recomputed: a deployment rolled up before these rows gets them on its next pass).
* **Late data** (a station's gateway sends its backlog after an outage, as backfill): on every pass the number of
  readings per station and 10 minutes of the last ``recompute_days`` is compared with the rows'; each station
  day that differs is rolled up again from its raw points (rows of the same station and period overwrite the
  previous ones, alert spans too, so nothing is doubled). Older late
  data is not looked for: ``cityos rollup`` would need to be run with a larger ``recompute_days`` once.
* A field InfluxDB stores only as something else than a number (a string written by a broken gateway) is left
  out of the rollup (its ``sum()`` would fail the whole query); its values are counted as skipped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable

from cityos.landslide import (
    ASSESSED_FIELDS,
    FOREST_ALERT_WINDOW_MIN,
    AlertSpan,
    alert_spans,
    assess,
    influxql_at_caution,
    join_spans,
)
from cityos.rollups import (
    DAY_MS,
    FOREST,
    FOREST_1D,
    FOREST_1H,
    FOREST_10M,
    FOREST_ALERT_DAYS,
    FOREST_ALERTS,
    FOREST_ALERTS_1D,
    FOREST_COUNTED,
    FOREST_ROLLED,
    FOREST_STEP_MS,
    HOUR_MS,
    alert_span_fields,
    bucket_start,
    devices_clause,
    forest_raw,
    forest_regroup,
    forest_stored,
    jst_day,
    numeric_fields,
    stored_alert_spans,
)
from cityos.wire import ID_PATTERN
from rollup.report import JobReport
from rollup.store import Store, line

__all__ = ["JOB", "forest_pass"]

JOB = FOREST
Row = tuple[str, int, dict[str, float | int]]


_ID_RE = re.compile(ID_PATTERN)


def _ok(dev: str) -> bool:
    return _ID_RE.fullmatch(dev) is not None


def _lines(measurement: str, rows: Iterable[Row]) -> list[str]:
    return [line(measurement, {"device": dev}, row, t) for dev, t, row in rows if _ok(dev)]


def _complete(rows: dict[tuple[str, int], dict[str, float | int]], step: int, start: int, end: int) -> list[Row]:
    """The regrouped rows of the ``step`` periods that lie wholly in ``[start, end)``."""
    return [(dev, t, row) for (dev, t), row in rows.items() if t >= start and t + step <= end]


def _alert_lines(store: Store, start: int, end: int, devices: Iterable[str] | None) -> list[str]:
    """The spans of readings at caution or above per station and 10 minutes of ``[start, end)``."""
    fields = ", ".join(f'"{f}"' for f in ASSESSED_FIELDS)
    points = []
    for s in store.rows(store.source, f'SELECT {fields} FROM "{FOREST}" WHERE time >= {start}ms AND time < '
                                      f'{end}ms{devices_clause(devices)} AND {influxql_at_caution()} GROUP BY "device"'):
        d = s["tags"].get("device") or ""
        if _ok(d):
            points += [(d, int(r["time"]), assess(r)) for r in s["rows"]]
    return [line(FOREST_ALERTS, {"device": sp.station}, alert_span_fields(sp), bucket_start(sp.first_ms,
                                                                                          FOREST_STEP_MS))
            for sp in alert_spans(points, FOREST_STEP_MS)]


def _alert_day_lines(store: Store, start: int, end: int) -> list[str]:
    """The JST days of ``[start, end)`` (day-aligned, complete in the 10-minute spans): each station's spans
    joined within the day, at the day's start + their index, each with the day's count ``of``."""
    spans, _ = stored_alert_spans(store.query, store.target, start, end, end, None)
    per_day: dict[int, list[AlertSpan]] = defaultdict(list)
    for sp in spans:
        per_day[jst_day(sp.first_ms)].append(sp)
    lines = []
    for day, items in sorted(per_day.items()):
        joined: dict[str, list[AlertSpan]] = defaultdict(list)
        for sp in join_spans(items, FOREST_ALERT_WINDOW_MIN * 60_000):
            joined[sp.station].append(sp)
        for dev, day_spans in sorted(joined.items()):
            lines += [line(FOREST_ALERTS_1D, {"device": dev}, {**alert_span_fields(sp), "of": len(day_spans)},
                           day + i) for i, sp in enumerate(day_spans) if _ok(dev)]
    return lines


def _alert_days(store: Store, rep: JobReport, recompute_days: int, now_ms: int, until: int,
                stop: Callable[[], bool]) -> None:
    """The day rows of every JST day the 10-minute spans cover wholly (before ``until``), from the first day
    without them or still recomputed (late readings: the days :func:`forest_pass` may have rolled up again)."""
    cursor = store.progress(FOREST_ALERT_DAYS)
    if cursor is None:
        oldest = store.oldest(store.target, FOREST_ALERTS, "readings")
        cursor = until if oldest is None else jst_day(oldest)
    cursor = min(cursor, jst_day(max(0, now_ms - recompute_days * DAY_MS)))
    while cursor < until and not stop():
        end = min(until, cursor + 31 * DAY_MS)
        lines = _alert_day_lines(store, cursor, end)
        store.write(lines, FOREST_ALERT_DAYS, end)
        rep.rows += len(lines)
        rep.batches += 1
        cursor = end


def _roll(store: Store, fields: list[str], start: int, end: int, progress: int, devices: Iterable[str] | None
          ) -> list[str]:
    """Lines for ``[start, end)`` (within one JST day, ``start`` 10-minute aligned): its 10-minute rows from raw
    points, the hours and the day it completes (their part before ``start`` read from the target, which is
    complete up to ``progress`` = ``start`` for new data, or recomputed whole for a changed day), and its alert
    readings."""
    new = forest_raw(store.query, store.source, start, end, fields, devices)
    lines = _lines(FOREST_10M, new)
    for step, measurement in ((HOUR_MS, FOREST_1H), (DAY_MS, FOREST_1D)):
        first = bucket_start(start, step)
        before, _ = forest_stored(store.query, store.target, first, start, step, progress, devices)
        lines += _lines(measurement, _complete(forest_regroup([*before, *new], step), step, first, end))
    return lines + _alert_lines(store, start, end, devices)


def _changed(store: Store, start: int, end: int) -> dict[int, set[str]]:
    """JST day → stations whose readings per 10 minutes in ``[start, end)`` differ from the rows'."""
    if end <= start:
        return {}
    raw: dict[tuple[str, int], int] = {}
    for s in store.rows(store.source, f'SELECT count("{FOREST_COUNTED}") AS "n" FROM "{FOREST}" WHERE time >= '
                                      f'{start}ms AND time < {end}ms GROUP BY time({FOREST_STEP_MS}ms), "device" '
                                      "fill(none)"):
        for r in s["rows"]:
            raw[(s["tags"].get("device") or "", int(r["time"]))] = int(r["n"] or 0)
    rolled: dict[tuple[str, int], int] = {}
    for s in store.rows(store.target, f'SELECT "readings" FROM "{FOREST_10M}" WHERE time >= {start}ms AND time < '
                                      f'{end}ms GROUP BY "device"'):
        for r in s["rows"]:
            if isinstance(r.get("readings"), int) and r["readings"] > 0:
                rolled[(s["tags"].get("device") or "", int(r["time"]))] = r["readings"]
    out: dict[int, set[str]] = defaultdict(set)
    for key in raw.keys() | rolled.keys():
        if raw.get(key, 0) != rolled.get(key, 0) and _ok(key[0]):
            out[jst_day(key[1])].add(key[0])
    return dict(sorted(out.items()))


def forest_pass(store: Store, recompute_days: int, now_ms: int, stop: Callable[[], bool],
                after_batch: Callable[[str, int], None]) -> JobReport:
    """Roll up what changed in the recompute window, then every bucket ended since the progress point."""
    rep = JobReport(JOB)
    numbers, others = numeric_fields(store.query, store.source, FOREST)
    fields = [f for f in FOREST_ROLLED if f in numbers]
    unusable = [f for f in FOREST_ROLLED if f in others]
    done = now_ms // FOREST_STEP_MS * FOREST_STEP_MS  # the 10-minute buckets that have ended
    progress = store.progress(JOB)
    if progress is None:
        oldest = store.oldest(store.source, FOREST, FOREST_COUNTED)
        if oldest is None:
            return rep
        progress = jst_day(oldest)
    else:
        for day, devices in _changed(store, max(jst_day(now_ms - recompute_days * DAY_MS), 0), progress).items():
            if stop():
                return rep
            end = min(day + DAY_MS, progress)
            lines = _roll(store, fields, day, end, day, devices)
            store.write(lines, JOB, progress)
            rep.rows += len(lines)
            rep.days += 1
            rep.batches += 1
    if unusable:
        for s in store.rows(store.source, "SELECT " + ", ".join(f'count("{f}") AS "{f}"' for f in unusable) +
                            f' FROM "{FOREST}" WHERE time >= {progress}ms AND time < {done}ms'):
            rep.skipped += sum(int(v or 0) for r in s["rows"] for k, v in r.items() if k != "time")
    cursor = progress
    rep.until_ms = cursor
    while cursor < done and not stop():
        end = min(jst_day(cursor) + DAY_MS, done)
        lines = _roll(store, fields, cursor, end, cursor, None)
        store.write(lines, JOB, end)
        rep.rows += len(lines)
        rep.batches += 1
        rep.days += end == jst_day(cursor) + DAY_MS
        rep.until_ms = cursor = end
        after_batch(JOB, end)
    if not stop():
        _alert_days(store, rep, recompute_days, now_ms, jst_day(rep.until_ms), stop)
    return rep
