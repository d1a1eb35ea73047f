"""The rollups' contract and the one computation their writer and their reader share (docs/api.md
"Pre-aggregation").

The rollup service (``rollup/``, ``cityos rollup``) reads the city's raw data and writes pre-aggregated rows into a
database of their own (the *target*, by default the source's name + ``_rollup``: ``cityos`` → ``cityos_rollup``);
the City OS API reads the rows. What both must agree on lives here: the measurements, their tags and fields, the
target's name, and what one household used in one half hour (the API's per-household route and the rollup's
district sums compute it with :func:`household_half_hours`, never with a copy).

Measurements of the target (timestamps are period starts):

=====================  ==========  ===========================================================================
measurement            tags        fields
=====================  ==========  ===========================================================================
``energy_district_30m``  district  ``kwh`` (households' kWh summed, rounded to Wh), ``households`` (int)
``energy_district_1d``   district  ``kwh`` (the day's frozen half hours summed), ``households`` (distinct, int),
                                   ``slots`` (half hours with a row, int), ``min_households`` (fewest in a slot)
``waste_district_1d``    district  ``kg``, ``pickups`` (int); the JST day; ``unknown`` is the pickups without a
                                   district, as the trucks tag them
``waste_cell_1d``        district, ``kg``, ``pickups`` (int), ``lat``/``lon`` (the cell's centre; none for ``none``);
                         cell      the JST day; ``cell`` is :func:`cell_tag` of :func:`cell_of`, ``none`` the
                                   pickups without a position (the collection points, docs/trucks.md)
``waste_trip_district_1d``          ``trip_no``, ``kg``, ``pickups`` (int), ``first_ms``/``last_ms``: a truck's
                         device,   pickups per trip number, district and JST day, stamped at the day's start +
                         district  ``trip_no`` ms (:class:`TripPart`, "Waste trips" below)
``forest_station_10m``   device    ``readings`` and per field of :data:`FOREST_ROLLED` ``_sum``, ``_min``, ``_max``,
``forest_station_1h``              ``_n`` (see "Forest" below); the 10 minutes, the hour (merged from them), the
``forest_station_1d``              JST day (merged from its hours)
``forest_alert_10m``     device    ``first_ms``, ``last_ms``, ``readings``, ``criteria``: the readings at caution or
                                   above (:class:`cityos.landslide.AlertSpan`)
``truck_cargo_1h``       device    ``readings``, ``cargo_kg_sum``, ``cargo_kg_min``, ``cargo_kg_max``: the NGSI-LD
``truck_cargo_1d``                 Vehicle's ``cargoWeight`` instances per truck and hour, JST day (see "Trucks")
``rollup_progress``      job       ``until_ms`` (int): where the job stopped (its next period's start)
=====================  ==========  ===========================================================================

Every group is stored, even one below k: the k rule is the readers' (the API, dashboards), at read time.
Pure (but :func:`target_results`' warning): the InfluxDB calls go through the ``query`` function a caller passes (``query(db, influxql) -> (status,
body)``, as the API's :data:`~cityos_api.gtfs_rt.QueryFn`).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cityos.influx import InfluxQueryError, QueryFn, query_results, quote_literal
from cityos.landslide import AlertSpan, criteria_bits, criteria_of, finite_number
from cityos.wire import ID_PATTERN

__all__ = [
    "BUS_LEVELS",
    "BUS_POSITION",
    "BUS_ROLLED",
    "BUS_VALID",
    "BUS_VEHICLE",
    "BUS_VEHICLE_1D",
    "BUS_VEHICLE_1H",
    "CELL_DEG",
    "DAY_MS",
    "ENERGY",
    "ENERGY_1D",
    "ENERGY_30M",
    "ENERGY_FIELD",
    "FOREST",
    "FOREST_1D",
    "FOREST_1H",
    "FOREST_10M",
    "FOREST_ALERTS",
    "FOREST_ALERTS_1D",
    "FOREST_ALERT_DAYS",
    "FOREST_COUNTED",
    "FOREST_LEVELS",
    "FOREST_ROLLED",
    "FOREST_STEP_MS",
    "HOUR_MS",
    "JST_OFFSET_MS",
    "MAX_HALF_HOUR_KWH",
    "MAX_PICKUP_KG",
    "MAX_TRIP_KG",
    "NO_CELL",
    "PROGRESS",
    "ROLLUP_METHODS",
    "SLOTS_PER_DAY",
    "SLOT_MS",
    "TARGET_SUFFIX",
    "TRIP_LOOKBACK_MS",
    "TRUCK_CARGO",
    "TRUCK_CARGO_1D",
    "TRUCK_CARGO_1H",
    "TRUCK_LEVELS",
    "TRUCK_ROLLED",
    "UNKNOWN_DISTRICT",
    "WASTE_1D",
    "WASTE_CELLS",
    "WASTE_CELL_1D",
    "WASTE_COLLECTION",
    "WASTE_TRIP",
    "WASTE_TRIPS",
    "WASTE_TRIP_1D",
    "QueryFn",
    "Slot",
    "TripPart",
    "alert_span_fields",
    "bucket_start",
    "bus_progress",
    "cargo_left",
    "cargo_rows",
    "cargo_series",
    "cell_centre",
    "cell_from_tag",
    "cell_of",
    "cell_tag",
    "devices_clause",
    "district_sums",
    "field_rows",
    "forest_merge",
    "forest_n",
    "forest_progress",
    "forest_raw",
    "forest_raw_select",
    "forest_regroup",
    "forest_row",
    "forest_stored",
    "household_half_hours",
    "job_progress",
    "jst_day",
    "numeric_fields",
    "rollup_level",
    "servable_trip",
    "stored_alert_spans",
    "stored_trip_parts",
    "target_db",
    "target_missing",
    "target_results",
    "trip_part_time",
    "trip_parts",
    "truck_progress",
]

SLOT_MS = 30 * 60_000
DAY_MS = 86_400_000
SLOTS_PER_DAY = DAY_MS // SLOT_MS
JST_OFFSET_MS = 9 * 3_600_000  # Japan has no daylight saving time: every JST day is 24 h

#: Raw data (the ingest's measurements).
ENERGY = "energy"
ENERGY_FIELD = "energy_fixed_kwh"
WASTE_COLLECTION = "waste_collection"
#: A pickup heavier than this is not a pickup (a packer truck carries at most a few tonnes): skipped and counted.
MAX_PICKUP_KG = 20_000.0
#: The trucks' district tag of a pickup made outside every district (or without a position).
UNKNOWN_DISTRICT = "unknown"
#: A household's half hour above this is a broken value, skipped and counted.
MAX_HALF_HOUR_KWH = 1e6

#: Rollups (the target database).
ENERGY_30M = "energy_district_30m"
ENERGY_1D = "energy_district_1d"
WASTE_1D = "waste_district_1d"
WASTE_CELL_1D = "waste_cell_1d"
PROGRESS = "rollup_progress"
TARGET_SUFFIX = "_rollup"


def target_db(source_db: str) -> str:
    """The rollups' database of a source database when none is configured: ``cityos`` → ``cityos_rollup``."""
    return source_db + TARGET_SUFFIX


def target_missing(exc: Exception, db: str) -> bool:
    """True if ``exc`` (an :class:`~cityos.influx.InfluxQueryError`) says the target database ``db`` is not
    there for this user: not created yet (``database not found``) or no READ on it (InfluxDB 1.x answers a
    user without a grant on a database that does not exist the same way)."""
    text = str(getattr(exc, "error", "") or exc)
    return f"database not found: {db}" in text or text.rstrip().endswith(f"requires READ on {db}")


_log = logging.getLogger("cityos.rollups")
_warned: dict[str, float] = {}


def target_results(query: QueryFn, db: str, q: str) -> list[dict[str, Any]]:
    """The results of ``q`` on the rollups' database ``db`` (as :func:`~cityos.influx.query_results`). When that
    database is not there for this user (:func:`target_missing`) the failure is raised like any other (a reader
    answers 503: "no rows" would read as "nothing happened"), after a warning naming the database and the fix,
    logged at most once a minute."""
    try:
        return query_results(*query(db, q))
    except InfluxQueryError as exc:
        if target_missing(exc, db):
            now = time.monotonic()
            if now - _warned.get(db, -3600.0) >= 60:
                _warned[db] = now
                _log.warning("the rollups' database %s is not there for this user (create it and grant READ: "
                             "`cityos fleet influxdb`; run `cityos rollup`)", db)
        raise


#: Collection points: cells of this many degrees of latitude and of longitude (35° N: ~111 m x ~91 m). A pickup is
#: at a shared collection point (ごみステーション): a cell holds one or more, never a household's bin.
CELL_DEG = 0.001
#: The ``cell`` tag of the pickups without a position.
NO_CELL = "none"
_CELL_RE = re.compile(r"(-?\d{1,6})_(-?\d{1,6})")


def cell_of(lat: float, lon: float) -> tuple[int, int]:
    """The collection-point cell holding (lat, lon): indices of :data:`CELL_DEG` steps, rounded to the nearest.
    The one binning of the rollup's ``waste_cell_1d`` and the API's positions (a truck's location)."""
    return round(lat / CELL_DEG), round(lon / CELL_DEG)


def cell_centre(cell: tuple[int, int]) -> tuple[float, float]:
    """(lat, lon) of a cell's centre, as served (rounded to the cell's 3 decimals)."""
    return round(cell[0] * CELL_DEG, 3), round(cell[1] * CELL_DEG, 3)


def cell_tag(cell: tuple[int, int]) -> str:
    """The ``cell`` tag of ``waste_cell_1d``: ``35060_134005``."""
    return f"{cell[0]}_{cell[1]}"


def cell_from_tag(tag: str) -> tuple[int, int] | None:
    """The cell a ``cell`` tag names, or None (:data:`NO_CELL` or not a cell)."""
    m = _CELL_RE.fullmatch(tag)
    return (int(m.group(1)), int(m.group(2))) if m else None


def jst_day(ms: int) -> int:
    """The start (epoch ms) of the JST day holding ``ms``."""
    return (ms + JST_OFFSET_MS) // DAY_MS * DAY_MS - JST_OFFSET_MS


# --------------------------------------------------------------------------------------------------------------
# Waste trips: a truck's pickups per trip number, district and JST day (``waste_trip_district_1d``), so a day's
# trips need no raw pickups of the days before (docs/trucks.md "City OS API"). Which pickups a trip holds (its
# truck and ``trip_no``, within its span) is the API's rule; a part here carries ``first_ms``/``last_ms`` so the
# API can tell a part wholly in a span from one only partly in it (then it attaches that truck's pickups one by
# one). :func:`trip_parts` is the one grouping of the rollup's rows and of the API's raw pickups: the same
# pickups give the same parts, whichever side read them.

#: The rows (tags ``device``, ``district``; fields ``trip_no``, ``kg``, ``pickups``, ``first_ms``, ``last_ms``,
#: ``until_ms``), stamped at :func:`trip_part_time` (the JST day's start + ``trip_no`` ms: one row per trip and day
#: in a series of a truck and district, rewritten in place when the day is recomputed). ``until_ms``: where the
#: pickups read for the row stop: the day's end, or for today the pass's progress point (today's rows grow with
#: every pass; a reader that read another point than the rows were written with reads that truck raw).
WASTE_TRIP_1D = "waste_trip_district_1d"
#: The trip rows' job (``rollup_progress``): the pickups before its point are in the rows (whole days, and
#: today up to the last pass).
WASTE_TRIPS = "waste_trips"
#: The collection-point cells' job (``waste_cell_1d``): the JST days before its point are no longer recomputed
#: (they ended ``recompute_days`` ago), so a reader may keep them.
WASTE_CELLS = "waste_cells"
_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class TripPart:
    """The usable pickups of one truck's trip number in one district on one JST day."""

    device: str
    trip_no: int
    district: str
    day_ms: int
    kg: float
    pickups: int
    first_ms: int
    last_ms: int


def trip_part_time(day_ms: int, trip_no: int) -> int | None:
    """A row's timestamp; None for a trip number that cannot be one (outside 0 to a day's milliseconds: not
    stored, the API reads such a trip's pickups raw)."""
    return day_ms + trip_no if 0 <= trip_no < DAY_MS else None


def trip_parts(series: Iterable[Mapping[str, Any]], *, single: bool = False) -> tuple[list[TripPart], int]:
    """The parts of InfluxDB's series of ``SELECT "kg", "trip_no" FROM "waste_collection" ... GROUP BY "device",
    "district"``, sorted, and the number of pickups that cannot be used (``kg`` missing, not a number or outside
    0 to :data:`MAX_PICKUP_KG`, a ``device`` or ``district`` tag not an id). A pickup without a number in
    ``trip_no`` belongs to no trip: in no part, not counted. ``kg`` summed exactly (:func:`math.fsum`); with
    ``single``, each pickup is a part of its own."""
    acc: dict[tuple[str, int, str, int, int], list[tuple[int, float]]] = defaultdict(list)
    bad = 0
    for s in series:
        tags = s.get("tags") or {}
        dev, dist = tags.get("device") or "", tags.get("district") or ""
        ok = bool(_ID.fullmatch(dev) and _ID.fullmatch(dist))
        cols = list(s["columns"])
        i_kg, i_no = cols.index("kg"), cols.index("trip_no")
        for v in s.get("values", []):
            kg = _num(v[i_kg])
            if not ok or kg is None or not 0 <= kg <= MAX_PICKUP_KG:
                bad += 1
                continue
            no = _num(v[i_no])
            if no is None:
                continue
            t = int(v[0])
            acc[(dev, int(no), dist, jst_day(t), t if single else 0)].append((t, kg))
    parts = [TripPart(dev, no, dist, day, math.fsum(kg for _, kg in xs), len(xs), min(t for t, _ in xs),
                      max(t for t, _ in xs)) for (dev, no, dist, day, _), xs in sorted(acc.items())]
    return parts, bad


def stored_trip_parts(series: Iterable[Mapping[str, Any]], progress: int | None = None
                      ) -> tuple[list[TripPart], list[str], set[str]]:
    """The parts of the rows of ``SELECT * FROM "waste_trip_district_1d" ... GROUP BY "device", "district"``,
    the truck of each row that cannot be used (a tag not an id, a field missing or inconsistent), and (with
    ``progress``, the job's point the reader read) the trucks with a row whose ``until_ms`` is not
    ``min(its day's end, progress)``: today's rows of another pass than that point's, a pass that landed while
    the reader read. A reader reads the pickups of both kinds of trucks raw."""
    out: list[TripPart] = []
    broken: list[str] = []
    other_pass: set[str] = set()
    for s in series:
        tags = s.get("tags") or {}
        dev, dist = tags.get("device") or "", tags.get("district") or ""
        for v in s.get("values", []):
            rec = dict(zip(s["columns"], v, strict=True))
            nums = [_num(rec.get(k)) for k in ("trip_no", "kg", "pickups", "first_ms", "last_ms")]
            t = int(rec["time"])
            day = jst_day(t)
            if not (_ID.fullmatch(dev) and _ID.fullmatch(dist)) or None in nums:
                broken.append(dev)
                continue
            until = rec.get("until_ms")  # rows written before it existed: whole days
            if progress is not None and (day + DAY_MS if until is None else until) != min(day + DAY_MS, progress):
                other_pass.add(dev)
                continue
            no, kg, n, first, last = (float(x or 0) for x in nums)
            if trip_part_time(day, int(no)) != t or no != int(no) or kg < 0 or n < 1 or n != int(n) \
                    or not day <= first <= last < day + DAY_MS:
                broken.append(dev)
                continue
            out.append(TripPart(dev, int(no), dist, day, kg, int(n), int(first), int(last)))
    return out, broken, other_pass


@dataclass(frozen=True)
class Slot:
    """One household's kWh in the half hour starting at ``start_ms``."""

    device: str
    district: str
    start_ms: int
    kwh: float


def household_half_hours(query: QueryFn, db: str, start_ms: int, end_ms: int, device: str | None = None
                         ) -> tuple[list[Slot], int]:
    """Every household half hour starting in ``[start_ms, end_ms)`` (of one ``device``), and the number of stored
    values that could not be used.

    A household's half hour is the difference of two consecutive fixed-time cumulative values
    (``energy_fixed_kwh``, stamped at the end of each half hour, a meter may add milliseconds) exactly 30 whole
    minutes apart; a missing value leaves both half hours around it unknown (never spread, never guessed).
    Unusable, counted: a value that is not a number (a string or boolean stored in a shard of its own: InfluxDB
    1.x hides such values from a numeric read, so they are counted with a cast), a negative difference (a meter
    that went back), a half hour of :data:`MAX_HALF_HOUR_KWH` or more."""
    # a minute of slack each side (milliseconds past :00/:30); one value before the range gives its first slot
    where = f"time >= {start_ms - 60_000}ms AND time < {end_ms + 60_000}ms"
    exact = f"time >= {start_ms}ms AND time < {end_ms}ms"
    dev = f' AND "device" = {quote_literal(device)}' if device else ""
    f = f'"{ENERGY_FIELD}"'
    values, wrong = query_results(*query(db, (
        f'SELECT {f}::float AS "v" FROM "{ENERGY}" WHERE {where}{dev} GROUP BY "device", "district"; '
        f'SELECT count({f}::string) AS "s", count({f}::boolean) AS "b" FROM "{ENERGY}" WHERE {exact}{dev}')))
    bad = sum(int(row[i] or 0) for s in wrong.get("series", []) for row in s.get("values", []) for i in (1, 2))
    out: list[Slot] = []
    for s in values.get("series", []):
        tags = s.get("tags") or {}
        prev: tuple[int, float] | None = None
        for t, v in s.get("values", []):
            if isinstance(v, bool) or not isinstance(v, int | float):
                prev = None  # not a number (cannot come from a ::float read; counted above if it did)
                continue
            t = int(t)
            if prev is not None and (t - prev[0]) // 60_000 == 30:
                kwh = v - prev[1]
                end = t - t % SLOT_MS  # the value ends the half hour before it
                start = end - SLOT_MS
                if start_ms <= start < end_ms:
                    if not 0 <= kwh < MAX_HALF_HOUR_KWH:
                        bad += 1
                    else:
                        out.append(Slot(tags.get("device", ""), tags.get("district", ""), start, float(kwh)))
            prev = (t, float(v))
    return out, bad


def district_sums(slots: Iterable[Slot]) -> dict[tuple[str, int], tuple[float, int]]:
    """(district, slot start) → (kWh summed over its households, rounded to Wh; households), sorted. Households
    without a district are in no district."""
    acc: dict[tuple[str, int], list[float]] = defaultdict(list)
    for s in slots:
        if s.district:
            acc[(s.district, s.start_ms)].append(s.kwh)
    return {key: (round(sum(vals), 3), len(vals)) for key, vals in sorted(acc.items())}



# --------------------------------------------------------------------------------------------------------------
# Forest: per station (tag ``device``) and 10 minutes, hour and JST day; and its readings at caution or above.
#
# A row holds ``readings`` (the points with ``status``: every reading has it) and, for each field of
# :data:`FOREST_ROLLED` with at least one value in the period, ``<field>_sum``, ``<field>_min``, ``<field>_max``
# and ``<field>_n`` (its values) -- ``_n`` only where it differs from ``readings`` (a sensor in fault), which
# keeps a row a third smaller. Sums, counts, minima and maxima combine exactly: an hour is its six 10-minute
# rows merged (:func:`forest_merge`), a day its hours; a reader composes any period from the coarsest rows that
# fit and the raw points after the rollup's progress (:func:`forest_raw_select` gives the raw points the same
# shape), so no answer depends on when the rollup last ran.

FOREST = "forest"
FOREST_10M = "forest_station_10m"
FOREST_1H = "forest_station_1h"
FOREST_1D = "forest_station_1d"
#: The readings at caution or above per station and 10 minutes (:class:`cityos.landslide.AlertSpan`): fields
#: ``first_ms``, ``last_ms``, ``readings`` and ``criteria`` (:func:`cityos.landslide.criteria_bits`).
FOREST_ALERTS = "forest_alert_10m"
#: The same spans joined within each JST day (:func:`cityos.landslide.join_spans`, the alert window): a station's
#: episodes cut at midnight, a few rows a day where a storm has hundreds of 10-minute ones. Rows are stamped at the
#: day's start + their index (ms) with the day's span count ``of`` on each, so a recomputed day that has fewer
#: spans (late readings joined two) leaves no stale row a reader takes (those past the newest ``of``). Their own
#: progress point (job :data:`FOREST_ALERT_DAYS`): the JST day the rows stop.
FOREST_ALERTS_1D = "forest_alert_1d"
FOREST_ALERT_DAYS = "forest_alert_days"
FOREST_STEP_MS = 600_000
HOUR_MS = 3_600_000
#: Bucket length → the rollup's measurement (the 1 d buckets are JST days).
FOREST_LEVELS: dict[int, str] = {FOREST_STEP_MS: FOREST_10M, HOUR_MS: FOREST_1H, DAY_MS: FOREST_1D}
#: The numeric fields of a forest reading that are rolled up (docs/forest.md's register map; ``rain_tips``, a
#: counter since power-on, ``status``, a bitmask, and the configured ``lat``/``lon`` are not).
FOREST_ROLLED = (
    "soil_moisture_pct", "soil_moisture_deep_pct", "rain_mm", "rain_intensity_mm_h", "rain_cumulative_mm",
    "tilt_x_deg", "tilt_y_deg", "tilt_rate_x_deg_h", "tilt_rate_y_deg_h", "water_level_m", "battery_v",
)
#: The field whose count is a row's ``readings``.
FOREST_COUNTED = "status"


def bucket_start(ms: int, step: int) -> int:
    """The start of the ``step`` bucket holding ``ms``: JST days for a day (InfluxQL ``tz('Asia/Tokyo')``), else
    UTC-aligned (the same in JST: its offset is whole hours)."""
    return jst_day(ms) if step == DAY_MS else ms // step * step


def forest_raw_select(fields: Iterable[str], columns: Iterable[str] | None = None) -> str:
    """The ``SELECT`` list that aggregates raw forest points into rows of this shape (``_n`` always present:
    :func:`forest_row` drops it where it equals ``readings``); ``fields``: those of :data:`FOREST_ROLLED` that
    InfluxDB stores as numbers (``sum()`` of a string field fails the whole query: :func:`numeric_fields`).
    ``columns``: only those a reader needs (a field's ``_sum`` and ``_n`` go together), as :func:`forest_stored`
    reads them; InfluxDB 1.x pays per series and column, whatever the points: each one left out is time saved."""
    want = None if columns is None else set(columns)
    sel = [f'count("{FOREST_COUNTED}") AS "readings"']
    for f in fields:
        if want is not None and not want & {f + "_sum", f + "_n", f + "_min", f + "_max"}:
            continue
        sel += [f'sum("{f}") AS "{f}_sum"', f'count("{f}") AS "{f}_n"']
        sel += [f'{k}("{f}") AS "{f}_{k}"' for k in ("min", "max") if want is None or f"{f}_{k}" in want]
    return ", ".join(sel)


#: A finite number as a float, else None (the kernel's one check: :func:`cityos.landslide.finite_number`).
_num = finite_number


@functools.lru_cache(maxsize=8)
def _columns(fields: tuple[str, ...]) -> tuple[tuple[str, str, str, str, str], ...]:
    """Per rolled-up field: its name and its columns' (sum, count, minimum, maximum)."""
    return tuple((f, f + "_sum", f + "_n", f + "_min", f + "_max") for f in fields)


def forest_row(rec: Mapping[str, Any], fields: tuple[str, ...] = FOREST_ROLLED) -> dict[str, float | int]:
    """A stored or raw-aggregated record (columns as :func:`forest_raw_select` names them; others ignored) as a
    row: ``readings`` and, per field with values, ``_sum`` (and of ``_min``/``_max`` those read) and ``_n`` where
    it differs from ``readings``. A field whose aggregates read are not all finite numbers is left out.
    ``fields``: the rolled-up fields of the row's family (the forest's, or :data:`TRUCK_ROLLED`)."""
    return _row(tuple(rec.values()), *_plan(tuple(rec), fields))


#: Per field: its sum column's name and index, the indexes of its count, minimum and maximum (None: not read),
#: and their names.
_Plan = tuple[tuple[str, int, int | None, int | None, int | None, str, str, str], ...]


@functools.lru_cache(maxsize=256)
def _plan(columns: tuple[str, ...], fields: tuple[str, ...]) -> tuple[int | None, _Plan]:
    """Where :func:`_row` finds ``readings`` and each field's columns in a record of ``columns`` (once per
    shape of InfluxDB's answer, not per row: a page is hundreds of rows)."""
    pos = {c: i for i, c in enumerate(columns)}
    return pos.get("readings"), tuple(
        (k_sum, pos[k_sum], pos.get(k_n), pos.get(k_min), pos.get(k_max), k_n, k_min, k_max)
        for _f, k_sum, k_n, k_min, k_max in _columns(fields) if k_sum in pos)


def _row(v: Sequence[Any], i_readings: int | None, plan: _Plan) -> dict[str, float | int]:
    """:func:`forest_row` of the values ``v`` of a record laid out as :func:`_plan` found."""
    readings = int(_num(v[i_readings]) or 0) if i_readings is not None else 0
    row: dict[str, float | int] = {"readings": readings}
    for k_sum, i_sum, i_n, i_min, i_max, k_n, k_min, k_max in plan:
        s = v[i_sum]
        if s is None or (s := _num(s)) is None:
            continue
        n_raw = None if i_n is None else v[i_n]
        n = readings if n_raw is None else int(n_raw) if _num(n_raw) is not None else 0
        if n <= 0:
            continue
        lo = None if i_min is None else v[i_min]
        hi = None if i_max is None else v[i_max]
        if (lo is not None and _num(lo) is None) or (hi is not None and _num(hi) is None):
            continue
        row[k_sum] = s
        if lo is not None:
            row[k_min] = float(lo)
        if hi is not None:
            row[k_max] = float(hi)
        if n != readings:
            row[k_n] = n
    return row


def forest_n(row: Mapping[str, float | int], f: str) -> int:
    """How many values of field ``f`` a row holds (0 when none)."""
    if f + "_sum" not in row:
        return 0
    return int(row.get(f + "_n", row["readings"]))


def forest_merge(rows: Iterable[Mapping[str, float | int]], fields: tuple[str, ...] = FOREST_ROLLED
                 ) -> dict[str, float | int]:
    """Rows of consecutive periods as one row of the period they make up: exact (sums and counts add up, the
    extremes of the extremes). ``fields``: as :func:`forest_row`."""
    rows = list(rows)
    readings = sum(int(r["readings"]) for r in rows)
    out: dict[str, float | int] = {"readings": readings}
    for f in fields:
        have = [r for r in rows if f + "_sum" in r]
        if not have:
            continue
        n = sum(forest_n(r, f) for r in have)
        out[f + "_sum"] = math.fsum(float(r[f + "_sum"]) for r in have)
        for k, pick in ((f + "_min", min), (f + "_max", max)):
            if all(k in r for r in have):
                out[k] = pick(float(r[k]) for r in have)
        if n != readings:
            out[f + "_n"] = n
    return out


def forest_regroup(rows: Iterable[tuple[str, int, Mapping[str, float | int]]], step: int,
                   fields: tuple[str, ...] = FOREST_ROLLED) -> dict[tuple[str, int], dict[str, float | int]]:
    """(device, period start, row) of any finer periods → (device, ``step`` bucket start) → the merged row,
    sorted by device then time. ``fields``: as :func:`forest_row`."""
    acc: dict[tuple[str, int], list[Mapping[str, float | int]]] = defaultdict(list)
    for dev, t, row in rows:
        acc[(dev, bucket_start(t, step))].append(row)
    return {k: v[0] if len(v) == 1 else forest_merge(v, fields) for k, v in sorted(acc.items())}


def numeric_fields(query: QueryFn, db: str, measurement: str) -> tuple[set[str], set[str]]:
    """(fields of ``measurement`` stored as numbers in some shard, fields stored only as another type)."""
    types: dict[str, set[str]] = defaultdict(set)
    for result in query_results(*query(db, f'SHOW FIELD KEYS FROM "{measurement}"')):
        for s in result.get("series", []):
            for key, typ in s.get("values", []):
                types[str(key)].add(str(typ))
    numbers = {f for f, t in types.items() if t & {"float", "integer"}}
    return numbers, set(types) - numbers


def devices_clause(devices: Iterable[str] | None) -> str:
    """`` AND`` the stations of ``devices`` (all for None) as an InfluxQL condition on the tag ``device``."""
    if devices is None:
        return ""
    ds = sorted(set(devices))
    return " AND (" + " OR ".join(f'"device" = {quote_literal(d)}' for d in ds) + ")" if ds else " AND \"device\" = ''"


def _forest_rows(results: Iterable[Mapping[str, Any]], fields: tuple[str, ...] = FOREST_ROLLED
                 ) -> list[tuple[str, int, dict[str, float | int]]]:
    out = []
    for result in results:
        for s in result.get("series", []):
            dev = (s.get("tags") or {}).get("device") or ""
            cols = tuple(s["columns"])
            i_time = cols.index("time")
            i_readings, plan = _plan(cols, fields)
            out += [(dev, int(v[i_time]), _row(v, i_readings, plan)) for v in s.get("values", [])]
    return out


def job_progress(query: QueryFn, rollup_db: str, job: str) -> int | None:
    """Where the rollup's ``job`` stands (its rows are complete and, for energy, frozen before it), or None:
    nothing rolled up yet, or the rollups' database not there for this user (logged, :func:`target_results`)."""
    q = f'SELECT last("until_ms") AS "until_ms" FROM "{PROGRESS}" WHERE "job" = {quote_literal(job)}'
    try:
        results = target_results(query, rollup_db, q)
    except InfluxQueryError as exc:
        if target_missing(exc, rollup_db):
            return None
        raise
    found = [r[1] for res in results for s in res.get("series", []) for r in s.get("values", [])]
    return max((int(v) for v in found if isinstance(v, int | float) and not isinstance(v, bool)), default=None)


def forest_progress(query: QueryFn, rollup_db: str) -> int | None:
    """The forest job's :func:`job_progress`. None means a reader reads raw points only: slower, never wrong (the
    forest is public-safety data; its rollups only make it fast)."""
    return job_progress(query, rollup_db, FOREST)


def forest_stored(query: QueryFn, rollup_db: str, start: int, end: int, step: int, progress: int | None,
                  devices: Iterable[str] | None = None, columns: Iterable[str] | None = None, *,
                  levels: Mapping[int, str] = FOREST_LEVELS, fields: tuple[str, ...] = FOREST_ROLLED
                  ) -> tuple[list[tuple[str, int, dict[str, float | int]]], int]:
    """The rollup's rows covering ``[start, min(end, progress))`` as far as whole rows do (``start`` a ``step``
    bucket start), each part from the coarsest level that divides ``step`` and is complete there (days before the
    progress' day, then hours, then 10 minutes; never a row reaching past ``end``): (device, period start, row),
    and where they stop (the raw points' part starts there: :func:`forest_raw`). ``columns``: those to read (a
    field's ``_sum`` and ``_n`` go together; ``readings`` is always read); None: all (a wide row costs InfluxDB
    1.x per column: read only what the answer needs). ``levels`` and ``fields``: the family's (the forest's by
    default; the trucks': :data:`TRUCK_LEVELS`, :data:`TRUCK_ROLLED`)."""
    if progress is None:
        return [], start
    sel = "*" if columns is None else ", ".join(f'"{c}"' for c in sorted({"readings", *columns}))
    pos = start
    stmts = []
    for level in sorted(levels, reverse=True):
        if level > step or step % level:
            continue
        lim = min(bucket_start(end, level), bucket_start(progress, level))
        if lim > pos:
            stmts.append(f'SELECT {sel} FROM "{levels[level]}" WHERE time >= {pos}ms AND time < {lim}ms'
                         f'{devices_clause(devices)} GROUP BY "device"')
            pos = lim
    if not stmts:
        return [], pos
    return _forest_rows(target_results(query, rollup_db, "; ".join(stmts)), fields), pos


def alert_span_fields(span: AlertSpan) -> dict[str, int]:
    """A span as the rollups store it (``criteria`` a bitmask: :func:`cityos.landslide.criteria_bits`)."""
    return {"first_ms": span.first_ms, "last_ms": span.last_ms, "readings": span.readings,
            "criteria": criteria_bits(span.criteria)}


def _alert_rows(results: Iterable[Mapping[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for result in results:
        for s in result.get("series", []):
            dev = (s.get("tags") or {}).get("device") or ""
            cols = s["columns"]
            out += [(dev, int(v[0]), dict(zip(cols, v, strict=True))) for v in s.get("values", [])]
    return out


def _span(dev: str, rec: Mapping[str, Any]) -> AlertSpan | None:
    vals = [rec.get(k) for k in ("first_ms", "last_ms", "readings", "criteria")]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return AlertSpan(dev, vals[0], vals[1], vals[2], criteria_of(vals[3]))
    return None


def stored_alert_spans(query: QueryFn, rollup_db: str, start: int, end: int, progress: int | None,
                       day_progress: int | None, devices: Iterable[str] | None = None
                       ) -> tuple[list[AlertSpan], int]:
    """The stored spans of readings at caution or above covering ``[start, min(end, progress))``: the JST days
    wholly inside it and before ``day_progress`` joined within the day (:data:`FOREST_ALERTS_1D`), the rest per
    10 minutes (``start`` 10-minute aligned); and where they stop (the raw points' part starts there). Joined
    (:func:`cityos.landslide.join_spans`), they are the episodes the readings give."""
    if progress is None:
        return [], start
    stop = max(start, min(end, progress))
    d0 = min(jst_day(start - 1) + DAY_MS, stop)  # the first whole day
    d1 = max(d0, min(jst_day(stop), day_progress if day_progress is not None else d0))
    parts = [(start, d0), (d1, stop)] if d1 > d0 else [(start, stop)]
    stmts = [f'SELECT "first_ms", "last_ms", "readings", "criteria" FROM "{FOREST_ALERTS}" WHERE time >= {a}ms '
             f'AND time < {b}ms{devices_clause(devices)} GROUP BY "device"' for a, b in parts if b > a]
    if d1 > d0:
        stmts.append(f'SELECT "first_ms", "last_ms", "readings", "criteria", "of" FROM "{FOREST_ALERTS_1D}" WHERE '
                     f'time >= {d0}ms AND time < {d1}ms{devices_clause(devices)} GROUP BY "device"')
    results = target_results(query, rollup_db, "; ".join(stmts)) if stmts else []
    spans: list[AlertSpan] = []
    for i, result in enumerate(results):
        rows = _alert_rows([result])
        if i == len(results) - 1 and d1 > d0:
            rows = _newest_day_rows(rows)
        spans += [sp for dev, _t, rec in rows if (sp := _span(dev, rec)) is not None]
    return spans, stop


def _newest_day_rows(rows: list[tuple[str, int, dict[str, Any]]]) -> list[tuple[str, int, dict[str, Any]]]:
    """The day rows of each station's day written by the newest computation of it: index (ms after the day's
    start) below the ``of`` of its first row (always rewritten)."""
    first: dict[tuple[str, int], int] = {}
    for dev, t, rec in rows:
        if t == jst_day(t) and isinstance(rec.get("of"), int):
            first[(dev, t)] = rec["of"]
    return [(dev, t, rec) for dev, t, rec in rows if t - jst_day(t) < first.get((dev, jst_day(t)), 0)]


def forest_raw(query: QueryFn, db: str, start: int, end: int, fields: Iterable[str],
               devices: Iterable[str] | None = None, step: int = FOREST_STEP_MS, columns: Iterable[str] | None = None
               ) -> list[tuple[str, int, dict[str, float | int]]]:
    """Raw forest points of ``[start, end)`` aggregated per device and ``step`` into rows of the rollup's shape;
    ``fields``: the numeric ones (:func:`numeric_fields`); ``columns``: as :func:`forest_raw_select`."""
    if end <= start:
        return []
    tz = " tz('Asia/Tokyo')" if step == DAY_MS else ""
    q = (f'SELECT {forest_raw_select(fields, columns)} FROM "{FOREST}" WHERE time >= {start}ms AND time < {end}ms'
         f'{devices_clause(devices)} GROUP BY time({step}ms), "device" fill(none){tz}')
    return _forest_rows(query_results(*query(db, q)))


# --------------------------------------------------------------------------------------------------------------
# Trucks: the NGSI-LD Vehicle's ``cargoWeight`` (docs/ngsi-ld.md "Garbage trucks") per truck (tag ``device``) and
# hour, and per truck and JST day, in rows of the forest's shape (``readings``: the instances; ``cargo_kg_sum``,
# ``_min``, ``_max``; :func:`forest_row`, :func:`forest_merge`, :func:`forest_regroup` and :func:`forest_stored`
# with :data:`TRUCK_ROLLED` and :data:`TRUCK_LEVELS`). The instances are each pickup's ``load_kg`` (the load after
# it) and, after each unload (a trip's end, ``waste_trip``), the trip's newest load less ``kg_unloaded``
# (:func:`cargo_left`): :func:`cargo_series` is the one computation of the rollup and of the API's history.

TRUCK_CARGO = "truck_cargo"
TRUCK_CARGO_1H = "truck_cargo_1h"
TRUCK_CARGO_1D = "truck_cargo_1d"
#: Bucket length → the trucks' rollup measurement (the 1 d buckets are JST days).
TRUCK_LEVELS: dict[int, str] = {HOUR_MS: TRUCK_CARGO_1H, DAY_MS: TRUCK_CARGO_1D}
#: The rows' one rolled-up field (its ``_n`` is always ``readings``: never stored).
TRUCK_ROLLED = ("cargo_kg",)
WASTE_TRIP = "waste_trip"
#: A trip's load; larger is a broken point.
MAX_TRIP_KG = 100_000.0
#: An unload's cargo left is computed from its trip's newest load at most this long before the day (the API: the
#: range) it is read from.
TRIP_LOOKBACK_MS = DAY_MS
#: NGSI-LD aggregation methods a row answers (``distinctCount``, ``stddev``, ``sumsq`` need the instances).
ROLLUP_METHODS = ("totalCount", "sum", "avg", "min", "max")


def rollup_level(period_ms: int, start_ms: int, end_ms: int, levels: Iterable[int]) -> int | None:
    """The coarsest of ``levels`` whose rows make up every period starting at ``start_ms`` (``period_ms`` 0: one
    period, the whole range), or None (the forest's rule, ``cityos_api/families/forest_ngsi.py``)."""
    length = period_ms or end_ms - start_ms
    for level in sorted(levels, reverse=True):
        if bucket_start(start_ms, level) == start_ms and length % level == 0:
            return level
    return None


def servable_trip(rec: Mapping[str, Any]) -> bool:
    """A ``waste_trip`` point the API serves (a trip: ``kg_collected`` 0 to :data:`MAX_TRIP_KG`, ``pickups`` and
    ``trip_no`` numbers, ``duration_s`` 0 to 400 days); its truck's tag is checked apart."""
    kg, n, dur = _num(rec.get("kg_collected")), _num(rec.get("pickups")), _num(rec.get("duration_s"))
    return kg is not None and 0 <= kg <= MAX_TRIP_KG and n is not None and n >= 0 and dur is not None and \
        0 <= dur < 400 * 86400 and _num(rec.get("trip_no")) is not None


def cargo_left(load_kg: float, kg_unloaded: float) -> float:
    """What a truck carries after unloading ``kg_unloaded`` from ``load_kg`` (never below 0), as served."""
    return round(max(0.0, load_kg - kg_unloaded), 3)


def cargo_series(loads: Iterable[tuple[str, int, int | None, float]], unloads: Iterable[tuple[str, int, int, float]],
                 last: dict[tuple[str, int | None], float] | None = None, digits: int | None = None
                 ) -> dict[str, list[tuple[float, int]]]:
    """truck → its cargo over time, oldest first: each load ``(truck, ms, trip_no, load_kg)`` (rounded to
    ``digits`` when given: the history serves 3, InfluxDB's aggregates of the loads use them as stored), and after
    each unload ``(truck, end_ms, trip_no, kg_unloaded)`` the :func:`cargo_left` of the newest load of its truck
    and trip number at or before it (a load at the unload's millisecond is before it; none without one). ``last``:
    (truck, trip_no) → the newest load before the first of ``loads`` (updated in place)."""
    events = sorted([(ms, 0, dev, no, kg) for dev, ms, no, kg in loads] +
                    [(ms, 1, dev, no, kg) for dev, ms, no, kg in unloads], key=lambda e: (e[0], e[1]))
    last = {} if last is None else last
    out: dict[str, list[tuple[float, int]]] = {}
    for ms, kind, dev, no, kg in events:
        if kind == 0:
            last[(dev, no)] = kg
            out.setdefault(dev, []).append((kg if digits is None else round(kg, digits), ms))
        elif (before := last.get((dev, no))) is not None:
            out.setdefault(dev, []).append((cargo_left(before, kg), ms))
    return out


def cargo_rows(series: Mapping[str, Iterable[tuple[float, int]]], step: int
               ) -> list[tuple[str, int, dict[str, float | int]]]:
    """:func:`cargo_series` as rows per truck and ``step`` bucket (:func:`bucket_start`): (device, bucket start,
    row), sorted; the sum exact (:func:`math.fsum`)."""
    acc: dict[tuple[str, int], list[float]] = defaultdict(list)
    for dev, inst in series.items():
        for v, ms in inst:
            acc[(dev, bucket_start(ms, step))].append(float(v))
    return [(dev, t, {"readings": len(vs), "cargo_kg_sum": math.fsum(vs), "cargo_kg_min": min(vs),
                      "cargo_kg_max": max(vs)}) for (dev, t), vs in sorted(acc.items())]


def truck_progress(query: QueryFn, rollup_db: str) -> int | None:
    """The trucks' cargo job's :func:`job_progress`: None (nothing rolled up, no rollups' database) means a reader
    aggregates the raw points, as it did before the rollup."""
    return job_progress(query, rollup_db, TRUCK_CARGO)


# --------------------------------------------------------------------------------------------------------------
# Buses: the NGSI-LD Vehicle's speed, heading and occupancy per bus and hour and per bus and JST day, in the
# forest's row shape (``readings``; per field ``_sum``, ``_n``, ``_min``, ``_max``), each field over its servable
# values only (as the API's raw aggregates: a point outside a field's range leaves that field out, not the point).

BUS_POSITION = "bus_position"
BUS_VEHICLE = "bus_vehicle"
BUS_VEHICLE_1H = "bus_vehicle_1h"
BUS_VEHICLE_1D = "bus_vehicle_1d"
#: Bucket length → the buses' rollup measurement (the 1 d buckets are JST days).
BUS_LEVELS: dict[int, str] = {HOUR_MS: BUS_VEHICLE_1H, DAY_MS: BUS_VEHICLE_1D}
#: The rolled-up fields and their servable ranges (``cityos_api.gtfs_rt.Position``'s; the NGSI-LD Vehicle's).
BUS_VALID: dict[str, tuple[float, float]] = {"speed_kmh": (0.0, 1000.0), "bearing_deg": (0.0, 360.0),
                                             "occupancy_pct": (0.0, 10_000.0)}
BUS_ROLLED = tuple(BUS_VALID)


def field_rows(query: QueryFn, db: str, measurement: str, valid: Mapping[str, tuple[float, float]], start: int,
               end: int, step: int, devices: Iterable[str] | None = None
               ) -> list[tuple[str, int, dict[str, float | int]]]:
    """Raw points of ``measurement`` in ``[start, end)`` aggregated per device and ``step`` bucket (JST days for a
    day) into rows of the forest's shape, each field of ``valid`` over its values within its range (one statement
    per field, one request); ``readings``: the most values of any field (a field's ``_n`` kept where it differs)."""
    if end <= start:
        return []
    fields = list(valid)
    tz = " tz('Asia/Tokyo')" if step == DAY_MS else ""
    stmts = [f'SELECT count("{f}") AS "n", sum("{f}") AS "sum", min("{f}") AS "min", max("{f}") AS "max" FROM '
             f'"{measurement}" WHERE time >= {start}ms AND time < {end}ms AND "{f}" >= {lo!r} AND "{f}" <= {hi!r}'
             f'{devices_clause(devices)} GROUP BY time({step}ms), "device" fill(none){tz}'
             for f, (lo, hi) in valid.items()]
    acc: dict[tuple[str, int], dict[str, float | int]] = {}
    for f, result in zip(fields, query_results(*query(db, "; ".join(stmts))), strict=True):
        for s in result.get("series", []):
            dev = (s.get("tags") or {}).get("device") or ""
            for v in s.get("values", []):
                t, n, total, lo, hi = v
                n, total = _num(n), _num(total)
                if not n or total is None or _num(lo) is None or _num(hi) is None:
                    continue
                acc.setdefault((dev, int(t)), {}).update(
                    {f + "_sum": total, f + "_n": int(n), f + "_min": float(lo), f + "_max": float(hi)})
    out = []
    for (dev, t), row in sorted(acc.items()):
        readings = max(int(row[f + "_n"]) for f in fields if f + "_n" in row)
        for f in fields:
            if row.get(f + "_n") == readings:
                del row[f + "_n"]
        out.append((dev, t, {"readings": readings, **row}))
    return out


def bus_progress(query: QueryFn, rollup_db: str) -> int | None:
    """The buses' job's :func:`job_progress` (None: the API aggregates raw points, as before the rollup)."""
    return job_progress(query, rollup_db, BUS_VEHICLE)
