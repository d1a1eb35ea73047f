"""The simulated city against InfluxDB: did every reading arrive, exactly once, with the right values?

Three checks, one per family, each against the simulators' own ground truth (``truth*.jsonl`` beside each
gateway's config), over the scenario's simulated window:

* **forest**: point by point — (gateway, device, timestamp) and every value, derived ones included;
* **energy**: every household's :00/:30 fixed-time cumulative energy, exactly (the meter's register, in its unit);
  from those, energy per household per 30 min and per district per day;
* **waste**: pickups per truck and district (count exactly) and kg per district per day, within the indicator's
  resolution of what the indicator displayed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citylab.stack import StackInfo, influx_query


@dataclass
class Check:
    name: str
    truth: int = 0
    stored: int = 0
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.truth > 0 and not self.problems

    def line(self) -> str:
        state = "exact" if self.ok else ("NO DATA" if not self.truth else f"{len(self.problems)} problem(s)")
        return f"{self.name:8s} truth {self.truth:6d}  stored {self.stored:6d}  {state}"


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return out


def _series(info: StackInfo, db: str, q: str) -> list[dict[str, Any]]:
    return influx_query(info, db, q)


def _window(t0_ms: int, t1_ms: int) -> str:
    return f"time >= {t0_ms}ms AND time <= {t1_ms}ms"


def verify_forest(info: StackInfo, db: str, gateways: list[tuple[str, Path]], t0: int, t1: int) -> Check:
    c = Check("forest")
    truth: dict[tuple[str, str, int], dict[str, Any]] = {}
    for gid, path in gateways:
        for t in _lines(path):
            if "sample_no" in t:
                truth[(gid, t["device_id"], t["ts"])] = t["values"]
    stored: dict[tuple[str, str, int], dict[str, Any]] = {}
    ids = "|".join(g for g, _ in gateways) or "^$"
    for s in _series(info, db, f'SELECT * FROM "forest" WHERE "gateway" =~ /^({ids})$/ AND {_window(t0, t1)} '
                               'GROUP BY "device", "gateway"'):
        cols = s["columns"]
        for row in s["values"]:
            d = dict(zip(cols, row, strict=True))
            key = (s["tags"]["gateway"], s["tags"]["device"], d.pop("time"))
            if key in stored:
                c.problems.append(f"doubled {key}")
            # the position comes from the gateway's config, not from the station: not part of its ground truth
            stored[key] = {k: v for k, v in d.items() if v is not None and k not in ("backfill", "lat", "lon")}
    c.truth, c.stored = len(truth), len(stored)
    c.problems += [f"missing {k}" for k in sorted(set(truth) - set(stored))[:20]]
    c.problems += [f"extra {k}" for k in sorted(set(stored) - set(truth))[:20]]
    c.problems += [f"wrong {k}: {truth[k]} != {stored[k]}" for k in truth if k in stored and truth[k] != stored[k]][:20]
    return c


def verify_energy(
    info: StackInfo, db: str, households: dict[str, tuple[str, Path]], t0: int, t1: int, *, first_slot: int = 0
) -> Check:
    """``households``: id → (district, truth file). Slots before ``first_slot`` (ms) are not required."""
    c = Check("energy")
    truth: dict[tuple[str, int], float] = {}
    for hh, (_, path) in households.items():
        for t in _lines(path):
            if t.get("type") == "fixed" and max(t0, first_slot) <= t["ts"] <= t1:
                truth[(hh, t["ts"])] = t["energy_kwh"]
    stored: dict[tuple[str, int], float] = {}
    for s in _series(info, db, f'SELECT "energy_fixed_kwh" FROM "energy" WHERE {_window(t0, t1)} AND '
                               '"energy_fixed_kwh" >= 0 GROUP BY "device"'):
        hh = s["tags"]["device"]
        if hh not in households:
            continue
        for ts, v in s["values"]:
            if ts >= first_slot:
                stored[(hh, ts)] = v
    c.truth, c.stored = len(truth), len(stored)
    c.problems += [f"missing slot {k}" for k in sorted(set(truth) - set(stored))[:20]]
    c.problems += [f"extra slot {k}" for k in sorted(set(stored) - set(truth))[:20]]
    c.problems += [
        f"wrong {k}: {truth[k]} kWh != {stored[k]} kWh" for k in truth if k in stored and abs(truth[k] - stored[k]) > 1e-9
    ][:20]
    # energy per household per 30 min, and per district for the day (from consecutive fixed-time values)
    per_hh: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (hh, ts), v in sorted(stored.items()):
        per_hh[hh].append((ts, v))
    half_hours = 0
    district_kwh: dict[str, float] = defaultdict(float)
    for hh, vals in per_hh.items():
        half_hours += max(0, len(vals) - 1)
        if len(vals) > 1:
            district_kwh[households[hh][0]] += vals[-1][1] - vals[0][1]
    c.summary = {"half_hour_values": half_hours, "kwh_by_district": {k: round(v, 3) for k, v in district_kwh.items()}}
    return c


def verify_waste(info: StackInfo, db: str, trucks: dict[str, Path], t0: int, t1: int, resolution_kg: float) -> Check:
    """Pickups and kg per district. A pickup made while the GPS had no fix may honestly be stored under the
    district ``unknown`` (the gateway does not guess a position it doesn't have): such pickups are matched to
    ``unknown`` if the gateway stored that many unknowns, and counted in the summary as ``unlocated``."""
    c = Check("waste")
    got_n: dict[tuple[str, str], int] = defaultdict(int)
    got_kg: dict[str, float] = defaultdict(float)
    for s in _series(info, db, f'SELECT "kg" FROM "waste_collection" WHERE {_window(t0, t1)} '
                               'GROUP BY "device", "district"'):
        dev, district = s["tags"]["device"], s["tags"]["district"]
        if dev not in trucks:
            continue
        for _, kg in s["values"]:
            got_n[(dev, district)] += 1
            got_kg[district] += kg
    want_n: dict[tuple[str, str], int] = defaultdict(int)
    want_kg: dict[str, float] = defaultdict(float)
    unlocated = 0
    for dev, path in trucks.items():
        lines = _lines(path)
        dropouts = [(t["ts"], t["ts"] + int(t.get("duration_s", 0) * 1000)) for t in lines
                    if t.get("event") == "fault" and t.get("fault") == "gps_dropout"]
        unknown_left = got_n.get((dev, "unknown"), 0)
        for t in lines:
            if t.get("event") != "pickup" or not t0 <= t["ts"] <= t1:
                continue
            district = t["district"]
            if unknown_left and any(a <= t["ts"] <= b for a, b in dropouts):
                district, unknown_left, unlocated = "unknown", unknown_left - 1, unlocated + 1
            want_n[(dev, district)] += 1
            want_kg[district] += t["kg_displayed"]
    c.truth, c.stored = sum(want_n.values()), sum(got_n.values())
    for key in sorted(set(want_n) | set(got_n)):
        if want_n.get(key, 0) != got_n.get(key, 0):
            c.problems.append(f"pickups {key}: truth {want_n.get(key, 0)}, stored {got_n.get(key, 0)}")
    for d in sorted(set(want_kg) | set(got_kg)):
        if abs(want_kg.get(d, 0.0) - got_kg.get(d, 0.0)) > resolution_kg:
            c.problems.append(f"kg in {d}: displayed {want_kg.get(d, 0.0):.0f}, stored {got_kg.get(d, 0.0):.0f}")
    c.summary = {"kg_by_district": {d: round(v, 1) for d, v in sorted(got_kg.items())}, "unlocated": unlocated}
    return c


def verify_bus(info: StackInfo, db: str, buses: dict[str, Path], t0: int, t1: int, faults: int = 0) -> Check:
    """Bus ridership is an estimate, so this check is of delivery, not of values: every stop visit the gateway
    reported is stored once (no visit twice at two times, none that the bus did not make), and the visits the
    gateway could see are there. Visits hidden by one of the ``faults`` scheduled on the bus (a GPS dropout, the
    agent down) may be missing: each is allowed two. The accuracy against the truth goes in the summary
    (:func:`firmware_sim.busscore.score`)."""
    from firmware_sim.busscore import score

    c = Check("bus")
    fields = {
        "bus_stop": '"trip_id", "stop_sequence", "boardings", "alightings", "occupancy"',
        "bus_segment": '"trip_id", "from_sequence", "occupancy", "occupancy_lo", "occupancy_hi"',
        "bus_od": '"board_trip_id", "board_sequence", "alight_trip_id", "alight_sequence"',
    }
    for dev, path in buses.items():
        truth = [t for t in _lines(path) if t.get("event") in ("stop_visit", "segment", "app_rider")]
        got: dict[str, list[dict[str, Any]]] = {}
        for m, cols in fields.items():
            rows = []
            for s in _series(info, db, f'SELECT {cols} FROM "{m}" WHERE "device" = \'{dev}\' AND {_window(t0, t1)}'):
                names = s["columns"]
                rows += [dict(zip(names, v, strict=True)) for v in s["values"]]
            got[m] = rows
        visits = [t for t in truth if t.get("event") == "stop_visit" and t0 <= t["arrival_ms"] <= t1]
        c.truth += len(visits)
        c.stored += len(got["bus_stop"])
        sc = score(truth, got["bus_stop"], got["bus_segment"], got["bus_od"])
        if sc["visits_doubled"]:
            c.problems.append(f"{dev}: {sc['visits_doubled']} stop visits stored twice")
        if sc["visits_extra"]:
            c.problems.append(f"{dev}: {sc['visits_extra']} stop visits the bus did not make")
        stored = {(str(r["trip_id"]), int(r["stop_sequence"])) for r in got["bus_stop"]}
        missing = [v for v in visits if (v["trip_id"], v["stop_sequence"]) not in stored]
        if len(missing) > 2 * faults + 1:  # + the day's last visit: it ends when the bus is back at the depot
            c.problems.append(f"{dev}: {len(missing)} stop visits missing, e.g. {missing[0]['trip_id']} "
                              f"#{missing[0]['stop_sequence']} at {missing[0]['stop_id']}")
        c.summary[dev] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in sc.items()
                          if k in ("visits_truth", "visits_reported", "visits_complete", "boardings_mae",
                                   "occupancy_mape", "occupancy_mae", "od_exact", "od_truth")}
    return c

