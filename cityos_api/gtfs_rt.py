"""GTFS-Realtime VehiclePositions from the buses' ``bus_position`` points (docs/bus.md, the wire contract).

Journey planners poll this feed; a position that is old misleads them more than no position, so vehicles whose
newest point is older than ``max_age_s`` are left out. InfluxDB is read only through the v1 ``/query`` API: a
*query callable* (InfluxQL in, HTTP status and body out) keeps this module free of any HTTP client, and
:func:`query_fn` makes one of the kernel's InfluxDB client (:mod:`cityos.influx`).

Occupancy is an estimate from in-vehicle Bluetooth devices: ``occupancy_percentage`` is the estimate rounded,
``occupancy_status`` a coarse class of it (:data:`OCCUPANCY_STEPS`). Both are left out without a configured
vehicle capacity (no ``occupancy_pct`` on the wire): a passenger count alone says nothing about free seats.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from google.transit import gtfs_realtime_pb2 as rt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cityos.influx import InfluxClient, QueryFn, query_results
from cityos.wire import DEFAULT_MAX_FUTURE_S

__all__ = [
    "MEASUREMENT",
    "OCCUPANCY_STEPS",
    "Position",
    "QueryFn",
    "build_feed",
    "latest_positions",
    "occupancy_status",
    "query_fn",
    "read_positions",
]

MEASUREMENT = "bus_position"
#: A vehicle whose newest position is older than this is not in the feed (positions come every 15 s).
DEFAULT_MAX_AGE_S = 300

VP = rt.VehiclePosition
#: Upper bounds (exclusive, percent of the configured capacity) of each GTFS-RT occupancy status; at or above
#: the last bound the bus is FULL. Capacity counts standing places (a Japanese route bus: about a third seated),
#: so "many seats" ends well below half full. The estimate's 90 % interval is wide; these are coarse on purpose.
OCCUPANCY_STEPS: tuple[tuple[float, int], ...] = (
    (5.0, VP.EMPTY),
    (40.0, VP.MANY_SEATS_AVAILABLE),
    (70.0, VP.FEW_SEATS_AVAILABLE),
    (90.0, VP.STANDING_ROOM_ONLY),
    (100.0, VP.CRUSHED_STANDING_ROOM_ONLY),
)


class Position(BaseModel):
    """The newest ``bus_position`` point of one vehicle, as stored (wire contract: docs/bus.md)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    device: str
    ts_ms: int = Field(alias="time", ge=0, lt=2**53)
    # Ranges the feed can carry (the wire contract only asks for finite numbers): a point outside them is not
    # served (it once took the whole feed down: occupancy_pct 1e30 overflowed the protobuf's uint32).
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    speed_kmh: float | None = Field(default=None, ge=0, le=1000)
    bearing_deg: float | None = Field(default=None, ge=0, le=360)
    trip_id: str = ""
    route_id: str = ""
    start_date: str = ""
    stop_id: str = ""
    stop_sequence: float | None = Field(default=None, ge=0, lt=2**32)
    stopped: bool | None = None
    occupancy: float | None = Field(default=None, ge=0)
    occupancy_pct: float | None = Field(default=None, ge=0, le=10_000)


def _positions_query(max_age_s: float, now_ms: int) -> str:
    """Newest point per vehicle. Not ``last(*)``: on InfluxDB 1.6 it takes each field's own last value, so a
    field missing from the newest point (no bearing, no capacity) would come from an older one."""
    since = now_ms - int(max_age_s * 1000)
    until = now_ms + DEFAULT_MAX_FUTURE_S * 1000  # the clock skew the ingest accepts; explicit: no server now()
    return (f'SELECT * FROM "{MEASUREMENT}" WHERE time > {since}ms AND time <= {until}ms '
            f'GROUP BY "device" ORDER BY time DESC LIMIT 1')


def read_positions(query: QueryFn, db: str, max_age_s: float = DEFAULT_MAX_AGE_S,
                   now_ms: int | None = None) -> tuple[list[Position], int]:
    """The newest position of each vehicle seen in the last ``max_age_s`` seconds (of ``now_ms``, default: this
    machine's clock), sorted by vehicle id, and how many newest points could not be served (out of range, a
    field missing: valid on the wire, left out of the feed). Raises :class:`cityos.influx.InfluxQueryError` on a
    failed query."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    status, raw = query(db, _positions_query(max_age_s, now))
    out, bad = [], 0
    for result in query_results(status, raw):
        for s in result.get("series", []):
            for row in s.get("values", []):
                rec: dict[str, Any] = {k: v for k, v in zip(s["columns"], row, strict=True) if v is not None}
                rec["device"] = (s.get("tags") or {}).get("device", rec.get("device", ""))
                try:
                    out.append(Position.model_validate(rec))
                except ValidationError:
                    bad += 1
    return sorted(out, key=lambda p: p.device), bad


def latest_positions(query: QueryFn, db: str, max_age_s: float = DEFAULT_MAX_AGE_S,
                     now_ms: int | None = None) -> list[Position]:
    """:func:`read_positions` without the count of points left out."""
    return read_positions(query, db, max_age_s, now_ms)[0]


def query_fn(client: InfluxClient) -> QueryFn:
    """The :data:`QueryFn` of the kernel's InfluxDB client (POST ``/query``, ``epoch=ms``)."""
    return lambda db, q: client.query_raw(q, db)


def occupancy_status(pct: float) -> int:
    """GTFS-RT ``OccupancyStatus`` for an occupancy of ``pct`` percent of capacity (:data:`OCCUPANCY_STEPS`)."""
    for bound, status in OCCUPANCY_STEPS:
        if pct < bound:
            return status
    return VP.FULL


def _vehicle(p: Position) -> rt.VehiclePosition:
    v = rt.VehiclePosition()
    if p.trip_id:
        v.trip.trip_id = p.trip_id
        if p.route_id:
            v.trip.route_id = p.route_id
        if p.start_date:
            v.trip.start_date = p.start_date
    v.vehicle.id = p.device
    v.position.latitude = p.lat
    v.position.longitude = p.lon
    if p.bearing_deg is not None:
        v.position.bearing = p.bearing_deg
    if p.speed_kmh is not None:
        v.position.speed = p.speed_kmh / 3.6  # GTFS-RT speed is m/s
    if p.trip_id and p.stop_sequence is not None:  # a sequence means something only within a trip
        v.current_stop_sequence = int(p.stop_sequence)
    if p.stop_id:
        v.stop_id = p.stop_id
    if p.stopped is not None and (p.stop_id or v.HasField("current_stop_sequence")):
        v.current_status = VP.STOPPED_AT if p.stopped else VP.IN_TRANSIT_TO
    v.timestamp = p.ts_ms // 1000
    if p.occupancy_pct is not None:
        v.occupancy_percentage = max(0, round(p.occupancy_pct))
        v.occupancy_status = occupancy_status(p.occupancy_pct)
    return v


def build_feed(positions: Iterable[Position], now: float) -> rt.FeedMessage:
    """A full-dataset VehiclePositions feed at ``now`` (epoch seconds): one entity per vehicle, id = vehicle."""
    feed = rt.FeedMessage()
    feed.header.gtfs_realtime_version = "2.0"
    feed.header.incrementality = rt.FeedHeader.FULL_DATASET
    feed.header.timestamp = int(now)
    for p in positions:
        e = feed.entity.add()
        e.id = p.device
        e.vehicle.CopyFrom(_vehicle(p))
    return feed


def feed_json(feed: rt.FeedMessage) -> str:
    """The feed as JSON (protobuf's JSON mapping, field names as in the .proto), for people."""
    from google.protobuf import json_format

    return json_format.MessageToJson(feed, preserving_proto_field_name=True, indent=2)
