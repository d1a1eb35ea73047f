"""Bus results → wire-contract readings (the table in ``docs/bus.md``): the only place that shapes them.

Nothing identifying goes in: counts, GTFS ids, positions, and for consenting app riders the per-day keyed hash of
their token (16 hex characters, unlinkable across days and irreversible once the day's salt is gone).
"""

from __future__ import annotations

import re
from datetime import date

from cityos.wire import ID_PATTERN, Reading
from edge.sources.bus.ridership import RidershipConfig, RidershipResult, RiderTrip, SegmentCount, VisitCount

KIND_VISIT = "bus_stop_visit"
KIND_SEGMENT = "bus_segment"
KIND_OD = "bus_od"
KIND_POSITION = "bus_position"

_ID_RE = re.compile(ID_PATTERN)
_NOT_ID = re.compile(r"[^a-z0-9_-]")


def tag_id(raw: str) -> str:
    """A GTFS id as a tag value: lower-case, other characters as ``_``, at most 63 (the exact id is a value)."""
    out = _NOT_ID.sub("_", raw.strip().lower())[:63]
    if not _ID_RE.match(out):
        out = ("x" + out)[:63]
    return out


def _occupancy(cfg: RidershipConfig, devices: int, prefix: str = "occupancy") -> dict[str, float]:
    est, lo, hi = cfg.passengers(devices)
    out = {prefix: round(est, 3), f"{prefix}_lo": round(lo, 3), f"{prefix}_hi": round(hi, 3)}
    if cfg.capacity:
        out[f"{prefix}_pct"] = round(100 * est / cfg.capacity, 1)
    return out


def result_reading(
    res: RidershipResult, *, bus_id: str, route_id: str, cfg: RidershipConfig, rider_slot: int = 0
) -> Reading:
    """The reading of one ridership result. ``rider_slot`` separates riders alighting at the same visit (their
    points would otherwise share measurement, tags and time: InfluxDB would keep one)."""
    route = tag_id(route_id)
    if isinstance(res, VisitCount):
        values: dict[str, float | str | bool] = {
            "trip_id": res.trip_id,
            "stop_id": res.stop_id,
            "stop_sequence": float(res.stop_sequence),
            "dwell_s": round(res.dwell_s, 1),
            "complete": res.complete,
        }
        if res.devices is not None:
            values["devices"] = float(res.devices)
            values["wearables"] = float(res.wearables or 0)
            values |= {k: v for k, v in _occupancy(cfg, res.devices).items() if not k.endswith("_pct")}
        if res.boarded is not None and res.alighted is not None:
            values["devices_boarded"] = float(res.boarded)
            values["devices_alighted"] = float(res.alighted)
            # The same per-device factor as the occupancy: in a full bus, boarders' phones hide too.
            per_device = cfg.crowding(res.devices or 0) / cfg.devices_per_passenger
            values["boardings"] = round(res.boarded * per_device, 3)
            values["alightings"] = round(res.alighted * per_device, 3)
        return Reading(
            device_id=bus_id,
            kind=KIND_VISIT,
            ts=res.arrival_ms,
            values=values,
            tags={"route": route, "stop": tag_id(res.stop_id), "trip": tag_id(res.trip_id)},
        )
    if isinstance(res, SegmentCount):
        values = {
            "trip_id": res.trip_id,
            "from_sequence": float(res.from_sequence),
            "to_sequence": float(res.to_sequence),
            "devices": float(res.devices),
            "wearables": float(res.wearables),
            "duration_s": round((res.end_ms - res.start_ms) / 1000, 1),
            **_occupancy(cfg, res.devices),
        }
        return Reading(
            device_id=bus_id,
            kind=KIND_SEGMENT,
            ts=res.start_ms,
            values=values,
            units={"duration_s": "s"},
            tags={
                "route": route,
                "from_stop": tag_id(res.from_stop),
                "to_stop": tag_id(res.to_stop),
                "trip": tag_id(res.trip_id),
            },
        )
    assert isinstance(res, RiderTrip)
    return Reading(
        device_id=bus_id,
        kind=KIND_OD,
        ts=res.alight_ms + rider_slot,
        values={
            "rider": res.rider,
            "board_trip_id": res.board_trip_id,
            "alight_trip_id": res.alight_trip_id,
            "board_sequence": float(res.board_sequence),
            "alight_sequence": float(res.alight_sequence),
            "board_ts": float(res.board_ms),
            "ride_s": round((res.alight_ms - res.board_ms) / 1000, 1),
        },
        units={"ride_s": "s"},
        tags={"route": route, "board_stop": tag_id(res.board_stop), "alight_stop": tag_id(res.alight_stop)},
    )


def position_reading(
    *,
    bus_id: str,
    ts: int,
    lat: float,
    lon: float,
    speed_kmh: float,
    bearing_deg: float | None,
    trip_id: str,
    route_id: str,
    start_date: date | None,
    stop_id: str,
    stop_sequence: int | None,
    stopped: bool,
    devices: int,
    cfg: RidershipConfig,
) -> Reading:
    """The live position for GTFS-Realtime: where, which trip and stop, and how full (a live estimate)."""
    est, _, _ = cfg.passengers(devices)
    values: dict[str, float | str | bool] = {
        "lat": round(lat, 7),
        "lon": round(lon, 7),
        "speed_kmh": round(speed_kmh, 1),
        "trip_id": trip_id,
        "route_id": route_id,
        "start_date": start_date.strftime("%Y%m%d") if start_date is not None else "",
        "stop_id": stop_id,
        "stopped": stopped,
        "occupancy": round(est, 3),
    }
    if bearing_deg is not None:
        values["bearing_deg"] = round(bearing_deg, 1)
    if stop_sequence is not None:
        values["stop_sequence"] = float(stop_sequence)
    if cfg.capacity:
        values["occupancy_pct"] = round(100 * est / cfg.capacity, 1)
    return Reading(device_id=bus_id, kind=KIND_POSITION, ts=ts, values=values)
