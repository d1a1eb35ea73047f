"""The rollup service (rollup/, ``cityos rollup``) against real InfluxDB 1.6, as its own least-privilege user: exact
district sums and household counts per half hour and day; frozen half hours (a late point for a frozen one changes
nothing, a half hour not settled yet is not written); a pass killed mid-run (an injected failure between batches,
and ``cityos rollup`` SIGKILLed) resumes without a gap or a rewrite; waste days recomputed within
``recompute_days`` and not before; InfluxDB down is exit 1 with one line; bad stored points skipped and counted.

Raw points are written in line protocol as the ingest writes them (``energy`` with tags ``device``, ``district``,
field ``energy_fixed_kwh`` at :00/:30, a meter may add milliseconds; ``waste_collection`` with ``kg``).
"""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import influx_query, influx_write

from citylab.stack import INFLUX_ROLLUP, StackInfo, influx_settings
from cityos.config import ConfigError
from cityos.influx import InfluxClient, InfluxError
from cityos.rollups import (
    DAY_MS,
    ENERGY_1D,
    ENERGY_30M,
    SLOT_MS,
    WASTE_1D,
    WASTE_CELL_1D,
    WASTE_TRIP_1D,
    cell_of,
    jst_day,
    target_db,
)
from cityos_api.opendata import JST
from rollup import RollupConfig, load_config, run_once

SETTLE_MS = 6 * 3_600_000


def _day(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> int:
    return int(datetime(y, m, d, hh, mm, tzinfo=JST).timestamp() * 1000)


DAY0 = _day(2026, 11, 10)


def _config(info: StackInfo, source: str, **rollup: Any) -> RollupConfig:
    return RollupConfig.model_validate({"influx": influx_settings(info, "rollup", source), "rollup": rollup})


class Recording(InfluxClient):
    """The rollup user's client, remembering every point it wrote: (measurement and tags, time)."""

    def __init__(self, info: StackInfo, db: str) -> None:
        password = info.password_file(INFLUX_ROLLUP).read_text().strip()
        super().__init__(info.influx_url, target_db(db), INFLUX_ROLLUP, password, gzip=False)
        self.points: list[tuple[str, int]] = []

    def write(self, body: bytes):  # type: ignore[no-untyped-def]
        for ln in body.decode().splitlines():
            head, _fields, ts = ln.rsplit(" ", 2)
            self.points.append((head, int(ts)))
        return super().write(body)

    def rollup_points(self) -> list[tuple[str, int]]:
        return [p for p in self.points if not p[0].startswith("rollup_progress")]


def meters(info: StackInfo, db: str, start_ms: int, days: int, households: dict[str, str | None], *,
           missing: set[tuple[str, int]] = frozenset(), seed: int = 7, jitter_ms: int = 0
           ) -> dict[tuple[str, int], dict[str, float]]:
    """Each household's fixed-time values every 30 min for ``days`` from ``start_ms`` (Wh-exact); ``missing``:
    (household, value index) not written; ``jitter_ms``: the most milliseconds a meter's clock adds to each of its
    values (one offset per meter). Returns (district, slot start) → {household: kWh}."""
    rng = random.Random(seed)
    truth: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    lines = []
    for hh, district in households.items():
        wh = rng.randint(1_000_000, 9_000_000)
        offset = rng.randint(0, jitter_ms)
        prev: int | None = None
        for b in range(days * 48 + 1):
            ts = start_ms + b * SLOT_MS
            use = rng.randint(40, 900) if b else 0
            wh += use
            if (hh, b) in missing:
                prev = None
                continue
            if prev is not None and district:
                truth[(district, ts - SLOT_MS)][hh] = use / 1000
            prev = wh
            tags = f",district={district}" if district else ""
            lines.append(f"energy,device={hh}{tags} energy_fixed_kwh={wh / 1000} {ts + offset}")
    for i in range(0, len(lines), 5000):
        influx_write(info, db, lines[i:i + 5000])
    return truth


def rows(info: StackInfo, db: str, measurement: str) -> dict[tuple[str, int], dict[str, Any]]:
    """The target's rows: (district, time) → fields."""
    out = {}
    for s in influx_query(info, target_db(db), f'SELECT * FROM "{measurement}" GROUP BY "district"'):
        for v in s["values"]:
            rec = dict(zip(s["columns"], v, strict=True))
            out[(s["tags"]["district"], int(rec.pop("time")))] = rec
    return out


def expected_slots(truth: dict[tuple[str, int], dict[str, float]], before_ms: int) -> dict[tuple[str, int], tuple]:
    return {k: (round(sum(v.values()), 3), len(v)) for k, v in truth.items() if v and k[1] < before_ms}


HOUSEHOLDS = {**{f"hh-a{i:02d}": "chuo" for i in range(12)}, **{f"hh-b{i}": "ichinomiya" for i in range(3)},
              "hh-nowhere": None}


def test_district_sums_and_counts_per_half_hour_and_day(stack, influx_db):
    info = stack.info()
    # hh-a00 misses its 10:00 value: the two half hours around it have 11 households in chuo
    truth = meters(info, influx_db, DAY0, 2, HOUSEHOLDS, missing={("hh-a00", 20)}, jitter_ms=900)
    now = DAY0 + 2 * DAY_MS + SETTLE_MS + 60_000
    rep = run_once(_config(info, influx_db), now)
    assert rep.energy.skipped == 0 and rep.energy.until_ms == DAY0 + 2 * DAY_MS, rep.summary()
    got = rows(info, influx_db, ENERGY_30M)
    want = expected_slots(truth, DAY0 + 2 * DAY_MS)
    assert set(got) == set(want) and len(want) == 2 * 2 * 48  # two districts, two days
    for key, (kwh, n) in want.items():
        assert got[key]["kwh"] == pytest.approx(kwh, abs=1e-9) and got[key]["households"] == n, key
    assert got[("chuo", DAY0 + 19 * SLOT_MS)]["households"] == 11 == got[("chuo", DAY0 + 20 * SLOT_MS)]["households"]
    assert {d for d, _ in got} == {"chuo", "ichinomiya"}  # the household without a district is in none
    days = rows(info, influx_db, ENERGY_1D)
    assert set(days) == {(d, DAY0 + i * DAY_MS) for d in ("chuo", "ichinomiya") for i in (0, 1)}
    for (d, day), r in days.items():
        cells = [v for (dd, s), v in want.items() if dd == d and day <= s < day + DAY_MS]
        assert r["kwh"] == pytest.approx(round(sum(k for k, _ in cells), 3), abs=1e-9)
        assert (r["slots"], r["min_households"]) == (48, min(n for _, n in cells))
        assert r["households"] == (12 if d == "chuo" else 3)
    assert days[("chuo", DAY0)]["min_households"] == 11
    # a second pass at the same time writes nothing new
    again = run_once(_config(info, influx_db), now)
    assert again.energy.rows == 0 and again.energy.batches == 0


def test_a_frozen_half_hour_never_changes_and_one_not_settled_is_not_written(stack, influx_db):
    info = stack.info()
    truth = meters(info, influx_db, DAY0, 2, HOUSEHOLDS)
    rec = Recording(info, influx_db)
    now1 = DAY0 + DAY_MS + 10 * SLOT_MS + SETTLE_MS + 5 * 60_000  # day 2's first ten half hours have settled
    run_once(_config(info, influx_db), now1, client=rec)
    first = rows(info, influx_db, ENERGY_30M)
    assert max(t for _, t in first) == DAY0 + DAY_MS + 9 * SLOT_MS, "the 10th half hour of day 2 is the last"
    assert set(first) == set(expected_slots(truth, DAY0 + DAY_MS + 10 * SLOT_MS))
    assert {t for _, t in rows(info, influx_db, ENERGY_1D)} == {DAY0}, "day 2 is not over"

    # late data for frozen half hours: a new household in chuo for all of day 1, and hh-a01's 03:00 value moved
    late = [f"energy,device=hh-late,district=chuo energy_fixed_kwh={100 + b} {DAY0 + b * SLOT_MS}"
            for b in range(2 * 48 + 1)]
    late.append(f"energy,device=hh-a01,district=chuo energy_fixed_kwh=1.0 {DAY0 + 6 * SLOT_MS}")
    influx_write(info, influx_db, late)
    now2 = DAY0 + 2 * DAY_MS + SETTLE_MS
    run_once(_config(info, influx_db), now2, client=rec)
    second = rows(info, influx_db, ENERGY_30M)
    assert {k: v for k, v in second.items() if k in first} == first, "a frozen half hour is never rewritten"
    assert rows(info, influx_db, ENERGY_1D)[("chuo", DAY0)]["households"] == 12
    # the half hours frozen after the late data have it: 13 households in chuo
    assert second[("chuo", DAY0 + DAY_MS + 12 * SLOT_MS)]["households"] == 13
    written = Counter(rec.rollup_points())
    assert written and max(written.values()) == 1, "every row written exactly once"


def test_a_pass_killed_between_batches_resumes_without_gap_or_rewrite(stack, influx_db):
    info = stack.info()
    truth = meters(info, influx_db, DAY0, 6, {f"hh-{i}": "chuo" for i in range(10)})
    now = DAY0 + 6 * DAY_MS + SETTLE_MS
    rec = Recording(info, influx_db)
    batches = []

    def crash_after_two(job: str, until: int) -> None:
        batches.append((job, until))
        if len(batches) == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run_once(_config(info, influx_db), now, client=rec, after_batch=crash_after_two)
    prefix = rows(info, influx_db, ENERGY_30M)
    assert {t for _, t in prefix} == {DAY0 + i * SLOT_MS for i in range(2 * 48)}, "a prefix: two whole days"
    rep = run_once(_config(info, influx_db), now, client=rec)
    assert rep.energy.batches == 4 and rep.energy.days == 4
    done = rows(info, influx_db, ENERGY_30M)
    assert {k: (v["kwh"], v["households"]) for k, v in done.items()} == expected_slots(truth, now)
    assert len(rows(info, influx_db, ENERGY_1D)) == 6
    written = Counter(rec.rollup_points())
    assert len(written) == 6 * 48 + 6 and max(written.values()) == 1, "every row written exactly once"


def test_cityos_rollup_sigkilled_mid_run_resumes(stack, influx_db, tmp_path: Path):
    info = stack.info()
    days, day0 = 60, _day(2026, 9, 1)
    truth = meters(info, influx_db, day0, days, {f"hh-{i}": "chuo" for i in range(10)}, seed=3)
    cfg = tmp_path / "rollup.toml"
    s = influx_settings(info, "rollup", influx_db)
    cfg.write_text(f'[influx]\nurl = "{s["url"]}"\ndb = "{s["db"]}"\nusername = "{s["username"]}"\n'
                   f'password_file = "{s["password_file"]}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "cityos_cli", "rollup", "--config", str(cfg), "--once"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            found = influx_query(info, target_db(influx_db), f'SELECT count("households") FROM "{ENERGY_30M}"')
            if found and found[0]["values"][0][1] >= 2 * 48:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "killed mid-run (the pass had not finished)"
    before = rows(info, influx_db, ENERGY_30M)
    assert 2 * 48 <= len(before) < days * 48
    assert {t for _, t in before} == {day0 + i * SLOT_MS for i in range(len(before))}, "a prefix, no hole"
    rec = Recording(info, influx_db)
    now = int(time.time() * 1000)
    run_once(_config(info, influx_db), now, client=rec)
    done = rows(info, influx_db, ENERGY_30M)
    assert {k: (v["kwh"], v["households"]) for k, v in done.items()} == expected_slots(truth, now)
    assert not {k for k in before} & {(h.split("=")[1], t) for h, t in rec.rollup_points()
                                      if h.startswith(ENERGY_30M)}, "nothing frozen before is written again"
    assert {d for _, d in rows(info, influx_db, ENERGY_1D)} == {day0 + i * DAY_MS for i in range(days)}


def test_waste_days_are_recomputed_within_recompute_days_and_not_before(stack, influx_db):
    info = stack.info()
    d = [_day(2026, 11, 20 + i) for i in range(6)]  # the 20th .. the 25th

    def pickups(*points: tuple[int, str | None, float]) -> None:
        influx_write(info, influx_db, [
            f"waste_collection,device=truck-01{f',district={dist}' if dist else ''} kg={kg} {ts}"
            for ts, dist, kg in points])

    pickups((d[0] + 3_600_000, "chuo", 100.0), (d[0] + 7_200_000, "chuo", 50.5), (d[1] + 3_600_000, "unknown", 7.0),
            (d[4] + 3_600_000, "chuo", 30.0), (d[4] + 3_700_000, "chuo", -4.0), (d[4] + 3_800_000, None, 9.0))
    now = d[5] + 12 * 3_600_000  # the 25th, noon: the 22nd .. the 25th are still recomputed (3 days)
    rep = run_once(_config(info, influx_db), now)
    assert rep.waste.skipped == 2, "the negative kg and the pickup without a district"
    assert rep.waste.until_ms == d[2]
    first = {k: (v["kg"], v["pickups"]) for k, v in rows(info, influx_db, WASTE_1D).items()}
    assert first == {("chuo", d[0]): (150.5, 2), ("unknown", d[1]): (7.0, 1), ("chuo", d[4]): (30.0, 1)}

    # late pickups: for the 20th (final: left as it is) and the 24th (recomputed)
    pickups((d[0] + 9_000_000, "chuo", 1000.0), (d[4] + 9_000_000, "chuo", 20.0), (d[4] + 9_100_000, "innosho", 5.0))
    rep = run_once(_config(info, influx_db), now + 600_000)
    second = {k: (v["kg"], v["pickups"]) for k, v in rows(info, influx_db, WASTE_1D).items()}
    assert second[("chuo", d[0])] == (150.5, 2), "a day past recompute_days is left as it is"
    assert second[("chuo", d[4])] == (50.0, 2) and second[("innosho", d[4])] == (5.0, 1)
    assert rep.waste.rows == 2  # the 22nd .. the 25th: two rows on the 24th


def cells(info: StackInfo, db: str) -> dict[tuple[str, str, int], tuple[float, int, float | None, float | None]]:
    """``waste_cell_1d``: (cell, district, day) → (kg, pickups, lat, lon)."""
    return {(s["tags"]["cell"], s["tags"]["district"], int(v[0])): tuple(v[1:])
            for s in influx_query(info, target_db(db), f'SELECT "kg", "pickups", "lat", "lon" FROM "{WASTE_CELL_1D}" '
                                                       'GROUP BY "cell", "district"') for v in s["values"]}


def test_waste_cells_sum_every_pickup_exactly_and_are_recomputed_like_the_districts(stack, influx_db):
    info = stack.info()
    d = [_day(2026, 11, 20 + i) for i in range(6)]  # the 20th .. the 25th
    rng = random.Random(3)
    lines = []
    truth: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for k in range(400):  # 0.1 kg steps summed in binary floats: fsum keeps the cell's kg exact
        day = d[k % 2 * 4]  # the 20th (settled) and the 24th (recomputed)
        lat, lon = 35.06 + rng.randint(0, 40) * 0.0003, 134.0 + rng.randint(0, 40) * 0.0004
        kg = rng.randint(1, 900) / 10
        dist = ("chuo", "innosho")[k % 3 == 0]
        lines.append(f"waste_collection,device=truck-0{k % 3},district={dist} kg={kg},lat={lat},lon={lon} "
                     f"{day + 3_600_000 + k * 1000}")
        i, j = cell_of(lat, lon)
        truth[(f"{i}_{j}", dist, day)].append(kg)
    # unusable: a latitude out of range, a half position, a device tag not an id (each counted once, here); a
    # negative kg and no district (counted by the district sums); no position at all: the cell "none"
    lines += [f"waste_collection,device=truck-01,district=chuo kg=5,lat=95.0,lon=134.0 {d[4] + 10}",
              f"waste_collection,device=truck-01,district=chuo kg=5,lat=35.0 {d[4] + 11}",
              rf"waste_collection,device=Truck\ 1,district=chuo kg=5,lat=35.06,lon=134.0 {d[4] + 12}",
              f"waste_collection,device=truck-01,district=chuo kg=-5,lat=35.06,lon=134.0 {d[4] + 13}",
              f"waste_collection,device=truck-01 kg=5,lat=35.06,lon=134.0 {d[4] + 14}",
              f"waste_collection,device=truck-01,district=chuo kg=7.5 {d[4] + 15}",
              f"waste_collection,device=truck-01,district=chuo kg=2.5 {d[4] + 16}"]
    influx_write(info, influx_db, lines)
    now = d[5] + 12 * 3_600_000
    # a deployment whose districts were rolled up before the cells existed: the cells still start at the oldest day
    influx_write(info, target_db(influx_db), f"rollup_progress,job=waste until_ms={d[2]}i {d[2]}")
    rep = run_once(_config(info, influx_db), now)
    assert rep.waste.skipped == 5, rep.summary()
    assert {day for _, day in rows(info, influx_db, WASTE_1D)} == {d[4]}, "the districts: their window only"
    want = {(c, dist, day): (math.fsum(kgs), len(kgs)) for (c, dist, day), kgs in truth.items()}
    got = cells(info, influx_db)
    assert got.pop(("none", "chuo", d[4])) == (10.0, 2, None, None), "the pickups without a position"
    assert {k: v[:2] for k, v in got.items()} == want
    for (c, _, _), (_, _, lat, lon) in got.items():  # the cell's centre, as the API serves it
        i, j = (int(x) for x in c.split("_"))
        assert (lat, lon) == (round(i * 0.001, 3), round(j * 0.001, 3))
    assert {k[2] for k in got} == {d[0], d[4]}
    districts = sum(v["pickups"] for k, v in rows(info, influx_db, WASTE_1D).items() if k[1] == d[4])
    assert sum(v[1] for k, v in got.items() if k[2] == d[4]) + 2 + 3 == districts, \
        "the same pickups as per district, but the 3 only the cells cannot use"

    # late pickups: for the 20th (past recompute_days: left as it is) and the 24th (recomputed)
    influx_write(info, influx_db, [f"waste_collection,device=truck-01,district=chuo kg=1000,lat=35.06,lon=134.0 "
                                   f"{d[0] + 9_000_000}",
                                   f"waste_collection,device=truck-01,district=chuo kg=2.5 {d[4] + 9_000_000}"])
    run_once(_config(info, influx_db), now + 600_000)
    again = cells(info, influx_db)
    assert again[("none", "chuo", d[4])][:2] == (12.5, 3)
    assert {k: v for k, v in again.items() if k[2] == d[0]} == {k: v for k, v in got.items() if k[2] == d[0]}


def trip_rows(info: StackInfo, db: str) -> dict[tuple[str, int, str, int], tuple[float, int, int, int]]:
    """``waste_trip_district_1d``: (truck, trip_no, district, day) → (kg, pickups, first_ms, last_ms); each row
    stamped at its day's start + trip_no ms."""
    out = {}
    for s in influx_query(info, target_db(db), f'SELECT "trip_no", "kg", "pickups", "first_ms", "last_ms" FROM '
                                               f'"{WASTE_TRIP_1D}" GROUP BY "device", "district"'):
        for t, no, kg, n, first, last in s["values"]:
            assert t == jst_day(t) + no
            out[(s["tags"]["device"], no, s["tags"]["district"], jst_day(t))] = (kg, n, first, last)
    return out


def test_waste_trip_rows_per_trip_district_and_day_recomputed_like_the_districts(stack, influx_db):
    info = stack.info()
    d = [_day(2026, 11, 20 + i) for i in range(7)]  # the 20th .. the 26th
    rng = random.Random(5)
    lines = []
    truth: dict[tuple[str, int, str, int], list[tuple[int, float]]] = defaultdict(list)
    for k in range(600):  # 0.1 kg steps: fsum keeps a row's kg exact; trip 7 of truck-01 crosses midnight
        truck, no = f"truck-0{k % 3}", 3 + k % 5
        ts = d[no - 3] + 22 * 3_600_000 + k * 17_000  # 22:00 on, up to ~2:50 the next day
        kg, dist = rng.randint(1, 900) / 10, ("chuo", "innosho", "unknown")[k % 7 % 3]
        lines.append(f"waste_collection,device={truck},district={dist} kg={kg},trip_no={float(no)} {ts}")
        truth[(truck, no, dist, jst_day(ts))].append((ts, kg))
    # unusable: a negative kg, no district, a device tag not an id (counted once, by the districts and the cells);
    # no trip number: in no trip, not counted
    lines += [f"waste_collection,device=truck-01,district=chuo kg=-5,trip_no=3 {d[1] + 10}",
              f"waste_collection,device=truck-01 kg=5,trip_no=3 {d[1] + 11}",
              rf"waste_collection,device=Truck\ 1,district=chuo kg=5,trip_no=3 {d[1] + 12}",
              f"waste_collection,device=truck-01,district=chuo kg=5 {d[1] + 13}"]
    influx_write(info, influx_db, lines)
    now = d[5] + 12 * 3_600_000  # the 25th, noon: the 22nd .. the 24th recomputed, the 25th not over yet
    rep = run_once(_config(info, influx_db), now)
    assert rep.waste.skipped == 3, rep.summary()
    def rows_of(pickups: list[tuple[int, float]]) -> tuple[float, int, int, int]:
        return math.fsum(kg for _, kg in pickups), len(pickups), min(t for t, _ in pickups), max(t for t, _ in pickups)

    want = {k: rows_of([p for p in v if p[0] < now]) for k, v in truth.items() if any(t < now for t, _ in v)}
    got = trip_rows(info, influx_db)
    assert got == want, "every whole day before today, exact, and today up to the pass"
    assert {k[3] for k in got if k[:2] == ("truck-01", 7)} == {d[4], d[5]}, \
        "trip 7 crosses into the 25th: its pickups there up to noon too"
    untils = {(s["tags"]["device"], jst_day(t)): u for s in influx_query(
        info, target_db(influx_db), f'SELECT "until_ms" FROM "{WASTE_TRIP_1D}" GROUP BY "device", "district"')
        for t, u in s["values"]}
    assert untils and all(u == min(day + DAY_MS, now) for (_, day), u in untils.items()), \
        "each row says where its pickups were read to: its day's end, or today's pass"

    # late pickups: for the 20th (past recompute_days: left as it is) and the 24th (recomputed); the next day
    # the 25th is rolled up whole
    influx_write(info, influx_db, [f"waste_collection,device=truck-00,district=chuo kg=1000,trip_no=3 {d[0] + 5}",
                                   f"waste_collection,device=truck-01,district=chuo kg=2.5,trip_no=7 {d[4] + 5}"])
    run_once(_config(info, influx_db), now + DAY_MS)
    again = trip_rows(info, influx_db)
    assert {k: v for k, v in again.items() if k[3] == d[0]} == {k: v for k, v in want.items() if k[3] == d[0]}
    late = [*truth[("truck-01", 7, "chuo", d[4])], (d[4] + 5, 2.5)]
    assert again[("truck-01", 7, "chuo", d[4])] == (math.fsum(kg for _, kg in late), len(late), d[4] + 5,
                                                    max(t for t, _ in late))
    assert {k[3] for k in again if k[:2] == ("truck-01", 7)} == {d[4], d[5]}, "a trip across midnight: two rows"
    assert {k: v for k, v in again.items() if k[3] == d[5]} == {
        k: rows_of(v) for k, v in truth.items() if k[3] == d[5]}, "the 25th, once it ended"


def test_influxdb_down_exits_1_with_one_line(tmp_path: Path):
    cfg = tmp_path / "rollup.toml"
    cfg.write_text('[influx]\nurl = "http://127.0.0.1:9"\ndb = "cityos"\ntimeout_s = 2\n')
    res = subprocess.run([sys.executable, "-m", "cityos_cli", "rollup", "--config", str(cfg), "--once"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cityos rollup: cityos -> cityos_rollup:") and "unreachable" in \
        lines[0], res.stderr
    with pytest.raises(InfluxError):
        run_once(load_config(cfg))


def test_a_target_without_grants_is_a_loud_failure(stack, influx_db):
    with pytest.raises(InfluxError, match="requires READ on no_such_rollups"):
        run_once(_config(stack.info(), influx_db, db="no_such_rollups"), DAY0)


def test_bad_stored_points_are_skipped_and_counted(stack, influx_db):
    info = stack.info()
    truth = meters(info, influx_db, DAY0, 1, {f"hh-{i}": "chuo" for i in range(10)})
    # a string in a shard of its own (two weeks later: InfluxDB 1.x keeps a field's type per shard) and a meter
    # that went back (a negative half hour)
    later = DAY0 + 14 * DAY_MS
    influx_write(info, influx_db, [f'energy,device=hh-0,district=chuo energy_fixed_kwh="broken" {later}',
                                   f"energy,device=hh-x,district=chuo energy_fixed_kwh=10.0 {DAY0}",
                                   f"energy,device=hh-x,district=chuo energy_fixed_kwh=9.0 {DAY0 + SLOT_MS}"])
    rep = run_once(_config(info, influx_db), later + DAY_MS + SETTLE_MS)
    assert rep.energy.skipped == 2, rep.summary()
    got = rows(info, influx_db, ENERGY_30M)
    assert {k: (v["kwh"], v["households"]) for k, v in got.items()} == expected_slots(truth, later)
    assert set(rows(info, influx_db, ENERGY_1D)) == {("chuo", DAY0)}  # days without a half hour have no row


def test_config_rejects_unknown_keys_and_names_the_field(tmp_path: Path):
    cfg = tmp_path / "rollup.toml"
    cfg.write_text('[rollup]\ninterval = 300\n')
    with pytest.raises(ConfigError, match=r"rollup\.interval"):
        load_config(cfg)
    cfg.write_text('[rollup]\nrecompute_days = -1\n')
    with pytest.raises(ConfigError, match=r"rollup\.recompute_days"):
        load_config(cfg)
    cfg.write_text('[influx]\ndb = "city"\n')
    assert load_config(cfg).target == "city_rollup"
