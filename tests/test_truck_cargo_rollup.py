"""The NGSI-LD Vehicle's ``cargoWeight`` (cityos_api/families/truck_ngsi.py) read the fast way gives the answers of
the straightforward way, on a simulated city in the session's InfluxDB 1.6:

* history: only the loads an answer can hold (``LIMIT`` per truck) and the cargo left of the unloads that can be in
  it, against every load from the look-back day through ``_cargo`` and ``_cut`` (a trip across the range's start,
  ``lastN``, a ``max_n`` smaller than the loads);
* aggregates: the trucks' cargo rollup (rollup/truck.py: ``truck_cargo_1h``/``_1d``, rows before the job's
  progress point, raw after it) against InfluxDB's aggregation of the raw loads merged with the unloads (the path
  without rollups), with the progress point inside the ranges, and without a rollups' database (that path, never
  503); late pickups within ``recompute_days`` are rolled up again.

The trucks write as the ingest does (``waste_collection``: ``kg``, ``load_kg``, ``trip_no``, a position or none;
``waste_trip`` at the unload: ``trip_no``, ``kg_collected``, ``kg_unloaded``, ``duration_s`` since the previous).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import influx_query, influx_write

from citylab.stack import influx_settings
from cityos.rollups import (
    DAY_MS,
    HOUR_MS,
    TRIP_LOOKBACK_MS,
    TRUCK_CARGO_1D,
    TRUCK_CARGO_1H,
    bucket_start,
    target_db,
    truck_progress,
)
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.core import Api
from cityos_api.families import truck
from cityos_api.families.truck_ngsi import TruckProvider, _cargo, _cut, _point
from cityos_api.ngsi_ld import aggregate_history
from cityos_api.opendata import JST
from cityos_api.params import TimeRange
from cityos_api.settings import ApiSettings
from ingest.lineproto import batch_to_lines
from rollup import RollupConfig, run_once

ROOT = Path(__file__).resolve().parents[1]
DISTRICTS = ROOT / "scenarios" / "tsuyama-districts.geojson"
MIN = 60_000
D0 = int(datetime(2026, 11, 20, tzinfo=JST).timestamp() * 1000)  # a JST midnight (a Friday)
D1, D2 = D0 + DAY_MS, D0 + 2 * DAY_MS
TRUCKS = ("truck-01", "truck-02", "truck-03")
NOW = D2 + 13 * HOUR_MS + 37 * MIN  # the rollup's pass: hours rolled up to 13:00 JST of D2
VEHICLE = "urn:ngsi-ld:Vehicle:"
METHODS = ["totalCount", "sum", "avg", "min", "max"]


def _trucks_day(rng: random.Random, dev: str, day: int, trip_no: int, prev_end: int
                ) -> tuple[list[Reading], int, int]:
    """A truck's three trips of a day from 08:00 (pickups every few minutes, some without a position, one with a
    broken load); truck-01 also a late trip from 22:00 that unloads after midnight. Returns the readings, the next
    trip number and the last unload."""
    out: list[Reading] = []
    starts = [day + 8 * HOUR_MS, day + 11 * HOUR_MS, day + 14 * HOUR_MS]
    if dev == "truck-01":
        starts.append(day + 22 * HOUR_MS)
    for k, t in enumerate(starts):
        load = 0.0
        for _ in range(rng.randint(12, 25)):
            t += rng.randint(3, 9) * MIN + rng.randint(0, 59_000)
            kg = round(rng.uniform(5, 60), 1)
            load = round(load + kg, 2)
            values: dict[str, Any] = {"kg": kg, "load_kg": load, "trip_no": float(trip_no), "pickup_no": 1.0}
            if rng.random() < 0.8:
                values |= {"lat": 35.06 + rng.uniform(-0.02, 0.02), "lon": 134.0 + rng.uniform(-0.02, 0.02),
                           "fix_age_s": 1.0}
            if rng.random() < 0.02:
                values["load_kg"] = -1.0  # broken: no instance
            out.append(Reading(device_id=dev, kind="truck_collection", ts=t, values=values,
                               tags={"district": "chuo"}))
        end = t + (110 * MIN if k == 3 else 10 * MIN)  # the late trip: unloaded after midnight
        unloaded = round(load - rng.choice([0.0, 2.5, 7.25, load + 10]), 2)  # sometimes more than it had: 0 left
        trip: dict[str, Any] = {"trip_no": float(trip_no), "kg_collected": load, "kg_unloaded": max(unloaded, 0.0),
                                "pickups": 20.0, "pickups_unknown_district": 0.0, "distance_km": 12.0,
                                "duration_s": (end - prev_end) / 1000}
        if dev == "truck-02" and k == 1 and day == D1:
            del trip["kg_unloaded"]  # not weighed: no cargo left after it
        out.append(Reading(device_id=dev, kind="truck_trip", ts=end, values=trip))
        trip_no, prev_end = trip_no + 1, end
    return out, trip_no, prev_end


def _city() -> list[Reading]:
    rng = random.Random(7)
    out = []
    for dev in TRUCKS:
        trip_no, prev_end = 1, D0 - 8 * HOUR_MS
        for day in (D0, D1, D2):
            rs, trip_no, prev_end = _trucks_day(rng, dev, day, trip_no, prev_end)
            out += rs
    return out


def _write(stack_info, db: str, readings: list[Reading]) -> None:
    for dev in TRUCKS:
        rs = sorted((r for r in readings if r.device_id == dev), key=lambda r: r.ts)
        if rs:
            batch = checked(TelemetryBatch(gateway_id=f"gw-{dev}", boot_id="boot-0001", seq=1,
                                           sent_at=rs[-1].ts, readings=rs))
            influx_write(stack_info, db, batch_to_lines(batch))


def _api(stack_info, db: str, rollup_db: str | None = None) -> Api:
    return Api(ApiSettings.model_validate({"influx": influx_settings(stack_info, "reader", db),
                                           "rollup": {"db": rollup_db}, "places": {"districts_file": DISTRICTS}}))


def _config(stack_info, db: str) -> RollupConfig:
    return RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", db),
                                        "rollup": {"recompute_days": 1}})


@pytest.fixture(scope="module")
def city(stack, stack_info) -> Iterator[tuple[str, list[Reading]]]:
    """The three days written and rolled up as of :data:`NOW` (the tests only read)."""
    db = f"t_{uuid.uuid4().hex[:12]}"
    stack.create_database(db)
    readings = _city()
    _write(stack_info, db, [r for r in readings if r.ts < NOW])
    run_once(_config(stack_info, db), NOW)
    yield db, readings
    stack.drop_database(db)


def _straight(api: Api, devices: list[str], attrs: list[str], start: int, end: int, last_n: int | None,
              max_n: int) -> dict[str, dict[str, list[tuple[Any, int]]]]:
    """The history the straightforward way: every load from the look-back day, every trip of the range, _cargo."""
    loads, _ = truck.fetch_loads(api.query, api.db, TimeRange(start - TRIP_LOOKBACK_MS, end))
    trips, _ = truck.fetch_trips(api.query, api.db, TimeRange(start, end))
    per: dict[str, dict[str, list[tuple[Any, int]]]] = {}
    for dev, inst in _cargo([x for x in loads if x.truck in devices], [t for t in trips if t.truck in devices]
                            ).items():
        per.setdefault(dev, {})["cargoWeight"] = inst
    for dev in devices:
        mine = [(_point(x.lat, x.lon), x.ts_ms) for x in loads if x.truck == dev and x.lat is not None
                and x.lon is not None]
        if mine and "location" in attrs:
            per.setdefault(dev, {})["location"] = mine
    out = {}
    for dev, attrs_of in per.items():
        got = {a: _cut(inst, start, end, last_n, max_n) for a, inst in attrs_of.items() if a in attrs}
        got = {a: inst for a, inst in got.items() if inst}
        if got:
            out[VEHICLE + dev] = got
    return out


@pytest.mark.parametrize(("start", "end"), [
    (D1 + 20 * MIN, D2 + 12 * HOUR_MS),  # truck-01's late trip of D0 started before, unloads after the start
    (D0 + 9 * HOUR_MS + 30 * MIN, D1 + 9 * HOUR_MS),
    (D0 - DAY_MS, D2 + DAY_MS),
])
@pytest.mark.parametrize(("last_n", "max_n"), [(None, 10**6), (None, 40), (None, 7), (3, 10**6), (30, 10**6),
                                               (500, 10**6)])
def test_history_is_the_straightforward_computation(city, stack_info, start, end, last_n, max_n):
    db, readings = city
    api = _api(stack_info, db)
    provider = TruckProvider(api)
    loads = [r for r in readings if r.kind == "truck_collection" and start <= r.ts < end]
    assert max_n > 10**5 or max_n < len(loads) / len(TRUCKS), "a max_n smaller than a truck's loads"
    for devices, attrs in (([*TRUCKS], ["cargoWeight", "location"]), (["truck-01"], ["cargoWeight"]),
                           (["truck-02", "truck-03"], ["location"])):
        got = provider.history(api, [VEHICLE + d for d in devices], attrs, start, end, last_n, max_n)
        want = _straight(api, devices, attrs, start, end, last_n, max_n)
        assert got == want, (devices, attrs)
    if start == D1 + 20 * MIN and last_n is None:  # the unload of the trip across the start is there
        cargo = provider.history(api, [VEHICLE + "truck-01"], ["cargoWeight"], start, end, None, 10**6)
        unload = next(r for r in readings if r.device_id == "truck-01" and r.kind == "truck_trip" and r.ts > D1)
        assert cargo[VEHICLE + "truck-01"]["cargoWeight"][0][1] == unload.ts


def _approx(agg: dict[str, Any]) -> dict[str, Any]:
    return {eid: {a: {m: [(pytest.approx(v, rel=1e-12) if m in ("sum", "avg") else v, t0, t1)
                          for v, t0, t1 in rows] for m, rows in per.items()} for a, per in attrs.items()}
            for eid, attrs in agg.items()}


RANGES = [
    (DAY_MS, D0, D2 + DAY_MS),  # P1D from a JST midnight: days, then D2's hours to 13:00, then raw
    (DAY_MS, D0 - 2 * DAY_MS, D2),  # wholly before the progress point
    (HOUR_MS, D1 + 5 * HOUR_MS, D2 + 15 * HOUR_MS),  # PT1H, the progress point inside
    (3 * HOUR_MS, D1, D2 + 13 * HOUR_MS),  # PT3H, ending at the progress point
    (0, D1, D2 + 14 * HOUR_MS),  # one period, the whole range
    (0, D1 + 30 * MIN, D2),  # not whole rows: raw
]


@pytest.mark.parametrize(("period", "start", "end"), RANGES)
def test_aggregates_from_the_rollup_are_those_of_the_raw_loads(city, stack_info, period, start, end):
    db, _ = city
    api = _api(stack_info, db)
    statements: list[str] = []
    query = api.query
    api.query = lambda d, q: (statements.append(q), query(d, q))[1]  # type: ignore[method-assign]
    provider = TruckProvider(api)
    ids = [VEHICLE + d for d in TRUCKS]
    trucks = {d: VEHICLE + d for d in TRUCKS}
    assert truck_progress(query, target_db(db)) == NOW // HOUR_MS * HOUR_MS
    for methods in (METHODS, ["max", "totalCount"]):
        statements.clear()
        got = provider.aggregated(api, ids, ["cargoWeight", "location"], methods, period, start, end)
        from_rows = any(TRUCK_CARGO_1H in q or TRUCK_CARGO_1D in q for q in statements)
        assert from_rows == (bucket_start(start, HOUR_MS) == start), (period, start)
        raw = provider._cargo_aggregates(api, trucks, methods, period, start, end)
        assert got == _approx(raw)
        # and the instances aggregated in Python: the same
        inst = provider.history(api, ids, ["cargoWeight"], start, end, None, 10**9)
        assert got == _approx(aggregate_history(inst, methods, period, start, end))
        assert got, "the range has cargo"
    # without the rollups' database: the raw path, the same answer
    bare = _api(stack_info, db, rollup_db=f"nowhere_{uuid.uuid4().hex[:8]}")
    assert TruckProvider(bare).aggregated(bare, ids, ["cargoWeight"], METHODS, period, start, end) == \
        _approx(provider.aggregated(api, ids, ["cargoWeight"], METHODS, period, start, end))


def _rows(stack_info, db: str, measurement: str) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for s in influx_query(stack_info, target_db(db), f'SELECT * FROM "{measurement}" GROUP BY "device"'):
        for v in s["values"]:
            rec = dict(zip(s["columns"], v, strict=True))
            out[(s["tags"]["device"], int(rec["time"]))] = {k: x for k, x in rec.items() if k != "time"}
    return out


def test_rows_hold_every_instance_and_late_pickups_are_rolled_up_again(stack_info, influx_db):
    """Hour rows sum to the day rows and count every instance; a pickup landing late within recompute_days is
    rolled up on the next pass, one older is not."""
    readings = _city()
    _write(stack_info, influx_db, [r for r in readings if r.ts < NOW])
    run_once(_config(stack_info, influx_db), NOW)
    api = _api(stack_info, influx_db)
    inst = TruckProvider(api).history(api, [VEHICLE + d for d in TRUCKS], ["cargoWeight"], D0,
                                      NOW // HOUR_MS * HOUR_MS, None, 10**9)
    hours = _rows(stack_info, influx_db, TRUCK_CARGO_1H)
    days = _rows(stack_info, influx_db, TRUCK_CARGO_1D)
    assert sum(r["readings"] for r in hours.values()) == sum(len(x["cargoWeight"]) for x in inst.values())
    assert sorted({t for _, t in days}) == [D0, D1]  # D2 is not over
    for (dev, day), row in days.items():
        mine = [r for (d, t), r in hours.items() if d == dev and day <= t < day + DAY_MS]
        assert row["readings"] == sum(r["readings"] for r in mine)
        assert row["cargo_kg_max"] == max(r["cargo_kg_max"] for r in mine)
    # late: a pickup on D1 (within recompute_days = 1 of NOW's day) and one on D0 (not any more)
    late = [Reading(device_id="truck-03", kind="truck_collection", ts=t, values={
        "kg": 1.0, "load_kg": 9999.5, "trip_no": 999.0, "pickup_no": 1.0}, tags={"district": "chuo"})
        for t in (D0 + 5 * HOUR_MS + 1, D1 + 5 * HOUR_MS + 1)]
    _write(stack_info, influx_db, late)
    run_once(_config(stack_info, influx_db), NOW + 5 * MIN)
    again = _rows(stack_info, influx_db, TRUCK_CARGO_1H)
    assert again[("truck-03", D1 + 5 * HOUR_MS)]["cargo_kg_max"] == 9999.5
    assert ("truck-03", D0 + 5 * HOUR_MS) not in again
