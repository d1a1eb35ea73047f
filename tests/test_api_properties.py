"""A property-based run over the API's own OpenAPI document (schemathesis) against the running app on real
InfluxDB 1.6 holding every family's points: for generated parameters, valid and not, no route answers 5xx, every
status and content type is one the document declares, and every response matches its schema.

Every scope's token is sent (a generated request is about parameters, not about scopes: tests/test_api_auth.py
walks the scopes). The data: a bus, forest stations, a truck, meters and gateway health of the last hours,
plus points that are valid on the wire but unservable (an occupancy of 1e30, a bus without a position).
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from fastapi.testclient import TestClient
from helpers import influx_write
from hypothesis import HealthCheck, settings
from schemathesis.checks import ignored_auth, positive_data_acceptance

from citylab.stack import influx_settings
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.app import create_app
from cityos_api.auth import FLEET, HOUSEHOLDS, SERVICE, TokenStore, parse_expiry
from cityos_api.settings import ApiSettings
from ingest.lineproto import batch_to_lines

pytestmark = pytest.mark.timeout(600)
TOKEN: dict[str, str] = {}
CLIENT: dict[str, TestClient] = {}


def _readings(now: int) -> list[tuple[str, list[Reading]]]:
    pos = {"lat": 35.06, "lon": 134.0, "speed_kmh": 10.0, "trip_id": "wd-01", "route_id": "loop-e",
           "start_date": "20261201", "stop_id": "1001", "stop_sequence": 1.0, "stopped": False, "occupancy": 3.0}
    bus = [Reading(device_id="bus-01", kind="bus_position", ts=now - 9000, values=pos),
           Reading(device_id="bus-02", kind="bus_position", ts=now - 8000, values={**pos, "occupancy_pct": 1e30}),
           Reading(device_id="bus-03", kind="bus_position", ts=now - 7000,
                   values={k: v for k, v in pos.items() if k not in ("lat", "lon")})]
    forest = [Reading(device_id=f"forest-01-0{i}", kind="forest_station", ts=now - 600_000 * j - i,
                      values={"soil_moisture_pct": 30.0 + j, "rain_intensity_mm_h": 5.0 * j, "rain_mm": 0.5,
                              "rain_cumulative_mm": 10.0 * j, "tilt_x_deg": 0.1, "tilt_y_deg": 0.0,
                              "tilt_rate_x_deg_h": 0.01, "tilt_rate_y_deg_h": 0.0, "lat": 35.13, "lon": 133.97})
              for i in (1, 2) for j in range(6)]
    truck = [Reading(device_id="truck-01", kind="truck_collection", ts=now - 3_600_000 + 60_000 * i,
                     values={"kg": 40.0 + i, "lat": 35.06, "lon": 134.0}, tags={"district": "chuo"})
             for i in range(5)]
    meters = [Reading(device_id=f"hh-{h:05d}", kind="smart_meter", ts=(now - now % 1_800_000) - 1_800_000 * b,
                      values={"energy_fixed_kwh": 1000.0 + h - 0.3 * b}, tags={"district": "chuo"})
              for h in range(12) for b in range(8)]
    health = [Reading(device_id="gateway", kind="gateway_health", ts=now - 5000, values={"cpu_pct": 2.0})]
    return [("gw-bus-01", bus), ("gw-forest-01", forest), ("gw-truck-01", truck), ("gw-meter-01", meters[:48]),
            ("gw-meter-02", meters[48:]), ("gw-forest-01", health)]


@pytest.fixture(scope="module")
def api_schema(stack, stack_info, tmp_path_factory):
    import uuid

    from rollup import RollupConfig, run_once

    db = "api_props_" + uuid.uuid4().hex[:8]
    stack.create_database(db)  # and its rollups' database, with the users' grants
    now = int(time.time() * 1000)
    lines: list[str] = []
    for seq, (gw, readings) in enumerate(_readings(now), start=1):
        lines += batch_to_lines(checked(TelemetryBatch(gateway_id=gw, boot_id="boot-0001", seq=seq, sent_at=now,
                                                       readings=readings)))
    influx_write(stack_info, db, lines)
    run_once(RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", db)}), now)
    store = TokenStore(tmp_path_factory.mktemp("api") / "tokens.json")
    TOKEN["all"] = store.create("all", [SERVICE, FLEET, HOUSEHOLDS], parse_expiry("1d"))[1]
    settings_ = ApiSettings.model_validate({
        "influx": influx_settings(stack_info, "reader", db), "auth": {"tokens_file": store.path},
        "rate_limit": {"open_per_minute": 1e6, "burst": 1_000_000},
        "places": {"districts_file": "scenarios/tsuyama-districts.geojson"}})
    app = create_app(settings_)
    CLIENT["app"] = TestClient(app)
    return schemathesis.openapi.from_dict(CLIENT["app"].get("/openapi.json").json())


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_no_route_answers_5xx_or_off_its_schema(case):
    # sent through Starlette's test client (httpx), not schemathesis' requests transport: urllib3-future (from
    # grafana-client's niquests) breaks the latter's connection bookkeeping; the checks are the same
    auth = {"Authorization": f"Bearer {TOKEN['all']}"}
    kw = case.as_transport_kwargs(base_url="http://testserver", headers=auth)
    resp = CLIENT["app"].request(kw["method"], kw["url"], params=kw.get("params"), headers=kw.get("headers"))
    # Left out: positive_data_acceptance (a schema-valid request may still be refused for what a schema cannot
    # say: a range longer than the route allows, `from` after `to`: 422 naming the parameter, by design), and
    # ignored_auth (it sends its own probe through the requests transport, broken here by urllib3-future, which
    # grafana-client's niquests installs; scopes and tokens are walked route by route in tests/test_api_auth.py)
    case.validate_response(resp, headers=auth, excluded_checks=[positive_data_acceptance, ignored_auth])
