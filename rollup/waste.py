"""Waste per district and JST day, per collection-point cell, and per trip: ``waste_district_1d``, ``waste_cell_1d``,
``waste_trip_district_1d`` (docs/api.md "Pre-aggregation", docs/trucks.md).

* A row per (JST day, district tag) with pickups: ``kg`` the sum of the pickups' ``kg``, ``pickups`` their number,
  summed by InfluxDB itself (``GROUP BY time(1d), "district" ... tz('Asia/Tokyo')``), stamped at the day's start.
  ``unknown`` (the trucks' tag of a pickup outside every district) is a district like the others.
* Unusable pickups are skipped and counted: ``kg`` outside 0 to :data:`~cityos.rollups.MAX_PICKUP_KG`, a
  district tag missing or not an id.
* A row per (JST day, collection-point cell, district tag) in ``waste_cell_1d``: the same pickups' ``kg`` (summed
  exactly, :func:`math.fsum`) and ``pickups``, binned in Python by :func:`~cityos.rollups.cell_of` (InfluxQL cannot
  group by a field), with the cell's centre; the pickups without a position in the cell ``none``. Read one day at a
  time. A pickup the district sums use but a cell cannot (a ``device`` tag not an id, a position out of range or
  only one of ``lat``/``lon``) is skipped and counted too, so each unusable pickup is counted once. The cells have
  a progress point of their own (job ``waste_cells``): on a deployment whose districts are rolled up already,
  their first pass fills every day since the oldest pickup, then recomputes like the districts.
* A row per (truck, trip number, district, JST day) in ``waste_trip_district_1d``: the pickups a trip can hold
  (:func:`~cityos.rollups.trip_parts`, the API's grouping of raw pickups too), with their first and last time. A
  trip across JST midnight is two rows; the API attaches rows to trips. Every day up to the pass's last whole
  minute, today's rows with it: the progress point (job ``waste_trips``) is that minute, which the API reads raw
  from; each row's ``until_ms`` says where its pickups were read to (its day's end, or the pass's point), so a
  reader that read another pass's point reads those trucks raw instead of counting pickups twice. Each pass
  resumes at the earlier of its point's day and the first day still recomputed (so every day is rolled up at
  least once after it ended, and today again each pass). It counts no skipped pickup: those it cannot use are
  counted above. Today's trips were the slowest route of a working afternoon: 7,000 raw pickups, 45 ms.
* **Late data**: a day is recomputed on every pass until ``recompute_days`` days after it ended (a row of the
  same day and district overwrites the previous one), then left as it is. The job's progress point is the first
  day still recomputed; the first pass starts at the JST day of the oldest pickup. Waste per district is not
  personal (docs/trucks.md): no freeze is needed, only late pickups to land.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from cityos.influx import query_results
from cityos.rollups import (
    DAY_MS,
    MAX_PICKUP_KG,
    NO_CELL,
    WASTE_1D,
    WASTE_CELL_1D,
    WASTE_CELLS,
    WASTE_COLLECTION,
    WASTE_TRIP_1D,
    WASTE_TRIPS,
    cell_centre,
    cell_of,
    cell_tag,
    jst_day,
    trip_part_time,
    trip_parts,
)
from cityos.wire import ID_PATTERN
from rollup.report import JobReport
from rollup.store import Store, line

__all__ = ["CELLS_JOB", "JOB", "TRIPS_JOB", "cell_lines", "trip_lines", "waste_pass"]

JOB = "waste"
#: The cells' progress point (``rollup_progress``, tag ``job``).
CELLS_JOB = WASTE_CELLS
#: The trip rows' progress point: the API reads the days before it from the rows.
TRIPS_JOB = WASTE_TRIPS
#: Days read per query (and written per request) when catching up.
BATCH_DAYS = 31
_ID_RE = re.compile(ID_PATTERN)
TZ = "tz('Asia/Tokyo')"


def _statements(start_ms: int, end_ms: int) -> str:
    where = f"time >= {start_ms}ms AND time < {end_ms}ms"
    return (f'SELECT sum("kg") AS "kg", count("kg") AS "pickups" FROM "{WASTE_COLLECTION}" WHERE {where} AND '
            f'"kg" >= 0 AND "kg" <= {MAX_PICKUP_KG:g} GROUP BY time(1d), "district" fill(none) {TZ}; '
            f'SELECT count("kg") AS "bad" FROM "{WASTE_COLLECTION}" WHERE {where} AND ("kg" < 0 OR "kg" > '
            f'{MAX_PICKUP_KG:g})')


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def cell_lines(store: Store, start_ms: int, end_ms: int) -> tuple[list[str], int]:
    """``waste_cell_1d`` rows of the JST days in ``[start_ms, end_ms)`` (day-aligned), and the number of pickups
    only the cells could not use (kg missing, a device tag not an id, a position out of range or half missing;
    a kg out of range or a district tag not an id is counted by the district sums)."""
    lines: list[str] = []
    skipped = 0
    for day in range(start_ms, end_ms, DAY_MS):
        acc: dict[tuple[tuple[int, int] | None, str], list[float]] = defaultdict(list)
        for s in store.rows(store.source, f'SELECT "kg", "lat", "lon" FROM "{WASTE_COLLECTION}" WHERE time >= '
                                          f'{day}ms AND time < {day + DAY_MS}ms GROUP BY "device", "district"'):
            district = s["tags"].get("district") or ""
            device_ok = bool(_ID_RE.fullmatch(s["tags"].get("device") or ""))
            for r in s["rows"]:
                kg = _number(r.get("kg"))
                if (kg is not None and not 0 <= kg <= MAX_PICKUP_KG) or not _ID_RE.fullmatch(district):
                    continue  # counted by the district sums
                lat, lon = _number(r.get("lat")), _number(r.get("lon"))
                no_pos = r.get("lat") is None and r.get("lon") is None
                pos_ok = lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180
                if kg is None or not device_ok or not (no_pos or pos_ok):
                    skipped += 1
                    continue
                cell = None if no_pos or lat is None or lon is None else cell_of(lat, lon)
                acc[(cell, district)].append(kg)
        for (cell, district), kgs in sorted(acc.items(), key=lambda x: (x[0][0] or (0, 0), x[0][1])):
            fields: dict[str, float | int] = {"kg": math.fsum(kgs), "pickups": len(kgs)}
            if cell is not None:
                fields["lat"], fields["lon"] = cell_centre(cell)
            lines.append(line(WASTE_CELL_1D, {"cell": NO_CELL if cell is None else cell_tag(cell),
                                              "district": district}, fields, day))
    return lines, skipped


def trip_lines(store: Store, start_ms: int, end_ms: int) -> list[str]:
    """``waste_trip_district_1d`` rows of the JST days from ``start_ms`` (day-aligned) to ``end_ms`` (the last
    day's part before it when it is not a day's end: today), one day read at a time, each with ``until_ms`` where
    its pickups were read to. A part whose trip number cannot be a timestamp's offset is not written (the API reads
    it raw)."""
    lines: list[str] = []
    for day in range(start_ms, end_ms, DAY_MS):
        until = min(day + DAY_MS, end_ms)
        q = (f'SELECT "kg", "trip_no" FROM "{WASTE_COLLECTION}" WHERE time >= {day}ms AND time < '
             f'{until}ms GROUP BY "device", "district"')
        (result,) = query_results(*store.query(store.source, q))
        parts, _ = trip_parts(result.get("series", []))  # the unusable pickups: counted by the districts, cells
        for p in parts:
            ts = trip_part_time(p.day_ms, p.trip_no)
            if ts is not None:
                lines.append(line(WASTE_TRIP_1D, {"device": p.device, "district": p.district},
                                  {"trip_no": p.trip_no, "kg": p.kg, "pickups": p.pickups, "first_ms": p.first_ms,
                                   "last_ms": p.last_ms, "until_ms": until}, ts))
    return sorted(lines, key=lambda x: int(x.rsplit(" ", 1)[1]))


def _start(store: Store, job: str, settled: int) -> int:
    """Where ``job`` resumes: its progress point, or on its first pass the JST day of the oldest pickup."""
    cursor = store.progress(job)
    if cursor is None:
        oldest = store.oldest(store.source, WASTE_COLLECTION, "kg")
        cursor = settled if oldest is None else min(jst_day(oldest), settled)
    return cursor


def waste_pass(store: Store, recompute_days: int, now_ms: int, stop: Callable[[], bool],
               after_batch: Callable[[str, int], None]) -> JobReport:
    """(Re)compute every day from the first one still recomputed up to today (so far): the districts, then the
    cells (their own progress point, job :data:`CELLS_JOB`: added after the districts' rollup, their first pass
    fills every day since the oldest pickup), then the trips' parts (job :data:`TRIPS_JOB`, up to yesterday)."""
    rep = JobReport(JOB)
    end_all = jst_day(now_ms) + DAY_MS
    settled = jst_day(now_ms - recompute_days * DAY_MS)  # days before it ended recompute_days ago or more
    cursor = done = rep.until_ms = _start(store, JOB, settled)
    while cursor < end_all and not stop():
        end = min(end_all, cursor + BATCH_DAYS * DAY_MS)
        lines = []
        for s in store.rows(store.source, _statements(cursor, end)):
            if s["rows"] and "bad" in s["rows"][0]:  # the second statement: the unusable kg
                rep.skipped += sum(int(r.get("bad") or 0) for r in s["rows"])
                continue
            district = s["tags"].get("district") or ""
            for r in s["rows"]:
                n = int(r.get("pickups") or 0)
                if not n:
                    continue
                if not _ID_RE.fullmatch(district):
                    rep.skipped += n
                    continue
                lines.append(line(WASTE_1D, {"district": district}, {"kg": float(r["kg"]), "pickups": n},
                                  int(r["time"])))
        lines.sort(key=lambda x: int(x.rsplit(" ", 1)[1]))
        done = max(done, min(end, settled))
        store.write(lines, JOB, done)
        rep.rows += len(lines)
        rep.batches += 1
        rep.until_ms = done
        cursor = end
        after_batch(JOB, end)
    cursor = done = _start(store, CELLS_JOB, settled)
    while cursor < end_all and not stop():
        end = min(end_all, cursor + BATCH_DAYS * DAY_MS)
        cells, bad_cells = cell_lines(store, cursor, end)
        rep.skipped += bad_cells
        done = max(done, min(end, settled))
        store.write(cells, CELLS_JOB, done)
        rep.batches += 1
        cursor = end
        after_batch(CELLS_JOB, end)
    today = jst_day(now_ms)
    cursor = min(jst_day(_start(store, TRIPS_JOB, settled)), settled)
    until = max(today, now_ms - now_ms % 60_000)  # today up to the last whole minute
    while cursor < until and not stop():
        end = min(until, cursor + BATCH_DAYS * DAY_MS)
        store.write(trip_lines(store, cursor, end), TRIPS_JOB, end)
        rep.batches += 1
        cursor = end
        after_batch(TRIPS_JOB, end)
    return rep
