"""The JSON bodies of the buses' routes (``cityos_api/families/bus.py``) as the OpenAPI document types them:
schemas only (:class:`cityos_api.core.Body`), the routes build the answers.

* ``/v1/bus/vehicle-positions.json``: the GTFS-Realtime feed in protobuf's JSON mapping (field names as in the
  .proto, enums by name, 64-bit integers as strings of digits; a field not set is absent), with the fields
  :mod:`cityos_api.gtfs_rt` sets.
* The open data (``stop-hourly``, ``od-monthly``): a suppressed count is null with ``<field>_suppressed: true``
  (docs/privacy.md "Open data").
"""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from typing import Literal

from pydantic import Field

from cityos_api.core import Body, absent

__all__ = ["BusOdMonthly", "BusStopHourly", "BusStops", "GtfsRtFeed"]

_DIGITS = r"^[0-9]+$"


# ---- GTFS-Realtime VehiclePositions (protobuf's JSON mapping) ---------------------------------------------------
class GtfsRtHeader(Body):
    gtfs_realtime_version: Literal["2.0"]
    incrementality: Literal["FULL_DATASET"]
    timestamp: str = Field(pattern=_DIGITS, description="when the feed was made, POSIX seconds (a uint64: a string)")


class GtfsRtTrip(Body):
    trip_id: str = Field(description="the GTFS-JP trip_id")
    route_id: str | None = absent("the GTFS-JP route_id; absent when unknown")
    start_date: str | None = absent("the trip's service day, YYYYMMDD; absent when unknown", pattern=r"^[0-9]{8}$")


class GtfsRtVehicleId(Body):
    id: str = Field(description="the vehicle's device id")


class GtfsRtPosition(Body):
    latitude: float = Field(description="degrees (WGS 84)")
    longitude: float = Field(description="degrees (WGS 84)")
    bearing: float | None = absent("degrees clockwise from north; absent when unknown")
    speed: float | None = absent("m/s; absent when unknown")


class GtfsRtVehiclePosition(Body):
    trip: GtfsRtTrip | None = absent("absent when the bus is on no trip")
    vehicle: GtfsRtVehicleId
    position: GtfsRtPosition
    current_stop_sequence: int | None = absent("within the trip; absent when unknown")
    stop_id: str | None = absent("the stop it is at or heading to; absent when unknown")
    current_status: Literal["STOPPED_AT", "IN_TRANSIT_TO"] | None = absent(
        "at the stop or heading to it; absent when unknown")
    timestamp: str = Field(pattern=_DIGITS, description="the position's time, POSIX seconds (a uint64: a string)")
    occupancy_status: Literal["EMPTY", "MANY_SEATS_AVAILABLE", "FEW_SEATS_AVAILABLE", "STANDING_ROOM_ONLY",
                              "CRUSHED_STANDING_ROOM_ONLY", "FULL"] | None = absent(
        "a coarse class of occupancy_percentage; absent without a configured capacity")
    occupancy_percentage: int | None = absent(
        "estimated passengers, % of the configured capacity (standing places included); absent without one")


class GtfsRtEntity(Body):
    id: str = Field(description="the vehicle's device id")
    vehicle: GtfsRtVehiclePosition


class GtfsRtFeed(Body):
    """A full-dataset VehiclePositions feed (protobuf's JSON mapping): absent fields are not set."""

    header: GtfsRtHeader
    entity: list[GtfsRtEntity] | None = absent(
        "one per vehicle seen in the last `max_age_s`, by id; absent when there is none")


# ---- stops ------------------------------------------------------------------------------------------------------
class BusStop(Body):
    stop_id: str = Field(description="GTFS-JP stop_id (the ridership data's stop_id)")
    name_ja: str = Field(description="stop_name (Japanese)")
    name_en: str = Field(description="English name (translations.txt; stop_name when it has none)")
    name_kana: str = Field(description="reading in kana (ja-Hrkt); empty when the feed has none")
    lat: float = Field(description="latitude, degrees (WGS 84)")
    lon: float = Field(description="longitude, degrees (WGS 84)")


class BusStops(Body):
    dataset: Literal["bus-stops"]
    items: list[BusStop] = Field(description="the feed's stops (not stations or entrances)")


# ---- open data --------------------------------------------------------------------------------------------------
class OpenDataLicense(Body):
    name: str = Field(description="e.g. CC BY 4.0")
    url: str = Field(description="the licence's text")


class OpenDataSuppression(Body):
    min_count: int = Field(description="k: counts from 1 to k - 1 are hidden")
    rule: str = Field(description="the suppression rule, for people")
    marker: str = Field(description="how a hidden value is shown")
    totals: str = Field(description="totals published (none)")


class _Publication(Body):
    title: str = Field(description="the dataset's title (Japanese / English)")
    time_zone: Literal["Asia/Tokyo"]
    publisher: str = Field(description="who publishes the data")
    license: OpenDataLicense
    source: str = Field(description="where the counts come from, for people")
    generated_at: datetime = Field(description="when the answer was made (JST, with offset)")
    suppression: OpenDataSuppression


class BusVisits(Body):
    counted: int = Field(description="complete stop visits counted")
    left_out: int = Field(description="incomplete visits left out")
    left_out_reason: str = Field(description="why they are left out, for people")


class BusStopHour(Body):
    hour: int = Field(ge=0, le=23, description="hour of the day, JST")
    route: str = Field(description="the route (the data's route tag)")
    stop_id: str = Field(description="GTFS-JP stop_id")
    visits: int = Field(description="complete stop visits in the cell")
    boardings: int | None = Field(description="passengers boarding (estimate, whole passengers); null when hidden")
    boardings_suppressed: bool = Field(description="true: boardings hidden (1 to k - 1, or complementary)")
    alightings: int | None = Field(description="passengers alighting (estimate, whole passengers); null when "
                                               "hidden")
    alightings_suppressed: bool = Field(description="true: alightings hidden (1 to k - 1, or complementary)")


class BusStopHourly(_Publication):
    dataset: Literal["bus-stop-hourly"]
    date: dt.date = Field(description="the JST calendar day")
    route: str | None = Field(description="the route asked for; null: every route")
    visits: BusVisits
    cells: list[BusStopHour] = Field(description="per route, stop and hour with a counted visit; no totals")


class BusOdPair(Body):
    route: str = Field(description="the route (the data's route tag)")
    origin_stop_id: str = Field(description="GTFS-JP stop_id boarded at")
    destination_stop_id: str = Field(description="GTFS-JP stop_id alighted at")
    riders: int | None = Field(description="app riders (who opted in); null when hidden")
    riders_suppressed: bool = Field(description="true: riders hidden (1 to k - 1)")


class BusOdMonthly(_Publication):
    dataset: Literal["bus-od-monthly"]
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$", description="the JST calendar month, YYYY-MM")
    cells: list[BusOdPair] = Field(description="pairs with at least one rider (a pair not listed had none)")
