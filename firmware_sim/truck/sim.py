"""Garbage-truck simulator: a weighing indicator and a GPS receiver on two pseudo-terminals, driven by a route.

:class:`GarbageTruckSim` plays one truck through a :class:`Route` (depot → collection stops → disposal site,
``trips`` times, then home to the depot where it stays parked) and streams what its two devices would send:

* **Indicator** (``ST,NT,+0001230kg`` lines, CR LF): ``US`` while driving, while the truck settles after
  stopping, while a bin is lifted and while unloading; ``ST`` with the net load (plus zero drift) rounded to the
  indicator resolution otherwise. Lines are emitted at ``indicator_hz`` of simulated time, but never more than
  ``indicator_max_real_hz`` per real second (at 288x a 5 Hz indicator would otherwise send 1440 lines/s), plus one
  line at every change of phase, so no state is ever skipped.
* **GPS** (``$GNRMC`` + ``$GNGGA``, 1 Hz of simulated time, capped at ``gps_max_real_hz`` per real second the same
  way): RMC carries the *simulated* UTC date and time, the position on the route, the speed and course.

Time: everything is computed from the simulated clock (an optional :class:`cityos.simclock.ScaledClock`; the
system clock at rate 1 without one). The streams are generated in simulated-time order and *caught up* when the
simulator thread was late, so the bytes sent do not depend on thread scheduling — only when they arrive does.

Weight model: each stop has a bin of ``bin_kg_min``..``bin_kg_max`` kg (deterministic from ``seed``, or fixed
per stop in the route). The display is ``round((load + zero) / resolution) * resolution`` where ``zero`` starts at
``zero_kg`` and drifts by ``zero_drift_kg_per_h``. Above ``capacity_kg`` the indicator shows ``OL``.

Ground truth (JSON lines, flushed per line, also kept in ``.truth``)::

    {"event": "pickup", "ts": ms, "trip": 1, "stop": 0, "stop_name": "...", "lat": .., "lon": ..,
     "district": "chuo", "kg_true": 123.4, "kg_displayed": 120.0}
    {"event": "trip", "ts": ms, "trip": 1, "start_ts": ms, "duration_s": .., "pickups": 6, "kg_true": ..,
     "kg_displayed": .., "kg_unloaded_displayed": .., "distance_km": .., "zero_displayed_kg": ..}
    {"event": "fault", "ts": ms, "fault": "gps_dropout", ...}

``ts`` of a pickup is when the load settles after the lift; of a trip, when the body is empty at the disposal
site. ``district`` is computed here with a point-in-polygon of the simulator's own (it shares no code with the
gateway). ``kg_displayed`` is the increase the display shows across the lift; a gateway can know no better.

Faults (methods; ``at`` is simulated seconds since start, default now): :meth:`gps_dropout` (``V`` sentences, or
silence with ``silent=True``), bad NMEA checksums at a rate, garbage / partial / overlong indicator lines at a
rate, :meth:`overload`, :meth:`unplug` / :meth:`replug` of either port (the pty goes away and comes back as a new
one, the symlink re-pointed, as udev does).

Standalone: ``python -m firmware_sim.truck.sim --indicator-link run/dev/ttyIND0 --gps-link run/dev/ttyGPS0
--ground-truth truck.jsonl --rate 288 --trips 2``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cityos.simclock import ScaledClock
from firmware_sim.device import SimDevice, serve_until_stopped
from firmware_sim.pty import PtyLink

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
DEFAULT_ROUTE_PATH = SCENARIOS / "tsuyama-truck-route.toml"
DEFAULT_DISTRICTS_PATH = SCENARIOS / "tsuyama-districts.geojson"
EARTH_RADIUS_M = 6_371_008.8
KNOT_KMH = 1.852
PORTS = ("indicator", "gps")

Port = Literal["indicator", "gps"]


# --- route and spec -----------------------------------------------------------------------------------------


class Place(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Stop(Place):
    #: A fixed bin mass for this stop (every trip); default: drawn from the seed.
    kg: float | None = Field(default=None, gt=0)


class Site(Place):
    radius_m: float = Field(default=150.0, gt=0)


class Route(BaseModel):
    """A depot, collection stops visited in order, and the disposal site; straight lines between them."""

    model_config = ConfigDict(extra="forbid")

    name: str = "route"
    depot: Place
    disposal: Site
    stops: list[Stop] = Field(min_length=1)

    @classmethod
    def load(cls, path: str | Path) -> Route:
        with Path(path).open("rb") as f:
            return cls.model_validate(tomllib.load(f))


def default_route() -> Route:
    return Route.load(DEFAULT_ROUTE_PATH)


class TruckSimSpec(BaseModel):
    """What to simulate. Durations are simulated seconds."""

    model_config = ConfigDict(extra="forbid")

    truck_id: str = "truck-01"
    route: Route = Field(default_factory=default_route)
    districts: Path = DEFAULT_DISTRICTS_PATH
    trips: int = Field(default=1, ge=1, le=100)
    seed: int = 0
    bin_kg_min: float = Field(default=40.0, gt=0)
    bin_kg_max: float = Field(default=400.0, gt=0)
    speed_kmh: float = Field(default=25.0, gt=0, le=120)
    # indicator
    resolution_kg: float = Field(default=10.0, gt=0)
    unit: Literal["kg", "t"] = "kg"
    mode: Literal["GS", "NT"] = "NT"
    capacity_kg: float = Field(default=4000.0, gt=0)
    zero_kg: float = 0.0
    zero_drift_kg_per_h: float = 4.0
    moving_noise_kg: float = Field(default=60.0, ge=0)
    indicator_hz: float = Field(default=5.0, gt=0)
    indicator_max_real_hz: float = Field(default=100.0, gt=0)
    # gps
    gps_hz: float = Field(default=1.0, gt=0)
    gps_max_real_hz: float = Field(default=50.0, gt=0)
    satellites: int = Field(default=11, ge=0, le=99)
    hdop: float = Field(default=0.9, ge=0)
    # timing of a stop: settle (US) → hold (ST) → lift (US) → hold (ST)
    depot_s: float = Field(default=60.0, ge=0)
    settle_s: float = Field(default=5.0, ge=0)
    hold_s: float = Field(default=15.0, gt=0)
    lift_s: float = Field(default=20.0, gt=0)
    unload_s: float = Field(default=180.0, gt=0)


# --- geometry (the simulator's own; it shares no code with the gateway) -------------------------------------


def _dist_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _bearing(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dl = math.radians(b[1] - a[1])
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return (math.degrees(math.atan2(y, x)) + 360) % 360


def _inside(lon: float, lat: float, ring: list[list[float]]) -> bool:
    inside, j = False, len(ring) - 1
    for i in range(len(ring)):
        (x1, y1), (x2, y2) = ring[i][:2], ring[j][:2]
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
        j = i
    return inside


class _DistrictMap:
    def __init__(self, path: Path) -> None:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        self.polys: list[tuple[str, list[list[list[float]]]]] = []
        for feat in data["features"]:
            geom = feat["geometry"]
            polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
            for rings in polys:
                self.polys.append((feat["properties"]["id"], rings))

    def locate(self, lat: float, lon: float) -> str:
        for did, rings in self.polys:
            if _inside(lon, lat, rings[0]) and not any(_inside(lon, lat, h) for h in rings[1:]):
                return did
        return "unknown"


# --- the plan -----------------------------------------------------------------------------------------------

_STABLE = frozenset({"park", "pre", "post", "empty"})


@dataclass(frozen=True)
class Segment:
    """One phase of the day. ``a``→``b`` for a drive (stationary phases have ``a == b``); load ramps for lift/unload."""

    kind: str  # park | drive | settle | pre | lift | post | unload | empty
    t0: float
    t1: float
    trip: int
    stop: int | None
    a: tuple[float, float]
    b: tuple[float, float]
    load0: float
    load1: float

    @property
    def stable(self) -> bool:
        return self.kind in _STABLE

    def position(self, t: float) -> tuple[float, float]:
        if self.a == self.b or self.t1 <= self.t0:
            return self.a
        f = min(1.0, max(0.0, (t - self.t0) / (self.t1 - self.t0)))
        return (self.a[0] + (self.b[0] - self.a[0]) * f, self.a[1] + (self.b[1] - self.a[1]) * f)

    def load(self, t: float) -> float:
        if self.load0 == self.load1 or not math.isfinite(self.t1):
            return self.load0
        f = min(1.0, max(0.0, (t - self.t0) / (self.t1 - self.t0)))
        return self.load0 + (self.load1 - self.load0) * f


def build_plan(spec: TruckSimSpec) -> tuple[list[Segment], list[tuple[float, dict[str, Any]]]]:
    """The day as segments, and the pickups/trips (relative time, partial truth) they make."""
    route = spec.route
    rng = random.Random(f"truck-bins:{spec.seed}")
    speed = spec.speed_kmh / 3.6
    segs: list[Segment] = []
    events: list[tuple[float, dict[str, Any]]] = []
    t = 0.0
    here = (route.depot.lat, route.depot.lon)

    def add(
        kind: str, dur: float, trip: int, stop: int | None, b: tuple[float, float], l0: float, l1: float
    ) -> None:
        nonlocal t, here
        segs.append(Segment(kind, t, t + dur, trip, stop, here, b, l0, l1))
        t += dur
        here = b

    def drive(to: tuple[float, float], trip: int, stop: int | None, load: float) -> float:
        d = _dist_m(here, to)
        add("drive", d / speed, trip, stop, to, load, load)
        return d

    add("park", spec.depot_s, 1, None, here, 0.0, 0.0)
    load, start = (
        0.0,
        0.0,
    )  # trip 1 starts with the day; the next one when the body is empty at the disposal site
    for trip in range(1, spec.trips + 1):
        dist, pickups = 0.0, []
        for i, stop in enumerate(route.stops):
            kg = stop.kg if stop.kg is not None else round(rng.uniform(spec.bin_kg_min, spec.bin_kg_max), 1)
            dist += drive((stop.lat, stop.lon), trip, i, load)
            add("settle", spec.settle_s, trip, i, here, load, load)
            add("pre", spec.hold_s, trip, i, here, load, load)
            lift_t0 = t
            add("lift", spec.lift_s, trip, i, here, load, load + kg)
            load += kg
            events.append(
                (t, {"event": "pickup", "trip": trip, "stop": i, "stop_name": stop.name, "lat": stop.lat,
                     "lon": stop.lon, "kg_true": kg, "_pre_t": lift_t0, "_load_pre": load - kg, "_load": load})
            )  # fmt: skip
            pickups.append(kg)
            add("post", spec.hold_s, trip, i, here, load, load)
        dist += drive((route.disposal.lat, route.disposal.lon), trip, None, load)
        add("settle", spec.settle_s, trip, None, here, load, load)
        add("pre", spec.hold_s, trip, None, here, load, load)
        unload_t0 = t
        add("unload", spec.unload_s, trip, None, here, load, 0.0)
        events.append(
            (t, {"event": "trip", "trip": trip, "_start": start, "pickups": len(pickups),
                 "kg_true": round(sum(pickups), 6), "distance_km": round(dist / 1000, 3), "_pre_t": unload_t0,
                 "_load_pre": load})
        )  # fmt: skip
        load, start = 0.0, t
        add("empty", spec.hold_s, trip, None, here, 0.0, 0.0)
    drive((route.depot.lat, route.depot.lon), spec.trips + 1, None, 0.0)
    add("park", math.inf, spec.trips + 1, None, here, 0.0, 0.0)
    return segs, events


# --- the simulator ------------------------------------------------------------------------------------------


def _nmea(body: str) -> bytes:
    cs = 0
    for ch in body:
        cs ^= ord(ch)
    return f"${body}*{cs:02X}\r\n".encode("ascii")


def _ddmm(value: float, deg_digits: int) -> str:
    v = abs(value)
    deg = int(v)
    minutes = round((v - deg) * 60, 5)
    if minutes >= 60:
        deg, minutes = deg + 1, minutes - 60
    return f"{deg:0{deg_digits}d}{minutes:08.5f}"


class GarbageTruckSim(SimDevice):
    WAKE_PIPE = False  # the serving thread waits on an event, not on its ptys

    """One simulated truck: two ptys and the ground truth (see the module docstring)."""

    def __init__(
        self,
        spec: TruckSimSpec | None = None,
        *,
        clock: ScaledClock | None = None,
        truth_path: Path | None = None,
        indicator_link: Path | None = None,
        gps_link: Path | None = None,
        faults: dict[str, float] | None = None,
    ) -> None:
        self.spec = spec or TruckSimSpec()
        if self.spec.bin_kg_max < self.spec.bin_kg_min:
            raise ValueError("bin_kg_max < bin_kg_min")
        now = time.time()
        self.clock = clock or ScaledClock(sim_start=now, real_anchor=now, rate=1.0)
        super().__init__(truth_path)
        self.plan, self._pending_truth = build_plan(self.spec)
        self._districts = _DistrictMap(self.spec.districts)
        self._links: dict[str, PtyLink] = {"indicator": PtyLink(indicator_link), "gps": PtyLink(gps_link)}
        self._lock = threading.RLock()
        self._rates = {"bad_checksum": 0.0, "garbage": 0.0}
        for name, value in (faults or {}).items():
            self.set_fault(name, value)
        self._dropouts: list[tuple[float, float, bool]] = []
        self._overloads: list[tuple[float, float]] = []
        self._sched: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._rng_noise = random.Random(f"truck-noise:{self.spec.seed}")
        self._rng_fault = random.Random(f"truck-faults:{self.spec.seed}")
        rate = self.clock.rate
        self.indicator_period = max(1 / self.spec.indicator_hz, rate / self.spec.indicator_max_real_hz)
        self.gps_period = max(1 / self.spec.gps_hz, rate / self.spec.gps_max_real_hz)
        self._cond = threading.Condition(self._lock)
        self._woken = threading.Event()
        self.truth: list[dict[str, Any]] = []
        self.t0_epoch = 0.0
        self.gen_t = -1.0
        self._seg_i = 0
        self._next_ind = 0.0
        self._next_gps = 0.0
        self._course = 0.0
        self._pickup_disp: dict[int, list[float]] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("indicator_lines", "gps_fixes", "bad_checksums", "garbage_lines", "overload_lines", "dropout_fixes",
             "unplugs", "replugs", "bytes_dropped"),
            0,
        )  # fmt: skip

    # --- public API -----------------------------------------------------------------------------------------
    @property
    def ports(self) -> tuple[str, str]:
        """(indicator, gps) as the gateway should open them: the symlinks if given, else the pty paths."""
        return self._port("indicator"), self._port("gps")

    def _port(self, name: str) -> str:
        link = self._links[name]
        return str(link.link_path) if link.link_path else (link.port or "")

    @property
    def final_t(self) -> float:
        """Simulated seconds (since start) at which the last trip's truth is written (the body is empty)."""
        return max(t for t, e in self._pending_truth if e["event"] == "trip")

    def segments(
        self, kind: str | None = None, *, trip: int | None = None, stop: int | None = None
    ) -> list[Segment]:
        """Plan segments matching the filters (``stop=None`` matches any)."""
        return [
            s
            for s in self.plan
            if (kind is None or s.kind == kind)
            and (trip is None or s.trip == trip)
            and (stop is None or s.stop == stop)
        ]

    def start(self) -> tuple[str, str]:
        """Open both ptys and start streaming; returns (indicator_port, gps_port)."""
        if self.running:
            return self.ports
        for link in self._links.values():
            link.open()
        self._open_truth()
        self._truth_plan = list(self._pending_truth)
        self._truth_i = 0
        self.t0_epoch = self.clock.now()
        self._spawn(self._run, "truck-sim")
        return self.ports

    def wake(self) -> None:
        self._woken.set()

    def _close(self) -> None:
        with self._lock:
            for link in self._links.values():
                link.close()

    def t_at(self, epoch_s: float) -> float:
        """Simulated seconds since start of a simulated wall time (to place a fault at "09:30"); after start()."""
        return epoch_s - self.t0_epoch

    def now_t(self) -> float:
        """Simulated seconds since start, by the clock."""
        return self.clock.now() - self.t0_epoch

    def wait_until(self, t: float, timeout: float) -> bool:
        """Block until the streams have been generated up to simulated second ``t`` (since start)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.gen_t < t:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def set_fault(self, name: str, value: float) -> None:
        """``bad_checksum`` (per NMEA sentence) or ``garbage`` (per indicator line): a probability 0..1."""
        if name not in self._rates:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(self._rates)})")
        p = float(value)
        if not 0 <= p <= 1:
            raise ValueError(f"{name} probability {p} outside 0..1")
        with self._lock:
            self._rates[name] = p

    def gps_dropout(self, duration_s: float, *, at: float | None = None, silent: bool = False) -> None:
        """No fix for ``duration_s``: status-V sentences (or nothing at all with ``silent``)."""
        with self._lock:
            t = self._when(at)
            self._dropouts.append((t, t + duration_s, silent))
            self._schedule(t, lambda: self._fault_truth("gps_dropout", duration_s=duration_s, silent=silent))

    def overload(self, duration_s: float, *, at: float | None = None) -> None:
        """The indicator shows OL for ``duration_s`` (a fault of the load cell or a real overload)."""
        with self._lock:
            t = self._when(at)
            self._overloads.append((t, t + duration_s))
            self._schedule(t, lambda: self._fault_truth("overload", duration_s=duration_s))

    def unplug(self, port: Port, *, at: float | None = None, duration_s: float | None = None) -> None:
        """The adapter leaves (pty closed, symlink removed); with ``duration_s`` it comes back after that."""
        self._check_port(port)
        with self._lock:
            t = self._when(at)
            self._schedule(t, lambda: self._do_unplug(port))
            if duration_s is not None:
                self._schedule(t + duration_s, lambda: self._do_replug(port))
        self.wake()

    def replug(self, port: Port, *, at: float | None = None) -> None:
        """The adapter comes back as a new pty; the symlink is re-pointed."""
        self._check_port(port)
        with self._lock:
            self._schedule(self._when(at), lambda: self._do_replug(port))
        self.wake()

    # --- internals ------------------------------------------------------------------------------------------
    @staticmethod
    def _check_port(port: str) -> None:
        if port not in PORTS:
            raise ValueError(f"port must be one of {PORTS}")

    def _when(self, at: float | None) -> float:
        return max(self.gen_t, 0.0) if at is None else max(float(at), self.gen_t)

    def _schedule(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._sched, (t, self._seq, fn))

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                now_t = self.now_t()
                self._advance(now_t)
                self._cond.notify_all()
                nxt = self._next_due()
            delay = self.clock.real_delay(max(0.0, nxt - now_t))
            self._woken.wait(min(max(delay, 0.0005), 0.05))
            self._woken.clear()

    def _next_due(self) -> float:
        cands = [self._next_ind, self._next_gps]
        if self._seg_i + 1 < len(self.plan):
            cands.append(self.plan[self._seg_i + 1].t0)
        if self._sched:
            cands.append(self._sched[0][0])
        if self._truth_i < len(self._truth_plan):
            cands.append(self._truth_plan[self._truth_i][0])
        return min(cands)

    def _advance(self, until: float) -> None:
        """Generate everything due up to ``until`` in simulated-time order (boundary, truth, faults, GPS, weight)."""
        plan = self.plan
        while True:
            nb = plan[self._seg_i + 1].t0 if self._seg_i + 1 < len(plan) else math.inf
            nt = self._truth_plan[self._truth_i][0] if self._truth_i < len(self._truth_plan) else math.inf
            ns = self._sched[0][0] if self._sched else math.inf
            t = min(nb, nt, ns, self._next_gps, self._next_ind)
            if t > until:
                break
            self.gen_t = t
            if nb == t:
                self._seg_i += 1
                self._emit_weight(t)  # a line on every change of phase
            elif nt == t:
                self._write_truth_event(t, self._truth_plan[self._truth_i][1])
                self._truth_i += 1
            elif ns == t:
                heapq.heappop(self._sched)[2]()
            elif self._next_gps == t:
                self._emit_gps(t)
                self._next_gps += self.gps_period
            else:
                self._emit_weight(t)
                self._next_ind += self.indicator_period
        self.gen_t = max(self.gen_t, until)

    def _segment(self) -> Segment:
        return self.plan[self._seg_i]

    def _zero(self, t: float) -> float:
        return self.spec.zero_kg + self.spec.zero_drift_kg_per_h * t / 3600

    def _display(self, kg: float) -> float:
        res = self.spec.resolution_kg
        return round(round(kg / res) * res, 6) + 0.0

    def _active(self, intervals: list[Any], t: float) -> Any:
        return next((iv for iv in intervals if iv[0] <= t < iv[1]), None)

    def _emit_weight(self, t: float) -> None:
        seg, spec = self._segment(), self.spec
        load = seg.load(t)
        raw = load + self._zero(t)
        if self._active(self._overloads, t) is not None or raw > spec.capacity_kg:
            line = f"OL,{spec.mode},+9999999kg"
            self.counters["overload_lines"] += 1
        else:
            status = "ST" if seg.stable else "US"
            if not seg.stable:
                sigma = spec.moving_noise_kg * (1.0 if seg.kind == "drive" else 0.4)
                raw += self._rng_noise.gauss(0.0, sigma)
            line = self._format_weight(status, self._display(raw))
        data = line.encode("ascii") + b"\r\n"
        p = self._rates["garbage"]
        if p and self._rng_fault.random() < p:
            data = self._garbage(line) + data
        self.counters["indicator_lines"] += 1
        self._write("indicator", data)

    def _format_weight(self, status: str, kg: float) -> str:
        spec = self.spec
        res = spec.resolution_kg if spec.unit == "kg" else spec.resolution_kg / 1000
        dec = 0 if res >= 1 else min(6, -math.floor(math.log10(res) + 1e-9))
        value = kg if spec.unit == "kg" else kg / 1000
        sign = "-" if value < 0 else "+"
        num = f"{abs(value):0{8 if dec else 7}.{dec}f}"
        unit = "kg" if spec.unit == "kg" else " t"
        return f"{status},{spec.mode},{sign}{num}{unit}"

    def _garbage(self, line: str) -> bytes:
        """Noise before a real line: junk bytes, a partial line, a wrong format, an overlong run, or a prefix
        without terminator (which spoils the real line after it, as noise on a real line does)."""
        self.counters["garbage_lines"] += 1
        r = self._rng_fault
        kind = r.randrange(5)
        if kind == 0:
            return (
                bytes(r.choice([b for b in range(256) if b not in (10, 13)]) for _ in range(r.randint(1, 12)))
                + b"\r\n"
            )
        if kind == 1:
            return line[: r.randint(1, len(line) - 1)].encode() + b"\r\n"
        if kind == 2:
            return line.replace(",", ";", 1).encode() + b"\r\n"
        if kind == 3:
            return b"X" * r.randint(70, 200) + b"\r\n"
        return line[: r.randint(1, len(line) - 2)].encode()  # no terminator: the next (real) line is lost

    def _emit_gps(self, t: float) -> None:
        seg = self._segment()
        epoch = self.t0_epoch + t
        cs = round(epoch * 100)
        dt = datetime.fromtimestamp(cs // 100, UTC)
        hms = f"{dt:%H%M%S}.{cs % 100:02d}"
        date = f"{dt:%d%m%y}"
        drop = self._active(self._dropouts, t)
        if drop is not None:
            self.counters["dropout_fixes"] += 1
            if drop[2]:
                return  # silent
            sentences = [f"GNRMC,{hms},V,,,,,,,{date},,,N", f"GNGGA,{hms},,,,,0,00,99.9,,M,,M,,"]
        else:
            lat, lon = seg.position(t)
            moving = seg.kind == "drive" and seg.t1 > seg.t0
            if moving:
                self._course = _bearing(seg.a, seg.b)
            speed_kn = self.spec.speed_kmh / KNOT_KMH if moving else 0.0
            ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
            la, lo = _ddmm(lat, 2), _ddmm(lon, 3)
            sentences = [
                f"GNRMC,{hms},A,{la},{ns},{lo},{ew},{speed_kn:.2f},{self._course:.1f},{date},,,A",
                f"GNGGA,{hms},{la},{ns},{lo},{ew},1,{self.spec.satellites:02d},{self.spec.hdop:.1f},150.0,M,30.0,M,,",
            ]
            self.counters["gps_fixes"] += 1
        out = b""
        p = self._rates["bad_checksum"]
        for body in sentences:
            raw = _nmea(body)
            if p and self._rng_fault.random() < p:
                cs_val = int(raw[-4:-2], 16) ^ (1 << self._rng_fault.randrange(8))
                raw = raw[:-4] + f"{cs_val:02X}".encode() + b"\r\n"
                self.counters["bad_checksums"] += 1
            out += raw
        self._write("gps", out)

    def _write(self, port: str, data: bytes) -> None:
        link = self._links[port]
        if not link.is_open:
            return
        n = link.write(data)
        if n < len(data):
            self.counters["bytes_dropped"] += len(data) - n

    def _do_unplug(self, port: str) -> None:
        link = self._links[port]
        if link.is_open:
            link.close()
            self.counters["unplugs"] += 1
            self._fault_truth("unplug", port=port)

    def _do_replug(self, port: str) -> None:
        link = self._links[port]
        if not link.is_open:
            link.open()
            self.counters["replugs"] += 1
            self._fault_truth("replug", port=port, pty=link.port)

    def _fault_truth(self, fault: str, **fields: Any) -> None:
        self._write_truth({"event": "fault", "ts": self._ms(self.gen_t), "fault": fault, **fields})

    def _ms(self, t: float) -> int:
        return round((self.t0_epoch + t) * 1000)

    def _write_truth_event(self, t: float, ev: dict[str, Any]) -> None:
        spec = self.spec
        zero_pre, zero_now = self._zero(ev["_pre_t"]), self._zero(t)
        if ev["event"] == "pickup":
            disp = self._display(ev["_load"] + zero_now) - self._display(ev["_load_pre"] + zero_pre)
            self._pickup_disp.setdefault(ev["trip"], []).append(disp)
            district = self._districts.locate(ev["lat"], ev["lon"])
            out = {k: v for k, v in ev.items() if not k.startswith("_")}
            out |= {"ts": self._ms(t), "district": district, "kg_displayed": round(disp, 6)}
        else:
            disps = self._pickup_disp.get(ev["trip"], [])
            unloaded = self._display(ev["_load_pre"] + zero_pre) - self._display(zero_now)
            out = {k: v for k, v in ev.items() if not k.startswith("_")}
            out |= {
                "ts": self._ms(t),
                "start_ts": self._ms(ev["_start"]),
                "duration_s": round(t - ev["_start"], 1),
                "kg_displayed": round(sum(disps), 6),
                "kg_unloaded_displayed": round(unloaded, 6),
                "zero_displayed_kg": self._display(zero_now),
                "zero_drift_displayed_kg": round(self._display(zero_now) - self._display(spec.zero_kg), 6),
            }
        self._write_truth({"event": out.pop("event"), **out})

    def _write_truth(self, obj: dict[str, Any]) -> None:
        self.truth.append(obj)
        if self._truth is not None:
            self._truth.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
            self._truth.flush()


# --- standalone ---------------------------------------------------------------------------------------------


def _at_duration(text: str) -> tuple[float, float]:
    at, _, dur = text.partition(":")
    if not dur:
        raise argparse.ArgumentTypeError(f"expected AT:DURATION (simulated seconds), got {text!r}")
    return float(at), float(dur)


def _unplug_arg(text: str) -> tuple[str, float, float]:
    port, _, rest = text.partition(":")
    if port not in PORTS:
        raise argparse.ArgumentTypeError(f"expected PORT:AT:DURATION with PORT one of {PORTS}, got {text!r}")
    at, dur = _at_duration(rest)
    return port, at, dur


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m firmware_sim.truck.sim",
        description="Simulated garbage truck: weighing indicator + GPS on two pseudo-terminals.",
    )
    p.add_argument("--route", type=Path, default=DEFAULT_ROUTE_PATH, help="route TOML (default: %(default)s)")
    p.add_argument("--districts", type=Path, default=DEFAULT_DISTRICTS_PATH, help="district GeoJSON")
    p.add_argument("--truck-id", default="truck-01")
    p.add_argument("--trips", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=float, default=10.0, help="indicator resolution, kg (default: 10)")
    p.add_argument("--speed", type=float, default=25.0, help="driving speed, km/h (default: 25)")
    p.add_argument("--rate", type=float, default=1.0, help="simulated seconds per real second (default: 1)")
    p.add_argument(
        "--sim-start", type=float, default=None, help="simulated epoch seconds at start (default: now)"
    )
    p.add_argument("--indicator-link", type=Path, default=None, help="symlink to keep to the indicator pty")
    p.add_argument("--gps-link", type=Path, default=None, help="symlink to keep to the GPS pty")
    p.add_argument("--ground-truth", type=Path, default=None, help="JSON-lines file the truth is appended to")
    p.add_argument("--duration", type=float, default=None, help="stop after S real seconds (default: Ctrl-C)")
    p.add_argument("--bad-checksum", type=float, default=0.0, help="probability per NMEA sentence")
    p.add_argument("--garbage", type=float, default=0.0, help="probability per indicator line")
    p.add_argument("--gps-dropout", type=_at_duration, action="append", default=[], metavar="AT:DURATION")
    p.add_argument("--overload", type=_at_duration, action="append", default=[], metavar="AT:DURATION")
    p.add_argument("--unplug", type=_unplug_arg, action="append", default=[], metavar="PORT:AT:DURATION")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = TruckSimSpec(
            truck_id=args.truck_id,
            route=Route.load(args.route),
            districts=args.districts,
            trips=args.trips,
            seed=args.seed,
            resolution_kg=args.resolution,
            speed_kmh=args.speed,
        )
        now = time.time()
        clock = ScaledClock(sim_start=args.sim_start if args.sim_start is not None else now, real_anchor=now,
                            rate=args.rate)  # fmt: skip
        sim = GarbageTruckSim(
            spec,
            clock=clock,
            truth_path=args.ground_truth,
            indicator_link=args.indicator_link,
            gps_link=args.gps_link,
            faults={"bad_checksum": args.bad_checksum, "garbage": args.garbage},
        )
    except (ValueError, OSError) as exc:
        print(f"truck sim: {exc}", file=sys.stderr)
        return 2
    for at, dur in args.gps_dropout:
        sim.gps_dropout(dur, at=at)
    for at, dur in args.overload:
        sim.overload(dur, at=at)
    for port, at, dur in args.unplug:
        sim.unplug(port, at=at, duration_s=dur)
    return serve_until_stopped(
        "truck sim", [sim], duration=args.duration, counters=lambda: sim.counters,
        started=lambda: print(
            f"truck sim: {spec.truck_id}: indicator {sim.ports[0]}, gps {sim.ports[1]}; route {spec.route.name!r} "
            f"({len(spec.route.stops)} stops) x{spec.trips}, rate {args.rate}", flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
