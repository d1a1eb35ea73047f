"""Household energy from the smart meters, under ``/v1/energy`` (docs/api.md "Energy", docs/privacy.md).

What a household used in a half hour is the difference of two consecutive fixed-time cumulative values
(``energy_fixed_kwh`` at :00/:30, docs/meters.md) exactly 30 minutes apart; a missing value leaves both half
hours around it unknown for that household (never spread, never guessed). Slots are named by their start, in
Japan time.

Privacy (the kernel's k, :data:`cityos.privacy.MIN_HOUSEHOLDS`):

* **District routes** (``open``): a district's half hour is published only where at least k households have a
  value in it; otherwise its kWh is null with ``kwh_suppressed: true`` (the household count is not shown either
  for a hidden cell: "fewer than k").
* **Complementary suppression**: a district's day is the sum of its half hours, so publishing the day beside
  half hours with one hidden would give the hidden one by subtraction (one household's use, when one reported).
  A day is published only when every half hour of it is (then nothing hidden is on the other side of any sum
  the API publishes); no city-wide or multi-district total is published at all.
* **A period is served once settled** (``[open_data] energy_settle_h`` after it ends), and **frozen**: the district
  routes read the rollups (``[rollup] db``, ``cityos.rollups``: ``energy_district_30m`` and ``energy_district_1d``),
  which the rollup service (``rollup/``) writes once per period when it has settled and never rewrites, so a late
  backfill (a gateway offline for days) can never make a second answer differ from the first by one household.
  The k rule and the day rule are applied here, at read time, over the rollup's rows (it stores every group).
* **Per household** (``internal:energy-households``, the energy division alone): one household's half hours.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response

from cityos.influx import QueryFn
from cityos.rollups import (
    DAY_MS,
    ENERGY_1D,
    ENERGY_30M,
    SLOT_MS,
    SLOTS_PER_DAY,
    Slot,
    district_sums,
    household_half_hours,
    job_progress,
    jst_day,
    target_results,
)
from cityos_api.auth import HOUSEHOLDS, OPEN
from cityos_api.core import Api, json_body
from cityos_api.families.meter_models import (
    EnergyDistrictDaily,
    EnergyDistrictHalfHourly,
    EnergyHouseholdHalfHourly,
)
from cityos_api.params import FormatQuery, Span, TimeRange, bad, check_id, iso, literal, time_range

__all__ = ["SLOT_MS", "Slot", "district_days", "district_slots", "fetch_district_days", "fetch_district_half_hours",
           "fetch_slots", "router"]

MEASUREMENT = "energy"
HALF_HOURLY = Span(default=timedelta(days=1), longest=timedelta(days=31))
DAILY = Span(default=timedelta(days=7), longest=timedelta(days=400))


def fetch_slots(query: QueryFn, db: str, r: TimeRange, device: str | None = None) -> tuple[list[Slot], int]:
    """Every household half hour starting in ``r`` (complete: both ends present, 30 minutes apart), and the
    number of stored values that could not be used: the kernel's :func:`cityos.rollups.household_half_hours`
    (the rollup's district sums are made of the same)."""
    return household_half_hours(query, db, r.start_ms, r.end_ms, device)


def _cell(kwh: float, n: int, k: int) -> dict[str, Any]:
    """A district's half hour as published: hidden (with its count) below ``k`` households."""
    hidden = n < k
    return {"kwh": None if hidden else kwh, "households": None if hidden else n, "kwh_suppressed": hidden}


def district_slots(slots: Iterable[Slot], k: int) -> dict[tuple[str, int], dict[str, Any]]:
    """(district, slot start) → kwh (summed, rounded to Wh), households, suppressed (fewer than ``k``), from
    household half hours. Households without a district are in no district."""
    return {key: _cell(kwh, n, k) for key, (kwh, n) in district_sums(slots).items()}


def district_days(slots: Iterable[Slot], k: int) -> dict[tuple[str, int], dict[str, Any]]:
    """(district, JST day start) → kwh, households (with a value that day), suppressed: a day is published only
    when all of its 48 half hours are, each with at least ``k`` households (the complementary rule above), from
    household half hours (the routes read the same from the rollups: :func:`fetch_district_days`)."""
    slots = list(slots)
    cells = district_slots(slots, k)
    per_day: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for (district, start), cell in cells.items():
        per_day[(district, jst_day(start))].append((start, cell))
    households: dict[tuple[str, int], set[str]] = defaultdict(set)
    for s in slots:
        if s.district:
            households[(s.district, jst_day(s.start_ms))].add(s.device)
    out = {}
    for key, day_cells in sorted(per_day.items()):
        complete = len(day_cells) == SLOTS_PER_DAY and not any(c["kwh_suppressed"] for _, c in day_cells)
        out[key] = {"kwh": round(sum(c["kwh"] for _, c in day_cells), 3) if complete else None,
                    "households": len(households[key]) if complete else None,
                    "kwh_suppressed": not complete}
    return out


# ---- the rollups (cityos.rollups: written by `cityos rollup`, frozen once settled) -----------------------------
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _rollup_rows(query: QueryFn, db: str, measurement: str, fields: Iterable[str], r: TimeRange,
                 district: str | None) -> tuple[list[tuple[str, int, dict[str, float]]], int]:
    where = r.where() + (f' AND "district" = {literal(district)}' if district is not None else "")
    cols = ", ".join(f'"{f}"' for f in fields)
    out = []
    unusable = 0
    # the rollups' database not there (yet) for this user: nothing published yet (logged)
    for result in target_results(query, db, f'SELECT {cols} FROM "{measurement}" WHERE {where} GROUP BY '
                                            f'"district"') or []:
        for s in result.get("series", []):
            d = (s.get("tags") or {}).get("district") or ""
            names = s["columns"]
            for row in s.get("values", []):
                rec = dict(zip(names, row, strict=True))
                vals = {f: _num(rec.get(f)) for f in fields}
                if not d or any(v is None or v < 0 for v in vals.values()):
                    unusable += 1
                    continue
                out.append((d, int(rec["time"]), vals))  # type: ignore[arg-type]
    return out, unusable


def fetch_district_half_hours(query: QueryFn, db: str, r: TimeRange, k: int, district: str | None = None
                              ) -> tuple[dict[tuple[str, int], dict[str, Any]], int]:
    """(district, slot start) → the published cell, from the frozen half hours in the rollups' database ``db``;
    and the number of rollup rows that could not be used."""
    rows, unusable = _rollup_rows(query, db, ENERGY_30M, ("kwh", "households"), r, district)
    return ({(d, t): _cell(v["kwh"], int(v["households"]), k) for d, t, v in sorted(rows, key=lambda x: x[:2])},
            unusable)


def fetch_district_days(query: QueryFn, db: str, r: TimeRange, k: int, district: str | None = None
                        ) -> tuple[dict[tuple[str, int], dict[str, Any]], int]:
    """(district, JST day start) → the published day, from the frozen days in the rollups' database ``db``: shown
    only when all 48 of its half hours are in the rollups, each with at least ``k`` households."""
    rows, unusable = _rollup_rows(query, db, ENERGY_1D, ("kwh", "households", "slots", "min_households"), r, district)
    out = {}
    for d, t, v in sorted(rows, key=lambda x: x[:2]):
        complete = v["slots"] == SLOTS_PER_DAY and v["min_households"] >= k
        out[(d, t)] = {"kwh": v["kwh"] if complete else None,
                       "households": int(v["households"]) if complete else None, "kwh_suppressed": not complete}
    return out, unusable


#: The rollup job whose progress point says which half hours are frozen (``rollup/energy.py``).
ENERGY_JOB = "energy"


Row = tuple[str, int, dict[str, Any]]


def _half_hour(api: Api, district: str, start: int, cell: dict[str, Any]) -> dict[str, Any]:
    return {**api.places.named(district), "start": iso(start), "end": iso(start + SLOT_MS), **cell}


def _day(api: Api, district: str, day: int, cell: dict[str, Any]) -> dict[str, Any]:
    return {**api.places.named(district), "date": iso(day)[:10], **cell}


#: measurement → (its cells' reader, how a route renders a cell).
_DISTRICT_TABLES: dict[str, tuple[Any, Callable[[Api, str, int, dict[str, Any]], dict[str, Any]]]] = {
    ENERGY_30M: (fetch_district_half_hours, _half_hour),
    ENERGY_1D: (fetch_district_days, _day),
}


def district_cells(api: Api, measurement: str, tr: TimeRange, district: str | None) -> list[Row]:
    """The district cells of ``measurement`` (``energy_district_30m`` or ``_1d``) in ``tr``, rendered as the open
    routes serve them (the k rule applied), as (district, period start, row) sorted by district then time: the
    JST days the rollup has frozen from the API's :class:`~cityos_api.core.FrozenDays` (read once, whole; shared by
    the routes and the NGSI-LD provider), the rest from the rollups at each request."""
    fetch, render = _DISTRICT_TABLES[measurement]
    k = api.settings.open_data.min_households
    cache = api.frozen_days(measurement)

    def cells(r: TimeRange, only: str | None) -> dict[tuple[str, int], Any]:
        found, bad_rows = api.read(lambda query, _db: fetch(query, api.settings.rollup_db, r, k, only))
        api.skipped(measurement, bad_rows)
        return found  # type: ignore[no-any-return]

    progress = api.read(lambda query, _db: job_progress(query, api.settings.rollup_db, ENERGY_JOB))
    cut = max(tr.start_ms, min(tr.end_ms, jst_day(progress))) if progress is not None else tr.start_ms
    days = range(jst_day(tr.start_ms), cut, DAY_MS)
    kept = {d: cache.get(d) for d in days}
    missing = [d for d, rows in kept.items() if rows is None]
    if missing:
        loaded: dict[int, list[Row]] = {d: [] for d in missing}
        for (dist, t), cell in cells(TimeRange(missing[0], missing[-1] + DAY_MS), None).items():
            if jst_day(t) in loaded:
                loaded[jst_day(t)].append((dist, t, render(api, dist, t, cell)))
        for d, rows in loaded.items():
            cache.put(d, rows)
        kept.update(loaded)
    out = [row for rows in kept.values() for row in rows or ()
           if tr.start_ms <= row[1] < tr.end_ms and (district is None or row[0] == district)]
    if cut < tr.end_ms:
        out += [(dist, t, render(api, dist, t, cell))
                for (dist, t), cell in cells(TimeRange(cut, tr.end_ms), district).items()]
    return sorted(out, key=lambda x: (x[0], x[1]))


def router(api: Api) -> APIRouter:
    r = APIRouter(tags=["energy"])
    od = api.settings.open_data
    k = od.min_households
    settle_ms = int(od.energy_settle_h * 3_600_000)
    units = {"kwh": "kWh"}

    def settled(tr: TimeRange, step_ms: int) -> TimeRange:
        """The range cut to whole periods (half hours, or JST days) that ended ``energy_settle_h`` ago or more."""
        align = jst_day if step_ms == DAY_MS else (lambda ms: ms - ms % step_ms)
        end = align(min(tr.end_ms, int(api.clock() * 1000) - settle_ms))
        start = align(tr.start_ms)
        return TimeRange(start, max(start, end))

    def district_filter(district: str | None) -> str | None:
        return None if district is None else check_id("district", district)

    def envelope(dataset: str, title: str, tr: TimeRange, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"dataset": dataset, "title": title, **tr.public(), "time_zone": "Asia/Tokyo", "units": units,
                "suppression": {"min_households": k, "rule": (
                    f"a district's value is shown only where at least {k} households report in it; a day only "
                    f"when each of its half hours is shown; no totals over districts; periods are served "
                    f"{od.energy_settle_h:g} h after they end"),
                    "marker": "kwh and households are null and kwh_suppressed is true"},
                "items": items}

    read_responses: dict[int | str, dict[str, Any]] = {
        422: {"description": "a parameter is not valid (the message says which and why)"},
        503: {"description": "InfluxDB unavailable"},
    }

    def slots(tr: TimeRange, device: str | None = None) -> list[Slot]:
        found, bad_points = api.read(fetch_slots, tr, device)
        api.skipped(MEASUREMENT, bad_points)
        return found

    @api.route(r, "/v1/energy/districts/half-hourly", scope=OPEN, response_class=Response,
               responses={**read_responses, **json_body(EnergyDistrictHalfHourly)})
    def districts_half_hourly(
        frm: Annotated[str | None, Query(alias="from", description="start (ISO 8601 with offset, or a JST date)")]
        = None,
        to: Annotated[str | None, Query(description="end, exclusive (default: now)")] = None,
        district: Annotated[str | None, Query(description="only this district (its id)")] = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """Electricity used per district per half hour (kWh, from the households' smart meters), where at least k
        households report; at most 31 days."""
        d = district_filter(district)
        tr = settled(time_range(frm, to, HALF_HOURLY, int(api.clock() * 1000)), SLOT_MS)
        items = [row for _, _, row in district_cells(api, ENERGY_30M, tr, d)]
        doc = envelope("energy-district-half-hourly", "地区別 30分ごとの電力使用量 / electricity per district and half "
                       "hour", tr, items)
        return api.respond(fmt, doc, items, ["district", "district_name_ja", "district_name_en", "start", "end",
                                             "kwh", "households", "kwh_suppressed"],
                           f"energy-district-half-hourly_{iso(tr.start_ms)[:10]}")

    @api.route(r, "/v1/energy/districts/daily", scope=OPEN, response_class=Response,
               responses={**read_responses, **json_body(EnergyDistrictDaily)})
    def districts_daily(
        frm: Annotated[str | None, Query(alias="from", description="first day (a JST date, or a time in it)")]
        = None,
        to: Annotated[str | None, Query(description="end, exclusive (default: now)")] = None,
        district: Annotated[str | None, Query(description="only this district (its id)")] = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """Electricity used per district per JST day (kWh), only for days whose every half hour has at least k
        households; at most 400 days."""
        d = district_filter(district)
        tr = settled(time_range(frm, to, DAILY, int(api.clock() * 1000)), DAY_MS)
        items = [row for _, _, row in district_cells(api, ENERGY_1D, tr, d)]
        doc = envelope("energy-district-daily", "地区別 日別の電力使用量 / electricity per district and day", tr, items)
        return api.respond(fmt, doc, items, ["district", "district_name_ja", "district_name_en", "date", "kwh",
                                             "households", "kwh_suppressed"],
                           f"energy-district-daily_{iso(tr.start_ms)[:10]}")

    @api.route(r, "/v1/energy/households/{household_id}/half-hourly", scope=HOUSEHOLDS, response_class=Response,
               responses={**read_responses, 404: {"description": "no such household in the range"},
                          **json_body(EnergyHouseholdHalfHourly)})
    def household_half_hourly(
        household_id: str,
        frm: Annotated[str | None, Query(alias="from")] = None,
        to: Annotated[str | None, Query()] = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """One household's half hours (kWh): the energy division alone (scope internal:energy-households)."""
        hid = check_id("household_id", household_id, "a household pseudonym as in the data (hh-...)")
        if not hid.startswith("hh-"):
            raise bad("household_id", "a household pseudonym (hh-...)", household_id)
        tr = time_range(frm, to, HALF_HOURLY, int(api.clock() * 1000))
        found = slots(tr, hid)
        if not found:
            raise HTTPException(status_code=404, detail=f"household {hid}: no half-hour values in the range")
        items = [{"household": s.device, "district": s.district, "start": iso(s.start_ms),
                  "end": iso(s.start_ms + SLOT_MS), "kwh": s.kwh} for s in sorted(found, key=lambda s: s.start_ms)]
        doc = {"dataset": "energy-household-half-hourly", "household": hid, **tr.public(),
               "time_zone": "Asia/Tokyo", "units": units, "items": items}
        return api.respond(fmt, doc, items, ["household", "district", "start", "end", "kwh"],
                           f"energy-household_{hid}_{iso(tr.start_ms)[:10]}")

    return r
