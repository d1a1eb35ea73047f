"""Energy per district: ``energy_district_30m`` (every half hour) and ``energy_district_1d`` (every JST day),
**frozen** (docs/api.md "Pre-aggregation", docs/privacy.md "The API").

* A half hour is written once, by the first pass after it ended ``energy_settle_h`` ago, and never again: a later
  backfill of a household's value can never change what was published, so no two answers about one period differ
  (by one household, or at all).
* A household's half hour is the kernel's :func:`cityos.rollups.household_half_hours` (the API's per-household
  route computes it with the same function); a district's is the sum over its households, rounded to Wh, with
  the number of households (:func:`cityos.rollups.district_sums`): every district, even under k (the readers
  apply k). Households without a district tag are in no district.
* A JST day is written with its last half hour (in the same request): ``kwh`` the sum of its frozen half hours'
  kWh, ``slots`` how many half hours have a row, ``min_households`` the fewest households in one of them (the
  API's day rule: all 48, each with at least k), ``households`` the distinct households with a value that day.
* Batches are one JST day at most, in time order, each one request with the job's progress point: a pass that
  stops (a crash, a kill, InfluxDB failing) leaves a prefix, and the next resumes after the newest batch stored
  (the progress point, or the newest half hour if only the rows made it), so no half hour is skipped or rewritten.
* The first pass starts at the JST day of the oldest stored value (no raw energy yet: nothing to do).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from cityos.rollups import (
    DAY_MS,
    ENERGY,
    ENERGY_1D,
    ENERGY_30M,
    ENERGY_FIELD,
    SLOT_MS,
    district_sums,
    household_half_hours,
    jst_day,
)
from rollup.report import JobReport
from rollup.store import Store, line

__all__ = ["JOB", "energy_pass"]

JOB = "energy"


def _resume(store: Store) -> int | None:
    done = store.progress(JOB)
    newest = store.newest(store.target, ENERGY_30M, "households")
    ends = [x for x in (done, None if newest is None else newest + SLOT_MS) if x is not None]
    return max(ends, default=None)


def _frozen_rows(store: Store, start_ms: int, end_ms: int) -> dict[tuple[str, int], tuple[float, int]]:
    """The half hours already frozen in ``[start_ms, end_ms)``: (district, start) → (kWh, households)."""
    out = {}
    for s in store.rows(store.target, f'SELECT "kwh", "households" FROM "{ENERGY_30M}" WHERE time >= '
                                      f'{start_ms}ms AND time < {end_ms}ms GROUP BY "district"'):
        d = s["tags"].get("district", "")
        for r in s["rows"]:
            out[(d, int(r["time"]))] = (float(r["kwh"]), int(r["households"]))
    return out


def energy_pass(store: Store, settle_ms: int, now_ms: int, stop: Callable[[], bool],
                after_batch: Callable[[str, int], None]) -> JobReport:
    """Freeze every half hour that ended ``settle_ms`` before ``now_ms`` and is not frozen yet."""
    rep = JobReport(JOB)
    horizon = (now_ms - settle_ms) // SLOT_MS * SLOT_MS  # half hours starting before it have settled
    cursor = _resume(store)
    if cursor is None:
        oldest = store.oldest(store.source, ENERGY, ENERGY_FIELD)
        if oldest is None:
            return rep
        cursor = jst_day(oldest)
    rep.until_ms = cursor
    while cursor < horizon and not stop():
        day0 = jst_day(cursor)
        end = min(horizon, day0 + DAY_MS)
        slots, bad = household_half_hours(store.query, store.source, cursor, end)
        rep.skipped += bad
        sums = district_sums(slots)
        lines = [line(ENERGY_30M, {"district": d}, {"kwh": kwh, "households": n}, start)
                 for (d, start), (kwh, n) in sorted(sums.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
        rep.rows += len(lines)
        if end == day0 + DAY_MS:  # the day's last half hour: the day too, in the same request
            cells = {**_frozen_rows(store, day0, cursor), **sums} if cursor > day0 else dict(sums)
            day_slots = slots if cursor == day0 else household_half_hours(store.query, store.source, day0, end)[0]
            households: dict[str, set[str]] = defaultdict(set)
            for s in day_slots:
                if s.district:
                    households[s.district].add(s.device)
            per: dict[str, list[tuple[float, int]]] = defaultdict(list)
            for (d, _), cell in cells.items():
                per[d].append(cell)
            for d, day_cells in sorted(per.items()):
                lines.append(line(ENERGY_1D, {"district": d}, {
                    "kwh": round(sum(kwh for kwh, _ in day_cells), 3), "households": len(households[d]),
                    "slots": len(day_cells), "min_households": min(n for _, n in day_cells)}, day0))
                rep.days += 1
        store.write(lines, JOB, end)
        rep.batches += 1
        rep.until_ms = cursor = end
        after_batch(JOB, end)
    return rep
