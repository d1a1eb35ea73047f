"""The garbage-truck source against the simulated truck, over two real pseudo-terminals.

The gateway side (``edge.sources.truck.source``: codecs, tracker, ports) and the device side
(``firmware_sim.truck.sim``) are independent; the simulator's ground truth says which pickups and trips the
gateway should report. The only test double is the outbox (:class:`Outbox`: readings and committed state).

Time runs on a :class:`ScaledClock` at a few hundred times real time, shared by the simulator (RMC time) and the
gateway's data clock, so a collection round takes seconds. Faults are scheduled in *simulated* time at known
phases of the route (the simulator generates its streams in simulated-time order), so what is injected where
does not depend on thread scheduling.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cityos.config import ConfigError
from cityos.simclock import ScaledClock
from cityos.wire import Reading, measurement_for
from edge import clock as edge_clock
from edge.config import parse_config
from edge.sources.base import registry
from edge.sources.common.geo import load_districts
from edge.sources.truck.source import GarbageTruck, TruckConfig
from firmware_sim.truck.sim import (
    DEFAULT_DISTRICTS_PATH,
    DEFAULT_ROUTE_PATH,
    GarbageTruckSim,
    Route,
    TruckSimSpec,
)

RES = 10.0
SIM_START = 1_775_030_400.0  # 2026-04-01 08:00 UTC (17:00 JST)

#: A compact route through four districts (stops well inside the rough rectangles), ending at the disposal site.
ROUTE = Route.model_validate(
    {
        "name": "test-route",
        "depot": {"lat": 35.0520, "lon": 134.0100},
        "disposal": {"lat": 35.0800, "lon": 133.9780, "radius_m": 150},
        "stops": [
            {"name": "chuo-a", "lat": 35.0560, "lon": 134.0150},
            {"name": "chuo-b", "lat": 35.0620, "lon": 134.0180},
            {"name": "hayashida-a", "lat": 35.0540, "lon": 134.0300},
            {"name": "takano-a", "lat": 35.0660, "lon": 134.0310},
            {"name": "ichinomiya-a", "lat": 35.0800, "lon": 134.0150},
            {"name": "innosho-a", "lat": 35.0760, "lon": 133.9800},
        ],
    }
)


def spec(**kw: Any) -> TruckSimSpec:
    base: dict[str, Any] = {
        "truck_id": "truck-07",
        "route": ROUTE,
        "trips": 1,
        "seed": 7,
        "speed_kmh": 40.0,
        "resolution_kg": RES,
        "zero_drift_kg_per_h": 0.0,
        "depot_s": 15.0,
        "settle_s": 3.0,
        "hold_s": 12.0,
        "lift_s": 10.0,
        "unload_s": 30.0,
        "indicator_max_real_hz": 200.0,
        "gps_max_real_hz": 100.0,
    }
    return TruckSimSpec(**(base | kw))


class Outbox:
    """In-memory stand-in for the durable outbox: readings and state, committed together."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state: dict[str, Any] = copy.deepcopy(state or {})
        self.readings: list[Reading] = []
        self._lock = threading.Lock()

    def emit(self, reading: Reading, state: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.readings.append(reading)
            if state is not None:
                self.state = copy.deepcopy(state)

    def kind(self, kind: str) -> list[Reading]:
        with self._lock:
            return [r for r in self.readings if r.kind == kind]


class Running:
    """A GarbageTruck source running in its own thread, as the agent runs it."""

    def __init__(self, config: TruckConfig, outbox: Outbox) -> None:
        self.source = GarbageTruck(config)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.source.run, args=(outbox, self.stop_event), daemon=True)
        self.thread.start()

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "run() did not return after stop was set"
        return self.source.health()


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def links(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "dev" / "ttyINDICATOR", tmp_path / "dev" / "ttyGPS"


def truck_config(links: tuple[Path, Path], **kw: Any) -> TruckConfig:
    ind, gps = links
    return TruckConfig.model_validate(
        {
            "type": "garbage_truck",
            "name": "truck-07",
            "device_id": "truck-07",
            "indicator_port": str(ind),
            "gps_port": str(gps),
            "districts": str(DEFAULT_DISTRICTS_PATH),
            "disposal": {"lat": ROUTE.disposal.lat, "lon": ROUTE.disposal.lon, "radius_m": 150},
            "stable_window_s": 0.0,  # lines, not arrival times: robust when the test box stalls (see docs)
            "stable_lines": 2,
            "min_pickup_kg": 20.0,
            "resolution_kg": RES,
            "gps_timeout_s": 30.0,
            **kw,
        }
    )


class Scenario:
    """The simulator, the shared scaled clock and the truth, for one test."""

    def __init__(self, tmp_path: Path, links: tuple[Path, Path], sim_spec: TruckSimSpec, rate: float) -> None:
        self.clock = ScaledClock(sim_start=SIM_START, real_anchor=time.time(), rate=rate)
        edge_clock.use_scaled(self.clock)
        self.truth_path = tmp_path / "truth.jsonl"
        self.sim = GarbageTruckSim(
            sim_spec, clock=self.clock, truth_path=self.truth_path, indicator_link=links[0], gps_link=links[1]
        )

    def truth(self, event: str) -> list[dict[str, Any]]:
        return [o for o in map(json.loads, self.truth_path.read_text().splitlines()) if o["event"] == event]


@pytest.fixture
def scenario_factory(tmp_path: Path, links: tuple[Path, Path]) -> Iterator[Callable[..., Scenario]]:
    made: list[Scenario] = []

    def make(sim_spec: TruckSimSpec, rate: float = 500.0) -> Scenario:
        sc = Scenario(tmp_path, links, sim_spec, rate)
        made.append(sc)
        return sc

    try:
        yield make
    finally:
        for sc in made:
            sc.sim.stop()
        edge_clock.use_scaled(None)


def run_to_end(sc: Scenario, outbox: Outbox, *, timeout: float = 30.0) -> None:
    """Wait for the simulator to finish its trips and the gateway to report the last one."""
    trips = sc.sim.spec.trips
    wait_for(lambda: len(outbox.kind("truck_trip")) >= trips, timeout, f"{trips} trip summaries")


def assert_pickups_match(
    outbox: Outbox, sc: Scenario, *, unknown_stops: set[tuple[int, int]] = frozenset()
) -> None:
    """Same pickups as the truth, none missing, none doubled; each within the resolution; same districts."""
    got = outbox.kind("truck_collection")
    want = sc.truth("pickup")
    assert len(got) == len(want), f"{len(got)} pickups reported, {len(want)} made"
    for r, t in zip(got, want, strict=True):
        assert int(r.values["trip_no"]) == t["trip"]
        assert abs(r.values["kg"] - t["kg_true"]) <= RES, (r.values, t)
        expected = "unknown" if (t["trip"], t["stop"]) in unknown_stops else t["district"]
        assert r.tags["district"] == expected, (r.values, r.tags, t)
    ts = [r.ts for r in outbox.readings]
    assert ts == sorted(ts) and len(set(ts)) == len(ts), "timestamps strictly increase"
    # kg per district per trip, as the display showed it
    got_sum: dict[tuple[int, str], float] = defaultdict(float)
    want_sum: dict[tuple[int, str], float] = defaultdict(float)
    for r in got:
        got_sum[(int(r.values["trip_no"]), r.tags["district"])] += r.values["kg"]
    for t in want:
        d = "unknown" if (t["trip"], t["stop"]) in unknown_stops else t["district"]
        want_sum[(t["trip"], d)] += t["kg_displayed"]
    assert set(got_sum) == set(want_sum)
    for key, kg in want_sum.items():
        assert abs(got_sum[key] - kg) <= RES, (key, got_sum[key], kg)


def assert_trips_match(outbox: Outbox, sc: Scenario) -> None:
    got, want = outbox.kind("truck_trip"), sc.truth("trip")
    assert [int(r.values["trip_no"]) for r in got] == [t["trip"] for t in want]
    pickups = outbox.kind("truck_collection")
    for r, t in zip(got, want, strict=True):
        v = r.values
        mine = [p.values["kg"] for p in pickups if int(p.values["trip_no"]) == t["trip"]]
        assert v["pickups"] == t["pickups"] == len(mine)
        assert v["kg_collected"] == pytest.approx(sum(mine))
        assert abs(v["kg_collected"] - t["kg_displayed"]) <= RES
        assert abs(v["kg_unloaded"] - t["kg_unloaded_displayed"]) <= RES
        assert v["distance_km"] == pytest.approx(t["distance_km"], rel=0.03)
        assert abs(v["duration_s"] - t["duration_s"]) <= 30, (v, t)
        assert abs(r.ts - t["ts"]) <= 30_000


# --- happy path ---------------------------------------------------------------------------------------------


def test_two_trips_match_the_ground_truth(
    scenario_factory: Callable[..., Scenario], links: tuple[Path, Path]
) -> None:
    sc = scenario_factory(spec(trips=2, zero_drift_kg_per_h=60.0))
    outbox = Outbox()
    sc.sim.start()
    run = Running(truck_config(links), outbox)
    try:
        run_to_end(sc, outbox)
    finally:
        health = run.stop()
    assert_pickups_match(outbox, sc)
    assert_trips_match(outbox, sc)
    first = outbox.kind("truck_collection")[0]
    assert first.units["kg"] == "kg" and first.values["fix_age_s"] < 30
    assert SIM_START * 1000 < first.ts < SIM_START * 1000 + 3600_000, "stamped with simulated GPS time"
    trips = sc.truth("trip")
    assert health["pickups"] == 12 and health["trips"] == 2
    assert (
        health["gps_dropouts"] == 0
        and health["nmea_bad_checksum"] == 0
        and health["indicator_bad_lines"] == 0
    )
    assert (
        health["indicator_unstable"] > 0 and health["gps_fix_quality"] == 1 and health["gps_satellites"] == 11
    )
    assert abs(health["zero_drift_kg"] - trips[-1]["zero_drift_displayed_kg"]) <= RES
    assert trips[-1]["zero_drift_displayed_kg"] >= 2 * RES, "the scenario drifts visibly"
    assert outbox.state["trip_no"] == 3 and outbox.state["kg"] == 0.0


# --- faults -------------------------------------------------------------------------------------------------


def run_one_trip(
    scenario_factory: Callable[..., Scenario],
    links: tuple[Path, Path],
    inject: Callable[[GarbageTruckSim], None],
    *,
    sim_kw: dict[str, Any] | None = None,
    cfg_kw: dict[str, Any] | None = None,
    rate: float = 500.0,
) -> tuple[Scenario, Outbox, dict[str, float]]:
    sc = scenario_factory(spec(**(sim_kw or {})), rate)
    inject(sc.sim)
    outbox = Outbox()
    sc.sim.start()
    run = Running(truck_config(links, **(cfg_kw or {})), outbox)
    try:
        run_to_end(sc, outbox)
    finally:
        health = run.stop()
    return sc, outbox, health


def test_gps_dropouts_use_the_last_fix_or_say_unknown(
    scenario_factory: Callable[..., Scenario], links: tuple[Path, Path]
) -> None:
    def inject(sim: GarbageTruckSim) -> None:
        # stop 2 (hayashida): the receiver loses the fix after the truck stopped there → the last fix is used
        pre = sim.segments("pre", trip=1, stop=2)[0]
        sim.gps_dropout(60.0, at=pre.t0 + sim.gps_period + 0.5)
        # stop 4 (ichinomiya): silent from early in the drive there until after the pickup → too old: unknown
        drive = sim.segments("drive", trip=1, stop=4)[0]
        post = sim.segments("post", trip=1, stop=4)[0]
        sim.gps_dropout(post.t1 + 5 - (drive.t0 + 10), at=drive.t0 + 10, silent=True)

    sc, outbox, health = run_one_trip(scenario_factory, links, inject, cfg_kw={"fix_max_age_s": 60.0})
    assert_pickups_match(outbox, sc, unknown_stops={(1, 4)})
    pickups = outbox.kind("truck_collection")
    assert "lat" not in pickups[4].values, "no position is invented"
    assert pickups[2].values["fix_age_s"] > 0
    assert health["gps_dropouts"] >= 2
    assert health["pickups_last_fix"] == 1 and health["pickups_no_fix"] == 1
    assert health["pickups_unknown_district"] == 1
    (trip,) = outbox.kind("truck_trip")
    assert trip.values["pickups_unknown_district"] == 1 and trip.values["pickups"] == 6


@pytest.mark.parametrize(
    ("fault", "counter"),
    [("bad_checksum", "nmea_bad_checksum"), ("garbage", "indicator_bad_lines")],
)
def test_line_noise_is_counted_and_loses_no_pickup(
    scenario_factory: Callable[..., Scenario], links: tuple[Path, Path], fault: str, counter: str
) -> None:
    sc, outbox, health = run_one_trip(scenario_factory, links, lambda sim: sim.set_fault(fault, 0.3))
    assert_pickups_match(outbox, sc)
    assert_trips_match(outbox, sc)
    injected = sc.sim.counters["bad_checksums" if fault == "bad_checksum" else "garbage_lines"]
    assert injected > 20
    assert (
        health[counter] >= 0.5 * injected
    )  # garbage may spoil the real line after it: counted once per line


def test_overload_is_counted_and_loses_no_pickup(
    scenario_factory: Callable[..., Scenario], links: tuple[Path, Path]
) -> None:
    def inject(sim: GarbageTruckSim) -> None:
        drive = sim.segments("drive", trip=1, stop=1)[0]
        sim.overload(20.0, at=drive.t0 + 5)
        pre = sim.segments("pre", trip=1, stop=3)[0]  # and while settling before a lift
        sim.overload(4.0, at=pre.t0 + 1)

    sc, outbox, health = run_one_trip(scenario_factory, links, inject)
    assert_pickups_match(outbox, sc)
    assert_trips_match(outbox, sc)
    assert health["indicator_overload"] >= 3


@pytest.mark.parametrize("port", ["indicator", "gps"])
def test_unplug_and_replug_lose_no_pickup(
    scenario_factory: Callable[..., Scenario], links: tuple[Path, Path], port: str
) -> None:
    def inject(sim: GarbageTruckSim) -> None:
        drive = sim.segments("drive", trip=1, stop=5)[0]  # the longest leg
        sim.unplug(port, at=drive.t0 + 10, duration_s=15.0)  # type: ignore[arg-type]

    sc, outbox, health = run_one_trip(scenario_factory, links, inject, rate=300.0)
    assert_pickups_match(outbox, sc)
    assert_trips_match(outbox, sc)
    assert sc.sim.counters["unplugs"] == sc.sim.counters["replugs"] == 1
    assert health[f"{port}_port_errors"] >= 1 and health[f"{port}_reconnects"] >= 1


# --- restarts -----------------------------------------------------------------------------------------------


def test_restart_with_saved_state_neither_repeats_nor_loses_a_pickup(
    scenario_factory: Callable[..., Scenario], links: tuple[Path, Path]
) -> None:
    """Three agent runs over one trip, each starting from the state the previous one committed.

    Run 1 stops right after its third pickup (a quick restart: run 2 must not report it again). Run 2 stops after
    the fourth, and the agent stays down while the truck collects at stop 5: run 3 reports that bin at its first
    settle (stop 6, where the truck is then), and stop 6's own bin after it.
    """
    sc = scenario_factory(spec(), 400.0)
    sc.sim.start()
    committed: list[Reading] = []
    state: dict[str, Any] = {}

    def run_until(pred: Callable[[Outbox], bool], what: str) -> Outbox:
        nonlocal state
        outbox = Outbox(state)
        run = Running(truck_config(links), outbox)
        try:
            wait_for(lambda: pred(outbox), 30.0, what)
        finally:
            run.stop()
        committed.extend(outbox.readings)
        state = outbox.state
        return outbox

    def pickups(outbox: Outbox) -> int:
        return len(outbox.kind("truck_collection"))

    run_until(lambda o: pickups(o) >= 3, "three pickups")
    assert state["pickups"] == 3
    run_until(lambda o: pickups(o) >= 1, "the fourth pickup")
    assert state["pickups"] == 4
    post5 = sc.sim.segments("post", trip=1, stop=4)[0]
    assert sc.sim.wait_until(post5.t1 + 5, 30.0)
    run_until(lambda o: len(o.kind("truck_trip")) >= 1, "the trip summary")

    got = [r for r in committed if r.kind == "truck_collection"]
    want = sc.truth("pickup")
    assert [int(r.values["pickup_no"]) for r in got] == [1, 2, 3, 4, 5, 6]
    for r, t in zip(got, want, strict=True):
        assert abs(r.values["kg"] - t["kg_true"]) <= RES
    assert [r.tags["district"] for r in got] == [t["district"] for t in want[:4]] + ["innosho", "innosho"]
    assert len({r.ts for r in committed}) == len(committed)
    (trip,) = [r for r in committed if r.kind == "truck_trip"]
    (truth_trip,) = sc.truth("trip")
    assert trip.values["pickups"] == 6 and trip.values["trip_no"] == 1
    assert abs(trip.values["kg_collected"] - truth_trip["kg_displayed"]) <= RES
    assert trip.values["kg_collected"] == pytest.approx(sum(r.values["kg"] for r in got))
    # distance across the downtime is the straight line from the last committed position: shorter, not lost
    assert 0.7 * truth_trip["distance_km"] <= trip.values["distance_km"] <= truth_trip["distance_km"] * 1.01
    assert state["trip_no"] == 2


# --- config -------------------------------------------------------------------------------------------------


def _feature(
    fid: Any = "kamo", name: Any = "加茂", ring: Any = None, gtype: str = "Polygon"
) -> dict[str, Any]:
    ring = (
        ring
        if ring is not None
        else [[134.0, 35.0], [134.1, 35.0], [134.1, 35.1], [134.0, 35.1], [134.0, 35.0]]
    )
    return {
        "type": "Feature",
        "properties": {"id": fid, "name": name},
        "geometry": {"type": gtype, "coordinates": [ring]},
    }


def _fc(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        (_fc(), '"features" must be a non-empty list'),
        ({"type": "Feature"}, "not a GeoJSON FeatureCollection"),
        (_fc(_feature(fid="Kamo")), "property 'id' is 'Kamo'"),
        (_fc(_feature(fid=None)), "property 'id' is None"),
        (_fc(_feature(), _feature(name="加茂二")), "features[1] (id 'kamo'): duplicate district id"),
        (_fc(_feature(fid="unknown")), "'unknown' is reserved"),
        (_fc(_feature(name="")), "property 'name' must be a non-empty string"),
        (_fc(_feature(gtype="Point")), "geometry type 'Point'"),
        (
            _fc(_feature(ring=[[134.0, 35.0], [134.1, 35.0], [134.1, 35.1], [134.0, 35.1]])),
            "ring is not closed",
        ),
        (_fc(_feature(ring=[[134.0, 35.0], [134.1, 35.0], [134.0, 35.0]])), "at least 4 positions"),
        (_fc(_feature(ring=[[35.0, 134.0], [35.1, 134.0], [35.1, 134.1], [35.0, 134.0]])), "lon first"),
        (
            _fc(_feature(ring=[[134.0, "35"], [134.1, 35.0], [134.1, 35.1], [134.0, "35"]])),
            "[lon, lat] numbers",
        ),
    ],
)
def test_a_bad_districts_file_is_a_config_error_naming_the_problem(
    tmp_path: Path, links: tuple[Path, Path], content: Any, problem: str
) -> None:
    path = tmp_path / "districts.geojson"
    path.write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
    raw = {
        "gateway": {"id": "gw-truck-07"},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "sources": [truck_config(links).model_dump(mode="json") | {"districts": str(path)}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "gateway.toml")
    msg = str(err.value)
    assert "sources.0.districts: " in msg
    assert problem in msg


def test_a_missing_districts_file_and_unusable_thresholds_are_config_errors(
    tmp_path: Path, links: tuple[Path, Path]
) -> None:
    with pytest.raises(ValidationError, match="cannot read"):
        truck_config(links, districts=str(tmp_path / "nope.geojson"))
    with pytest.raises(ValidationError, match="below the indicator resolution"):
        truck_config(links, min_pickup_kg=5.0)
    with pytest.raises(ValidationError, match="extra"):
        truck_config(links, stoped_kmh=3.0)


def test_registered_and_the_default_scenario_files_are_valid() -> None:
    assert registry()["garbage_truck"].config_model is TruckConfig
    route = Route.load(DEFAULT_ROUTE_PATH)
    districts = load_districts(DEFAULT_DISTRICTS_PATH)
    assert 5 <= len(districts) <= 8
    located = [districts.locate(s.lat, s.lon) for s in route.stops]
    assert 15 <= len(route.stops) <= 25 and None not in located
    assert len(set(located)) >= 4, "the default route spans several districts"
    assert measurement_for("truck_collection") == "waste_collection"
    assert measurement_for("truck_trip") == "waste_trip"


def test_simulator_cli_runs_and_streams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_sim.truck.sim import main

    ind, gps, gt = tmp_path / "ttyIND", tmp_path / "ttyGPS", tmp_path / "gt.jsonl"
    argv = ["--indicator-link", str(ind), "--gps-link", str(gps), "--ground-truth", str(gt), "--rate", "400"]
    assert (
        main(
            [*argv, "--duration", "1.5", "--gps-dropout", "10:20", "--unplug", "gps:30:5", "--garbage", "0.1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"indicator {ind}, gps {gps}" in out and '"unplugs": 1' in out and '"replugs": 1' in out
    assert not ind.exists() and not gps.exists(), "links are removed when the simulator stops"
    assert any(json.loads(line)["event"] == "pickup" for line in gt.read_text().splitlines())
