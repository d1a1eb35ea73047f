"""Every query of the bus ridership dashboard (``cityos-transit``), run against InfluxDB 1.6 filled by a synthetic
bus day, with Grafana's macros expanded as Grafana does (:mod:`dashboards.macros`), and the numbers a user would
check compared with what was written.

The day (2026-11-24, a Tuesday, JST): bus-01 runs trips wd-01 (07:00) and wd-02 (08:00) of route loop-e over the
committed feed's 20 calls (scenarios/gtfs-tsuyama-loop), with a capacity of 60; bus-02 runs one short trip of a
second route (loop-w) without a capacity. Readings are wire-contract readings (docs/bus.md) written through
``ingest.lineproto.batch_to_lines``, as the ingest writes them. The simulated city has no buses yet, which is why
tests/test_dashboards_queries.py leaves this dashboard out.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cityos.wire import Reading, TelemetryBatch, checked
from dashboards import catalog as cat
from dashboards.macros import ALL, VarSpec, calculate_interval, expand, panel_max_data_points
from dashboards.model import Panel
from dashboards.queryrun import InfluxSource, Series, run_query, source_of, tag_values
from ingest.lineproto import batch_to_lines

REPO = Path(__file__).resolve().parent.parent
JST = dt.timezone(dt.timedelta(hours=9))
DAY = dt.datetime(2026, 11, 24, tzinfo=JST)
T0 = int(DAY.timestamp() * 1000)
T1 = T0 + 86_400_000 - 1
CAPACITY = 60.0
DEVICES_PER_PASSENGER = 1.3


def _ms(hh: int, mm: int, ss: int = 0) -> int:
    return T0 + ((hh * 60 + mm) * 60 + ss) * 1000


@dataclass
class BusDay:
    source: InfluxSource
    readings: list[Reading] = field(default_factory=list)
    boardings: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))  # (route, stop)
    alightings: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    boardings_per_hour: dict[tuple[str, int], float] = field(default_factory=lambda: defaultdict(float))
    occupancy: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # trip → per segment
    occupancy_lo: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    occupancy_hi: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    od: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))  # → ride_s
    last_position: dict[str, dict[str, Any]] = field(default_factory=dict)


def _stop_times() -> dict[str, list[tuple[str, int, int]]]:
    """trip → [(stop_id, sequence, ms)] of the committed feed."""
    out: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    with (REPO / "scenarios/gtfs-tsuyama-loop/stop_times.txt").open(encoding="utf-8-sig") as fh:
        for r in csv.DictReader(fh):
            h, m, s = (int(x) for x in r["arrival_time"].split(":"))
            out[r["trip_id"]].append((r["stop_id"], int(r["stop_sequence"]), _ms(h, m, s)))
    return out


def _stops() -> dict[str, tuple[float, float]]:
    with (REPO / "scenarios/gtfs-tsuyama-loop/stops.txt").open(encoding="utf-8-sig") as fh:
        return {r["stop_id"]: (float(r["stop_lat"]), float(r["stop_lon"])) for r in csv.DictReader(fh)}


def _trip(day: BusDay, rng: random.Random, bus: str, route: str, trip: str, calls: list[tuple[str, int, int]],
          capacity: float | None, first_observed: bool) -> None:
    """Stop visits, segments and positions of one trip; the counts drawn at random, occupancy kept consistent."""
    stops = _stops()
    occ = 0.0
    for i, (stop, seq, ts) in enumerate(calls):
        last = i == len(calls) - 1
        alight = occ if last else round(rng.uniform(0, occ * 0.4), 2)
        board = 0.0 if last else round(rng.uniform(0, 6), 2)
        complete = i > 0 or first_observed
        occ = round(occ - alight + board, 2) if complete else round(rng.uniform(3, 8), 2)
        dwell = 20.0 + board * 4
        values: dict[str, Any] = {
            "trip_id": trip, "stop_id": stop, "stop_sequence": float(seq), "dwell_s": dwell, "occupancy": occ,
            "occupancy_lo": round(occ * 0.8, 2), "occupancy_hi": round(occ * 1.25 + 1, 2),
            "devices": round(occ * DEVICES_PER_PASSENGER), "complete": complete,
        }
        if complete:
            values |= {"boardings": board, "alightings": alight, "devices_boarded": round(board * 1.3),
                       "devices_alighted": round(alight * 1.3)}
            day.boardings[(route, stop)] += board
            day.alightings[(route, stop)] += alight
            hour = dt.datetime.fromtimestamp(ts / 1000, JST).hour
            day.boardings_per_hour[(route, hour)] += board
        tags = {"route": route, "stop": stop, "trip": trip}
        day.readings.append(Reading(device_id=bus, kind="bus_stop_visit", ts=ts, values=values, tags=tags))
        lat, lon = stops[stop]
        pos: dict[str, Any] = {"lat": lat, "lon": lon, "speed_kmh": 0.0, "bearing_deg": 90.0, "trip_id": trip,
                               "route_id": route, "start_date": "20261124", "stop_id": stop,
                               "stop_sequence": float(seq), "stopped": True, "occupancy": occ}
        if capacity:
            pos["occupancy_pct"] = round(occ / capacity * 100, 2)
        day.readings.append(Reading(device_id=bus, kind="bus_position", ts=ts + 1000, values=pos))
        day.last_position[bus] = {"time": ts + 1000, **pos}
        if last:
            break
        nstop, nseq, nts = calls[i + 1]
        depart = ts + int(dwell * 1000)
        seg: dict[str, Any] = {
            "trip_id": trip, "from_sequence": float(seq), "to_sequence": float(nseq), "occupancy": occ,
            "occupancy_lo": values["occupancy_lo"], "occupancy_hi": values["occupancy_hi"],
            "devices": values["devices"], "duration_s": (nts - depart) / 1000,
        }
        if capacity:
            seg["occupancy_pct"] = round(occ / capacity * 100, 2)
        day.readings.append(Reading(device_id=bus, kind="bus_segment", ts=depart, values=seg,
                                    tags={"route": route, "from_stop": stop, "to_stop": nstop, "trip": trip}))
        day.occupancy[trip].append(occ)
        day.occupancy_lo[trip].append(values["occupancy_lo"])
        day.occupancy_hi[trip].append(values["occupancy_hi"])
        mid = {**pos, "lat": (lat + stops[nstop][0]) / 2, "lon": (lon + stops[nstop][1]) / 2, "speed_kmh": 25.0,
               "stop_id": nstop, "stop_sequence": float(nseq), "stopped": False}
        mid.pop("occupancy_pct", None)  # a fix without it: the map must not take the stopped fix's value
        ts_mid = (depart + nts) // 2
        day.readings.append(Reading(device_id=bus, kind="bus_position", ts=ts_mid, values=mid))
        day.last_position[bus] = {"time": ts_mid, **mid}


def _od(day: BusDay, route: str, trip: str, calls: list[tuple[str, int, int]], pairs: dict[tuple[int, int], int]) -> None:
    """App riders: ``n`` riders from call ``a`` to call ``b`` (indices into ``calls``)."""
    k = 0
    for (a, b), n in pairs.items():
        (sa, qa, ta), (sb, qb, tb) = calls[a], calls[b]
        for i in range(n):
            k += 1
            ride = (tb - ta) / 1000
            day.readings.append(Reading(
                device_id="bus-01", kind="bus_od", ts=tb + i,
                values={"rider": f"{uuid.uuid4().hex[:16]}", "board_trip_id": trip, "alight_trip_id": trip,
                        "board_sequence": float(qa), "alight_sequence": float(qb), "board_ts": float(ta),
                        "ride_s": ride},
                tags={"route": route, "board_stop": sa, "alight_stop": sb}))
            day.od[(sa, sb)].append(ride)


@pytest.fixture(scope="module")
def day(stack) -> Any:
    db = f"t_transit_{uuid.uuid4().hex[:8]}"
    stack.create_database(db)
    info = stack.info()
    d = BusDay(source_of(info, db))
    rng = random.Random(5)
    st = _stop_times()
    _trip(d, rng, "bus-01", "loop-e", "wd-01", st["wd-01"], CAPACITY, first_observed=False)
    _trip(d, rng, "bus-01", "loop-e", "wd-02", st["wd-02"], CAPACITY, first_observed=True)
    west = [("1012", 1, _ms(9, 0)), ("1013", 2, _ms(9, 3)), ("1014", 3, _ms(9, 6))]
    _trip(d, rng, "bus-02", "loop-w", "w-01", west, None, first_observed=True)
    _od(d, "loop-e", "wd-01", st["wd-01"], {(0, 6): 4, (2, 11): 3, (4, 18): 2, (6, 9): 1})
    _od(d, "loop-e", "wd-02", st["wd-02"], {(0, 6): 1})
    lines = []
    for i in range(0, len(d.readings), 500):
        chunk = sorted(d.readings[i:i + 500], key=lambda r: r.ts)
        lines += batch_to_lines(checked(TelemetryBatch(gateway_id="gw-bus", boot_id="boot-0001", seq=i,
                                                       sent_at=chunk[-1].ts, readings=chunk)))
    from helpers import influx_write

    influx_write(info, db, lines)
    yield d
    stack.drop_database(db)


# ------------------------------------------------------------------------------------------------------------
# Grafana's view of a panel


def _panel(title_en: str) -> Panel:
    found = [p for p in cat.TRANSIT.panels if p.title("en") == title_en]
    assert len(found) == 1, title_en
    return found[0]


def _run(day: BusDay, p: Panel, route: list[str] | None = None, t0: int = T0, t1: int = T1) -> dict[str, list[Series]]:
    """Every target of ``p`` as Grafana sends it with ``$route`` = ``route`` (default All)."""
    v = cat.V_ROUTE
    routes = tag_values(day.source, v.query)
    specs = {v.name: VarSpec(v.multi, v.include_all)}
    interval = calculate_interval(t0, t1, panel_max_data_points(p.width), p.min_interval)
    out = {}
    for t in p.targets:
        q = expand(t.query, time_from_ms=t0, time_to_ms=t1, interval_ms=interval.ms,
                   variables={v.name: route or [ALL]}, all_values={v.name: routes}, specs=specs, now_ms=t1)
        assert not re.search(r"\$[A-Za-z_{]|\[\[", q), q
        out[t.ref_id] = run_query(day.source, q)
    return out


def _rows(series: list[Series]) -> list[dict[str, Any]]:
    """Table rows: tags and columns of every series."""
    return [{**s.tags, **dict(zip(s.columns, row, strict=True))} for s in series for row in s.values]


# ------------------------------------------------------------------------------------------------------------
# every query runs


def test_route_variable_lists_the_routes(day):
    assert sorted(tag_values(day.source, cat.V_ROUTE.query)) == ["loop-e", "loop-w"]


def test_every_transit_panel_returns_data_over_the_day_and_the_default_range(day):
    for p in cat.TRANSIT.panels:
        for t0, t1 in ((T0, T1), (T1 - 86_400_000, T1)):
            res = _run(day, p, t0=t0, t1=t1)
            for t in p.targets:
                assert sum(s.non_null() for s in res[t.ref_id]), (p.title("en"), t.ref_id)


# ------------------------------------------------------------------------------------------------------------
# the numbers


def test_boardings_and_alightings_per_stop_add_up(day):
    p = _panel("Boardings and alightings per stop (period total)")
    rows = _rows(_run(day, p)["A"])
    got_b = {r["stop"]: r["boardings"] for r in rows if r["boardings"] is not None}
    got_a = {r["stop"]: r["alightings"] for r in rows if r["alightings"] is not None}
    want_b: dict[str, float] = defaultdict(float)
    want_a: dict[str, float] = defaultdict(float)
    for (_route, stop), v in day.boardings.items():
        want_b[stop] += v
    for (_route, stop), v in day.alightings.items():
        want_a[stop] += v
    assert got_b.keys() == want_b.keys() and got_a.keys() == want_a.keys()
    for stop in want_b:
        assert got_b[stop] == pytest.approx(want_b[stop]), stop
        assert got_a[stop] == pytest.approx(want_a[stop]), stop
    assert sum(got_b.values()) == pytest.approx(sum(day.boardings.values()))
    # one route selected: only its stops' counts
    rows = _rows(_run(day, p, route=["loop-w"])["A"])
    assert {r["stop"]: r["boardings"] for r in rows} == pytest.approx(
        {stop: v for (route, stop), v in day.boardings.items() if route == "loop-w"})


def test_boardings_per_hour(day):
    p = _panel("Boardings per hour, by route")
    got: dict[tuple[str, int], float] = defaultdict(float)
    for s in _run(day, p)["A"]:
        for ts, v in s.values:
            if v:
                got[(s.tags["route"], dt.datetime.fromtimestamp(ts / 1000, JST).hour)] += v
    assert dict(got) == pytest.approx({k: v for k, v in day.boardings_per_hour.items() if v})
    # over half a year the display interval is longer than an hour: the value stays "per hour" (the hourly mean)
    long = _run(day, p, t0=T1 - 180 * 86_400_000, t1=T1)["A"]
    interval_h = (long[0].values[1][0] - long[0].values[0][0]) / 3_600_000
    assert interval_h > 1
    total = sum(v * interval_h for s in long for _ts, v in s.values if v)
    assert total == pytest.approx(sum(day.boardings_per_hour.values()))


def test_occupancy_per_trip_with_its_interval(day):
    res = _run(day, _panel("Passengers on board per trip, with the 90 % interval"))
    for ref, want, agg in (("A", day.occupancy, max), ("B", day.occupancy_lo, min), ("C", day.occupancy_hi, max)):
        got = {s.tags["trip"]: agg(v for _ts, v in s.values if v is not None) for s in res[ref]}
        assert got == pytest.approx({trip: agg(vs) for trip, vs in want.items()}), ref
    table = _rows(_run(day, _panel("Maximum and mean passengers per trip and day"))["A"])
    by_trip = {r["trip"]: r for r in table if r["max"] is not None}
    assert by_trip.keys() == day.occupancy.keys()
    for trip, occ in day.occupancy.items():
        r = by_trip[trip]
        assert r["max"] == pytest.approx(max(occ)) and r["mean"] == pytest.approx(sum(occ) / len(occ)), trip
        assert r["max_hi"] == pytest.approx(max(day.occupancy_hi[trip]))
        if trip.startswith("wd-"):
            assert r["max_pct"] == pytest.approx(max(occ) / CAPACITY * 100, abs=0.01)
        else:
            assert r["max_pct"] is None, "no capacity configured on bus-02"
        assert r["time"] == T0, "the row is the day (Japan time) of the trip"


def test_od_pairs_count_riders_and_hide_small_groups(day):
    rows = _rows(_run(day, _panel("Riders per origin and destination (app users)"))["A"])
    got = {(r["board_stop"], r["alight_stop"]): r["riders"] for r in rows}
    want = {k: len(v) for k, v in day.od.items() if len(v) >= cat.MIN_OD_RIDERS}
    assert got == want and ("1001", "1007") in got and got[("1001", "1007")] == 5  # both trips
    assert all(len(v) < cat.MIN_OD_RIDERS for k, v in day.od.items() if k not in got)
    for r in rows:
        rides = day.od[(r["board_stop"], r["alight_stop"])]
        assert r["mean_ride_s"] == pytest.approx(sum(rides) / len(rides))
        assert "rider" not in r


def test_no_panel_shows_the_rider_hash():
    for p in cat.TRANSIT.panels:
        for t in p.targets:
            if '"bus_od"' in t.query:
                assert "rider\"" not in t.query.replace('"riders"', "") and "*" not in t.query, t.query


def test_latest_position_per_bus(day):
    for title in ("Buses: position and passengers (latest)", "Buses: latest state"):
        rows = _rows(_run(day, _panel(title))["A"])
        assert {r["device"] for r in rows} == set(day.last_position)
        for r in rows:
            want = day.last_position[r["device"]]
            assert r["time"] == want["time"]
            assert (r["lat"], r["lon"], r["stop_id"], r["trip_id"]) == pytest.approx(
                (want["lat"], want["lon"], want["stop_id"], want["trip_id"]))
            assert r["occupancy"] == pytest.approx(want["occupancy"])
            assert r["occupancy_pct"] == want.get("occupancy_pct"), "only the newest fix's own fields"


def test_map_colours_are_the_gtfs_rt_occupancy_bounds():
    from google.transit import gtfs_realtime_pb2 as rt

    from cityos_api.gtfs_rt import OCCUPANCY_STEPS

    bounds = dict((status, bound) for bound, status in OCCUPANCY_STEPS)
    vp = rt.VehiclePosition
    assert (bounds[vp.MANY_SEATS_AVAILABLE], bounds[vp.FEW_SEATS_AVAILABLE], bounds[vp.STANDING_ROOM_ONLY]) == (
        cat.BUS_FEW_SEATS_PCT, cat.BUS_STANDING_PCT, cat.BUS_CROWDED_PCT)


def test_stop_names_in_the_descriptions():
    p = _panel("Boardings and alightings per stop (period total)")
    assert p.description is not None
    assert "1001 津山駅" in p.description.ja and "1001 Tsuyama Station" in p.description.en


def test_preview_draws_the_dashboard(day, tmp_path):
    """``cityos dashboards preview`` (and the demo's previews) draw every transit panel without an error, with
    data here, and with none (the demo's city has no buses yet)."""
    from dashboards.preview import render

    for name, shift in (("day", 0), ("empty", 30 * 86_400_000)):
        res = render(day.source, tmp_path / name, (cat.TRANSIT,), lang="ja", time_from_ms=T0 - shift,
                     time_to_ms=T1 - shift, now_ms=T1 - shift,
                     geojson=REPO / "scenarios" / "tsuyama-districts.geojson")
        assert not res.errors, [(p.title, p.error) for p in res.errors]
        assert [f.name for f in res.files] == ["cityos-transit.png"]
        if name == "day":
            assert len(res.panels) == len(cat.TRANSIT.panels) and all(p.series for p in res.panels)
