"""A simulated afternoon of Tsuyama through the real stack, played once per test session and read by every test
that checks what the city's readers see against the simulators' ground truth: the dashboards' queries
(tests/test_dashboards_queries.py) and the City OS API's routes (tests/test_api_city.py).

The afternoon: 12:00-18:00 JST yesterday at 720× (~30 s of play): the garbage truck's two rounds, the heavy-rain
storm from 13:00 with the sliding slope at forest-01-02 (tilt rate past 0.5 deg/h around 16:30; rain above
30 mm/h from about 14:40), ten households' meters in central Tsuyama (k = 10: their district's energy is shown)
with their :00/:30 fixed-time values, gateway health, and the ingest's own health; then one pass of the rollup
service (``rollup.run_once``, into the database's ``<db>_rollup``, where the API's district routes read). The session
fixture ``city_afternoon`` (tests/conftest.py) plays it; this module holds the scenario and the ground truth read
back.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citylab.city import load_scenario
from citylab.cityrun import CityRun
from citylab.stack import Stack, StackInfo, influx_settings
from firmware_sim.cityplugin import read_truth as _lines  # the ground-truth JSONL reader the city check uses
from rollup import Report, RollupConfig, run_once

REPO = Path(__file__).resolve().parent.parent
RATE = 720
SLOT_MS = 30 * 60_000

SCENARIO = f"""
name = "an afternoon for the readers' tests"
seed = 11
districts = "{{districts}}"

[day]
date = "yesterday"
start = "12:00"
end = "18:00"
rate = {RATE}

[meters]
# ten households in one district: k = 10, so its energy is shown (docs/privacy.md)
households = 10
per_gateway = 5
poll_interval_s = 300
districts = ["chuo"]

[forest]
stations = 2
per_gateway = 2
sample_interval_s = 600

[trucks]
count = 1
# 20 simulated minutes is 1.7 s at 720x: the truck's gateway agent is up before the first bin is lifted (its first
# read flushes what waited on the port, so a pickup made before it listens would count as the empty weight)
depart = "12:20"
"""


@dataclass
class CityData:
    info: StackInfo
    db: str
    t0: int  # ms: the simulated span (power-on instant … end)
    t1: int
    wall_t0: int  # ms: real time around the run (gateway_status, ingest_health)
    wall_t1: int
    seconds: dict[str, float] = field(default_factory=dict)
    truth_waste_kg: dict[str, float] = field(default_factory=dict)  # district → kg displayed, whole afternoon
    truth_energy_kwh: dict[str, float] = field(default_factory=dict)  # district → kWh over the slots in (t0, t1]
    #: (district, slot start ms) → (kWh summed over households, households): from the meters' fixed-time values
    truth_energy_slots: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)
    forest_truth: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # device → samples by time
    rollup: Report | None = None  # the rollup pass after the afternoon (its rows are what the API's districts serve)


def play(stack: Stack, tmp: Path) -> Iterator[CityData]:
    """Play the afternoon into a database of its own, wait until InfluxDB equals the ground truth, yield what
    the tests compare with, drop the database after."""
    t_start = time.monotonic()
    db = f"t_city_{uuid.uuid4().hex[:8]}"
    stack.create_database(db)
    info = stack.info()
    sc_path = tmp / "afternoon.toml"
    sc_path.write_text(SCENARIO.format(districts=REPO / "scenarios" / "tsuyama-districts.geojson"))
    run = CityRun(load_scenario(sc_path), tmp / "city", info, db=db, say=lambda _m: None)
    seconds: dict[str, float] = {}
    wall_t0 = int(time.time() * 1000)
    try:
        run.start()
        seconds["start"] = time.monotonic() - t_start
        run.play(threading.Event())
        seconds["play"] = time.monotonic() - t_start
        # Settled = the stored data equals the ground truth. (Health readings keep flowing, so "nothing moves"
        # never happens; CityRun.settle() waits for empty outboxes, which can take until its timeout.)
        run.city.freeze()
        deadline = time.monotonic() + 90
        while True:
            rep = run.verify()
            if rep.exact or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        time.sleep(2.0)  # one more round of status messages and ingest_health after the data
        wall_t1 = int(time.time() * 1000)
        seconds["settled"] = time.monotonic() - t_start
        assert rep.exact, "\n".join(c.line() + "".join(f"\n  {p}" for p in c.problems[:5]) for c in rep.checks)
        fams = {f.name: f for f in run.city.families}
        t0, t1 = int(run.city.sim_start * 1000), int(run.city.sim_end * 1000)
        data = CityData(info, db, t0, t1, wall_t0, wall_t1, seconds)
        for gw in fams["truck"].gateways:
            for e in _lines(gw.truth):
                if e.get("event") == "pickup" and t0 <= e["ts"] <= t1:
                    data.truth_waste_kg[e["district"]] = data.truth_waste_kg.get(e["district"], 0.0) + e["kg_displayed"]
        meters = fams["meter"]
        slots: dict[tuple[str, int], list[float]] = {}
        for hh, h in meters.households.items():
            fixed = sorted((e["ts"], e["energy_kwh"]) for e in _lines(meters.truth_path(hh))
                           if e.get("type") == "fixed" and t0 < e["ts"] <= t1)
            if len(fixed) > 1:
                data.truth_energy_kwh[h["district"]] = data.truth_energy_kwh.get(h["district"], 0.0) + (
                    fixed[-1][1] - fixed[0][1])
            for (a, ka), (b, kb) in itertools.pairwise(fixed):
                if b - a == SLOT_MS:
                    slots.setdefault((h["district"], a - a % SLOT_MS), []).append(kb - ka)
        data.truth_energy_slots = {k: (round(sum(v), 3), len(v)) for k, v in slots.items()}
        for gw in fams["forest"].gateways:
            for e in _lines(gw.truth):
                if "sample_no" in e:
                    data.forest_truth.setdefault(e["device_id"], []).append(e)
        for samples in data.forest_truth.values():
            samples.sort(key=lambda e: e["ts"])
        data.rollup = run_once(RollupConfig.model_validate({"influx": influx_settings(info, "rollup", db)}))
        seconds["rollup"] = time.monotonic() - t_start
    finally:
        run.stop()
    seconds["stopped"] = time.monotonic() - t_start
    print(f"\ncity afternoon (s since start): {seconds}")
    yield data
    stack.drop_database(db)
