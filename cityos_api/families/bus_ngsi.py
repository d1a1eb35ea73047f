"""The buses' stops and vehicles as NGSI-LD entities (the facade: ``cityos_api/ngsi_ld``; the mapping and its
extensions: docs/ngsi-ld.md, "Buses").

* ``urn:ngsi-ld:PublicTransportStop:<stop_id>`` (dataModel.UrbanMobility ``PublicTransportStop``), from the GTFS-JP
  feed (``bus.load_stops``, ``[places] gtfs_dir``; read once at start): ``name`` (Japanese, ``stop_name``),
  extensions ``nameEn`` and ``nameKana`` (``translations.txt``; the facade has no LanguageProperty), ``stopCode``
  (the ``stop_id``, as in the ridership data), ``transportationType`` ``[3]`` (bus), ``location``. Static.
* ``urn:ngsi-ld:Vehicle:<bus>`` (dataModel.Transportation ``Vehicle``), from the newest ``bus_position`` of each
  bus as the GTFS-Realtime feed has it (``gtfs_rt.read_positions``: seen in the last ``[gtfs_rt] max_age_s``, an
  unservable newest point leaves the bus out and is counted): ``vehicleType`` ``bus``, ``category`` ``[public]``,
  ``serviceProvided`` ``[urbanTransit]``, ``fleetVehicleId``, ``location``, ``speed`` (KMH), ``heading`` (DD),
  extensions ``occupancyPercentage`` (P1) and ``occupancyStatus`` (the GTFS-RT class; both only with a configured
  capacity, as in the feed), ``tripId``, ``routeId``, ``currentStopStatus`` and the Relationship
  ``refPublicTransportStop``. History of ``location``, ``speed``, ``heading``, ``occupancyPercentage``.

Nothing else of the buses' data is read: no ``bus_od`` (its rider pseudonyms), no device counts; ridership per stop
and hour is not served here (docs/ngsi-ld.md says why).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, unquote

from google.transit import gtfs_realtime_pb2 as rt

from cityos.influx import QueryFn
from cityos.rollups import (
    BUS_LEVELS,
    BUS_POSITION,
    BUS_ROLLED,
    BUS_VALID,
    ROLLUP_METHODS,
    bus_progress,
    field_rows,
    forest_stored,
    rollup_level,
)
from cityos_api.core import Api
from cityos_api.families.bus import Stop, load_stops
from cityos_api.families.truck_ngsi import PROGRESS_TTL_S, SDM_TRANSPORT, VEHICLE_COMMON
from cityos_api.gtfs_rt import MEASUREMENT, Position, occupancy_status, read_positions
from cityos_api.ngsi_ld import (
    Aggregates,
    Attr,
    AttrInfo,
    Entity,
    History,
    InfluxFields,
    Target,
    TypeInfo,
    aggregate_rows,
    urn,
)

__all__ = ["BUS_TYPES", "BusProvider", "provider"]

SDM_MOBILITY = "https://smartdatamodels.org/dataModel.UrbanMobility/"
#: GTFS route_type of a bus.
BUS = 3

STOP = TypeInfo("PublicTransportStop", {
    "name": AttrInfo(iri="https://uri.etsi.org/ngsi-ld/name", description="the stop's name in Japanese"),
    "nameEn": AttrInfo(description="the stop's name in English (GTFS translations.txt; the Japanese name without one)"),
    "nameKana": AttrInfo(description="the stop's name in kana (GTFS translations.txt, ja-Hrkt)"),
    "stopCode": AttrInfo(iri=SDM_MOBILITY + "stopCode", description="the GTFS stop_id (as in the ridership data)"),
    "transportationType": AttrInfo(iri=SDM_MOBILITY + "transportationType",
                                   description="GTFS route types using the stop: 3, bus"),
    "location": AttrInfo("GeoProperty", iri="https://uri.etsi.org/ngsi-ld/location",
                         description="stop_lon, stop_lat (GeoJSON Point)"),
}, iri=SDM_MOBILITY + "PublicTransportStop")
VEHICLE = TypeInfo("Vehicle", {
    **VEHICLE_COMMON,
    "speed": AttrInfo(unit_code="KMH", iri=SDM_TRANSPORT + "speed", temporal=True, description="speed_kmh"),
    "heading": AttrInfo(unit_code="DD", iri=SDM_TRANSPORT + "heading", temporal=True,
                        description="bearing_deg: degrees clockwise from true north"),
    "occupancyPercentage": AttrInfo(unit_code="P1", temporal=True, description=(
        "the estimated passengers as a percentage of the configured capacity, rounded (GTFS-RT "
        "occupancy_percentage); only with a capacity")),
    "occupancyStatus": AttrInfo(description="GTFS-RT OccupancyStatus of occupancyPercentage (EMPTY ... FULL)"),
    "tripId": AttrInfo(description="GTFS trip_id of the trip the bus is on"),
    "routeId": AttrInfo(description="GTFS route_id of that trip"),
    "currentStopStatus": AttrInfo(description="STOPPED_AT or IN_TRANSIT_TO (GTFS-RT current_status) the stop of "
                                              "refPublicTransportStop"),
    "refPublicTransportStop": AttrInfo("Relationship", description="the stop the bus is at or heading to"),
}, iri=SDM_TRANSPORT + "Vehicle")
BUS_TYPES = {t.name: t for t in (STOP, VEHICLE)}
_STATIC = {"vehicleType": "bus", "category": ["public"], "serviceProvided": ["urbanTransit"]}
#: Vehicle attribute → bus_position field (location: lat and lon, read as two).
_FIELDS = {"speed": "speed_kmh", "heading": "bearing_deg", "occupancyPercentage": "occupancy_pct",
           "_lat": "lat", "_lon": "lon"}
#: The servable ranges of the fields (as gtfs_rt.Position's; the rolled-up ones the rollup's own).
_VALID = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0), **BUS_VALID}


def stop_urn(stop_id: str) -> str:
    """The stop's entity id: its GTFS stop_id, percent-encoded where a URN could not hold it."""
    return urn("PublicTransportStop", quote(stop_id, safe="-._~"))


def _stop(s: Stop) -> Entity:
    attrs = {"name": Attr(s.name_ja), "nameEn": Attr(s.name_en), "stopCode": Attr(s.stop_id),
             "transportationType": Attr([BUS]), "location": Attr({"type": "Point", "coordinates": [s.lon, s.lat]})}
    if s.name_kana:
        attrs["nameKana"] = Attr(s.name_kana)
    return Entity(stop_urn(s.stop_id), "PublicTransportStop", attrs)


def _vehicle(p: Position) -> Entity:
    """One bus from its newest position, with what the GTFS-RT feed carries of it (``gtfs_rt._vehicle``)."""
    t = p.ts_ms
    attrs = {k: Attr(v) for k, v in _STATIC.items()} | {
        "fleetVehicleId": Attr(p.device), "location": Attr({"type": "Point", "coordinates": [p.lon, p.lat]}, t)}
    if p.speed_kmh is not None:
        attrs["speed"] = Attr(p.speed_kmh, t)
    if p.bearing_deg is not None:
        attrs["heading"] = Attr(p.bearing_deg, t)
    if p.occupancy_pct is not None:
        attrs["occupancyPercentage"] = Attr(max(0, round(p.occupancy_pct)), t)
        attrs["occupancyStatus"] = Attr(rt.VehiclePosition.OccupancyStatus.Name(occupancy_status(p.occupancy_pct)))
    if p.trip_id:
        attrs["tripId"] = Attr(p.trip_id)
        if p.route_id:
            attrs["routeId"] = Attr(p.route_id)
    if p.stop_id:
        attrs["refPublicTransportStop"] = Attr(stop_urn(p.stop_id))
        if p.stopped is not None:
            attrs["currentStopStatus"] = Attr("STOPPED_AT" if p.stopped else "IN_TRANSIT_TO")
    return Entity(urn("Vehicle", p.device), "Vehicle", attrs)


class BusProvider:
    """The buses' PublicTransportStop and Vehicle entities."""

    types = BUS_TYPES

    def __init__(self, stops: dict[str, Stop], max_age_s: float, clock: Any = time.time,
                 api: Api | None = None) -> None:
        self.stops = [_stop(s) for s in stops.values()]
        self.max_age_s = max_age_s
        self.clock = clock
        self.influx = InfluxFields(MEASUREMENT, valid=_VALID)
        rollup_db = getattr(api.settings, "rollup_db", None) if api is not None else None
        #: Where the buses' rollup stands (kept :data:`PROGRESS_TTL_S`: an older point is as right).
        self._progress = None if api is None or not rollup_db else api.snapshot(
            "bus rollup progress", lambda: api.read(lambda q, _db: bus_progress(q, rollup_db)), PROGRESS_TTL_S)

    def entities(self, api: Api) -> list[Entity]:
        positions, bad = api.read(read_positions, self.max_age_s, int(self.clock() * 1000))
        api.skipped(MEASUREMENT, bad)
        return [*self.stops, *(_vehicle(p) for p in positions)]

    def _targets(self, ids: Sequence[str]) -> dict[str, Target]:
        prefix = "urn:ngsi-ld:Vehicle:"
        return {i: Target(unquote(i[len(prefix):]), _FIELDS) for i in ids if i.startswith(prefix)}

    @staticmethod
    def _fields(attrs: Sequence[str]) -> list[str]:
        return [a for a in attrs if a in _FIELDS] + (["_lat", "_lon"] if "location" in attrs else [])

    def history(self, api: Api, ids: Sequence[str], attrs: Sequence[str], start_ms: int, end_ms: int,
                last_n: int | None, max_n: int) -> History:
        got = self.influx.history(api, self._targets(ids), self._fields(attrs), start_ms, end_ms, last_n, max_n)
        out: History = {}
        for eid, per in got.items():
            lat, lon = dict((ms, v) for v, ms in per.pop("_lat", [])), per.pop("_lon", [])
            loc = [({"type": "Point", "coordinates": [x, lat[ms]]}, ms) for x, ms in lon if ms in lat]
            if "occupancyPercentage" in per:
                per["occupancyPercentage"] = [(max(0, round(v)), ms) for v, ms in per["occupancyPercentage"]]
            if loc:
                per["location"] = loc
            if per:
                out[eid] = per
        return out

    def aggregated(self, api: Api, ids: Sequence[str], attrs: Sequence[str], methods: Sequence[str],
                   period_ms: int, start_ms: int, end_ms: int) -> Aggregates:
        """Points outside the servable ranges left out; ``location`` is a geometry, not aggregated. From the buses'
        rollup (``bus_vehicle_1h``/``_1d``, docs/api.md "Pre-aggregation") before its progress point and the raw
        points after it when the periods are whole rows (hours from a whole hour, JST days from a JST midnight) and
        the methods are the rows' (:func:`~cityos_api.ngsi_ld.aggregate_rows`); else InfluxDB's aggregation of
        the raw points: the same numbers either way."""
        numeric = [a for a in attrs if a in _FIELDS and not a.startswith("_")]
        targets = self._targets(ids)
        level = rollup_level(period_ms, start_ms, end_ms, BUS_LEVELS)
        progress = self._progress.get() if self._progress is not None and level is not None and \
            set(methods) <= set(ROLLUP_METHODS) else None
        if level is None or progress is None:
            return self.influx.aggregated(api, targets, numeric, methods, period_ms, start_ms, end_ms)
        fields = sorted({_FIELDS[a] for a in numeric})
        devices = sorted({t.tag_value for t in targets.values()})
        columns = [f"{f}_{k}" for f in fields for k in ("sum", "n", *(m for m in ("min", "max") if m in methods))]
        rollup_db = api.settings.rollup_db

        def fetch(query: QueryFn, db: str) -> list[tuple[str, int, dict[str, float | int]]]:
            rows, cut = forest_stored(query, rollup_db, start_ms, end_ms, level, progress, devices, columns,
                                      levels=BUS_LEVELS, fields=BUS_ROLLED)
            return rows + field_rows(query, db, BUS_POSITION, {f: BUS_VALID[f] for f in fields}, cut, end_ms, level,
                                     devices)

        return aggregate_rows(api.read(fetch) if fields and devices else [], targets, numeric, methods, period_ms,
                              start_ms, end_ms, BUS_ROLLED)


def provider(api: Api) -> BusProvider:
    return BusProvider(load_stops(api.settings.places.gtfs_dir), api.settings.gtfs_rt.max_age_s, api.clock, api)
