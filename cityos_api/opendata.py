"""Open data from the buses: ridership per stop and hour, app riders' origin-destination pairs per month, with
small counts suppressed (docs/privacy.md, "Open data"; the wire contract in docs/bus.md).

* **Primary suppression**: a published count from 1 to k - 1 (k = ``[open_data] min_count``, 10 by default: the
  MHLW NDB convention) is hidden: ``null`` with ``<field>_suppressed = true``. **0 is published**: no person is
  behind it, and a planner must tell "nobody boarded" from "hidden".
* **No totals** (per stop, per hour, per day, per route) are published, and each dataset has one granularity
  (route x stop x hour; route x origin x destination x month): the route filter selects rows of the same table,
  it never sums routes. A reader's sum of published cells is no disclosure.
* **Complementary suppression** against the totals a reader knows anyway: everyone who boards a bus alights from
  it, so over the visits of a set of trips, boardings minus alightings is about zero, a known total in all but
  name. For each set of cells that holds whole trips (:func:`balance_relations`), the hidden cells must include
  boardings *and* alightings (the smallest non-zero cell of the other kind is hidden too): then the balance
  determines no hidden cell and bounds none from above. :func:`suppress` enforces it
  for any set of linear relations and, in general, audits that no hidden cell is determined by them (exact
  linear algebra), adding cells until none is.

The pure part (aggregation, suppression, rendering) has no I/O; :func:`fetch_visits` and :func:`fetch_od_counts`
read InfluxDB through a :data:`cityos_api.gtfs_rt.QueryFn` (InfluxQL over the v1 ``/query`` API). The rider
pseudonyms of ``bus_od`` are never selected: the OD query counts points per tag set on the server.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from fractions import Fraction
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cityos.influx import InfluxQueryError, QueryFn, query_results

__all__ = [
    "DEFAULT_MIN_COUNT", "JST", "TIME_ZONE", "Publication", "StopHourly", "Visit", "balance_relations",
    "day_bounds_ms", "determined", "fetch_od_counts", "fetch_visits", "half_up", "iso_jst", "month_bounds_ms",
    "od_monthly", "od_rule", "parse_day", "parse_month", "stop_hourly", "stop_hourly_rule", "suppress", "to_csv",
]

TIME_ZONE = "Asia/Tokyo"
try:
    JST: tzinfo = ZoneInfo(TIME_ZONE)
except ZoneInfoNotFoundError:  # no tz database (a slim container without tzdata): Japan has had no DST since 1951
    JST = timezone(timedelta(hours=9), "JST")
DEFAULT_MIN_COUNT = 10
MEASURES = ("boardings", "alightings")

K = TypeVar("K", bound=Hashable)

# ---- suppression (pure) ---------------------------------------------------------------------------------------


def determined(hidden: Collection[K], relations: Sequence[Mapping[K, int]]) -> set[K]:
    """The hidden cells a reader can compute exactly from the published cells and ``relations`` (each a set of
    cells with coefficients whose weighted sum the reader knows). Cell x is determined iff the unit vector of x
    is in the row space of the relations restricted to the hidden cells: iff the reduced row echelon form has
    that unit vector as a row. Exact (fractions), so no tolerance decides it."""
    cols = {key: j for j, key in enumerate(hidden)}
    n = len(cols)
    rows = []
    for rel in relations:
        row = [Fraction(0)] * n
        for key, coef in rel.items():
            if key in cols:
                row[cols[key]] = Fraction(coef)
        if any(row):
            rows.append(row)
    r = 0
    for c in range(n):
        if r == len(rows):
            break
        pivot = next((i for i in range(r, len(rows)) if rows[i][c]), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        pv = rows[r][c]
        rows[r] = [x / pv for x in rows[r]]
        for i, row in enumerate(rows):
            if i != r and row[c]:
                f = row[c]
                rows[i] = [a - f * b for a, b in zip(row, rows[r], strict=True)]
        r += 1
    keys = list(cols)
    out = set()
    for row in rows[:r]:
        nonzero = [j for j, x in enumerate(row) if x]
        if len(nonzero) == 1:
            out.add(keys[nonzero[0]])
    return out


def suppress(values: Mapping[K, int], k: int, relations: Sequence[Mapping[K, int]] = ()) -> frozenset[K]:
    """The cells to hide: primary (1 <= value < k) and complementary, so that no hidden cell is determined by
    ``relations`` (see :func:`determined`) and every relation with hidden cells of one sign only gets one of the
    other sign too where it has a non-zero one (then the relation bounds no hidden cell from above).

    A relation that needs another hidden cell gets its smallest non-zero published cell (the other sign first;
    ties: the order of ``values``), or, with none left, its smallest published zero. Deterministic: the same
    table always hides the same cells, so two requests cannot be compared to find a difference."""
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    order = {key: i for i, key in enumerate(values)}
    for key, v in values.items():
        if v < 0:
            raise ValueError(f"negative count {v} for {key!r}")
    for rel in relations:
        for key, coef in rel.items():
            if key not in order:
                raise ValueError(f"relation names a cell that is not in the table: {key!r}")
            if not coef:
                raise ValueError(f"zero coefficient for {key!r}")
    hidden = {key for key, v in values.items() if 0 < v < k}
    while True:
        known = determined(sorted(hidden, key=order.__getitem__), relations)
        changed = False
        for rel in relations:
            hid = [key for key in rel if key in hidden]
            if not hid:
                continue
            signs = {rel[key] > 0 for key in hid}
            published = [key for key in rel if key not in hidden]
            other = [key for key in published if values[key] > 0 and (rel[key] > 0) not in signs]
            if not (len(signs) == 1 and other) and not known.intersection(hid):
                continue
            pool = other or [key for key in published if values[key] > 0] or published
            if not pool:
                continue  # every cell of this relation is hidden: nothing more it can give
            hidden.add(min(pool, key=lambda key: (values[key], order[key])))
            changed = True
            break
        if not changed:
            return frozenset(hidden)


def half_up(x: float) -> int:
    """A sum of estimates as whole passengers (half up; sums of 3-decimal floats are cleaned first)."""
    return math.floor(round(x, 6) + 0.5)


# ---- stop x hour (pure) ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Visit:
    """One ``bus_stop`` point: a bus's visit to a stop (docs/bus.md, wire contract)."""

    ts_ms: int
    route: str  # the route tag
    stop_id: str  # the exact GTFS stop_id (value), or the tag when the value is missing
    trip: str  # one trip of one vehicle: device and trip tag
    boardings: float | None
    alightings: float | None
    complete: bool | None

    @property
    def counted(self) -> bool:
        """Only complete visits count: an incomplete one has no boardings or alightings (never guessed)."""
        return self.complete is True and self.boardings is not None and self.alightings is not None


HourCell = tuple[str, str, int]  # route, stop_id, hour (JST)


def jst_hour(ts_ms: int) -> tuple[date, int]:
    t = datetime.fromtimestamp(ts_ms / 1000, JST)
    return t.date(), t.hour


def balance_relations(trip_cells: Mapping[str, Collection[HourCell]]) -> list[dict[tuple[HourCell, str], int]]:
    """The relations a reader knows without being told: over whole trips, boardings minus alightings is about
    zero. A set of cells is a known relation when it holds all visits of the trips in it: the connected
    components of "one trip visited both cells". Each relation: +1 for boardings, -1 for alightings."""
    parent: dict[HourCell, HourCell] = {}

    def find(c: HourCell) -> HourCell:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for cells in trip_cells.values():
        first = None
        for c in sorted(cells):
            parent.setdefault(c, c)
            if first is None:
                first = c
            else:
                parent[find(c)] = find(first)
    groups: dict[HourCell, list[HourCell]] = defaultdict(list)
    for c in sorted(parent):
        groups[find(c)].append(c)
    relations = []
    for members in sorted(groups.values()):
        rel: dict[tuple[HourCell, str], int] = {}
        for c in members:
            rel[(c, "boardings")] = 1
            rel[(c, "alightings")] = -1
        relations.append(rel)
    return relations


@dataclass(frozen=True)
class StopHourly:
    day: date
    cells: list[dict[str, Any]]
    visits_counted: int
    visits_left_out: int


def stop_hourly(visits: Iterable[Visit], day: date, k: int) -> StopHourly:
    """Boardings and alightings per route, stop and JST hour of ``day``, summed over trips, rounded to whole
    passengers, suppressed. Visits on other days are ignored; incomplete ones are counted as left out."""
    sums: dict[HourCell, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    trip_cells: dict[str, set[HourCell]] = defaultdict(set)
    counted = left_out = 0
    for v in visits:
        d, hour = jst_hour(v.ts_ms)
        if d != day:
            continue
        if not v.counted:
            left_out += 1
            continue
        counted += 1
        cell = (v.route, v.stop_id, hour)
        s = sums[cell]
        s[0] += v.boardings or 0.0
        s[1] += v.alightings or 0.0
        s[2] += 1
        trip_cells[v.trip].add(cell)
    cells = sorted(sums)
    values = {(c, m): half_up(sums[c][i]) for c in cells for i, m in enumerate(MEASURES)}
    hidden = suppress(values, k, balance_relations(trip_cells))
    rows = []
    for c in cells:
        row: dict[str, Any] = {"route": c[0], "stop_id": c[1], "hour": c[2], "visits": int(sums[c][2])}
        for m in MEASURES:
            row[m] = None if (c, m) in hidden else values[(c, m)]
            row[f"{m}_suppressed"] = (c, m) in hidden
        rows.append(row)
    return StopHourly(day=day, cells=rows, visits_counted=counted, visits_left_out=left_out)


# ---- origin x destination (pure) ------------------------------------------------------------------------------

OdCell = tuple[str, str, str]  # route, origin stop_id, destination stop_id


def od_monthly(counts: Mapping[OdCell, int], k: int) -> list[dict[str, Any]]:
    """App riders per route, origin and destination stop: pairs with no rider are not listed (they are 0), no
    totals, counts 1 to k - 1 hidden. No relation among these cells is known to a reader, so none is hidden
    for complementation."""
    cells = sorted(c for c, n in counts.items() if n > 0)
    values = {c: counts[c] for c in cells}
    hidden = suppress(values, k)
    return [{"route": c[0], "origin_stop_id": c[1], "destination_stop_id": c[2],
             "riders": None if c in hidden else values[c], "riders_suppressed": c in hidden} for c in cells]


# ---- periods, parameters --------------------------------------------------------------------------------------

_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH_RE = re.compile(r"^\d{4}-\d{2}$")
_FIRST_YEAR, _LAST_YEAR = 1971, 9998  # epoch ms positive (JST is ahead of UTC), the next day exists


def parse_day(raw: str) -> date:
    """``YYYY-MM-DD``, a calendar day in Japan (JST); ValueError with a message a user can act on."""
    msg = f"date: expected YYYY-MM-DD, a calendar day in Japan time (JST), got {raw!r}"
    if not _DAY_RE.match(raw):
        raise ValueError(msg)
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise ValueError(msg) from None
    if not _FIRST_YEAR <= day.year <= _LAST_YEAR:
        raise ValueError(f"{msg}: years {_FIRST_YEAR} to {_LAST_YEAR}")
    return day


def parse_month(raw: str) -> tuple[int, int]:
    msg = f"month: expected YYYY-MM, a calendar month in Japan time (JST), got {raw!r}"
    if not _MONTH_RE.match(raw) or not 1 <= int(raw[5:]) <= 12:
        raise ValueError(msg)
    if not _FIRST_YEAR <= int(raw[:4]) <= _LAST_YEAR:
        raise ValueError(f"{msg}: years {_FIRST_YEAR} to {_LAST_YEAR}")
    return int(raw[:4]), int(raw[5:])


def _ms(t: datetime) -> int:
    return int(t.timestamp()) * 1000


def day_bounds_ms(day: date) -> tuple[int, int]:
    """[start, end) of a JST calendar day, epoch ms."""
    start = datetime(day.year, day.month, day.day, tzinfo=JST)
    return _ms(start), _ms(start + timedelta(days=1))


def month_bounds_ms(year: int, month: int) -> tuple[int, int]:
    """[start, end) of a JST calendar month, epoch ms."""
    nxt = (year + 1, 1) if month == 12 else (year, month + 1)
    return _ms(datetime(year, month, 1, tzinfo=JST)), _ms(datetime(*nxt, 1, tzinfo=JST))


def iso_jst(ts_ms: float) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, JST).isoformat(timespec="seconds")


# ---- InfluxDB (through a QueryFn) -----------------------------------------------------------------------------


def _rows(query: QueryFn, db: str, q: str) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    status, raw = query(db, q)
    for result in query_results(status, raw):
        for s in result.get("series", []):
            if s.get("partial") or result.get("partial"):
                # a truncated answer (max-row-limit) would publish counts that are too small, and a later full
                # answer would differ from it by exactly the rows left out
                raise InfluxQueryError(status, "InfluxDB returned a partial result (max-row-limit?)")
            tags = s.get("tags") or {}
            for row in s.get("values", []):
                yield tags, dict(zip(s["columns"], row, strict=True))


def fetch_visits(query: QueryFn, db: str, start_ms: int, end_ms: int) -> list[Visit]:
    """Every ``bus_stop`` point in [start, end): counts and the complete flag, one :class:`Visit` each."""
    q = (f'SELECT "boardings","alightings","complete","stop_id" FROM "bus_stop" '
         f"WHERE time >= {int(start_ms)}ms AND time < {int(end_ms)}ms GROUP BY *")
    out = []
    for tags, rec in _rows(query, db, q):
        out.append(Visit(
            ts_ms=int(rec["time"]), route=tags.get("route", ""),
            stop_id=rec.get("stop_id") or tags.get("stop", ""),
            trip=f"{tags.get('device', '')}/{tags.get('trip', '')}",
            boardings=rec.get("boardings"), alightings=rec.get("alightings"), complete=rec.get("complete")))
    return out


def fetch_od_counts(query: QueryFn, db: str, start_ms: int, end_ms: int) -> dict[OdCell, int]:
    """Riders per (route, origin, destination) in [start, end) of alighting time, counted by InfluxDB: the
    ``rider`` field is never read. Stops are the exact GTFS ids where ``bus_stop`` has them for the tag (the
    ``bus_od`` tags are lower-cased ids), else the tag."""
    span = f"time >= {int(start_ms)}ms AND time < {int(end_ms)}ms"
    exact: dict[str, str] = {}
    for tags, rec in _rows(query, db, f'SELECT "stop_id" FROM "bus_stop" WHERE {span} GROUP BY "stop" '
                                      f"ORDER BY time DESC LIMIT 1"):
        if tags.get("stop") and rec.get("stop_id"):
            exact[tags["stop"]] = rec["stop_id"]
    counts: dict[OdCell, int] = defaultdict(int)
    q = f'SELECT COUNT("ride_s") FROM "bus_od" WHERE {span} GROUP BY "route","board_stop","alight_stop"'
    for tags, rec in _rows(query, db, q):
        board, alight = tags.get("board_stop", ""), tags.get("alight_stop", "")
        counts[(tags.get("route", ""), exact.get(board, board), exact.get(alight, alight))] += int(rec["count"])
    return dict(counts)


# ---- rendering --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Publication:
    """What every response says about itself (settings: ``[open_data]``)."""

    min_count: int = DEFAULT_MIN_COUNT
    license: str = "CC BY 4.0"
    license_url: str = "https://creativecommons.org/licenses/by/4.0/deed.ja"
    publisher: str = "津山市 (Tsuyama City)"

    def envelope(self, dataset: str, title: str, source: str, rule: str, now_ms: float, **period: Any
                 ) -> dict[str, Any]:
        return {
            "dataset": dataset,
            "title": title,
            **period,
            "time_zone": TIME_ZONE,
            "publisher": self.publisher,
            "license": {"name": self.license, "url": self.license_url},
            "source": source,
            "generated_at": iso_jst(now_ms),
            "suppression": {
                "min_count": self.min_count,
                "rule": rule,
                "marker": "the value is null and <field>_suppressed is true",
                "totals": "none published",
            },
        }


def stop_hourly_rule(k: int) -> str:
    return (f"counts from 1 to {k - 1} are hidden; 0 is published; no totals are published; "
            "complementary: within each set of cells that holds whole trips (where boardings and alightings "
            "balance), hidden cells include both boardings and alightings, the smallest non-zero cell of the "
            "other kind being hidden too")


def od_rule(k: int) -> str:
    return f"counts from 1 to {k - 1} are hidden; pairs not listed had no rider; no totals are published"


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], **const: Any) -> bytes:
    """CSV for spreadsheets in Japan: UTF-8 with a BOM (Excel reads it as UTF-8, not Shift_JIS), CRLF, a
    header row; ``const`` columns first (e.g. the date). Hidden values are empty cells, flags true/false."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([*const, *columns])

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    for row in rows:
        w.writerow([*(cell(v) for v in const.values()), *(cell(row[c]) for c in columns)])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")
