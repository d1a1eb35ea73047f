"""Forest stations in the simulated city: RS-485 buses of stations on the slopes north of Tsuyama, a landslide-grade
storm in the afternoon, and the check of every sample, value by value, against the stations' ground truth."""

from __future__ import annotations

import math
import zlib
from typing import Any

from pydantic import Field

from cityos.families import by_name
from cityos.simclock import ScaledClock
from firmware_sim.cityplugin import Check, CityFamily, FaultEvent, Query, Section, hhmm, read_truth, window

__all__ = ["FAMILY", "ForestCity", "ForestSection"]


class ForestSection(Section):
    stations: int = Field(default=4, ge=0, le=247)
    #: Stations share one RS-485 bus per gateway.
    per_gateway: int = Field(default=4, ge=1, le=247)
    #: Simulated seconds between samples (a field station: 600).
    sample_interval_s: float = Field(default=600.0, gt=0)


class ForestCity(CityFamily):
    family = by_name("forest")
    Section = ForestSection
    progress = ("forest", "battery_v")

    def plan(self) -> None:
        fs = self.section
        n_gw = math.ceil(fs.stations / fs.per_gateway) if fs.stations else 0
        for g in range(n_gw):
            units = range(1, min(fs.per_gateway, fs.stations - g * fs.per_gateway) + 1)
            gw = self.gateway(g + 1, [f"forest-{g + 1:02d}-{u:02d}" for u in units])
            gw.sources = [{
                "type": "forest_station", "name": "bus0", "port": gw.dir / "ttyFOREST0",
                "poll_interval_s": 0.25,
                "stations": [{"device_id": d, "unit": u, **_station_position(g, u)}
                             for u, d in zip(units, gw.devices, strict=True)],
            }]
            self.gateways.append(gw)

    def start(self) -> None:
        from firmware_sim.forest.scenario import Scenario
        from firmware_sim.forest.sim import ForestStationSim, StationSpec

        fs = self.section
        # The storm of the day: dry until 13:00, then the landslide-warning rain on the first gateway's 2nd slope.
        dry_h = max(0.0, (13 * 3600 - hhmm(self.city.sc.day.start)) / 3600)
        for i, gw in enumerate(self.gateways):
            specs = [StationSpec(d, u, sample_interval_ds=round(fs.sample_interval_s * 10))
                     for u, d in enumerate(gw.devices, start=1)]
            scenario = Scenario.heavy_rain(landslide_unit=2 if i == 0 else None, dry_hours=dry_h)
            self.sims[gw.gateway_id] = ForestStationSim(
                specs, link_path=gw.dir / "ttyFOREST0", ground_truth=gw.truth, scenario=scenario,
                seed=zlib.crc32(gw.gateway_id.encode()) % 1000, clock=self.city.clock,
            ).start()

    def freeze(self, clock: ScaledClock) -> None:
        # the stations stop sampling and keep their clocks (a station's RTC runs on, as in the field)
        for s in self.sims.values():
            s.freeze()

    def fault(self, ev: FaultEvent) -> bool:
        for gw in self.gateways:
            if ev.target == gw.gateway_id or ev.target in gw.devices:
                sim = self.sims[gw.gateway_id]
                if ev.fault in ("garbage", "crc", "malformed"):
                    sim.set_fault(ev.fault, 0.05)
                    self.later(ev.duration_s, lambda s=sim, f=ev.fault: s.set_fault(f, 0.0))
                elif ev.fault == "unplug":
                    sim.unplug()
                    self.later(ev.duration_s, sim.replug)
                else:
                    return False
                return True
        return False

    def describe(self) -> str:
        return (f"{sum(len(g.devices) for g in self.gateways)} forest stations (Modbus RTU) on "
                f"{len(self.gateways)} gateway(s)")

    def verify(self, query: Query, t0_ms: int, t1_ms: int, *, partial: bool) -> Check | None:
        """Point by point: (gateway, device, timestamp) and every value, derived ones included. Samples the
        stations took after ``t1_ms`` (the stations freeze when the day is stopped) are counted if stored."""
        if not self.gateways:
            return None
        return verify_forest(query, [(g.gateway_id, g.truth) for g in self.gateways], t0_ms, t1_ms + 3_600_000,
                             partial=partial)


def verify_forest(query: Query, gateways: list[tuple[str, Any]], t0: int, t1: int, *, partial: bool = False) -> Check:
    c = Check("forest", partial=partial)
    truth: dict[tuple[str, str, int], dict[str, Any]] = {}
    for gid, path in gateways:
        for t in read_truth(path):
            if "sample_no" in t:
                truth[(gid, t["device_id"], t["ts"])] = t["values"]
    stored: dict[tuple[str, str, int], dict[str, Any]] = {}
    ids = "|".join(g for g, _ in gateways) or "^$"
    for s in query(f'SELECT * FROM "forest" WHERE "gateway" =~ /^({ids})$/ AND {window(t0, t1)} '
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


def _station_position(gateway_no: int, unit: int) -> dict[str, float]:
    """Simulation only: stations spread over the forested slopes north of central Tsuyama (~35.13-35.20 N,
    133.96-134.06 E), one ridge per gateway; not surveyed positions."""
    return {"lat": round(35.13 + 0.02 * gateway_no + 0.006 * unit, 5),
            "lon": round(133.96 + 0.012 * gateway_no + 0.018 * unit, 5)}


FAMILY = ForestCity
