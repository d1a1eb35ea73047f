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
* **A period is served once settled** (``[open_data] energy_settle_h`` after it ends): the meters' backfill of
  missed half hours lands within it, so an answer does not grow later by one household, which a reader could
  subtract. Backfill after that is possible (a gateway offline for days): docs/privacy.md says what is left.
* **Per household** (``internal:energy-households``, the energy division alone): one household's half hours.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response

from cityos.influx import query_results
from cityos_api.auth import HOUSEHOLDS, OPEN
from cityos_api.core import Api
from cityos_api.gtfs_rt import QueryFn
from cityos_api.params import Span, TimeRange, bad, check_id, iso, literal, time_range

__all__ = ["SLOT_MS", "Slot", "district_days", "district_slots", "fetch_slots", "router"]

SLOT_MS = 30 * 60_000
DAY_MS = 86_400_000
JST_OFFSET_MS = 9 * 3_600_000
MEASUREMENT = "energy"
Format = Literal["json", "csv"]
HALF_HOURLY = Span(default=timedelta(days=1), longest=timedelta(days=31))
DAILY = Span(default=timedelta(days=7), longest=timedelta(days=400))


@dataclass(frozen=True)
class Slot:
    """One household's kWh in the half hour starting at ``start_ms``."""

    device: str
    district: str
    start_ms: int
    kwh: float


def _slots_query(r: TimeRange, device: str | None = None) -> str:
    """Per household: the difference of consecutive fixed-time values and the minutes between them. The values
    are stamped at the end of each half hour; one value before the range gives its first half hour."""
    # a minute of slack each side: a meter's value may carry milliseconds past its :00/:30
    where = f"time >= {r.start_ms - 60_000}ms AND time < {r.end_ms + 60_000}ms"
    if device:
        where += f' AND "device" = {literal(device)}'
    return (f'SELECT non_negative_difference("energy_fixed_kwh") AS "kwh", elapsed("energy_fixed_kwh", 1m) AS '
            f'"gap" FROM "{MEASUREMENT}" WHERE {where} GROUP BY "device", "district"')


def fetch_slots(query: QueryFn, db: str, r: TimeRange, device: str | None = None) -> tuple[list[Slot], int]:
    """Every household half hour starting in ``r`` (complete: both ends present, 30 minutes apart), and the
    number of stored values that could not be used (not a finite non-negative number)."""
    status, raw = query(db, _slots_query(r, device))
    out: list[Slot] = []
    bad_points = 0
    for result in query_results(status, raw):
        for s in result.get("series", []):
            tags = s.get("tags") or {}
            cols = s["columns"]
            for row in s.get("values", []):
                rec = dict(zip(cols, row, strict=True))
                kwh, gap = rec.get("kwh"), rec.get("gap")
                if gap != 30:
                    continue
                if not isinstance(kwh, int | float) or isinstance(kwh, bool) or not 0 <= kwh < 1e6:
                    bad_points += 1
                    continue
                # stamped at the end of the half hour (a meter may add milliseconds): the slot before it
                end = int(rec["time"]) - int(rec["time"]) % SLOT_MS
                start = end - SLOT_MS
                if r.start_ms <= start < r.end_ms:
                    out.append(Slot(tags.get("device", ""), tags.get("district", ""), start, float(kwh)))
    return out, bad_points


def district_slots(slots: Iterable[Slot], k: int) -> dict[tuple[str, int], dict[str, Any]]:
    """(district, slot start) → kwh (summed, rounded to Wh), households, suppressed (fewer than ``k``). Households
    without a district are in no district."""
    acc: dict[tuple[str, int], list[float]] = defaultdict(list)
    for s in slots:
        if s.district:
            acc[(s.district, s.start_ms)].append(s.kwh)
    out = {}
    for key, vals in sorted(acc.items()):
        hidden = len(vals) < k
        out[key] = {"kwh": None if hidden else round(sum(vals), 3), "households": None if hidden else len(vals),
                    "kwh_suppressed": hidden}
    return out


def _jst_day(ms: int) -> int:
    return (ms + JST_OFFSET_MS) // DAY_MS * DAY_MS - JST_OFFSET_MS


def district_days(slots: Iterable[Slot], k: int) -> dict[tuple[str, int], dict[str, Any]]:
    """(district, JST day start) → kwh, households (with a value that day), suppressed: a day is published only
    when all of its 48 half hours are, each with at least ``k`` households (the complementary rule above)."""
    slots = list(slots)
    cells = district_slots(slots, k)
    per_day: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for (district, start), cell in cells.items():
        per_day[(district, _jst_day(start))].append((start, cell))
    households: dict[tuple[str, int], set[str]] = defaultdict(set)
    for s in slots:
        if s.district:
            households[(s.district, _jst_day(s.start_ms))].add(s.device)
    out = {}
    for key, day_cells in sorted(per_day.items()):
        complete = len(day_cells) == DAY_MS // SLOT_MS and not any(c["kwh_suppressed"] for _, c in day_cells)
        out[key] = {"kwh": round(sum(c["kwh"] for _, c in day_cells), 3) if complete else None,
                    "households": len(households[key]) if complete else None,
                    "kwh_suppressed": not complete}
    return out


def router(api: Api) -> APIRouter:
    r = APIRouter(tags=["energy"])
    od = api.settings.open_data
    k = od.min_households
    settle_ms = int(od.energy_settle_h * 3_600_000)
    units = {"kwh": "kWh"}

    def settled(tr: TimeRange, step_ms: int) -> TimeRange:
        """The range cut to whole periods (half hours, or JST days) that ended ``energy_settle_h`` ago or more."""
        align = _jst_day if step_ms == DAY_MS else (lambda ms: ms - ms % step_ms)
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
        200: {"content": {"application/json": {}, "text/csv": {}}},
        422: {"description": "a parameter is not valid (the message says which and why)"},
        503: {"description": "InfluxDB unavailable"},
    }

    def slots(tr: TimeRange, device: str | None = None) -> list[Slot]:
        found, bad_points = api.read(fetch_slots, tr, device)
        api.skipped(MEASUREMENT, bad_points)
        return found

    @api.route(r, "/v1/energy/districts/half-hourly", scope=OPEN, response_class=Response,
               responses=read_responses)
    def districts_half_hourly(
        frm: Annotated[str | None, Query(alias="from", description="start (ISO 8601 with offset, or a JST date)")]
        = None,
        to: Annotated[str | None, Query(description="end, exclusive (default: now)")] = None,
        district: Annotated[str | None, Query(description="only this district (its id)")] = None,
        fmt: Annotated[Format, Query(alias="format")] = "json",
    ) -> Response:
        """Electricity used per district per half hour (kWh, from the households' smart meters), where at least k
        households report; at most 31 days."""
        d = district_filter(district)
        tr = settled(time_range(frm, to, HALF_HOURLY, int(api.clock() * 1000)), SLOT_MS)
        items = [{**api.places.named(dist), "start": iso(start), "end": iso(start + SLOT_MS), **cell}
                 for (dist, start), cell in district_slots(slots(tr), k).items() if d is None or dist == d]
        doc = envelope("energy-district-half-hourly", "地区別 30分ごとの電力使用量 / electricity per district and half "
                       "hour", tr, items)
        return api.respond(fmt, doc, items, ["district", "district_name_ja", "district_name_en", "start", "end",
                                             "kwh", "households", "kwh_suppressed"],
                           f"energy-district-half-hourly_{iso(tr.start_ms)[:10]}")

    @api.route(r, "/v1/energy/districts/daily", scope=OPEN, response_class=Response, responses=read_responses)
    def districts_daily(
        frm: Annotated[str | None, Query(alias="from", description="first day (a JST date, or a time in it)")]
        = None,
        to: Annotated[str | None, Query(description="end, exclusive (default: now)")] = None,
        district: Annotated[str | None, Query(description="only this district (its id)")] = None,
        fmt: Annotated[Format, Query(alias="format")] = "json",
    ) -> Response:
        """Electricity used per district per JST day (kWh), only for days whose every half hour has at least k
        households; at most 400 days."""
        d = district_filter(district)
        tr = settled(time_range(frm, to, DAILY, int(api.clock() * 1000)), DAY_MS)
        items = [{**api.places.named(dist), "date": iso(day)[:10], **cell}
                 for (dist, day), cell in district_days(slots(tr), k).items() if d is None or dist == d]
        doc = envelope("energy-district-daily", "地区別 日別の電力使用量 / electricity per district and day", tr, items)
        return api.respond(fmt, doc, items, ["district", "district_name_ja", "district_name_en", "date", "kwh",
                                             "households", "kwh_suppressed"],
                           f"energy-district-daily_{iso(tr.start_ms)[:10]}")

    @api.route(r, "/v1/energy/households/{household_id}/half-hourly", scope=HOUSEHOLDS, response_class=Response,
               responses={**read_responses, 404: {"description": "no such household in the range"}})
    def household_half_hourly(
        household_id: str,
        frm: Annotated[str | None, Query(alias="from")] = None,
        to: Annotated[str | None, Query()] = None,
        fmt: Annotated[Format, Query(alias="format")] = "json",
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
