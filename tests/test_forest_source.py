"""The forest station source against the simulated stations, over a real pseudo-terminal.

The gateway side (``edge.sources.forest``) and the device side (``firmware_sim.forest_station``) implement the
register map independently; the simulator's ground truth says which readings the gateway should make. The only
test double is the outbox: :class:`Outbox` collects what the source emits, with the committed state.
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

from cityos.wire import Reading
from edge.sources.base import registry
from edge.sources.forest import ForestBus, ForestBusConfig
from firmware_sim.forest_station import ForestStationSim, StationSpec
from firmware_sim.scenario import Scenario

#: One "hour" of scenario per second; the storm starts after a second.
SCENARIO = Scenario(accel=3600, dry_hours=1.0)
FREEZE_DS = 65535  # a sample interval long enough that no new sample comes during the catch-up


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

    def by_device(self) -> dict[str, list[Reading]]:
        out: dict[str, list[Reading]] = defaultdict(list)
        with self._lock:
            for r in self.readings:
                out[r.device_id].append(r)
        return out


class Running:
    """A ForestBus running in its own thread, as the agent runs it."""

    def __init__(self, config: ForestBusConfig, outbox: Outbox) -> None:
        self.bus = ForestBus(config)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.bus.run, args=(outbox, self.stop_event), daemon=True)
        self.thread.start()

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "run() did not return after stop was set"
        return self.bus.health()


def bus_config(port: Path | str, units: dict[str, int], **kw: Any) -> ForestBusConfig:
    return ForestBusConfig.model_validate(
        {
            "type": "forest_station",
            "name": "forest-bus-0",
            "port": str(port),
            "timeout_s": 0.1,
            "poll_interval_s": 0.05,
            "retries": 2,
            "stations": [{"device_id": d, "unit": u} for d, u in units.items()],
            **kw,
        }
    )


def truth_samples(path: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        if "sample_no" in obj:
            out[obj["device_id"]].append(obj)
    return out


def truth_events(path: Path) -> list[dict[str, Any]]:
    return [o for o in map(json.loads, path.read_text().splitlines()) if "event" in o]


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def freeze_and_catch_up(sim: ForestStationSim, outbox: Outbox, gt: Path, units: dict[str, int]) -> None:
    """Stop new samples, then wait until the gateway has emitted each station's last sample."""
    for unit in units.values():
        sim.set_sample_interval(unit, FREEZE_DS)

    def caught_up() -> bool:
        truth, got = truth_samples(gt), outbox.by_device()
        return all(got.get(d) and got[d][-1].ts == truth[d][-1]["ts"] for d in units)

    wait_for(caught_up, 5.0, "the gateway to read the last sample")


def assert_same(readings: list[Reading], truth: list[dict[str, Any]], *, first_ever: bool = True) -> None:
    """Same samples, same values. The first reading of a station ever has no rain baseline: rain_mm 0.0."""
    assert [r.ts for r in readings] == [t["ts"] for t in truth]
    for i, (r, t) in enumerate(zip(readings, truth, strict=True)):
        assert r.kind == "forest_station"
        if i == 0 and first_ever:
            assert r.values["rain_mm"] == 0.0
        assert r.values == t["values"], f"sample {t['sample_no']}"


@pytest.fixture
def gt(tmp_path: Path) -> Path:
    return tmp_path / "ground-truth.jsonl"


@pytest.fixture
def make_sim(tmp_path: Path, gt: Path) -> Iterator[Callable[..., ForestStationSim]]:
    sims: list[ForestStationSim] = []

    def make(
        units: dict[str, int], interval_ds: int, scenario: Scenario = SCENARIO, **kw: Any
    ) -> ForestStationSim:
        specs = [StationSpec(d, u, sample_interval_ds=interval_ds) for d, u in units.items()]
        sim = ForestStationSim(
            specs, link_path=tmp_path / "dev" / "ttyFOREST0", ground_truth=gt, scenario=scenario, seed=7, **kw
        )
        sims.append(sim)
        return sim.start()

    yield make
    for sim in sims:
        sim.stop()


def test_registered_as_a_source_plugin():
    plugin = registry()["forest_station"]
    assert plugin.config_model is ForestBusConfig
    with pytest.raises(ValueError):
        bus_config("/dev/ttyUSB0", {"forest-01": 1}, bogus=1)  # extra="forbid"
    with pytest.raises(ValueError):
        bus_config("/dev/ttyUSB0", {"forest-01": 1, "forest-02": 1})  # one unit id twice on a bus
    with pytest.raises(ValueError):
        bus_config("/dev/ttyUSB0", {"forest-01": 248})
    with pytest.raises(ValueError):
        bus_config("/dev/ttyUSB0", {"Forest 01": 1})
    cfg = ForestBusConfig.model_validate(
        {
            "type": "forest_station",
            "name": "b",
            "port": "/dev/ttyUSB0",
            "stations": [{"device_id": "f", "unit": 1}],
        }
    )
    assert (cfg.baudrate, cfg.parity, cfg.stopbits, cfg.timeout_s, cfg.poll_interval_s, cfg.retries) == (
        9600, "N", 1, 0.3, 0.25, 2,
    )  # fmt: skip
    assert (cfg.stations[0].clock_sync_interval_s, cfg.stations[0].max_clock_skew_s) == (600, 2.0)


@pytest.mark.timeout(30)
def test_readings_equal_ground_truth(make_sim, gt):
    units = {"forest-01": 1, "forest-02": 2}
    sim = make_sim(units, interval_ds=3)
    outbox = Outbox()
    run = Running(bus_config(sim.link_path, units), outbox)
    wait_for(lambda: all(len(outbox.by_device()[d]) >= 8 for d in units), 10, "8 readings per station")
    wait_for(lambda: outbox.by_device()["forest-01"][-1].values["rain_tips"] >= 10, 10, "the storm")
    freeze_and_catch_up(sim, outbox, gt, units)
    health = run.stop()

    truth, got = truth_samples(gt), outbox.by_device()
    for d in units:
        assert_same(got[d], truth[d])
    # the storm came: rain was measured, and the very first reading (no state) has rain_mm 0.0
    assert any(r.values["rain_mm"] > 0 for r in got["forest-01"])
    assert got["forest-01"][0].values["rain_mm"] == 0.0
    assert got["forest-01"][0].units["soil_moisture_pct"] == "%VWC"
    # the clock was set first: nothing was emitted before, and the station time is the gateway's time
    events = truth_events(gt)
    assert sum(e["event"] == "clock_set" for e in events) == 2
    assert health["clock_syncs"] == 2
    assert all(abs(r.ts / 1000 - time.time()) < 30 for r in outbox.readings)
    assert health["readings"] == len(outbox.readings)
    assert health["missed_samples"] == 0
    assert health["polls"] > health["readings"]  # polls faster than the stations sample
    # the committed state is the last emitted sample of each station
    for d in units:
        last = truth[d][-1]
        assert outbox.state["stations"][d]["sample_no"] == last["sample_no"]
        assert outbox.state["stations"][d]["ts"] == last["ts"]
        assert outbox.state["stations"][d]["tips"] == int(last["values"]["rain_tips"])


@pytest.mark.timeout(40)
def test_exact_through_garbage_and_crc_errors(make_sim, gt):
    units = {"forest-01": 1, "forest-02": 2}
    sim = make_sim(units, interval_ds=10, faults={"garbage": 0.2, "crc": 0.2})
    outbox = Outbox()
    run = Running(bus_config(sim.link_path, units), outbox)
    wait_for(lambda: all(len(outbox.by_device()[d]) >= 4 for d in units), 15, "4 readings per station")
    # a spell of replies with a good CRC but a short register block (alone, so that they reach the gateway)
    sim.set_fault("garbage", 0.0)
    sim.set_fault("crc", 0.0)
    sim.set_fault("malformed", 0.3)
    wait_for(lambda: sim.counters["malformed"] >= 3, 5, "malformed replies")
    sim.set_fault("malformed", 0.0)
    sim.set_fault("garbage", 0.2)
    sim.set_fault("crc", 0.2)
    time.sleep(0.5)
    freeze_and_catch_up(sim, outbox, gt, units)
    for name in ("garbage", "crc", "malformed"):
        sim.set_fault(name, 0.0)
    time.sleep(0.3)  # a few clean polls: junk still in the line buffer is read away (and counted)
    health = run.stop()

    truth, got = truth_samples(gt), outbox.by_device()
    for d in units:
        assert_same(got[d], truth[d])
    injected = sim.counters
    assert injected["crc"] > 0 and injected["garbage"] > 0
    # the corrupted replies were noticed and counted as such, the junk byte for byte. (Usually exactly; on a
    # loaded machine a reply can come after the attempt timed out: its bytes are then read away as junk.)
    assert 0.8 * injected["crc"] <= health["crc_errors"] <= injected["crc"]
    assert health["garbage_bytes"] >= injected["garbage_bytes"]
    assert injected["malformed"] > 0 and health["framing_errors"] > 0
    assert health["missed_samples"] == 0
    assert health["port_errors"] == 0


@pytest.mark.timeout(40)
def test_silent_unit_does_not_disturb_the_others(make_sim, gt):
    units = {"forest-01": 1, "forest-02": 2, "forest-03": 3}
    sim = make_sim(units, interval_ds=5, faults={"silent": {3}})
    outbox = Outbox()
    run = Running(bus_config(sim.link_path, units), outbox)
    wait_for(lambda: all(len(outbox.by_device()[d]) >= 4 for d in ("forest-01", "forest-02")), 15, "readings")
    assert run.bus.health()["timeouts"] > 0
    assert "forest-03" not in outbox.by_device()
    assert not sim.clock_is_set(3)

    sim.set_fault("silent", set())  # it comes back
    wait_for(lambda: len(outbox.by_device()["forest-03"]) >= 3, 10, "the silent station to report")
    freeze_and_catch_up(sim, outbox, gt, units)
    health = run.stop()

    truth, got = truth_samples(gt), outbox.by_device()
    for d in ("forest-01", "forest-02"):
        assert_same(got[d], truth[d])
    # forest-03's truth starts when the gateway set its clock
    assert_same(got["forest-03"], truth["forest-03"])
    assert health["timeouts"] > 0
    assert health["missed_samples"] == 0
    assert health["clock_syncs"] == 3


@pytest.mark.timeout(40)
def test_unplug_and_replug(make_sim, gt):
    units = {"forest-01": 1, "forest-02": 2}
    sim = make_sim(units, interval_ds=3)
    outbox = Outbox()
    run = Running(bus_config(sim.link_path, units), outbox)
    wait_for(lambda: all(len(outbox.by_device()[d]) >= 4 for d in units), 10, "readings before the unplug")
    sim.unplug()
    assert not sim.link_path.exists()
    time.sleep(2.0)
    assert run.bus.health()["port_open"] == 0.0
    sim.replug()
    assert sim.link_path.resolve() == Path(sim.port)
    wait_for(lambda: run.bus.health()["reconnects"] >= 1, 10, "the gateway to reopen the port")
    n = {d: len(v) for d, v in outbox.by_device().items()}
    wait_for(
        lambda: all(len(outbox.by_device()[d]) >= n[d] + 3 for d in units), 10, "readings after the replug"
    )
    freeze_and_catch_up(sim, outbox, gt, units)
    health = run.stop()

    # the samples the station took while the cable was out come from its history ring: nothing is lost
    truth, got = truth_samples(gt), outbox.by_device()
    for d in units:
        assert [(r.ts, r.values) for r in got[d]] == [(t["ts"], t["values"]) for t in truth[d]]
    assert health["recovered_samples"] >= 2  # 2 s out at 0.3 s per sample, two stations
    assert health["missed_samples"] == 0
    assert health["port_errors"] >= 1
    assert health["reconnects"] >= 1
    assert sim.counters["replugs"] == 1


@pytest.mark.timeout(40)
def test_restart_with_committed_state_no_duplicate_no_gap(make_sim, gt):
    units = {"forest-01": 1, "forest-02": 2}
    sim = make_sim(units, interval_ds=5)
    outbox = Outbox()
    first = Running(bus_config(sim.link_path, units), outbox)
    wait_for(lambda: all(len(outbox.by_device()[d]) >= 3 for d in units), 10, "readings before the restart")
    first_health = first.stop()
    n_before = len(outbox.readings)

    # a new agent process: a new source instance, starting from the state the outbox committed
    restarted = Outbox(outbox.state)
    second = Running(bus_config(sim.link_path, units), restarted)
    wait_for(lambda: all(len(restarted.by_device()[d]) >= 3 for d in units), 10, "readings after the restart")
    freeze_and_catch_up(sim, _Both(outbox, restarted), gt, units)
    health = second.stop()

    truth = truth_samples(gt)
    combined = _Both(outbox, restarted).by_device()
    for d in units:
        assert_same(combined[d], truth[d])  # every sample exactly once, rain_mm right across the restart
    assert n_before + len(restarted.readings) == sum(len(v) for v in truth.values())
    assert health["missed_samples"] == 0
    assert health["clock_syncs"] == 0  # the clocks were right: the restarted agent left them alone
    assert first_health["clock_syncs"] == 2


class _Both(Outbox):
    """Readings of two agent runs, in order."""

    def __init__(self, a: Outbox, b: Outbox) -> None:
        super().__init__()
        self.a, self.b = a, b

    def by_device(self) -> dict[str, list[Reading]]:
        out: dict[str, list[Reading]] = defaultdict(list)
        for src in (self.a, self.b):
            for d, rs in src.by_device().items():
                out[d].extend(rs)
        return out


@pytest.mark.timeout(30)
def test_clock_reset_is_resynced_and_unset_samples_are_not_emitted(make_sim, gt):
    units = {"forest-01": 1}
    sim = make_sim(units, interval_ds=3)
    outbox = Outbox()
    run = Running(bus_config(sim.link_path, units), outbox)
    wait_for(lambda: len(outbox.readings) >= 3, 10, "readings")
    sim.clock_reset(1)  # the RTC loses power; the gateway must notice from status bit 3 and set it again
    wait_for(lambda: sim.clock_is_set(1), 10, "the gateway to set the clock again")
    n = len(outbox.readings)
    wait_for(lambda: len(outbox.readings) >= n + 3, 10, "readings after the clock reset")
    freeze_and_catch_up(sim, outbox, gt, units)
    health = run.stop()

    truth = truth_samples(gt)["forest-01"]
    got = outbox.by_device()["forest-01"]
    assert all(r.ts > 1_600_000_000_000 for r in got)  # no year-2000 timestamps
    assert [r.ts for r in got] == [t["ts"] for t in truth]
    assert health["clock_syncs"] == 2
    assert health["clock_unset_skips"] >= 1


@pytest.mark.timeout(20)
def test_missing_port_is_retried_until_it_appears(tmp_path, gt):
    link = tmp_path / "dev" / "ttyFOREST0"
    outbox = Outbox()
    run = Running(bus_config(link, {"forest-01": 1}), outbox)
    wait_for(lambda: run.bus.health()["port_errors"] >= 2, 5, "failed opens")
    sim = ForestStationSim(
        [StationSpec("forest-01", 1, sample_interval_ds=3)],
        link_path=link,
        ground_truth=gt,
        scenario=SCENARIO,
    ).start()
    try:
        wait_for(lambda: len(outbox.readings) >= 2, 10, "readings once the port exists")
    finally:
        health = run.stop()
        sim.stop()
    assert health["reconnects"] == 1
    assert health["port_open"] == 0.0  # closed on stop


@pytest.mark.timeout(30)
def test_station_power_cycle_keeps_rain_and_counts_no_gap(make_sim, gt):
    units = {"forest-01": 1}
    # a short, heavy storm (~150 tips in ~2 s); the station reboots near its end, so the restarted counter
    # stays visibly lower than the count before
    short_storm = Scenario(accel=3600, dry_hours=0.0, storm_hours=0.6, peak_rain_mm_h=100)
    sim = make_sim(units, interval_ds=3, scenario=short_storm)
    outbox = Outbox()
    run = Running(bus_config(sim.link_path, units), outbox)
    wait_for(lambda: outbox.readings and outbox.readings[-1].values["rain_tips"] >= 110, 15, "rain")
    n = len(outbox.readings)
    tips_before = outbox.readings[-1].values["rain_tips"]
    sim.power_cycle(1)  # sample number and tip counter start again; the RTC is unset
    wait_for(lambda: len(outbox.readings) >= n + 3, 10, "readings after the power cycle")
    freeze_and_catch_up(sim, outbox, gt, units)
    health = run.stop()

    after = outbox.readings[n:]
    first = after[0]
    assert first.values["rain_tips"] < tips_before  # the counter restarted ...
    assert first.values["rain_mm"] == first.values["rain_tips"] * 200 / 1000  # ... all of it is new rain
    assert health["missed_samples"] == 0  # a restarted counter is not a gap
    assert health["clock_syncs"] == 2
    truth = truth_samples(gt)["forest-01"]
    assert [r.ts for r in outbox.readings] == [t["ts"] for t in truth]
    assert_same(after[1:], truth[n + 1 :], first_ever=False)
