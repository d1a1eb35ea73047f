"""The simulated city: ``cityos sim run SCENARIO``.

A scenario file (``scenarios/tsuyama-day.toml``) describes a day of Tsuyama: districts (GeoJSON polygons with real
district names), the time acceleration, a fault schedule, and one section per device family (households with smart
meters, forest stations on the mountain slopes, garbage trucks on a route, the loop bus). This module turns it into
running parts, looping over the family registry (:data:`cityos.families.FAMILIES`) and each family's part of the
city (``firmware_sim/<family>/city.py``, a :class:`firmware_sim.cityplugin.CityFamily`):

* **devices**, each speaking its real protocol on a pseudo-terminal, all hosted in this process as threads (a
  Wi-SUN module per household meter, a Modbus RTU bus per forest gateway, an indicator and a GPS port per truck);
* **edge agents**, one OS process per gateway (``cityos gateway run``), configured exactly as a field gateway
  would be, plus a ``[clock]`` section so that they stamp and set device clocks in simulated time;
* a **fault schedule** that fires at simulated times of day (EVENT 29 on a meter, a GPS dropout, an agent crash…);
* the **ground truth**: each device family writes what really happened to ``truth/<gateway>.jsonl``.

Time: everyone computes the simulated time from one :class:`cityos.simclock.ScaledClock` (``sim_start`` = the
scenario's start on its day in JST, ``real_anchor`` = when the devices power on, ``rate`` from the scenario), so
separate processes agree without talking. The simulated day must lie in the past (the ingest rejects readings
from the future), so the default is *yesterday* in JST.

The runner does not start the cloud side: it publishes to whatever broker ``--stack-dir`` (a ``cityos stack``)
names. ``cityos demo`` adds the stack, the ingest and the comparison with the ground truth.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import math
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, create_model

from citylab.pipeline import Proc, gateway_config, outbox_depth, write_gateway_config
from citylab.stack import StackInfo
from cityos.config import ConfigError, format_validation_error
from cityos.families import FAMILIES
from cityos.simclock import ScaledClock
from firmware_sim.cityplugin import JST, CityFamily, FaultEvent, Gateway, Section, TimeOfDay, hhmm

__all__ = ["JST", "CityScenario", "CitySim", "load_scenario"]


# --- the scenario file --------------------------------------------------------------------------------------


class DaySection(Section):
    #: The simulated calendar day in JST: ``"yesterday"`` or ``YYYY-MM-DD`` (must be in the past).
    date: str = "yesterday"
    start: TimeOfDay = "00:00"
    end: TimeOfDay = "24:00"
    #: Simulated seconds per real second: 288 plays a day in 5 minutes.
    rate: float = Field(default=288.0, gt=0, le=5000)

    def day(self, today: dt.date | None = None) -> dt.date:
        today = today or dt.datetime.now(JST).date()
        if self.date == "yesterday":
            return today - dt.timedelta(days=1)
        try:
            return dt.date.fromisoformat(self.date)
        except ValueError:
            raise ConfigError(f"day.date: {self.date!r} is neither 'yesterday' nor YYYY-MM-DD") from None

    def window(self, today: dt.date | None = None) -> tuple[float, float]:
        """(start, end) of the simulated span in epoch seconds."""
        midnight = dt.datetime.combine(self.day(today), dt.time(), JST).timestamp()
        return midnight + hhmm(self.start), midnight + hhmm(self.end)


class _ScenarioBase(Section):
    name: str
    seed: int = 7
    districts: str = "tsuyama-districts.geojson"
    day: DaySection = DaySection()
    faults: list[FaultEvent] = Field(default_factory=list)
    #: The file it was read from: relative paths in it are relative to its folder.
    path: Path | None = None

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() or self.path is None else self.path.parent / p


#: Each family's part of the city (``firmware_sim/<family>/city.py``), in the registry's order.
CITY_FAMILIES: tuple[type[CityFamily], ...] = tuple(
    importlib.import_module(f.city_module).FAMILY for f in FAMILIES
)

#: The scenario: the day, the faults, and one section per family (its ``Section`` model, all defaults if absent).
CityScenario = create_model(
    "CityScenario",
    __base__=_ScenarioBase,
    **{cf.family.scenario_section: (cf.Section, cf.Section()) for cf in CITY_FAMILIES},  # type: ignore[call-overload]
)


def load_scenario(path: str | Path) -> Any:
    """The scenario file as a :data:`CityScenario`; :class:`ConfigError` names the file, the field and the problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read scenario: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        sc = CityScenario.model_validate({**raw, "path": path.resolve()})
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid scenario\n{format_validation_error(exc)}") from None
    if not sc.resolve(sc.districts).exists():
        raise ConfigError(f"{path}: districts: file {sc.resolve(sc.districts)} not found")
    return sc


# --- running it ---------------------------------------------------------------------------------------------


class CitySim:
    """Devices + agents for a scenario. ``start()``, then ``run(until_end)``; ``stop()`` always."""

    def __init__(self, scenario: Any, run_dir: Path, info: StackInfo, *, today: dt.date | None = None):
        self.sc = scenario
        self.run_dir = Path(run_dir)
        self.info = info
        self.sim_start, self.sim_end = scenario.day.window(today)
        if self.sim_end > time.time():
            raise ConfigError(
                f"scenario day {scenario.day.day(today)} {scenario.day.end} JST is not over yet: "
                "the ingest rejects readings from the future; choose an earlier day"
            )
        self.clock: ScaledClock | None = None
        self.families: list[CityFamily] = []
        self._fault_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.fault_log: list[dict[str, Any]] = []
        self.on_fault: Callable[[FaultEvent, bool], None] | None = None

    # --- setup ---

    def plan(self) -> None:
        self.families = [cf(self) for cf in CITY_FAMILIES]
        for f in self.families:
            f.plan()

    @property
    def gateways(self) -> list[Gateway]:
        return [g for f in self.families for g in f.gateways]

    def sim_now(self) -> float:
        assert self.clock is not None
        return self.clock.now()

    def write_config(self, gw: Gateway) -> None:
        assert self.clock is not None
        cfg = gateway_config(
            self.info, gw.gateway_id, gw.outbox, gw.sources,
            # "Late" is 120 s of data time in the field. On a clock running `rate` times faster, ordinary transport
            # (a 0.25 s poll, a 0.1 s linger) already takes minutes of data time: without this every live reading
            # would be marked backfill and the live-only alert rules could never fire. 3 real seconds.
            outbox={"backfill_after_s": max(120.0, 3.0 * self.clock.rate)},
            health={"interval_s": 5},
            clock={"sim_start": self.clock.sim_start, "real_anchor": self.clock.real_anchor,
                   "rate": self.clock.rate, "until": self.clock.until},
        )
        write_gateway_config(gw.config, cfg, "Written by cityos sim run: a simulated gateway.")

    def start(self) -> None:
        """Power on every device at the scenario's start time, then start one agent per gateway."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Plan first (the bus's day takes a fraction of a second to plan): the clock's anchor is the moment the
        # devices power on, so no simulator starts behind it and bursts to catch up before its gateway listens.
        self.plan()
        self.clock = ScaledClock(
            sim_start=self.sim_start, real_anchor=time.time(), rate=self.sc.day.rate, until=self.sim_end + 60
        )
        (self.run_dir / "clock.json").write_text(self.clock.model_dump_json())
        for f in self.families:
            for gw in f.gateways:
                gw.dir.mkdir(parents=True, exist_ok=True)
            f.start()
        for gw in self.gateways:
            self.write_config(gw)
            gw.proc = Proc(
                f"agent-{gw.gateway_id}",
                [sys.executable, "-m", "cityos_cli", "gateway", "run", "--config", str(gw.config)],
                self.run_dir / "logs" / f"agent-{gw.gateway_id}.log",
            )
            gw.proc.start()
        self._fault_thread = threading.Thread(target=self._faults, name="city-faults", daemon=True)
        self._fault_thread.start()

    def _faults(self) -> None:
        midnight = self.sim_start - hhmm(self.sc.day.start)
        pending = sorted(self.sc.faults, key=lambda e: hhmm(e.at))
        for ev in pending:
            at = midnight + hhmm(ev.at)
            if at >= self.sim_end:
                self.fault_log.append({"at": ev.at, "target": ev.target, "fault": ev.fault, "applied": False,
                                       "why": "after the end of the simulated span"})
                continue
            assert self.clock is not None
            while not self._stop.is_set() and self.clock.now() < at:
                self._stop.wait(min(0.2, max(0.01, self.clock.real_delay(at - self.clock.now()))))
            if self._stop.is_set():
                return
            ok = self.apply_fault(ev)
            self.fault_log.append({"at": ev.at, "target": ev.target, "fault": ev.fault, "applied": ok})
            if self.on_fault:
                self.on_fault(ev, ok)

    def apply_fault(self, ev: FaultEvent) -> bool:
        if ev.fault in ("agent_kill", "agent_restart"):
            gw = next((g for g in self.gateways if g.gateway_id == ev.target), None)
            if gw is None or gw.proc is None:
                return False
            gw.proc.kill()
            delay = self.clock.real_delay(ev.duration_s) if self.clock else 0.0
            threading.Timer(max(0.5, delay), gw.proc.start).start()
            return True
        return any(f.fault(ev) for f in self.families)

    # --- running ---

    def wait_until(self, sim_s: float, stop: threading.Event | None = None, tick: Callable[[], None] | None = None):
        assert self.clock is not None
        stop = stop or self._stop
        while not stop.is_set() and self.clock.now() < sim_s:
            if tick:
                tick()
            stop.wait(min(1.0, max(0.05, self.clock.real_delay(sim_s - self.clock.now()))))

    def freeze(self, at: float | None = None) -> None:
        """The devices stop producing new data at simulated ``at`` (default: now), as they do at the end of the
        day: their clock stands still there and the ground truth becomes final; they keep answering."""
        assert self.clock is not None
        until = min(self.clock.now() if at is None else at, self.clock.until or math.inf)
        self.clock = self.clock.model_copy(update={"until": until})
        for f in self.families:
            f.freeze(self.clock)

    def backlog(self, older_than_s: float = 0.0) -> int:
        return outbox_depth((gw.outbox for gw in self.gateways), older_than_s)

    def stop(self) -> None:
        self._stop.set()
        for gw in self.gateways:
            if gw.proc is not None:
                gw.proc.stop()
        for f in self.families:
            with contextlib.suppress(Exception):  # stopping must reach every family
                f.stop()
        (self.run_dir / "faults.json").write_text(json.dumps(self.fault_log, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cityos sim run", description="Run the simulated city: devices and agents")
    ap.add_argument("scenario", type=Path, nargs="?", default=Path("scenarios/tsuyama-day.toml"))
    ap.add_argument("--run-dir", type=Path, default=Path("run/city"))
    ap.add_argument("--stack-dir", type=Path, default=Path("run/stack"), help="a running `cityos stack`")
    args = ap.parse_args(argv)
    from citylab.stack import load_info

    sc = load_scenario(args.scenario)
    info = load_info(args.stack_dir)
    city = CitySim(sc, args.run_dir, info)
    city.start()
    print(
        f"{sc.name}: {len(city.gateways)} gateways, simulated "
        f"{dt.datetime.fromtimestamp(city.sim_start, JST):%Y-%m-%d %H:%M} → "
        f"{dt.datetime.fromtimestamp(city.sim_end, JST):%H:%M} JST at {sc.day.rate:g}×; Ctrl-C stops"
    )
    try:
        city.wait_until(city.sim_end)
        city.freeze()
        deadline = time.monotonic() + 120
        while city.backlog() and time.monotonic() < deadline:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        city.stop()
    print(f"ground truth in {args.run_dir}/*/truth.jsonl")
    return 0
