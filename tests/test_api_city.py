"""The City OS API against the simulators' ground truth of a simulated afternoon (tests/city_afternoon.py: devices →
agents → Mosquitto → ingest → InfluxDB, played once per session): each family's routes answer what the devices
did (kg per district, kWh per district where k households report, every forest station's readings) and the
NGSI-LD facade gives the same stations."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from citylab.stack import influx_settings
from cityos_api.app import create_app
from cityos_api.auth import SERVICE, TokenStore, parse_expiry
from cityos_api.opendata import JST
from cityos_api.settings import ApiSettings

RESOLUTION_KG = 10.0  # the truck indicator's display step (as tests/test_dashboards_queries.py)


@pytest.fixture(scope="module")
def api(city_afternoon, tmp_path_factory) -> tuple[TestClient, dict[str, str], Any]:
    store = TokenStore(tmp_path_factory.mktemp("api-city") / "tokens.json")
    token = store.create("city service", [SERVICE], parse_expiry("1d"))[1]
    settings = ApiSettings.model_validate({
        "influx": influx_settings(city_afternoon.info, "reader", city_afternoon.db),
        "auth": {"tokens_file": store.path},
        "places": {"districts_file": "scenarios/tsuyama-districts.geojson", "gtfs_dir": "scenarios/gtfs-tsuyama-loop"}})
    with TestClient(create_app(settings)) as client:
        yield client, {"Authorization": f"Bearer {token}"}, city_afternoon


def _day(city) -> str:
    return datetime.fromtimestamp(city.t0 / 1000, JST).date().isoformat()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, JST).isoformat(timespec="seconds")


def test_waste_kg_per_district_is_what_the_truck_weighed(api):
    client, _, city = api
    day = _day(city)
    resp = client.get(f"/v1/waste/districts/daily?from={day}&to={(datetime.fromisoformat(day) + timedelta(days=1)).date()}")
    assert resp.status_code == 200, resp.text
    got = {it["district"]: it["kg"] for it in resp.json()["items"] if it["date"] == day}
    assert set(got) == set(city.truth_waste_kg)
    for district, kg in city.truth_waste_kg.items():
        assert abs(got[district] - kg) <= RESOLUTION_KG, (district, got[district], kg)
    names = {it["district"]: it["district_name_ja"] for it in resp.json()["items"]}
    assert names.get("chuo", "中央") == "中央"


def test_energy_per_district_and_half_hour_is_the_meters_truth(api):
    client, _, city = api
    resp = client.get(f"/v1/energy/districts/half-hourly?from={_iso(city.t0)}&to={_iso(city.t1)}")
    assert resp.status_code == 200, resp.text
    got = {(it["district"], it["start"]): it for it in resp.json()["items"]}
    truth = {(d, _iso(s)): v for (d, s), v in city.truth_energy_slots.items()}
    assert truth, "the afternoon has half hours"
    assert set(got) == set(truth)
    for key, (kwh, n) in truth.items():
        it = got[key]
        assert it["households"] == n == 10 and it["kwh"] == pytest.approx(kwh, abs=1e-6), (key, it, kwh)
        assert it["district_name_en"] == "Tsuyama central"


def test_every_forest_reading_is_served_as_the_station_took_it(api):
    client, _, city = api
    stations = client.get("/v1/forest/stations")
    assert stations.status_code == 200, stations.text
    listed = {s["station"]: s for s in stations.json()["items"]}
    assert set(listed) == set(city.forest_truth)
    for device, samples in city.forest_truth.items():
        resp = client.get(f"/v1/forest/stations/{device}/readings?interval=raw&from={_iso(city.t0)}"
                          f"&to={_iso(city.t1 + 1000)}&limit=1000")
        assert resp.status_code == 200, resp.text
        assert resp.json()["next_cursor"] is None  # the simulated day is one page
        rows = {r["time"]: r for r in resp.json()["items"]}
        for e in samples:
            row = rows.get(_iso(e["ts"])) or rows.get(datetime.fromtimestamp(e["ts"] / 1000, JST).isoformat(
                timespec="milliseconds"))
            assert row is not None, (device, e["ts"])
            for field in ("soil_moisture_pct", "rain_intensity_mm_h", "tilt_rate_x_deg_h"):
                if e["values"].get(field) is not None:
                    assert row[field] == pytest.approx(e["values"][field], abs=1e-9), (device, field, e["ts"])
        newest = samples[-1]
        assert listed[device]["latest"]["soil_moisture_pct"] == pytest.approx(newest["values"]["soil_moisture_pct"])


def test_ngsi_ld_gives_the_same_stations(api):
    client, auth, city = api
    resp = client.get("/ngsi-ld/v1/entities?type=WeatherObserved&options=keyValues&limit=100", headers=auth)
    assert resp.status_code == 200, resp.text
    assert 'rel="http://www.w3.org/ns/json-ld#context"' in resp.headers["link"]
    got = {e["id"]: e for e in resp.json()}
    assert set(got) == {f"urn:ngsi-ld:WeatherObserved:{d}" for d in city.forest_truth}
    for device, samples in city.forest_truth.items():
        e = got[f"urn:ngsi-ld:WeatherObserved:{device}"]
        assert e["precipitation"] == pytest.approx(samples[-1]["values"]["rain_intensity_mm_h"])
        assert e["location"]["type"] == "Point"
    assert client.get("/ngsi-ld/v1/entities?type=WeatherObserved").status_code == 401  # scope service
