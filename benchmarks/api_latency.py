"""The City OS API's latency, route by route, over 30 days of the city at its real rates (issue 14, item 7).

Target: every route's p99 < 50 ms. Method (docs/benchmarks.md, "Issue 14: the City OS API's latency"):

1. **Data.** A private stack (``citylab.stack.Stack``: InfluxDB 1.6 with auth, loopback, ``GOGC`` 400 as deployed:
   :data:`INFLUX_GOGC`) in ``--run-dir``; a fresh
   database ``api_latency`` holding ``--days`` (30) whole JST days ending yesterday, plus today up to now (the
   live routes, GTFS-RT and the forest stations' alert window, read the last minutes: without them they would
   answer nothing). The points are written **directly** as the ingest writes them
   (``ingest.lineproto.batch_to_lines`` of wire-contract batches, ``status_to_line`` for statuses) through
   ``cityos.influx.InfluxClient.write`` (gzip, 50,000 lines a request) as the write-only user: this measures
   the API, not the ingest, so MQTT is not involved. The rates (``firmware_sim/loadgen.py``'s city):

   * 5,000 households: the fixed-time ``energy_fixed_kwh`` every half hour (``energy``, tag ``district``); the
     households spread over the districts of ``scenarios/tsuyama-districts.geojson``, all but two holding
     hundreds, ``sarayama`` 6 and ``shohoku`` 8 (under k = 10: the suppression is exercised); 0.1 % of the
     values missing. The meters' per-minute power readings are not written (216 M points a month; the issue
     names the half-hourly values, and no route reads the others).
   * 200 forest stations on 50 gateways: one reading every ``--station-interval`` s (60: the load generator's
     ``station_interval_s``, which the issue names; the simulated city's stations sample every 600 s), all
     the fields a station sends (with its configured lat/lon); storms on some days put a quarter of the
     stations at warning for hours (``/v1/forest/alerts`` has episodes).
   * 30 trucks, Monday to Saturday 08:00-16:00 JST: a pickup (``waste_collection``, tag ``district``, kg,
     lat/lon, trip and pickup numbers) every 55 s at fixed collection points of the truck's district (5 % in
     a neighbouring one, 1 % ``unknown`` without a position), three trips a day (``waste_trip``).
   * one bus on the GTFS-JP loop (``scenarios/gtfs-tsuyama-loop``, its weekday or weekend trips): a
     ``bus_position`` every 15 s in service, a ``bus_stop`` point per stop visit (3 % incomplete), three
     consenting riders' ``bus_od`` pairs per trip.
   * every gateway but the meters' (81): ``gateway_health`` and ``gateway_status`` every 60 s; the 5,000 meter
     gateways' health and status only for the last ``--meter-health-hours`` (2) before the data's end, so the
     fleet routes see all 5,081 gateways (what their newest-point-per-gateway queries cost grows with the
     gateways, not the points behind them) without 430 M points.

   ``--reuse`` keeps the database of an earlier run with the same data parameters and tops it up to now.
   If the ``rollup`` package (pre-aggregation) can be imported, one pass of it runs after the writing.
2. **Measure.** The API as deployed: ``cityos api serve --config api.toml`` (uvicorn) in a subprocess on a
   loopback port, InfluxDB's read-only user, a tokens file with one token holding every scope, the open rate
   limit raised out of the way, ``[places]`` with the districts file and the loop's GTFS. Every GET operation
   of ``/openapi.json`` is measured (a route added later is measured too: one without a case below is called
   with its path parameters filled and no query, and marked), each with its cases (the default range, and
   the longest the route allows where that is the hard case), plus every NGSI-LD entity type the facade has
   (``/types``): query, temporal with ``aggregatedValues``. Each case: ``--warmup`` requests, then ``--n``
   (200) sequential requests over one keep-alive httpx connection, the wall time of each from sending to the
   last byte read (``time.perf_counter``); a case stops early after ``--case-budget-s`` once it has
   ``--min-n`` requests. Percentiles are nearest-rank (p99 of 200 = the 198th smallest). A live feeder writes
   the city's live readings every 15 s while this runs (the API is read while the ingest writes).
3. **InfluxDB's share.** Each case is run once more in this process through an in-process app whose InfluxDB
   client records the InfluxQL it sends; those statements are then timed directly against InfluxDB (the
   reader user, POST ``/query``, ``epoch=ms``, as the API sends them), ``--influx-n`` times, sequentially as
   the route runs them. ``influx p50 / route p50`` is InfluxDB's share; the rest is the API (Python: parsing
   InfluxDB's JSON, building rows, the response).

Usage::

    python benchmarks/api_latency.py --run-dir /tmp/api-latency [--reuse] [--days 30] [--households 5000]
        [--n 200] [--warmup 10] [--only REGEX] [--json out.json] [--keep-up]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib
import importlib.util
import itertools
import json
import math
import os
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from citylab.stack import INFLUX_READER, INFLUX_WRITER, Stack, StackInfo, deployed_influx_gogc  # noqa: E402
from cityos.influx import InfluxClient  # noqa: E402
from cityos.wire import GatewayStatus, Reading, TelemetryBatch  # noqa: E402
from ingest.lineproto import batch_to_lines, status_to_line  # noqa: E402

JST = timezone(timedelta(hours=9))
DAY_MS = 86_400_000
MIN_MS = 60_000
SLOT_MS = 1_800_000
DB = "api_latency"
DISTRICTS_FILE = ROOT / "scenarios" / "tsuyama-districts.geojson"
GTFS_DIR = ROOT / "scenarios" / "gtfs-tsuyama-loop"
TARGET_MS = 50.0
#: The districts under k: so few households that every one of their half hours is suppressed.
SMALL_DISTRICTS = {"sarayama": 6, "shohoku": 8}
#: Routes whose answers another engineer's rollups (pre-aggregation) are to serve.
ROLLUP_ROUTES = ("/v1/energy/districts/half-hourly", "/v1/energy/districts/daily", "/v1/waste/districts/daily",
                 "/v1/waste/districts/monthly")
LINES_PER_WRITE = 50_000
#: 2026-01-01 00:00 JST: the meters' cumulative values and the trucks' trip numbers count from here.
EPOCH_MS = 1_767_193_200_000


def _h(*parts: Any) -> int:
    """A stable hash of ``parts`` (deterministic data: a top-up continues what an earlier run wrote)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def jst_midnight(ms: int) -> int:
    return (ms + 9 * 3_600_000) // DAY_MS * DAY_MS - 9 * 3_600_000


def iso_jst(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, JST).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------------------
# the city's data


@dataclass(frozen=True)
class City:
    households: int = 5000
    stations: int = 200
    stations_per_gateway: int = 4
    trucks: int = 30
    station_interval_s: float = 60.0
    meter_health_hours: float = 2.0

    def params(self) -> dict[str, Any]:
        return asdict(self)


def _districts() -> list[tuple[str, float, float]]:
    """(id, centroid lat, centroid lon) of every district of the districts file."""
    doc = json.loads(DISTRICTS_FILE.read_text(encoding="utf-8"))
    out = []
    for f in doc["features"]:
        g = f["geometry"]
        ring = g["coordinates"][0] if g["type"] == "Polygon" else g["coordinates"][0][0]
        lon = sum(p[0] for p in ring) / len(ring)
        lat = sum(p[1] for p in ring) / len(ring)
        out.append((f["properties"]["id"], lat, lon))
    return out


def _gtfs() -> tuple[dict[str, tuple[float, float]], dict[str, list[tuple[str, list[tuple[int, str, int]]]]]]:
    """Stops' positions; service id -> [(trip id, [(arrival s after midnight, stop id, sequence)])]."""
    def rows(name: str) -> list[dict[str, str]]:
        with (GTFS_DIR / name).open(encoding="utf-8-sig", newline="") as fh:
            return list(csv.DictReader(fh))

    stops = {r["stop_id"]: (float(r["stop_lat"]), float(r["stop_lon"])) for r in rows("stops.txt")}
    times: dict[str, list[tuple[int, str, int]]] = {}
    for r in rows("stop_times.txt"):
        h, m, s = (int(x) for x in r["arrival_time"].split(":"))
        times.setdefault(r["trip_id"], []).append((h * 3600 + m * 60 + s, r["stop_id"], int(r["stop_sequence"])))
    services: dict[str, list[tuple[str, list[tuple[int, str, int]]]]] = {}
    for r in rows("trips.txt"):
        st = sorted(times.get(r["trip_id"], []), key=lambda x: x[2])
        if st:
            services.setdefault(r["service_id"], []).append((r["trip_id"], st))
    for v in services.values():
        v.sort(key=lambda t: t[1][0][0])
    return stops, services


class CityData:
    """Every family's readings with a time in ``[a, b)``: deterministic functions of device and time, so any
    split of a span into windows writes the same points."""

    def __init__(self, city: City, meter_health_since_ms: int) -> None:
        self.c = city
        self.meter_health_since = meter_health_since_ms
        dists = _districts()
        self.centroids = {d: (lat, lon) for d, lat, lon in dists}
        big = [d for d, _, _ in dists if d not in SMALL_DISTRICTS]
        self.big = big
        # households: the small districts first (a fixed few), the rest round-robin over the others
        hh_d: list[str] = []
        for d, n in SMALL_DISTRICTS.items():
            if d in self.centroids:
                hh_d += [d] * n
        while len(hh_d) < city.households:
            hh_d.append(big[len(hh_d) % len(big)])
        self.hh_district = hh_d[: city.households]
        rng = np.random.default_rng(7)
        self.hh_base = rng.uniform(1000, 9000, city.households)
        self.hh_rate = rng.uniform(0.08, 0.6, city.households)  # kWh per half hour, on average
        self.hh_phase = rng.uniform(0, 2 * math.pi, city.households)
        self.hh_ms = np.array([(h * 37) % 1000 for h in range(city.households)])  # ms past :00/:30
        n_gw = -(-city.stations // city.stations_per_gateway)
        self.forest_gw = [f"gw-forest-{g:03d}" for g in range(n_gw)]
        self.stations = [(f"forest-{i // city.stations_per_gateway:03d}-{i % city.stations_per_gateway:02d}",
                          self.forest_gw[i // city.stations_per_gateway]) for i in range(city.stations)]
        self.st_pos = [(35.10 + 0.2 * ((_h("lat", s) % 1000) / 1000), 133.85 + 0.3 * ((_h("lon", s) % 1000) / 1000))
                       for s, _ in self.stations]
        self.truck_gw = [f"gw-truck-{t:02d}" for t in range(city.trucks)]
        self.trucks = [f"truck-{t:02d}" for t in range(city.trucks)]
        self.bus_gw = "gw-bus-01"
        self.meter_gw = [f"gw-meter-{h:05d}" for h in range(city.households)]
        self.other_gw = [*self.forest_gw, *self.truck_gw, self.bus_gw]
        self.stops, self.services = _gtfs()

    # ---- helpers
    @staticmethod
    def _ticks(a: int, b: int, period: int, phase: int) -> range:
        """k with a <= k * period + phase < b."""
        return range(-(-(a - phase) // period), -(-(b - phase) // period))

    @staticmethod
    def _days(a: int, b: int) -> list[int]:
        d = jst_midnight(a)
        out = []
        while d < b:
            out.append(d)
            d += DAY_MS
        return out

    # ---- families
    def energy(self, a: int, b: int) -> list[tuple[str, list[Reading]]]:
        ks = np.arange(-(-(a - 999) // SLOT_MS), -(-b // SLOT_MS))
        if not len(ks):
            return []
        out = []
        for h in range(self.c.households):
            ts = ks * SLOT_MS + self.hh_ms[h]
            kwh = self.hh_base[h] + self.hh_rate[h] * (ks - EPOCH_MS // SLOT_MS + 0.4 * np.sin(2 * math.pi * ks / 48 + self.hh_phase[h]))
            kwh = np.round(kwh, 3).tolist()
            dev, d = f"hh-{h:05d}", self.hh_district[h]
            rs = [Reading(device_id=dev, kind="smart_meter", ts=t, values={"energy_fixed_kwh": v},
                          tags={"district": d})
                  for k, t, v in zip(ks.tolist(), ts.tolist(), kwh, strict=True)
                  if a <= t < b and (h * 7919 + k * 104729) % 997 != 0]
            if rs:
                out.append((self.meter_gw[h], rs))
        return out

    def forest(self, a: int, b: int) -> list[tuple[str, list[Reading]]]:
        period = int(self.c.station_interval_s * 1000)
        by_gw: dict[str, list[Reading]] = {}
        for i, (dev, gw) in enumerate(self.stations):
            phase = _h("phase", dev) % period
            ks = np.arange(-(-(a - phase) // period), -(-(b - phase) // period))
            if not len(ks):
                continue
            ts = ks * period + phase
            hour = ((ts + 9 * 3_600_000) % DAY_MS) / 3_600_000
            day0 = (ts + 9 * 3_600_000) // DAY_MS * DAY_MS - 9 * 3_600_000
            storm = np.isin((day0 // DAY_MS) % 13, (5, 11)) & (hour >= 12) & (hour < 20)
            exposed = i % 4 == 0
            intensity = np.where(storm, 8.0 + (32.0 if exposed else 10.0) * np.sin(np.pi * (hour - 12) / 8), 0.0)
            rain_mm = np.round(intensity * period / 3_600_000, 2)
            soil = 26 + 4 * np.sin(2 * np.pi * ts / (7 * DAY_MS) + i) + np.where(storm, 17.0 if exposed else 6.0, 0)
            tilt_rate = np.where(storm & exposed & (hour > 16), 0.15, 0.01 * np.sin(ts / 3.6e6 + i))
            cols = {
                "soil_moisture_pct": np.round(soil, 1), "soil_moisture_deep_pct": np.round(soil - 3, 1),
                "rain_mm": rain_mm, "rain_tips": np.round(ks % 65536, 0).astype(float),
                "rain_intensity_mm_h": np.round(intensity, 1),
                "rain_cumulative_mm": np.round(np.where(storm, intensity * (hour - 12), 0.0), 1),
                "tilt_x_deg": np.round(0.12 + 0.001 * (ks % 100), 3), "tilt_y_deg": np.round(-0.03 + 0 * ks, 3),
                "tilt_rate_x_deg_h": np.round(tilt_rate, 3), "tilt_rate_y_deg_h": np.zeros(len(ks)),
                "water_level_m": np.round(0.4 + intensity / 100, 2), "battery_v": np.round(12.6 - 0.1 * (hour > 20), 2),
                "status": np.zeros(len(ks)),
            }
            names = list(cols)
            lat, lon = self.st_pos[i]
            rows = zip(*(cols[n].tolist() for n in names), strict=True)
            rs = by_gw.setdefault(gw, [])
            for t, row in zip(ts.tolist(), rows, strict=True):
                v = dict(zip(names, row, strict=True))
                v["lat"] = lat
                v["lon"] = lon
                rs.append(Reading(device_id=dev, kind="forest_station", ts=t, values=v))
        return list(by_gw.items())

    def _truck_day(self, t: int, day: int) -> tuple[list[Reading], list[Reading]]:
        """A truck's pickups and trips of a JST day (Monday to Saturday; none on Sundays)."""
        if datetime.fromtimestamp(day / 1000, JST).weekday() == 6:
            return [], []
        home = self.big[t % len(self.big)]
        other = self.big[(t + 1) % len(self.big)]
        day_no = (day - EPOCH_MS) // DAY_MS
        pickups, trips = [], []
        prev_end = day - DAY_MS + 15 * 3_600_000 + 56 * MIN_MS  # yesterday's last unload, 15:56
        dev = self.trucks[t]
        for k in range(3):
            start = day + 8 * 3_600_000 + k * (160 * MIN_MS)
            kg_sum, unknown, n = 0.0, 0, 0
            last = start
            for j in range(160):
                ts = start + j * 55_000 + _h(dev, day_no, k, j) % 20_000
                p = k * 160 + j
                r = _h("p", dev, day_no, p) % 100
                kg = float(5 + _h("kg", dev, day_no, p) % 60)
                kg_sum += kg
                n += 1
                values = {"kg": kg, "load_kg": round(kg_sum, 1), "trip_no": float(day_no * 3 + k),
                          "pickup_no": float(j + 1)}
                if r == 0:
                    district = "unknown"
                    unknown += 1
                else:
                    district = other if r <= 5 else home
                    lat0, lon0 = self.centroids[district]
                    values |= {"lat": round(lat0 + ((p * 37) % 40 - 20) * 0.0007, 6),
                               "lon": round(lon0 + ((p * 53) % 40 - 20) * 0.0009, 6), "fix_age_s": 1.0}
                pickups.append(Reading(device_id=dev, kind="truck_collection", ts=ts, values=values,
                                       tags={"district": district}))
                last = ts
            end = last + 10 * MIN_MS
            trips.append(Reading(device_id=dev, kind="truck_trip", ts=end, values={
                "trip_no": float(day_no * 3 + k), "kg_collected": round(kg_sum, 1),
                "kg_unloaded": round(kg_sum - 3, 1), "pickups": float(n), "pickups_unknown_district": float(unknown),
                "distance_km": round(18 + (_h("d", dev, day_no, k) % 100) / 10, 1),
                "duration_s": round((end - prev_end) / 1000, 1)}))
            prev_end = end
        return pickups, trips

    def trucks_data(self, a: int, b: int) -> list[tuple[str, list[Reading]]]:
        out = []
        for t in range(self.c.trucks):
            rs: list[Reading] = []
            for day in self._days(a, b):
                p, tr = self._truck_day(t, day)
                rs += [r for r in (*p, *tr) if a <= r.ts < b]
            if rs:
                out.append((self.truck_gw[t], sorted(rs, key=lambda r: r.ts)))
        return out

    def _bus_day(self, day: int) -> list[Reading]:
        d = datetime.fromtimestamp(day / 1000, JST)
        service = "weekday" if d.weekday() < 5 else "weekend"
        start_date = d.strftime("%Y%m%d")
        out: list[Reading] = []
        trips = self.services.get(service, [])
        legs: list[tuple[int, int, str, int, str, str]] = []  # (t0, t1, trip, seq of the next stop, stop, prev stop)
        for trip_id, st in trips:
            arrivals = []
            for arr_s, stop, seq in st:
                ts = day + arr_s * 1000 + _h("arr", day, trip_id, seq) % 40_000
                arrivals.append((ts, stop, seq))
                complete = _h("c", day, trip_id, seq) % 100 >= 3
                dev = 2 + _h("dev", day, trip_id, seq) % 25
                boarded, alighted = _h("b", day, trip_id, seq) % 6, _h("a", day, trip_id, seq) % 6
                values: dict[str, Any] = {"trip_id": trip_id, "stop_id": stop, "stop_sequence": float(seq),
                                          "dwell_s": 20.0, "complete": complete, "devices": float(dev),
                                          "wearables": 1.0, "occupancy": round(dev * 0.8, 3),
                                          "occupancy_lo": round(dev * 0.5, 3), "occupancy_hi": round(dev * 1.2, 3)}
                if complete:
                    values |= {"devices_boarded": float(boarded), "devices_alighted": float(alighted),
                               "boardings": round(boarded * 0.8, 3), "alightings": round(alighted * 0.8, 3)}
                out.append(Reading(device_id="bus-01", kind="bus_stop_visit", ts=ts, values=values,
                                   tags={"route": "loop-e", "stop": stop.lower(), "trip": trip_id.lower()}))
            for (t0, s0, _), (t1, s1, q1) in itertools.pairwise(arrivals):
                legs.append((t0, t1, trip_id, q1, s1, s0))
            for r in range(3):  # consenting riders
                i = _h("ob", day, trip_id, r) % (len(st) - 2)
                j = i + 1 + _h("oa", day, trip_id, r) % (len(st) - i - 1)
                (tb, sb, qb), (ta, sa, qa) = arrivals[i], arrivals[j]
                out.append(Reading(device_id="bus-01", kind="bus_od", ts=ta + r, values={
                    "rider": f"{_h('rider', day, trip_id, r):016x}", "board_trip_id": trip_id,
                    "alight_trip_id": trip_id, "board_sequence": float(qb), "alight_sequence": float(qa),
                    "board_ts": float(tb), "ride_s": round((ta - tb) / 1000, 1)},
                    tags={"route": "loop-e", "board_stop": sb.lower(), "alight_stop": sa.lower()}))
        # positions every 15 s while a trip runs (between its first and last arrival)
        for t0, t1, trip_id, seq, stop, prev in legs:
            (la0, lo0), (la1, lo1) = self.stops[prev], self.stops[stop]
            for ts in range(-(-t0 // 15_000) * 15_000, t1, 15_000):
                f = (ts - t0) / max(1, t1 - t0)
                stopped = ts - t0 < 20_000
                out.append(Reading(device_id="bus-01", kind="bus_position", ts=ts, values={
                    "lat": round(la0 + f * (la1 - la0), 7), "lon": round(lo0 + f * (lo1 - lo0), 7),
                    "speed_kmh": 0.0 if stopped else 22.5, "trip_id": trip_id, "route_id": "loop-e",
                    "start_date": start_date, "stop_id": prev if stopped else stop, "stopped": stopped,
                    "occupancy": 12.0, "bearing_deg": 90.0, "stop_sequence": float(seq - 1 if stopped else seq)}))
        return out

    def bus(self, a: int, b: int) -> list[tuple[str, list[Reading]]]:
        rs = [r for day in self._days(a, b) for r in self._bus_day(day) if a <= r.ts < b]
        return [(self.bus_gw, sorted(rs, key=lambda r: r.ts))] if rs else []

    def health(self, a: int, b: int) -> tuple[list[tuple[str, list[Reading]]], list[str]]:
        """gateway_health readings and gateway_status lines, every 60 s per gateway (meter gateways only from
        ``meter_health_since``)."""
        gws = list(self.other_gw)
        if b > self.meter_health_since:
            gws += self.meter_gw
        batches, statuses = [], []
        for g in gws:
            lo = a if not g.startswith("gw-meter-") else max(a, self.meter_health_since)
            phase = _h("hp", g) % MIN_MS
            ks = self._ticks(lo, b, MIN_MS, phase)
            if not len(ks):
                continue
            rs = []
            for k in ks:
                ts = k * MIN_MS + phase
                x = (k % 60) / 10
                rs.append(Reading(device_id="gateway", kind="gateway_health", ts=ts, values={
                    "agent_cpu_pct": 3.2 + x, "cpu_pct": 11.5 + x, "load1": 0.3, "agent_rss_mb": 38.5,
                    "mem_used_pct": 41.0, "mem_available_mb": 512.0, "agent_uptime_s": float(k % 100000),
                    "disk_free_mb": 11800.0, "disk_used_pct": 23.0, "cpu_temp_c": 48.0 + x,
                    "backlog_depth": 0.0, "backlog_age_s": 0.0, "uplink_published_readings": float(k),
                    "uplink_acked_readings": float(k), "uplink_connects": 1.0, "uplink_disconnects": 0.0,
                    "gateway_clock_synced": 1.0, "source_restarts": 0.0}))
                statuses.append(status_to_line(GatewayStatus(
                    gateway_id=g, state="online", boot_id=f"boot-{_h('boot', g):016x}",
                    ts=ts + 5, agent_version="1.4.0", config_hash="3f9a1c0e", backlog_depth=0, backlog_age_s=0.0,
                    counters={"uplink_connects": 1.0})))
            batches.append((g, rs))
        return batches, statuses

    def lines(self, a: int, b: int) -> tuple[list[str], Counter[str]]:
        """Every line of the window, as the ingest writes it, and the points per measurement."""
        out: list[str] = []
        counts: Counter[str] = Counter()
        for family in (self.energy, self.forest, self.trucks_data, self.bus, self.health):
            got = family(a, b)
            batches, statuses = got if isinstance(got, tuple) else (got, [])
            for gw, rs in batches:
                for i in range(0, len(rs), 500):
                    out += batch_to_lines(TelemetryBatch(gateway_id=gw, boot_id="bench-boot-0001", seq=i,
                                                         sent_at=b, readings=rs[i:i + 500]))
            out += statuses
            del got, batches
        for line in out:
            counts[line[: line.index(",")]] += 1
        return out, counts


class Writer:
    """Posts chunks of lines from a queue (a thread: gzip and the HTTP wait overlap the generation)."""

    def __init__(self, info: StackInfo, db: str) -> None:
        password = info.password_file(INFLUX_WRITER).read_text().strip()
        self.client = InfluxClient(info.influx_url, db, INFLUX_WRITER, password, timeout_s=300)
        self.q: queue.Queue[list[str] | None] = queue.Queue(maxsize=4)
        self.error: str | None = None
        self.lines = 0
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while (chunk := self.q.get()) is not None:
            if self.error:
                continue
            res = self.client.write("\n".join(chunk).encode())
            if not res.ok:
                self.error = f"{res.status} {res.message[:300]}"
            self.lines += len(chunk)

    def put(self, lines: list[str]) -> None:
        for i in range(0, len(lines), LINES_PER_WRITE):
            self.q.put(lines[i:i + LINES_PER_WRITE])
        if self.error:
            raise RuntimeError(f"InfluxDB write failed: {self.error}")

    def close(self) -> None:
        self.q.put(None)
        self.t.join()
        self.client.close()
        if self.error:
            raise RuntimeError(f"InfluxDB write failed: {self.error}")


def write_span(data: CityData, info: StackInfo, a: int, b: int, verbose: bool = True) -> tuple[Counter[str], float]:
    """Write ``[a, b)`` day by day; the points per measurement and the seconds it took."""
    t0 = time.monotonic()
    w = Writer(info, DB)
    total: Counter[str] = Counter()
    try:
        cur = a
        while cur < b:
            nxt = min(b, jst_midnight(cur) + DAY_MS)
            lines, counts = data.lines(cur, nxt)
            w.put(lines)
            total += counts
            if verbose:
                print(f"  {iso_jst(cur)[:16]} .. {iso_jst(nxt)[:16]}: {len(lines):,} points "
                      f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
            cur = nxt
    finally:
        w.close()
    return total, time.monotonic() - t0


class LiveFeeder:
    """While the API is measured: the readings that fall due, written every ``period`` s (as the ingest would)."""

    def __init__(self, data: CityData, info: StackInfo, since_ms: int, period: float = 15.0) -> None:
        self.data, self.info, self.since, self.period = data, info, since_ms, period
        self.stop = threading.Event()
        self.points = 0
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            now = int(time.time() * 1000)
            lines, _ = self.data.lines(self.since, now)
            if lines:
                w = Writer(self.info, DB)
                w.put(lines)
                w.close()
                self.points += len(lines)
            self.since = now

    def close(self) -> int:
        self.stop.set()
        self.t.join()
        return self.since


# ------------------------------------------------------------------------------------------------------------
# rollups (another engineer's package: run one pass when it exists)


def run_rollup(info: StackInfo) -> dict[str, Any]:
    """One pass of the ``rollup`` package (``run_once``), if it can be imported: what it did, for the report."""
    if importlib.util.find_spec("rollup") is None:
        return {"available": False, "ran": False, "note": "package rollup not importable: measured without"}
    import citylab.stack as stack_mod

    mod = importlib.import_module("rollup")
    if not hasattr(mod, "run_once") or not hasattr(stack_mod, "INFLUX_ROLLUP"):
        return {"available": True, "ran": False, "public": list(getattr(mod, "__all__", [])),
                "note": "rollup importable but without run_once or the stack's rollup user: measured without"}
    cfg = mod.RollupConfig.model_validate({"influx": stack_mod.influx_settings(info, "rollup", DB)})
    t0 = time.monotonic()
    rep = mod.run_once(cfg)
    summary = rep.summary() if hasattr(rep, "summary") else str(rep)
    return {"available": True, "ran": True, "seconds": round(time.monotonic() - t0, 1), "target": cfg.target,
            "summary": summary, "note": f"rollup.run_once: one pass into {cfg.target} in "
                                        f"{time.monotonic() - t0:.1f} s ({summary})"}


#: How long a shard goes without writes before InfluxDB compacts it fully (``compact-full-write-cold-duration``;
#: InfluxDB's default is 4 h). A deployment's month of data sits in shards compacted long ago; the benchmark's were
#: written minutes before, so its stack compacts a shard 30 s after its last write (the live shard, written every
#: 15 s by the feeder while the API is measured, stays as a deployment's would) and :func:`wait_quiet` waits for it.
COLD_AFTER = "30s"
QUIET_S = 45.0
#: influxd's ``GOGC`` as docs/operations.md deploys InfluxDB for the API (deploy/cloud/influxdb-gogc.conf: 400): with
#: Go's 100, InfluxDB's collector ran every ~0.5 s over a ~0.4 GB live heap at this scale, and the requests meeting
#: it took 2-4 times their median (the benchmark's p99s).
INFLUX_GOGC = deployed_influx_gogc()


def wait_quiet(info: StackInfo, quiet_s: float = 20.0, most_s: float = 900.0) -> dict[str, Any]:
    """Wait until InfluxDB has compacted what the run just wrote (the top-up, the rollup pass): no cache or TSM
    compaction active (its ``/debug/vars``) for ``quiet_s`` in a row, at most ``most_s``. The timed requests then
    meet the steady state a deployment lives in (the live feeder's writes), not the minutes after a bulk load."""
    t0 = time.monotonic()
    quiet_since: float | None = None
    last: dict[str, int] = {}
    while time.monotonic() - t0 < most_s:
        try:
            doc = httpx.get(info.influx_url + "/debug/vars", timeout=10).json()  # loopback: http
        except (httpx.HTTPError, ValueError):
            return {"waited_s": round(time.monotonic() - t0, 1), "quiet": None, "note": "/debug/vars unreadable"}
        last = {}
        for key, v in doc.items():
            if key.startswith("tsm1_engine"):
                for f, n in (v.get("values") or {}).items():
                    if f.endswith("CompactionsActive") and n:
                        last[f] = last.get(f, 0) + int(n)
        now = time.monotonic()
        if last:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return {"waited_s": round(now - t0, 1), "quiet": True}
        time.sleep(1.0)
    return {"waited_s": round(time.monotonic() - t0, 1), "quiet": False, "active": last}


# ------------------------------------------------------------------------------------------------------------
# the API as deployed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_config(info: StackInfo, work: Path) -> tuple[Path, str]:
    from cityos_api.auth import FLEET, HOUSEHOLDS, SERVICE, TokenStore, parse_expiry

    work.mkdir(parents=True, exist_ok=True)
    tokens = work / "tokens.json"
    tokens.unlink(missing_ok=True)
    store = TokenStore(tokens)
    _, token = store.create("api-latency benchmark", [SERVICE, FLEET, HOUSEHOLDS], parse_expiry("1d"))
    cfg = work / "api.toml"
    cfg.write_text(f"""[influx]
url = "{info.influx_url}"
db = "{DB}"
username = "{INFLUX_READER}"
password_file = "{info.password_file(INFLUX_READER)}"

[places]
districts_file = "{DISTRICTS_FILE}"
gtfs_dir = "{GTFS_DIR}"

[auth]
tokens_file = "{tokens}"

[rate_limit]
open_per_minute = 1000000000
burst = 1000000000
""")
    return cfg, token


class ApiProcess:
    def __init__(self, cfg: Path, work: Path) -> None:
        self.port = _free_port()
        self.log = work / "api.log"
        exe = shutil.which("cityos")
        argv = [exe] if exe else [sys.executable, "-m", "cityos_cli"]
        self.proc = subprocess.Popen([*argv, "api", "serve", "--config", str(cfg), "--port", str(self.port)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited ({self.proc.returncode}); see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/openapi.json", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer within 60 s; see {self.log}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    route: str  # the OpenAPI path template
    name: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    note: str = ""


def cases_for(paths: list[str], now_ms: int, start_ms: int, types: list[str]) -> list[Case]:
    today = datetime.fromtimestamp(now_ms / 1000, JST).date()
    yday = today - timedelta(days=1)
    d3 = today - timedelta(days=3)

    def month_back(d: date, n: int) -> str:
        y, m = divmod(d.year * 12 + d.month - 1 - n, 12)
        return f"{y:04d}-{m + 1:02d}"

    def last(days: int) -> dict[str, str]:
        """``from``/``to``: exactly ``days`` days ending now (a JST date for ``from`` would add today's hours)."""
        return {"from": iso_jst(now_ms - days * DAY_MS), "to": iso_jst(now_ms)}

    # the newest month published (48 h after it ended)
    od_month = month_back(today, 1) if today.day > 2 else month_back(today, 2)
    t_iso = lambda d: d.isoformat()  # noqa: E731
    station = "forest-000-00"
    c: dict[str, list[tuple[str, dict[str, str], str]]] = {
        "/v1/forest/stations/{station_id}/readings": [
            ("default: raw, 1 day, limit 1000", {}, ""),
            ("raw, 7 days (longest), limit 1000 (the largest page)", {**last(7), "limit": "1000"}, ""),
            ("10m, 7 days (longest), 500 buckets (the default and largest page)", {"interval": "10m", **last(7)},
             ""),
            ("1h, 31 days (longest), 500 buckets", {"interval": "1h", **last(31)}, ""),
            ("1d, 400 days (longest)", {"interval": "1d", **last(400)}, ""),
        ],
        "/v1/forest/alerts": [
            ("default: 7 days", {}, ""),
            ("92 days (longest)", last(92), ""),
        ],
        "/v1/waste/districts/daily": [
            ("default: 30 days", {}, ""),
            ("400 days (longest), limit 5000", {**last(399), "limit": "5000"}, ""),
        ],
        "/v1/waste/districts/monthly": [
            ("default: this month", {}, ""),
            ("24 months (longest)", {"from": month_back(today, 23), "to": month_back(today, -1)}, ""),
        ],
        "/v1/waste/trucks/{truck_id}/trips": [
            ("default: today", {}, ""),
            ("yesterday (a whole day)", {"date": t_iso(yday)}, ""),
        ],
        "/v1/waste/trips": [
            ("default: today", {}, ""),
            ("yesterday, limit 2000", {"date": t_iso(yday), "limit": "2000"}, ""),
        ],
        "/v1/waste/collection-points": [
            ("default: 7 days", {}, ""),
            ("31 days (longest), limit 5000", {**last(31), "limit": "5000"}, ""),
        ],
        "/v1/energy/districts/half-hourly": [
            ("default: 1 day", {}, ""),
            ("31 days (longest)", last(31), ""),
        ],
        "/v1/energy/districts/daily": [
            ("default: 7 days", {}, ""),
            ("400 days (longest; 30 in the data)", last(400), ""),
        ],
        "/v1/energy/households/{household_id}/half-hourly": [
            ("default: 1 day", {}, ""),
            ("31 days (longest)", last(31), ""),
        ],
        "/v1/bus/stop-hourly": [(f"date={d3} (required; published after 48 h)", {"date": t_iso(d3)}, "")],
        "/v1/bus/od-monthly": [(f"month={od_month} (required; the newest published)", {"month": od_month}, "")],
    }
    path_ids = {"station_id": station, "truck_id": "truck-00", "household_id": "hh-00100",
                "gateway_id": "gw-forest-000", "entityId": f"urn:ngsi-ld:WeatherObserved:{station}",
                "type": types[0] if types else "WeatherObserved", "attrId": "precipitation"}
    def fill(p: str) -> str:
        return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", lambda m: urllib.parse.quote(path_ids.get(m.group(1), "x"),
                                                                              safe=":"), p)

    out: list[Case] = []
    for route in paths:

        if route == "/ngsi-ld/v1/entities":
            for t in types:
                out.append(Case(route, f"type={t} (default limit 20)", route, {"type": t}))
                out.append(Case(route, f"type={t}, limit 1000 (longest)", route, {"type": t, "limit": "1000"}))
            continue
        if route in ("/ngsi-ld/v1/temporal/entities", "/ngsi-ld/v1/temporal/entities/{entityId}"):
            # aggregate periods as a client asks for them: from a whole hour (PT1H), from a JST midnight (P1D);
            # periods of whole rollup rows are served from the rollups (docs/ngsi-ld.md), others from raw points:
            # one such case (timeAt 30 days before now to the second) is measured too
            def z(ms: int) -> str:
                return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

            hour = now_ms - now_ms % 3_600_000
            now_s, day_a, month_h = z(now_ms), z(hour - DAY_MS), z(hour - 30 * DAY_MS)
            month_d = z(jst_midnight(now_ms) - 30 * DAY_MS)
            agg = {"options": "aggregatedValues", "aggrMethods": "sum,avg,max", "timerel": "between"}
            if route == "/ngsi-ld/v1/temporal/entities/{entityId}":
                out.append(Case(route, "default: last 24 h", fill(route)))
                out.append(Case(route, "aggregatedValues PT1H, 30 days from a whole hour", fill(route), {
                    **agg, "aggrPeriodDuration": "PT1H", "timeAt": month_h, "endTimeAt": now_s}))
                continue
            for t in types:
                out.append(Case(route, f"type={t}, aggregatedValues PT1H, last 24 h from a whole hour, 20 entities",
                                route, {"type": t, **agg, "aggrPeriodDuration": "PT1H", "timeAt": day_a,
                                        "endTimeAt": now_s}))
                out.append(Case(route, f"type={t}, aggregatedValues P1D, 30 days from a JST midnight, limit 100 "
                                       "(longest page)", route, {"type": t, **agg, "aggrPeriodDuration": "P1D",
                                                                 "timeAt": month_d, "endTimeAt": now_s,
                                                                 "limit": "100"}))
                out.append(Case(route, f"type={t}, temporalValues, last 24 h, 20 entities", route,
                                {"type": t, "options": "temporalValues", "timerel": "between", "timeAt": day_a,
                                 "endTimeAt": now_s}))
                if t == "WeatherObserved":
                    out.append(Case(route, f"type={t}, aggregatedValues P1D, 30 days from now - 30 d to the second "
                                           "(not whole rows: raw), limit 100", route,
                                    {"type": t, **agg, "aggrPeriodDuration": "P1D",
                                     "timeAt": z(now_ms - 30 * DAY_MS), "endTimeAt": now_s, "limit": "100"}))
            continue
        if route in c:
            for name, params, note in c[route]:
                out.append(Case(route, name, fill(route), params, note))
            continue
        unknown = any(m.group(1) not in path_ids for m in re.finditer(r"\{([^}:]+)", route))
        out.append(Case(route, "default", fill(route), {}, "path id unknown to the benchmark" if unknown else ""))
    return out


# ------------------------------------------------------------------------------------------------------------
# measuring


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples = the 198th smallest)."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


@dataclass
class Result:
    route: str
    case: str
    url: str
    n: int
    statuses: dict[str, int]
    bytes: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float
    note: str = ""
    rollup_route: bool = False
    influx_statements: int | None = None
    influx_p50: float | None = None
    influx_p99: float | None = None
    influx_share: float | None = None
    samples_ms: list[float] = field(default_factory=list)


def measure(client: httpx.Client, case: Case, n: int, warmup: int, budget_s: float, min_n: int) -> Result:
    for _ in range(warmup):
        client.get(case.path, params=case.params)
    times: list[float] = []
    statuses: Counter[str] = Counter()
    size = 0
    t_end = time.monotonic() + budget_s
    for i in range(n):
        t0 = time.perf_counter()
        r = client.get(case.path, params=case.params)
        body = r.content
        times.append((time.perf_counter() - t0) * 1000)
        statuses[str(r.status_code)] += 1
        size = len(body)
        if i + 1 >= min_n and time.monotonic() > t_end:
            break
    url = case.path + ("?" + urllib.parse.urlencode(case.params) if case.params else "")
    return Result(case.route, case.name, url, len(times), dict(statuses), size, pct(times, 50), pct(times, 95),
                  pct(times, 99), max(times), statistics.fmean(times), case.note,
                  case.route in ROLLUP_ROUTES, samples_ms=[round(t, 3) for t in times])


class Recorder(httpx.HTTPTransport):
    """An httpx transport that notes the InfluxQL of every /query it forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/query"):
            form = urllib.parse.parse_qs(request.read().decode())
            q = form.get("q", [""])[0] or request.url.params.get("q", "")
            db = form.get("db", [""])[0] or request.url.params.get("db", "")
            self.seen.append((db, q))
        return super().handle_request(request)


def capture_queries(cfg: Path, token: str, cases: list[Case]) -> list[list[tuple[str, str]]]:
    """The InfluxQL each case makes the API send (one call each, an in-process app with a recording client)."""
    from fastapi.testclient import TestClient

    from cityos_api.app import create_app
    from cityos_api.settings import load_settings

    rec = Recorder()
    app = create_app(load_settings(cfg), transport=rec)
    out = []
    with TestClient(app) as tc:
        for case in cases:
            rec.seen.clear()
            tc.get(case.path, params=case.params, headers={"Authorization": f"Bearer {token}"})
            out.append(list(rec.seen))
    return out


def time_influx(info: StackInfo, stmts: list[tuple[str, str]], n: int, budget_s: float) -> list[float]:
    """ms of running ``stmts`` one after the other against InfluxDB (reader user, POST /query, epoch=ms)."""
    password = info.password_file(INFLUX_READER).read_text().strip()
    times: list[float] = []
    with httpx.Client(base_url=info.influx_url, auth=(INFLUX_READER, password), timeout=300) as c:
        for db, q in stmts:  # warm-up
            c.post("/query", data={"db": db, "q": q, "epoch": "ms"})
        t_end = time.monotonic() + budget_s
        for i in range(n):
            t0 = time.perf_counter()
            for db, q in stmts:
                r = c.post("/query", data={"db": db, "q": q, "epoch": "ms"})
                _ = r.content
            times.append((time.perf_counter() - t0) * 1000)
            if i >= 4 and time.monotonic() > t_end:
                break
    return times


# ------------------------------------------------------------------------------------------------------------
# main


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True, help="the private stack's directory (under /tmp)")
    p.add_argument("--reuse", action="store_true", help="keep the data of an earlier run (same data parameters), "
                   "topped up to now")
    p.add_argument("--days", type=int, default=30, help="whole JST days ending yesterday (default %(default)s)")
    p.add_argument("--households", type=int, default=5000)
    p.add_argument("--stations", type=int, default=200)
    p.add_argument("--trucks", type=int, default=30)
    p.add_argument("--station-interval", type=float, default=60.0,
                   help="s between a forest station's readings (loadgen's station_interval_s: %(default)s)")
    p.add_argument("--meter-health-hours", type=float, default=2.0,
                   help="the meter gateways' health and status for this long before the data's end")
    p.add_argument("--n", type=int, default=200, help="timed requests per case")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-n", type=int, default=30, help="a case over its budget stops after this many")
    p.add_argument("--case-budget-s", type=float, default=15.0, help="seconds per case before it may stop early")
    p.add_argument("--influx-n", type=int, default=30, help="direct InfluxDB timings per case (5 s budget)")
    p.add_argument("--only", default=None, help="measure only routes matching this regex")
    p.add_argument("--no-live", action="store_true", help="no live feeder while measuring")
    p.add_argument("--skip-http", action="store_true", help="only InfluxDB's side: capture and time the InfluxQL")
    p.add_argument("--write-only", action="store_true", help="write the data and stop")
    p.add_argument("--keep-up", action="store_true", help="leave the stack running at the end")
    p.add_argument("--json", type=Path, default=None, help="write everything here")
    return p


def prepare(args: argparse.Namespace, stack: Stack, info: StackInfo, city: City) -> dict[str, Any]:
    """The data: fresh, or reused and topped up to now. What was written and how long it took."""
    state_file = args.run_dir / "api_latency_state.json"
    now = int(time.time() * 1000)
    today0 = jst_midnight(now)
    state = None
    if args.reuse and state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("params") != {**city.params(), "days": args.days}:
            print("--reuse: the data parameters differ from the stored data's: writing afresh", file=sys.stderr)
            state = None
    report: dict[str, Any] = {}
    if state is None:
        stack.drop_database(DB)
        stack.create_database(DB)
        start = today0 - args.days * DAY_MS
        state = {"params": {**city.params(), "days": args.days}, "start_ms": start, "written_until": start,
                 "meter_health_since": int(now - city.meter_health_hours * 3_600_000)}
        print(f"writing {args.days} days from {iso_jst(start)} to {iso_jst(today0)}, then today up to now...",
              file=sys.stderr)
        report["fresh"] = True
    else:
        print(f"--reuse: topping up from {iso_jst(state['written_until'])} to now", file=sys.stderr)
        report["fresh"] = False
    data = CityData(city, state["meter_health_since"])
    counts, secs = write_span(data, info, state["written_until"], now)
    state["written_until"] = now
    # and what fell due while that was written (a few minutes of data)
    now2 = int(time.time() * 1000)
    c2, s2 = write_span(data, info, now, now2, verbose=False)
    counts += c2
    state["written_until"] = now2
    state_file.write_text(json.dumps(state, indent=2))
    report |= {"points": dict(sorted(counts.items())), "points_total": sum(counts.values()),
               "write_s": round(secs + s2, 1), "start": iso_jst(state["start_ms"]),
               "end": iso_jst(state["written_until"]), "data_params": state["params"]}
    print(f"wrote {sum(counts.values()):,} points in {secs + s2:.0f} s "
          f"({sum(counts.values()) / max(secs + s2, 1e-9):,.0f}/s):", file=sys.stderr)
    for m, n in sorted(counts.items()):
        print(f"  {m:18} {n:>12,}", file=sys.stderr)
    report["_data"] = data
    report["_state"] = state
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    city = City(households=args.households, stations=args.stations, trucks=args.trucks,
                station_interval_s=args.station_interval, meter_health_hours=args.meter_health_hours)
    stack = Stack(args.run_dir, compact_cold_after=COLD_AFTER, influx_gogc=INFLUX_GOGC)
    info = stack.up()
    work = args.run_dir / "api-latency"
    out: dict[str, Any] = {"started": iso_jst(int(time.time() * 1000)), "argv": sys.argv[1:],
                           "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                       "load_before": _load()}}
    api = feeder = None
    try:
        prep = prepare(args, stack, info, city)
        data, state = prep.pop("_data"), prep.pop("_state")
        out["data"] = prep
        out["rollup"] = run_rollup(info)
        print(f"rollup: {out['rollup']['note']}", file=sys.stderr)
        if args.write_only:
            return 0
        out["influx_quiet"] = wait_quiet(info, QUIET_S)
        print(f"InfluxDB compactions: {out['influx_quiet']}", file=sys.stderr)
        cfg, token = api_config(info, work)
        api = ApiProcess(cfg, work)
        if not args.no_live:
            feeder = LiveFeeder(data, info, state["written_until"])
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=api.url, headers=headers, timeout=300) as client:
            doc = client.get("/openapi.json").json()
            paths = [p for p, item in doc["paths"].items() if "get" in item]
            types_doc = client.get("/ngsi-ld/v1/types").json() if "/ngsi-ld/v1/types" in paths else {}
            types = list(types_doc.get("typeList", [])) if isinstance(types_doc, dict) else []
            now = int(time.time() * 1000)
            cases = cases_for(paths, now, state["start_ms"], types)
            if args.only:
                cases = [c for c in cases if re.search(args.only, c.route)]
            out["routes"] = paths
            out["ngsi_ld_types"] = types
            print(f"{len(paths)} GET routes, {len(cases)} cases; N={args.n} after {args.warmup} warm-up",
                  file=sys.stderr)
            results: list[Result] = []
            for case in cases if not args.skip_http else []:
                r = measure(client, case, args.n, args.warmup, args.case_budget_s, args.min_n)
                results.append(r)
                flag = "  OVER 50 ms" if r.p99 > TARGET_MS else ""
                print(f"  {r.p50:8.1f} {r.p95:8.1f} {r.p99:8.1f} ms  n={r.n:3}  {dict(r.statuses)}  "
                      f"{case.route} [{case.name}]{flag}", file=sys.stderr)
        out["live_points_written_while_measuring"] = feeder.points if feeder else 0
        if feeder:
            state["written_until"] = feeder.close()
            (args.run_dir / "api_latency_state.json").write_text(json.dumps(state, indent=2))
            feeder = None
        api.close()
        api = None
        if args.skip_http:
            results = [Result(c.route, c.name, c.path, 0, {}, 0, 0.0, 0.0, 0.0, 0.0, 0.0, c.note,
                              c.route in ROLLUP_ROUTES) for c in cases]
        out["results"] = [asdict(r) for r in results]  # kept even if what follows fails
        # InfluxDB's share: the same InfluxQL, directly
        print("capturing each case's InfluxQL and timing it against InfluxDB...", file=sys.stderr)
        try:
            captured = capture_queries(cfg, token, cases)
        except Exception as exc:  # the in-process app could not be built (the tree changing under a run)
            out["capture_error"] = repr(exc)
            print(f"capturing failed: {exc!r}", file=sys.stderr)
            captured = [[] for _ in cases]
        for r, stmts in zip(results, captured, strict=True):
            r.influx_statements = len(stmts)
            if not stmts:
                continue
            t = time_influx(info, stmts, args.influx_n, 5.0)
            r.influx_p50, r.influx_p99 = round(pct(t, 50), 2), round(pct(t, 99), 2)
            r.influx_share = round(r.influx_p50 / r.p50, 3) if r.p50 else None
        out["results"] = [asdict(r) for r in results]
        out["queries"] = {f"{r.route} [{r.case}]": [q for _, q in stmts] for r, stmts in zip(results, captured,
                                                                                             strict=True)}
        out["machine"]["load_after"] = _load()
        print_table(results)
    finally:
        if feeder:
            feeder.close()
        if api:
            api.close()
        if args.json:
            out["finished"] = iso_jst(int(time.time() * 1000))
            args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False, default=str))
        if not args.keep_up:
            stack.down()
    return 0


def print_table(results: list[Result]) -> None:
    print("| route | case | n | p50 ms | p95 ms | p99 ms | max ms | InfluxDB p50 ms (share) | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        share = "" if r.influx_p50 is None else f"{r.influx_p50:.1f}" + (
            "" if r.influx_share is None else f" ({r.influx_share:.0%})")
        over = " **>50**" if r.p99 > TARGET_MS else ""
        status = ", ".join(f"{k}×{v}" for k, v in sorted(r.statuses.items()))
        mark = " (rollups)" if r.rollup_route else ""
        print(f"| `{r.route}`{mark} | {r.case}{' — ' + r.note if r.note else ''} | {r.n} | {r.p50:.1f} | "
              f"{r.p95:.1f} | {r.p99:.1f}{over} | {r.max:.1f} | {share} | {status} |")


if __name__ == "__main__":
    sys.exit(main())
