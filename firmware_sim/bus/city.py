"""The loop bus in the simulated city: its simulator plays the city's day (GPS on a pty, Bluetooth adverts on a
socket) and writes its ground truth up front; a ``gps_dropout`` fault is part of the bus's plan, a ``ble_outage``
unplugs the adapter at its time. Its check is of delivery, with the accuracy against the truth in its summary."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import Field

from cityos.families import by_name
from firmware_sim.cityplugin import (
    JST,
    Check,
    CityFamily,
    FaultEvent,
    Query,
    Section,
    hhmm,
    read_truth,
    window,
)

__all__ = ["FAMILY", "BusCity", "BusSection"]

#: Simulated ms a stop visit needs after the bus reaches the next stop before the gateway can report it (the
#: segment after it is counted first; GPS and stop detection settle).
REPORT_LAG_MS = 120_000


class BusSection(Section):
    #: Buses on the loop (the committed GTFS-JP feed runs one block a day: 0 or 1).
    count: int = Field(default=0, ge=0, le=1)
    #: The bus day's simulator spec (relative to the scenario); its date and seed follow the city's.
    spec: str = "bus-day.toml"
    #: The gateway's calibration (devices per passenger, their spread): `benchmarks/bus_accuracy.py` prints it.
    devices_per_passenger: float = Field(default=0.88, gt=0)
    devices_per_passenger_sd: float = Field(default=0.39, ge=0)
    capacity: int = Field(default=36, gt=0)


class BusCity(CityFamily):
    family = by_name("bus")
    Section = BusSection
    progress = ("bus_stop", "dwell_s")

    def plan(self) -> None:
        bs = self.section
        self.day: Any = None
        if not bs.count:
            return
        from firmware_sim.bus.sim import BusDay, BusDaySpec  # numpy: only for a city with a bus

        gw = self.gateway(1, ["bus-01"])
        midnight = self.city.sim_start - hhmm(self.city.sc.day.start)
        dropouts = [(ev.at, ev.duration_s) for ev in self.city.sc.faults
                    if ev.target == "bus-01" and ev.fault == "gps_dropout"]
        spec = BusDaySpec.load(self.city.sc.resolve(bs.spec)).model_copy(update={
            "date": dt.datetime.fromtimestamp(midnight + 43_200, JST).date(),
            "seed": self.city.sc.seed, "gps_dropouts": dropouts,
        })
        self.day = BusDay(spec)
        gw.sources = [{
            "type": "bus", "name": "bus", "vehicle_id": "bus-01", "gps_port": gw.dir / "ttyGPS0",
            "feed": spec.feed, "position_interval_s": 60.0,
            "ble": {"backend": "sim", "sim_socket": gw.dir / "ble.sock"},
            "ridership": {"city_uuid": str(spec.city_uuid), "capacity": bs.capacity,
                          "devices_per_passenger": bs.devices_per_passenger,
                          "devices_per_passenger_sd": bs.devices_per_passenger_sd},
        }]
        self.gateways.append(gw)

    def start(self) -> None:
        from firmware_sim.bus.sim import BusSimLive

        if self.day is None:
            return
        assert self.city.clock is not None
        gw = self.gateways[0]
        self.day.write_truth(gw.truth)
        sim = self.sims["bus-01"] = BusSimLive(self.day, clock=self.city.clock, gps_link=gw.dir / "ttyGPS0",
                                               ble_socket=gw.dir / "ble.sock")
        sim.start()

    def fault(self, ev: FaultEvent) -> bool:
        sim = self.sims.get(ev.target)
        if sim is None:
            return False
        if ev.fault == "gps_dropout":
            return True  # planned into the bus's day (see plan)
        if ev.fault == "ble_outage":
            sim.ble_outage(ev.duration_s)
            return True
        return False

    def describe(self) -> str:
        return f"{len(self.gateways)} loop bus(es) (Bluetooth ridership + GPS)"

    def verify(self, query: Query, t0_ms: int, t1_ms: int, *, partial: bool) -> Check | None:
        if not self.gateways:
            return None
        # every scheduled fault that can hide visits, except the adapter outage (the bus still sees its stops)
        hits = sum(1 for f in self.city.fault_log
                   if f.get("applied") and f["target"] in ("bus-01", "gw-bus-01") and f["fault"] != "ble_outage")
        return verify_bus(query, {g.devices[0]: g.truth for g in self.gateways}, t0_ms, t1_ms, faults=hits,
                          partial=partial)


def due_visits(truth: list[dict[str, Any]], t0: int, t1: int) -> list[dict[str, Any]]:
    """The stop visits the gateway can have reported by ``t1``: a visit is reported once the bus has counted the
    segment after it, so the bus must have reached the next stop (and a little more) by then."""
    visits = sorted((t for t in truth if t.get("event") == "stop_visit"), key=lambda v: v["arrival_ms"])
    out = []
    for v, nxt in zip(visits, [*visits[1:], None], strict=True):
        if not t0 <= v["arrival_ms"] <= t1:
            continue
        if nxt is None or nxt["arrival_ms"] + REPORT_LAG_MS <= t1:
            out.append(v)
    return out


def verify_bus(query: Query, buses: dict[str, Path], t0: int, t1: int, faults: int = 0, *,
               partial: bool = False) -> Check:
    """Bus ridership is an estimate, so this check is of delivery, not of values: every stop visit the gateway
    reported is stored once (no visit twice at two times, none that the bus did not make), and the visits the
    gateway could see by ``t1`` are there (:func:`due_visits`). Visits hidden by one of the ``faults`` scheduled
    on the bus (a GPS dropout, the agent down) may be missing: each is allowed two. The accuracy against the truth
    goes in the summary (:func:`firmware_sim.bus.score.score`)."""
    from firmware_sim.bus.score import score

    c = Check("bus", partial=partial)
    fields = {
        "bus_stop": '"trip_id", "stop_sequence", "boardings", "alightings", "occupancy"',
        "bus_segment": '"trip_id", "from_sequence", "occupancy", "occupancy_lo", "occupancy_hi"',
        "bus_od": '"board_trip_id", "board_sequence", "alight_trip_id", "alight_sequence"',
    }
    for dev, path in buses.items():
        truth = [t for t in read_truth(path) if t.get("event") in ("stop_visit", "segment", "app_rider")]
        got: dict[str, list[dict[str, Any]]] = {}
        for m, cols in fields.items():
            rows = []
            for s in query(f'SELECT {cols} FROM "{m}" WHERE "device" = \'{dev}\' AND {window(t0, t1)}'):
                names = s["columns"]
                rows += [dict(zip(names, v, strict=True)) for v in s["values"]]
            got[m] = rows
        visits = due_visits(truth, t0, t1)
        c.truth += len(visits)
        c.stored += len(got["bus_stop"])
        sc = score(truth, got["bus_stop"], got["bus_segment"], got["bus_od"])
        if partial:  # the accuracy of what was played: the truth up to t1 (doubled and extra: of the whole day)
            played = [t for t in truth if t.get("arrival_ms", t.get("alight_ms", t1)) <= t1]
            sc |= {k: v for k, v in score(played, got["bus_stop"], got["bus_segment"], got["bus_od"]).items()
                   if k not in ("visits_doubled", "visits_extra")}
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


FAMILY = BusCity
