"""Bus ridership from Bluetooth at the edge (sans-I/O): boardings, alightings and occupancy per stop visit.

:class:`RidershipEstimator` is fed two streams, each with its own time: Bluetooth advertisements as the core's own
:class:`~edge.sources.bus.ble_ids.Advert` (``observe`` turns one into an :class:`Observation` at once, ``add``
files it) and stop events from :class:`~edge.sources.bus.stops.StopDetector`. It returns :class:`VisitCount`,
:class:`SegmentCount` and :class:`RiderTrip` results. It reads no clock, no radio and no file. The reasoning is in ``docs/bus.md``; in short:

* **Privacy first.** ``observe`` replaces the address (or an app rider's iBeacon token) with a keyed 64-bit hash
  under the memory-only daily salt of :class:`~edge.sources.bus.ble_ids.KeyedHasher` before anything is kept: raw
  identifiers live only in the caller's stack frame. Tracks hold hashes, and only counts and the per-day hashes of
  consenting app riders leave this module.
* **Rotating addresses are stitched into tracks.** A phone changes its random address every 5 to 15 minutes, so
  one phone on a 40-minute ride shows as several addresses. The phone switches at once: its old address falls
  silent and a new one starts within an advertising interval, at about the same signal strength. A new address
  whose first advert comes at most ``stitch_gap_s`` after an address that has fallen silent (and was not heard
  again), with a mean RSSI within ``stitch_db``, continues that address's track (closest in time wins). App
  riders are tracked by their token, which does not rotate within a service day.
* **In-vehicle means present across a moving segment.** Between the departure from one stop and the arrival at
  the next, a device in the bus is heard throughout; a pedestrian at the stop just left is heard only at the start,
  one at the next stop only at the end, oncoming traffic for seconds. A track is in the vehicle on a segment when
  it was heard in the first ``head_frac`` of it and in the last ``head_frac`` (each at most ``head_max_s``), with a
  mean RSSI over the segment of at least ``in_vehicle_rssi_dbm`` and at least ``min_adverts`` adverts. Holes in
  between do not matter (a crowded bus blocks a phone for a while).
* **Stop visits are set differences.** With S(k) the in-vehicle tracks of the segment that leaves stop k: boarded
  at k = S(k) − S(k−1), alighted at k = S(k−1) − S(k), devices on board = |S(k)|. So a stop visit is known when
  the bus arrives at the *next* stop (one segment of latency). A visit whose preceding segment was not observed
  (start of the day, a restart, a GPS dropout that skipped a stop, a Bluetooth outage) has no boardings or
  alightings (``complete`` false) rather than a wrong guess.
* **Terminal handover.** On a loop the last call of trip k and the first of trip k+1 are one dwell (the detector
  emits arrival, departure with dwell 0 and the next trip's arrival at the same instant): the alightings belong to
  the ending trip and the boardings to the next one. After the last trip of a block (no next trip) everybody
  still aboard alights at the terminal: a community bus does not carry passengers to the depot.
* **Phones, not watches.** A watch, band or tracker goes with a phone: counting it would count its wearer
  twice. An advertiser whose company id or service is a wearable maker's (:data:`WEARABLE_COMPANY_IDS`,
  :data:`WEARABLE_SERVICE_UUIDS`; a category of device, nothing that identifies one) is tracked as a wearable,
  reported as ``wearables`` and left out of the counts. (An Apple Watch advertises as Apple, like an iPhone:
  it stays counted, and the calibration absorbs it.)
* **Devices to passengers.** Passengers carry 0, 1 or 2 devices: passengers = devices / ``devices_per_passenger``
  with a 90 % interval from ``devices_per_passenger_sd`` (the spread of devices per passenger). Both are
  calibrated against a manual count or a day of ground truth (``benchmarks/bus_accuracy.py`` does it against the
  simulator). Raw device counts are published too, so the city can recalibrate later.

Times: adverts and their observations carry the gateway's data clock when received (``Advert.rx_s``, epoch
seconds); stop events GPS time (epoch ms). A gateway's clock is GPS- or NTP-disciplined, so they agree to well
under a second, far below a segment's minutes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.sources.bus.ble_ids import (
    APPLE_COMPANY_ID,
    Advert,
    KeyedHasher,
    is_city_rider,
    parse_ibeacon,
    rider_token,
)
from edge.sources.bus.stops import StopArrival, StopDeparture, StopEvent, StopPassed

_Z90 = 1.6449  # two-sided 90 % interval of a normal distribution

#: Bluetooth SIG company ids of makers whose advertisers are wearables (watches, bands, trackers): Polar,
#: Garmin, Huami (Amazfit), Xiaomi.
WEARABLE_COMPANY_IDS = frozenset({0x006B, 0x0087, 0x0157, 0x038F})
#: Service UUIDs advertised by wearables: Fitbit's tracker service.
WEARABLE_SERVICE_UUIDS = frozenset({"adabfb00-6e7d-4601-bda2-bffaa68956ba"})


class RidershipConfig(BaseModel):
    """Estimator settings (``[sources.ridership]`` of a bus source); see the module docstring for each rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    city_uuid: uuid.UUID | None = Field(default=None, description="proximity UUID of the city app's iBeacon")
    rssi_min_dbm: float = Field(default=-100.0, description="adverts weaker than this are not used at all")
    in_vehicle_rssi_dbm: float = Field(
        default=-92.0, description="mean RSSI over a segment at or above which a track may be in the bus"
    )
    head_frac: float = Field(default=0.3, gt=0, lt=0.5, description="head and tail share of a segment")
    head_max_s: float = Field(default=60.0, gt=0, description="... but at most this long")
    min_adverts: int = Field(default=3, ge=1, description="adverts on a segment for a track to count")
    stitch_gap_s: float = Field(default=3.0, ge=0, le=30, description="largest silence at an address change")
    stitch_db: float = Field(default=8.0, ge=0, description="largest mean-RSSI step at an address change")
    decide_s: float = Field(
        default=2.0, ge=0, description="a new address is stitched this long after it starts"
    )
    prune_s: float = Field(default=900.0, gt=0, description="tracks silent this long are forgotten")
    max_segment_s: float = Field(default=1800.0, gt=0, description="longer stop-to-stop is not a segment")
    devices_per_passenger: float = Field(
        default=1.0, gt=0, description="calibrated mean, undetected included"
    )
    devices_per_passenger_sd: float = Field(default=0.6, ge=0, description="spread per passenger")
    crowding_k: float = Field(
        default=0.0, ge=0, le=0.1, description="bodies hide devices: each heard device hides this many more"
    )
    capacity: int | None = Field(default=None, gt=0, description="the vehicle's passenger capacity")
    live_moving_s: float = Field(default=30.0, ge=0, description="live count: heard this long while moving")
    live_recent_s: float = Field(default=15.0, gt=0, description="live count: heard within this")

    @model_validator(mode="after")
    def _check(self) -> RidershipConfig:
        if self.rssi_min_dbm > self.in_vehicle_rssi_dbm:
            raise ValueError(
                f"rssi_min_dbm ({self.rssi_min_dbm}) is above in_vehicle_rssi_dbm ({self.in_vehicle_rssi_dbm}): "
                "no device could ever count as in the bus"
            )
        return self

    def crowding(self, devices: float) -> float:
        """Devices aboard per device heard, for ``devices`` heard: a full bus hides some of its phones."""
        return 1.0 + self.crowding_k * devices

    def passengers(self, devices: float) -> tuple[float, float, float]:
        """Passengers for a device count: the estimate and its 90 % interval (lo, hi)."""
        est = devices * self.crowding(devices) / self.devices_per_passenger
        sd = math.sqrt(est + 1.0) * self.devices_per_passenger_sd / self.devices_per_passenger
        return est, max(0.0, est - _Z90 * sd), est + _Z90 * sd


@dataclass(frozen=True, slots=True)
class Observation:
    """One advertisement after hashing: ``key`` is ``a<hash>`` for an address, ``r<hash>`` for an app rider."""

    t: float
    key: str
    rssi: int
    wearable: bool = False


@dataclass(frozen=True, slots=True)
class VisitCount:
    """A stop visit with the in-vehicle devices when the bus left, and (``complete``) who boarded and alighted."""

    trip_id: str
    stop_id: str
    stop_sequence: int
    arrival_ms: int
    dwell_s: float
    devices: (
        int | None
    )  # counted (phone-like) devices aboard when it left; None: that segment was not observed
    boarded: int | None
    alighted: int | None
    wearables: int | None = None

    @property
    def complete(self) -> bool:
        return self.boarded is not None


@dataclass(frozen=True, slots=True)
class SegmentCount:
    """In-vehicle devices between two consecutive stop visits of a trip."""

    trip_id: str
    from_stop: str
    to_stop: str
    from_sequence: int
    to_sequence: int
    start_ms: int
    end_ms: int
    devices: int
    wearables: int = 0


@dataclass(frozen=True, slots=True)
class RiderTrip:
    """A consenting app rider's exact origin-destination pair; ``rider`` is the per-day keyed hash of the token."""

    rider: str
    board_trip_id: str
    board_stop: str
    board_sequence: int
    board_ms: int
    alight_trip_id: str
    alight_stop: str
    alight_sequence: int
    alight_ms: int


RidershipResult = VisitCount | SegmentCount | RiderTrip


@dataclass(slots=True)
class _Track:
    """One device: a chain of its addresses (stitched), or an app rider's token."""

    id: int
    rider: str | None
    wearable: bool
    last_s: float
    rssi: float  # running mean of the current address, for stitching
    n_addr: int = 0  # adverts of the current address
    seg_first_s: float = math.inf
    seg_last_s: float = -math.inf
    seg_n: int = 0
    seg_rssi: float = 0.0
    move_first_s: float = math.inf
    move_last_s: float = -math.inf


@dataclass(slots=True)
class _Addr:
    track: _Track
    first_s: float
    last_s: float
    succeeded: bool = False  # a later address continues its track


@dataclass(slots=True)
class _Visit:
    trip_id: str
    stop_id: str
    sequence: int
    arrival_ms: int
    departure_ms: int | None = None
    dwell_s: float = 0.0
    #: On a loop's terminal: the visit of the ending trip that this (next trip's first) visit continues.
    handover_of: _Visit | None = None


@dataclass
class RidershipCounters:
    adverts: int = 0
    weak: int = 0
    rider_adverts: int = 0
    addresses: int = 0
    stitched: int = 0
    segments: int = 0
    segments_unobserved: int = 0
    visits_incomplete: int = 0
    rider_trips: int = 0
    rider_trips_unknown_board: int = 0
    day_rotations: int = 0


@dataclass
class _Segment:
    start_s: float
    visit: _Visit
    outage: bool = False


class RidershipEstimator:
    """Advertisements + stop events of one bus → ridership results (see the module docstring).

    ``trip_calls`` gives, for a trip id, the stop_sequence of its first and last call (from the GTFS feed): a bus
    starts a trip empty at its first call (so those boardings are known without a segment before), and everyone
    alights at the last call of a block. ``observe`` may be called from another thread (the scanner's);
    everything else from one thread.
    """

    def __init__(
        self,
        config: RidershipConfig,
        hasher: KeyedHasher,
        trip_calls: Callable[[str], tuple[int, int] | None],
    ) -> None:
        self.cfg = config
        self.hasher = hasher
        self._trip_calls = trip_calls
        self.counters = RidershipCounters()
        self._city_uuid = config.city_uuid
        self._reset_tracks()

    def _reset_tracks(self) -> None:
        self._addrs: dict[str, _Addr] = {}
        self._pending: list[tuple[str, _Addr]] = []  # new addresses not yet considered for stitching
        self._next_id = 0
        self._segment: _Segment | None = None
        self._visit: _Visit | None = None  # the visit the bus is at (arrived, not departed)
        self._prev_set: set[int] | None = None  # in-vehicle tracks of the segment before the open one
        self._rider_board: dict[int, tuple[str, str, int, int]] = {}  # track → (trip, stop, seq, ms)
        self._rider_hash: dict[int, str] = {}
        self._ble_down = False
        self._last_tick_s = -math.inf
        self._pruned_s = -math.inf

    # --- Bluetooth in ---------------------------------------------------------------------------------------

    def observe(self, adv: Advert) -> Observation | None:
        """Hash one advertisement at once (the raw address goes no further), or None if too weak to use."""
        rssi, now_s = adv.rssi, adv.rx_s
        if rssi < self.cfg.rssi_min_dbm:
            return None
        if self._city_uuid is not None and APPLE_COMPANY_ID in adv.manufacturer_data:
            beacon = parse_ibeacon(adv)
            if beacon is not None and is_city_rider(beacon, self._city_uuid):
                return Observation(now_s, "r" + self.hasher.hash_token(rider_token(beacon)), rssi)
        wearable = not WEARABLE_COMPANY_IDS.isdisjoint(
            adv.manufacturer_data
        ) or not WEARABLE_SERVICE_UUIDS.isdisjoint(adv.service_uuids)
        try:
            return Observation(now_s, "a" + self.hasher.hash(adv.address), rssi, wearable)
        except ValueError:
            return None  # not an address (cannot happen with BlueZ); nothing to count it by

    def add(self, obs: Observation | None) -> None:
        """File one hashed observation (in time order with the stop events)."""
        c = self.counters
        if obs is None:
            c.weak += 1
            return
        c.adverts += 1
        t = obs.t
        a = self._addrs.get(obs.key)
        if a is None:
            rider = obs.key[1:] if obs.key[0] == "r" else None
            track = _Track(self._next_id, rider, obs.wearable, t, float(obs.rssi))
            self._next_id += 1
            a = self._addrs[obs.key] = _Addr(track, t, t)
            c.addresses += 1
            if rider is None:
                self._pending.append((obs.key, a))
            else:
                self._rider_hash[track.id] = rider
        tr = a.track
        a.last_s = t
        tr.last_s = t
        tr.n_addr += 1
        tr.rssi += (obs.rssi - tr.rssi) / min(tr.n_addr, 20)
        if tr.rider is not None:
            c.rider_adverts += 1
        if self._segment is not None:
            if tr.seg_n == 0:
                tr.seg_first_s = t
            tr.seg_last_s = t
            tr.seg_n += 1
            tr.seg_rssi += obs.rssi
            if tr.move_first_s == math.inf:
                tr.move_first_s = t
            tr.move_last_s = t
        if t - self._last_tick_s >= 1.0:
            self.tick(t)

    def ble_down(self) -> None:
        """The adapter is gone: the open segment cannot be counted (its devices went unheard)."""
        self._ble_down = True
        if self._segment is not None:
            self._segment.outage = True

    def ble_up(self) -> None:
        self._ble_down = False

    # --- time passes ----------------------------------------------------------------------------------------

    def tick(self, now_s: float) -> None:
        """Stitch new addresses that are old enough to decide, forget long-silent tracks, rotate the salt."""
        self._last_tick_s = now_s
        if self.hasher.rotate_if_due(now_s):
            # Hashes of different days must not be linked, not even here: forget every track.
            self.counters.day_rotations += 1
            self._reset_tracks()
            return
        if self._pending:
            self._stitch(now_s)
        if now_s - self._pruned_s >= 30:
            self._pruned_s = now_s
            cutoff = now_s - self.cfg.prune_s
            # An app rider aboard (boarded, not yet alighted) is kept: a terminal's layover can outlast
            # ``prune_s`` before the alighting there is decided.
            for key in [
                k
                for k, a in self._addrs.items()
                if a.last_s < cutoff and a.track.id not in self._rider_board
            ]:
                tid = self._addrs.pop(key).track.id
                self._rider_hash.pop(tid, None)

    def _stitch(self, now_s: float) -> None:
        cfg = self.cfg
        due = [(k, a) for k, a in self._pending if a.first_s <= now_s - cfg.decide_s]
        if not due:
            return
        self._pending = [(k, a) for k, a in self._pending if a.first_s > now_s - cfg.decide_s]
        due.sort(key=lambda ka: ka[1].first_s)
        lo = due[0][1].first_s - cfg.stitch_gap_s
        # Addresses that fell silent around then and are the latest of their track: the candidates.
        ended = [
            a
            for a in self._addrs.values()
            if not a.succeeded and a.track.rider is None and lo <= a.last_s and a.first_s < a.last_s
        ]
        for _, new in due:
            best: _Addr | None = None
            best_gap = math.inf
            for old in ended:
                if old.succeeded or old.track is new.track or old.track.wearable != new.track.wearable:
                    continue
                gap = new.first_s - old.last_s
                if (
                    0 < gap <= cfg.stitch_gap_s
                    and gap < best_gap
                    and abs(old.track.rssi - new.track.rssi) <= cfg.stitch_db
                ):
                    best, best_gap = old, gap
            if best is not None:
                self._merge(best, new)

    def _merge(self, old: _Addr, new: _Addr) -> None:
        """``new`` continues ``old``'s device: its adverts so far join the old track."""
        t, n = old.track, new.track
        t.last_s = max(t.last_s, n.last_s)
        t.rssi, t.n_addr = n.rssi, n.n_addr
        if n.seg_n:
            t.seg_first_s = min(t.seg_first_s, n.seg_first_s)
            t.seg_last_s = max(t.seg_last_s, n.seg_last_s)
            t.seg_n += n.seg_n
            t.seg_rssi += n.seg_rssi
        t.move_first_s = min(t.move_first_s, n.move_first_s)
        t.move_last_s = max(t.move_last_s, n.move_last_s)
        new.track = t
        old.succeeded = True
        self.counters.stitched += 1

    # --- stop events in -------------------------------------------------------------------------------------

    def on_stop_event(self, ev: StopEvent) -> list[RidershipResult]:
        """File one stop event; returns the results it completes (visits are known one segment later)."""
        if isinstance(ev, StopPassed):
            return []  # doors closed: the segment just goes on
        t = ev.ts / 1000
        self.tick(t)
        out: list[RidershipResult] = []
        if isinstance(ev, StopArrival):
            seg, self._segment = self._segment, None
            visit = _Visit(ev.trip_id, ev.stop_id, ev.stop_sequence, ev.ts)
            if seg is not None:
                if seg.start_s >= t and self._is_handover(seg.visit, visit):
                    visit.handover_of = seg.visit  # one dwell at the terminal: decided with the next segment
                else:
                    out += self._close_segment(seg, visit, t)
            else:
                # Arrived from nowhere we observed: only at a trip's first call is it known who was aboard
                # (nobody: a trip starts empty).
                calls = self._trip_calls(ev.trip_id)
                self._prev_set = set() if calls is not None and ev.stop_sequence <= calls[0] else None
            self._visit = visit
        elif isinstance(ev, StopDeparture):
            visit = self._visit
            if visit is None or (visit.trip_id, visit.sequence) != (ev.trip_id, ev.stop_sequence):
                visit = _Visit(ev.trip_id, ev.stop_id, ev.stop_sequence, ev.ts - round(ev.dwell_s * 1000))
                self._prev_set = None
            visit.departure_ms, visit.dwell_s = ev.ts, ev.dwell_s
            self._visit = None
            calls = self._trip_calls(ev.trip_id)
            if calls is not None and ev.stop_sequence >= calls[1] and ev.dwell_s > 0:
                # The end of a block: everyone aboard alights here, nobody boards for the depot.
                out += self._visit_results(visit, set(), complete_next=True)
                self._prev_set = set()
                return out
            self._open_segment(t, visit)
        return out

    @staticmethod
    def _is_handover(ending: _Visit, starting: _Visit) -> bool:
        return ending.trip_id != starting.trip_id and ending.stop_id == starting.stop_id

    def _open_segment(self, t: float, visit: _Visit) -> None:
        for a in self._addrs.values():
            tr = a.track
            tr.seg_first_s, tr.seg_last_s, tr.seg_n, tr.seg_rssi = math.inf, -math.inf, 0, 0.0
        self._segment = _Segment(t, visit, outage=self._ble_down)

    def _in_vehicle(self, seg: _Segment, end_s: float) -> tuple[set[int], int]:
        """The counted (phone-like) tracks in the vehicle on the segment, and how many wearables were."""
        cfg = self.cfg
        span = end_s - seg.start_s
        edge = min(cfg.head_frac * span, cfg.head_max_s)
        head_end, tail_start = seg.start_s + edge, end_s - edge
        tracks = {id(a.track): a.track for a in self._addrs.values()}.values()
        aboard = [
            tr
            for tr in tracks
            if tr.seg_n >= cfg.min_adverts
            and tr.seg_first_s <= head_end
            and tr.seg_last_s >= tail_start
            and tr.seg_rssi / tr.seg_n >= cfg.in_vehicle_rssi_dbm
        ]
        return {tr.id for tr in aboard if not tr.wearable}, sum(tr.wearable for tr in aboard)

    def _close_segment(self, seg: _Segment, arrival: _Visit, t: float) -> list[RidershipResult]:
        c = self.counters
        v = seg.visit
        consecutive = arrival.trip_id == v.trip_id and arrival.sequence == v.sequence + 1
        if seg.outage or not consecutive or not 0 < t - seg.start_s <= self.cfg.max_segment_s:
            c.segments_unobserved += 1
            out = self._visit_results(v, None, complete_next=False)
            self._prev_set = None
            return out
        now_set, wearables = self._in_vehicle(seg, t)
        c.segments += 1
        out = self._visit_results(v, now_set, complete_next=True, wearables=wearables)
        out.append(
            SegmentCount(
                trip_id=v.trip_id,
                from_stop=v.stop_id,
                to_stop=arrival.stop_id,
                from_sequence=v.sequence,
                to_sequence=arrival.sequence,
                start_ms=round(seg.start_s * 1000),
                end_ms=arrival.arrival_ms,
                devices=len(now_set),
                wearables=wearables,
            )
        )
        return out

    def _visit_results(
        self, v: _Visit, after: set[int] | None, *, complete_next: bool, wearables: int | None = None
    ) -> list[RidershipResult]:
        """The visit ``v`` (and the ending visit it continues at a terminal) given the tracks aboard when it
        left (``after``; None: not observed). Updates the set carried to the next visit."""
        out: list[RidershipResult] = []
        before = self._prev_set
        ending = v.handover_of
        if after is None:
            self.counters.visits_incomplete += 1 + (ending is not None)
            if ending is not None:
                out.append(self._count(ending, None, None, None))
            out.append(self._count(v, None, None, None))
            return out
        if before is None:
            self.counters.visits_incomplete += 1 + (ending is not None)
            if ending is not None:
                out.append(self._count(ending, None, None, None))
            out.append(self._count(v, after, None, None, wearables))
            self._board_riders(after, v, known=False)
        elif ending is not None:
            stay = before & after
            out.append(self._count(ending, stay, set(), before - after))
            out += self._alight_riders(before - after, ending)
            out.append(self._count(v, after, after - before, set(), wearables))
            self._board_riders(after - before, v, known=True)
        else:
            out.append(self._count(v, after, after - before, before - after, wearables))
            out += self._alight_riders(before - after, v)
            self._board_riders(after - before, v, known=True)
        self._prev_set = after if complete_next else None
        return out

    @staticmethod
    def _count(
        v: _Visit,
        aboard: set[int] | None,
        boarded: set[int] | None,
        alighted: set[int] | None,
        wearables: int | None = None,
    ) -> VisitCount:
        return VisitCount(
            trip_id=v.trip_id,
            stop_id=v.stop_id,
            stop_sequence=v.sequence,
            arrival_ms=v.arrival_ms,
            dwell_s=v.dwell_s,
            devices=None if aboard is None else len(aboard),
            boarded=None if boarded is None else len(boarded),
            alighted=None if alighted is None else len(alighted),
            wearables=wearables,
        )

    def _board_riders(self, boarded: set[int], v: _Visit, *, known: bool) -> None:
        for tid in boarded:
            if tid in self._rider_hash:
                if known:
                    self._rider_board[tid] = (v.trip_id, v.stop_id, v.sequence, v.arrival_ms)
                else:
                    self._rider_board.pop(tid, None)

    def _alight_riders(self, alighted: set[int], v: _Visit) -> list[RidershipResult]:
        out: list[RidershipResult] = []
        for tid in sorted(alighted):
            rider = self._rider_hash.get(tid)
            if rider is None:
                continue
            board = self._rider_board.pop(tid, None)
            if board is None:
                self.counters.rider_trips_unknown_board += 1
                continue
            self.counters.rider_trips += 1
            out.append(
                RiderTrip(
                    rider=rider,
                    board_trip_id=board[0],
                    board_stop=board[1],
                    board_sequence=board[2],
                    board_ms=board[3],
                    alight_trip_id=v.trip_id,
                    alight_stop=v.stop_id,
                    alight_sequence=v.sequence,
                    alight_ms=v.arrival_ms,
                )
            )
        return out

    # --- live -----------------------------------------------------------------------------------------------

    def live_devices(self, now_s: float) -> int:
        """Devices aboard now, for the live position feed: heard recently, strong enough, and heard over at
        least ``live_moving_s`` of driving (so people at a stop or at the terminal do not count)."""
        cfg = self.cfg
        recent = now_s - cfg.live_recent_s
        tracks = {id(a.track): a.track for a in self._addrs.values()}.values()
        return sum(
            1
            for tr in tracks
            if tr.last_s >= recent
            and not tr.wearable
            and tr.rssi >= cfg.in_vehicle_rssi_dbm
            and tr.move_last_s - tr.move_first_s >= cfg.live_moving_s
        )

    def stats(self) -> dict[str, Any]:
        return {"addresses": len(self._addrs), "pending": len(self._pending)}


__all__ = [
    "Observation",
    "RiderTrip",
    "RidershipConfig",
    "RidershipCounters",
    "RidershipEstimator",
    "RidershipResult",
    "SegmentCount",
    "VisitCount",
]
