"""Waste collection from the garbage trucks, under ``/v1/waste`` (docs/api.md conventions, docs/trucks.md "City OS
API").

What the trucks write (docs/trucks.md "Readings"): ``waste_collection``, one point per pickup (``kg`` the load's
increase, ``lat``/``lon`` when the truck had a fix, ``trip_no``; tags ``device`` = the truck, ``district``: an id
of the districts file or ``unknown``), and ``waste_trip``, one point per trip, stamped when it ended at the
disposal site (``kg_collected``, ``kg_unloaded``, ``pickups``, ``distance_km``, ``duration_s``, ``trip_no``).

* **Per district** (``open``): kg and pickups per district per JST day, read from the rollups' database (``[rollup]
  db``: ``waste_district_1d``, which ``cityos rollup`` sums from the pickups and recomputes while late ones may
  land, docs/api.md "Pre-aggregation"), and per JST month (the days summed, one InfluxQL statement per month, all
  in one request). Days and districts without a pickup are left out, never listed as 0. Waste totals of a
  district are not personal: a district holds thousands of households and its collection points are shared.
* **Trips** (``service``): a truck's trips of a JST day (the day the trip ended, i.e. unloaded), with the
  districts its pickups were in: the rollup's ``waste_trip_district_1d`` rows for the days it has rolled up, raw
  pickups after (:func:`fetch_trip_districts`; the same answer either way).
* **Collection points** (``service``): pickups grouped by a cell of 0.001° of latitude and longitude (about
  110 m x 90 m here) and district: the data carries no stop id, and a pickup is at a shared collection point
  (ごみステーション), so a cell is one or more stations, never a household's bin by design. Whole JST days, read
  from the rollups' database (``waste_cell_1d``: the days of each cell summed by InfluxDB), like the districts.

A stored point that cannot be served (``kg`` missing or outside 0 to :data:`MAX_PICKUP_KG`, a coordinate out of
range, no district tag) is skipped and counted (``api.skipped``); InfluxDB failing is 503 (``api.read``).

Paging (``limit``, ``cursor``) is on the lists that grow with the range or the fleet (district days, trips,
collection points); the cursor is the last row's key, so pages never repeat or skip a row. The helpers for it
(:func:`page`, :func:`link_next`) live here; they could move to ``cityos_api/params.py`` for every family.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Response

from cityos.influx import QueryFn, query_results
from cityos.rollups import (
    CELL_DEG,
    DAY_MS,
    MAX_PICKUP_KG,
    MAX_TRIP_KG,
    NO_CELL,
    WASTE_1D,
    WASTE_CELL_1D,
    WASTE_CELLS,
    WASTE_TRIP_1D,
    WASTE_TRIPS,
    TripPart,
    cell_centre,
    cell_from_tag,
    devices_clause,
    job_progress,
    jst_day,
    servable_trip,
    stored_trip_parts,
    target_results,
    trip_part_time,
    trip_parts,
)
from cityos.wire import ID_PATTERN
from cityos_api.auth import OPEN, SERVICE
from cityos_api.core import Api, json_body
from cityos_api.families.truck_models import (
    WasteCollectionPoints,
    WasteDistrictDaily,
    WasteDistrictMonthly,
    WasteTrips,
    WasteTruckTrips,
)
from cityos_api.opendata import JST, parse_day, parse_month
from cityos_api.params import (
    FormatQuery,
    Span,
    TimeRange,
    bad,
    check_id,
    decode_cursor,
    encode_cursor,
    iso,
    literal,
    time_range,
)

__all__ = [
    "CELL_DEG",
    "MAX_PICKUP_KG",
    "Pickup",
    "Trip",
    "TruckHistory",
    "TruckLoad",
    "attach_parts",
    "fetch_cells",
    "fetch_district_days",
    "fetch_district_months",
    "fetch_last_loads",
    "fetch_loads",
    "fetch_pickups",
    "fetch_trip_districts",
    "fetch_trips",
    "fetch_truck_history",
    "link_next",
    "page",
    "router",
]

COLLECTION = "waste_collection"
TRIP = "waste_trip"
UNKNOWN = "unknown"
#: Pickups of a trip are looked for at most this long before the day the trip ended.
TRIP_LOOKBACK = timedelta(days=3)
DAILY = Span(default=timedelta(days=30), longest=timedelta(days=400))
POINTS = Span(default=timedelta(days=7), longest=timedelta(days=31))
LONGEST_MONTHS = 24
UNITS = {"kg": "kg", "kg_unloaded": "kg", "distance_km": "km", "duration_s": "s"}

_ID_RE = re.compile(ID_PATTERN)
_MONTH_RE = re.compile(r"\d{4}-\d{2}")


# ---- pure helpers ----------------------------------------------------------------------------------------------
def whole_days(tr: TimeRange) -> TimeRange:
    """The range widened to whole JST days: a day partly in it counts whole."""
    start = jst_day(tr.start_ms)
    end = jst_day(tr.end_ms)
    if end < tr.end_ms:
        end += DAY_MS  # Japan has no daylight saving time: every day is 24 h
    return TimeRange(start, end)


def _num(v: Any) -> float | None:
    """A finite number, or None."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _kg(v: Any, most: float = MAX_PICKUP_KG) -> float | None:
    x = _num(v)
    return x if x is not None and 0 <= x <= most else None


def page(rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], tuple[Any, ...]],
         after: tuple[Any, ...] | None, limit: int) -> tuple[list[dict[str, Any]], tuple[Any, ...] | None]:
    """Rows sorted by ``key`` after the cursor's key, at most ``limit``; and the key to continue after (None on
    the last page)."""
    ordered = sorted(rows, key=key)
    if after is not None:
        ordered = [r for r in ordered if key(r) > after]
    out = ordered[:limit]
    return out, (key(out[-1]) if len(ordered) > limit else None)


def link_next(path: str, params: Mapping[str, Any], cursor: str) -> dict[str, str]:
    """``Link: <path?...&cursor=...>; rel="next"`` built from validated parameters only (urlencoded)."""
    q = urlencode({**{k: v for k, v in params.items() if v is not None}, "cursor": cursor})
    return {"Link": f'<{path}?{q}>; rel="next"'}


def _series(status: int, raw: bytes) -> list[list[dict[str, Any]]]:
    """Each statement's series."""
    return [r.get("series", []) for r in query_results(status, raw)]


def _rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    cols = s["columns"]
    return [dict(zip(cols, v, strict=True)) for v in s.get("values", [])]


def _district_tag(s: dict[str, Any]) -> str | None:
    d = (s.get("tags") or {}).get("district") or ""
    return d if _ID_RE.fullmatch(d) else None


def _kg_where(tr: TimeRange, district: str | None) -> str:
    where = tr.where()
    if district is not None:
        where += f' AND "district" = {literal(district)}'
    return where


def _district_rows(series: list[dict[str, Any]]) -> tuple[list[tuple[int, str, float, int]], int]:
    """(time, district, kg, pickups) of the rollup's rows with pickups, and the number of unusable rows."""
    out = []
    unusable = 0
    for s in series:
        d = _district_tag(s)
        for row in _rows(s):
            kg, n = _kg(row.get("kg"), math.inf), _num(row.get("pickups"))
            if n is not None and n == 0:
                continue
            if d is None or kg is None or n is None or n < 0:
                unusable += 1
                continue
            out.append((int(row["time"]), d, kg, int(n)))
    return out, unusable


def fetch_district_days(query: QueryFn, db: str, tr: TimeRange, district: str | None
                        ) -> tuple[dict[tuple[int, str], tuple[float, int]], int]:
    """(JST day start ms, district) → (kg, pickups) from the rollups' database ``db`` (``waste_district_1d``,
    written by ``cityos rollup``), and the number of rollup rows that could not be used. ``tr`` is whole JST
    days. The pickups the rollup could not use were counted there. The rollups' database not there for this
    user raises (the API answers 503; logged with the fix)."""
    results = target_results(query, db, f'SELECT "kg", "pickups" FROM "{WASTE_1D}" WHERE '
                                         f'{_kg_where(tr, district)} GROUP BY "district"') or [{}]
    rows, unusable = _district_rows(results[0].get("series", []))
    return {(t, d): (kg, n) for t, d, kg, n in rows}, unusable


def fetch_district_months(query: QueryFn, db: str, months: Sequence[tuple[int, int]], district: str | None
                          ) -> tuple[dict[tuple[tuple[int, int], str], tuple[float, int]], int]:
    """((year, month), district) → (kg, pickups): the rollup's JST days summed per JST month (one statement per
    month, all in one request)."""
    stmts = [f'SELECT sum("kg") AS "kg", sum("pickups") AS "pickups" FROM "{WASTE_1D}" WHERE '
             f'{_kg_where(TimeRange(*_month_bounds(y, m)), district)} AND "kg" >= 0 AND "pickups" >= 0 '
             f'GROUP BY "district"' for y, m in months]
    out: dict[tuple[tuple[int, int], str], tuple[float, int]] = {}
    unusable = 0
    results = target_results(query, db, "; ".join(stmts)) or [{} for _ in months]
    for ym, series in zip(months, (r.get("series", []) for r in results), strict=True):
        rows, bad_rows = _district_rows(series)
        unusable += bad_rows
        out.update({(ym, d): (kg, n) for _, d, kg, n in rows})
    return out, unusable


Cells = dict[tuple[tuple[int, int] | None, str], tuple[float, int]]


def _cell_rows(series: Sequence[dict[str, Any]]) -> tuple[list[tuple[int, tuple[int, int] | None, str, float, int]],
                                                          int]:
    """(time, cell, district, kg, pickups) of ``waste_cell_1d`` series (grouped by cell and district), and the
    number of rows that could not be used (a tag not a cell or not a district)."""
    out = []
    unusable = 0
    for s in series:
        tag = (s.get("tags") or {}).get("cell") or ""
        cell = cell_from_tag(tag)
        d = _district_tag(s)
        for row in _rows(s):
            kg, n = _num(row.get("kg")), _num(row.get("pickups"))
            if not n:
                continue
            if d is None or kg is None or n is None or (cell is None and tag != NO_CELL):
                unusable += 1
                continue
            out.append((int(row["time"]), cell, d, kg, int(n)))
    return out, unusable


def fetch_cells(query: QueryFn, db: str, tr: TimeRange, district: str | None) -> tuple[Cells, int]:
    """(cell, district) → (kg, pickups) over the JST days of ``tr`` (whole days), the rollup's ``waste_cell_1d``
    days summed by InfluxDB (one row per cell and district); the cell None holds the pickups without a position.
    And the number of the rollup's cell series that could not be used (a tag not a cell or not a district)."""
    results = target_results(query, db, f'SELECT sum("kg") AS "kg", sum("pickups") AS "pickups" FROM '
                                        f'"{WASTE_CELL_1D}" WHERE {_kg_where(tr, district)} AND "kg" >= 0 AND '
                                        f'"pickups" >= 0 GROUP BY "cell", "district"') or [{}]
    rows, unusable = _cell_rows(results[0].get("series", []))
    return {(cell, d): (kg, n) for _t, cell, d, kg, n in rows}, unusable


def fetch_cell_days(query: QueryFn, db: str, tr: TimeRange) -> tuple[dict[int, Cells], int]:
    """JST day → :func:`fetch_cells`' answer for that day alone, for every day of ``tr`` (whole days), in one
    statement; and the number of rows that could not be used."""
    results = target_results(query, db, f'SELECT "kg", "pickups" FROM "{WASTE_CELL_1D}" WHERE {_kg_where(tr, None)} '
                                        'AND "kg" >= 0 AND "pickups" >= 0 GROUP BY "cell", "district"') or [{}]
    rows, unusable = _cell_rows(results[0].get("series", []))
    out: dict[int, Cells] = {}
    for t, cell, d, kg, n in rows:
        out.setdefault(t, {})[(cell, d)] = (kg, n)
    return out, unusable


@dataclass(frozen=True)
class RecentCells:
    """The ``waste_cells`` job's progress point and the cells of the days the rollup still recomputes (from that
    point's JST day to the end of today), per JST day, kept by the API for :data:`RECENT_CELLS_TTL_S`
    (:func:`kept_recent_cells`): they change only when a rollup pass rewrites them (every few minutes), and
    summing them per cell at each request was most of a collection-point answer (1,200 cells' series grouped by
    InfluxDB: 15-18 ms of ~20)."""

    progress: int | None  # None: nothing rolled up
    end: int  # the end of the last day held (today's, when read)
    days: dict[int, Cells] | None  # None: the rollup over RECENT_CELLS_MAX_DAYS behind (stopped), nothing held
    unusable: int


#: How long the API keeps the :class:`RecentCells` (as the forest's station list: an answer may miss a rollup
#: pass of the last seconds, never one older).
RECENT_CELLS_TTL_S = 10.0
#: The rollup this far behind (stopped), no days are kept: each request sums its own range (as without a keep).
RECENT_CELLS_MAX_DAYS = 7


def fetch_recent_cells(query: QueryFn, rollup_db: str, now_ms: int) -> RecentCells:
    """:class:`RecentCells` as of ``now_ms``."""
    progress = job_progress(query, rollup_db, WASTE_CELLS)
    end = jst_day(now_ms) + DAY_MS
    if progress is None or end - jst_day(progress) > RECENT_CELLS_MAX_DAYS * DAY_MS:
        return RecentCells(progress, end, None, 0)
    days, unusable = fetch_cell_days(query, rollup_db, TimeRange(jst_day(progress), end))
    return RecentCells(progress, end, days, unusable)


def kept_recent_cells(api: Api) -> RecentCells:
    """This API's :class:`RecentCells`, read at most every :data:`RECENT_CELLS_TTL_S` (:meth:`Api.kept`)."""
    db = api.settings.rollup_db
    return api.kept("waste recent cells",  # type: ignore[no-any-return]
                    lambda: api.read(lambda query, _db: fetch_recent_cells(query, db, int(api.clock() * 1000))),
                    RECENT_CELLS_TTL_S).get()


def kept_cells(api: Api, tr: TimeRange, district: str | None) -> tuple[Cells, int]:
    """:func:`fetch_cells` over ``tr`` (whole JST days): the days the rollup no longer recomputes (before its
    ``waste_cells`` progress point) from the API's :class:`~cityos_api.core.FrozenDays` (read once), the days it
    still recomputes from the :class:`RecentCells` kept 10 s, and only a range reaching past those (the day
    turned since they were read) or a stopped rollup summed by InfluxDB at the request: 31 days of 1,200 cells
    were 30 ms of InfluxDB grouping per cell."""
    db = api.settings.rollup_db
    recent = kept_recent_cells(api)
    progress = recent.progress
    cut = tr.start_ms if progress is None else max(tr.start_ms, min(tr.end_ms, jst_day(progress)))
    cache = api.frozen_days(WASTE_CELL_1D)
    kept = {d: cache.get(d) for d in range(tr.start_ms, cut, DAY_MS)}
    missing = [d for d, cells in kept.items() if cells is None]
    unusable = 0
    if missing:
        loaded, unusable = api.read(lambda query, _db: fetch_cell_days(query, db, TimeRange(missing[0],
                                                                                          missing[-1] + DAY_MS)))
        for d in missing:
            kept[d] = loaded.get(d, {})
            cache.put(d, kept[d])
    days = [cells for cells in kept.values() if cells]
    if cut < tr.end_ms:
        if recent.days is not None and tr.end_ms <= recent.end:
            days += [cells for d, cells in sorted(recent.days.items()) if cut <= d < tr.end_ms and cells]
            unusable += recent.unusable
        else:
            got, bad = api.read(lambda query, _db: fetch_cells(query, db, TimeRange(cut, tr.end_ms), district))
            days.append(got)
            unusable += bad
    if len(days) == 1 and district is None:
        return days[0], unusable
    out: dict[tuple[tuple[int, int] | None, str], list[float]] = {}
    for cells in days:
        for key, (kg, n) in cells.items():
            if district is None or key[1] == district:
                acc = out.get(key)
                if acc is None:
                    out[key] = [kg, n]
                else:
                    acc[0] += kg
                    acc[1] += n
    return {k: (kg, int(n)) for k, (kg, n) in out.items()}, unusable


@dataclass(frozen=True)
class Pickup:
    truck: str
    district: str
    ts_ms: int
    kg: float
    trip_no: int | None
    lat: float | None
    lon: float | None


def fetch_pickups(query: QueryFn, db: str, tr: TimeRange, truck: str | None = None, *, located: bool = False
                  ) -> tuple[list[Pickup], int]:
    """Every servable pickup in ``tr`` (of one truck), and the number skipped (kg missing or out of range, no
    district; with ``located``, also a coordinate out of range or only one of the two: elsewhere such a pickup
    is served without a position)."""
    where = tr.where() + (f' AND "device" = {literal(truck)}' if truck else "")
    (series,) = _series(*query(db, f'SELECT "kg", "lat", "lon", "trip_no" FROM "{COLLECTION}" WHERE {where} '
                                   f'GROUP BY "device", "district"'))
    return _pickups(series, located)


def _pickups(series: Sequence[dict[str, Any]], located: bool) -> tuple[list[Pickup], int]:
    out: list[Pickup] = []
    skipped = 0
    for s in series:
        dev = (s.get("tags") or {}).get("device") or ""
        d = _district_tag(s)
        for row in _rows(s):
            kg = _kg(row.get("kg"))
            lat, lon = _num(row.get("lat")), _num(row.get("lon"))
            no_pos = row.get("lat") is None and row.get("lon") is None
            pos_ok = no_pos or (lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180)
            trip_no = _num(row.get("trip_no"))
            if kg is None or d is None or (located and not pos_ok) or not _ID_RE.fullmatch(dev):
                skipped += 1
                continue
            out.append(Pickup(dev, d, int(row["time"]), kg, None if trip_no is None else int(trip_no),
                              lat if pos_ok and not no_pos else None, lon if pos_ok and not no_pos else None))
    return out, skipped


@dataclass(frozen=True)
class TruckLoad:
    """A pickup's ``load_kg`` (the load after it; None when missing or out of range) and position (None without a
    usable fix)."""

    truck: str
    ts_ms: int
    trip_no: int | None
    load_kg: float | None
    lat: float | None
    lon: float | None


def fetch_loads(query: QueryFn, db: str, tr: TimeRange, truck: str | None = None, *, newest: bool = False
                ) -> tuple[list[TruckLoad], int]:
    """Every pickup's load and position in ``tr`` (of one truck), oldest first, and the number of loads or
    positions that could not be used; with ``newest``, per truck only its newest pickup with a load and its
    newest with a position (the NGSI-LD Vehicle's current state, docs/ngsi-ld.md)."""
    where = tr.where() + (f' AND "device" = {literal(truck)}' if truck else "")
    last = ' ORDER BY time DESC LIMIT 1' if newest else ""
    stmts = [f'SELECT "load_kg", "trip_no" FROM "{COLLECTION}" WHERE {where} GROUP BY "device"{last}',
             f'SELECT "lat", "lon" FROM "{COLLECTION}" WHERE {where} GROUP BY "device"{last}'] if newest else \
        [f'SELECT "load_kg", "trip_no", "lat", "lon" FROM "{COLLECTION}" WHERE {where} GROUP BY "device"']
    out: list[TruckLoad] = []
    skipped = 0
    for series in _series(*query(db, "; ".join(stmts))):
        for s in series:
            dev = (s.get("tags") or {}).get("device") or ""
            if not _ID_RE.fullmatch(dev):
                skipped += len(s.get("values", []))
                continue
            for row in _rows(s):
                load = _kg(row.get("load_kg"), MAX_TRIP_KG)
                lat, lon = _num(row.get("lat")), _num(row.get("lon"))
                pos_ok = lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180
                skipped += (row.get("load_kg") is not None and load is None) + \
                    ((row.get("lat") is not None or row.get("lon") is not None) and not pos_ok)
                trip_no = _num(row.get("trip_no"))
                if load is not None or pos_ok:
                    out.append(TruckLoad(dev, int(row["time"]), None if trip_no is None else int(trip_no), load,
                                         lat if pos_ok else None, lon if pos_ok else None))
    return sorted(out, key=lambda x: (x.ts_ms, x.truck)), skipped


@dataclass
class TruckHistory:
    """What :func:`fetch_truck_history` read: per truck its loads ``(ms, trip_no, load_kg)`` and positions
    ``(ms, lat, lon)``, each oldest first; the trips that ended in the range, and the number of trip points skipped
    (as :func:`fetch_trips`)."""

    loads: dict[str, list[tuple[int, int | None, float]]]
    positions: dict[str, list[tuple[int, float, float]]]
    trips: list[Trip]
    skipped_trips: int


def fetch_truck_history(query: QueryFn, db: str, tr: TimeRange, trucks: Sequence[str], *, loads: bool = True,
                        positions: bool = True, limit: int | None = None, newest: bool = False) -> TruckHistory:
    """The servable loads (``load_kg`` 0 to :data:`MAX_TRIP_KG`) and positions (``lat``/``lon`` in range) of
    ``trucks`` in ``tr``: per truck at most ``limit`` of each, its oldest (or with ``newest`` its newest), as
    :func:`fetch_loads` then a cut per truck would give without reading the rest (``GROUP BY "device" ...
    LIMIT``); and with ``loads`` their trips that ended in ``tr`` (:func:`fetch_trips`). One request: the NGSI-LD
    Vehicle's history (5,000 instances a page: tuples, not :class:`TruckLoad`)."""
    where = f'{tr.where()}{devices_clause(trucks)}'
    tail = f' GROUP BY "device" ORDER BY time {"DESC" if newest else "ASC"}' + \
        ("" if limit is None else f" LIMIT {int(limit)}")
    stmts = []
    if loads:
        stmts += [f'SELECT "load_kg", "trip_no" FROM "{COLLECTION}" WHERE {where} AND "load_kg" >= 0 AND '
                  f'"load_kg" <= {MAX_TRIP_KG:g}{tail}', _trips_statement(where)]
    if positions:
        stmts.append(f'SELECT "lat", "lon" FROM "{COLLECTION}" WHERE {where} AND "lat" >= -90 AND "lat" <= 90 AND '
                     f'"lon" >= -180 AND "lon" <= 180{tail}')
    results = _series(*query(db, "; ".join(stmts))) if stmts else []

    def per_truck(series: list[dict[str, Any]]) -> dict[str, list[list[Any]]]:
        """truck → its rows (time, then the two fields selected: the WHERE bounds them, numbers only), oldest
        first."""
        out: dict[str, list[list[Any]]] = {}
        for s in series:
            dev = (s.get("tags") or {}).get("device") or ""
            if _ID_RE.fullmatch(dev):
                rows = s.get("values") or []
                out.setdefault(dev, []).extend(rows[::-1] if newest else rows)
        return out

    got_loads = {dev: [(int(t), None if (no := _num(n)) is None else int(no), float(kg)) for t, kg, n in rows]
                 for dev, rows in per_truck(results[0]).items()} if loads else {}
    got_positions = {dev: [(int(t), float(lat), float(lon)) for t, lat, lon in rows]
                     for dev, rows in per_truck(results[-1]).items()} if positions else {}
    trips, skipped = _trips(results[1]) if loads else ([], 0)
    return TruckHistory(got_loads, got_positions, trips, skipped)


def fetch_last_loads(query: QueryFn, db: str, trips: Sequence[Trip], from_ms: int
                     ) -> tuple[dict[tuple[str, int, int], float], int]:
    """(truck, trip_no, end) → the load (``load_kg``) of the newest pickup of the trip's truck and number from
    ``from_ms`` up to its end: what it unloaded from (the NGSI-LD Vehicle's cargo after an unload), as reading
    every load of the range and keeping the newest per trip would give, without reading them. Looked for in the
    trip's own span first (one statement per trip, one request), then before it for the few not found there.
    And the number of trips whose truck is not an id (none looked up)."""
    out: dict[tuple[str, int, int], float] = {}
    ok = [t for t in trips if _ID_RE.fullmatch(t.truck)]

    def newest(spans: list[tuple[Trip, int, int]]) -> None:
        stmts = [f'SELECT last("load_kg") FROM "{COLLECTION}" WHERE "device" = {literal(t.truck)} AND "trip_no" = '
                 f'{t.trip_no} AND "load_kg" >= 0 AND "load_kg" <= {MAX_TRIP_KG:g} AND time >= {a}ms AND time <= '
                 f'{b}ms' for t, a, b in spans]
        if not stmts:
            return
        for (t, _, _), series in zip(spans, _series(*query(db, "; ".join(stmts))), strict=True):
            for s in series:
                for row in s.get("values", []):
                    load = _kg(row[1], MAX_TRIP_KG)
                    if load is not None:
                        out[(t.truck, t.trip_no, t.end_ms)] = load
    newest([(t, max(from_ms, t.start_ms), t.end_ms) for t in ok])
    newest([(t, from_ms, t.start_ms - 1) for t in ok if (t.truck, t.trip_no, t.end_ms) not in out
            and from_ms < t.start_ms])
    return out, len(trips) - len(ok)


@dataclass
class Trip:
    truck: str
    trip_no: int
    start_ms: int
    end_ms: int
    kg: float
    kg_unloaded: float | None
    pickups: int
    pickups_unknown_district: int
    distance_km: float | None
    duration_s: float
    #: district → [kg, pickups] of the pickups found for this trip
    districts: dict[str, list[float]] = field(default_factory=dict)
    first_pickup_ms: int | None = None
    last_pickup_ms: int | None = None


def _trips_statement(where: str) -> str:
    return (f'SELECT "trip_no", "kg_collected", "kg_unloaded", "pickups", "pickups_unknown_district", '
            f'"distance_km", "duration_s" FROM "{TRIP}" WHERE {where} GROUP BY "device"')


def fetch_trips(query: QueryFn, db: str, tr: TimeRange, truck: str | None = None) -> tuple[list[Trip], int]:
    """The trips that ended in ``tr`` (of one truck), and the number of trip points skipped (kg_collected,
    pickups or duration_s missing or out of range)."""
    where = tr.where() + (f' AND "device" = {literal(truck)}' if truck else "")
    (series,) = _series(*query(db, _trips_statement(where)))
    return _trips(series)


def _trips(series: Sequence[dict[str, Any]]) -> tuple[list[Trip], int]:
    """The servable trips of :func:`_trips_statement`'s series, and the number skipped."""
    out: list[Trip] = []
    skipped = 0
    for s in series:
        dev = (s.get("tags") or {}).get("device") or ""
        for row in _rows(s):
            if not servable_trip(row) or not _ID_RE.fullmatch(dev):
                skipped += 1
                continue
            kg, n, dur, no = (float(row[k]) for k in ("kg_collected", "pickups", "duration_s", "trip_no"))
            end = int(row["time"])
            unloaded = _kg(row.get("kg_unloaded"), MAX_TRIP_KG)
            dist = _num(row.get("distance_km"))
            unknown = _num(row.get("pickups_unknown_district"))
            out.append(Trip(dev, int(no), end - round(dur * 1000), end, kg, unloaded, int(n),
                            int(unknown) if unknown is not None and unknown >= 0 else 0,
                            dist if dist is not None and dist >= 0 else None, dur))
    return out, skipped


def _trip_days(trips: Sequence[Trip], lookback_from_ms: int) -> dict[str, tuple[int, int]]:
    """Per truck, the whole JST days its trips' spans touch (from its first trip's start, not before
    ``lookback_from_ms``, a day's start, to its last trip's end): whole days, so the pickups read raw group into
    the same parts as the rollup's rows of those days."""
    days: dict[str, tuple[int, int]] = {}
    for t in trips:
        a, b = days.get(t.truck, (jst_day(t.start_ms), jst_day(t.end_ms) + DAY_MS))
        days[t.truck] = (min(a, jst_day(t.start_ms)), max(b, jst_day(t.end_ms) + DAY_MS))
    return {dev: (max(a, lookback_from_ms), b) for dev, (a, b) in days.items()}


def _raw_parts(query: QueryFn, db: str, spans: Mapping[str, tuple[int, int]], *, single: bool = False
               ) -> tuple[list[TripPart], int]:
    """:func:`~cityos.rollups.trip_parts` of each truck's pickups in its ``[start, end)`` (``kg`` and ``trip_no``
    only; one statement per truck, in one request)."""
    stmts = [f'SELECT "kg", "trip_no" FROM "{COLLECTION}" WHERE time >= {a}ms AND time < {b}ms AND "device" = '
             f'{literal(dev)} GROUP BY "device", "district"' for dev, (a, b) in sorted(spans.items()) if a < b]
    if not stmts:
        return [], 0
    return trip_parts([s for series in _series(*query(db, "; ".join(stmts))) for s in series], single=single)


def fetch_trip_districts(query: QueryFn, db: str, rollup_db: str, trips: Sequence[Trip], lookback_from_ms: int
                         ) -> tuple[int, int]:
    """Each trip's districts and first and last pickup, from the pickups of its truck and ``trip_no`` within its
    span (:func:`attach_parts`), looked for per truck over :func:`_trip_days`. The days before the rollup's
    progress point (job ``waste_trips``) come from its ``waste_trip_district_1d`` rows, the rest (today) from the
    raw pickups, grouped the same way (:func:`~cityos.rollups.trip_parts`): the answer does not depend on where
    the rollup stands. Without the rollups' database (or before its first pass) every day is read raw: slower,
    the same answer (a trip is an operations view; it was served before the rollup existed). The trucks with a
    part only partly in a span, a rollup row that cannot be used, or a trip number that cannot be a row's are
    read raw and attached pickup by pickup. Returns (pickups skipped in the raw part, rollup rows unusable)."""
    days = _trip_days(trips, lookback_from_ms)
    if not days:
        return 0, 0
    progress = job_progress(query, rollup_db, WASTE_TRIPS)
    cut = {dev: a if progress is None else min(max(a, progress), b) for dev, (a, b) in days.items()}
    stored: list[TripPart] = []
    broken: list[str] = []
    other_pass: set[str] = set()
    stmts = [f'SELECT "trip_no", "kg", "pickups", "first_ms", "last_ms", "until_ms" FROM "{WASTE_TRIP_1D}" WHERE '
             f'time >= {a}ms AND time < {cut[dev]}ms AND "device" = {literal(dev)} GROUP BY "device", "district"'
             for dev, (a, _) in sorted(days.items()) if a < cut[dev]]
    if stmts:
        stored, broken, other_pass = stored_trip_parts((s for r in target_results(query, rollup_db, "; ".join(stmts))
                                                        for s in r.get("series", [])), progress)
    parts, skipped = _raw_parts(query, db, {dev: (cut[dev], b) for dev, (_, b) in days.items()})
    unsure = set(broken) | other_pass | {t.truck for t in trips if trip_part_time(0, t.trip_no) is None}
    unsure |= attach_parts(trips, [p for p in [*stored, *parts] if p.device not in unsure])
    if unsure:
        singles, _ = _raw_parts(query, db, {dev: days[dev] for dev in unsure if dev in days}, single=True)
        attach_parts(trips, singles)
    return skipped, len(broken)


def _place(candidates: Sequence[Trip], p: TripPart) -> tuple[Trip | None, bool]:
    """(The trip holding every pickup of ``p``, or None: none holds any; True) or (None, False): some are in a
    trip's span and some not. A pickup goes to the first trip of its truck and number whose span holds it."""
    for t in candidates:
        if p.last_ms < t.start_ms or p.first_ms > t.end_ms:
            continue
        if t.start_ms <= p.first_ms and p.last_ms <= t.end_ms:
            return t, True
        return None, False
    return None, True


def attach_parts(trips: Sequence[Trip], parts: Sequence[TripPart]) -> set[str]:
    """Each part to the trip of its truck and trip number whose span holds its pickups: the trips' districts (kg
    summed exactly, pickups) and first and last pickup. A truck with a part only partly in a span gets none of
    its parts attached: returned, for its pickups to be attached one by one (single parts)."""
    by_key: dict[tuple[str, int], list[Trip]] = defaultdict(list)
    for t in trips:
        by_key[(t.truck, t.trip_no)].append(t)
    placed: list[tuple[Trip, TripPart]] = []
    unsure: set[str] = set()
    for p in parts:
        trip, sure = _place(by_key.get((p.device, p.trip_no), ()), p)
        if not sure:
            unsure.add(p.device)
        elif trip is not None:
            placed.append((trip, p))
    per_trip: dict[int, tuple[Trip, list[TripPart]]] = {}
    for trip, p in placed:
        if trip.truck not in unsure:
            per_trip.setdefault(id(trip), (trip, []))[1].append(p)
    for trip, ps in per_trip.values():
        by_district: dict[str, list[TripPart]] = defaultdict(list)
        for p in ps:
            by_district[p.district].append(p)
        trip.districts = {d: [math.fsum(p.kg for p in xs), sum(p.pickups for p in xs)]
                          for d, xs in sorted(by_district.items())}
        trip.first_pickup_ms = min(p.first_ms for p in ps)
        trip.last_pickup_ms = max(p.last_ms for p in ps)
    return unsure


def _month_bounds(y: int, m: int) -> tuple[int, int]:
    nxt = _next_month((y, m))
    return (int(datetime(y, m, 1, tzinfo=JST).timestamp() * 1000),
            int(datetime(*nxt, 1, tzinfo=JST).timestamp() * 1000))


def _parse_month(param: str, raw: str) -> tuple[int, int]:
    try:
        if not _MONTH_RE.fullmatch(raw):
            raise ValueError
        return parse_month(raw)
    except ValueError:
        raise bad(param, "YYYY-MM, a calendar month in Japan time (JST), years 2000 to 2099", raw) from None


def _next_month(ym: tuple[int, int]) -> tuple[int, int]:
    y, m = ym
    return (y + 1, 1) if m == 12 else (y, m + 1)


def _months(frm: tuple[int, int], to: tuple[int, int]) -> list[tuple[int, int]]:
    out = []
    ym = frm
    while ym < to:
        out.append(ym)
        ym = _next_month(ym)
    return out


def _r3(x: float) -> float:
    return round(x, 3)


# ---- routes ----------------------------------------------------------------------------------------------------
def router(api: Api) -> APIRouter:
    r = APIRouter(tags=["waste"])

    def named(district: str) -> dict[str, str]:
        if district == UNKNOWN and UNKNOWN not in api.places.districts:
            return {"district": UNKNOWN, "district_name_ja": "不明（位置なし・地区外）",
                    "district_name_en": "unknown (no position or outside every district)"}
        return api.places.named(district)

    def now_ms() -> int:
        return int(api.clock() * 1000)

    def district_filter(district: str | None) -> str | None:
        return None if district is None else check_id("district", district, "a district id (as in `district`)")

    def paged(fmt: str, doc: dict[str, Any], rows: list[dict[str, Any]], nxt: tuple[Any, ...] | None,
              names: Sequence[str], path: str, params: Mapping[str, Any], columns: Sequence[str], filename: str
              ) -> Response:
        headers: dict[str, str] = {}
        doc["next_cursor"] = None  # as every paged list: null on the last page
        if nxt is not None:
            cur = encode_cursor(dict(zip(names, nxt, strict=True)))
            doc["next_cursor"] = cur
            headers = link_next(path, params, cur)
        return api.respond(fmt, doc, rows, columns, filename, headers)

    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/json": {}, "text/csv": {}}},
        422: {"description": "a parameter is not valid (the message says which and why)"},
        503: {"description": "InfluxDB unavailable"},
    }
    district_columns = ["district", "district_name_ja", "district_name_en", "kg", "pickups"]
    omitted = "days (months) and districts without a pickup are not listed: a missing row is 0 kg"

    @api.route(r, "/v1/waste/districts/daily", scope=OPEN, response_class=Response,
               responses={**responses, **json_body(WasteDistrictDaily)})
    def districts_daily(
        frm: Annotated[str | None, Query(alias="from", description="first day: a JST date, or a time in it "
                                         "(default: 30 days before `to`)")] = None,
        to: Annotated[str | None, Query(description="end, exclusive: a JST date, or a time (a day partly before "
                                        "it counts whole; default: now); at most 400 days after `from`")] = None,
        district: Annotated[str | None, Query(description="only this district (its id)")] = None,
        limit: Annotated[int, Query(ge=1, le=5000, description="rows per page")] = 1000,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """Waste collected per district per JST day (kg, weighed by the trucks' load cells) and the number of
        pickups; days and districts without a pickup are not listed. Sorted by date, then district."""
        d = district_filter(district)
        tr = whole_days(time_range(frm, to, DAILY, now_ms()))
        after = decode_cursor(cursor, {"date": str, "district": str})
        q = tr
        if after is not None:
            try:
                day = date.fromisoformat(after["date"])
            except ValueError:
                raise bad("cursor", "the next_cursor of a previous page, unchanged", cursor) from None
            q = TimeRange(max(tr.start_ms, int(datetime(day.year, day.month, day.day, tzinfo=JST).timestamp()
                                                * 1000)), tr.end_ms)
        found: dict[tuple[int, str], tuple[float, int]] = {}
        if q.start_ms < q.end_ms:
            found, skipped = api.read(lambda query, _db: fetch_district_days(query, api.settings.rollup_db, q, d))
            api.skipped(WASTE_1D, skipped)
        rows = [{"date": iso(day_ms)[:10], **named(dist), "kg": _r3(kg), "pickups": n}
                for (day_ms, dist), (kg, n) in found.items()]
        items, nxt = page(rows, lambda x: (x["date"], x["district"]),
                          None if after is None else (after["date"], after["district"]), limit)
        doc = {"dataset": "waste-district-daily", "title": "地区別 日別のごみ収集量 / waste collected per district "
               "and day", **tr.public(), "time_zone": "Asia/Tokyo", "units": {"kg": "kg"}, "note": omitted,
               "items": items}
        name = f"waste-district-daily_{iso(tr.start_ms)[:10]}" + (f"_{d}" if d else "")
        return paged(fmt, doc, items, nxt, ("date", "district"), "/v1/waste/districts/daily",
                     {"from": iso(tr.start_ms)[:10], "to": iso(tr.end_ms)[:10], "district": d, "limit": limit,
                      "format": fmt if fmt != "json" else None}, ["date", *district_columns], name)

    @api.route(r, "/v1/waste/districts/monthly", scope=OPEN, response_class=Response,
               responses={**responses, **json_body(WasteDistrictMonthly)})
    def districts_monthly(
        month: Annotated[str | None, Query(description="one JST calendar month, YYYY-MM")] = None,
        frm: Annotated[str | None, Query(alias="from", description="first month, YYYY-MM (instead of `month`)")]
        = None,
        to: Annotated[str | None, Query(description="end month, exclusive, YYYY-MM (default: the month after "
                                        "`from`); at most 24 months")] = None,
        district: Annotated[str | None, Query(description="only this district (its id)")] = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """Waste collected per district per JST calendar month (kg) and the number of pickups; months and
        districts without a pickup are not listed. Without `month` or `from`: the current month (so far)."""
        d = district_filter(district)
        if month is not None and (frm is not None or to is not None):
            raise bad("month", "either `month` or `from`/`to`, not both", month)
        if month is not None:
            first = _parse_month("month", month)
            months = [first]
        else:
            if frm is None and to is not None:
                raise bad("from", "YYYY-MM with `to`", None)
            if frm is None:
                t = datetime.fromtimestamp(now_ms() / 1000, JST)
                first = (t.year, t.month)
            else:
                first = _parse_month("from", frm)
            end = _parse_month("to", to) if to is not None else _next_month(first)
            if end <= first:
                raise bad("to", "a month after `from`", to)
            months = _months(first, end)
            if len(months) > LONGEST_MONTHS:
                raise bad("to", f"at most {LONGEST_MONTHS} months after `from`", to)
        found, skipped = api.read(lambda query, _db: fetch_district_months(query, api.settings.rollup_db, months,
                                                                            d))
        api.skipped(WASTE_1D, skipped)
        items = sorted(({"month": f"{y:04d}-{m:02d}", **named(dist), "kg": _r3(kg), "pickups": n}
                        for ((y, m), dist), (kg, n) in found.items()), key=lambda x: (x["month"], x["district"]))
        start, _ = _month_bounds(*months[0])
        _, stop = _month_bounds(*months[-1])
        label = f"{months[0][0]:04d}-{months[0][1]:02d}"
        doc = {"dataset": "waste-district-monthly", "title": "地区別 月別のごみ収集量 / waste collected per district "
               "and month", "from": iso(start), "to": iso(stop), "time_zone": "Asia/Tokyo", "units": {"kg": "kg"},
               "note": omitted, "items": items}
        name = f"waste-district-monthly_{label}" + (f"_{len(months)}m" if len(months) > 1 else "") + \
            (f"_{d}" if d else "")
        return api.respond(fmt, doc, items, ["month", *district_columns], name)

    trip_columns = ["truck", "trip_no", "start", "end", "first_pickup", "last_pickup", "kg", "kg_unloaded",
                    "pickups", "pickups_unknown_district", "distance_km", "duration_s", "districts"]

    def trips_of(day_raw: str | None, truck: str | None) -> tuple[date, TimeRange, list[Trip]]:
        if day_raw is None:
            day = datetime.fromtimestamp(now_ms() / 1000, JST).date()
        else:
            try:
                day = parse_day(day_raw)
            except ValueError:
                raise bad("date", "YYYY-MM-DD, a calendar day in Japan time (JST)", day_raw) from None
        start = int(datetime(day.year, day.month, day.day, tzinfo=JST).timestamp() * 1000)
        tr = whole_days(TimeRange(start, start + 1))
        trips, skipped = api.read(fetch_trips, tr, truck)
        api.skipped(TRIP, skipped)
        if trips:
            lo = tr.start_ms - int(TRIP_LOOKBACK.total_seconds() * 1000)
            bad_pickups, bad_rows = api.read(lambda q, db: fetch_trip_districts(q, db, api.settings.rollup_db,
                                                                                 trips, lo))
            api.skipped(COLLECTION, bad_pickups)
            api.skipped(WASTE_TRIP_1D, bad_rows)
        return day, tr, trips

    def trip_row(t: Trip) -> dict[str, Any]:
        return {"truck": t.truck, "trip_no": t.trip_no, "start": iso(t.start_ms), "end": iso(t.end_ms),
                "first_pickup": None if t.first_pickup_ms is None else iso(t.first_pickup_ms),
                "last_pickup": None if t.last_pickup_ms is None else iso(t.last_pickup_ms),
                "kg": _r3(t.kg), "kg_unloaded": None if t.kg_unloaded is None else _r3(t.kg_unloaded),
                "pickups": t.pickups, "pickups_unknown_district": t.pickups_unknown_district,
                "distance_km": t.distance_km, "duration_s": t.duration_s,
                "districts": [{**named(dist), "kg": _r3(kg), "pickups": int(n)}
                              for dist, (kg, n) in sorted(t.districts.items())]}

    def trips_doc(day: date, tr: TimeRange, items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"dataset": "waste-trips", "title": "収集車の収集便 / garbage truck trips", "date": day.isoformat(),
                **tr.public(), **extra, "time_zone": "Asia/Tokyo", "units": UNITS,
                "note": "a trip is listed on the JST day it ended (unloaded at the disposal site); `start` is "
                        "the end of the truck's previous trip, `first_pickup` its first load", "items": items}

    def csv_trips(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**t, "districts": " ".join(x["district"] for x in t["districts"])} for t in items]

    @api.route(r, "/v1/waste/trucks/{truck_id}/trips", scope=SERVICE, response_class=Response,
               responses={**responses, **json_body(WasteTruckTrips)})
    def truck_trips(
        truck_id: str,
        day_raw: Annotated[str | None, Query(alias="date", description="JST calendar day, YYYY-MM-DD (default: "
                                             "today)")] = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """One truck's trips that ended (unloaded) on a JST day: start, end, kg collected (net: the sum of the
        load's increases), kg unloaded, pickups, distance, and the districts its pickups were in."""
        truck = check_id("truck_id", truck_id, "a truck id as in the data (truck-...)")
        day, tr, trips = trips_of(day_raw, truck)
        items = [trip_row(t) for t in sorted(trips, key=lambda t: t.end_ms)]
        doc = trips_doc(day, tr, items, truck=truck)
        return api.respond(fmt, doc, csv_trips(items), trip_columns, f"waste-trips_{truck}_{day.isoformat()}")

    @api.route(r, "/v1/waste/trips", scope=SERVICE, response_class=Response,
               responses={**responses, **json_body(WasteTrips)})
    def all_trips(
        day_raw: Annotated[str | None, Query(alias="date", description="JST calendar day, YYYY-MM-DD (default: "
                                             "today)")] = None,
        limit: Annotated[int, Query(ge=1, le=2000, description="rows per page")] = 500,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """Every truck's trips that ended on a JST day (as `/v1/waste/trucks/{truck_id}/trips`), sorted by truck,
        then end."""
        after = decode_cursor(cursor, {"truck": str, "end_ms": int})
        day, tr, trips = trips_of(day_raw, None)
        rows = [{**trip_row(t), "_key": (t.truck, t.end_ms)} for t in trips]
        items, nxt = page(rows, lambda x: x["_key"], None if after is None else (after["truck"], after["end_ms"]),
                          limit)
        items = [{k: v for k, v in x.items() if k != "_key"} for x in items]
        doc = trips_doc(day, tr, items)
        return paged(fmt, doc, csv_trips(items), nxt, ("truck", "end_ms"), "/v1/waste/trips",
                     {"date": day.isoformat(), "limit": limit, "format": fmt if fmt != "json" else None},
                     trip_columns, f"waste-trips_{day.isoformat()}")

    @api.route(r, "/v1/waste/collection-points", scope=SERVICE, response_class=Response,
               responses={**responses, **json_body(WasteCollectionPoints)})
    def collection_points(
        frm: Annotated[str | None, Query(alias="from", description="start (ISO 8601 with offset, or a JST date; "
                                         "default: 7 days before `to`)")] = None,
        to: Annotated[str | None, Query(description="end, exclusive (default: now); at most 31 days after "
                                        "`from`")] = None,
        district: Annotated[str | None, Query(description="only this district (its id)")] = None,
        limit: Annotated[int, Query(ge=1, le=5000, description="rows per page")] = 1000,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """Pickups per collection-point cell (0.001° x 0.001°, ~110 m x ~90 m) and district over whole JST days:
        count and kg. A pickup is at a shared collection point (ごみステーション), so a cell is one or more
        stations, never a household. Pickups without a position are counted in `pickups_without_position`."""
        d = district_filter(district)
        tr = whole_days(time_range(frm, to, POINTS, now_ms()))
        after = decode_cursor(cursor, {"lat_cell": int, "lon_cell": int, "district": str})
        cells, unusable = kept_cells(api, tr, d)
        api.skipped(WASTE_CELL_1D, unusable)
        without = sum(n for (cell, _), (_, n) in cells.items() if cell is None)
        rows = [{"lat": lat, "lon": lon, "cell_deg": CELL_DEG, **named(dist), "pickups": n, "kg": _r3(kg),
                 "_key": (*cell, dist)}
                for (cell, dist), (kg, n) in cells.items() if cell is not None
                for lat, lon in (cell_centre(cell),)]
        items, nxt = page(rows, lambda x: x["_key"], None if after is None else
                          (after["lat_cell"], after["lon_cell"], after["district"]), limit)
        items = [{k: v for k, v in x.items() if k != "_key"} for x in items]
        doc = {"dataset": "waste-collection-points", "title": "収集地点別のごみ収集量 / waste per collection "
               "point", **tr.public(), "time_zone": "Asia/Tokyo", "units": {"kg": "kg", "lat": "deg", "lon": "deg"},
               "cell": {"deg": CELL_DEG, "about_m": [111, 91], "note": (
                   "pickups are grouped by the cell of their position (lat and lon rounded to 0.001°, the cell's "
                   "centre is given) and district; collection points (ごみステーション) are shared by households, "
                   "a cell holds one or more")},
               "pickups_without_position": without, "items": items}
        return paged(fmt, doc, items, nxt, ("lat_cell", "lon_cell", "district"), "/v1/waste/collection-points",
                     {"from": iso(tr.start_ms), "to": iso(tr.end_ms), "district": d, "limit": limit,
                      "format": fmt if fmt != "json" else None},
                     ["lat", "lon", "cell_deg", *district_columns[:3], "pickups", "kg"],
                     f"waste-collection-points_{iso(tr.start_ms)[:10]}")

    return r
