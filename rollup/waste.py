"""Waste per district and JST day: ``waste_district_1d`` (docs/api.md "Pre-aggregation", docs/trucks.md).

* A row per (JST day, district tag) with pickups: ``kg`` the sum of the pickups' ``kg``, ``pickups`` their number,
  summed by InfluxDB itself (``GROUP BY time(1d), "district" ... tz('Asia/Tokyo')``), stamped at the day's start.
  ``unknown`` (the trucks' tag of a pickup outside every district) is a district like the others.
* Unusable pickups are skipped and counted: ``kg`` outside 0 to :data:`~cityos.rollups.MAX_PICKUP_KG`, a
  district tag missing or not an id.
* **Late data**: a day is recomputed on every pass until ``recompute_days`` days after it ended (a row of the
  same day and district overwrites the previous one), then left as it is. The job's progress point is the first
  day still recomputed; the first pass starts at the JST day of the oldest pickup. Waste per district is not
  personal (docs/trucks.md): no freeze is needed, only late pickups to land.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from cityos.rollups import DAY_MS, MAX_PICKUP_KG, WASTE_1D, WASTE_COLLECTION, jst_day
from cityos.wire import ID_PATTERN
from rollup.report import JobReport
from rollup.store import Store, line

__all__ = ["JOB", "waste_pass"]

JOB = "waste"
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


def waste_pass(store: Store, recompute_days: int, now_ms: int, stop: Callable[[], bool],
               after_batch: Callable[[str, int], None]) -> JobReport:
    """(Re)compute every day from the first one still recomputed up to today (so far)."""
    rep = JobReport(JOB)
    end_all = jst_day(now_ms) + DAY_MS
    settled = jst_day(now_ms - recompute_days * DAY_MS)  # days before it ended recompute_days ago or more
    cursor = store.progress(JOB)
    if cursor is None:
        oldest = store.oldest(store.source, WASTE_COLLECTION, "kg")
        cursor = settled if oldest is None else min(jst_day(oldest), settled)
    done = cursor
    rep.until_ms = cursor
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
    return rep
