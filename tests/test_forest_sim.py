"""The forest station simulator as a Modbus master sees it: a plain pymodbus client on the pty.

These tests use pymodbus directly (not the gateway code), so they check the simulator against the register
map on its own.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ModbusIOException

from cityos.simclock import ScaledClock
from firmware_sim.forest.scenario import Scenario
from firmware_sim.forest.sim import (
    RTC_POWER_ON_MS,
    ForestStationSim,
    StationSpec,
    parse_faults,
    parse_stations,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def gt(tmp_path: Path) -> Path:
    return tmp_path / "gt.jsonl"


@pytest.fixture
def sim(tmp_path: Path, gt: Path) -> Iterator[ForestStationSim]:
    specs = [
        StationSpec("forest-01", 1, sample_interval_ds=2),
        StationSpec("forest-02", 2, deep_sensor=False),
    ]
    s = ForestStationSim(
        specs,
        link_path=tmp_path / "dev" / "ttyFOREST0",
        ground_truth=gt,
        scenario=Scenario(accel=3600),
        seed=3,
    )
    with s:
        yield s


@pytest.fixture
def client(sim: ForestStationSim) -> Iterator[ModbusSerialClient]:
    c = ModbusSerialClient(str(sim.link_path), baudrate=9600, timeout=0.2, retries=0)
    assert c.connect()
    yield c
    c.close()


def samples(gt: Path) -> list[dict]:
    return [o for o in map(json.loads, gt.read_text().splitlines()) if "sample_no" in o]


def set_clock(client: ModbusSerialClient, unit: int, seconds: int) -> None:
    rr = client.write_registers(0, [seconds >> 16, seconds & 0xFFFF], device_id=unit)
    assert not rr.isError()


def read_inputs(client: ModbusSerialClient, unit: int) -> list[int]:
    rr = client.read_input_registers(0, count=13, device_id=unit)
    assert not rr.isError()
    return list(rr.registers)


def decode(regs: list[int]) -> dict[str, float]:
    """The register map, written out once more for the test (no faults in these samples)."""

    def s16(x: int) -> int:
        return x - 0x10000 if x & 0x8000 else x

    v = {"soil_moisture_pct": regs[4] / 10}
    if regs[5] != 0xFFFF:
        v["soil_moisture_deep_pct"] = regs[5] / 10
    v["rain_tips"] = float((regs[6] << 16) | regs[7])
    v["tilt_x_deg"] = s16(regs[8]) / 100
    v["tilt_y_deg"] = s16(regs[9]) / 100
    v["battery_v"] = regs[10] / 1000
    if regs[12] != 0xFFFF:
        v["water_level_m"] = regs[12] / 1000
    v["status"] = float(regs[11])
    return v


DERIVED = ("rain_intensity_mm_h", "rain_cumulative_mm", "tilt_rate_x_deg_h", "tilt_rate_y_deg_h")


def test_power_on_clock_unset(sim, client, gt):
    rr = client.read_holding_registers(0, count=4, device_id=1)
    rtc = (rr.registers[0] << 16) | rr.registers[1]
    assert abs(rtc - RTC_POWER_ON_MS // 1000) <= 2  # 2000-01-01, counting
    assert rr.registers[2:] == [2, 200]  # 0.2 s sample interval, 0.2 mm per tip
    assert client.read_holding_registers(2, count=1, device_id=2).registers == [10]  # default: 1 s
    regs = read_inputs(client, 1)
    assert regs[11] & 0b1000  # clock not set
    assert abs((regs[0] << 16 | regs[1]) - RTC_POWER_ON_MS // 1000) <= 2
    time.sleep(0.5)
    assert samples(gt) == []  # no ground truth until the clock is set


def test_set_clock_then_samples_and_ground_truth(sim, client, gt):
    now = round(time.time())
    set_clock(client, 1, now)
    rtc = client.read_holding_registers(0, count=2, device_id=1).registers
    assert abs(((rtc[0] << 16) | rtc[1]) - now) <= 1
    time.sleep(0.5)
    regs = read_inputs(client, 1)
    assert regs[11] == 0
    ts = ((regs[0] << 16) | regs[1]) * 1000 + regs[2]
    assert abs(ts / 1000 - now) < 3
    truth = [t for t in samples(gt) if t["unit"] == 1]
    assert len(truth) >= 2
    assert all(t["device_id"] == "forest-01" for t in truth)
    nos = [t["sample_no"] for t in truth]
    assert nos == list(range(nos[0], nos[0] + len(nos)))  # one line per sample, in order
    diffs = [b["ts"] - a["ts"] for a, b in itertools.pairwise(truth)]
    assert all(150 <= d <= 250 for d in diffs)  # every 0.2 s on the station clock
    line = next(t for t in truth if t["sample_no"] == regs[3])
    assert line["ts"] == ts
    expect = decode(regs)
    assert {k: v for k, v in line["values"].items() if k != "rain_mm" and k not in DERIVED} == expect
    assert "rain_mm" in line["values"] and "water_level_m" in line["values"]
    # derived values (checked against their definitions in test_truth_derived_values_follow_the_definitions);
    # no tilt rate yet: less than 50 minutes of station time
    assert {"rain_intensity_mm_h", "rain_cumulative_mm"} <= set(line["values"])
    assert "tilt_rate_x_deg_h" not in line["values"]
    # station 2's clock is still unset: nothing from it
    assert all(t["unit"] == 1 for t in samples(gt))
    set_clock(client, 2, now)
    time.sleep(1.2)
    unit2 = [t for t in samples(gt) if t["unit"] == 2]
    assert unit2 and all("soil_moisture_deep_pct" not in t["values"] for t in unit2)  # probe not fitted


def test_register_rules(sim, client):
    assert client.write_registers(3, [100], device_id=1).exception_code == 2  # resolution is read-only
    assert client.write_registers(0, [1], device_id=1).exception_code == 3  # the RTC takes both words
    assert client.write_registers(1, [1, 10], device_id=1).exception_code == 3
    assert client.read_input_registers(0, count=14, device_id=1).exception_code == 2
    assert len(client.read_input_registers(0x1000, count=13, device_id=1).registers) == 13  # a ring record
    assert client.read_input_registers(0x1000, count=14, device_id=1).exception_code == 2
    assert client.read_holding_registers(4, count=1, device_id=1).exception_code == 2
    with pytest.raises(ModbusIOException):
        client.read_input_registers(0, count=12, device_id=9)  # nobody on the bus answers to unit 9
    # the sample interval is writable
    set_clock(client, 2, round(time.time()))
    assert not client.write_registers(2, [1], device_id=2).isError()
    first = read_inputs(client, 2)[3]
    time.sleep(0.55)
    assert 3 <= (read_inputs(client, 2)[3] - first) % 65536 <= 7


def test_fault_switches(sim, client):
    sim.set_fault("crc", 1.0)
    with pytest.raises(ModbusIOException):
        client.read_input_registers(0, count=12, device_id=1)
    sim.set_fault("crc", 0.0)
    sim.set_fault("silent", {1})
    with pytest.raises(ModbusIOException):
        client.read_input_registers(0, count=12, device_id=1)
    assert len(read_inputs(client, 2)) == 13  # the other station still answers
    sim.set_fault("silent", set())
    sim.set_fault("malformed", 1.0)
    assert len(client.read_input_registers(0, count=13, device_id=1).registers) < 13
    sim.set_fault("malformed", 0.0)
    sim.set_fault("garbage", 1.0)
    for _ in range(5):
        with contextlib.suppress(ModbusIOException):
            client.read_input_registers(0, count=12, device_id=1)
    c = sim.counters
    assert c["crc"] == 1 and c["silenced"] == 1 and c["malformed"] == 1
    assert c["garbage"] >= 5 and c["garbage_bytes"] >= 5
    with pytest.raises(ValueError):
        sim.set_fault("crc", 2.0)
    with pytest.raises(ValueError):
        sim.set_fault("lightning", 1.0)


def test_unplug_replug_repoints_the_link(sim, client):
    link = sim.link_path
    assert link.resolve() == Path(sim.port)
    assert len(read_inputs(client, 1)) == 13
    sim.unplug()
    assert sim.port is None
    assert not os.path.lexists(link)
    with pytest.raises(Exception):  # noqa: B017 - pymodbus raises ConnectionException after the EIO
        client.read_input_registers(0, count=12, device_id=1)
    client.close()
    new = sim.replug()
    assert link.resolve() == Path(new)
    assert client.connect()
    assert len(read_inputs(client, 1)) == 13
    assert sim.counters["unplugs"] == 1 and sim.counters["replugs"] == 1


def test_clock_reset_and_power_cycle(sim, client):
    set_clock(client, 1, round(time.time()))
    time.sleep(0.3)
    assert read_inputs(client, 1)[11] == 0
    sim.clock_reset(1)
    time.sleep(0.3)
    regs = read_inputs(client, 1)
    assert regs[11] & 0b1000
    assert (regs[0] << 16 | regs[1]) < 1_000_000_000
    before = regs[3]
    sim.power_cycle(1)
    time.sleep(0.1)
    regs = read_inputs(client, 1)
    assert regs[3] < before or before < 2
    assert (regs[6] << 16 | regs[7]) == 0  # tips since power-on
    sim.sensor_fault(1, "tilt")
    time.sleep(0.3)
    assert read_inputs(client, 1)[11] & 0b0010


def test_scenario_dry_spell_then_storm():
    sc = Scenario()
    h = 3600.0
    assert sc.rain_total_mm(0) == sc.rain_total_mm(sc.dry_hours * h) == 0.0
    totals = [sc.rain_total_mm(t * 600) for t in range(0, 6 * 24)]
    assert all(b >= a for a, b in itertools.pairwise(totals))  # never goes backwards
    assert 150 < totals[-1] < 200
    dry, mid, late = (sc.state(1, 1, x * h) for x in (1.9, 8.0, 14.0))
    assert dry.rain_total_mm == 0.0
    assert mid.soil10_pct - dry.soil10_pct > mid.soil30_pct - dry.soil30_pct  # 10 cm wets first
    assert 44 < late.soil10_pct < 50  # toward saturation
    assert late.soil30_pct > dry.soil30_pct + 5
    assert late.battery_v < dry.battery_v
    creep = abs(late.tilt_x_deg - dry.tilt_x_deg) + abs(late.tilt_y_deg - dry.tilt_y_deg)
    assert 0.05 < creep < 5  # slow creep, not a landslide
    # deterministic from the seed; stations differ
    assert sc.state(1, 1, 5 * h) == sc.state(1, 1, 5 * h)
    assert sc.state(1, 1, 5 * h) != sc.state(2, 1, 5 * h) != sc.state(1, 2, 5 * h)


def test_heavy_rain_scenario_is_the_landslide_warning_case():
    sc = Scenario.heavy_rain(landslide_unit=2)
    h = 3600.0
    minutes = [m * 60.0 for m in range(0, 8 * 60)]
    for unit in (1, 2, 3):
        states = [sc.state(4, unit, t) for t in minutes]
        rain = [st.rain_total_mm for st in states]
        hourly = [rain[i] - rain[i - 60] for i in range(60, len(rain))]
        assert max(hourly) > 30  # mm in an hour
        assert rain[-1] > 100  # the event total
        # soil moisture rises at both depths, the 30 cm one later: first minute 2 %VWC above the dry level
        dry10, dry30 = states[50].soil10_pct, states[50].soil30_pct
        rise10 = next(i for i, st in enumerate(states) if st.soil10_pct > dry10 + 2)
        rise30 = next(i for i, st in enumerate(states) if st.soil30_pct > dry30 + 2)
        storm_start = int(sc.dry_hours * 60)
        assert storm_start < rise10 < rise30
        assert rise30 - rise10 >= 30  # minutes
        assert states[-1].soil30_pct > dry30 + 5 and states[-1].water_level_m > states[50].water_level_m + 1
        # tilt: the hourly change; only the landslide station passes 0.5 deg/h, after creeping slowly first
        tilt = [max(abs(a.tilt_x_deg - b.tilt_x_deg), abs(a.tilt_y_deg - b.tilt_y_deg))
                for a, b in zip(states[60:], states, strict=False)]  # fmt: skip
        if unit == 2:
            first_fast = next(i for i, d in enumerate(tilt) if d > 0.5)
            assert any(0.05 < d < 0.3 for d in tilt[:first_fast])  # creeping ...
            assert max(tilt) > 1.0  # ... then accelerating
        else:
            assert max(tilt) < 0.25  # the slow creep of a soaked slope
    assert sc.slide_rate_deg_h(2.4 * h) == 0.0 < sc.slide_rate_deg_h(3 * h) < sc.slide_rate_deg_h(4 * h) < sc.slide_rate_deg_h(5 * h) <= 5.0
    # deterministic from the seed
    assert sc.state(4, 2, 5 * h) == Scenario.heavy_rain(landslide_unit=2).state(4, 2, 5 * h)
    assert Scenario.heavy_rain(peak_rain_mm_h=10).peak_rain_mm_h == 10


def test_stations_on_a_scaled_clock(tmp_path, gt):
    rate = 120.0
    clock = ScaledClock(sim_start=1_800_000_000, real_anchor=time.time(), rate=rate)
    spec = StationSpec("forest-01", 1, sample_interval_ds=600)  # 60 simulated s: every 0.5 s real
    with ForestStationSim([spec], link_path=tmp_path / "tty", ground_truth=gt, clock=clock) as s:
        c = ModbusSerialClient(str(s.link_path), timeout=0.2, retries=1)
        assert c.connect()
        try:
            rtc0 = c.read_holding_registers(0, count=2, device_id=1).registers
            time.sleep(0.5)
            rtc1 = c.read_holding_registers(0, count=2, device_id=1).registers
            ran = ((rtc1[0] << 16) | rtc1[1]) - ((rtc0[0] << 16) | rtc0[1])
            assert 0.5 * rate * 0.8 <= ran <= 0.5 * rate * 1.5 + 2  # the unset RTC runs at the rate too
            set_clock(c, 1, round(clock.now()))
            time.sleep(2.0)
            rtc = c.read_holding_registers(0, count=2, device_id=1).registers
            assert abs(((rtc[0] << 16) | rtc[1]) - clock.now()) < 1 + 0.1 * rate  # it stays on simulated time
        finally:
            c.close()
    truth = samples(gt)
    assert 3 <= len(truth) <= 6  # 2 s real = 240 simulated s: a sample every 60 of them
    diffs = [b["ts"] - a["ts"] for a, b in itertools.pairwise(truth)]
    assert all(diff == 60_000 for diff in diffs)  # the station clock moves 60 s between samples
    events = [o for o in map(json.loads, gt.read_text().splitlines()) if "event" in o]
    assert abs(events[0]["ts"] / 1000 - 1_800_000_000) < 60 * rate  # events are on simulated time


@pytest.mark.timeout(60)
def test_truth_derived_values_follow_the_definitions(tmp_path, gt):
    """The ground truth's derived values, recomputed here from its own sample stream (a third implementation)."""
    rate = 7200.0  # two simulated hours per real second
    clock = ScaledClock(sim_start=1_800_000_000, real_anchor=time.time(), rate=rate)
    specs = [StationSpec("forest-01", 1, sample_interval_ds=600), StationSpec("forest-02", 2, water_sensor=False,
                                                                              sample_interval_ds=600)]
    sc = Scenario.heavy_rain(landslide_unit=1)
    with ForestStationSim(specs, link_path=tmp_path / "tty", ground_truth=gt, clock=clock, scenario=sc) as s:
        c = ModbusSerialClient(str(s.link_path), timeout=0.2, retries=1)
        assert c.connect()
        try:
            for unit in (1, 2):
                set_clock(c, unit, round(clock.now()))
        finally:
            c.close()
        end = clock.sim_start + 5.4 * 3600  # 4.4 h into the storm
        while clock.now() < end:
            time.sleep(0.1)
        s.freeze()
    for device in ("forest-01", "forest-02"):
        truth = [t for t in samples(gt) if t["device_id"] == device]
        assert len(truth) > 250
        prev_tips, rain, firsts = None, [], {}
        for t in truth:
            v, ts, minute = t["values"], t["ts"], t["ts"] // 60_000
            tips = int(v["rain_tips"])
            rain.append((ts, 0 if prev_tips is None else (tips - prev_tips) * 200))
            prev_tips = tips
            assert v["rain_intensity_mm_h"] == sum(um for x, um in rain if x // 60_000 >= minute - 59) / 1000
            assert v["rain_cumulative_mm"] == sum(um for _, um in rain) / 1000  # one event: never 24 h dry
            x, y = round(v["tilt_x_deg"] * 100), round(v["tilt_y_deg"] * 100)
            firsts.setdefault(minute, (ts, x, y))
            ref = firsts[min(m for m in firsts if m >= minute - 60)]
            if ts - ref[0] >= 50 * 60_000:
                assert v["tilt_rate_x_deg_h"] == (x - ref[1]) * 36_000 / (ts - ref[0])
                assert v["tilt_rate_y_deg_h"] == (y - ref[2]) * 36_000 / (ts - ref[0])
            else:
                assert "tilt_rate_x_deg_h" not in v
        assert max(t["values"]["rain_intensity_mm_h"] for t in truth) > 30
        assert truth[-1]["values"]["rain_cumulative_mm"] > 100
        fastest = max(max(abs(t["values"].get(k, 0)) for k in ("tilt_rate_x_deg_h", "tilt_rate_y_deg_h"))
                      for t in truth)  # fmt: skip
        assert (fastest > 0.5) == (device == "forest-01")  # the landslide station, and only it
        assert ("water_level_m" in truth[-1]["values"]) == (device == "forest-01")


def test_parsers():
    assert [(s.device_id, s.unit) for s in parse_stations("forest-01:1, forest-02:2")] == [
        ("forest-01", 1),
        ("forest-02", 2),
    ]
    assert parse_faults("garbage=0.05,crc=0.01,silent=2+3") == {
        "garbage": 0.05,
        "crc": 0.01,
        "silent": {2, 3},
    }
    with pytest.raises(ValueError):
        parse_stations("forest-01")
    with pytest.raises(ValueError):
        parse_faults("smoke=1")


def test_standalone_process(tmp_path):
    link, gt = tmp_path / "dev" / "ttyFOREST0", tmp_path / "gt.jsonl"
    args = ["--stations", "forest-01:1,forest-02:2", "--link", str(link), "--ground-truth", str(gt)]
    args += ["--accel", "3600", "--duration", "3", "--sample-interval", "0.2", "--fault", "garbage=0.01"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim.forest.sim", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "/dev/pts/" in first and str(link) in first
        c = ModbusSerialClient(str(link), timeout=0.3, retries=3)
        assert c.connect()
        set_clock(c, 2, round(time.time()))
        c.close()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert "stopped" in proc.stdout.read()
    truth = samples(gt)
    assert truth and {t["device_id"] for t in truth} == {"forest-02"}
