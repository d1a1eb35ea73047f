"""The device families of the simulated city (see :mod:`citylab.city`): forest, meters, trucks, buses.

Each family creates its gateways (ids, devices, the ``[[sources]]`` sections an installer would write), powers its
simulators on in this process and applies scheduled faults. Times in the scenario are simulated; where a
simulator or a source wants real seconds (timeouts, backoffs, fault durations on the meter emulator), they are
divided by the rate here, so the same scenario plays correctly at any acceleration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import threading
import zlib
from typing import TYPE_CHECKING, Any

from citylab.city import JST, Family, FaultEvent, Gateway, _hhmm

if TYPE_CHECKING:
    from citylab.city import CitySim


def _district_ids(city: CitySim) -> list[str]:
    data = json.loads(city.sc.resolve(city.sc.districts).read_text(encoding="utf-8"))
    return [f["properties"]["id"] for f in data["features"]]


def _secret(kind: str, seed: int, household: str, n: int) -> str:
    """A household's B-route ID / password as the grid operator's letter would give it (deterministic here)."""
    return hashlib.sha256(f"{kind}:{seed}:{household}".encode()).hexdigest().upper()[:n]


class ForestFamily(Family):
    name = "forest"

    def plan(self) -> None:
        fs = self.city.sc.forest
        n_gw = math.ceil(fs.stations / fs.per_gateway) if fs.stations else 0
        for g in range(n_gw):
            gid = f"gw-forest-{g + 1:02d}"
            units = range(1, min(fs.per_gateway, fs.stations - g * fs.per_gateway) + 1)
            devices = [f"forest-{g + 1:02d}-{u:02d}" for u in units]
            gw = Gateway(gid, self.name, self.city.run_dir / gid, devices)
            gw.sources = [{
                "type": "forest_station", "name": "bus0", "port": gw.dir / "ttyFOREST0",
                "poll_interval_s": 0.25,
                "stations": [{"device_id": d, "unit": u, **_station_position(g, u)}
                             for u, d in zip(units, devices, strict=True)],
            }]
            self.gateways.append(gw)
        self.sims: dict[str, Any] = {}

    def start(self) -> None:
        from firmware_sim.forest_station import ForestStationSim, StationSpec
        from firmware_sim.scenario import Scenario

        fs = self.city.sc.forest
        # The storm of the day: dry until 13:00, then the landslide-warning rain on the first gateway's 2nd slope.
        dry_h = max(0.0, (13 * 3600 - _hhmm(self.city.sc.day.start)) / 3600)
        for i, gw in enumerate(self.gateways):
            specs = [StationSpec(d, u, sample_interval_ds=round(fs.sample_interval_s * 10))
                     for u, d in enumerate(gw.devices, start=1)]
            scenario = Scenario.heavy_rain(landslide_unit=2 if i == 0 else None, dry_hours=dry_h)
            self.sims[gw.gateway_id] = ForestStationSim(
                specs, link_path=gw.dir / "ttyFOREST0", ground_truth=gw.truth, scenario=scenario,
                seed=zlib.crc32(gw.gateway_id.encode()) % 1000, clock=self.city.clock,
            ).start()

    def freeze(self) -> None:
        for s in self.sims.values():
            s.freeze()

    def stop(self) -> None:
        for s in self.sims.values():
            s.stop()

    def fault(self, ev: FaultEvent) -> bool:
        for gw in self.gateways:
            if ev.target == gw.gateway_id or ev.target in gw.devices:
                sim = self.sims[gw.gateway_id]
                if ev.fault in ("garbage", "crc", "malformed"):
                    sim.set_fault(ev.fault, 0.05)
                    self._later(ev.duration_s, lambda s=sim, f=ev.fault: s.set_fault(f, 0.0))
                elif ev.fault == "unplug":
                    sim.unplug()
                    self._later(ev.duration_s, sim.replug)
                else:
                    return False
                return True
        return False

    def _later(self, sim_s: float, fn: Any) -> None:
        t = threading.Timer(max(0.1, sim_s / self.city.sc.day.rate), fn)
        t.daemon = True
        t.start()


class MeterFamily(Family):
    name = "meter"

    def plan(self) -> None:
        ms = self.city.sc.meters
        districts = _district_ids(self.city)
        rate = self.city.sc.day.rate
        self.households: dict[str, dict[str, Any]] = {}
        n_gw = math.ceil(ms.households / ms.per_gateway) if ms.households else 0
        for g in range(n_gw):
            gid = f"gw-meter-{g + 1:02d}"
            first = g * ms.per_gateway
            hhs = [f"hh-{i + 1:04d}" for i in range(first, min(first + ms.per_gateway, ms.households))]
            gw = Gateway(gid, self.name, self.city.run_dir / gid, hhs)
            for hh in hhs:
                i = int(hh[3:])
                h = {
                    "district": districts[(i - 1) % len(districts)],
                    "rbid": _secret("rbid", self.city.sc.seed, hh, 32),
                    "password": _secret("pwd", self.city.sc.seed, hh, 12),
                    "seed": self.city.sc.seed * 10_000 + i,
                    "gateway": gid,
                }
                self.households[hh] = h
                gw.sources.append({
                    "type": "smart_meter", "name": hh, "port": gw.dir / f"tty-{hh}", "device_id": hh,
                    "district": h["district"], "rbid": h["rbid"], "password": h["password"],
                    # the source's timers are real seconds: the scenario's simulated ones divided by the rate
                    "poll_interval_s": round(max(0.2, ms.poll_interval_s / rate), 3),
                    "recv_timeout_s": 2.0, "xmit_retries": 6, "xmit_timeout_s": 20.0, "xmit_interval_s": 0.0,
                    "reconnect_backoff_min_s": 0.5, "reconnect_backoff_max_s": 5.0,
                    "auth_backoff_s": round(max(2.0, 1800 / rate), 3),
                    "session_wait_s": 10.0, "rate_limit_wait_s": 30.0,
                })
            self.gateways.append(gw)
        self.sims: dict[str, Any] = {}

    def truth_path(self, hh: str) -> Any:
        gw = next(g for g in self.gateways if hh in g.devices)
        return gw.dir / f"truth-{hh}.jsonl"

    def start(self) -> None:
        from firmware_sim.wisun_module import MeterSpec, WiSunModuleSim

        for hh, h in self.households.items():
            gw = next(g for g in self.gateways if hh in g.devices)
            spec = MeterSpec(device_id=hh, seed=h["seed"], rbid=h["rbid"], password=h["password"])
            self.sims[hh] = WiSunModuleSim(
                spec, clock=self.city.clock, truth_path=self.truth_path(hh), link_path=gw.dir / f"tty-{hh}",
            )
            self.sims[hh].start()

    def stop(self) -> None:
        for s in self.sims.values():
            s.stop()

    def fault(self, ev: FaultEvent) -> bool:
        sim = self.sims.get(ev.target)
        if sim is None:
            return False
        rate = self.city.sc.day.rate
        if ev.fault == "session_expired":
            sim.expire_session()
        elif ev.fault == "rate_limit":
            sim.rate_limit(max(1.0, ev.duration_s / rate))
        elif ev.fault == "join_failure":
            # the session expires and re-authentication fails, then the gateway's own re-join fails once more
            sim.fail_joins(2)
            sim.expire_session()
        elif ev.fault == "wrong_password":
            # the grid operator re-issued the password; the technician updates the meter side after duration_s
            original = self.households[ev.target]["password"]
            sim.set_meter_password("X" + original[1:] if original[0] != "X" else "Y" + original[1:])
            t = threading.Timer(max(0.5, ev.duration_s / rate), lambda: sim.set_meter_password(original))
            t.daemon = True
            t.start()
        elif ev.fault == "garbled":
            sim.set_garble(0.05)
            t = threading.Timer(max(0.1, ev.duration_s / rate), lambda: sim.set_garble(0.0))
            t.daemon = True
            t.start()
        else:
            return False
        return True


class TruckFamily(Family):
    name = "truck"

    def plan(self) -> None:
        ts = self.city.sc.trucks
        self.sims: dict[str, Any] = {}
        for t in range(ts.count):
            gid = f"gw-truck-{t + 1:02d}"
            dev = f"truck-{t + 1:02d}"
            gw = Gateway(gid, self.name, self.city.run_dir / gid, [dev])
            gw.sources = [{
                "type": "garbage_truck", "name": "truck", "device_id": dev,
                "indicator_port": gw.dir / "ttyWEIGHT0", "gps_port": gw.dir / "ttyGPS0",
                "districts": self.city.sc.resolve(self.city.sc.districts),
                "disposal": self._disposal(),
                # the indicator's settle is counted in lines: at 288× a 15 s hold is 50 ms of real time
                "stable_window_s": 0.0,
            }]
            self.gateways.append(gw)

    def _route(self) -> Any:
        from firmware_sim.garbage_truck import Route, default_route

        r = self.city.sc.trucks.route
        return Route.load(self.city.sc.resolve(r)) if r else default_route()

    def _disposal(self) -> dict[str, float]:
        d = self._route().disposal
        return {"lat": d.lat, "lon": d.lon, "radius_m": d.radius_m}

    def start(self) -> None:
        from firmware_sim.garbage_truck import GarbageTruckSim, TruckSimSpec

        assert self.city.clock is not None
        depart = _hhmm(self.city.sc.trucks.depart) - _hhmm(self.city.sc.day.start)
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

    def stop(self) -> None:
        for s in self.sims.values():
            s.stop()

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
            t = threading.Timer(max(0.1, ev.duration_s / self.city.sc.day.rate), lambda: sim.set_fault(ev.fault, 0.0))
            t.daemon = True
            t.start()
        elif ev.fault in ("unplug_gps", "unplug_indicator"):
            sim.unplug(ev.fault.removeprefix("unplug_"), duration_s=ev.duration_s or 60.0)
        else:
            return False
        return True


class BusFamily(Family):
    """The loop bus: its simulator plays the city's day (GPS on a pty, BLE adverts on a socket) and writes its
    ground truth up front; a ``gps_dropout`` fault is part of the bus's plan, a ``ble_outage`` unplugs the
    adapter at its time."""

    name = "bus"

    def plan(self) -> None:
        bs = self.city.sc.buses
        self.sim: Any = None
        self.day: Any = None
        if not bs.count:
            return
        from firmware_sim.bus import BusDay, BusDaySpec  # numpy: only for a city with a bus

        gw = Gateway("gw-bus-01", self.name, self.city.run_dir / "gw-bus-01", ["bus-01"])
        midnight = self.city.sim_start - _hhmm(self.city.sc.day.start)
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
        from firmware_sim.bus import BusSimLive

        if self.day is None:
            return
        assert self.city.clock is not None
        gw = self.gateways[0]
        self.day.write_truth(gw.truth)
        self.sim = BusSimLive(self.day, clock=self.city.clock, gps_link=gw.dir / "ttyGPS0",
                              ble_socket=gw.dir / "ble.sock")
        self.sim.start()

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()

    def fault(self, ev: FaultEvent) -> bool:
        if ev.target != "bus-01" or self.sim is None:
            return False
        if ev.fault == "gps_dropout":
            return True  # planned into the bus's day (see plan)
        if ev.fault == "ble_outage":
            self.sim.ble_outage(ev.duration_s)
            return True
        return False


def families_for(city: CitySim) -> list[Family]:
    return [ForestFamily(city), MeterFamily(city), TruckFamily(city), BusFamily(city)]


def _station_position(gateway_no: int, unit: int) -> dict[str, float]:
    """Simulation only: stations spread over the forested slopes north of central Tsuyama (~35.13-35.20 N,
    133.96-134.06 E), one ridge per gateway; not surveyed positions."""
    return {"lat": round(35.13 + 0.02 * gateway_no + 0.006 * unit, 5),
            "lon": round(133.96 + 0.012 * gateway_no + 0.018 * unit, 5)}
