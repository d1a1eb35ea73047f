"""Garbage trucks: a load-cell weighing indicator and a GPS receiver on two serial ports → collection events.

Source type ``garbage_truck`` (config :class:`TruckConfig`). The reasoning behind the rules is in
``docs/trucks.md``; in short:

* **Pickup**: the indicator's *stable* (``ST``) weight settles (the same value, within half the resolution, on
  ``stable_lines`` consecutive ST lines spanning ``stable_window_s``) while the truck is stopped (GPS speed below
  ``stopped_kmh``; during a GPS dropout stability alone decides: a truck scale is not stable while driving), and
  it is at least ``min_pickup_kg`` above the last settled weight (the *baseline*). The increase is one
  ``truck_collection`` reading at the truck's position, tagged with the district that contains it. A settled
  weight closer than ``min_pickup_kg`` to the baseline replaces it (zero drift, display steps), so drift never
  accumulates into a fake pickup.
* **Moving**: a settled weight while GPS says the truck moves is held back, not dropped: it is decided at the
  next stopped fix. Unstable (``US``) lines only end a settle; they are counted.
* **Trip**: a settled decrease of at least ``min_pickup_kg`` inside the disposal site's radius is unloading. When the
  weight is then within ``empty_kg`` of zero, the trip closes with one ``truck_trip`` summary; a partial unload
  closes the trip when the truck leaves the site (or at the next pickup).
* **Time**: events are stamped with GPS time (RMC date + time, extrapolated by the data clock since the fix
  arrived); with no usable fix, with :func:`edge.clock.now`. A fix is the NMEA core's own
  :class:`~edge.sources.common.nmea.RmcFix`; an empty speed field counts as stopped. Timestamps of one truck
  strictly increase (a point in InfluxDB is identified by its time: two pickups in one millisecond would overwrite
  each other).
* **Exactly once**: every reading is committed with the tracker state that produced it (trip number, running
  totals, baseline weight, last event time, last position). All later in-memory changes derive from that
  state, so a restart re-derives them: a pickup already emitted leaves the baseline at the loaded weight (no
  repeat); a pickup made while the agent was down shows as an increase over the persisted baseline at the next
  settle (not lost, though located where the truck is then).

Why one thread for both ports: the pickup rules combine the two streams, so one thread owning both keeps the
tracker free of locks and processes the streams in arrival order. It waits in ``select()`` on both fds and
reads *bounded* chunks from each per turn, so after a stall (a busy gateway, or 288x simulated time) the two
backlogs are consumed interleaved instead of one whole backlog first (which would pair weights with stale or
future positions).

Ports are opened with pyserial (it sets baud and raw mode) and read with ``os.read`` after ``select``. On open
the input buffer is flushed: stale bytes in the driver are of unknown age (a weight or fix from minutes ago),
and the next settle accounts for anything that happened meanwhile. An I/O error, hang-up, or a udev symlink
that now leads elsewhere closes the port; it is reopened by its configured path with backoff (0.1 s doubling to
2 s). Warnings are rate-limited (one per minute per cause, with the count suppressed).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cityos.config import DeviceId
from cityos.wire import Reading
from edge import clock
from edge.sources.base import SourceConfig, SourceContext, register
from edge.sources.common.geo import UNKNOWN, Districts, DistrictsError, haversine_m, load_districts
from edge.sources.common.logs import RateLimited
from edge.sources.common.nmea import GpsTracker, RmcFix
from edge.sources.common.polling import PollingSource, select_ready
from edge.sources.common.serialport import SerialPort
from edge.sources.truck.weighing import WeighingDecoder, WeightFrame

log = logging.getLogger(__name__)

KIND_COLLECTION = "truck_collection"
KIND_TRIP = "truck_trip"
STATE_VERSION = 1

_LOG_PERIOD_S = 60.0
#: Bytes read from a port per loop turn (see the module docstring: interleaving after a stall).
_CHUNK = {"indicator": 128, "gps": 512}
#: Movement below this between fixes is GPS jitter, not distance driven.
_JITTER_M = 10.0
#: Leaving the disposal site: beyond this multiple of its radius (hysteresis against jitter at the edge).
_LEAVE_FACTOR = 1.5
#: The indicator streams several lines a second: none for this long (real seconds) and the scale does not answer.
_SCALE_SILENT_S = 5.0


# --- config -------------------------------------------------------------------------------------------------


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(default=150.0, gt=0, le=5000)

    def contains(self, lat: float, lon: float, factor: float = 1.0) -> bool:
        return haversine_m(self.lat, self.lon, lat, lon) <= self.radius_m * factor


class TruckConfig(SourceConfig):
    """``[[sources]] type = "garbage_truck"``: one truck, two serial ports."""

    type: Literal["garbage_truck"]
    device_id: DeviceId = Field(description="the truck's id, e.g. truck-07")
    indicator_port: str = Field(
        min_length=1, description="weighing indicator, e.g. /dev/ttyINDICATOR (udev link)"
    )
    indicator_baud: int = Field(default=9600, gt=0)
    gps_port: str = Field(min_length=1, description="GPS receiver, e.g. /dev/ttyGPS (udev link)")
    gps_baud: int = Field(default=9600, gt=0)
    district_property: str = Field(default="id", min_length=1, description="feature property holding the id")
    districts: Path = Field(description="GeoJSON FeatureCollection of district polygons")
    disposal: SiteConfig = Field(description="disposal site (clean center): centre and radius")
    stopped_kmh: float = Field(default=3.0, gt=0, description="GPS speed below which the truck is stopped")
    stable_window_s: float = Field(default=2.0, ge=0, description="a settle spans at least this (data clock)")
    stable_lines: int = Field(default=3, ge=1, le=1000, description="... and at least this many ST lines")
    min_pickup_kg: float = Field(default=20.0, gt=0, description="smallest increase that is a pickup")
    resolution_kg: float = Field(default=10.0, gt=0, description="the indicator's display step (division)")
    empty_kg: float = Field(default=100.0, ge=0, description="within this of zero the body is empty")
    gps_timeout_s: float = Field(default=5.0, gt=0, description="no good fix for this long = dropout")
    fix_max_age_s: float = Field(
        default=120.0, ge=0, description="last fix still used for a pickup in a dropout"
    )

    _districts: Districts | None = PrivateAttr(default=None)

    @field_validator("districts")
    @classmethod
    def _load_districts(cls, path: Path, info: ValidationInfo) -> Path:
        """A bad districts file is a config error at startup (naming the feature and the problem)."""
        try:
            load_districts(path, info.data.get("district_property", "id"))
        except DistrictsError as exc:
            raise ValueError(exc.detail) from None  # the error's location names the setting and its value
        return path

    @model_validator(mode="after")
    def _check(self) -> TruckConfig:
        if self.min_pickup_kg < self.resolution_kg:
            raise ValueError(
                f"min_pickup_kg ({self.min_pickup_kg}) is below the indicator resolution ({self.resolution_kg}): "
                "single display steps would count as pickups"
            )
        self._districts = load_districts(self.districts, self.district_property)
        return self

    @property
    def district_map(self) -> Districts:
        assert self._districts is not None
        return self._districts


# --- the tracker (sans-I/O) ---------------------------------------------------------------------------------


@dataclass
class TripState:
    """What is committed with every reading (see "Exactly once" in the module docstring)."""

    v: int = STATE_VERSION
    trip_no: int = 1
    trip_start_ms: int | None = None
    kg: float = 0.0  # collected in this trip
    pickups: int = 0
    unknown: int = 0  # pickups of this trip tagged district "unknown"
    unloaded: float = 0.0  # unloaded so far at the disposal site (trip not closed yet)
    dist_m: float = 0.0
    baseline: float | None = None  # last settled weight
    mode: str | None = None  # GS / NT of the baseline
    last_ms: int = 0  # time of the last emitted event
    last_pos: list[float] | None = None  # [lat, lon] the distance is counted from
    zero: float | None = None  # latest empty reading
    zero0: float | None = None  # first empty reading: zero drift is measured from it

    @classmethod
    def load(cls, raw: dict[str, Any] | None) -> TripState:
        if not raw or raw.get("v") != STATE_VERSION:
            return cls()
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError:
            return cls()

    def dump(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))


@dataclass
class Emission:
    reading: Reading
    state: dict[str, Any]


@dataclass
class _Candidate:
    value: float
    mode: str
    first_s: float
    lines: int = 1
    done: bool = False
    deferred: bool = False


TRACKER_COUNTERS = (
    "pickups",
    "trips",
    "pickups_unknown_district",
    "pickups_last_fix",
    "pickups_no_fix",
    "settles",
    "deferred_moving",
    "weight_drops",
    "missed_unloads",
    "mode_changes",
)


@dataclass
class CollectionTracker:
    """Weight frames + GPS fixes → pickup and trip readings. Pure: time comes in as ``now_s`` arguments.

    ``now_s`` is the data clock (:func:`edge.clock.now`) when the bytes arrived. Fixes are the ones ``gps`` (the
    tracker the source feeds) returned; where and when the truck is comes from that tracker's last fix.
    """

    cfg: TruckConfig
    gps: GpsTracker
    state: TripState = field(default_factory=TripState)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRACKER_COUNTERS, 0))

    def __post_init__(self) -> None:
        self._cand: _Candidate | None = None
        self._fresh = True  # no settle yet since (re)start
        self._districts = self.cfg.district_map

    # --- inputs --------------------------------------------------------------------------------------------
    def on_weight(self, frame: WeightFrame, now_s: float) -> list[Emission]:
        if frame.status != "ST" or frame.kg is None:
            self._cand = None  # unstable or overload: whatever was settling is not settled
            return []
        c = self._cand
        if c is not None and c.mode == frame.mode and abs(frame.kg - c.value) < self.cfg.resolution_kg / 2:
            c.lines += 1
        else:
            self._cand = _Candidate(frame.kg, frame.mode, now_s)
        return self._try_settle(now_s)

    def on_position(self, fix: RmcFix, now_s: float) -> list[Emission]:
        lat, lon = fix.lat, fix.lon
        if not fix.usable or lat is None or lon is None:
            return []  # GpsTracker.feed returns usable fixes only; anything else places nothing
        s = self.state
        if s.trip_start_ms is None:
            s.trip_start_ms = fix.time_ms
        if s.last_pos is None:
            s.last_pos = [lat, lon]
        else:
            d = haversine_m(s.last_pos[0], s.last_pos[1], lat, lon)
            if d >= _JITTER_M:
                s.dist_m += d
                s.last_pos = [lat, lon]
        out: list[Emission] = []
        if (
            s.unloaded > 0
            and _speed(fix) >= self.cfg.stopped_kmh
            and not self.cfg.disposal.contains(lat, lon, _LEAVE_FACTOR)
        ):
            out += self._close_trip(now_s, s.baseline if s.baseline is not None else 0.0)
        out += self._try_settle(now_s)
        return out

    # --- settling ------------------------------------------------------------------------------------------
    def _try_settle(self, now_s: float) -> list[Emission]:
        c, cfg = self._cand, self.cfg
        if c is None or c.done or c.lines < cfg.stable_lines or now_s - c.first_s < cfg.stable_window_s:
            return []
        fix = self.gps.current(now_s)
        if fix is not None and _speed(fix) >= cfg.stopped_kmh:
            if not c.deferred:
                c.deferred = True
                self.counters["deferred_moving"] += 1
            return []
        c.done = True
        self.counters["settles"] += 1
        fresh, self._fresh = self._fresh, False
        return self._settled(c.value, c.mode, now_s, fresh)

    def _settled(self, value: float, mode: str, now_s: float, fresh: bool) -> list[Emission]:
        s, cfg = self.state, self.cfg
        if s.trip_start_ms is None:
            s.trip_start_ms = self._ts(now_s)
        if s.baseline is None or s.mode != mode:
            if s.baseline is not None:
                self.counters["mode_changes"] += 1  # GS <-> NT (tare pressed): a new reference, not a pickup
            s.baseline, s.mode = value, mode
            self._track_zero(value)
            return []
        delta = value - s.baseline
        out: list[Emission] = []
        if delta >= cfg.min_pickup_kg:
            if s.unloaded > 0:  # a partial unload, then collecting again: that trip is over
                out += self._close_trip(now_s, s.baseline)
            out += self._pickup(delta, value, now_s)
        elif delta <= -cfg.min_pickup_kg:
            empty = value - (s.zero if s.zero is not None else 0.0) <= cfg.empty_kg
            if self._at_disposal(now_s) or (fresh and empty):
                if not self._at_disposal(now_s):
                    self.counters["missed_unloads"] += 1  # unloaded while the agent was down
                s.unloaded += -delta
                s.baseline = value
                if empty:
                    out += self._close_trip(now_s, value)
            else:
                self.counters["weight_drops"] += 1
                s.baseline = value
        else:
            s.baseline = value  # drift or a display step: follow it
            self._track_zero(value)
        return out

    def _track_zero(self, value: float) -> None:
        """The body is empty (nothing collected since the last unload) and the scale reads near zero."""
        s = self.state
        if s.pickups == 0 and s.unloaded == 0 and abs(value) <= self.cfg.empty_kg:
            s.zero = value
            if s.zero0 is None:
                s.zero0 = value

    # --- where and when ------------------------------------------------------------------------------------
    def _where(self, now_s: float) -> tuple[tuple[float, float] | None, str]:
        """Where the truck is: the tracker's last fix, live or at most ``fix_max_age_s`` old, and which."""
        g = self.gps
        live = g.current(now_s) is not None
        last = g.last
        if last is None or last.lat is None or last.lon is None:
            return None, "no_fix"
        if live:
            return (last.lat, last.lon), "live"
        if g.age_s(now_s) <= self.cfg.fix_max_age_s:
            return (last.lat, last.lon), "last_fix"
        return None, "no_fix"

    def _at_disposal(self, now_s: float) -> bool:
        pos, _ = self._where(now_s)
        return pos is not None and self.cfg.disposal.contains(*pos)

    def _ts(self, now_s: float) -> int:
        """GPS time of the fix ``_where`` uses, extrapolated by the data clock; the data clock without one."""
        pos, _ = self._where(now_s)
        ts = self.gps.gps_ms_at(now_s) if pos is not None else round(now_s * 1000)
        return max(ts, self.state.last_ms + 1)

    # --- events --------------------------------------------------------------------------------------------
    def _pickup(self, kg: float, load: float, now_s: float) -> list[Emission]:
        s = self.state
        pos, how = self._where(now_s)
        district = self._districts.locate(*pos) if pos is not None else None
        if how != "live":
            self.counters[f"pickups_{how}"] += 1
        if district is None:
            district = UNKNOWN
            self.counters["pickups_unknown_district"] += 1
            s.unknown += 1
        ts = self._ts(now_s)
        s.pickups += 1
        s.kg = round(s.kg + kg, 6)
        s.baseline = load
        s.last_ms = ts
        values: dict[str, float] = {
            "kg": round(kg, 6),
            "load_kg": load,
            "trip_no": float(s.trip_no),
            "pickup_no": float(s.pickups),
        }
        units = {"kg": "kg", "load_kg": "kg"}
        if pos is not None:
            values |= {
                "lat": round(pos[0], 7),
                "lon": round(pos[1], 7),
                "fix_age_s": round(self.gps.age_s(now_s), 1),
            }
            units |= {"lat": "deg", "lon": "deg", "fix_age_s": "s"}
        self.counters["pickups"] += 1
        reading = Reading(
            device_id=self.cfg.device_id,
            kind=KIND_COLLECTION,
            ts=ts,
            values=values,
            units=units,
            tags={"district": district},
        )
        return [Emission(reading, s.dump())]

    def _close_trip(self, now_s: float, load: float) -> list[Emission]:
        s = self.state
        ts = self._ts(now_s)
        if abs(load) <= self.cfg.empty_kg:  # the body is empty now: this is the zero the summary reports
            s.zero = load
            if s.zero0 is None:
                s.zero0 = load
        start = s.trip_start_ms if s.trip_start_ms is not None else ts
        values = {
            "trip_no": float(s.trip_no),
            "kg_collected": s.kg,
            "kg_unloaded": round(s.unloaded, 6),
            "pickups": float(s.pickups),
            "pickups_unknown_district": float(s.unknown),
            "distance_km": round(s.dist_m / 1000, 3),
            "duration_s": round((ts - start) / 1000, 1),
        }
        units = {
            "kg_collected": "kg",
            "kg_unloaded": "kg",
            "distance_km": "km",
            "duration_s": "s",
        }
        if s.zero is not None and s.zero0 is not None:
            values["zero_drift_kg"] = round(s.zero - s.zero0, 6)
            units["zero_drift_kg"] = "kg"
        s.trip_no += 1
        s.trip_start_ms = ts
        s.kg = s.unloaded = s.dist_m = 0.0
        s.pickups = s.unknown = 0
        s.baseline = load
        s.last_ms = ts
        self.counters["trips"] += 1
        reading = Reading(device_id=self.cfg.device_id, kind=KIND_TRIP, ts=ts, values=values, units=units)
        return [Emission(reading, s.dump())]


def _speed(fix: RmcFix) -> float:
    """The fix's speed; an empty speed field counts as stopped (a truck scale is not stable while driving)."""
    return fix.speed_kmh if fix.speed_kmh is not None else 0.0


# --- the source ---------------------------------------------------------------------------------------------


class GarbageTruck(PollingSource):
    """The ``garbage_truck`` source (see the module docstring)."""

    def __init__(self, config: TruckConfig) -> None:
        self.config = config
        self.name = config.name
        self._warn = RateLimited(log)
        self.gps = GpsTracker(timeout_s=config.gps_timeout_s)
        self.weighing = WeighingDecoder()
        self.tracker = CollectionTracker(config, self.gps)
        self._ports = {
            "gps": SerialPort(
                "gps", config.gps_port, config.gps_baud, self._warn, config.name, _CHUNK["gps"]
            ),
            "indicator": SerialPort(
                "indicator",
                config.indicator_port,
                config.indicator_baud,
                self._warn,
                config.name,
                _CHUNK["indicator"],
            ),
        }
        self._lock = threading.Lock()
        self._health: dict[str, float] = {}
        self._last_frame_mono = 0.0  # when the indicator last sent a line it could parse (0: never)
        self._refresh_health()

    # --- Source interface ----------------------------------------------------------------------------------
    def health(self) -> dict[str, float]:
        with self._lock:
            return dict(self._health)

    def devices(self) -> dict[str, dict[str, float]]:
        """The truck for the fleet view and ``cityos gateway check --live``: the scale answers (a weight line it
        could parse within the last few seconds), the GPS has a fix, and each port is open. ``ok`` needs both."""
        h = self.health()
        last = self._last_frame_mono
        age = time.monotonic() - last if last > 0 else -1.0
        scale_ok = h.get("indicator_port_open", 0.0) == 1.0 and 0 <= age <= _SCALE_SILENT_S
        gps_fix = h.get("gps_fix", 0.0) == 1.0
        return {self.config.device_id: {
            "ok": 1.0 if scale_ok and gps_fix else 0.0,
            "scale_ok": 1.0 if scale_ok else 0.0,
            "scale_age_s": round(age, 1),
            "gps_fix": 1.0 if gps_fix else 0.0,
            "indicator_port_open": h.get("indicator_port_open", 0.0),
            "gps_port_open": h.get("gps_port_open", 0.0),
        }}

    health_every_s = 0.2

    def _on_start(self, ctx: SourceContext) -> None:
        self.tracker.state = TripState.load(ctx.state)

    def _on_stop(self) -> None:
        for p in self._ports.values():
            p.close()

    def _loop_once(self, ctx: SourceContext) -> None:
        gps, ind = self._ports["gps"], self._ports["indicator"]
        if gps.ensure_open():
            self.gps.reset()
        if ind.ensure_open():
            self.weighing.reset()
        ready = select_ready((gps, ind), 0.1, idle_s=0.05)
        if ready is None:
            self.gps.tick(clock.now())
            return
        now = clock.now()
        out: list[Emission] = []
        if gps in ready:
            data = gps.read()
            if data:
                for fix in self.gps.feed(data, now):
                    out += self.tracker.on_position(fix, now)
        if ind in ready:
            data = ind.read()
            if data:
                for frame in self.weighing.feed(data):
                    self._last_frame_mono = time.monotonic()
                    out += self.tracker.on_weight(frame, now)
        self.gps.tick(now)
        for e in out:
            ctx.emit(e.reading, state=e.state)
            r = e.reading
            if r.kind == KIND_COLLECTION:
                log.debug("%s: pickup %.0f kg in %s", self.name, r.values["kg"], r.tags.get("district"))
            else:
                log.info(
                    "%s: trip %d closed: %.0f kg",
                    self.name,
                    int(r.values["trip_no"]),
                    r.values["kg_collected"],
                )

    def _refresh_health(self) -> None:
        g, w, t = self.gps, self.weighing.counters, self.tracker
        s = t.state
        nc = g.counters
        h: dict[str, float] = {
            "gps_fix": 1.0 if g.fix_ok else 0.0,
            "gps_fix_quality": float(g.fix_quality),
            "gps_satellites": float(g.satellites),
            "gps_hdop": float(g.hdop),
            "gps_dropouts": float(g.dropouts),
            "nmea_sentences": float(nc.sentences),
            "nmea_bad_checksum": float(nc.bad_checksum),
            "nmea_truncated": float(nc.truncated),
            "nmea_garbage": float(nc.garbage + nc.overlong),
            "nmea_field_errors": float(nc.field_errors),
            "indicator_lines": float(w.lines),
            "indicator_unstable": float(w.unstable),
            "indicator_overload": float(w.overload),
            "indicator_bad_lines": float(w.bad_lines + w.overlong + w.partial),
            "zero_kg": s.zero if s.zero is not None else 0.0,
            "zero_drift_kg": (s.zero - s.zero0) if s.zero is not None and s.zero0 is not None else 0.0,
            "load_kg": s.baseline if s.baseline is not None else 0.0,
            "trip_no": float(s.trip_no),
            "trip_kg": s.kg,
        }
        h |= {k: float(v) for k, v in t.counters.items()}
        for role, p in self._ports.items():
            h[f"{role}_port_open"] = 1.0 if p.is_open else 0.0
            h[f"{role}_port_errors"] = float(p.errors)
            h[f"{role}_reconnects"] = float(p.reconnects)
        with self._lock:
            self._health = h


register("garbage_truck", TruckConfig, GarbageTruck)
