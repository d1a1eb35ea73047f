"""The buses' rollup (rollup/bus.py: ``bus_vehicle_1h``/``_1d``) and the NGSI-LD Vehicle's aggregates read from it
(cityos_api/families/bus_ngsi.py) against InfluxDB's aggregation of the raw positions (the path without rollups),
on two buses over three days in the session's InfluxDB 1.6: rows before the job's progress point, raw after it;
points outside a field's servable range (a speed of 5,000 km/h, an occupancy of 1e30) left out of that field
alone, as the raw path does; late positions within ``recompute_days`` rolled up again; no rollups' database: the
raw path, the same answer.
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
    BUS_LEVELS,
    BUS_VEHICLE_1D,
    BUS_VEHICLE_1H,
    DAY_MS,
    HOUR_MS,
    bus_progress,
    rollup_level,
    target_db,
)
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.core import Api
from cityos_api.families.bus_ngsi import BusProvider
from cityos_api.opendata import JST
from cityos_api.settings import ApiSettings
from ingest.lineproto import batch_to_lines
from rollup import RollupConfig, run_once

ROOT = Path(__file__).resolve().parents[1]
GTFS = ROOT / "scenarios" / "gtfs-tsuyama-loop"
MIN = 60_000
D0 = int(datetime(2026, 11, 20, tzinfo=JST).timestamp() * 1000)  # a JST midnight
NOW = D0 + 2 * DAY_MS + 13 * HOUR_MS + 37 * MIN  # the pass: hours rolled up to 13:00 JST of the third day
VEHICLE = "urn:ngsi-ld:Vehicle:"
BUSES = ("bus-01", "bus-02")
METHODS = ["totalCount", "sum", "avg", "min", "max"]
ATTRS = ["speed", "heading", "occupancyPercentage", "location"]


def _positions(dev: str, start: int, end: int, seed: int) -> list[Reading]:
    rng = random.Random(seed)
    out = []
    for ts in range(start + rng.randint(0, 59_000), end, 60_000):
        if 1 <= (ts - D0) % DAY_MS // HOUR_MS <= 5:
            continue  # no service at night
        v: dict[str, Any] = {"lat": 35.06, "lon": 134.0, "speed_kmh": round(rng.uniform(0, 50), 1),
                             "bearing_deg": round(rng.uniform(0, 359), 1), "trip_id": "wd-01", "route_id": "loop-e",
                             "start_date": "20261120", "stop_id": "", "stop_sequence": 0.0, "stopped": False,
                             "occupancy": 3.0}
        if dev == "bus-01":
            v["occupancy_pct"] = round(rng.uniform(0, 120), 1)
        if rng.random() < 0.02:
            v["speed_kmh"] = 5000.0  # outside the servable range: left out of speed alone
        if rng.random() < 0.02:
            v["occupancy_pct"] = 1e30
        if rng.random() < 0.05:
            del v["bearing_deg"]
        out.append(Reading(device_id=dev, kind="bus_position", ts=ts, values=v))
    return out


def _write(stack_info, db: str, readings: list[Reading]) -> None:
    for dev in BUSES:
        rs = [r for r in readings if r.device_id == dev]
        for i in range(0, len(rs), 500):
            part = rs[i:i + 500]
            batch = checked(TelemetryBatch(gateway_id=f"gw-{dev}", boot_id="boot-0001", seq=1 + i,
                                           sent_at=part[-1].ts, readings=part))
            influx_write(stack_info, db, batch_to_lines(batch))


def _api(stack_info, db: str, rollup_db: str | None = None) -> Api:
    return Api(ApiSettings.model_validate({"influx": influx_settings(stack_info, "reader", db),
                                           "rollup": {"db": rollup_db}, "places": {"gtfs_dir": GTFS}}))


def _config(stack_info, db: str) -> RollupConfig:
    return RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", db),
                                        "rollup": {"recompute_days": 1}})


@pytest.fixture(scope="module")
def city(stack, stack_info) -> Iterator[str]:
    db = f"t_{uuid.uuid4().hex[:12]}"
    stack.create_database(db)
    _write(stack_info, db, [r for i, dev in enumerate(BUSES) for r in _positions(dev, D0, NOW, i)])
    rep = run_once(_config(stack_info, db), NOW)
    assert rep.bus.until_ms == NOW // HOUR_MS * HOUR_MS and rep.bus.rows > 0, rep.summary()
    yield db
    stack.drop_database(db)


def _approx(agg: dict[str, Any]) -> dict[str, Any]:
    return {e: {a: {m: [(pytest.approx(v, rel=1e-12), t0, t1) for v, t0, t1 in rows] for m, rows in per.items()}
                for a, per in attrs.items()} for e, attrs in agg.items()}


RANGES = [
    (DAY_MS, D0, NOW),  # JST days from a JST midnight: day rows, then hours, then raw
    (HOUR_MS, D0 + 2 * DAY_MS + 5 * HOUR_MS, NOW),  # hours from a whole hour, across the progress point
    (3 * HOUR_MS, D0 + 6 * HOUR_MS, D0 + 2 * DAY_MS + 13 * HOUR_MS),
    (0, D0 + DAY_MS, D0 + 2 * DAY_MS + 14 * HOUR_MS),  # one period of whole hours
    (0, D0 + DAY_MS, NOW),  # one period, not whole hours: raw
    (HOUR_MS, D0 + 30 * MIN, D0 + DAY_MS),  # not whole rows: raw
]


@pytest.mark.parametrize(("period", "start", "end"), RANGES)
def test_aggregates_from_the_rollup_are_those_of_the_raw_positions(city, stack_info, period, start, end):
    api = _api(stack_info, city)
    statements: list[str] = []
    query = api.query
    api.query = lambda d, q: (statements.append(q), query(d, q))[1]  # type: ignore[method-assign]
    provider = BusProvider({}, 300.0, api.clock, api)
    ids = [VEHICLE + d for d in BUSES]
    assert bus_progress(query, target_db(city)) == NOW // HOUR_MS * HOUR_MS
    for methods in (METHODS, ["max", "totalCount"]):
        statements.clear()
        got = provider.aggregated(api, ids, ATTRS, methods, period, start, end)
        from_rows = any(BUS_VEHICLE_1H in q or BUS_VEHICLE_1D in q for q in statements)
        assert from_rows == (rollup_level(period, start, end, BUS_LEVELS) is not None), (period, start)
        raw = provider.influx.aggregated(api, provider._targets(ids), ATTRS[:3], methods, period, start, end)
        assert got == _approx(raw) and got, (period, start, methods)
        assert set(got[VEHICLE + "bus-01"]) == {"speed", "heading", "occupancyPercentage"}
        assert "occupancyPercentage" not in got[VEHICLE + "bus-02"]  # no capacity: no occupancy at all
    # without the rollups' database: the raw path, the same answer
    bare = _api(stack_info, city, rollup_db=f"nowhere_{uuid.uuid4().hex[:8]}")
    assert BusProvider({}, 300.0, bare.clock, bare).aggregated(bare, ids, ATTRS, METHODS, period, start, end) == \
        _approx(provider.aggregated(api, ids, ATTRS, METHODS, period, start, end))


def _rows(stack_info, db: str, measurement: str) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for s in influx_query(stack_info, target_db(db), f'SELECT * FROM "{measurement}" GROUP BY "device"'):
        for v in s["values"]:
            rec = dict(zip(s["columns"], v, strict=True))
            out[(s["tags"]["device"], int(rec["time"]))] = {k: x for k, x in rec.items() if k != "time" and
                                                            x is not None}
    return out


def test_rows_and_late_positions(stack, stack_info):
    """Hour rows only for hours that ended, day rows for days that ended; a bus's backlog of yesterday (within
    ``recompute_days``) is rolled up at the next pass, one of three days ago is not."""
    db = f"t_{uuid.uuid4().hex[:12]}"
    stack.create_database(db)
    try:
        every = _positions("bus-02", D0, NOW, 7)
        late = {r.ts for r in every if D0 + DAY_MS + 8 * HOUR_MS <= r.ts < D0 + DAY_MS + 9 * HOUR_MS}
        old = {r.ts for r in every if D0 + 8 * HOUR_MS <= r.ts < D0 + 9 * HOUR_MS}
        _write(stack_info, db, [r for r in every if r.ts not in late | old])
        run_once(_config(stack_info, db), NOW)
        hours, days = _rows(stack_info, db, BUS_VEHICLE_1H), _rows(stack_info, db, BUS_VEHICLE_1D)
        assert max(t for _, t in hours) == NOW // HOUR_MS * HOUR_MS - HOUR_MS and {t for _, t in days} == {
            D0, D0 + DAY_MS}
        n_before = hours[("bus-02", D0 + DAY_MS + 8 * HOUR_MS)]["readings"] if \
            ("bus-02", D0 + DAY_MS + 8 * HOUR_MS) in hours else 0
        speeds = [r.values["speed_kmh"] for r in every if D0 + DAY_MS <= r.ts < D0 + 2 * DAY_MS and
                  r.ts not in late and 0 <= r.values["speed_kmh"] <= 1000]
        assert days[("bus-02", D0 + DAY_MS)]["speed_kmh_sum"] == pytest.approx(sum(speeds))
        _write(stack_info, db, [r for r in every if r.ts in late | old])
        run_once(_config(stack_info, db), NOW + 10 * MIN)
        hours, days = _rows(stack_info, db, BUS_VEHICLE_1H), _rows(stack_info, db, BUS_VEHICLE_1D)
        assert hours[("bus-02", D0 + DAY_MS + 8 * HOUR_MS)]["readings"] == len(late) > n_before
        speeds_all = [r.values["speed_kmh"] for r in every if D0 + DAY_MS <= r.ts < D0 + 2 * DAY_MS and
                      0 <= r.values["speed_kmh"] <= 1000]
        assert days[("bus-02", D0 + DAY_MS)]["speed_kmh_sum"] == pytest.approx(sum(speeds_all))
        assert ("bus-02", D0 + 8 * HOUR_MS) not in hours, "three days ago: past recompute_days, not looked for"
    finally:
        stack.drop_database(db)
