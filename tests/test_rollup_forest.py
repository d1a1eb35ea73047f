"""The forest rollups (rollup/forest.py, cityos.rollups) against real InfluxDB 1.6, as the rollup's own user: every
10-minute, hour and JST-day row equals the sums, counts and extremes of the raw readings; a reader composing rows
and raw points after the progress point gets the raw truth for any range; passes run every few minutes give the
rows one pass would; late readings (a gateway's backlog) within ``recompute_days`` are rolled up again, older ones
are not; readings at caution or above are copied once; a field stored as a string is skipped and counted.

Readings are written as the ingest writes them (``forest`` with tags ``device``, ``gateway``; one reading every
5 minutes per station, some without a sensor's value).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from datetime import datetime
from typing import Any

import pytest
from helpers import influx_query, influx_write

from citylab.stack import influx_settings
from cityos.influx import InfluxClient
from cityos.landslide import FOREST_ALERT_WINDOW_MIN, alert_spans, assess, criteria_of, join_spans
from cityos.rollups import (
    DAY_MS,
    FOREST_1D,
    FOREST_1H,
    FOREST_10M,
    FOREST_ALERT_DAYS,
    FOREST_ALERTS,
    FOREST_ALERTS_1D,
    FOREST_ROLLED,
    FOREST_STEP_MS,
    HOUR_MS,
    bucket_start,
    forest_merge,
    forest_n,
    forest_progress,
    forest_raw,
    forest_regroup,
    forest_stored,
    job_progress,
    stored_alert_spans,
    target_db,
)
from cityos_api.opendata import JST
from rollup import RollupConfig, run_once

MIN = 60_000
DAY0 = int(datetime(2026, 11, 20, tzinfo=JST).timestamp() * 1000)  # a JST midnight
STATIONS = ("forest-01-01", "forest-01-02", "forest-02-01")


def _config(stack_info, db: str, **rollup: Any) -> RollupConfig:
    return RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", db), "rollup": rollup})


def _reading(rng: random.Random, i: int) -> dict[str, float]:
    v = {"status": 0.0, "soil_moisture_pct": round(rng.uniform(20, 45), 2),
         "soil_moisture_deep_pct": round(rng.uniform(20, 40), 2), "rain_mm": rng.choice([0.0, 0.5, 1.0]),
         "rain_intensity_mm_h": round(rng.uniform(0, 40), 1), "rain_cumulative_mm": float(i % 50),
         "tilt_x_deg": round(rng.uniform(-1, 1), 3), "tilt_y_deg": round(rng.uniform(-1, 1), 3),
         "tilt_rate_x_deg_h": round(rng.uniform(-0.2, 0.2), 3), "tilt_rate_y_deg_h": 0.0,
         "battery_v": round(rng.uniform(11, 13), 2), "lat": 35.1, "lon": 133.9}
    if i % 7 == 3:
        del v["soil_moisture_deep_pct"]  # a sensor in fault: this field's count differs from the readings
    if i % 11 == 5:
        v["water_level_m"] = round(rng.uniform(0, 2), 2)
    return v


def _line(dev: str, ts: int, v: dict[str, Any], backfill: bool = False) -> str:
    fields = ",".join(f'{k}="{x}"' if isinstance(x, str) else f"{k}={x!r}" for k, x in v.items())
    return f"forest,device={dev},gateway=gw-forest-01 {fields},backfill={str(backfill).lower()} {ts}"


def _write(stack_info, db: str, points: list[tuple[str, int, dict[str, Any]]], backfill: bool = False) -> None:
    influx_write(stack_info, db, [_line(d, t, v, backfill) for d, t, v in points])


def _points(start: int, end: int, seed: int = 1, every_ms: int = 5 * MIN) -> list[tuple[str, int, dict[str, Any]]]:
    rng = random.Random(seed)
    return [(d, t, _reading(rng, (t - DAY0) // every_ms)) for t in range(start, end, every_ms) for d in STATIONS]


def _truth(points: list[tuple[str, int, dict[str, Any]]], step: int) -> dict[tuple[str, int], dict[str, Any]]:
    """(device, bucket start) → readings, and per field (n, sum, min, max)."""
    acc: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for d, t, v in points:
        acc[(d, bucket_start(t, step))].append(v)
    out = {}
    for key, vs in sorted(acc.items()):
        row: dict[str, Any] = {"readings": len(vs)}
        for f in FOREST_ROLLED:
            xs = [v[f] for v in vs if f in v]
            if xs:
                row[f] = (len(xs), math.fsum(xs), min(xs), max(xs))
        out[key] = row
    return out


def _as_truth(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"readings": row["readings"]}
    for f in FOREST_ROLLED:
        if forest_n(row, f):
            out[f] = (forest_n(row, f), row[f + "_sum"], row[f + "_min"], row[f + "_max"])
    return out


def _assert_rows(got: dict[tuple[str, int], dict[str, Any]], want: dict[tuple[str, int], dict[str, Any]]) -> None:
    assert sorted(got) == sorted(want)
    for key, w in want.items():
        g = _as_truth(got[key])
        assert g.keys() == w.keys(), key
        for f, x in w.items():
            assert g[f] == (x if f == "readings" else (x[0], pytest.approx(x[1]), x[2], x[3])), (key, f)


def _stored(stack_info, db: str, measurement: str) -> dict[tuple[str, int], dict[str, Any]]:
    res = influx_query(stack_info, target_db(db), f'SELECT * FROM "{measurement}" GROUP BY "device"')
    out = {}
    for s in res:
        for v in s["values"]:
            rec = {k: x for k, x in zip(s["columns"], v, strict=True) if x is not None}
            out[(s["tags"]["device"], int(rec["time"]))] = {k: x for k, x in rec.items() if k != "time"}
    return out


def _query(stack_info) -> tuple[InfluxClient, Any]:
    """The rollup user's client and a query function as the API passes them."""
    c = InfluxClient.from_settings(RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", "x")}
                                                               ).influx)
    return c, (lambda db, q: c.query_raw(q, db))


def test_rows_are_the_raw_sums_counts_and_extremes(stack_info, influx_db):
    pts = _points(DAY0 - 3 * HOUR_MS, DAY0 + DAY_MS + 5 * HOUR_MS + 7 * MIN)
    _write(stack_info, influx_db, pts)
    now = DAY0 + DAY_MS + 5 * HOUR_MS + 13 * MIN  # 10-minute buckets ended up to 05:10 JST
    rep = run_once(_config(stack_info, influx_db), now).forest
    done = now // FOREST_STEP_MS * FOREST_STEP_MS
    assert rep.until_ms == done and rep.skipped == 0
    before = [p for p in pts if p[1] < done]
    _assert_rows(_stored(stack_info, influx_db, FOREST_10M), _truth(before, FOREST_STEP_MS))
    # only complete hours and JST days: 21:00 JST of the day before up to 05:00, that day and DAY0
    _assert_rows(_stored(stack_info, influx_db, FOREST_1H),
                 {k: v for k, v in _truth(before, HOUR_MS).items() if k[1] + HOUR_MS <= done})
    days = _stored(stack_info, influx_db, FOREST_1D)
    _assert_rows(days, {k: v for k, v in _truth(before, DAY_MS).items() if k[1] + DAY_MS <= done})
    assert {t for _, t in days} == {DAY0 - DAY_MS, DAY0}
    # a reader's composition (rows before the progress point, raw points after) is the raw truth of any range
    client, query = _query(stack_info)
    with client:
        progress = forest_progress(query, target_db(influx_db))
        assert progress == done
        cases = [(FOREST_STEP_MS, DAY0 - 2 * HOUR_MS), (HOUR_MS, DAY0 - 3 * HOUR_MS), (DAY_MS, DAY0 - DAY_MS)]
        for (step, start), end in itertools.product(cases, (DAY0 + 2 * DAY_MS, DAY0 + 13 * HOUR_MS + 35 * MIN)):
            rows, cut = forest_stored(query, target_db(influx_db), start, end, step, progress, ["forest-01-02"])
            assert cut <= end
            rows += forest_raw(query, influx_db, cut, end, FOREST_ROLLED, ["forest-01-02"])
            want = _truth([p for p in pts if p[0] == "forest-01-02" and start <= p[1] < end], step)
            _assert_rows(forest_regroup(rows, step), want)


def test_passes_every_few_minutes_give_the_rows_of_one_pass(stack_info, influx_db, stack):
    pts = _points(DAY0, DAY0 + 9 * HOUR_MS)
    _write(stack_info, influx_db, pts)
    for now in range(DAY0 + 17 * MIN, DAY0 + 9 * HOUR_MS, 47 * MIN):
        run_once(_config(stack_info, influx_db), now)
    stepped = {m: _stored(stack_info, influx_db, m) for m in (FOREST_10M, FOREST_1H, FOREST_ALERTS)}
    other = influx_db + "_once"
    stack.create_database(other)
    try:
        _write(stack_info, other, pts)
        run_once(_config(stack_info, other), now)
        once = {m: _stored(stack_info, other, m) for m in (FOREST_10M, FOREST_1H, FOREST_ALERTS)}
    finally:
        stack.drop_database(other)
    assert stepped == once
    assert len(stepped[FOREST_1H]) == 3 * 8


def test_late_readings_are_rolled_up_again_within_recompute_days_only(stack_info, influx_db):
    pts = _points(DAY0 - 5 * DAY_MS, DAY0 + 2 * HOUR_MS, every_ms=10 * MIN)
    gap = {(d, t) for d, t, _ in pts if d == "forest-02-01" and DAY0 - 30 * HOUR_MS <= t < DAY0 - 20 * HOUR_MS}
    old_gap = {(d, t) for d, t, _ in pts if d == "forest-02-01" and DAY0 - 4 * DAY_MS <= t < DAY0 - 4 * DAY_MS + HOUR_MS}
    missing = gap | old_gap
    _write(stack_info, influx_db, [p for p in pts if (p[0], p[1]) not in missing])
    cfg = _config(stack_info, influx_db, recompute_days=3)
    run_once(cfg, DAY0 + 2 * HOUR_MS)
    # the gateway's backlog arrives: 10 hours of the day before yesterday, and an hour of 4 days ago
    _write(stack_info, influx_db, [p for p in pts if (p[0], p[1]) in missing], backfill=True)
    rep = run_once(cfg, DAY0 + 2 * HOUR_MS + 5 * MIN).forest
    assert rep.days == 2  # the two JST days the 10 hours fall on, for that station only
    rows = _stored(stack_info, influx_db, FOREST_10M)
    truth = _truth([p for p in pts if (p[0], p[1]) not in old_gap], FOREST_STEP_MS)
    _assert_rows({k: v for k, v in rows.items() if k[1] < DAY0 + 2 * HOUR_MS}, truth)
    days = _stored(stack_info, influx_db, FOREST_1D)
    assert days[("forest-02-01", DAY0 - DAY_MS)]["readings"] == 144
    assert days[("forest-02-01", DAY0 - 4 * DAY_MS)]["readings"] == 144 - 6  # older than 3 days: not looked for


def test_readings_at_caution_or_above_are_kept_as_spans_per_10_minutes(stack_info, influx_db):
    pts = _points(DAY0, DAY0 + 6 * HOUR_MS, every_ms=4 * MIN)  # a reading at caution about every other one
    _write(stack_info, influx_db, pts)
    cfg = _config(stack_info, influx_db)
    run_once(cfg, DAY0 + 3 * HOUR_MS + 4 * MIN)
    run_once(cfg, DAY0 + 7 * HOUR_MS)
    got = _stored(stack_info, influx_db, FOREST_ALERTS)
    want = alert_spans([(d, t, assess(v)) for d, t, v in pts], FOREST_STEP_MS)
    assert len(want) > 20 and any(s.readings > 1 for s in want)
    assert sorted((d, t) for d, t in got) == sorted((s.station, bucket_start(s.first_ms, FOREST_STEP_MS)) for s in want)
    for s in want:
        rec = got[(s.station, bucket_start(s.first_ms, FOREST_STEP_MS))]
        assert (rec["first_ms"], rec["last_ms"], rec["readings"], criteria_of(rec["criteria"])) == (
            s.first_ms, s.last_ms, s.readings, s.criteria)
    # joined, the spans are the episodes the readings give joined one by one (a span of each reading alone)
    w = FOREST_ALERT_WINDOW_MIN * MIN
    readings = [(d, t, assess(v)) for d, t, v in pts]
    episodes = join_spans(want, w)
    assert episodes == join_spans(alert_spans(readings, 1), w)
    assert len(episodes) > 6


def test_a_field_stored_as_a_string_is_skipped_and_counted(stack_info, influx_db):
    pts = _points(DAY0, DAY0 + HOUR_MS)
    _write(stack_info, influx_db, [(d, t, {**v, "battery_v": "low"}) for d, t, v in pts])
    rep = run_once(_config(stack_info, influx_db), DAY0 + 2 * HOUR_MS).forest
    assert rep.skipped == len(pts)
    rows = _stored(stack_info, influx_db, FOREST_10M)
    want = _truth([(d, t, {k: x for k, x in v.items() if k != "battery_v"}) for d, t, v in pts], FOREST_STEP_MS)
    _assert_rows(rows, want)


def test_merge_is_exact_for_rows_with_and_without_a_field():
    a = {"readings": 3, "x_sum": 1.0}  # not a rolled field: ignored
    rows = [{"readings": 2, "battery_v_sum": 24.0, "battery_v_min": 11.5, "battery_v_max": 12.5},
            {"readings": 3, "battery_v_sum": 12.0, "battery_v_min": 12.0, "battery_v_max": 12.0, "battery_v_n": 1},
            {"readings": 1}, a]
    m = forest_merge(rows)
    assert m == {"readings": 9, "battery_v_sum": 36.0, "battery_v_min": 11.5, "battery_v_max": 12.5,
                 "battery_v_n": 3}
    assert forest_n(m, "battery_v") == 3 and forest_n(m, "rain_mm") == 0


def test_alert_spans_joined_per_jst_day_read_with_the_rest_are_the_episodes(stack_info, influx_db):
    """The day rows (``forest_alert_1d``): each station's spans joined within a JST day, read for the whole days
    with 10-minute spans and raw points around them, give the episodes of the readings; a late reading that joins
    two of a day's episodes leaves the day fewer rows, and the older computation's extra row is not read."""
    pts = _points(DAY0 - DAY_MS, DAY0 + 6 * HOUR_MS, every_ms=4 * MIN)
    _write(stack_info, influx_db, pts)
    cfg = _config(stack_info, influx_db, recompute_days=3)
    now = DAY0 + 7 * HOUR_MS
    run_once(cfg, now)
    w = FOREST_ALERT_WINDOW_MIN * MIN

    def episodes_read(start: int, end: int) -> list[Any]:
        client, query = _query(stack_info)
        with client:
            progress = forest_progress(query, target_db(influx_db))
            day_progress = job_progress(query, target_db(influx_db), FOREST_ALERT_DAYS)
            assert day_progress == DAY0  # the whole days before the progress point's
            spans, cut = stored_alert_spans(query, target_db(influx_db), start, end, progress, day_progress)
            assert cut == min(end, progress)
        raw = [(d, t, assess(v)) for d, t, v in all_pts if cut <= t < end]
        return join_spans(spans + alert_spans(raw, FOREST_STEP_MS), w)

    all_pts = list(pts)
    truth = join_spans(alert_spans([(d, t, assess(v)) for d, t, v in all_pts], 1), w)
    day_rows = _stored(stack_info, influx_db, FOREST_ALERTS_1D)
    assert all(DAY0 - DAY_MS <= t < DAY0 for _, t in day_rows)  # the one whole day
    ten = [k for k in _stored(stack_info, influx_db, FOREST_ALERTS) if k[1] < DAY0]
    assert 0 < len(day_rows) < len(ten) / 3
    assert episodes_read(DAY0 - DAY_MS - 30 * MIN, now) == truth
    start = DAY0 - DAY_MS + 7 * HOUR_MS  # a part day, then a whole one
    assert episodes_read(start, now) == join_spans(alert_spans(
        [(d, t, assess(v)) for d, t, v in all_pts if t >= start], 1), w)
    assert episodes_read(DAY0 - 2 * HOUR_MS, now) == join_spans(alert_spans(  # no whole day
        [(d, t, assess(v)) for d, t, v in all_pts if t >= DAY0 - 2 * HOUR_MS], 1), w)

    # the day before: two of a station's episodes with a gap; late readings at warning fill it
    dev = STATIONS[0]
    eps = [e for e in truth if e.station == dev and e.last_ms < DAY0 - HOUR_MS]
    a, b = next((x, y) for x, y in itertools.pairwise(eps) if y.first_ms - x.last_ms >= 2 * w)
    warn = {"status": 0.0, "tilt_rate_x_deg_h": 0.5, "tilt_rate_y_deg_h": 0.0, "lat": 35.1, "lon": 133.9}
    late = [(dev, t, dict(warn)) for t in range(a.last_ms + 10 * MIN, b.first_ms, 10 * MIN)]
    _write(stack_info, influx_db, late, backfill=True)
    all_pts += late
    before = {k: v for k, v in _stored(stack_info, influx_db, FOREST_ALERTS_1D).items() if k[0] == dev}
    run_once(cfg, now + 5 * MIN)
    after = {k: v for k, v in _stored(stack_info, influx_db, FOREST_ALERTS_1D).items() if k[0] == dev}
    day = DAY0 - DAY_MS
    n_before, n_after = before[(dev, day)]["of"], after[(dev, day)]["of"]
    assert n_after == n_before - 1  # two episodes joined into one
    assert (dev, day + n_before - 1) in after  # the older computation's last row is still stored...
    truth = join_spans(alert_spans([(d, t, assess(v)) for d, t, v in all_pts], 1), w)
    assert episodes_read(day - 30 * MIN, now) == truth  # ...and not read
    joined = [e for e in truth if e.station == dev and e.first_ms == a.first_ms]
    assert joined and joined[0].last_ms >= b.first_ms
