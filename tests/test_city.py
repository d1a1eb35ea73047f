"""The simulated city through the real stack: every family, every scheduled fault, checked against ground truth.

A morning of Tsuyama at 720× (six simulated hours in 30 s): households' smart meters over B-route (Wi-SUN module
emulators driven by unmodified momonga), forest stations on Modbus RTU, a garbage truck with a weighing indicator
and GPS; their agents as real processes, Mosquitto, the ingest and InfluxDB. Every fault the devices can have is
scheduled once, plus an agent crash; afterwards InfluxDB must hold every fixed-time energy value exactly, every
forest sample exactly and every pickup (kg per district within the indicator's resolution), nothing doubled.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib
from pathlib import Path

import pytest

from citylab.city import CitySim, load_scenario
from citylab.cityrun import CityRun
from cityos.config import ConfigError, dump_toml
from cityos.simclock import ScaledClock
from edge.config import parse_config

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent

SCENARIO = """
name = "test morning"
seed = 11
districts = "{districts}"

[day]
date = "yesterday"
start = "06:00"
end = "12:00"
rate = 720

[meters]
households = 6
per_gateway = 3
poll_interval_s = 300

[forest]
stations = 2
per_gateway = 2
sample_interval_s = 600

[trucks]
count = 1
depart = "07:00"

[[faults]]
at = "06:40"
target = "hh-0001"
fault = "session_expired"

[[faults]]
at = "07:10"
target = "hh-0002"
fault = "rate_limit"
duration_s = 2400

[[faults]]
at = "07:20"
target = "hh-0003"
fault = "join_failure"

[[faults]]
at = "07:30"
target = "hh-0004"
fault = "wrong_password"
duration_s = 3600

[[faults]]
at = "07:40"
target = "hh-0005"
fault = "garbled"
duration_s = 3600

[[faults]]
at = "08:00"
target = "truck-01"
fault = "gps_dropout"
duration_s = 300

[[faults]]
at = "08:30"
target = "truck-01"
fault = "bad_checksum"
duration_s = 3600

[[faults]]
at = "09:00"
target = "gw-meter-02"
fault = "agent_kill"
duration_s = 1200

[[faults]]
at = "09:30"
target = "forest-01-01"
fault = "garbage"
duration_s = 3600
"""


def test_city_morning_with_every_fault_is_exact_in_influxdb(stack, influx_db, tmp_path):
    sc_path = tmp_path / "morning.toml"
    sc_path.write_text(SCENARIO.format(districts=REPO / "scenarios" / "tsuyama-districts.geojson"))
    sc = load_scenario(sc_path)
    run = CityRun(sc, tmp_path / "city", stack.info(), db=influx_db, say=lambda _m: None)
    try:
        run.start()
        run.play(threading.Event())
        run.settle(timeout=120)
        rep = run.verify()
    finally:
        run.stop()
    assert [f["applied"] for f in rep.faults] == [True] * len(sc.faults), rep.faults
    report = "\n".join(c.line() + "".join(f"\n  {p}" for p in c.problems[:10]) for c in rep.checks)
    assert [c.name for c in rep.checks] == ["forest", "energy", "waste"]
    assert rep.exact, f"{report}\ndead: {rep.dead}, dead-lettered: {rep.dead_lettered}"
    energy = {c.name: c for c in rep.checks}["energy"]
    assert energy.truth == 6 * 12  # six households × the fixed-time values 06:30 … 12:00
    waste = {c.name: c for c in rep.checks}["waste"]
    assert waste.truth >= 10 and len(waste.summary["kg_by_district"]) >= 3
    assert waste.summary["unlocated"] <= 2  # only pickups inside the 5-minute GPS dropout may lack a district


EARLY = """
name = "test early stop"
seed = 3
districts = "{districts}"

[day]
date = "yesterday"
start = "06:00"
end = "12:00"
rate = 288

[meters]
households = 3
per_gateway = 3

[forest]
stations = 2
per_gateway = 2

[trucks]
count = 1
depart = "09:00"

[buses]
count = 1
spec = "{bus_spec}"
"""


def test_a_day_stopped_early_is_checked_over_the_part_played(stack, influx_db, tmp_path):
    """`cityos demo --duration N`: 16 real seconds at 288x play 06:00-07:16 (the gateways start well before the
    bus leaves the depot at 06:45). The bus has made its first stop visits by then and the truck has not left:
    every family's check covers exactly what was played, and a family with nothing due yet says so instead of
    failing."""
    sc_path = tmp_path / "early.toml"
    sc_path.write_text(EARLY.format(districts=REPO / "scenarios" / "tsuyama-districts.geojson",
                                    bus_spec=REPO / "scenarios" / "bus-day.toml"))
    sc = load_scenario(sc_path)
    run = CityRun(sc, tmp_path / "city", stack.info(), db=influx_db, say=lambda _m: None)
    try:
        run.start()
        rep = run.run_day(threading.Event(), duration=16)
    finally:
        run.stop()
    report = "\n".join(c.line() + "".join(f"\n  {p}" for p in c.problems[:10]) for c in rep.checks)
    checks = {c.name: c for c in rep.checks}
    assert list(checks) == ["forest", "energy", "waste", "bus"]
    assert rep.exact, f"{report}\ndead: {rep.dead}, dead-lettered: {rep.dead_lettered}"
    assert all(c.partial for c in rep.checks)
    assert checks["forest"].truth >= 2 * 7 and checks["energy"].truth >= 3 * 2
    assert checks["waste"].nothing_due and "nothing due yet" in checks["waste"].line()
    assert checks["bus"].truth >= 5 and not checks["bus"].nothing_due  # the 07:00 trip's first stops


def test_meter_gateways_get_the_b_route_credentials_as_0600_files_not_in_their_config(tmp_path):
    """What the city writes for a meter gateway: each household's B-route ID and password in two 0600 files next
    to the gateway's config, which names only their paths, so that the raw TOML (the input of the config hash
    the agent reports) holds no secret; the source reads them back."""
    sc_path = tmp_path / "morning.toml"
    sc_path.write_text(SCENARIO.format(districts=REPO / "scenarios" / "tsuyama-districts.geojson"))
    city = CitySim(load_scenario(sc_path), tmp_path / "city", info=None)  # type: ignore[arg-type]
    city.plan()
    city.clock = ScaledClock(sim_start=city.sim_start, real_anchor=time.time(), rate=city.sc.day.rate)
    meters = next(f for f in city.families if f.name == "meter")
    for gw in meters.gateways:
        gw.dir.mkdir(parents=True)
    meters.start()
    try:
        assert len(meters.gateways) == 2
        for gw in meters.gateways:
            raw = tomllib.loads(dump_toml({
                "gateway": {"id": gw.gateway_id}, "mqtt": {"host": "127.0.0.1", "port": 1883, "tls": False},
                "outbox": {"path": gw.outbox}, "sources": gw.sources}))  # fmt: skip
            blob = json.dumps(raw, sort_keys=True, default=str, ensure_ascii=False)  # what config_hash hashes
            cfg = parse_config(raw, str(gw.config))
            assert [s.device_id for s in cfg.sources] == gw.devices
            for src in cfg.sources:
                h = meters.households[src.device_id]
                assert h["rbid"] not in blob and h["rbid"][-8:] not in blob and h["password"] not in blob
                assert src.rbid_file.parent == src.password_file.parent == gw.dir
                assert src.rbid_file.stat().st_mode & 0o777 == 0o600
                assert src.password_file.stat().st_mode & 0o777 == 0o600
                creds = src.credentials()
                assert creds.rbid.get_secret_value() == h["rbid"]
                assert creds.password.get_secret_value() == h["password"]
    finally:
        for sim in meters.sims.values():
            sim.stop()


def test_scenario_errors_name_the_field(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n[day]\nstart = "25:00"\nrate = -1\n')
    with pytest.raises(ConfigError) as exc:
        load_scenario(p)
    msg = str(exc.value)
    assert "day.start" in msg and "day.rate" in msg


def test_default_scenario_loads_and_is_a_whole_day():
    sc = load_scenario(REPO / "scenarios" / "tsuyama-day.toml")
    t0, t1 = sc.day.window()
    assert t1 - t0 == 24 * 3600 and sc.day.rate == 288
    assert sc.meters.households > 0 and sc.forest.stations > 0 and sc.trucks.count > 0
    assert {f.fault for f in sc.faults} >= {"session_expired", "rate_limit", "gps_dropout", "agent_kill"}
