"""Fleet health under ``/v1/fleet`` (scope ``internal:fleet``): the gateways and their devices as the operations
team sees them, from what the gateways report (``gateway_status`` from their retained status messages,
``gateway_health`` and ``source_health`` readings: edge/health.py) and when each device last sent a reading.

Not a family (every family's gateways are here), so it is the app's own router. Device ids are pseudonyms of
their family's shape (a household meter is ``hh-...``): internal, which is why the scope is.

The fleet's state is read whole (every gateway's and every device's newest point: about 1.5 s of InfluxDB over the
city's 5,081 gateways) and kept as a :class:`~cityos_api.core.Snapshot` for :data:`FLEET_TTL_S`; every route,
one gateway's too, answers from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import Field

from cityos.families import FAMILIES
from cityos.influx import QueryFn, query_results
from cityos_api.auth import FLEET
from cityos_api.core import Api, Body, absent, json_body
from cityos_api.params import FormatQuery, check_id, iso

__all__ = ["router"]

#: How far back a gateway or device is looked for: one not heard from in a week is listed by the registry, not here.
LOOKBACK = timedelta(days=7)
#: Health fields shown (what an operator looks at first; the rest are in Grafana's fleet dashboard).
HEALTH_FIELDS = ("cpu_pct", "mem_used_pct", "disk_free_mb", "disk_used_pct", "cpu_temp_c", "backlog_depth",
                 "backlog_age_s", "outbox_disk_full")
STATUS_FIELDS = ("state", "agent_version", "config_hash", "backlog_depth", "backlog_age_s", "boot_id")
#: Seconds the fleet's state is kept before a refresh (served at most 3 times that: core.Snapshot). Gateways report
#: health every 60 s; an operator's page polled every few seconds costs one read per 30 s, not one per request.
FLEET_TTL_S = 30.0


def _newest(query: QueryFn, db: str, measurement: str, fields: Iterable[str], since_ms: int
            ) -> dict[str, dict[str, Any]]:
    """The newest point of each gateway that has any of ``fields``, those fields only (not ``last(...)``: InfluxDB
    1.6 takes each field's own last). Every point the gateways write has one of the shown fields (a status its
    ``state``, a health reading its ``cpu_pct``), so it is their newest point; the rest (a status's counters, a
    health reading's twenty others) is not read."""
    cols = ", ".join(f'"{f}"' for f in fields)
    q = (f'SELECT {cols} FROM "{measurement}" WHERE time >= {since_ms}ms GROUP BY "gateway" '
         f"ORDER BY time DESC LIMIT 1")
    status, raw = query(db, q)
    out = {}
    for result in query_results(status, raw):
        for s in result.get("series", []):
            key = (s.get("tags") or {}).get("gateway", "")
            if key and s.get("values"):
                out[key] = {c: v for c, v in zip(s["columns"], s["values"][0], strict=True) if v is not None}
    return out


def fetch_gateways(query: QueryFn, db: str, since_ms: int) -> dict[str, dict[str, Any]]:
    """Every gateway's last status and health, by gateway id in order."""
    status = _newest(query, db, "gateway_status", STATUS_FIELDS, since_ms)
    health = _newest(query, db, "gateway_health", HEALTH_FIELDS, since_ms)
    out = {}
    for gw in sorted(set(status) | set(health)):
        st, h = status.get(gw, {}), health.get(gw, {})
        out[gw] = {
            "gateway": gw,
            "state": st.get("state") if isinstance(st.get("state"), str) else None,
            "status_at": iso(st["time"]) if "time" in st else None,
            **{f: st.get(f) for f in STATUS_FIELDS if f != "state"},
            "health_at": iso(h["time"]) if "time" in h else None,
            **{f"health_{f}": h.get(f) for f in HEALTH_FIELDS if type(h.get(f)) in (int, float)},  # not a bool
        }
    return out


def fetch_devices(query: QueryFn, db: str, since_ms: int) -> list[tuple[int, dict[str, Any]]]:
    """Each device's newest reading time per gateway and family measurement (values are not shown). Every field
    (``*``): a reading may carry any of its kind's fields, and its time is what is shown."""
    out = []
    for fam in FAMILIES:
        for measurement in dict.fromkeys(fam.measurements.values()):
            q = (f'SELECT * FROM "{measurement}" WHERE time >= {since_ms}ms GROUP BY "device", "gateway" '
                 f"ORDER BY time DESC LIMIT 1")
            status, raw = query(db, q)
            for result in query_results(status, raw):
                for s in result.get("series", []):
                    tags = s.get("tags") or {}
                    if s.get("values") and tags.get("device"):
                        out.append((int(s["values"][0][0]), {
                            "device": tags["device"], "family": fam.name, "measurement": measurement,
                            "gateway": tags.get("gateway", ""), "last_reading_at": iso(s["values"][0][0])}))
    return out


def newest_per_device(seen: Iterable[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """A device on two measurements (a bus: stops and positions) is one device: its newest reading; by family and
    device."""
    newest: dict[str, tuple[int, dict[str, Any]]] = {}
    for ms, d in seen:
        if d["device"] not in newest or ms > newest[d["device"]][0]:
            newest[d["device"]] = (ms, d)
    return sorted((d for _, d in newest.values()), key=lambda d: (d["family"], d["device"]))


@dataclass(frozen=True)
class Devices:
    """The devices as the routes show them: all of them, and each gateway's (a device that moved is listed under
    each gateway it sent from, with its newest reading from there)."""

    items: list[dict[str, Any]]
    by_gateway: dict[str, list[dict[str, Any]]]

    @classmethod
    def of(cls, seen: list[tuple[int, dict[str, Any]]]) -> Devices:
        per_gateway: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for ms, d in seen:
            per_gateway.setdefault(d["gateway"], []).append((ms, d))
        return cls(newest_per_device(seen), {gw: newest_per_device(s) for gw, s in per_gateway.items()})


# ---- the JSON bodies as the OpenAPI document types them (schemas only: :class:`cityos_api.core.Body`) -----------
_WHEN = "(JST, with offset); null when it sent none in 7 days"
_HEALTH = "; absent when its newest health reading has none"


class FleetGateway(Body):
    gateway: str = Field(description="the gateway's id")
    state: Literal["online", "offline", "registered"] | None = Field(description=(
        "its last status (offline: its MQTT last will; registered: known to the fleet registry, not heard yet); "
        "null without a status in 7 days"))
    status_at: datetime | None = Field(description=f"time of its last status {_WHEN}")
    agent_version: str | None = Field(description="its agent's version, from its last status; null if unknown")
    config_hash: str | None = Field(description="hash of its configuration, from its last status; null if unknown")
    backlog_depth: float | None = Field(description="readings waiting in its outbox; null if unknown")
    backlog_age_s: float | None = Field(description="age of the oldest of them, s; null if unknown")
    boot_id: str | None = Field(description="its agent's boot id; null if unknown")
    health_at: datetime | None = Field(description=f"time of its last health reading {_WHEN}")
    health_cpu_pct: float | None = absent(f"CPU use, %{_HEALTH}")
    health_mem_used_pct: float | None = absent(f"memory used, %{_HEALTH}")
    health_disk_free_mb: float | None = absent(f"free disk, MiB{_HEALTH}")
    health_disk_used_pct: float | None = absent(f"disk used, %{_HEALTH}")
    health_cpu_temp_c: float | None = absent(f"CPU temperature, °C{_HEALTH}")
    health_backlog_depth: float | None = absent(f"readings waiting in its outbox{_HEALTH}")
    health_backlog_age_s: float | None = absent(f"age of the oldest of them, s{_HEALTH}")
    health_outbox_disk_full: float | None = absent(f"1 while its outbox cannot store readings (disk full), else 0"
                                                   f"{_HEALTH}")


class FleetDevice(Body):
    device: str = Field(description="the device's id (a pseudonym of its family's shape)")
    family: str = Field(description="its family (forest, meter, truck, bus)")
    measurement: str = Field(description="the measurement of its newest reading")
    gateway: str = Field(description="the gateway that sent it")
    last_reading_at: datetime = Field(description="time of its newest reading (JST, with offset)")


class FleetGateways(Body):
    dataset: Literal["fleet-gateways"]
    time_zone: Literal["Asia/Tokyo"]
    items: list[FleetGateway] = Field(description="every gateway heard from in 7 days, by id")


class FleetGatewayBody(FleetGateway):
    devices: list[FleetDevice] = Field(description="the devices it sent readings for in 7 days, by family and id")


class FleetDevices(Body):
    dataset: Literal["fleet-devices"]
    time_zone: Literal["Asia/Tokyo"]
    items: list[FleetDevice] = Field(description="every device that sent a reading in 7 days (its newest), by "
                                                 "family and id")


def router(api: Api) -> APIRouter:
    r = APIRouter(tags=["fleet"])
    responses: dict[int | str, dict[str, Any]] = {
        503: {"description": "InfluxDB unavailable"},
    }

    def since() -> int:
        return int(api.clock() * 1000 - LOOKBACK.total_seconds() * 1000)

    gateways_now = api.snapshot("fleet gateways", lambda: api.read(fetch_gateways, since()), FLEET_TTL_S)
    devices_now = api.snapshot("fleet devices", lambda: Devices.of(api.read(fetch_devices, since())), FLEET_TTL_S)
    gateway_columns = ["gateway", "state", "status_at", *[f for f in STATUS_FIELDS if f != "state"], "health_at",
                       *[f"health_{f}" for f in HEALTH_FIELDS]]

    @api.route(r, "/v1/fleet/gateways", scope=FLEET, response_class=Response,
               responses={**responses, **json_body(FleetGateways)})
    def gateways(fmt: FormatQuery = "json") -> Response:
        """Every gateway heard from in the last 7 days: its last status (online/offline, version, config hash,
        backlog) and its last health reading (CPU, memory, disk, temperature). Kept for 30 s (never older than
        90 s)."""
        items = list(gateways_now.get().values())
        rows = [{c: it.get(c) for c in gateway_columns} for it in items] if fmt == "csv" else []
        return api.respond(fmt, {"dataset": "fleet-gateways", "time_zone": "Asia/Tokyo", "items": items}, rows,
                           gateway_columns, "fleet-gateways")

    @api.route(r, "/v1/fleet/gateways/{gateway_id}", scope=FLEET, response_model=None, responses={
        **responses, 404: {"description": "no such gateway in the last 7 days"}, 422: {"description": "bad id"},
        **json_body(FleetGatewayBody, csv=False)})
    def gateway(gateway_id: str) -> dict[str, Any]:
        """One gateway: its status, health and the devices it reported readings for in the last 7 days. Kept for
        30 s (never older than 90 s)."""
        gw = check_id("gateway_id", gateway_id)
        found = gateways_now.get().get(gw)
        if found is None:
            raise HTTPException(status_code=404, detail=f"gateway {gw}: not heard from in the last 7 days")
        return {**found, "devices": devices_now.get().by_gateway.get(gw, [])}

    @api.route(r, "/v1/fleet/devices", scope=FLEET, response_class=Response,
               responses={**responses, **json_body(FleetDevices)})
    def devices(fmt: FormatQuery = "json") -> Response:
        """Every device that sent a reading in the last 7 days: family, gateway, last reading time. Kept for 30 s
        (never older than 90 s)."""
        items = devices_now.get().items
        return api.respond(fmt, {"dataset": "fleet-devices", "time_zone": "Asia/Tokyo", "items": items}, items,
                           ["device", "family", "measurement", "gateway", "last_reading_at"], "fleet-devices")

    return r
