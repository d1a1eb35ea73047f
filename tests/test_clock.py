"""The gateway refuses to pass an implausible clock on to its stations (a Pi that booted at 1970)."""

from __future__ import annotations

import threading
import time

import pytest

from cityos.simclock import ScaledClock
from edge import clock
from edge.sources.forest.source import ForestBus, ForestBusConfig
from firmware_sim.forest.sim import ForestStationSim, StationSpec


class _Ctx:
    def __init__(self) -> None:
        self.state: dict = {}
        self.readings: list = []

    def emit(self, reading, state=None) -> None:
        self.readings.append(reading)
        if state is not None:
            self.state = state


def test_plausibility_floor():
    assert clock.plausible()
    assert not clock.plausible(86_400.0)  # 1970-01-02
    assert clock.kernel_synced() in (True, False, None)


@pytest.mark.timeout(30)
def test_no_station_clock_is_set_from_an_implausible_gateway_clock(tmp_path, monkeypatch):
    monkeypatch.setattr(clock, "plausible", lambda now_s=None: False)
    sim = ForestStationSim(
        [StationSpec("forest-01", 1, sample_interval_ds=3)], link_path=tmp_path / "tty", ground_truth=tmp_path / "gt"
    ).start()
    bus = ForestBus(ForestBusConfig(type="forest_station", name="bus0", port=str(tmp_path / "tty"),
                                    stations=[{"device_id": "forest-01", "unit": 1}]))
    stop, ctx = threading.Event(), _Ctx()
    t = threading.Thread(target=bus.run, args=(ctx, stop), daemon=True)
    t.start()
    try:
        end = time.monotonic() + 10
        while bus.health()["clock_implausible_skips"] < 1 and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(1.0)
        h = bus.health()
        assert h["clock_implausible_skips"] >= 1
        assert h["clock_syncs"] == 0 and not sim.clock_is_set(1)
        assert ctx.readings == []  # the station's clock stays unset, so nothing is reported with a wrong time
        assert h["polls"] > 0  # the bus keeps working meanwhile
    finally:
        stop.set()
        t.join(5)
        sim.stop()


def test_scaled_clock_drives_the_data_clock_and_agrees_across_processes():
    anchor = time.time()
    c = ScaledClock(sim_start=1_790_000_000, real_anchor=anchor, rate=288)
    # Another process computing from the same three numbers gets the same time.
    twin = ScaledClock.model_validate_json(c.model_dump_json())
    assert abs(c.now() - twin.now()) < 288 * 0.01
    assert abs(c.real_at(1_790_000_000 + 288) - (anchor + 1)) < 1e-6
    clock.use_scaled(c)
    try:
        assert abs(clock.now() - (1_790_000_000 + (time.time() - anchor) * 288)) < 288 * 0.01
    finally:
        clock.use_scaled(None)
    assert abs(clock.now() - time.time()) < 0.01
