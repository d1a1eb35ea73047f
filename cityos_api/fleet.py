"""Fleet health under ``/v1/fleet`` (scope ``internal:fleet``): the gateways and their devices as the operations
team sees them, from what the gateways report (``gateway_status`` from their retained status messages,
``gateway_health`` and ``source_health`` readings: edge/health.py) and when each device last sent a reading.

Not a family (every family's gateways are here), so it is the app's own router. Device ids are pseudonyms of
their family's shape (a household meter is ``hh-...``): internal, which is why the scope is.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from cityos.families import FAMILIES
from cityos.influx import QueryFn, query_results
from cityos_api.auth import FLEET
from cityos_api.core import Api
from cityos_api.params import FormatQuery, check_id, iso, literal

__all__ = ["router"]

#: How far back a gateway or device is looked for: one not heard from in a week is listed by the registry, not here.
LOOKBACK = timedelta(days=7)
#: Health fields shown (what an operator looks at first; the rest are in Grafana's fleet dashboard).
HEALTH_FIELDS = ("cpu_pct", "mem_used_pct", "disk_free_mb", "disk_used_pct", "cpu_temp_c", "backlog_depth",
                 "backlog_age_s", "outbox_disk_full")
STATUS_FIELDS = ("state", "agent_version", "config_hash", "backlog_depth", "backlog_age_s", "boot_id")


def _newest(query: QueryFn, db: str, measurement: str, since_ms: int, group: str, where: str = ""
            ) -> dict[str, dict[str, Any]]:
    """The newest point of each ``group`` tag value (not ``last(*)``: InfluxDB 1.6 takes each field's own last)."""
    q = (f'SELECT * FROM "{measurement}" WHERE time >= {since_ms}ms{where} GROUP BY "{group}" '
         f"ORDER BY time DESC LIMIT 1")
    status, raw = query(db, q)
    out = {}
    for result in query_results(status, raw):
        for s in result.get("series", []):
            key = (s.get("tags") or {}).get(group, "")
            if key and s.get("values"):
                out[key] = {c: v for c, v in zip(s["columns"], s["values"][0], strict=True) if v is not None}
    return out


def fetch_gateways(query: QueryFn, db: str, since_ms: int, gateway: str | None = None) -> list[dict[str, Any]]:
    where = f' AND "gateway" = {literal(gateway)}' if gateway else ""
    status = _newest(query, db, "gateway_status", since_ms, "gateway", where)
    health = _newest(query, db, "gateway_health", since_ms, "gateway", where)
    out = []
    for gw in sorted(set(status) | set(health)):
        st, h = status.get(gw, {}), health.get(gw, {})
        out.append({
            "gateway": gw,
            "state": st.get("state") if isinstance(st.get("state"), str) else None,
            "status_at": iso(st["time"]) if "time" in st else None,
            **{f: st.get(f) for f in STATUS_FIELDS if f != "state"},
            "health_at": iso(h["time"]) if "time" in h else None,
            **{f"health_{f}": h.get(f) for f in HEALTH_FIELDS if isinstance(h.get(f), int | float)},
        })
    return out


def fetch_devices(query: QueryFn, db: str, since_ms: int, gateway: str | None = None) -> list[dict[str, Any]]:
    """Each device's newest reading time and gateway, per family measurement (values are not shown)."""
    where = f' AND "gateway" = {literal(gateway)}' if gateway else ""
    out = []
    for fam in FAMILIES:
        for measurement in dict.fromkeys(fam.measurements.values()):
            q = (f'SELECT * FROM "{measurement}" WHERE time >= {since_ms}ms{where} GROUP BY "device", "gateway" '
                 f"ORDER BY time DESC LIMIT 1")
            status, raw = query(db, q)
            for result in query_results(status, raw):
                for s in result.get("series", []):
                    tags = s.get("tags") or {}
                    if s.get("values") and tags.get("device"):
                        out.append((int(s["values"][0][0]), {
                            "device": tags["device"], "family": fam.name, "measurement": measurement,
                            "gateway": tags.get("gateway", ""), "last_reading_at": iso(s["values"][0][0])}))
    # a device on two measurements (a bus: stops and positions) is one device: its newest reading
    newest: dict[str, tuple[int, dict[str, Any]]] = {}
    for ms, d in out:
        if d["device"] not in newest or ms > newest[d["device"]][0]:
            newest[d["device"]] = (ms, d)
    return sorted((d for _, d in newest.values()), key=lambda d: (d["family"], d["device"]))


def router(api: Api) -> APIRouter:
    r = APIRouter(tags=["fleet"])
    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/json": {}, "text/csv": {}}},
        503: {"description": "InfluxDB unavailable"},
    }

    def since() -> int:
        return int(api.clock() * 1000 - LOOKBACK.total_seconds() * 1000)

    gateway_columns = ["gateway", "state", "status_at", *[f for f in STATUS_FIELDS if f != "state"], "health_at",
                       *[f"health_{f}" for f in HEALTH_FIELDS]]

    @api.route(r, "/v1/fleet/gateways", scope=FLEET, response_class=Response, responses=responses)
    def gateways(fmt: FormatQuery = "json") -> Response:
        """Every gateway heard from in the last 7 days: its last status (online/offline, version, config hash,
        backlog) and its last health reading (CPU, memory, disk, temperature)."""
        items = api.read(fetch_gateways, since())
        rows = [{c: it.get(c) for c in gateway_columns} for it in items]
        return api.respond(fmt, {"dataset": "fleet-gateways", "time_zone": "Asia/Tokyo", "items": items}, rows,
                           gateway_columns, "fleet-gateways")

    @api.route(r, "/v1/fleet/gateways/{gateway_id}", scope=FLEET, responses={
        **responses, 404: {"description": "no such gateway in the last 7 days"}, 422: {"description": "bad id"}})
    def gateway(gateway_id: str) -> dict[str, Any]:
        """One gateway: its status, health and the devices it reported readings for in the last 7 days."""
        gw = check_id("gateway_id", gateway_id)
        found = api.read(fetch_gateways, since(), gw)
        if not found:
            raise HTTPException(status_code=404, detail=f"gateway {gw}: not heard from in the last 7 days")
        return {**found[0], "devices": api.read(fetch_devices, since(), gw)}

    @api.route(r, "/v1/fleet/devices", scope=FLEET, response_class=Response, responses=responses)
    def devices(fmt: FormatQuery = "json") -> Response:
        """Every device that sent a reading in the last 7 days: family, gateway, last reading time."""
        items = api.read(fetch_devices, since())
        return api.respond(fmt, {"dataset": "fleet-devices", "time_zone": "Asia/Tokyo", "items": items}, items,
                           ["device", "family", "measurement", "gateway", "last_reading_at"], "fleet-devices")

    return r
