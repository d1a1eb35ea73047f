"""Households' smart meters in the simulated city: a Wi-SUN module per household, an apartment block's gateway
per ``per_gateway`` households, B-route faults (session expiry, rate limits, a re-issued password), and the check
of every :00/:30 fixed-time cumulative energy value against the meters' registers."""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import Field

from cityos.config import ConfigError
from cityos.families import by_name
from firmware_sim.cityplugin import Check, CityFamily, FaultEvent, Query, Section, read_truth, window

__all__ = ["FAMILY", "MeterCity", "MeterSection"]


class MeterSection(Section):
    households: int = Field(default=12, ge=0)
    #: Households (each with its own Wi-SUN module) read by one gateway: an apartment block's concentrator.
    per_gateway: int = Field(default=6, ge=1)
    #: Simulated seconds between instantaneous power readings.
    poll_interval_s: float = Field(default=300.0, gt=0)
    #: The districts the households live in, in turn (ids of the scenario's districts file); default: all of them.
    #: Energy per district is shown only where at least 10 households report (docs/privacy.md), so a city that
    #: wants to see it puts 10 or more in one district.
    districts: list[str] | None = Field(default=None, min_length=1)


def _secret(kind: str, seed: int, household: str, n: int) -> str:
    """A household's B-route ID / password as the grid operator's letter would give it (deterministic here)."""
    return hashlib.sha256(f"{kind}:{seed}:{household}".encode()).hexdigest().upper()[:n]


def write_secret_file(path: Path, secret: str) -> None:
    """``secret`` on one line in ``path``, readable and writable by its owner only (0600, also when the file was
    there before), as a technician installs a household's B-route ID and password on a gateway."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{secret}\n".encode())
    finally:
        os.close(fd)


class MeterCity(CityFamily):
    family = by_name("meter")
    Section = MeterSection
    progress = ("energy", "energy_kwh")

    def plan(self) -> None:
        ms = self.section
        districts = self.district_ids()
        if ms.districts:
            unknown = sorted(set(ms.districts) - set(districts))
            if unknown:
                raise ConfigError(f"meters.districts: {', '.join(unknown)} not in the scenario's districts "
                                  f"({', '.join(districts)})")
            districts = list(ms.districts)
        rate = self.city.sc.day.rate
        seed = self.city.sc.seed
        self.households: dict[str, dict[str, Any]] = {}
        n_gw = math.ceil(ms.households / ms.per_gateway) if ms.households else 0
        for g in range(n_gw):
            first = g * ms.per_gateway
            gw = self.gateway(g + 1, [f"hh-{i + 1:04d}" for i in range(first, min(first + ms.per_gateway,
                                                                                   ms.households))])
            for hh in gw.devices:
                i = int(hh[3:])
                h = {
                    "district": districts[(i - 1) % len(districts)],
                    "rbid": _secret("rbid", seed, hh, 32),
                    "password": _secret("pwd", seed, hh, 12),
                    "seed": seed * 10_000 + i,
                    "gateway": gw.gateway_id,
                    # where a technician installs the grid operator's letter: 0600 files next to the config
                    "rbid_file": gw.dir / f"broute-{hh}.id",
                    "password_file": gw.dir / f"broute-{hh}.password",
                }
                self.households[hh] = h
                gw.sources.append({
                    "type": "smart_meter", "name": hh, "port": gw.dir / f"tty-{hh}", "device_id": hh,
                    # the credentials are files (start() writes them), so the config, and the hash of it the
                    # agent reports, holds only their paths
                    "district": h["district"], "rbid_file": h["rbid_file"], "password_file": h["password_file"],
                    # the source's timers are real seconds: the scenario's simulated ones divided by the rate
                    "poll_interval_s": round(max(0.2, ms.poll_interval_s / rate), 3),
                    "recv_timeout_s": 2.0, "xmit_retries": 6, "xmit_timeout_s": 20.0, "xmit_interval_s": 0.0,
                    "reconnect_backoff_min_s": 0.5, "reconnect_backoff_max_s": 5.0,
                    "auth_backoff_s": round(max(2.0, 1800 / rate), 3),
                    "session_wait_s": 10.0, "rate_limit_wait_s": 30.0,
                })
            self.gateways.append(gw)

    def truth_path(self, hh: str) -> Path:
        gw = next(g for g in self.gateways if hh in g.devices)
        return gw.dir / f"truth-{hh}.jsonl"

    def start(self) -> None:
        from firmware_sim.meter.sim import MeterSpec, WiSunModuleSim

        for hh, h in self.households.items():
            gw = next(g for g in self.gateways if hh in g.devices)
            write_secret_file(h["rbid_file"], h["rbid"])
            write_secret_file(h["password_file"], h["password"])
            spec = MeterSpec(device_id=hh, seed=h["seed"], rbid=h["rbid"], password=h["password"])
            self.sims[hh] = WiSunModuleSim(
                spec, clock=self.city.clock, truth_path=self.truth_path(hh), link_path=gw.dir / f"tty-{hh}",
            )
            self.sims[hh].start()

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
            self.later(ev.duration_s, lambda: sim.set_meter_password(original), min_real_s=0.5)
        elif ev.fault == "garbled":
            sim.set_garble(0.05)
            self.later(ev.duration_s, lambda: sim.set_garble(0.0))
        else:
            return False
        return True

    def describe(self) -> str:
        return (f"{len(self.households)} households with smart meters (Wi-SUN module emulators, momonga) on "
                f"{len(self.gateways)} gateway(s)")

    def verify(self, query: Query, t0_ms: int, t1_ms: int, *, partial: bool) -> Check | None:
        if not self.gateways:
            return None
        hh = {h: (d["district"], self.truth_path(h)) for h, d in self.households.items()}
        # The value at the power-on instant itself (t0) is the meters' starting point, taken as the gateways
        # start: whether a gateway's first read still sees it is a race, and no half hour ends there.
        return verify_energy(query, hh, t0_ms, t1_ms, first_slot=t0_ms + 1, partial=partial)


def verify_energy(
    query: Query, households: dict[str, tuple[str, Path]], t0: int, t1: int, *, first_slot: int = 0,
    partial: bool = False,
) -> Check:
    """Every household's :00/:30 fixed-time cumulative energy, exactly (the meter's register, in its unit); from
    those, energy per household per 30 min and per district for the day. ``households``: id → (district, truth
    file). Slots before ``first_slot`` (ms) are not required."""
    c = Check("energy", partial=partial)
    truth: dict[tuple[str, int], float] = {}
    for hh, (_, path) in households.items():
        for t in read_truth(path):
            if t.get("type") == "fixed" and max(t0, first_slot) <= t["ts"] <= t1:
                truth[(hh, t["ts"])] = t["energy_kwh"]
    stored: dict[tuple[str, int], float] = {}
    for s in query(f'SELECT "energy_fixed_kwh" FROM "energy" WHERE {window(t0, t1)} AND '
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


FAMILY = MeterCity
