"""The buses per hour and JST day: ``bus_vehicle_1h``, ``bus_vehicle_1d`` (:mod:`cityos.rollups` "Buses",
docs/api.md "Pre-aggregation"), so the NGSI-LD Vehicle's ``speed``, ``heading`` and ``occupancyPercentage``
aggregates need no raw position before the job's progress point (a bus reports every 15 s: a month of one bus is
170,000 points, of a city's 30 buses five million).

* **What a row holds**: per field of :data:`~cityos.rollups.BUS_VALID`, the count, sum (InfluxDB's), minimum and
  maximum of its values within its servable range (:func:`~cityos.rollups.field_rows`, the API's raw path too),
  stamped at the bucket's start; ``readings`` the most values of any field.
* **Progress**: the end of the last hour rolled up (job ``bus_vehicle``); a reader takes rows before it and raw
  points after it. A day's row is written with its last hour.
* **Late data** (a bus gateway's backlog after an outage): every pass rolls up again every day from the first one
  still recomputed (``recompute_days`` after it ended) or its progress point's day, whichever is earlier; rows of
  the same bus and bucket overwrite the previous ones. Cost: a GROUP BY of those days' positions per field.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from cityos.rollups import (
    BUS_POSITION,
    BUS_VALID,
    BUS_VEHICLE,
    BUS_VEHICLE_1D,
    BUS_VEHICLE_1H,
    DAY_MS,
    HOUR_MS,
    field_rows,
    jst_day,
)
from cityos.wire import ID_PATTERN
from rollup.report import JobReport
from rollup.store import Store, line

__all__ = ["JOB", "bus_pass"]

JOB = BUS_VEHICLE
_ID_RE = re.compile(ID_PATTERN)
#: Days rolled up per write.
BATCH_DAYS = 7


def _lines(store: Store, start: int, end: int) -> list[str]:
    """The hour rows of ``[start, end)`` (``start`` a JST midnight, ``end`` a whole hour) and the day rows of the
    JST days it holds whole."""
    out = [line(BUS_VEHICLE_1H, {"device": dev}, row, t)
           for dev, t, row in field_rows(store.query, store.source, BUS_POSITION, BUS_VALID, start, end, HOUR_MS)
           if _ID_RE.fullmatch(dev)]
    if jst_day(end) > start:
        out += [line(BUS_VEHICLE_1D, {"device": dev}, row, t)
                for dev, t, row in field_rows(store.query, store.source, BUS_POSITION, BUS_VALID, start,
                                              jst_day(end), DAY_MS) if _ID_RE.fullmatch(dev)]
    return out


def bus_pass(store: Store, recompute_days: int, now_ms: int, stop: Callable[[], bool],
             after_batch: Callable[[str, int], None]) -> JobReport:
    """Roll up every hour from the first day still recomputed (or the progress point's day, if earlier; the
    oldest position's on the first pass) up to the last hour that ended, :data:`BATCH_DAYS` days per write."""
    rep = JobReport(JOB)
    done = now_ms // HOUR_MS * HOUR_MS  # the hours that have ended
    start = store.resume(JOB, BUS_POSITION, "speed_kmh", recompute_days, now_ms)
    if start is None:
        return rep
    progress, cursor = start
    rep.until_ms = progress
    while cursor < done and not stop():
        end = min(cursor + BATCH_DAYS * DAY_MS, done)
        lines = _lines(store, cursor, end)
        progress = max(progress, end)
        store.write(lines, JOB, progress)
        rep.rows += len(lines)
        rep.batches += 1
        rep.days += (jst_day(end) - cursor) // DAY_MS
        rep.until_ms = progress
        cursor = end
        after_batch(JOB, end)
    return rep
