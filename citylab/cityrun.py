"""The simulated city through the real stack: devices → agents → Mosquitto → ingest → InfluxDB, then the proof.

Used by ``cityos demo`` and by the city end-to-end test. The ingest runs as its own process, the agents as theirs
(:class:`citylab.city.CitySim`), so a fault schedule that kills an agent kills a real process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citylab.city import CitySim
from citylab.pipeline import Proc, write_ingest_config
from citylab.stack import StackInfo, influx_query
from cityos.families import FAMILIES
from firmware_sim.cityplugin import JST, Check
from ingest.deadletter import DeadLetterStore
from ingest.health import read_health_file
from ingest.service import HEALTH_FILE


@dataclass
class CityReport:
    checks: list[Check] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    dead_lettered: int = 0

    @property
    def exact(self) -> bool:
        return all(c.ok for c in self.checks) and not self.dead and not self.dead_lettered


class CityRun:
    def __init__(self, scenario: Any, run_dir: Path, info: StackInfo, *, db: str | None = None,
                 say: Callable[[str], None] = print) -> None:
        self.sc = scenario
        self.run_dir = Path(run_dir)
        self.info = info
        self.db = db or info.influx_db
        self.say = say
        self.city = CitySim(scenario, self.run_dir, info)
        self.ingest: Proc | None = None
        self.ingest_dir = self.run_dir / "ingest"
        self.client_id = f"cityos-ingest-city-{uuid.uuid4().hex[:6]}"

    # --- lifecycle ---

    def clear_previous(self) -> None:
        """Points of an earlier run of the same day would count as extra: drop this city's series first."""
        gw = "^(" + "|".join(f.gateway_prefix for f in FAMILIES) + ")[0-9]+$"
        influx_query(self.info, self.db, f'DROP SERIES FROM /.*/ WHERE "gateway" =~ /{gw}/')

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.clear_previous()
        cfg = self.run_dir / "ingest.toml"
        write_ingest_config(cfg, self.info, db=self.db, data_dir=self.ingest_dir, client_id=self.client_id)
        self.ingest = Proc("ingest", [sys.executable, "-m", "cityos_cli", "ingest", "--config", str(cfg)],
                           self.run_dir / "logs" / "ingest.log")
        self.ingest.start()
        self._wait(lambda: self._ingest_health().get("connected") is True, 30, "the ingest to connect")
        self.city.start()

    def stop(self) -> None:
        self.city.stop()
        if self.ingest is not None:
            self.ingest.stop()
            from ingest.config import IngestConfig
            from ingest.mqtt_in import discard_session

            # the broker may be gone already; the session then expires on its own
            with contextlib.suppress(Exception):
                discard_session(IngestConfig.from_toml(self.run_dir / "ingest.toml").mqtt)

    # --- observing ---

    def _ingest_health(self) -> dict[str, Any]:
        return read_health_file(self.ingest_dir / HEALTH_FILE) or {}

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def counts(self) -> dict[str, int]:
        """Points stored so far, per family (its progress measurement and field)."""
        t0, t1 = int(self.city.sim_start * 1000) - 1, int(self.city.sim_end * 1000) + 3_600_000
        out = {}
        for f in self.city.families:
            m, field_ = f.progress
            try:
                s = influx_query(self.info, self.db,
                                 f'SELECT count("{field_}") FROM "{m}" WHERE time >= {t0}ms AND time <= {t1}ms')
                out[f.name] = int(s[0]["values"][0][1]) if s else 0
            except Exception:
                out[f.name] = -1
        return out

    def backlog(self) -> int:
        return self.city.backlog()

    def progress_line(self) -> str:
        now = dt.datetime.fromtimestamp(self.city.sim_now(), JST)
        c = self.counts()
        dead = int(self._ingest_health().get("dead_lettered_total", 0))
        fams = "  ".join(f"{f.progress[0].replace('_', ' ')} {c[f.name]:5d}" for f in self.city.families)
        return f"{now:%H:%M} JST  {fams}  backlog {self.backlog():6d}  dead-letter {dead}"

    # --- the day ---

    def play(self, stop: threading.Event, *, every_s: float = 5.0, until: float | None = None) -> None:
        """Run the simulated day (to ``until``, simulated epoch s, default the scenario's end), printing progress."""
        end = until or self.city.sim_end
        while not stop.is_set() and self.city.sim_now() < end:
            self.say(self.progress_line())
            stop.wait(min(every_s, max(0.05, self.city.clock.real_delay(end - self.city.sim_now()))))

    def run_day(self, stop: threading.Event, duration: float | None = None, *,
                on_over: Callable[[], None] | None = None) -> CityReport:
        """Play the day (or its first ``duration`` real seconds), let everything be delivered, and check every
        family over exactly the part that was played."""
        until = None if duration is None else min(self.city.sim_end, self.city.sim_now() + duration * self.sc.day.rate)
        self.play(stop, until=until)
        played_to = min(self.city.sim_now(), until or self.city.sim_end)
        if on_over:
            on_over()
        self.settle(stop=stop, at=played_to)
        return self.verify(until=played_to)

    def settle(self, timeout: float = 180, stop: threading.Event | None = None, *, at: float | None = None) -> None:
        """Devices stop producing (at simulated ``at``, default now); wait until every gateway's outbox is empty
        and the ingest has written it all."""
        self.city.freeze(at)
        time.sleep(3.0)
        # Health and status readings keep coming, so "nothing moves" never happens, and an outbox is never empty
        # for long (a health reading lingers 0.1 s before it goes): settled is no outbox holding a reading for
        # more than 2 s and the ingest holding no message for more than 2 s, seen continuously for a few seconds.
        quiet_since: float | None = None
        end = time.monotonic() + timeout
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            h = self._ingest_health()
            idle = h.get("oldest_unacked_s", 0.0) < 2.0 and h.get("stalled") is not True
            if idle and self.city.backlog(older_than_s=2.0) == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 3:
                    return
            else:
                quiet_since = None
            time.sleep(0.25)

    def verify(self, until: float | None = None) -> CityReport:
        """Every family's check over the part of the day played: to simulated ``until`` (default: the end)."""
        t0 = int(self.city.sim_start * 1000)
        t1 = int(min(until or self.city.sim_end, self.city.sim_end) * 1000)
        partial = t1 < int(self.city.sim_end * 1000)
        rep = CityReport(faults=list(self.city.fault_log))

        def query(q: str) -> list[dict[str, Any]]:
            return influx_query(self.info, self.db, q)

        for f in self.city.families:
            check = f.verify(query, t0, t1, partial=partial)
            if check is not None:
                rep.checks.append(check)
        rep.dead = [g.gateway_id for g in self.city.gateways if g.proc is not None and not g.proc.alive]
        if self.ingest is not None and not self.ingest.alive:
            rep.dead.append("ingest")
        rep.dead_lettered = DeadLetterStore.count_in(self.ingest_dir)
        return rep

