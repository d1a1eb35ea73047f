"""The buses' routes: GTFS-Realtime vehicle positions (open: journey planners poll it) and their ridership as
open data with small counts suppressed (``cityos_api/opendata.py``, docs/privacy.md "Open data").

Each feed request reads InfluxDB once (one InfluxQL query for every vehicle): planners poll every 10-30 s, which
InfluxDB answers in milliseconds, so there is no cache to go stale. A stored position that cannot be served (a
coordinate out of range, an occupancy of 1e30) leaves that vehicle out and is counted; it never fails the feed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Response

from cityos.config import ConfigError
from cityos.wire import ID_PATTERN
from cityos_api.auth import OPEN
from cityos_api.core import Api, json_body
from cityos_api.families.bus_models import BusOdMonthly, BusStopHourly, BusStops, GtfsRtFeed
from cityos_api.gtfs_rt import build_feed, feed_json, read_positions
from cityos_api.opendata import (
    Publication,
    day_bounds_ms,
    fetch_od_counts,
    fetch_visits,
    iso_jst,
    month_bounds_ms,
    od_monthly,
    od_rule,
    parse_day,
    parse_month,
    stop_hourly,
    stop_hourly_rule,
)
from cityos_api.params import FormatQuery

__all__ = ["router"]

PROTOBUF = "application/x-protobuf"
#: The published tables kept by the API (``Api.frozen_days`` names).
STOP_HOURLY = "bus_stop_hourly"
OD_MONTHLY = "bus_od_monthly"
T = TypeVar("T")
_ROUTE_RE = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class Stop:
    stop_id: str
    name_ja: str
    name_en: str
    name_kana: str
    lat: float
    lon: float


def load_stops(gtfs_dir: Path | None) -> dict[str, Stop]:
    """The feed's stops with their names (GTFS-JP: ``stop_name`` is Japanese; ``translations.txt`` gives ``en`` and
    ``ja-Hrkt``, in the GTFS form with ``record_id``). Read once at start: a bad feed is a config error naming the
    file, not a 500 later. Only these two files are read (the gateway's full GTFS reader lives on the edge)."""
    if gtfs_dir is None:
        return {}
    names: dict[tuple[str, str], str] = {}
    try:
        tr = gtfs_dir / "translations.txt"
        if tr.exists():
            with tr.open(encoding="utf-8-sig", newline="") as fh:
                for row in csv.DictReader(fh):
                    if row.get("table_name") == "stops" and row.get("field_name") == "stop_name":
                        names[(row.get("record_id") or "", row.get("language") or "")] = row.get("translation") or ""
        out = {}
        with (gtfs_dir / "stops.txt").open(encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                if (row.get("location_type") or "0") not in ("", "0"):
                    continue  # stations and entrances: riders board at stops
                sid = row["stop_id"]
                out[sid] = Stop(sid, row["stop_name"], names.get((sid, "en"), row["stop_name"]),
                                names.get((sid, "ja-Hrkt"), ""), float(row["stop_lat"]), float(row["stop_lon"]))
        return out
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"places.gtfs_dir: {gtfs_dir}: cannot read its stops ({type(exc).__name__}: "
                          f"{str(exc)[:80]})") from None


def router(api: Api) -> APIRouter:
    r = APIRouter(tags=["bus"])
    settings = api.settings
    stops = load_stops(settings.places.gtfs_dir)
    max_age_s = settings.gtfs_rt.max_age_s

    def feed_now() -> Any:
        now = api.clock()
        # a journey planner should keep its last feed rather than read an empty one as "no buses": 503, not []
        positions, bad = api.read(read_positions, max_age_s, int(now * 1000))
        api.skipped("bus_position", bad)
        return build_feed(positions, now)

    @api.route(r, "/v1/bus/vehicle-positions.pb", scope=OPEN, response_class=Response,
               responses={200: {"content": {PROTOBUF: {}}}})
    def vehicle_positions_pb() -> Response:
        """GTFS-Realtime VehiclePositions (protobuf), full dataset."""
        return Response(feed_now().SerializeToString(), media_type=PROTOBUF)

    @api.route(r, "/v1/bus/vehicle-positions.json", scope=OPEN, response_class=Response,
               responses=json_body(GtfsRtFeed, csv=False))
    def vehicle_positions_json() -> Response:
        """The same feed as JSON (protobuf's JSON mapping), for people."""
        return Response(feed_json(feed_now()), media_type="application/json")

    @api.route(r, "/v1/bus/stops", scope=OPEN, response_class=Response, responses=json_body(BusStops))
    def bus_stops(fmt: FormatQuery = "json") -> Response:
        """The buses' stops from the GTFS-JP feed (``[places] gtfs_dir``): id, Japanese, English and kana names,
        position. The ids are the ``stop_id`` of the ridership data."""
        items = [{"stop_id": s.stop_id, "name_ja": s.name_ja, "name_en": s.name_en, "name_kana": s.name_kana,
                  "lat": s.lat, "lon": s.lon} for s in stops.values()]
        return api.respond(fmt, {"dataset": "bus-stops", "items": items}, items,
                           ["stop_id", "name_ja", "name_en", "name_kana", "lat", "lon"], "bus-stops")

    # ---- open data
    od = settings.open_data
    pub = Publication(min_count=od.min_count, license=od.license, license_url=od.license_url,
                      publisher=od.publisher)
    license_link = {"Link": f'<{od.license_url}>; rel="license"'}

    def parsed(parse: Any, raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None

    def published(end_ms: int, what: str) -> None:
        """A period is published once it is over and the buses' late data is in: a later answer that differed
        (a visit backfilled after the first download) would reveal the difference, however small."""
        ready = end_ms + od.publish_after_h * 3_600_000
        if api.clock() * 1000 < ready:
            raise HTTPException(status_code=404, detail=(
                f"{what} is not published yet: from {iso_jst(ready)} ({od.publish_after_h:g} h after it ends, "
                "when late data from the buses has arrived)"))

    def kept(table: str, start_ms: int, compute: Callable[[], T]) -> T:
        """A published period's table as first computed by this API (:class:`~cityos_api.core.FrozenDays`,
        keyed by the period's start): read once, the same answer for good, which is what publishing means here
        (above); a restart reads it again."""
        days = api.frozen_days(table)
        found = days.get(start_ms)
        if found is None:
            found = compute()
            days.put(start_ms, found)
        return found  # type: ignore[no-any-return]

    data_responses: dict[int | str, dict[str, Any]] = {
        404: {"description": "the period is not published yet"},
        422: {"description": "a parameter is not valid (the message says which and why)"},
        503: {"description": "InfluxDB unavailable"},
    }

    @api.route(r, "/v1/bus/stop-hourly", scope=OPEN, response_class=Response,
               responses={**data_responses, **json_body(BusStopHourly)})
    def bus_stop_hourly(
        day: Annotated[str, Query(alias="date", description="calendar day in Japan (JST), YYYY-MM-DD")],
        route: Annotated[str | None, Query(description="only this route (as in the `route` column)")] = None,
        fmt: FormatQuery = "json",
    ) -> Response:
        """Boardings and alightings per route, stop and hour (JST) of one day, summed over trips (estimates,
        whole passengers), from complete stop visits; counts from 1 to k - 1 hidden, no totals."""
        d = parsed(parse_day, day)
        if route is not None and not _ROUTE_RE.fullmatch(route):
            raise HTTPException(status_code=422, detail=(
                f"route: expected a route as in the data's route column (lower-case letters, digits, _ and -), "
                f"got {route[:40]!r}"))
        start, end = day_bounds_ms(d)
        published(end, d.isoformat())
        table = kept(STOP_HOURLY, start, lambda: stop_hourly(api.read(fetch_visits, start, end), d, od.min_count))
        cells = [c for c in table.cells if route is None or c["route"] == route]
        doc = pub.envelope(
            "bus-stop-hourly", "路線バス 停留所別・時間帯別 乗降者数（推計） / bus boardings and alightings per stop "
            "and hour (estimates)",
            "bus_stop: per stop visit, passengers estimated from the Bluetooth devices aboard by the bus "
            "gateways (docs/bus.md); whole passengers, rounded half up after summing",
            stop_hourly_rule(od.min_count), api.clock() * 1000, date=d.isoformat(), route=route)
        doc["visits"] = {"counted": table.visits_counted, "left_out": table.visits_left_out,
                         "left_out_reason": "incomplete visit (complete = false): its boardings and alightings "
                                            "are unknown, never guessed"}
        doc["cells"] = cells
        name = f"bus-stop-hourly_{d.isoformat()}" + (f"_{route}" if route else "")
        return api.respond(fmt, doc, cells, ["hour", "route", "stop_id", "visits", "boardings",
                                             "boardings_suppressed", "alightings", "alightings_suppressed"],
                           name, license_link, date=d.isoformat())

    @api.route(r, "/v1/bus/od-monthly", scope=OPEN, response_class=Response,
               responses={**data_responses, **json_body(BusOdMonthly)})
    def bus_od_monthly(
        month: Annotated[str, Query(description="calendar month in Japan (JST), YYYY-MM")],
        fmt: FormatQuery = "json",
    ) -> Response:
        """Origin-destination pairs of the city app's consenting riders per route and month (of alighting,
        JST); counts from 1 to k - 1 hidden, no totals, never a rider pseudonym."""
        y, m = parsed(parse_month, month)
        label = f"{y:04d}-{m:02d}"
        start, end = month_bounds_ms(y, m)
        published(end, label)
        cells = kept(OD_MONTHLY, start, lambda: od_monthly(api.read(fetch_od_counts, start, end), od.min_count))
        doc = pub.envelope(
            "bus-od-monthly", "路線バス 乗車停留所・降車停留所別 利用者数（市アプリ利用者）/ bus origin-destination "
            "pairs of city app riders",
            "bus_od: riders of the city app who opted in, one pair per ride, counted in the month the ride "
            "ended; not all passengers", od_rule(od.min_count), api.clock() * 1000, month=label)
        doc["cells"] = cells
        return api.respond(fmt, doc, cells, ["route", "origin_stop_id", "destination_stop_id", "riders",
                                             "riders_suppressed"], f"bus-od-monthly_{label}", license_link,
                           month=label)

    return r
