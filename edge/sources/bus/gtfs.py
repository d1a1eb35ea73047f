"""GTFS / GTFS-JP static feeds: the timetable a bus gateway matches its GPS fixes against (sans-I/O apart from reading).

Only what the bus gateway needs is read: ``agency.txt`` (the timezone), ``stops.txt``, ``routes.txt``,
``trips.txt``, ``stop_times.txt``, ``calendar.txt`` and, when present, ``calendar_dates.txt``. Every other file
(``agency_jp.txt``, ``feed_info.txt``, ``translations.txt``, fares, shapes ...) and every extra column (GTFS-JP's
``jp_*``, ``platform_code`` ...) is ignored, so a real GTFS-JP feed loads as is.

Files are read with the stdlib ``csv`` as UTF-8, a byte-order mark tolerated (Excel-made feeds have one). A feed
that is unusable raises :class:`FeedError` naming the file, the line and the column: a bad timetable is a config
error at startup, not a wrong stop event at run time.

Times are seconds after the service day's "noon minus 12 h" (GTFS): they may pass 24:00:00 for trips running after
midnight. Intermediate stop times left empty (``timepoint=0``) are interpolated linearly by stop position.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_TIME_RE = re.compile(r"^(\d{1,3}):([0-5]\d):([0-5]\d)$")
_DATE_RE = re.compile(r"^\d{8}$")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

REQUIRED: dict[str, tuple[str, ...]] = {
    "agency.txt": ("agency_name", "agency_timezone"),
    "stops.txt": ("stop_id", "stop_name", "stop_lat", "stop_lon"),
    "routes.txt": ("route_id", "route_type"),
    "trips.txt": ("route_id", "service_id", "trip_id"),
    "stop_times.txt": ("trip_id", "arrival_time", "departure_time", "stop_id", "stop_sequence"),
    "calendar.txt": ("service_id", *_DAYS, "start_date", "end_date"),
    "calendar_dates.txt": ("service_id", "date", "exception_type"),
}


class FeedError(ValueError):
    """The feed is unusable; the message names the file, the line (1 = header) and the column when known."""

    def __init__(self, file: str, detail: str, line: int | None = None, column: str | None = None) -> None:
        where = file + (f":{line}" if line is not None else "") + (f": column {column!r}" if column else "")
        super().__init__(f"{where}: {detail}")
        self.file, self.line, self.column, self.detail = file, line, column, detail


@dataclass(frozen=True, slots=True)
class Stop:
    id: str
    name: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    short_name: str
    long_name: str


@dataclass(frozen=True, slots=True)
class Trip:
    id: str
    route_id: str
    service_id: str
    headsign: str = ""
    block_id: str = ""


@dataclass(frozen=True, slots=True)
class StopTime:
    """One scheduled call; times are seconds after the service day's start (may exceed 86 400)."""

    trip_id: str
    stop_id: str
    sequence: int
    arrival_s: int
    departure_s: int


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    weekdays: tuple[bool, ...]  # Monday first
    start: date
    end: date
    added: frozenset[date] = frozenset()
    removed: frozenset[date] = frozenset()

    def runs_on(self, day: date) -> bool:
        if day in self.removed:
            return False
        if day in self.added:
            return True
        return self.start <= day <= self.end and self.weekdays[day.weekday()]


@dataclass
class Feed:
    timezone: str
    stops: dict[str, Stop]
    routes: dict[str, Route]
    trips: dict[str, Trip]
    services: dict[str, Service]
    stop_times: dict[str, tuple[StopTime, ...]]  # by trip id, in stop_sequence order
    source: str = ""
    _tz: ZoneInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tz = ZoneInfo(self.timezone)

    def stop(self, stop_id: str) -> Stop:
        return self.stops[stop_id]

    def stop_times_of(self, trip_id: str) -> tuple[StopTime, ...]:
        return self.stop_times[trip_id]

    def trips_on(self, day: date) -> list[Trip]:
        """Trips running on this service day, by scheduled start."""
        out = [t for t in self.trips.values() if self.services[t.service_id].runs_on(day)]
        return sorted(out, key=lambda t: (self.stop_times[t.id][0].departure_s, t.id))

    def service_day_ms(self, day: date) -> int:
        """Epoch ms of the service day's time zero: noon minus 12 h in the agency's timezone (GTFS's definition)."""
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=self._tz)
        return round((noon.timestamp() - 12 * 3600) * 1000)

    def local_date(self, ts_ms: int) -> date:
        return datetime.fromtimestamp(ts_ms / 1000, self._tz).date()


# --- loading ------------------------------------------------------------------------------------------------


def load_feed(path: str | Path) -> Feed:
    """Read and check a GTFS(-JP) feed directory (see the module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise FeedError(
            str(root), "not a directory (a GTFS feed is a directory of .txt files; unzip it first)"
        )
    agency = list(_rows(root, "agency.txt"))
    if not agency:
        raise FeedError("agency.txt", "no agency")
    line, row = agency[0]
    tz = row["agency_timezone"]
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise FeedError("agency.txt", f"unknown timezone {tz!r}", line, "agency_timezone") from None

    stops: dict[str, Stop] = {}
    for line, row in _rows(root, "stops.txt"):
        sid = _id(row, "stop_id", "stops.txt", line)
        if sid in stops:
            raise FeedError("stops.txt", f"duplicate stop_id {sid!r}", line, "stop_id")
        if row.get("location_type", "") not in ("", "0"):
            continue  # stations, entrances, boarding areas: a bus stops at stops (location_type 0)
        lat = _float(row, "stop_lat", "stops.txt", line, -90, 90)
        lon = _float(row, "stop_lon", "stops.txt", line, -180, 180)
        stops[sid] = Stop(sid, row["stop_name"], lat, lon)

    routes: dict[str, Route] = {}
    for line, row in _rows(root, "routes.txt"):
        rid = _id(row, "route_id", "routes.txt", line)
        routes[rid] = Route(rid, row.get("route_short_name", ""), row.get("route_long_name", ""))

    services = _services(root)

    trips: dict[str, Trip] = {}
    for line, row in _rows(root, "trips.txt"):
        tid = _id(row, "trip_id", "trips.txt", line)
        if tid in trips:
            raise FeedError("trips.txt", f"duplicate trip_id {tid!r}", line, "trip_id")
        if row["route_id"] not in routes:
            raise FeedError("trips.txt", f"unknown route_id {row['route_id']!r}", line, "route_id")
        if row["service_id"] not in services:
            raise FeedError(
                "trips.txt", f"service_id {row['service_id']!r} is not in calendar", line, "service_id"
            )
        trips[tid] = Trip(
            tid, row["route_id"], row["service_id"], row.get("trip_headsign", ""), row.get("block_id", "")
        )

    return Feed(tz, stops, routes, trips, services, _stop_times(root, stops, trips), str(root))


def _rows(root: Path, name: str, optional: bool = False) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row with stripped values) for each data row; checks the required columns."""
    p = root / name
    if not p.is_file():
        if optional:
            return
        raise FeedError(name, "missing (a required GTFS file)")
    with p.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise FeedError(name, "empty file (no header)", 1) from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise FeedError(name, f"unreadable: {exc}", 1) from None
        missing = [c for c in REQUIRED[name] if c not in header]
        if missing:
            raise FeedError(name, f"missing required column(s) {', '.join(missing)}", 1)
        try:
            for raw in reader:
                line = reader.line_num
                if not any(v.strip() for v in raw):
                    continue  # blank line
                if len(raw) != len(header):
                    raise FeedError(name, f"{len(raw)} fields, the header has {len(header)}", line)
                yield line, {h: v.strip() for h, v in zip(header, raw, strict=True)}
        except (csv.Error, UnicodeDecodeError) as exc:
            raise FeedError(name, f"unreadable: {exc}", reader.line_num + 1) from None


def _id(row: dict[str, str], col: str, name: str, line: int) -> str:
    v = row[col]
    if not v:
        raise FeedError(name, "empty id", line, col)
    return v


def _float(row: dict[str, str], col: str, name: str, line: int, lo: float, hi: float) -> float:
    try:
        v = float(row[col])
    except ValueError:
        raise FeedError(name, f"{row[col]!r} is not a number", line, col) from None
    if not lo <= v <= hi:
        raise FeedError(name, f"{v} is outside [{lo}, {hi}]", line, col)
    return v


def parse_time(value: str) -> int:
    """``H:MM:SS`` / ``HH:MM:SS`` (hours may pass 24) → seconds; ValueError otherwise."""
    m = _TIME_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a GTFS time (HH:MM:SS)")
    return int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])


def _date(row: dict[str, str], col: str, name: str, line: int) -> date:
    v = row[col]
    try:
        if not _DATE_RE.match(v):
            raise ValueError
        return date(int(v[:4]), int(v[4:6]), int(v[6:]))
    except ValueError:
        raise FeedError(name, f"{v!r} is not a date (YYYYMMDD)", line, col) from None


def _services(root: Path) -> dict[str, Service]:
    out: dict[str, Service] = {}
    for line, row in _rows(root, "calendar.txt"):
        sid = _id(row, "service_id", "calendar.txt", line)
        days = []
        for d in _DAYS:
            if row[d] not in ("0", "1"):
                raise FeedError("calendar.txt", f"{row[d]!r} must be 0 or 1", line, d)
            days.append(row[d] == "1")
        start, end = (
            _date(row, "start_date", "calendar.txt", line),
            _date(row, "end_date", "calendar.txt", line),
        )
        if end < start:
            raise FeedError("calendar.txt", f"end_date {end} is before start_date {start}", line, "end_date")
        out[sid] = Service(sid, tuple(days), start, end)
    added: dict[str, set[date]] = {}
    removed: dict[str, set[date]] = {}
    for line, row in _rows(root, "calendar_dates.txt", optional=True):
        sid = _id(row, "service_id", "calendar_dates.txt", line)
        day = _date(row, "date", "calendar_dates.txt", line)
        kind = row["exception_type"]
        if kind not in ("1", "2"):
            raise FeedError(
                "calendar_dates.txt", f"{kind!r} must be 1 (added) or 2 (removed)", line, "exception_type"
            )
        if sid not in out:  # a service defined by calendar_dates alone: never runs on a weekday pattern
            out[sid] = Service(sid, (False,) * 7, day, day)
        (added if kind == "1" else removed).setdefault(sid, set()).add(day)
    for sid, svc in list(out.items()):
        out[sid] = Service(
            sid,
            svc.weekdays,
            svc.start,
            svc.end,
            frozenset(added.get(sid, ())),
            frozenset(removed.get(sid, ())),
        )
    return out


def _stop_times(
    root: Path, stops: dict[str, Stop], trips: dict[str, Trip]
) -> dict[str, tuple[StopTime, ...]]:
    name = "stop_times.txt"
    # per trip: (sequence, line, stop_id, arrival or None, departure or None)
    raw: dict[str, list[tuple[int, int, str, int | None, int | None]]] = {}
    for line, row in _rows(root, name):
        tid = row["trip_id"]
        if tid not in trips:
            raise FeedError(name, f"unknown trip_id {tid!r}", line, "trip_id")
        if row["stop_id"] not in stops:
            raise FeedError(name, f"unknown stop_id {row['stop_id']!r} (or not a stop)", line, "stop_id")
        try:
            seq = int(row["stop_sequence"])
            if seq < 0:
                raise ValueError
        except ValueError:
            raise FeedError(
                name, f"{row['stop_sequence']!r} is not a non-negative integer", line, "stop_sequence"
            ) from None
        times: list[int | None] = []
        for col in ("arrival_time", "departure_time"):
            v = row[col]
            try:
                times.append(parse_time(v) if v else None)
            except ValueError as exc:
                raise FeedError(name, str(exc), line, col) from None
        arr, dep = times
        if (arr is None) != (dep is None):  # GTFS: both or neither; tolerate one by copying it
            arr = dep = arr if arr is not None else dep
        if arr is not None and dep is not None and dep < arr:
            raise FeedError(
                name, f"departure {row['departure_time']} is before arrival {row['arrival_time']}", line
            )
        # The stop's own id string, not the row's copy: a city's feed repeats each stop id in thousands of calls.
        raw.setdefault(tid, []).append((seq, line, stops[row["stop_id"]].id, arr, dep))

    out: dict[str, tuple[StopTime, ...]] = {}
    for tid in trips:
        calls = sorted(raw.get(tid, []))
        if len(calls) < 2:
            raise FeedError(name, f"trip {tid!r} has {len(calls)} stop time(s); a trip needs at least 2")
        for (s0, l0, *_), (s1, l1, *_) in pairwise(calls):
            if s0 == s1:
                raise FeedError(
                    name, f"trip {tid!r}: stop_sequence {s1} repeats line {l0}", l1, "stop_sequence"
                )
        for k in (0, -1):
            if calls[k][3] is None:
                raise FeedError(
                    name, f"trip {tid!r}: the first and last stop need times", calls[k][1], "arrival_time"
                )
        arr = [c[3] for c in calls]
        dep = [c[4] for c in calls]
        _interpolate(arr, dep)
        prev = -1
        for (_, line, *_), a, d in zip(calls, arr, dep, strict=True):
            assert a is not None and d is not None
            if a < prev:
                raise FeedError(
                    name, f"trip {tid!r}: time goes backwards along stop_sequence", line, "arrival_time"
                )
            prev = d
        out[tid] = tuple(
            StopTime(tid, c[2], c[0], a, d)  # type: ignore[arg-type]
            for c, a, d in zip(calls, arr, dep, strict=True)
        )
    return out


def _interpolate(arr: list[int | None], dep: list[int | None]) -> None:
    """Fill empty intermediate times linearly by position between the surrounding timed stops (in place)."""
    last = 0
    for i in range(1, len(arr)):
        if arr[i] is None:
            continue
        gap = i - last
        d0, a1 = dep[last], arr[i]
        assert d0 is not None and a1 is not None
        for k in range(last + 1, i):
            arr[k] = dep[k] = round(d0 + (a1 - d0) * (k - last) / gap)
        last = i
