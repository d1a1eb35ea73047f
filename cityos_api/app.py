"""The City OS API (FastAPI): the buses' GTFS-Realtime VehiclePositions feed and their ridership as open data.

``cityos api --config api.toml`` runs it with uvicorn. Config (TOML, unknown keys rejected)::

    [influx]
    url = "http://127.0.0.1:8086"
    db = "cityos"
    username = "cityos_reader"   # a user with READ only: the API never writes
    password_file = "/etc/cityos/influx-reader.password"   # 0600, owned by the API's service user

    [gtfs_rt]
    max_age_s = 300              # vehicles with no position for this long are left out of the feed

    [open_data]
    min_count = 10               # k: counts from 1 to k - 1 are hidden (at least 2)
    publish_after_h = 48         # a day (month) is published this long after it ends, once late data is in
    license = "CC BY 4.0"
    license_url = "https://creativecommons.org/licenses/by/4.0/deed.ja"
    publisher = "津山市 (Tsuyama City)"

Each request reads InfluxDB once (one InfluxQL query for every vehicle): journey planners poll every 10-30 s,
which InfluxDB answers in milliseconds, so there is no cache to go stale.

Open data (``cityos_api/opendata.py``, docs/privacy.md "Open data"), JSON or ``format=csv`` (UTF-8 with BOM):
``GET /open/v1/bus/stop-hourly?date=YYYY-MM-DD[&route=...]`` and ``GET /open/v1/bus/od-monthly?month=YYYY-MM``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cityos.config import HttpUrl, load_toml
from cityos.influx import InfluxClient, InfluxError, InfluxSettings
from cityos.wire import ID_PATTERN
from cityos_api.gtfs_rt import DEFAULT_MAX_AGE_S, build_feed, feed_json, latest_positions, query_fn
from cityos_api.opendata import (
    DEFAULT_MIN_COUNT,
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
    to_csv,
)

__all__ = ["ApiSettings", "create_app", "load_settings"]

PROTOBUF = "application/x-protobuf"
CSV = "text/csv; charset=utf-8"
_ROUTE_RE = re.compile(ID_PATTERN)
Format = Literal["json", "csv"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GtfsRtSettings(_Section):
    max_age_s: float = Field(default=DEFAULT_MAX_AGE_S, gt=0)


class OpenDataSettings(_Section):
    min_count: int = Field(default=DEFAULT_MIN_COUNT, ge=2)
    publish_after_h: float = Field(default=48.0, ge=0)
    license: str = Field(default=Publication.license, min_length=1)
    license_url: HttpUrl = Publication.license_url
    publisher: str = Field(default=Publication.publisher, min_length=1)


class ApiSettings(_Section):
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    gtfs_rt: GtfsRtSettings = Field(default_factory=GtfsRtSettings)
    open_data: OpenDataSettings = Field(default_factory=OpenDataSettings)


def load_settings(path: str | Path) -> ApiSettings:
    """Load and validate the TOML config (:class:`cityos.config.ConfigError` names the field and problem)."""
    return load_toml(ApiSettings, path)


def create_app(settings: ApiSettings, *, transport: Any = None) -> FastAPI:
    """The API app; ``transport`` (an httpx transport) is for tests that stand in for InfluxDB."""
    client = InfluxClient.from_settings(settings.influx, transport=transport)
    query = query_fn(client)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        client.close()

    app = FastAPI(title="CityOS API", summary="Tsuyama City OS: open data from the city's sensors",
                  lifespan=lifespan)

    def feed_now() -> Any:
        now = time.time()
        try:
            positions = latest_positions(query, settings.influx.db, settings.gtfs_rt.max_age_s,
                                         now_ms=int(now * 1000))
        except InfluxError as exc:
            # a journey planner should keep its last feed rather than read an empty one as "no buses"
            raise HTTPException(status_code=503, detail=f"InfluxDB unavailable: {exc}") from None
        return build_feed(positions, now)

    @app.get("/gtfs-rt/vehicle-positions.pb", response_class=Response,
             responses={200: {"content": {PROTOBUF: {}}}})
    def vehicle_positions_pb() -> Response:
        """GTFS-Realtime VehiclePositions (protobuf), full dataset."""
        return Response(feed_now().SerializeToString(), media_type=PROTOBUF)

    @app.get("/gtfs-rt/vehicle-positions.json", response_class=Response,
             responses={200: {"content": {"application/json": {}}}})
    def vehicle_positions_json() -> Response:
        """The same feed as JSON (protobuf's JSON mapping), for people."""
        return Response(feed_json(feed_now()), media_type="application/json")

    # ---- open data (cityos_api/opendata.py; docs/privacy.md, "Open data")
    od = settings.open_data
    pub = Publication(min_count=od.min_count, license=od.license, license_url=od.license_url,
                      publisher=od.publisher)
    license_link = {"Link": f'<{od.license_url}>; rel="license"'}

    def parsed(parse: Callable[[str], Any], raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None

    def published(end_ms: int, what: str) -> None:
        """A period is published once it is over and the buses' late data is in: a later answer that differed
        (a visit backfilled after the first download) would reveal the difference, however small."""
        ready = end_ms + od.publish_after_h * 3_600_000
        if time.time() * 1000 < ready:
            raise HTTPException(status_code=404, detail=(
                f"{what} is not published yet: from {iso_jst(ready)} ({od.publish_after_h:g} h after it ends, "
                "when late data from the buses has arrived)"))

    def read(fetch: Callable[..., Any], *args: Any) -> Any:
        try:
            return fetch(query, settings.influx.db, *args)
        except InfluxError as exc:
            raise HTTPException(status_code=503, detail=f"InfluxDB unavailable: {exc}") from None

    def respond(fmt: str, doc: dict[str, Any], columns: list[str], filename: str, **const: Any) -> Response:
        if fmt == "csv":
            return Response(to_csv(doc["cells"], columns, **const), media_type=CSV, headers={
                **license_link, "Content-Disposition": f'attachment; filename="{filename}.csv"'})
        return JSONResponse(doc, headers=license_link)

    data_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/json": {}, "text/csv": {}}},
        404: {"description": "the period is not published yet"},
        422: {"description": "a parameter is not valid (the message says which and why)"},
        503: {"description": "InfluxDB unavailable"},
    }

    @app.get("/open/v1/bus/stop-hourly", response_class=Response, responses=data_responses)
    def bus_stop_hourly(
        day: Annotated[str, Query(alias="date", description="calendar day in Japan (JST), YYYY-MM-DD")],
        route: Annotated[str | None, Query(description="only this route (as in the `route` column)")] = None,
        fmt: Annotated[Format, Query(alias="format")] = "json",
    ) -> Response:
        """Boardings and alightings per route, stop and hour (JST) of one day, summed over trips (estimates,
        whole passengers), from complete stop visits; counts from 1 to k - 1 hidden, no totals."""
        d = parsed(parse_day, day)
        if route is not None and not _ROUTE_RE.match(route):
            raise HTTPException(status_code=422, detail=(
                f"route: expected a route as in the data's route column (lower-case letters, digits, _ and -), "
                f"got {route!r}"))
        start, end = day_bounds_ms(d)
        published(end, d.isoformat())
        table = stop_hourly(read(fetch_visits, start, end), d, od.min_count)
        cells = [c for c in table.cells if route is None or c["route"] == route]
        doc = pub.envelope(
            "bus-stop-hourly", "路線バス 停留所別・時間帯別 乗降者数（推計） / bus boardings and alightings per stop "
            "and hour (estimates)",
            "bus_stop: per stop visit, passengers estimated from the Bluetooth devices aboard by the bus "
            "gateways (docs/bus.md); whole passengers, rounded half up after summing",
            stop_hourly_rule(od.min_count), time.time() * 1000, date=d.isoformat(), route=route)
        doc["visits"] = {"counted": table.visits_counted, "left_out": table.visits_left_out,
                         "left_out_reason": "incomplete visit (complete = false): its boardings and alightings "
                                            "are unknown, never guessed"}
        doc["cells"] = cells
        name = f"bus-stop-hourly_{d.isoformat()}" + (f"_{route}" if route else "")
        return respond(fmt, doc, ["hour", "route", "stop_id", "visits", "boardings", "boardings_suppressed",
                                  "alightings", "alightings_suppressed"], name, date=d.isoformat())

    @app.get("/open/v1/bus/od-monthly", response_class=Response, responses=data_responses)
    def bus_od_monthly(
        month: Annotated[str, Query(description="calendar month in Japan (JST), YYYY-MM")],
        fmt: Annotated[Format, Query(alias="format")] = "json",
    ) -> Response:
        """Origin-destination pairs of the city app's consenting riders per route and month (of alighting,
        JST); counts from 1 to k - 1 hidden, no totals, never a rider pseudonym."""
        y, m = parsed(parse_month, month)
        label = f"{y:04d}-{m:02d}"
        start, end = month_bounds_ms(y, m)
        published(end, label)
        cells = od_monthly(read(fetch_od_counts, start, end), od.min_count)
        doc = pub.envelope(
            "bus-od-monthly", "路線バス 乗車停留所・降車停留所別 利用者数（市アプリ利用者）/ bus origin-destination "
            "pairs of city app riders",
            "bus_od: riders of the city app who opted in, one pair per ride, counted in the month the ride "
            "ended; not all passengers", od_rule(od.min_count), time.time() * 1000, month=label)
        doc["cells"] = cells
        return respond(fmt, doc, ["route", "origin_stop_id", "destination_stop_id", "riders",
                                  "riders_suppressed"], f"bus-od-monthly_{label}", month=label)

    return app
