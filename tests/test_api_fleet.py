"""Fleet health (cityos_api/fleet.py, scope internal:fleet) against real InfluxDB 1.6: points written as the ingest
writes them (status messages through ``status_to_line``, health and data readings through ``batch_to_lines``)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from helpers import influx_write

from citylab.stack import influx_settings
from cityos.influx import InfluxUnreachable
from cityos.wire import GatewayStatus, Reading, TelemetryBatch, checked
from cityos_api.app import create_app
from cityos_api.auth import FLEET, SERVICE, TokenStore, parse_expiry
from cityos_api.core import MAX_AGE_TTLS
from cityos_api.fleet import FLEET_TTL_S
from cityos_api.settings import ApiSettings
from ingest.lineproto import batch_to_lines, status_to_line


def test_gateways_and_devices_as_operations_see_them(stack_info, influx_db, tmp_path):
    now = int(time.time() * 1000)
    lines = [
        status_to_line(GatewayStatus(gateway_id="gw-forest-01", state="online", boot_id="boot-0001", ts=now - 60_000,
                                     agent_version="1.2.3", config_hash="abc123", backlog_depth=4)),
        status_to_line(GatewayStatus(gateway_id="gw-meter-01", state="online", boot_id="boot-0002",
                                     ts=now - 600_000)),
        status_to_line(GatewayStatus(gateway_id="gw-meter-01", state="offline", boot_id="boot-0002",
                                     ts=now - 30_000)),
    ]
    readings = [
        Reading(device_id="gateway", kind="gateway_health", ts=now - 20_000,
                values={"cpu_pct": 3.5, "mem_used_pct": 41.0, "disk_free_mb": 900.0, "backlog_depth": 4.0}),
        Reading(device_id="forest-01-01", kind="forest_station", ts=now - 50_000, values={"soil_moisture_pct": 31.0}),
        Reading(device_id="forest-01-02", kind="forest_station", ts=now - 40_000, values={"soil_moisture_pct": 33.0}),
    ]
    batch = checked(TelemetryBatch(gateway_id="gw-forest-01", boot_id="boot-0001", seq=1, sent_at=now,
                                   readings=readings))
    # a station moved to another gateway: listed once (its newest reading), and under each gateway it sent from
    moved = checked(TelemetryBatch(gateway_id="gw-forest-02", boot_id="boot-0003", seq=1, sent_at=now, readings=[
        Reading(device_id="forest-01-02", kind="forest_station", ts=now - 10_000, values={"soil_moisture_pct": 34.0})]))
    influx_write(stack_info, influx_db, lines + batch_to_lines(batch) + batch_to_lines(moved))
    store = TokenStore(tmp_path / "t.json")
    fleet_tok = store.create("ops", [FLEET], parse_expiry("1d"))[1]
    service_tok = store.create("svc", [SERVICE], parse_expiry("1d"))[1]
    settings = ApiSettings.model_validate({"influx": influx_settings(stack_info, "reader", influx_db),
                                           "auth": {"tokens_file": store.path}})
    auth = {"Authorization": f"Bearer {fleet_tok}"}
    with TestClient(create_app(settings)) as client:
        gws = client.get("/v1/fleet/gateways", headers=auth)
        one = client.get("/v1/fleet/gateways/gw-forest-01", headers=auth)
        devs = client.get("/v1/fleet/devices", headers=auth)
        csv = client.get("/v1/fleet/devices?format=csv", headers=auth)
        missing = client.get("/v1/fleet/gateways/gw-nope-99", headers=auth)
        bad = client.get("/v1/fleet/gateways/GW%20x", headers=auth)
        denied = client.get("/v1/fleet/gateways", headers={"Authorization": f"Bearer {service_tok}"})
        anonymous = client.get("/v1/fleet/devices")
    assert gws.status_code == 200, gws.text
    by = {g["gateway"]: g for g in gws.json()["items"]}
    assert by["gw-meter-01"]["state"] == "offline"  # the newest status wins
    f = by["gw-forest-01"]
    assert (f["state"], f["agent_version"], f["config_hash"], f["backlog_depth"]) == ("online", "1.2.3", "abc123", 4)
    assert (f["health_cpu_pct"], f["health_mem_used_pct"], f["health_disk_free_mb"]) == (3.5, 41.0, 900.0)
    assert f["health_at"].endswith("+09:00")
    assert one.status_code == 200
    assert [d["device"] for d in one.json()["devices"]] == ["forest-01-01", "forest-01-02"]
    assert {d["device"]: (d["family"], d["gateway"]) for d in devs.json()["items"]} == {
        "forest-01-01": ("forest", "gw-forest-01"), "forest-01-02": ("forest", "gw-forest-02")}
    assert csv.content.startswith("\ufeff".encode()) and "forest-01-02" in csv.text
    assert missing.status_code == 404 and bad.status_code == 422 and "gateway_id" in bad.json()["detail"]
    assert denied.status_code == 403 and anonymous.status_code == 401


def test_healthz_says_whether_the_data_is_fresh(stack_info, influx_db):
    """Fresh: within the window an ingest reported and its count of points written grew."""
    now = int(time.time() * 1000)
    settings = ApiSettings.model_validate({"influx": influx_settings(stack_info, "reader", influx_db),
                                           "health": {"fresh_within_s": 300}})

    def ingest(ts: int, written: int, instance: str = "cityos-ingest.host.0") -> None:
        influx_write(stack_info, influx_db, f"ingest_health,instance={instance} points_written={written}.0,"
                                            f"stalled=0.0 {ts}")

    with TestClient(create_app(settings)) as client:
        ingest(now - 3_600_000, 10)  # an hour ago: InfluxDB answers, the data is stale
        stale = client.get("/healthz")
        ingest(now - 120_000, 500)
        ingest(now - 60_000, 500)  # reporting, but nothing written: stale too
        flat = client.get("/healthz")
        ingest(now - 30_000, 800)
        ingest(now - 20_000, 3, instance="cityos-ingest.other.0")  # another ingest, just started
        fresh = client.get("/healthz")
    assert stale.status_code == 200 and stale.json()["status"] == "degraded"
    assert stale.json()["data"]["fresh"] is False and stale.json()["influxdb"] == "reachable"
    assert flat.json()["status"] == "degraded" and flat.json()["data"]["points_written_in_window"] is False
    assert fresh.status_code == 200 and fresh.json()["status"] == "ok"
    assert 15 <= fresh.json()["data"]["newest_ingest_report_age_s"] <= 120


def test_fleet_state_is_kept_for_its_ttl_and_never_served_beyond_its_maximum_age(stack_info, influx_db, tmp_path):
    """The fleet's routes answer from state read at most FLEET_TTL_S ago (refreshed behind the requests), and
    with InfluxDB down, never from state older than MAX_AGE_TTLS x FLEET_TTL_S: then 503, as without it."""
    now = int(time.time() * 1000)

    def status(gw: str, state: str, ts: int) -> None:
        influx_write(stack_info, influx_db, [status_to_line(GatewayStatus(gateway_id=gw, state=state,
                                                                          boot_id="boot-0001", ts=ts))])

    store = TokenStore(tmp_path / "t.json")
    auth = {"Authorization": f"Bearer {store.create('ops', [FLEET], parse_expiry('1d'))[1]}"}
    settings = ApiSettings.model_validate({"influx": influx_settings(stack_info, "reader", influx_db),
                                           "auth": {"tokens_file": store.path}})
    status("gw-truck-01", "online", now - 60_000)
    with TestClient(create_app(settings), headers=auth) as client:
        api = client.app.state.api
        t = [time.time()]
        api.clock = lambda: t[0]

        def states() -> dict[str, str]:
            resp = client.get("/v1/fleet/gateways")
            assert resp.status_code == 200, resp.text
            return {g["gateway"]: g["state"] for g in resp.json()["items"]}

        assert states() == {"gw-truck-01": "online"}
        status("gw-truck-01", "offline", now - 1_000)
        status("gw-truck-02", "online", now - 1_000)
        t[0] += FLEET_TTL_S - 1
        assert states() == {"gw-truck-01": "online"}  # kept
        assert client.get("/v1/fleet/gateways/gw-truck-02").status_code == 404
        t[0] += 1  # a request now starts a refresh and is answered at once; the next ones see its result
        deadline = time.monotonic() + 10
        while states() != {"gw-truck-01": "offline", "gw-truck-02": "online"}:
            assert time.monotonic() < deadline, "the refreshed state is served"
            time.sleep(0.01)
        assert client.get("/v1/fleet/gateways/gw-truck-02").json()["state"] == "online"

        def down(db: str, q: str) -> tuple[int, bytes]:
            raise InfluxUnreachable("connection refused")

        api.query = down
        t[0] += MAX_AGE_TTLS * FLEET_TTL_S - 1  # refreshes fail; the state read last is still served
        assert client.get("/v1/fleet/gateways").status_code == 200
        assert client.get("/v1/fleet/gateways/gw-truck-02").status_code == 200
        t[0] += 2
        gone = client.get("/v1/fleet/gateways")
        assert gone.status_code == 503 and gone.json()["detail"] == "InfluxDB unavailable: try again shortly"
        assert client.get("/v1/fleet/devices").status_code == 503
