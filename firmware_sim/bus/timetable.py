"""The simulator's own reading of a GTFS(-JP) feed: which trips a bus runs on a day, their calls and stops.

The simulator is the world, not the gateway: it shares no code with ``edge/`` (a bug in the gateway's feed
loader must not be copied into the ground truth it is scored against), as the truck simulator keeps its own
point-in-polygon. It reads only what it drives by: stops (position), trips (block), stop times and the calendar
with its exceptions. It trusts the feed (the committed one is checked by the gateway's loader tests).
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class SimStop:
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class SimTrip:
    id: str
    service_id: str
    block_id: str


@dataclass(frozen=True, slots=True)
class SimCall:
    stop_id: str
    sequence: int
    arrival_s: int  # seconds after the service day's time zero
    departure_s: int


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def _secs(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return (h * 60 + m) * 60 + s


class Timetable:
    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        agency = _rows(root / "agency.txt")
        self.tz = (
            ZoneInfo(agency[0].get("agency_timezone") or "Asia/Tokyo") if agency else ZoneInfo("Asia/Tokyo")
        )
        self.stops = {
            r["stop_id"]: SimStop(float(r["stop_lat"]), float(r["stop_lon"]))
            for r in _rows(root / "stops.txt")
        }
        self.trips = {
            r["trip_id"]: SimTrip(r["trip_id"], r["service_id"], r.get("block_id", ""))
            for r in _rows(root / "trips.txt")
        }
        calls: dict[str, list[SimCall]] = {}
        for r in _rows(root / "stop_times.txt"):
            arr, dep = r["arrival_time"] or r["departure_time"], r["departure_time"] or r["arrival_time"]
            calls.setdefault(r["trip_id"], []).append(
                SimCall(r["stop_id"], int(r["stop_sequence"]), _secs(arr), _secs(dep))
            )
        self.calls = {t: tuple(sorted(cs, key=lambda c: c.sequence)) for t, cs in calls.items()}
        self._calendar = {r["service_id"]: r for r in _rows(root / "calendar.txt")}
        self._exceptions = {
            (r["service_id"], r["date"]): r["exception_type"] for r in _rows(root / "calendar_dates.txt")
        }

    def runs(self, service_id: str, day: dt.date) -> bool:
        ex = self._exceptions.get((service_id, day.strftime("%Y%m%d")))
        if ex is not None:
            return ex == "1"
        c = self._calendar.get(service_id)
        if c is None:
            return False
        days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        ymd = day.strftime("%Y%m%d")
        return c["start_date"] <= ymd <= c["end_date"] and c[days[day.weekday()]] == "1"

    def trips_on(self, day: dt.date) -> list[SimTrip]:
        """The day's trips in order of their first departure."""
        out = [t for t in self.trips.values() if t.id in self.calls and self.runs(t.service_id, day)]
        return sorted(out, key=lambda t: (self.calls[t.id][0].departure_s, t.id))

    def stop(self, stop_id: str) -> SimStop:
        return self.stops[stop_id]

    def stop_times_of(self, trip_id: str) -> tuple[SimCall, ...]:
        return self.calls[trip_id]

    def service_day_ms(self, day: dt.date) -> int:
        """GTFS's time zero of a service day: noon minus 12 h, local time."""
        noon = dt.datetime(day.year, day.month, day.day, 12, tzinfo=self.tz)
        return round((noon.timestamp() - 12 * 3600) * 1000)
