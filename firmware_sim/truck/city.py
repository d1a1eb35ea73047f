"""Garbage trucks in the simulated city: each on its route from the depot, two trips to the disposal site, GPS and
indicator faults, and the check of pickups per truck and district and kg per district against what the indicator
displayed."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import Field

from cityos.families import by_name
from firmware_sim.cityplugin import (
    Check,
    CityFamily,
    FaultEvent,
    Query,
    Section,
    TimeOfDay,
    hhmm,
    read_truth,
    window,
)

__all__ = ["FAMILY", "TruckCity", "TruckSection"]

#: The truck indicator's resolution in the default truck spec (kg per display step).
TRUCK_RESOLUTION_KG = 10.0
#: A day stopped early freezes the truck where it is: a pickup that settled this shortly before (simulated ms) may
#: not have been confirmed by the gateway (it waits for the indicator's stable hold after the lift).
IN_PROGRESS_MS = 120_000


class TruckSection(Section):
    count: int = Field(default=1, ge=0)
    #: Route file (relative to the scenario), or empty for the built-in Tsuyama route.
    route: str = ""
    #: Collection starts at this simulated time of day.
    depart: TimeOfDay = "08:00"


class TruckCity(CityFamily):
    family = by_name("truck")
    Section = TruckSection
    progress = ("waste_collection", "kg")

    def plan(self) -> None:
        for t in range(self.section.count):
            gw = self.gateway(t + 1, [f"truck-{t + 1:02d}"])
            gw.sources = [{
                "type": "garbage_truck", "name": "truck", "device_id": gw.devices[0],
                "indicator_port": gw.dir / "ttyWEIGHT0", "gps_port": gw.dir / "ttyGPS0",
                "districts": self.city.sc.resolve(self.city.sc.districts),
                "disposal": self._disposal(),
                # the indicator's settle is counted in lines: at 288× a 15 s hold is 50 ms of real time
                "stable_window_s": 0.0,
            }]
            self.gateways.append(gw)

    def _route(self) -> Any:
        from firmware_sim.truck.sim import Route, default_route

        r = self.section.route
        return Route.load(self.city.sc.resolve(r)) if r else default_route()

    def _disposal(self) -> dict[str, float]:
        d = self._route().disposal
        return {"lat": d.lat, "lon": d.lon, "radius_m": d.radius_m}

    def start(self) -> None:
        from firmware_sim.truck.sim import GarbageTruckSim, TruckSimSpec

        assert self.city.clock is not None
        depart = hhmm(self.section.depart) - hhmm(self.city.sc.day.start)
        rate = self.city.sc.day.rate
        for t, gw in enumerate(self.gateways):
            spec = TruckSimSpec(
                truck_id=gw.devices[0], route=self._route(), districts=self.city.sc.resolve(self.city.sc.districts),
                trips=2, seed=self.city.sc.seed * 100 + t, depot_s=max(0.0, depart + 1800 * t),
                # a 4 t indicator would overload on a full round (19 bins of up to 400 kg): use an 8 t scale
                capacity_kg=8000.0,
                # enough lines per phase at any acceleration: the source needs a few stable lines to settle
                indicator_max_real_hz=max(100.0, 8 * rate / 15.0), gps_max_real_hz=max(50.0, rate / 5.0),
            )
            sim = GarbageTruckSim(
                spec, clock=self.city.clock, truth_path=gw.truth,
                indicator_link=gw.dir / "ttyWEIGHT0", gps_link=gw.dir / "ttyGPS0",
            )
            sim.start()
            self.sims[gw.devices[0]] = sim

    def fault(self, ev: FaultEvent) -> bool:
        sim = self.sims.get(ev.target)
        if sim is None:
            return False
        if ev.fault == "gps_dropout":
            sim.gps_dropout(ev.duration_s)
        elif ev.fault == "overload":
            sim.overload(ev.duration_s)
        elif ev.fault in ("bad_checksum", "garbage"):
            sim.set_fault(ev.fault, 0.05)
            self.later(ev.duration_s, lambda: sim.set_fault(ev.fault, 0.0))
        elif ev.fault in ("unplug_gps", "unplug_indicator"):
            sim.unplug(ev.fault.removeprefix("unplug_"), duration_s=ev.duration_s or 60.0)
        else:
            return False
        return True

    def describe(self) -> str:
        return f"{len(self.gateways)} garbage truck(s) (weighing indicator + GPS)"

    def verify(self, query: Query, t0_ms: int, t1_ms: int, *, partial: bool) -> Check | None:
        if not self.gateways:
            return None
        return verify_waste(query, {g.devices[0]: g.truth for g in self.gateways}, t0_ms, t1_ms,
                            TRUCK_RESOLUTION_KG, partial=partial,
                            in_progress_from=t1_ms - IN_PROGRESS_MS if partial else None)


def verify_waste(query: Query, trucks: dict[str, Path], t0: int, t1: int, resolution_kg: float, *,
                 partial: bool = False, in_progress_from: int | None = None) -> Check:
    """Pickups and kg per district. A pickup made while the GPS had no fix may honestly be stored under the
    district ``unknown`` (the gateway does not guess a position it doesn't have): such pickups are matched to
    ``unknown`` if the gateway stored that many unknowns, and counted in the summary as ``unlocated``.

    Pickups after ``in_progress_from`` (a day stopped early) were in progress when the truck froze: each may be
    stored or not, and is counted in the summary as ``in_progress``."""
    c = Check("waste", partial=partial)
    got_n: dict[tuple[str, str], int] = defaultdict(int)
    got_kg: dict[str, float] = defaultdict(float)
    for s in query(f'SELECT "kg" FROM "waste_collection" WHERE {window(t0, t1)} GROUP BY "device", "district"'):
        dev, district = s["tags"]["device"], s["tags"]["district"]
        if dev not in trucks:
            continue
        for _, kg in s["values"]:
            got_n[(dev, district)] += 1
            got_kg[district] += kg
    want_n: dict[tuple[str, str], int] = defaultdict(int)
    want_kg: dict[str, float] = defaultdict(float)
    maybe: list[tuple[tuple[str, str], float]] = []  # in progress: (device, district), kg displayed
    unlocated = 0
    for dev, path in trucks.items():
        lines = read_truth(path)
        dropouts = [(t["ts"], t["ts"] + int(t.get("duration_s", 0) * 1000)) for t in lines
                    if t.get("event") == "fault" and t.get("fault") == "gps_dropout"]
        unknown_left = got_n.get((dev, "unknown"), 0)
        for t in lines:
            if t.get("event") != "pickup" or not t0 <= t["ts"] <= t1:
                continue
            district = t["district"]
            if unknown_left and any(a <= t["ts"] <= b for a, b in dropouts):
                district, unknown_left, unlocated = "unknown", unknown_left - 1, unlocated + 1
            if in_progress_from is not None and t["ts"] > in_progress_from:
                maybe.append(((dev, district), t["kg_displayed"]))
                continue
            want_n[(dev, district)] += 1
            want_kg[district] += t["kg_displayed"]
    # the in-progress pickups the gateway did confirm (by count per truck and district) count as due
    for key, kg in maybe:
        if got_n.get(key, 0) > want_n.get(key, 0):
            want_n[key] += 1
            want_kg[key[1]] += kg
    c.truth, c.stored = sum(want_n.values()), sum(got_n.values())
    for key in sorted(set(want_n) | set(got_n)):
        if want_n.get(key, 0) != got_n.get(key, 0):
            c.problems.append(f"pickups {key}: truth {want_n.get(key, 0)}, stored {got_n.get(key, 0)}")
    for d in sorted(set(want_kg) | set(got_kg)):
        if abs(want_kg.get(d, 0.0) - got_kg.get(d, 0.0)) > resolution_kg:
            c.problems.append(f"kg in {d}: displayed {want_kg.get(d, 0.0):.0f}, stored {got_kg.get(d, 0.0):.0f}")
    c.summary = {"kg_by_district": {d: round(v, 1) for d, v in sorted(got_kg.items())}, "unlocated": unlocated}
    if maybe:
        c.summary["in_progress"] = len(maybe)
    return c


FAMILY = TruckCity
