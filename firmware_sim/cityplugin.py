"""What a device family brings to the simulated city: the interface ``firmware_sim/<family>/city.py`` implements.

The simulated city (``citylab/city.py``) loops over the kernel's family registry (:data:`cityos.families.FAMILIES`)
and, for each family, over the :class:`CityFamily` of its ``city`` module: its scenario section, how it plans its
gateways (the ``[[sources]]`` sections an installer would write), how it powers its simulators on and applies
scheduled faults, its line in the demo, and how it checks InfluxDB against its simulators' ground truth. The city
gives each family a :class:`City`: only what a family reads of it, so nothing here reaches up into the driver.

Times in the scenario are simulated; where a simulator or a source wants real seconds (timeouts, backoffs, fault
durations on an emulator), they are divided by the rate here, so the same scenario plays at any acceleration.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cityos.families import Family
from cityos.simclock import ScaledClock

__all__ = [
    "JST", "Check", "City", "CityFamily", "FaultEvent", "Gateway", "Query", "Section", "TimeOfDay", "hhmm", "read_truth",
]

JST = dt.timezone(dt.timedelta(hours=9), "JST")

#: InfluxQL in, every statement's series out (``{"name", "columns", "values", "tags"?}``, ``epoch=ms``).
Query = Callable[[str], list[dict[str, Any]]]


def hhmm(v: str) -> int:
    """``"07:30"`` → seconds after midnight; ``"24:00"`` is the end of the day."""
    try:
        h, m = (int(x) for x in v.split(":"))
    except ValueError:
        raise ValueError(f"{v!r} is not HH:MM") from None
    if not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m):
        raise ValueError(f"{v!r} is not a time of day")
    return h * 3600 + m * 60


def _time_of_day(v: str) -> str:
    hhmm(v)
    return v


#: ``"HH:MM"`` in a scenario: a simulated time of day (``"24:00"`` is the end of the day).
TimeOfDay = Annotated[str, AfterValidator(_time_of_day)]


class Section(BaseModel):
    """Base of a family's scenario section (unknown keys are refused, naming the field)."""

    model_config = ConfigDict(extra="forbid")


class FaultEvent(Section):
    #: Simulated time of day.
    at: TimeOfDay
    #: A device id (``hh-0003``, ``truck-01``, ``forest-01-02``) or a gateway id (``gw-meter-01``).
    target: str
    fault: str
    #: Simulated seconds the fault lasts (where it has a duration).
    duration_s: float = Field(default=0.0, ge=0)


class City(Protocol):
    """What a family reads of the running city (``citylab.city.CitySim`` is one)."""

    #: The scenario (``citylab.city.CityScenario``): ``seed``, ``districts``, ``day`` (``rate``, ``start``),
    #: ``faults``, ``resolve(path)``, and every family's section as an attribute.
    sc: Any
    run_dir: Path
    clock: ScaledClock | None
    sim_start: float
    sim_end: float
    #: Faults applied so far (``{"at", "target", "fault", "applied"}``).
    fault_log: list[dict[str, Any]]


@dataclass
class Gateway:
    """One simulated gateway: its directory, its devices, its source sections, and (once started) its agent
    process (the city's supervisor sets ``proc``)."""

    gateway_id: str
    family: str
    dir: Path
    devices: list[str]
    sources: list[dict[str, Any]] = field(default_factory=list)
    proc: Any = None

    @property
    def config(self) -> Path:
        return self.dir / "gateway.toml"

    @property
    def outbox(self) -> Path:
        return self.dir / "outbox.db"

    @property
    def truth(self) -> Path:
        return self.dir / "truth.jsonl"


@dataclass
class Check:
    """One family's verdict: InfluxDB against its simulators' ground truth over the part of the day played."""

    name: str
    truth: int = 0
    stored: int = 0
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    #: The day was stopped early (``cityos demo --duration``): a family with nothing due yet is not a failure.
    partial: bool = False

    @property
    def nothing_due(self) -> bool:
        return self.partial and self.truth == 0 and self.stored == 0 and not self.problems

    @property
    def ok(self) -> bool:
        return not self.problems and (self.truth > 0 or self.nothing_due)

    def line(self) -> str:
        if self.nothing_due:
            state = "nothing due yet in the part of the day played"
        else:
            state = "exact" if self.ok else ("NO DATA" if not self.truth else f"{len(self.problems)} problem(s)")
        return f"{self.name:8s} truth {self.truth:6d}  stored {self.stored:6d}  {state}"


def read_truth(path: Path) -> list[dict[str, Any]]:
    """A ground-truth JSONL file (missing: empty; a line cut by a kill is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def window(t0_ms: int, t1_ms: int) -> str:
    return f"time >= {t0_ms}ms AND time <= {t1_ms}ms"


class CityFamily:
    """A device family in the simulated city. Subclasses set the class attributes and override what they do."""

    #: The kernel's descriptor of this family (name, measurements, id prefixes).
    family: ClassVar[Family]
    #: The family's scenario section (``[<family.scenario_section>]`` in the scenario file).
    Section: ClassVar[type[Section]]
    #: (measurement, field) whose point count is this family's column in the demo's progress line.
    progress: ClassVar[tuple[str, str]]

    def __init__(self, city: City) -> None:
        self.city = city
        self.gateways: list[Gateway] = []
        #: The family's running simulators (devices), by device or gateway id: ``start()`` fills it.
        self.sims: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def section(self) -> Any:
        return getattr(self.city.sc, self.family.scenario_section)

    def gateway(self, n: int, devices: list[str]) -> Gateway:
        """The ``n``-th (from 1) gateway of this family, in its own directory of the run."""
        gid = f"{self.family.gateway_prefix}{n:02d}"
        return Gateway(gid, self.name, self.city.run_dir / gid, devices)

    # --- the day ---

    def plan(self) -> None:
        """Create this family's :class:`Gateway` entries (ids, devices, source sections)."""

    def start(self) -> None:
        """Power the devices on (ptys exist when this returns)."""

    def freeze(self, clock: ScaledClock) -> None:
        """Stop producing new data (the ground truth becomes final) and keep answering the gateways: ``clock``
        is the city's clock standing still at this instant, as it does at the end of the day. By default every
        simulator reads that clock from now on (its time stands still: nothing new happens)."""
        for sim in self.sims.values():
            sim.clock = clock

    def stop(self) -> None:
        """Power off every simulator."""
        for sim in self.sims.values():
            sim.stop()

    def fault(self, ev: FaultEvent) -> bool:
        """Apply a scheduled fault to one of this family's devices; False if the target is not ours."""
        return False

    def describe(self) -> str:
        """This family's part of the demo's opening lines ("12 households with smart meters on 2 gateways")."""
        return f"{len(self.gateways)} {self.name} gateway(s)"

    def verify(self, query: Query, t0_ms: int, t1_ms: int, *, partial: bool) -> Check | None:
        """InfluxDB against the ground truth over ``[t0_ms, t1_ms]``, the part of the day that was played
        (``partial``: stopped before the scenario's end); None when this family has no gateway in the city."""
        return None

    # --- helpers ---

    def later(self, sim_s: float, fn: Callable[[], Any], *, min_real_s: float = 0.1) -> None:
        """Run ``fn`` after ``sim_s`` simulated seconds (a fault's end)."""
        t = threading.Timer(max(min_real_s, sim_s / self.city.sc.day.rate), fn)
        t.daemon = True
        t.start()

    def district_ids(self) -> list[str]:
        sc = self.city.sc
        data = json.loads(sc.resolve(sc.districts).read_text(encoding="utf-8"))
        return [f["properties"]["id"] for f in data["features"]]
