"""The garbage trucks' cargo per truck and hour and per truck and JST day: ``truck_cargo_1h``, ``truck_cargo_1d``
(:mod:`cityos.rollups` "Trucks", docs/api.md "Pre-aggregation"), so the NGSI-LD Vehicle's ``cargoWeight``
aggregates need no raw pickup before the job's progress point.

* **What a row holds**: ``readings`` (the instances), ``cargo_kg_sum`` (exact, :func:`math.fsum`), ``cargo_kg_min``,
  ``cargo_kg_max`` of the Vehicle's ``cargoWeight`` instances in the bucket, stamped at its start: each pickup's
  ``load_kg`` (0 to :data:`~cityos.rollups.MAX_TRIP_KG`, as stored) and, after each unload that ended a trip the API
  serves (:func:`~cityos.rollups.servable_trip`), what was left (:func:`~cityos.rollups.cargo_left` of the trip's
  newest load since the day before the unload's JST day): :func:`~cityos.rollups.cargo_series`, the API's own
  computation. A day row is its hours merged (:func:`~cityos.rollups.forest_regroup`), written once the day ended.
* **Progress**: the end of the last hour rolled up (job ``truck_cargo``); a reader takes rows before it and the raw
  points after it. Each pass rolls up one JST day per batch (its loads read once; the day before is read only for
  the first day of a pass: the trips' loads before midnight).
* **Late data**: as the waste job, every day is rolled up again on every pass until ``recompute_days`` days after
  it ended (rows of the same truck and bucket overwrite the previous ones), then left as it is; the first pass
  starts at the JST day of the oldest pickup.

Cost: one read of the day's loads (12,000 on the benchmark's city: 30 trucks) and trips per day rolled up, i.e.
``recompute_days`` + 2 days per pass; 30 x 9 hour rows and 30 day rows per day written.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from cityos.rollups import (
    DAY_MS,
    HOUR_MS,
    MAX_TRIP_KG,
    TRUCK_CARGO,
    TRUCK_CARGO_1D,
    TRUCK_CARGO_1H,
    TRUCK_ROLLED,
    WASTE_COLLECTION,
    WASTE_TRIP,
    cargo_rows,
    cargo_series,
    forest_regroup,
    servable_trip,
)
from cityos.wire import ID_PATTERN
from rollup.report import JobReport
from rollup.store import Store, line

__all__ = ["JOB", "cargo_lines", "truck_pass"]

JOB = TRUCK_CARGO
Load = tuple[str, int, int | None, float]
_ID_RE = re.compile(ID_PATTERN)


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _loads(store: Store, start: int, end: int) -> list[Load]:
    """The servable loads of ``[start, end)``: (truck, ms, trip_no, load_kg), as the API reads them."""
    out: list[Load] = []
    for s in store.rows(store.source, f'SELECT "load_kg", "trip_no" FROM "{WASTE_COLLECTION}" WHERE time >= '
                                      f'{start}ms AND time < {end}ms AND "load_kg" >= 0 AND "load_kg" <= '
                                      f'{MAX_TRIP_KG:g} GROUP BY "device"'):
        dev = s["tags"].get("device") or ""
        if not _ID_RE.fullmatch(dev):
            continue
        for r in s["rows"]:
            kg, no = _number(r.get("load_kg")), _number(r.get("trip_no"))
            if kg is not None:
                out.append((dev, int(r["time"]), None if no is None else int(no), kg))
    return out


def _unloads(store: Store, start: int, end: int) -> list[tuple[str, int, int, float]]:
    """The unloads of the trips the API serves that ended in ``[start, end)``: (truck, end ms, trip_no, kg)."""
    out = []
    for s in store.rows(store.source, f'SELECT "trip_no", "kg_collected", "kg_unloaded", "pickups", "duration_s" '
                                      f'FROM "{WASTE_TRIP}" WHERE time >= {start}ms AND time < {end}ms GROUP BY '
                                      f'"device"'):
        dev = s["tags"].get("device") or ""
        for r in s["rows"]:
            kg = _number(r.get("kg_unloaded"))
            if _ID_RE.fullmatch(dev) and servable_trip(r) and kg is not None and 0 <= kg <= MAX_TRIP_KG:
                out.append((dev, int(r["time"]), int(r["trip_no"]), kg))
    return out


def _newest(loads: list[Load]) -> dict[tuple[str, int | None], float]:
    """(truck, trip_no) → its newest load."""
    last: dict[tuple[str, int | None], float] = {}
    for dev, _ms, no, kg in sorted(loads, key=lambda x: x[1]):
        last[(dev, no)] = kg
    return last


def cargo_lines(store: Store, day: int, end: int, before: dict[tuple[str, int | None], float] | None
                ) -> tuple[list[str], dict[tuple[str, int | None], float]]:
    """The rows of ``[day, end)`` (a JST day's start, ``end`` at most a day later): its hours, and the day when
    ``end`` ends it. ``before``: (truck, trip_no) → newest load of the day before (None: read here). Returns the
    lines and the same map for the next day (the newest loads of this one)."""
    if before is None:
        before = _newest(_loads(store, day - DAY_MS, day))
    loads = _loads(store, day, end)
    hours = cargo_rows(cargo_series(loads, _unloads(store, day, end), dict(before)), HOUR_MS)
    lines = [line(TRUCK_CARGO_1H, {"device": dev}, row, t) for dev, t, row in hours]
    if end == day + DAY_MS:
        lines += [line(TRUCK_CARGO_1D, {"device": dev}, row, t)
                  for (dev, t), row in forest_regroup(hours, DAY_MS, TRUCK_ROLLED).items()]
    return lines, _newest(loads)


def truck_pass(store: Store, recompute_days: int, now_ms: int, stop: Callable[[], bool],
               after_batch: Callable[[str, int], None]) -> JobReport:
    """Roll up every day from the first one still recomputed (or the progress point's, if earlier) up to the last
    hour that ended, a JST day per batch."""
    rep = JobReport(JOB)
    done = now_ms // HOUR_MS * HOUR_MS  # the hours that have ended
    start = store.resume(JOB, WASTE_COLLECTION, "load_kg", recompute_days, now_ms)
    if start is None:
        return rep
    progress, cursor = start
    before = None
    while cursor < done and not stop():
        end = min(cursor + DAY_MS, done)
        lines, before = cargo_lines(store, cursor, end, before)
        progress = max(progress, end)
        store.write(lines, JOB, progress)
        rep.rows += len(lines)
        rep.batches += 1
        rep.days += end == cursor + DAY_MS
        rep.until_ms = progress
        cursor = end
        after_batch(JOB, end)
    return rep
