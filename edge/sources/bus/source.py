"""City buses: Bluetooth LE scanning + a GPS on a serial port + the GTFS-JP timetable → ridership per stop.

Source type ``bus`` (config :class:`BusConfig`). One bus, one gateway:

* **GPS** (NMEA 0183 on a serial port, :class:`~edge.sources.common.nmea.GpsTracker`, shared with the garbage trucks)
  feeds the decoder's own :class:`~edge.sources.common.nmea.RmcFix` objects to
  :class:`~edge.sources.bus.stops.StopDetector`, which follows the timetable of the GTFS-JP feed on the gateway and
  gives arrivals and departures per stop.
* **Bluetooth** (:class:`~edge.sources.bus.ble_scan.BleScanner`: bleak over BlueZ on a Pi, or the simulator's socket)
  hands each advertisement as the core's own :class:`~edge.sources.bus.ble_ids.Advert` to
  :meth:`RidershipEstimator.observe` on the scanner's thread, which hashes the address at once; only the hashed
  :class:`~edge.sources.bus.ridership.Observation` crosses to this source's thread, through a bounded queue
  (overflow is counted, never blocks the scanner).
* **Ridership** (:class:`~edge.sources.bus.ridership.RidershipEstimator`) turns both into stop visits, segments and app
  riders' origin-destination pairs; :mod:`edge.sources.bus.readings` shapes the readings. Every
  ``position_interval_s`` a ``bus_position`` reading carries the live fix, trip, stop and occupancy for
  GTFS-Realtime.

Faults keep the source running and show in ``source_health``: a GPS dropout (``gps_fix`` 0, the detector drops the
trip after ``lost_s``; visits around it come out ``complete = false``), the Bluetooth adapter gone
(``ble_adapter_up`` 0, the scanner retries; the segments it covered are not counted), the GPS port unplugged
(reopened with backoff). A restart of the agent starts a new salt: tracks from before are unlinkable by design, so
the visit after a restart is incomplete, never double counted (a visit re-emitted with the same arrival time
overwrites itself in InfluxDB).

No state is committed with the readings: nothing about a passenger may outlive the process.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cityos.config import DeviceId
from cityos.wire import Reading
from edge import clock
from edge.sources.base import SourceConfig, SourceContext, register
from edge.sources.bus.ble_ids import Advert, KeyedHasher
from edge.sources.bus.ble_scan import BleScanConfig, BleScanner
from edge.sources.bus.gtfs import Feed, FeedError, load_feed
from edge.sources.bus.readings import position_reading, result_reading
from edge.sources.bus.ridership import Observation, RidershipConfig, RidershipEstimator, RiderTrip
from edge.sources.bus.stops import StopDetector, StopDetectorConfig
from edge.sources.common.logs import RateLimited
from edge.sources.common.nmea import GpsTracker
from edge.sources.common.polling import PollingSource, select_ready
from edge.sources.common.serialport import SerialPort

log = logging.getLogger(__name__)

#: Hashed observations waiting for the source thread; at 300 adverts/s this is over a minute of stall.
_QUEUE_MAX = 20_000
_GPS_CHUNK = 512


class BusConfig(SourceConfig):
    """``[[sources]] type = "bus"``: one vehicle's GPS port, Bluetooth scanner and timetable."""

    type: Literal["bus"]
    vehicle_id: DeviceId = Field(description="the bus's id, e.g. bus-01")
    gps_port: str = Field(min_length=1, description="GPS receiver, e.g. /dev/ttyGPS (udev link)")
    gps_baud: int = Field(default=9600, gt=0)
    gps_timeout_s: float = Field(default=5.0, gt=0, description="no good fix for this long = dropout")
    feed: Path = Field(description="GTFS-JP feed directory (stops, trips, stop_times, calendar)")
    position_interval_s: float = Field(default=15.0, ge=1, description="live position every this often")
    ble: BleScanConfig = BleScanConfig()
    ridership: RidershipConfig = RidershipConfig()
    stops: StopDetectorConfig = StopDetectorConfig()

    _feed: Feed | None = PrivateAttr(default=None)

    @field_validator("feed")
    @classmethod
    def _load_feed(cls, path: Path, info: ValidationInfo) -> Path:
        """A bad feed is a config error at startup, naming the file, line and column. The feed read here is the one
        the source runs on (:meth:`_keep_feed`): a timetable is read once, not twice."""
        try:
            _validated_feed.set(load_feed(path))
        except FeedError as exc:
            raise ValueError(str(exc)) from None
        return path

    @model_validator(mode="wrap")
    @classmethod
    def _keep_feed(cls, data: Any, handler: ModelWrapValidatorHandler[BusConfig]) -> BusConfig:
        token = _validated_feed.set(None)
        try:
            config = handler(data)
            feed = _validated_feed.get()
        finally:
            _validated_feed.reset(token)
        if feed is not None and config._feed is None:
            config._feed = feed
        return config

    @property
    def timetable(self) -> Feed:
        if self._feed is None:
            self._feed = load_feed(self.feed)
        return self._feed


#: The feed :meth:`BusConfig._load_feed` read, for :meth:`BusConfig._keep_feed` of the same validation.
_validated_feed: contextvars.ContextVar[Feed | None] = contextvars.ContextVar("validated_feed", default=None)


class BusCore:
    """Everything of the source but its ports and threads (sans-I/O): GPS bytes and adverts (:class:`Advert`) in,
    readings out. The source wraps it; the accuracy benchmark, the golden cases and the tests drive it with the
    simulator's streams, so they measure exactly what a gateway runs."""

    def __init__(self, config: BusConfig, now_s: float) -> None:
        self.config = config
        self.feed = config.timetable
        self.gps = GpsTracker(timeout_s=config.gps_timeout_s)
        self.detector = StopDetector(self.feed, config.stops)
        self.estimator = RidershipEstimator(config.ridership, KeyedHasher(now_s), self._trip_calls)
        self.readings: collections.Counter[str] = collections.Counter()
        self._last_position_s = -1e18

    def _trip_calls(self, trip_id: str) -> tuple[int, int] | None:
        calls = self.feed.stop_times.get(trip_id)
        return (calls[0].sequence, calls[-1].sequence) if calls else None

    def observe(self, advert: Advert) -> Observation | None:
        """Hash one advertisement (any thread); file the result with :meth:`add` in time order."""
        return self.estimator.observe(advert)

    def add(self, obs: Observation | None) -> None:
        self.estimator.add(obs)

    def on_gps(
        self, data: bytes, now_s: float, before_events: Callable[[], None] | None = None
    ) -> list[Reading]:
        """GPS bytes → stop events → ridership readings. ``before_events`` runs before a fix's stop events are
        filed (the source drains its queue of adverts there: those received before the fix come first)."""
        out: list[Reading] = []
        for fix in self.gps.feed(data, now_s):
            for ev in self.detector.on_fix(fix):
                if before_events is not None:
                    before_events()
                riders = 0
                for res in self.estimator.on_stop_event(ev):
                    trip = res.alight_trip_id if isinstance(res, RiderTrip) else res.trip_id
                    out.append(
                        result_reading(
                            res,
                            bus_id=self.config.vehicle_id,
                            route_id=self._route_of(trip),
                            cfg=self.config.ridership,
                            rider_slot=riders,
                        )
                    )
                    riders += isinstance(res, RiderTrip)
        for r in out:
            self.readings[r.kind] += 1
        return out

    def tick(self, now_s: float) -> Reading | None:
        """Time passes: fix and salt housekeeping, and the live position when it is due."""
        self.gps.tick(now_s)
        self.estimator.tick(now_s)
        if now_s - self._last_position_s < self.config.position_interval_s:
            return None
        fix = self.gps.current(now_s)
        if fix is None or fix.lat is None or fix.lon is None:
            return None  # no live fix: a stale position would mislead a journey planner
        self._last_position_s = now_s
        where = self.detector.where()
        speed_kmh = fix.speed_kmh if fix.speed_kmh is not None else 0.0
        reading = position_reading(
            bus_id=self.config.vehicle_id,
            ts=self.gps.gps_ms_at(now_s),
            lat=fix.lat,
            lon=fix.lon,
            speed_kmh=speed_kmh,
            bearing_deg=fix.course_deg,
            trip_id=where.trip_id if where else "",
            route_id=where.route_id if where else "",
            start_date=where.service_day if where else None,
            stop_id=where.stop_id if where else "",
            stop_sequence=where.stop_sequence if where else None,
            stopped=where.stopped if where else speed_kmh <= self.config.stops.stopped_kmh,
            devices=self.estimator.live_devices(now_s),
            cfg=self.config.ridership,
        )
        self.readings[reading.kind] += 1
        return reading

    def _route_of(self, trip_id: str) -> str:
        trip = self.feed.trips.get(trip_id)
        return trip.route_id if trip is not None else "unknown"

    def health(self) -> dict[str, float]:
        g, nc = self.gps, self.gps.counters
        d, r = self.detector.counters, self.estimator.counters
        h: dict[str, float] = {
            "gps_fix": 1.0 if g.fix_ok else 0.0,
            "gps_dropouts": float(g.dropouts),
            "gps_satellites": float(g.satellites),
            "nmea_sentences": float(nc.sentences),
            "nmea_bad": float(nc.bad_checksum + nc.truncated + nc.garbage + nc.overlong + nc.field_errors),
            "on_trip": 1.0 if self.detector.run is not None else 0.0,
            "trips_matched": float(d.trips_matched),
            "trips_dropped": float(d.trips_dropped),
            "stops_unobserved": float(d.unobserved),
            "adverts": float(r.adverts),
            "adverts_weak": float(r.weak),
            "rider_adverts": float(r.rider_adverts),
            "addresses": float(r.addresses),
            "stitched": float(r.stitched),
            "segments": float(r.segments),
            "segments_unobserved": float(r.segments_unobserved),
            "visits_incomplete": float(r.visits_incomplete),
            "rider_trips": float(r.rider_trips),
            "rider_trips_unknown_board": float(r.rider_trips_unknown_board),
        }
        h |= {f"readings_{k}": float(v) for k, v in self.readings.items()}
        return h


class Bus(PollingSource):
    """The ``bus`` source (see the module docstring): :class:`BusCore` with a GPS port and a scanner thread."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.name = config.name
        self._warn = RateLimited(log)
        self.core = BusCore(config, clock.now())
        self._queue: collections.deque[Observation | None] = collections.deque()
        self.queue_dropped = 0
        self.scanner = BleScanner(config.ble, self._on_adv)
        self._port = SerialPort("gps", config.gps_port, config.gps_baud, self._warn, config.name, _GPS_CHUNK)
        self._ble_up = True
        self._lock = threading.Lock()
        self._health: dict[str, float] = {}
        self._refresh_health()

    def _on_adv(self, advert: Advert) -> None:
        """On the scanner's thread: hash now, queue only the hash (the raw address ends here)."""
        obs = self.core.observe(advert)
        if len(self._queue) >= _QUEUE_MAX:
            self.queue_dropped += 1
            return
        self._queue.append(obs)

    # --- Source interface -----------------------------------------------------------------------------------

    def health(self) -> dict[str, float]:
        with self._lock:
            return dict(self._health)

    def devices(self) -> dict[str, dict[str, float]]:
        """The bus for the fleet view and ``cityos gateway check --live``: the Bluetooth adapter is up (scanning),
        the GPS has a fix and its port is open. ``ok`` needs both: without either there is no ridership."""
        h = self.health()
        ble_up = h.get("ble_adapter_up", 0.0) == 1.0
        gps_fix = h.get("gps_fix", 0.0) == 1.0
        return {self.config.vehicle_id: {
            "ok": 1.0 if ble_up and gps_fix else 0.0,
            "ble_adapter_up": 1.0 if ble_up else 0.0,
            "gps_fix": 1.0 if gps_fix else 0.0,
            "gps_port_open": h.get("gps_port_open", 0.0),
        }}

    def _on_start(self, ctx: SourceContext) -> None:
        self.scanner.start()

    def _on_stop(self) -> None:
        self.scanner.stop()
        self._port.close()

    def _loop_once(self, ctx: SourceContext) -> None:
        port = self._port
        if port.ensure_open():
            self.core.gps.reset()
        ready = bool(select_ready((port,), 0.1))
        now = clock.now()
        self._check_ble()
        self._drain()
        out: list[Reading] = []
        if ready:
            data = port.read()
            if data:
                out = self.core.on_gps(data, now, self._drain)
        position = self.core.tick(now)
        if position is not None:
            out.append(position)
        for reading in out:
            ctx.emit(reading)

    def _check_ble(self) -> None:
        up = self.scanner.adapter_up
        if up != self._ble_up:
            self._ble_up = up
            if up:
                log.info("%s: Bluetooth adapter back", self.name)
                self.core.estimator.ble_up()
            else:
                self._warn(
                    logging.WARNING, "ble", "%s: Bluetooth adapter lost; segments go uncounted", self.name
                )
                self.core.estimator.ble_down()

    def _drain(self) -> None:
        q, add = self._queue, self.core.add
        for _ in range(len(q)):
            add(q.popleft())

    def _refresh_health(self) -> None:
        h = self.core.health()
        h |= {
            "gps_port_open": 1.0 if self._port.is_open else 0.0,
            "gps_port_errors": float(self._port.errors),
            "gps_reconnects": float(self._port.reconnects),
            "queue_dropped": float(self.queue_dropped),
            "queue_depth": float(len(self._queue)),
        }
        h |= self.scanner.health()
        with self._lock:
            self._health = h


register("bus", BusConfig, Bus)
