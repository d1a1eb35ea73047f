"""The trucks' and the buses' NGSI-LD providers (cityos_api/families/truck_ngsi.py, bus_ngsi.py; docs/ngsi-ld.md)
through the whole app on the session's InfluxDB, every answer validated against the NGSI-LD OAS 1.7.1 as
tests/test_ngsi_ld.py does (its helpers).

Trucks: two trucks over the two JST days before today (pickups with their load, trips ending with an unload, a
pickup with an unservable position); buses: the GTFS-JP loop's stops, four buses' positions (one stale, one
unservable) and app riders' origin-destination points whose pseudonyms must never reach an entity.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import influx_write
from test_ngsi_ld import (
    AGGREGATED,
    OAS,
    SIMPLIFIED,
    TEMPORAL_VALUES,
    _get,
    _validator,
    check_json,
    response_schema,
    valid,
)

from citylab.stack import influx_settings
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.app import create_app
from cityos_api.auth import SERVICE, TokenStore, parse_expiry
from cityos_api.ngsi_ld.temporal import aggregate, parse_duration_ms, utc
from cityos_api.opendata import JST
from cityos_api.settings import ApiSettings
from ingest.lineproto import batch_to_lines

try:  # the waste per district and day is read from the rollups (docs/api.md "Pre-aggregation") where they exist
    from cityos.rollups import WASTE_1D, target_db
except ImportError:  # pragma: no cover - before them, the API sums the raw pickups itself
    WASTE_1D = None

ROOT = Path(__file__).resolve().parents[1]
DISTRICTS = ROOT / "scenarios" / "tsuyama-districts.geojson"
GTFS = ROOT / "scenarios" / "gtfs-tsuyama-loop"
TODAY = datetime.now(JST).date()
D1, D2 = TODAY - timedelta(days=2), TODAY - timedelta(days=1)
RIDERS = ("9f3a6c21d4e5b780", "0a1b2c3d4e5f6789")
WASTE = "urn:ngsi-ld:WasteObserved:"
VEHICLE = "urn:ngsi-ld:Vehicle:"
STOP = "urn:ngsi-ld:PublicTransportStop:"


def _ms(day: date, hh: int, mm: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hh, mm, tzinfo=JST).timestamp() * 1000)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _jst(day: date) -> str:
    return f"{day.isoformat()}T00:00:00+09:00"


def _pickup(truck: str, ts: int, district: str, kg: float, load: float, trip_no: int,
            pos: tuple[float, float] | None) -> Reading:
    values: dict[str, Any] = {"kg": kg, "load_kg": load, "trip_no": float(trip_no), "pickup_no": 1.0}
    if pos is not None:
        values |= {"lat": pos[0], "lon": pos[1], "fix_age_s": 0.0}
    return Reading(device_id=truck, kind="truck_collection", ts=ts, values=values, tags={"district": district})


def _trip(truck: str, ts: int, trip_no: int, kg: float, unloaded: float, pickups: int) -> Reading:
    return Reading(device_id=truck, kind="truck_trip", ts=ts, values={
        "trip_no": float(trip_no), "kg_collected": kg, "kg_unloaded": unloaded, "pickups": float(pickups),
        "pickups_unknown_district": 0.0, "distance_km": 12.5, "duration_s": 3600.0})


def _position(device: str, ts: int, **values: Any) -> Reading:
    base: dict[str, Any] = {"lat": 35.0586, "lon": 134.0028, "speed_kmh": 0.0, "trip_id": "", "route_id": "",
                            "start_date": "", "stop_id": "", "stop_sequence": 0.0, "stopped": False,
                            "occupancy": 0.0}
    return Reading(device_id=device, kind="bus_position", ts=ts, values={**base, **values})


def _ride(ts: int, rider: str) -> Reading:
    return Reading(device_id="bus-01", kind="bus_od", ts=ts, values={
        "rider": rider, "board_trip_id": "wd-03", "alight_trip_id": "wd-03", "board_sequence": 1.0,
        "alight_sequence": 4.0, "board_ts": float(ts - 600_000), "ride_s": 600.0},
        tags={"route": "loop-e", "board_stop": "1001", "alight_stop": "1004"})


def _write(stack_info, db: str, gateway: str, readings: list[Reading]) -> None:
    batch = checked(TelemetryBatch(gateway_id=gateway, boot_id="boot-0001", seq=1,
                                   sent_at=max(r.ts for r in readings), readings=readings))
    influx_write(stack_info, db, batch_to_lines(batch))


CHUO_A, CHUO_B = (35.0600, 134.0050), (35.0603, 134.0049)
ICHI_A = (35.0900, 134.0100)
INNO_A, INNO_B = (35.0600, 133.9600), (35.0650, 133.9650)


@pytest.fixture(scope="module")
def city(stack, stack_info, tmp_path_factory) -> Iterator[tuple[TestClient, int]]:
    """The trucks' two days and the buses now, in one database (for the module: the four tests only read); the app
    over it with a service token. Yields the client and bus-01's newest fix (ms)."""
    db = f"t_{uuid.uuid4().hex[:12]}"
    stack.create_database(db)
    _write(stack_info, db, "gw-truck-01", [
        _pickup("truck-01", _ms(D1, 10, 0), "chuo", 120.5, 120.5, 1, CHUO_A),
        _pickup("truck-01", _ms(D1, 10, 5), "chuo", 80.25, 200.75, 1, CHUO_A),
        _pickup("truck-01", _ms(D1, 10, 30), "ichinomiya", 200.0, 400.75, 1, ICHI_A),
        _trip("truck-01", _ms(D1, 11, 30), 1, 400.75, 398.0, 3),
        _pickup("truck-01", _ms(D2, 9, 0), "chuo", 50.0, 52.75, 2, CHUO_B),
    ])
    _write(stack_info, db, "gw-truck-02", [
        _pickup("truck-02", _ms(D2, 9, 0), "innosho", 300.0, 300.0, 1, INNO_A),
        _pickup("truck-02", _ms(D2, 9, 5), "chuo", 5.0, 305.0, 1, (95.0, 134.0)),  # position unservable
        _pickup("truck-02", _ms(D2, 9, 10), "innosho", 150.5, 455.5, 1, INNO_A),
        _pickup("truck-02", _ms(D2, 9, 20), "innosho", 75.0, 530.5, 1, INNO_B),
        _trip("truck-02", _ms(D2, 10, 0), 1, 530.5, 520.0, 4),
    ])
    if WASTE_1D is not None:  # the rollup's rows of the pickups above (the raw pickups give the same sums)
        influx_write(stack_info, target_db(db), [
            f"{WASTE_1D},district={d} kg={kg!r},pickups={n}i {_ms(day, 0)}" for day, d, kg, n in (
                (D1, "chuo", 200.75, 2), (D1, "ichinomiya", 200.0, 1), (D2, "chuo", 55.0, 2),
                (D2, "innosho", 525.5, 3))])
    now = int(time.time() * 1000)
    t1 = now - 20_000
    _write(stack_info, db, "gw-bus-01", [
        _position("bus-01", t1 - 15_000, lat=35.0630, lon=134.0100, speed_kmh=12.0, bearing_deg=80.0,
                  trip_id="wd-03", route_id="loop-e", start_date="20261201", stop_id="1004", stop_sequence=4.0,
                  occupancy=20.0, occupancy_pct=40.0),
        _position("bus-01", t1, lat=35.06308, lon=134.01056, speed_kmh=0.0, bearing_deg=92.5, trip_id="wd-03",
                  route_id="loop-e", start_date="20261201", stop_id="1004", stop_sequence=4.0, stopped=True,
                  occupancy=23.4, occupancy_pct=46.8),
        _position("bus-02", now - 30_000, lat=35.0712, lon=133.9951, speed_kmh=36.0, trip_id="wd-04",
                  route_id="loop-e", start_date="20261201", stop_id="1012", stop_sequence=12.0, occupancy=7.2),
        _position("bus-03", now - 600_000, trip_id="wd-02", stop_id="1001", stopped=True),  # stale
        _position("bus-05", now - 10_000, occupancy_pct=1e30),  # unservable: left out, as in the feed
        _ride(now - 60_000, RIDERS[0]), _ride(now - 50_000, RIDERS[1]),
    ])
    d = tmp_path_factory.mktemp("ngsi-families")
    _, tok = TokenStore(d / "tokens.json").create("platform", [SERVICE], parse_expiry("30d"))
    settings = ApiSettings.model_validate({
        "influx": influx_settings(stack_info, "reader", db),
        "places": {"districts_file": DISTRICTS, "gtfs_dir": GTFS}, "auth": {"tokens_file": d / "tokens.json"}})
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {tok}"}) as client:
        yield client, t1
    stack.drop_database(db)


def check_temporal(resp: Any, path: str) -> Any:
    """A temporal answer (normalized) with ``location`` instances. The OAS 1.7.1's EntityTemporal declares
    ``location`` as one GeoProperty (its Entity's shape), though 4.5.7 makes every temporal attribute an array of
    instances: no temporal answer with a location history passes it. So: the rest against the operation's schema,
    ``location`` as an array of the OAS's own GeoProperty, and the OAS's refusal asserted (a fixed OAS shows up)."""
    geo = _validator(OAS, "#/components/schemas/GeoProperty")
    body = resp.json()
    items = body if isinstance(body, list) else [body]
    for item in items:
        for inst in item.get("location", []):
            valid(geo, inst)
    bare = [{k: v for k, v in item.items() if k != "location"} for item in items]
    check_json(resp, _Bare(response_schema(path), bare if isinstance(body, list) else bare[0]))
    if any("location" in item for item in items):
        assert list(response_schema(path).iter_errors(body))  # the OAS defect, still there
    return body


class _Bare:
    """Validates ``bare`` (the answer without ``location``) whatever check_json hands it."""

    def __init__(self, schema: Any, bare: Any) -> None:
        self.schema, self.bare = schema, bare

    def iter_errors(self, _body: Any) -> Any:
        return self.schema.iter_errors(self.bare)


def _kv(client: TestClient, params: dict[str, str]) -> list[dict[str, Any]]:
    resp = _get(client, "/entities", {**params, "options": "keyValues"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    item = _validator(SIMPLIFIED, "#/components/schemas/SimplifiedEntity")
    valid(response_schema("/entities"), [])
    for e in body:
        valid(item, e)
    return body


# ------------------------------------------------------------------------------------------------------------
# trucks


def test_trucks_as_vehicles(city):
    client, _ = city
    body = check_json(_get(client, "/entities", {"type": "Vehicle", "q": "vehicleType==\"lorry\"",
                                                 "count": "true"}), response_schema("/entities"), count=2)
    assert [e["id"] for e in body] == [VEHICLE + "truck-01", VEHICLE + "truck-02"]
    t1, t2 = body
    assert t1["vehicleType"] == {"type": "Property", "value": "lorry"}
    assert t1["category"]["value"] == ["municipalServices"]
    assert t1["serviceProvided"]["value"] == ["garbageCollection"]
    # the load after its newest pickup; its position there, at the collection-point cell's centre
    assert t1["cargoWeight"] == {"type": "Property", "value": 52.75, "observedAt": _iso(_ms(D2, 9)),
                                 "unitCode": "KGM"}
    assert t1["location"] == {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [134.005, 35.06]},
                              "observedAt": _iso(_ms(D2, 9))}
    # truck-02 unloaded after its last pickup: what was left (530.5 - 520)
    assert t2["cargoWeight"]["value"] == 10.5 and t2["cargoWeight"]["observedAt"] == _iso(_ms(D2, 10))
    assert t2["location"]["value"]["coordinates"] == [133.965, 35.065]

    kv = _kv(client, {"type": "Vehicle", "q": "cargoWeight>50"})
    assert [(e["id"], e["cargoWeight"]) for e in kv] == [(VEHICLE + "truck-01", 52.75)]
    one = check_json(_get(client, f"/entities/{VEHICLE}truck-02"), response_schema("/entities/{entityId}"))
    assert one["fleetVehicleId"]["value"] == "truck-02"

    rng = {"timerel": "between", "timeAt": _jst(D1), "endTimeAt": _jst(TODAY)}
    hist = check_temporal(_get(client, f"/temporal/entities/{VEHICLE}truck-01",
                                    {**rng, "attrs": "cargoWeight,location"}), "/temporal/entities/{entityId}")
    assert [(i["value"], i["observedAt"]) for i in hist["cargoWeight"]] == [
        (120.5, _iso(_ms(D1, 10))), (200.75, _iso(_ms(D1, 10, 5))), (400.75, _iso(_ms(D1, 10, 30))),
        (2.75, _iso(_ms(D1, 11, 30))), (52.75, _iso(_ms(D2, 9)))]  # 2.75 left after unloading 398
    assert len(hist["location"]) == 4 and hist["location"][2]["value"]["coordinates"] == [134.01, 35.09]
    last = _get(client, f"/temporal/entities/{VEHICLE}truck-02",
                {**rng, "lastN": "2", "options": "temporalValues"}).json()
    valid(_validator(TEMPORAL_VALUES, "#/components/schemas/TemporalValuesEntity"), last)
    assert last["cargoWeight"]["values"] == [[530.5, _iso(_ms(D2, 9, 20))], [10.5, _iso(_ms(D2, 10))]]
    # the pickup with an unservable position has its load, not a location
    assert [v[1] for v in last["location"]["values"]] == [_iso(_ms(D2, 9, 10)), _iso(_ms(D2, 9, 20))]
    agg = check_json(_get(client, f"/temporal/entities/{VEHICLE}truck-02", {
        **rng, "options": "aggregatedValues", "aggrMethods": "max,totalCount", "aggrPeriodDuration": "P1D"}),
        _validator(AGGREGATED, "#/components/schemas/AggregatedEntity"))
    assert agg["cargoWeight"]["max"] == [[530.5, _iso(_ms(D2, 0)), _iso(_ms(TODAY, 0))]]
    assert agg["cargoWeight"]["totalCount"][0][0] == 5 and "location" not in agg


@pytest.mark.parametrize(("at", "period"), [(_jst(D1), "P1D"), (_iso(_ms(D1, 10, 2)), "PT1H"),
                                            (_iso(_ms(D1, 10, 40)), None)])
def test_vehicle_aggregates_are_those_of_its_instances(city, at, period):
    """InfluxDB aggregates the loads, the unloads are merged in: the same as aggregating the instances (periods
    from timeAt; an unload whose trip's loads are before timeAt still counts, its cargo left)."""
    client, _ = city
    rng = {"timerel": "between", "timeAt": at, "endTimeAt": _jst(TODAY)}
    start, end = (int(datetime.fromisoformat(rng[k].replace("Z", "+00:00")).timestamp() * 1000)
                  for k in ("timeAt", "endTimeAt"))
    methods = ["totalCount", "sum", "avg", "min", "max", "stddev"]
    for dev in ("truck-01", "truck-02"):
        inst = _get(client, f"/temporal/entities/{VEHICLE}{dev}", {**rng, "attrs": "cargoWeight",
                                                                  "options": "temporalValues"}).json()
        values = [(v, int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000))
                  for v, t in inst["cargoWeight"]["values"]]
        want = aggregate(values, methods, parse_duration_ms(period), start, end)
        got = _get(client, f"/temporal/entities/{VEHICLE}{dev}", {
            **rng, "attrs": "cargoWeight", "options": "aggregatedValues", "aggrMethods": ",".join(methods),
            **({"aggrPeriodDuration": period} if period else {})}).json()["cargoWeight"]
        assert {m: [[pytest.approx(v), utc(t0), utc(t1)] for v, t0, t1 in rows] for m, rows in want.items()} == \
            {m: got[m] for m in methods if m in got}, (dev, period)
        if dev == "truck-01" and period is None:  # the loads of its trip are before timeAt, its unload is not
            assert values[0] == (2.75, _ms(D1, 11, 30)) and got["totalCount"][0][0] == 2


def test_waste_per_district_and_day(city):
    client, _ = city
    body = check_json(_get(client, "/entities", {"type": "WasteObserved", "count": "true"}),
                      response_schema("/entities"), count=3)
    by = {e["id"].rsplit(":", 1)[1]: e for e in body}
    assert list(by) == ["chuo", "ichinomiya", "innosho"]
    chuo = by["chuo"]  # the newest day: 50 kg and the 5 kg whose position was unservable
    assert chuo["weight"] == {"type": "Property", "value": 55.0, "observedAt": _iso(_ms(D2, 0)), "unitCode": "KGM"}
    assert chuo["pickupCount"] == {"type": "Property", "value": 2, "observedAt": _iso(_ms(D2, 0)), "unitCode": "C62"}
    assert chuo["dateObserved"]["value"] == _iso(_ms(D2, 0))
    assert chuo["address"]["value"] == {"addressCountry": "JP", "addressRegion": "岡山県", "addressLocality": "津山市",
                                        "district": "中央"}
    assert chuo["districtNameEn"]["value"] == "Tsuyama central" and chuo["districtId"]["value"] == "chuo"
    assert chuo["location"]["value"]["type"] == "Polygon"
    assert by["ichinomiya"]["weight"]["value"] == 200.0 and by["ichinomiya"]["dateObserved"]["value"] == \
        _iso(_ms(D1, 0))

    assert [e["id"] for e in _kv(client, {"type": "WasteObserved", "q": "address[district]==\"院庄\""})] == \
        [WASTE + "innosho"]
    assert [e["id"] for e in _kv(client, {"q": "weight>100;weight<300"})] == [WASTE + "ichinomiya"]
    within = _kv(client, {"type": "WasteObserved", "georel": "within", "geometry": "Polygon",
                          "coordinates": "[[[133.98,35.04],[134.03,35.04],[134.03,35.08],[133.98,35.08],[133.98,35.04]]]"})
    assert [e["id"] for e in within] == [WASTE + "chuo"]
    geo = _get(client, f"/entities/{WASTE}innosho", accept="application/geo+json")
    valid(response_schema("/entities/{entityId}", media="application/geo+json"), geo.json())
    assert geo.json()["geometry"]["type"] == "Polygon"

    rng = {"timerel": "between", "timeAt": _jst(D1), "endTimeAt": _jst(TODAY)}
    hist = check_json(_get(client, "/temporal/entities", {"type": "WasteObserved", "attrs": "weight", **rng}),
                      response_schema("/temporal/entities"))
    assert {e["id"]: [(i["value"], i["observedAt"]) for i in e["weight"]] for e in hist} == {
        WASTE + "chuo": [(200.75, _iso(_ms(D1, 0))), (55.0, _iso(_ms(D2, 0)))],
        WASTE + "ichinomiya": [(200.0, _iso(_ms(D1, 0)))],
        WASTE + "innosho": [(525.5, _iso(_ms(D2, 0)))]}
    agg = check_json(_get(client, "/temporal/entities", {
        "type": "WasteObserved", "q": "districtId==\"chuo\"", **rng, "options": "aggregatedValues",
        "aggrMethods": "sum,totalCount", "aggrPeriodDuration": "P1D"}), _list_of(AGGREGATED, "AggregatedEntity"))
    assert agg[0]["weight"]["sum"] == [[200.75, _iso(_ms(D1, 0)), _iso(_ms(D2, 0))],
                                       [55.0, _iso(_ms(D2, 0)), _iso(_ms(TODAY, 0))]]
    assert agg[0]["pickupCount"]["sum"] == [[2, _iso(_ms(D1, 0)), _iso(_ms(D2, 0))],
                                            [2, _iso(_ms(D2, 0)), _iso(_ms(TODAY, 0))]]
    whole = _get(client, f"/temporal/entities/{WASTE}innosho", {**rng, "attrs": "weight",
                                                               "options": "aggregatedValues", "aggrMethods": "sum"})
    assert whole.json()["weight"]["sum"] == [[525.5, _iso(_ms(D1, 0)), _iso(_ms(TODAY, 0))]]


def _list_of(doc: dict[str, Any], name: str) -> Any:
    """An array of the derived schema ``name`` (for aggregatedValues lists)."""
    item = _validator(doc, f"#/components/schemas/{name}")

    class _V:
        def iter_errors(self, body: Any) -> Any:
            assert isinstance(body, list)
            for e in body:
                yield from item.iter_errors(e)

    return _V()


# ------------------------------------------------------------------------------------------------------------
# buses


def test_bus_stops(city):
    client, _ = city
    body = check_json(_get(client, "/entities", {"type": "PublicTransportStop", "limit": "100", "count": "true"}),
                      response_schema("/entities"), count=19)
    s = next(e for e in body if e["id"] == STOP + "1004")
    assert s["name"] == {"type": "Property", "value": "城東むかし町"}
    assert s["stopCode"]["value"] == "1004" and s["transportationType"]["value"] == [3]
    assert s["nameEn"]["value"] and s["nameKana"]["value"]
    assert s["location"]["value"] == {"type": "Point", "coordinates": [134.01056, 35.06308]}
    near = {"georel": "near;maxDistance==50", "geometry": "Point", "coordinates": "[134.0105,35.0631]"}
    assert [e["id"] for e in _kv(client, {"type": "PublicTransportStop", **near})] == [STOP + "1004"]
    assert [e["id"] for e in _kv(client, near)] == [STOP + "1004", VEHICLE + "bus-01"]
    one = check_json(_get(client, f"/entities/{STOP}1001", {"options": "normalized"}),
                     response_schema("/entities/{entityId}"))
    assert one["name"]["value"] == "津山駅"
    geo = _get(client, "/entities", {"type": "PublicTransportStop", "q": "stopCode==\"1001\""},
               accept="application/geo+json")
    valid(response_schema("/entities", media="application/geo+json"), geo.json())


def test_buses_as_vehicles_and_nothing_personal(city):
    client, t1 = city
    body = check_json(_get(client, "/entities", {"type": "Vehicle", "q": "vehicleType==\"bus\""}),
                      response_schema("/entities"))
    assert [e["id"] for e in body] == [VEHICLE + "bus-01", VEHICLE + "bus-02"]  # bus-03 stale, bus-05 unservable
    b1, b2 = body
    assert b1["location"] == {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [134.01056, 35.06308]},
                              "observedAt": utc(t1)}
    assert b1["serviceProvided"]["value"] == ["urbanTransit"] and b1["category"]["value"] == ["public"]
    assert b1["occupancyPercentage"]["value"] == 47 and b1["occupancyPercentage"]["unitCode"] == "P1"
    assert b1["occupancyStatus"]["value"] == "FEW_SEATS_AVAILABLE"
    assert b1["speed"]["unitCode"] == "KMH" and b1["heading"] == {
        "type": "Property", "value": 92.5, "observedAt": b1["location"]["observedAt"], "unitCode": "DD"}
    assert b1["refPublicTransportStop"] == {"type": "Relationship", "object": STOP + "1004"}
    assert b1["currentStopStatus"]["value"] == "STOPPED_AT" and b1["tripId"]["value"] == "wd-03"
    assert "occupancyPercentage" not in b2 and "heading" not in b2  # no capacity, no bearing: as in the feed

    rng = {"timerel": "between", "timeAt": _iso(t1 - 120_000), "endTimeAt": _iso(t1 + 60_000)}
    hist = check_temporal(_get(client, f"/temporal/entities/{VEHICLE}bus-01", rng), "/temporal/entities/{entityId}")
    assert [i["value"] for i in hist["occupancyPercentage"]] == [40, 47]
    assert [i["value"]["coordinates"] for i in hist["location"]] == [[134.01, 35.063], [134.01056, 35.06308]]
    agg = check_json(_get(client, f"/temporal/entities/{VEHICLE}bus-01", {
        **rng, "options": "aggregatedValues", "aggrMethods": "avg,max", "attrs": "speed,occupancyPercentage"}),
        _validator(AGGREGATED, "#/components/schemas/AggregatedEntity"))
    assert agg["speed"]["avg"][0][0] == 6.0 and agg["occupancyPercentage"]["max"][0][0] == 46.8

    # nothing personal: every answer about the buses, in every form, holds no rider pseudonym
    texts = []
    for path, params in (("/entities", {"type": "Vehicle,PublicTransportStop", "limit": "1000"}),
                         ("/entities", {"type": "Vehicle", "options": "keyValues"}),
                         ("/entities", {"q": "tripId==\"wd-03\""}),
                         ("/attributes", {"details": "true"}), ("/types", {"details": "true"}),
                         ("/temporal/entities", {"type": "Vehicle,PublicTransportStop", **rng}),
                         ("/temporal/entities", {"type": "Vehicle", **rng, "options": "aggregatedValues",
                                                 "aggrMethods": "totalCount,distinctCount,sum"})):
        resp = _get(client, path, params)
        assert resp.status_code == 200, resp.text
        texts.append(resp.text)
    blob = "\n".join(texts)
    for rider in RIDERS:
        assert rider not in blob
    for word in ("rider", "board_stop", "devices", "household"):
        assert word not in blob
    assert all("rider" not in json.dumps(e) for e in body)
