"""The GTFS-Realtime VehiclePositions feed (cityos_api/gtfs_rt.py, cityos_api/app.py) against real InfluxDB 1.6.

Points are written as the ingest writes them: wire-contract ``bus_position`` readings (docs/bus.md) through
``ingest.lineproto.batch_to_lines``. Four buses: one on a trip stopped at a stop with a capacity configured, one on a
trip in transit without capacity (its older point had one: nothing may leak from it), one out of service (no trip),
and one whose last position is stale (left out). The feed is fetched through the FastAPI app and parsed back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format
from google.transit import gtfs_realtime_pb2 as rt
from helpers import influx_write

from citylab.stack import influx_settings
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.app import create_app
from cityos_api.gtfs_rt import OCCUPANCY_STEPS, build_feed, occupancy_status
from cityos_api.settings import ApiSettings, InfluxSettings
from cityos_cli.cli import main
from ingest.lineproto import batch_to_lines

VP = rt.VehiclePosition


def _position(device: str, ts: int, **values: Any) -> Reading:
    base: dict[str, Any] = {"lat": 35.0586, "lon": 134.0028, "speed_kmh": 0.0, "trip_id": "", "route_id": "",
                            "start_date": "", "stop_id": "", "stop_sequence": 0.0, "stopped": False,
                            "occupancy": 0.0}
    return Reading(device_id=device, kind="bus_position", ts=ts, values={**base, **values})


def _write(stack_info, db: str, readings: list[Reading]) -> None:
    batch = checked(TelemetryBatch(gateway_id="gw-bus-01", boot_id="boot-0001", seq=1, sent_at=readings[-1].ts,
                                   readings=readings))
    influx_write(stack_info, db, batch_to_lines(batch))


@pytest.fixture
def buses(stack_info, influx_db) -> int:
    """Write the four buses; returns the ms of bus-01's newest fix."""
    now = int(time.time() * 1000)
    t1 = now - 20_000
    _write(stack_info, influx_db, [
        # bus-01: on trip wd-03, stopped at 城東むかし町 (1004, 4th call), capacity configured
        _position("bus-01", t1 - 15_000, lat=35.0630, lon=134.0100, speed_kmh=12.0, bearing_deg=80.0,
                  trip_id="wd-03", route_id="loop-e", start_date="20261201", stop_id="1004", stop_sequence=4.0,
                  stopped=False, occupancy=20.0, occupancy_pct=40.0),
        _position("bus-01", t1, lat=35.06308, lon=134.01056, speed_kmh=0.0, bearing_deg=92.5, trip_id="wd-03",
                  route_id="loop-e", start_date="20261201", stop_id="1004", stop_sequence=4.0, stopped=True,
                  occupancy=23.4, occupancy_pct=46.8),
        # bus-02: in transit to 市役所 (1012, 12th call) on wd-04, no capacity now (an older point had one),
        # no bearing in the newest fix
        _position("bus-02", now - 45_000, lat=35.07, lon=133.99, speed_kmh=30.0, bearing_deg=10.0,
                  trip_id="wd-04", route_id="loop-e", start_date="20261201", stop_id="1011", stop_sequence=11.0,
                  stopped=False, occupancy=40.0, occupancy_pct=95.0),
        _position("bus-02", now - 30_000, lat=35.0712, lon=133.9951, speed_kmh=36.0, trip_id="wd-04",
                  route_id="loop-e", start_date="20261201", stop_id="1012", stop_sequence=12.0, stopped=False,
                  occupancy=7.2),
        # bus-03: last fix 10 minutes ago: not in the feed
        _position("bus-03", now - 600_000, trip_id="wd-02", route_id="loop-e", start_date="20261201",
                  stop_id="1001", stop_sequence=1.0, stopped=True),
        # bus-04: out of service at the depot, no trip matched
        _position("bus-04", now - 5_000, lat=35.0590, lon=134.0010, route_id="", stopped=True),
    ])
    return t1


def _app(stack_info, db: str) -> TestClient:
    settings = ApiSettings(influx=InfluxSettings(**influx_settings(stack_info, "reader", db)))
    return TestClient(create_app(settings))


def _entities(feed: rt.FeedMessage) -> dict[str, rt.VehiclePosition]:
    return {e.id: e.vehicle for e in feed.entity}


def test_feed_has_every_fresh_vehicle_with_every_field(stack_info, influx_db, buses):
    t1 = buses
    before = time.time()
    with _app(stack_info, influx_db) as client:
        resp = client.get("/gtfs-rt/vehicle-positions.pb")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-protobuf"
    feed = rt.FeedMessage.FromString(resp.content)

    assert feed.header.gtfs_realtime_version == "2.0"
    assert feed.header.incrementality == rt.FeedHeader.FULL_DATASET
    assert int(before) <= feed.header.timestamp <= time.time() + 1
    got = _entities(feed)
    assert list(got) == ["bus-01", "bus-02", "bus-04"]  # bus-03 is stale; sorted by vehicle
    assert all(e.HasField("vehicle") and not e.HasField("trip_update") for e in feed.entity)

    b1 = got["bus-01"]
    assert (b1.trip.trip_id, b1.trip.route_id, b1.trip.start_date) == ("wd-03", "loop-e", "20261201")
    assert b1.vehicle.id == "bus-01"
    assert b1.position.latitude == pytest.approx(35.06308, abs=1e-5)  # float32 on the wire
    assert b1.position.longitude == pytest.approx(134.01056, abs=1e-4)
    assert b1.position.bearing == pytest.approx(92.5)
    assert b1.position.HasField("speed") and b1.position.speed == 0.0
    assert b1.current_stop_sequence == 4 and b1.stop_id == "1004"
    assert b1.current_status == VP.STOPPED_AT
    assert b1.timestamp == t1 // 1000
    assert b1.occupancy_percentage == 47
    assert b1.occupancy_status == VP.FEW_SEATS_AVAILABLE

    b2 = got["bus-02"]
    assert (b2.trip.trip_id, b2.trip.route_id, b2.trip.start_date) == ("wd-04", "loop-e", "20261201")
    assert b2.vehicle.id == "bus-02"
    assert b2.position.latitude == pytest.approx(35.0712, abs=1e-5)
    assert b2.position.longitude == pytest.approx(133.9951, abs=1e-4)
    assert b2.position.speed == pytest.approx(10.0)  # 36 km/h in m/s
    assert not b2.position.HasField("bearing"), "the newest fix had no bearing: none may come from an older one"
    assert b2.current_stop_sequence == 12 and b2.stop_id == "1012"
    assert b2.current_status == VP.IN_TRANSIT_TO
    assert not b2.HasField("occupancy_status") and not b2.HasField("occupancy_percentage"), \
        "no capacity in the newest point: no occupancy (the 95 % of an older point must not leak)"

    b4 = got["bus-04"]
    assert not b4.HasField("trip"), "no trip matched: no TripDescriptor"
    assert b4.vehicle.id == "bus-04"
    assert not b4.HasField("current_stop_sequence") and not b4.stop_id and not b4.HasField("current_status")
    assert not b4.HasField("occupancy_status")


def test_json_is_the_same_feed(stack_info, influx_db, buses):
    with _app(stack_info, influx_db) as client:
        pb = rt.FeedMessage.FromString(client.get("/gtfs-rt/vehicle-positions.pb").content)
        resp = client.get("/gtfs-rt/vehicle-positions.json")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    doc = resp.json()
    assert [e["id"] for e in doc["entity"]] == ["bus-01", "bus-02", "bus-04"]
    assert doc["entity"][0]["vehicle"]["occupancy_status"] == "FEW_SEATS_AVAILABLE"
    parsed = json_format.Parse(resp.text, rt.FeedMessage())
    parsed.header.timestamp = pb.header.timestamp  # two requests, maybe a second apart
    assert parsed == pb


def test_empty_database_gives_an_empty_feed(stack_info, influx_db):
    with _app(stack_info, influx_db) as client:
        feed = rt.FeedMessage.FromString(client.get("/gtfs-rt/vehicle-positions.pb").content)
    assert feed.header.gtfs_realtime_version == "2.0" and len(feed.entity) == 0


def test_influxdb_unreachable_is_503_not_an_empty_feed():
    settings = ApiSettings(influx=InfluxSettings(url="http://127.0.0.1:9", db="x", timeout_s=2))
    with TestClient(create_app(settings)) as client:
        resp = client.get("/gtfs-rt/vehicle-positions.pb")
    assert resp.status_code == 503


def test_cli_snapshot_from_the_stack(stack_info, influx_db, buses, tmp_path, capsys):
    out = tmp_path / "vp.pb"
    rc = main(["gtfs-rt", "--stack", str(stack_info.run_dir), "--db", influx_db, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    feed = rt.FeedMessage.FromString(out.read_bytes())
    assert [e.id for e in feed.entity] == ["bus-01", "bus-02", "bus-04"]
    assert "3 vehicle(s)" in capsys.readouterr().out
    assert main(["gtfs-rt", "--stack", str(stack_info.run_dir), "--db", influx_db, "--max-age-s", "1000"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in doc["entity"]] == ["bus-01", "bus-02", "bus-03", "bus-04"]


@pytest.mark.parametrize(("pct", "status"), [
    (0.0, VP.EMPTY), (4.9, VP.EMPTY),
    (5.0, VP.MANY_SEATS_AVAILABLE), (39.9, VP.MANY_SEATS_AVAILABLE),
    (40.0, VP.FEW_SEATS_AVAILABLE), (69.9, VP.FEW_SEATS_AVAILABLE),
    (70.0, VP.STANDING_ROOM_ONLY), (89.9, VP.STANDING_ROOM_ONLY),
    (90.0, VP.CRUSHED_STANDING_ROOM_ONLY), (99.9, VP.CRUSHED_STANDING_ROOM_ONLY),
    (100.0, VP.FULL), (130.0, VP.FULL),
])
def test_occupancy_status_thresholds(pct, status):
    assert occupancy_status(pct) == status


def test_occupancy_steps_increase_and_percentage_is_rounded():
    bounds = [b for b, _s in OCCUPANCY_STEPS]
    assert bounds == sorted(bounds) and bounds[-1] == 100.0
    from cityos_api.gtfs_rt import Position

    p = Position.model_validate({"device": "bus-09", "time": 1_700_000_000_999, "lat": 35.0, "lon": 134.0,
                                 "occupancy_pct": 112.6, "trip_id": "t1", "stop_sequence": 3.0})
    v = build_feed([p], 1_700_000_001).entity[0].vehicle
    assert v.occupancy_percentage == 113 and v.occupancy_status == VP.FULL
    assert v.timestamp == 1_700_000_000 and v.current_stop_sequence == 3
    assert not v.HasField("current_status"), "no stopped flag: no status"
