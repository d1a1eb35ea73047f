"""The forest stations' routes, under ``/v1/forest`` (docs/forest.md "City OS API"): every station with its
newest reading and its landslide alert level, one station's history (raw or aggregated), and the alert
episodes. Forest data is public-safety information: every route is ``open``.

The alert level is the kernel's (:mod:`cityos.landslide`), the same numbers and criteria as the Grafana alert
rules:

* **Current level** of a station: the highest level among its *live* readings (``backfill = false``) of the
  last :data:`~cityos.landslide.FOREST_ALERT_WINDOW_MIN` minutes, with every criterion met in them, as the rules
  count them. A station with no live reading in that window is **stale**: its level is ``unknown`` (the rules
  cannot see it either; a station catching up after an outage sends its readings as backfill).
* **Episodes** (``/alerts``): a station's readings at ``caution`` or ``warning``, live or backfilled (history),
  joined while less than the window apart (as a rule stays firing while such a reading is in its window, whatever
  readings lie between); ``end`` is the last one's time plus the window (when the rule resolves), null while that
  is still ahead (ongoing).

A stored point that cannot be served (a field of the wrong type, a coordinate out of range, lat without lon) is
skipped and counted (``cityos_api_points_skipped_total{measurement="forest"}``), never a 500. Aggregates are
taken only over fields InfluxDB stores as floats (``SHOW FIELD KEYS``: ``mean()`` of a string field would fail
the query); points whose field has another type are counted as skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from cityos.influx import QueryFn, query_results
from cityos.landslide import (
    ASSESSED_FIELDS,
    CRITERIA,
    FOREST_ALERT_WINDOW_MIN,
    AlertSpan,
    Assessment,
    alert_spans,
    assess,
    highest,
    influxql_at_caution,
    join_spans,
)
from cityos.rollups import (
    FOREST_ALERT_DAYS,
    FOREST_ROLLED,
    FOREST_STEP_MS,
    bucket_start,
    forest_progress,
    forest_raw,
    forest_regroup,
    forest_stored,
    job_progress,
    numeric_fields,
    stored_alert_spans,
)
from cityos_api.auth import OPEN
from cityos_api.core import Api, json_body
from cityos_api.families.forest_models import ForestAlerts, ForestReadings, ForestStationBody, ForestStations
from cityos_api.params import (
    FormatQuery,
    Span,
    bad,
    check_id,
    decode_cursor,
    encode_cursor,
    iso,
    literal,
    time_range,
)

__all__ = ["AGGREGATES", "FIELDS", "INTERVALS", "UNITS", "clean_point", "episode", "episodes", "router"]

MEASUREMENT = "forest"
MINUTE_MS = 60_000
WINDOW_MS = FOREST_ALERT_WINDOW_MIN * MINUTE_MS
Interval = Literal["raw", "10m", "1h", "1d"]

#: Every field of a forest reading the API serves (docs/forest.md, the register map), in the order served.
FIELDS = (
    "soil_moisture_pct", "soil_moisture_deep_pct", "rain_mm", "rain_tips", "rain_intensity_mm_h",
    "rain_cumulative_mm", "tilt_x_deg", "tilt_y_deg", "tilt_rate_x_deg_h", "tilt_rate_y_deg_h", "water_level_m",
    "battery_v", "status", "lat", "lon",
)
UNITS = {
    "soil_moisture_pct": "%", "soil_moisture_deep_pct": "%", "rain_mm": "mm", "rain_tips": "count",
    "rain_intensity_mm_h": "mm/h", "rain_intensity_mm_h_max": "mm/h", "rain_cumulative_mm": "mm",
    "tilt_x_deg": "deg", "tilt_y_deg": "deg", "tilt_rate_x_deg_h": "deg/h", "tilt_rate_y_deg_h": "deg/h",
    "water_level_m": "m", "battery_v": "V", "status": "bitmask", "lat": "deg", "lon": "deg",
    "readings": "count",
}
#: Aggregated history: (column, InfluxQL function, field). Means for levels and rates (soil moisture, rain
#: intensity, tilt, tilt rates, water level, battery); the sum of the rain of each reading for ``rain_mm`` (rain
#: in the bucket); the maximum for the event total ``rain_cumulative_mm`` (it only grows within an event) and, as
#: ``rain_intensity_mm_h_max``, for the intensity (a mean hides a burst). ``rain_tips`` (a counter since
#: power-on), ``status`` (a bitmask), ``lat``/``lon`` (the station's record has its position) are not aggregated.
AGGREGATES: tuple[tuple[str, str, str], ...] = (
    ("soil_moisture_pct", "mean", "soil_moisture_pct"),
    ("soil_moisture_deep_pct", "mean", "soil_moisture_deep_pct"),
    ("rain_mm", "sum", "rain_mm"),
    ("rain_intensity_mm_h", "mean", "rain_intensity_mm_h"),
    ("rain_intensity_mm_h_max", "max", "rain_intensity_mm_h"),
    ("rain_cumulative_mm", "max", "rain_cumulative_mm"),
    ("tilt_x_deg", "mean", "tilt_x_deg"),
    ("tilt_y_deg", "mean", "tilt_y_deg"),
    ("tilt_rate_x_deg_h", "mean", "tilt_rate_x_deg_h"),
    ("tilt_rate_y_deg_h", "mean", "tilt_rate_y_deg_h"),
    ("water_level_m", "mean", "water_level_m"),
    ("battery_v", "mean", "battery_v"),
)
#: interval → (bucket length ms (0: raw), default and longest range).
#: A range holds at most about a thousand buckets (7 days of 10 minutes, 31 of hours): longer, a coarser interval
#: (an answer of thousands of rows takes longer to build than the 50 ms a route is given; charts do not need them).
INTERVALS: dict[str, tuple[int, Span]] = {
    "raw": (0, Span(timedelta(days=1), timedelta(days=7))),
    "10m": (600_000, Span(timedelta(days=1), timedelta(days=7))),
    "1h": (3_600_000, Span(timedelta(days=7), timedelta(days=31))),
    "1d": (86_400_000, Span(timedelta(days=31), timedelta(days=400))),
}
ALERTS_SPAN = Span(timedelta(days=7), timedelta(days=92))
#: Readings this far either side of an ``/alerts`` range are read too, so an episode crossing an end of the range
#: has its true start and end (unless it runs on longer than that beyond the range).
ALERT_CONTEXT_MS = 86_400_000
#: Episodes per page of ``/alerts``.
MAX_LIMIT = 10_000
#: Rows per page of history, the default and the most (the next page follows ``next_cursor``): raw readings (a
#: JST day at 60 s is two pages) and buckets (a week of 10 minutes is three). A page of 2,000 readings or 1,000
#: buckets (800 and 400 KB of JSON) took 25-30 ms at the median and over 50 ms at p99 on the city-scale benchmark
#: (docs/benchmarks.md, issue 14): the page size bounds what one request costs the API and InfluxDB.
MAX_RAW_LIMIT = 1_000
MAX_BUCKET_LIMIT = 500

def clean_point(rec: Mapping[str, Any], fields: Iterable[str] = FIELDS) -> dict[str, Any] | None:
    """The servable ``fields`` of a stored point (null where absent) and ``backfill``, or None when the point
    cannot be served: a field not a finite number, lat/lon out of range or one without the other, ``backfill``
    not a boolean. (Exact types, not ``isinstance``: a page is 2,000 points of 15 fields, and a ``bool`` is an
    ``int`` to ``isinstance``.)"""
    out: dict[str, Any] = {}
    for f in fields:
        v = rec.get(f)
        t = type(v)
        if t is float:
            if v - v != 0.0:  # inf or nan
                return None
        elif t is int:
            v = float(v)
        elif v is not None:
            return None
        out[f] = v
    if "lat" in out:
        lat, lon = out["lat"], out.get("lon")
        if (lat is None) != (lon is None):
            return None
        if lat is not None and lon is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180):
            return None
    bf = rec.get("backfill")
    if bf is not None and not isinstance(bf, bool):
        return None
    out["backfill"] = bf
    return out


def _rows(result: Mapping[str, Any]) -> Iterable[tuple[dict[str, str], dict[str, Any]]]:
    """(tags, record) of every row of one statement's result."""
    for s in result.get("series", []) or []:
        tags = s.get("tags") or {}
        cols = s["columns"]
        for row in s.get("values", []) or []:
            yield tags, dict(zip(cols, row, strict=True))


def _device(where: list[str], station: str | None) -> list[str]:
    return [*where, f'"device" = {literal(station)}'] if station else where


# --------------------------------------------------------------------------------------------------------------
# Stations


@dataclass
class Station:
    id: str
    gateway: str | None = None
    latest_ms: int | None = None
    latest: dict[str, Any] | None = None
    window: list[Assessment] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        stale = not self.window
        level = highest(self.window)
        pos = None
        if self.latest is not None and self.latest.get("lat") is not None:
            pos = {"lat": self.latest["lat"], "lon": self.latest["lon"]}
        latest = None
        if self.latest is not None and self.latest_ms is not None:
            latest = {"time": iso(self.latest_ms), **self.latest}
        return {
            "station": self.id, "gateway": self.gateway, "position": pos, "stale": stale,
            "alert": {"level": "unknown" if stale else level.level, "criteria": list(level.criteria),
                      "live_readings": len(self.window)},
            "latest": latest,
        }


#: Newest points looked at per station: the newest servable one is its latest reading.
LATEST_DEPTH = 5
#: The list of every station is kept this long (:class:`~cityos_api.core.Snapshot`: refreshed behind the
#: requests, never served older than three times this); a station alone is read at each request.
STATIONS_TTL_S = 10.0
#: Where a station's newest reading is looked for first.
RECENT_MS = 86_400_000


def fetch_stations(query: QueryFn, db: str, now_ms: int, station: str | None = None
                   ) -> tuple[list[Station], int]:
    """Every station (or one) with its newest servable point and the assessments of its live readings of the
    alert window; and the number of points skipped.

    The newest points are looked for in the last :data:`RECENT_MS` first (the shards of a day, not of every
    month kept), and only for the stations silent that long (known from the tag index) further back."""
    newest = (f'SELECT * FROM "{MEASUREMENT}" {_where(_device([f"time > {now_ms - RECENT_MS}ms"], station))} '
              f'GROUP BY "device" ORDER BY time DESC LIMIT {LATEST_DEPTH}')
    fields = ", ".join(f'"{f}"' for f in FIELDS)  # all of them: a point is served whole or not at all
    live = ['"backfill" = false', f"time > {now_ms - WINDOW_MS}ms"]
    window = f'SELECT {fields} FROM "{MEASUREMENT}" {_where(_device(live, station))} GROUP BY "device"'
    known = f'SHOW TAG VALUES FROM "{MEASUREMENT}" WITH KEY = "device"' + (
        f' WHERE "device" = {literal(station)}' if station else "")
    res = query_results(*query(db, f"{newest}; {window}; {known}"))
    stations: dict[str, Station] = {}
    bad_points: set[tuple[str, int]] = set()

    def take_newest(result: Mapping[str, Any]) -> None:
        for tags, rec in _rows(result):
            dev = tags.get("device", "")
            st = stations.setdefault(dev, Station(dev))
            if st.latest is not None:
                continue
            point = clean_point(rec)
            gw = rec.get("gateway")
            if point is None or not isinstance(gw, str | None):
                bad_points.add((dev, int(rec["time"])))
                continue
            st.gateway, st.latest_ms, st.latest = gw, int(rec["time"]), point

    take_newest(res[0])
    silent = sorted({str(rec.get("value")) for _, rec in _rows(res[2])} - set(stations))
    if silent:
        cond = " OR ".join(f'"device" = {literal(d)}' for d in silent)
        take_newest(query_results(*query(db, f'SELECT * FROM "{MEASUREMENT}" WHERE ({cond}) GROUP BY "device" '
                                             f'ORDER BY time DESC LIMIT {LATEST_DEPTH}'))[0])
    for tags, rec in _rows(res[1]):
        dev = tags.get("device", "")
        point = clean_point(rec)
        if point is None:
            bad_points.add((dev, int(rec["time"])))
            continue
        stations.setdefault(dev, Station(dev)).window.append(assess(point))
    return [stations[k] for k in sorted(stations)], len(bad_points)


def _where(conds: list[str]) -> str:
    return f"WHERE {' AND '.join(conds)}" if conds else ""


# --------------------------------------------------------------------------------------------------------------
# History


def station_known(query: QueryFn, db: str, station: str) -> bool:
    q = f'SHOW TAG VALUES FROM "{MEASUREMENT}" WITH KEY = "device" WHERE "device" = {literal(station)}'
    return any(True for _ in _rows(query_results(*query(db, q))[0]))


def fetch_raw(query: QueryFn, db: str, station: str, start: int, end: int, limit: int
              ) -> list[tuple[int, dict[str, Any] | None]]:
    """Up to ``limit`` points from ``start`` (inclusive), oldest first: (time, point or None when unservable)."""
    fields = ", ".join(f'"{f}"' for f in (*FIELDS, "backfill"))
    q = (f'SELECT {fields} FROM "{MEASUREMENT}" {_where(_device([f"time >= {start}ms", f"time < {end}ms"], station))}'
         f' ORDER BY time ASC LIMIT {limit}')
    return [(int(rec["time"]), clean_point(rec)) for _, rec in _rows(query_results(*query(db, q))[0])]


#: The rollup columns the aggregated history is made of.
_STORED_COLUMNS = sorted({c for _, fn, f in AGGREGATES for c in (f + "_sum", f + "_n", *((f + "_max",) if fn == "max" else ()))})


@dataclass(frozen=True)
class ForestState:
    """Where the forest's rollup stands and how InfluxDB stores the forest's fields: what every history and
    alert read needs first (three small queries), kept by the API for :data:`STATE_TTL_S` (:func:`kept_state`).
    An older progress point is as right (rows are complete before it, the raw points after it answer the rest);
    a field's type changes only with a new shard."""

    progress: int | None
    alert_days: int | None
    numbers: frozenset[str]
    others: frozenset[str]


#: How long the API keeps the :class:`ForestState` (the rollup passes every 5 minutes).
STATE_TTL_S = 10.0


def fetch_state(query: QueryFn, db: str, rollup_db: str) -> ForestState:
    progress = forest_progress(query, rollup_db)
    days = None if progress is None else job_progress(query, rollup_db, FOREST_ALERT_DAYS)
    numbers, others = numeric_fields(query, db, MEASUREMENT)
    return ForestState(progress, days, frozenset(numbers), frozenset(others))


def kept_state(api: Api) -> ForestState:
    """This API's :class:`ForestState`, read at most every :data:`STATE_TTL_S` (shared by the open routes and the
    NGSI-LD provider: :meth:`Api.kept`)."""
    return api.kept("forest state", lambda: api.read(fetch_state, api.settings.rollup_db),  # type: ignore[no-any-return]
                    STATE_TTL_S).get()


#: Per aggregate column: (column, function, the row's sum, count and function keys).
_AGGREGATE_KEYS = tuple((col, fn, f + "_sum", f + "_n", f"{f}_{fn}") for col, fn, f in AGGREGATES)


def fetch_buckets(query: QueryFn, db: str, rollup_db: str, station: str, start: int, end: int, step: int,
                  state: ForestState) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The non-empty ``step`` buckets of ``[start, end)`` (``start`` a bucket start), oldest first: (start ms,
    ``readings`` and the aggregates); and the points whose fields could not be aggregated (stored with another
    type).

    Read from the rollups up to their progress point and from the raw points after it (:mod:`cityos.rollups`:
    the same sums, counts and extremes either way), so the answer does not depend on when the rollup last ran; a
    database without rollups is read raw (slower, the same answer)."""
    rows, cut = forest_stored(query, rollup_db, start, end, step, state.progress, [station], _STORED_COLUMNS)
    skipped = 0
    if cut < end:
        numbers, others = state.numbers, state.others
        rows += forest_raw(query, db, cut, end, [f for f in FOREST_ROLLED if f in numbers], [station], step,
                           _STORED_COLUMNS)
        unaggregated = sorted(others & set(FOREST_ROLLED))
        if unaggregated:
            cnt = ", ".join(f'count("{f}") AS "{f}"' for f in unaggregated)
            cond = _where(_device([f"time >= {cut}ms", f"time < {end}ms"], station))
            for _, rec in _rows(query_results(*query(db, f'SELECT {cnt} FROM "{MEASUREMENT}" {cond}'))[0]):
                skipped = max([skipped, *(int(v) for k, v in rec.items() if k != "time" and isinstance(v, int))])
    out = []
    for (_, t), row in forest_regroup(rows, step).items():
        readings = int(row["readings"])
        b: dict[str, Any] = {"readings": readings}
        for col, fn, k_sum, k_n, k_fn in _AGGREGATE_KEYS:  # forest_n inlined: a page is 1,000 rows x 12
            if k_sum not in row:
                b[col] = None
                continue
            n = row.get(k_n, readings)
            b[col] = None if not n else float(row[k_sum]) / n if fn == "mean" else float(row[k_fn])
        out.append((t, b))
    return out, skipped


# --------------------------------------------------------------------------------------------------------------
# Alert episodes


def episode(span: AlertSpan, now_ms: int) -> dict[str, Any]:
    """An episode as served: ``end`` is the last reading plus the window (when the rules resolve), null while that
    is ahead."""
    end = span.last_ms + WINDOW_MS
    return {"station": span.station, "level": span.level, "start": iso(span.first_ms),
            "end": None if end > now_ms else iso(end), "last_reading": iso(span.last_ms), "ongoing": end > now_ms,
            "criteria": list(span.criteria), "readings": span.readings}


def episodes(points: Iterable[tuple[str, int, Assessment]]) -> list[AlertSpan]:
    """(station, time, assessment) of readings → episodes: a station's readings at caution or above joined while
    less than the alert window apart; sorted by start, then station."""
    return join_spans(alert_spans(points, FOREST_STEP_MS), WINDOW_MS)


def _raw_alert_points(query: QueryFn, db: str, start: int, end: int, station: str | None
                      ) -> tuple[list[tuple[str, int, Assessment]], list[tuple[str, int]]]:
    """The raw points at caution or above in ``[start, end)`` as (station, time, assessment), oldest first per
    station; and (station, time) of those whose assessed values were not numbers."""
    fields = ", ".join(f'"{f}"' for f in ASSESSED_FIELDS)
    q = (f'SELECT {fields} FROM "{MEASUREMENT}" '
         f'{_where(_device([f"time >= {start}ms", f"time < {end}ms", influxql_at_caution()], station))} '
         f'GROUP BY "device"')
    points: list[tuple[str, int, Assessment]] = []
    skipped: list[tuple[str, int]] = []
    for tags, rec in _rows(query_results(*query(db, q))[0]):
        dev, t = tags.get("device", ""), int(rec["time"])
        if clean_point(rec, ASSESSED_FIELDS) is None:
            skipped.append((dev, t))
        else:
            points.append((dev, t, assess(rec)))
    return points, skipped


@dataclass(frozen=True)
class AlertTail:
    """Every station's raw points at caution or above after the rollup's progress point, up to a day past the
    read (:data:`ALERT_CONTEXT_MS`, as a range ending now reads), kept by the API for :data:`ALERT_TAIL_TTL_S`
    (:func:`kept_alert_tail`): a few minutes of a storm's readings at most, between two rollup passes. Reading them
    costs InfluxDB ~25 ms at city scale whatever the range (200 stations' four assessed fields: InfluxDB 1.x pays
    per series and field, not per point), so every ``/alerts`` request reading them itself took 25-35 ms of its
    50."""

    start: int  # the progress point read from
    points: tuple[tuple[str, int, Assessment], ...]
    skipped: tuple[tuple[str, int], ...]


#: How long the API keeps the :class:`AlertTail` (as the station list: an ``/alerts`` answer may miss the last
#: seconds' readings, never a reading the rollup has).
ALERT_TAIL_TTL_S = 10.0
#: The rollup this far behind (stopped), nothing is kept: a storm's readings since would be held and read again every
#: 10 s; each request reads its own range instead (as without rollups).
ALERT_TAIL_MAX_MS = 6 * 3_600_000


def kept_alert_tail(api: Api) -> AlertTail | None:
    """This API's :class:`AlertTail` (None without rollups, or with a rollup :data:`ALERT_TAIL_MAX_MS` behind: a
    request reads its whole range itself)."""
    def read() -> AlertTail | None:
        state = kept_state(api)
        now = int(api.clock() * 1000)
        if state.progress is None or now - state.progress > ALERT_TAIL_MAX_MS:
            return None
        points, skipped = api.read(_raw_alert_points, state.progress, now + ALERT_CONTEXT_MS, None)
        return AlertTail(state.progress, tuple(points), tuple(skipped))

    return api.kept("forest alert tail", read, ALERT_TAIL_TTL_S).get()  # type: ignore[no-any-return]


def fetch_alert_spans(query: QueryFn, db: str, rollup_db: str, start: int, end: int, station: str | None,
                      state: ForestState, tail: AlertTail | None = None) -> tuple[list[AlertSpan], int]:
    """The spans of readings at caution or above in ``[start, end)`` per station and 10 minutes, and the number
    of readings whose assessed values were not numbers: the rollups' spans up to their progress point, spans of
    the raw points after it (the same either way: :class:`cityos.landslide.AlertSpan`); the whole JST days the
    rollup has joined (``forest_alert_1d``), a few rows a day, where a storm has hundreds of 10 minutes. The raw
    points from ``tail`` when it holds them (it starts at or before that progress point), else read."""
    spans, cut = stored_alert_spans(query, rollup_db, start, end, state.progress,
                                    state.alert_days, None if station is None else [station])
    if cut >= end:
        return spans, 0
    if tail is not None and tail.start <= cut:
        def mine(dev: str, t: int) -> bool:
            return cut <= t < end and (station is None or dev == station)

        points = [p for p in tail.points if mine(p[0], p[1])]
        skipped = sum(1 for dev, t in tail.skipped if mine(dev, t))
    else:
        points, bad = _raw_alert_points(query, db, cut, end, station)
        skipped = len(bad)
    return spans + alert_spans(points, FOREST_STEP_MS), skipped


# --------------------------------------------------------------------------------------------------------------
# Routes

# the routes' parameters (module level: FastAPI resolves the annotations by name)
StationId = Annotated[str, Path(description="the station's device id, e.g. forest-01-01", max_length=64)]
Limit = Annotated[int | None, Query(ge=1, le=max(MAX_RAW_LIMIT, MAX_BUCKET_LIMIT), description=(
    f"rows per page: raw readings 1-{MAX_RAW_LIMIT} (default {MAX_RAW_LIMIT}), buckets 1-{MAX_BUCKET_LIMIT} "
    f"(default {MAX_BUCKET_LIMIT})"))]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page")]
From = Annotated[str | None, Query(alias="from", description="start (ISO 8601 with offset, or a JST date)")]
To = Annotated[str | None, Query(description="end, exclusive (default: now)")]
IntervalParam = Annotated[Interval, Query(description=(
    "raw (every reading; at most 7 days), 10m (7 days), 1h (31 days) or 1d (JST days; 400 days)"))]
StationFilter = Annotated[str | None, Query(description="only this station")]
AlertLimit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="episodes per page")]

STATION_COLUMNS = ["station", "gateway", "lat", "lon", "stale", "alert_level", "alert_criteria",
                   "alert_live_readings", "time", "backfill", *(f for f in FIELDS if f not in ("lat", "lon"))]


def _station_row(s: dict[str, Any]) -> dict[str, Any]:
    latest = s["latest"] or {}
    pos = s["position"] or {}
    row = {"station": s["station"], "gateway": s["gateway"], "lat": pos.get("lat"), "lon": pos.get("lon"),
           "stale": s["stale"], "alert_level": s["alert"]["level"],
           "alert_criteria": " ".join(s["alert"]["criteria"]), "alert_live_readings": s["alert"]["live_readings"],
           "time": latest.get("time"), "backfill": latest.get("backfill")}
    row.update({f: latest.get(f) for f in FIELDS if f not in ("lat", "lon")})
    return row


def router(api: Api) -> APIRouter:
    r = APIRouter(tags=["forest"])

    def now_ms() -> int:
        return int(api.clock() * 1000)

    def about() -> dict[str, Any]:
        return {"alert_window_min": FOREST_ALERT_WINDOW_MIN,
                "criteria": {k: {"level": lvl, "rule": rule} for k, (lvl, rule) in CRITERIA.items()},
                "units": UNITS}

    def station_param(station_id: str) -> str:
        return check_id("station_id", station_id, "a station id as in the data (lower-case letters, digits, _ "
                                                  "and -)")

    def stations(station: str | None) -> list[dict[str, Any]]:
        now = now_ms()
        found, skipped = api.read(fetch_stations, now, station)
        api.skipped(MEASUREMENT, skipped)
        return [s.public() for s in found]

    every_station = api.snapshot("forest stations", lambda: stations(None), STATIONS_TTL_S)

    def next_link(request: Request, params: dict[str, Any]) -> dict[str, str]:
        """The ``Link`` header of the next page, built from validated parameters only."""
        q = urlencode({k: v for k, v in params.items() if v is not None})
        return {"Link": f'<{request.url.path}?{q}>; rel="next"'}

    responses: dict[int | str, dict[str, Any]] = {
        422: {"description": "a parameter is not valid (the message says which and why)"},
        503: {"description": "InfluxDB unavailable"},
    }
    with_404 = {**responses, 404: {"description": "no such station"}}

    @api.route(r, "/v1/forest/stations", scope=OPEN, response_class=Response,
               responses={**responses, **json_body(ForestStations)})
    def forest_stations(fmt: FormatQuery = "json") -> Response:
        """Every forest station: its position, its newest reading, whether it is stale and its current landslide
        alert level (the alert rules' criteria over its live readings of the last window). The list is read at most
        every 10 s (never served older than 30 s); a station alone is read at each request."""
        items = every_station.get()
        doc = {"dataset": "forest-stations", "generated_at": iso(now_ms()), **about(), "items": items}
        return api.respond(fmt, doc, [_station_row(s) for s in items], STATION_COLUMNS, "forest-stations",
                           {"Cache-Control": "no-store"})

    @api.route(r, "/v1/forest/stations/{station_id}", scope=OPEN, response_class=Response,
               responses={**with_404, **json_body(ForestStationBody)})
    def forest_station(station_id: StationId, fmt: FormatQuery = "json") -> Response:
        """One forest station, as in the list."""
        sid = station_param(station_id)
        items = stations(sid)
        if not items:
            raise HTTPException(status_code=404, detail=f"station {sid}: no such forest station")
        doc = {"dataset": "forest-station", "generated_at": iso(now_ms()), **about(), **items[0]}
        return api.respond(fmt, doc, [_station_row(items[0])], STATION_COLUMNS, f"forest-station_{sid}",
                           {"Cache-Control": "no-store"})

    @api.route(r, "/v1/forest/stations/{station_id}/readings", scope=OPEN, response_class=Response,
               responses={**with_404, **json_body(ForestReadings)})
    def forest_readings(
        request: Request,
        station_id: StationId,
        frm: From = None,
        to: To = None,
        interval: IntervalParam = "raw",
        limit: Limit = None,
        cursor: Cursor = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """One station's history: every reading (raw, with its alert level) or per 10 minutes, hour or JST day
        (means; rain_mm summed; rain_cumulative_mm and rain_intensity_mm_h_max the maximum)."""
        sid = station_param(station_id)
        step, span = INTERVALS[interval]
        tr = time_range(frm, to, span, now_ms())
        most = MAX_RAW_LIMIT if step == 0 else MAX_BUCKET_LIMIT
        if limit is None:
            limit = most
        elif limit > most:
            what = "raw readings" if step == 0 else "buckets"
            raise bad("limit", f"at most {most} {what} a page (follow next_cursor for more)", str(limit))
        key = decode_cursor(cursor, {"t": int})
        first = tr.start_ms if step == 0 else bucket_start(tr.start_ms, step)
        if key is not None and not first <= key["t"] < tr.end_ms:
            raise bad("cursor", "the next_cursor of a previous page of the same range", cursor)
        if not api.read(station_known, sid):
            raise HTTPException(status_code=404, detail=f"station {sid}: no such forest station")
        rows: list[dict[str, Any]]
        if step == 0:
            start = tr.start_ms if key is None else key["t"] + 1
            got = api.read(fetch_raw, sid, start, tr.end_ms, limit + 1)
            more = len(got) > limit
            got = got[:limit]
            last = got[-1][0] if got else None
            rows = []
            for t, p in got:
                if p is not None:
                    a = assess(p)
                    rows.append({"time": iso(t), **p, "alert_level": a.level, "alert_criteria": list(a.criteria)})
            skipped = sum(1 for _, p in got if p is None)
            columns = ["time", "backfill", *FIELDS, "alert_level", "alert_criteria"]
        else:
            start = first if key is None else key["t"] + step
            # a page is at most limit + 1 buckets of a fixed length (a JST day is 24 h): read that far first; when
            # buckets without a reading left the page short, as many more as it lacks, then the rest of the range
            # (a station silent a day at the range's start made every 31-day page read 744 hours for 500)
            state = kept_state(api)
            end = min(tr.end_ms, start + (limit + 1) * step)
            buckets, skipped = api.read(fetch_buckets, api.settings.rollup_db, sid, start, end, step, state)
            for last_read in (False, True):
                if len(buckets) > limit or end >= tr.end_ms:
                    break
                nxt_end = tr.end_ms if last_read else min(tr.end_ms, end + (limit + 1 - len(buckets)) * step)
                rest, skipped_rest = api.read(fetch_buckets, api.settings.rollup_db, sid, end, nxt_end, step, state)
                buckets += rest
                skipped += skipped_rest
                end = nxt_end
            more = len(buckets) > limit
            buckets = buckets[:limit]
            last = buckets[-1][0] if buckets else None
            rows = [{"start": iso(t), "end": iso(t + step), **b} for t, b in buckets]
            columns = ["start", "end", "readings", *(col for col, _, _ in AGGREGATES)]
        api.skipped(MEASUREMENT, skipped)
        nxt = encode_cursor({"t": last}) if more and last is not None else None
        headers = {}
        if nxt:
            headers = next_link(request, {"from": iso(tr.start_ms), "to": iso(tr.end_ms), "interval": interval,
                                          "limit": limit, "cursor": nxt, "format": fmt})
        doc = {"dataset": "forest-readings", "station": sid, "interval": interval, **tr.public(),
               "time_zone": "Asia/Tokyo", "units": UNITS, "items": rows, "next_cursor": nxt}
        csv_rows = rows if fmt != "csv" else [  # CSV cells: the criteria space-separated (only when asked for)
            {**row, "alert_criteria": " ".join(row["alert_criteria"])} if "alert_criteria" in row else row
            for row in rows]
        return api.respond(fmt, doc, csv_rows, columns, f"forest-readings_{sid}_{interval}_{iso(tr.start_ms)[:10]}",
                           headers)

    @api.route(r, "/v1/forest/alerts", scope=OPEN, response_class=Response,
               responses={**responses, **json_body(ForestAlerts)})
    def forest_alerts(
        request: Request,
        frm: From = None,
        to: To = None,
        station_id: StationFilter = None,
        limit: AlertLimit = 500,
        cursor: Cursor = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """Alert episodes overlapping the range (at most 92 days): a station's readings at caution or warning,
        joined while less than the alert window apart; the highest level and every criterion met in each."""
        sid = None if station_id is None else station_param(station_id)
        now = now_ms()
        tr = time_range(frm, to, ALERTS_SPAN, now)
        key = decode_cursor(cursor, {"t": int, "station": str})
        spans, skipped = api.read(fetch_alert_spans, api.settings.rollup_db, tr.start_ms - ALERT_CONTEXT_MS,
                                  tr.end_ms + ALERT_CONTEXT_MS, sid, kept_state(api), kept_alert_tail(api))
        api.skipped(MEASUREMENT, skipped)
        found = [e for e in join_spans(spans, WINDOW_MS)
                 if e.first_ms < tr.end_ms and e.last_ms + WINDOW_MS > tr.start_ms]
        if key is not None:
            found = [e for e in found if (e.first_ms, e.station) > (key["t"], key["station"])]
        more = len(found) > limit
        found = found[:limit]
        nxt = encode_cursor({"t": found[-1].first_ms, "station": found[-1].station}) if more else None
        items = [episode(e, now) for e in found]
        headers = {}
        if nxt:
            headers = next_link(request, {"from": iso(tr.start_ms), "to": iso(tr.end_ms), "station_id": sid,
                                          "limit": limit, "cursor": nxt, "format": fmt})
        doc = {"dataset": "forest-alerts", **tr.public(), "station": sid, "generated_at": iso(now), **about(),
               "items": items, "next_cursor": nxt}
        csv_rows = [{**e, "criteria": " ".join(e["criteria"])} for e in items]
        return api.respond(fmt, doc, csv_rows, ["station", "level", "start", "end", "last_reading", "ongoing",
                                                "criteria", "readings"],
                           f"forest-alerts_{iso(tr.start_ms)[:10]}" + (f"_{sid}" if sid else ""), headers)

    return r

