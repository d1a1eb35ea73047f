"""Bus stop events from GPS fixes and the GTFS timetable (sans-I/O): where and when the bus stopped, trip by trip.

:class:`StopDetector` is fed :class:`~edge.sources.common.nmea.RmcFix` values (GPS time, position, speed, validity),
the NMEA core's own objects as :class:`~edge.sources.common.nmea.GpsTracker` hands them on, and returns
:class:`StopArrival` / :class:`StopDeparture` / :class:`StopPassed` events. It reads no clock and no port: the same
fixes always give the same events. The reasoning is in ``docs/bus.md``; in short:

* **Trip**: with no current trip, a bus *stopped* within ``entry_radius_m`` of a stop adopts the (trip, call) of that
  stop whose scheduled time on the service day is nearest the fix time, within ``match_tolerance_s``. On a loop
  the terminal is both the last call of one trip and the first of the next; the nearest time decides.
* **Sequence**: the bus then looks for the next expected call, or up to ``lookahead`` calls further (a stop
  missed in a GPS gap, a detour): calls jumped over get no event (the sequence numbers show the gap).
* **Arrival**: first fix within ``entry_radius_m`` of the call's stop with speed at most ``stopped_kmh`` (a fix
  whose RMC speed field is empty gets the speed from the previous fix, when that is at most ``gap_s`` old).
  **Departure**: decided when the bus is beyond ``exit_radius_m`` (hysteresis: GPS jitter at a stop does not end
  the visit); its time is the last fix still within ``entry_radius_m`` and ``dwell_s`` runs from the arrival.
  **Passed**: the bus entered the radius and left beyond ``exit_radius_m`` without stopping; its time is the
  closest fix. No passenger could board or alight, so ridership counts nothing there.
* **End of trip**: arriving at the last call of a trip whose block (or, without ``block_id``, the timetable) has a
  next trip starting at the same stop within ``max_layover_s`` closes the trip at once (departure with dwell 0)
  and opens the next (arrival at its first call, same time): the layover is the next trip's boarding time.
* **Gaps**: fixes more than ``gap_s`` apart are a GPS dropout. A stop approached before the gap and left after it
  gets no event (it may or may not have stopped); a stop arrived at gets its departure at the last fix seen there.
  A dropout longer than ``lost_s``, or being ``max_late_s`` behind the next call, drops the trip: matching
  starts again. Fixes not newer than the last one, invalid fixes (status ``V``) and fixes without a position or
  time are counted and ignored, so nothing is emitted from stale data.

Timestamps are epoch ms (GPS time); ``dwell_s`` is seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.sources.bus.gtfs import Feed, StopTime, Trip
from edge.sources.common.geo import haversine_m
from edge.sources.common.nmea import RmcFix


class StopDetectorConfig(BaseModel):
    """Radii and time limits of :class:`StopDetector` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entry_radius_m: float = Field(default=30.0, gt=0, le=500, description="a stop is reached within this")
    exit_radius_m: float = Field(default=50.0, gt=0, le=1000, description="... and left beyond this")
    stopped_kmh: float = Field(
        default=5.0, gt=0, description="GPS speed at or below which the bus is stopped"
    )
    match_tolerance_s: float = Field(
        default=600.0, gt=0, description="schedule vs GPS time when adopting a trip"
    )
    lookahead: int = Field(
        default=2, ge=0, le=10, description="calls beyond the next one that may be reached"
    )
    gap_s: float = Field(default=10.0, gt=0, description="fixes further apart than this are a dropout")
    lost_s: float = Field(default=300.0, gt=0, description="a dropout longer than this drops the trip")
    max_late_s: float = Field(
        default=1800.0, gt=0, description="this far behind the next call drops the trip"
    )
    max_layover_s: float = Field(
        default=3600.0, ge=0, description="longest terminal wait handed to a next trip"
    )

    @model_validator(mode="after")
    def _check(self) -> StopDetectorConfig:
        if self.exit_radius_m <= self.entry_radius_m:
            raise ValueError(
                f"exit_radius_m ({self.exit_radius_m}) must exceed entry_radius_m ({self.entry_radius_m}): "
                "without hysteresis GPS jitter at a stop splits one visit into many"
            )
        if self.lost_s < self.gap_s:
            raise ValueError(f"lost_s ({self.lost_s}) is shorter than gap_s ({self.gap_s})")
        return self


@dataclass(frozen=True, slots=True)
class StopArrival:
    stop_id: str
    ts: int
    trip_id: str
    stop_sequence: int


@dataclass(frozen=True, slots=True)
class StopDeparture:
    stop_id: str
    ts: int
    dwell_s: float
    trip_id: str
    stop_sequence: int


@dataclass(frozen=True, slots=True)
class StopPassed:
    """The bus went through the stop's radius without stopping (nobody waiting, nobody getting off)."""

    stop_id: str
    ts: int
    trip_id: str
    stop_sequence: int


StopEvent = StopArrival | StopDeparture | StopPassed


@dataclass(frozen=True, slots=True)
class BusWhere:
    """Where in its timetable the bus is: GTFS-Realtime's trip, current stop and STOPPED_AT / IN_TRANSIT_TO."""

    trip_id: str
    route_id: str
    service_day: date
    stop_id: str
    stop_sequence: int
    stopped: bool


@dataclass
class DetectorCounters:
    fixes: int = 0
    invalid: int = 0  # status V or no position/time
    stale: int = 0  # not newer than the last fix
    gaps: int = 0
    trips_matched: int = 0
    trips_dropped: int = 0
    unobserved: int = 0  # visits cut by a dropout (no event)


@dataclass
class _Visit:
    index: int  # into the trip's stop times
    arrived_ms: int | None  # None while only approaching
    last_in_ms: int  # last fix within the entry radius
    closest_m: float
    closest_ms: int
    gapped: bool = False  # a dropout happened during the visit


@dataclass(frozen=True, slots=True)
class _Run:
    """A trip on one service day."""

    trip: Trip
    calls: tuple[StopTime, ...]
    day: date
    day_ms: int

    def at_ms(self, i: int) -> int:
        return self.day_ms + self.calls[i].arrival_s * 1000


class StopDetector:
    """GPS fixes of one bus → stop events, following the timetable of ``feed`` (see the module docstring)."""

    def __init__(self, feed: Feed, config: StopDetectorConfig | None = None) -> None:
        self.feed = feed
        self.cfg = config or StopDetectorConfig()
        self.counters = DetectorCounters()
        self.run: _Run | None = None
        self.next_index = 0
        self.visit: _Visit | None = None
        self._last_ms: int | None = None
        self._last_pos: tuple[float, float] | None = None
        self._runs_cache: dict[date, list[_Run]] = {}

    # --- input ---

    def on_fix(self, fix: RmcFix) -> list[StopEvent]:
        c = self.counters
        c.fixes += 1
        if not fix.valid or fix.lat is None or fix.lon is None or fix.time_ms is None:
            c.invalid += 1
            return []
        ts = fix.time_ms
        if self._last_ms is not None and ts <= self._last_ms:
            c.stale += 1
            return []
        gap_ms = None if self._last_ms is None else ts - self._last_ms
        speed = fix.speed_kmh
        if (
            speed is None
            and self._last_pos is not None
            and gap_ms is not None
            and gap_ms <= self.cfg.gap_s * 1000
        ):
            speed = haversine_m(*self._last_pos, fix.lat, fix.lon) / (gap_ms / 1000) * 3.6
        stopped = speed is not None and speed <= self.cfg.stopped_kmh
        self._last_ms, self._last_pos = ts, (fix.lat, fix.lon)

        out: list[StopEvent] = []
        gap = gap_ms is not None and gap_ms > self.cfg.gap_s * 1000
        if gap:
            c.gaps += 1
            assert gap_ms is not None
            if gap_ms > self.cfg.lost_s * 1000 and self.run is not None:
                if self.visit is not None:
                    self.visit.gapped = True
                self._close_visit(out)
                self._drop()
        if self.run is None:
            self._match(ts, fix.lat, fix.lon, stopped, out)
            return out
        self._follow(ts, fix.lat, fix.lon, stopped, gap, out)
        return out

    def where(self) -> BusWhere | None:
        """The trip and the stop the bus is at (arrived) or heading to, for the live position; None off-trip."""
        run = self.run
        if run is None:
            return None
        v = self.visit
        stopped = v is not None and v.arrived_ms is not None
        i = v.index if v is not None else min(self.next_index, len(run.calls) - 1)
        call = run.calls[i]
        return BusWhere(run.trip.id, run.trip.route_id, run.day, call.stop_id, call.sequence, stopped)

    # --- following a trip ---

    def _follow(
        self, ts: int, lat: float, lon: float, stopped: bool, gap: bool, out: list[StopEvent]
    ) -> None:
        run = self.run
        assert run is not None
        cfg = self.cfg
        v = self.visit
        if v is not None:
            d = self._dist(run, v.index, lat, lon)
            if d <= cfg.exit_radius_m:
                if gap:
                    v.gapped = True
                if d <= cfg.entry_radius_m:
                    v.last_in_ms = ts
                    if d < v.closest_m:
                        v.closest_m, v.closest_ms = d, ts
                    if v.arrived_ms is None and stopped:
                        self._arrive(v, ts, out)
                return
            if gap:
                v.gapped = True
            self._close_visit(out)
            if self.run is None:
                self._match(ts, lat, lon, stopped, out)
                return
        n = self.next_index
        if ts > run.at_ms(n) + cfg.max_late_s * 1000:
            self._drop()
            self._match(ts, lat, lon, stopped, out)
            return
        for i in range(n, min(n + cfg.lookahead + 1, len(run.calls))):
            d = self._dist(run, i, lat, lon)
            if d <= cfg.entry_radius_m:
                self.next_index = i
                self.visit = _Visit(i, None, ts, d, ts)
                if stopped:
                    self._arrive(self.visit, ts, out)
                return

    def _arrive(self, v: _Visit, ts: int, out: list[StopEvent]) -> None:
        run = self.run
        assert run is not None
        v.arrived_ms = ts
        v.last_in_ms = ts
        call = run.calls[v.index]
        out.append(StopArrival(call.stop_id, ts, run.trip.id, call.sequence))
        if v.index == len(run.calls) - 1:
            nxt = self._next_run(run, ts)
            if nxt is not None:
                out.append(StopDeparture(call.stop_id, ts, 0.0, run.trip.id, call.sequence))
                self._start(nxt, 0, ts, out, arrived=True)

    def _close_visit(self, out: list[StopEvent]) -> None:
        """The bus is beyond the exit radius (or lost): the visit ends with a departure, a pass, or nothing."""
        run, v = self.run, self.visit
        if run is None or v is None:
            return
        call = run.calls[v.index]
        if v.arrived_ms is not None:
            out.append(
                StopDeparture(
                    call.stop_id,
                    v.last_in_ms,
                    (v.last_in_ms - v.arrived_ms) / 1000,
                    run.trip.id,
                    call.sequence,
                )
            )
        elif v.gapped:
            self.counters.unobserved += 1  # approached, then a dropout: it may have stopped meanwhile
        else:
            out.append(StopPassed(call.stop_id, v.closest_ms, run.trip.id, call.sequence))
        self.visit = None
        self.next_index = v.index + 1
        if self.next_index >= len(run.calls):
            self.run = None  # the trip is over and no next trip took over at the terminal

    def _drop(self) -> None:
        if self.run is not None:
            self.counters.trips_dropped += 1
        self.run, self.visit, self.next_index = None, None, 0

    # --- matching the timetable ---

    def _match(self, ts: int, lat: float, lon: float, stopped: bool, out: list[StopEvent]) -> None:
        """Adopt the (trip, call) at the stop the bus stands at whose scheduled time is nearest the fix time."""
        if not stopped:
            return
        cfg = self.cfg
        near = {
            sid
            for sid, s in self.feed.stops.items()
            if haversine_m(s.lat, s.lon, lat, lon) <= cfg.entry_radius_m
        }
        if not near:
            return
        best: tuple[int, int, str, int, _Run] | None = None
        for run in self._runs_around(ts):
            for i, call in enumerate(run.calls):
                if call.stop_id in near:
                    dt = abs(ts - run.at_ms(i))
                    if dt <= cfg.match_tolerance_s * 1000:
                        key = (dt, run.at_ms(i), run.trip.id, i, run)
                        if best is None or key[:4] < best[:4]:
                            best = key
        if best is None:
            return
        run, i = best[4], best[3]
        self.counters.trips_matched += 1
        self._start(run, i, ts, out, arrived=False)
        assert self.visit is not None
        self._arrive(self.visit, ts, out)

    def _start(self, run: _Run, i: int, ts: int, out: list[StopEvent], arrived: bool) -> None:
        self.run, self.next_index = run, i
        self.visit = _Visit(i, ts if arrived else None, ts, 0.0, ts)
        if arrived:
            call = run.calls[i]
            out.append(StopArrival(call.stop_id, ts, run.trip.id, call.sequence))

    def _next_run(self, run: _Run, ts: int) -> _Run | None:
        """The trip this bus runs next from the terminal: same block (or any, without blocks), starting here."""
        here = run.calls[-1].stop_id
        end = run.at_ms(len(run.calls) - 1)
        for cand in self._runs_on(run.day):
            if cand.trip.id == run.trip.id or cand.calls[0].stop_id != here:
                continue
            if run.trip.block_id and cand.trip.block_id != run.trip.block_id:
                continue
            start = cand.day_ms + cand.calls[0].departure_s * 1000
            if start >= end and start - ts <= self.cfg.max_layover_s * 1000:
                return cand
        return None

    def _runs_around(self, ts: int) -> list[_Run]:
        """Runs of the service days a fix can belong to: its local date and the day before (times past 24:00)."""
        day = self.feed.local_date(ts)
        return self._runs_on(day - timedelta(days=1)) + self._runs_on(day)

    def _runs_on(self, day: date) -> list[_Run]:
        runs = self._runs_cache.get(day)
        if runs is None:
            day_ms = self.feed.service_day_ms(day)
            runs = [_Run(t, self.feed.stop_times_of(t.id), day, day_ms) for t in self.feed.trips_on(day)]
            if len(self._runs_cache) > 4:
                self._runs_cache.clear()
            self._runs_cache[day] = runs
        return runs

    def _dist(self, run: _Run, i: int, lat: float, lon: float) -> float:
        s = self.feed.stops[run.calls[i].stop_id]
        return haversine_m(s.lat, s.lon, lat, lon)
