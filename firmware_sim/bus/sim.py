"""Hardware-in-the-loop simulator of one city bus's service day, for Bluetooth ridership counting (issue 5).

:class:`BusDay` plans a whole service day of one bus (one GTFS block of ``scenarios/gtfs-tsuyama-loop``)
deterministically from ``spec.seed`` and streams what the bus gateway would receive: the GPS receiver's NMEA
(``$GNRMC`` + ``$GNGGA`` at 1 Hz) and the Bluetooth LE advertisements its scanner reports (:class:`Advert`),
together with the ground truth the edge's estimate is scored against. :class:`BusSimLive` plays the stream in
scaled real time onto a pty (GPS) and a Unix stream socket (BLE adverts as JSON lines).

**The bus.** Straight lines stop to stop (local east/north metres around the first stop), accelerating at
``accel_ms2``, cruising at U(``cruise_kmh``) and braking at ``decel_ms2`` to a real standstill exactly at each
stop, so the edge's :class:`~edge.sources.bus.stops.StopDetector` (arrival = first fix within 30 m at ≤ 5 km/h,
departure = beyond 50 m) sees every visit. The straight line is shorter than the road, so the timetable has
slack: the bus aims at the scheduled arrival plus a random-walk delay and spends the slack stopped at traffic
lights (≥ 60 m from any stop: not an arrival). Dwell = max(8 s, door time + 2.5 s per passenger, each ±20 %);
alighters first, then boarders. Layovers at the terminal of up to ``max_layover_s`` are spent standing there
(boarding for the next trip; the detector hands the trip over at the arrival); a longer break (and the start
and end of the day) is spent at the depot, so the detector re-matches the next trip when the bus pulls in.
GPS: positions ± an AR(1) jitter of ``gps_jitter_m`` (clipped at 3 m), speed in knots, course, simulated UTC.

**Passengers.** Per trip and stop, Poisson boardings with mean ``boardings_per_stop`` x time-of-day profile
(morning peak around 08:00, smaller afternoon peak around 16:00) x stop weight (station, hospital, shopping,
city hall ...). Each rides U{2..15} stops, clipped at the trip's last call (the loop terminal, where everyone
left alights). They wait at the stop U(``wait_s``) before the bus comes (at the terminal: during the layover),
and walk away at 1.3 m/s after alighting; their devices advertise throughout.

**Devices.** 0/1/2 per passenger (``devices_per_passenger``): a phone, the second mostly a wearable. Each uses
a random resolvable private address (48 random bits, top two 0b01) rotating every U(5, 15) min with a random
phase (Android CDD 7.4), a payload that rotates with it (Apple Continuity, Samsung/Google, Microsoft CDP,
Garmin/Xiaomi/Fitbit; never containing the address), an advertising interval drawn per device (phones
0.2–1.0 s, wearables 0.1–0.5 s) plus a 0–10 ms advDelay. A fraction of passengers with a phone run the city
app: the phone advertises an iBeacon (Apple 0x004C, ``02 15`` + city UUID + major + minor + power) whose
major<<16|minor is a 32-bit token fixed for the day, while the address still rotates.

**False positives.** People at stops who do not board (waiting, and passers-by), static devices in homes and
shops along the route (seen while the bus passes or stands nearby), oncoming traffic (a car's 1–2 devices for a
few seconds) and, rarely, a car following the bus for 1–3 min. All with rotating random addresses.

**Signal model** (per advertisement; the gateway is mounted mid-bus at the ceiling)::

    RSSI = tx_1m − 10·n·log10(d) − walls − bodies − pocket + N(0, σ)

* ``tx_1m``: per device U(−65, −55) dBm, wearables ``wearable_tx_offset_db`` weaker.
* inside: n = 2.0, d from the seat / standing place (anywhere along a 9 m bus, ±1 m across, 1.2 m below the
  gateway) to the gateway; ``bodies`` = Poisson(``body_density`` · (occupancy − 1) · d / bus length) other
  passengers in the way, each U(3, 5) dB: the more people on board, the fewer adverts get through.
* outside: n = 2.5, d in 3-D from the device to the gateway, ``walls`` = the bus body/windows U(6, 10) dB per
  device pass (+ a car body U(6, 10) dB for traffic, + a building U(3, 12) dB for residents).
* ``pocket``: per device U(0, 10) dB (wearables U(0, 3)); σ = 4 dB shadowing.
* received only if RSSI ≥ ``sensitivity_dbm`` (−95) and the advert survives a random ``loss`` (25 %: channel
  hopping, collisions, scan window). Adverts are only generated while a device can be within reach (inside,
  waiting for the bus while it is near, within ~80 m of its track): the rest would never be received.

**Ground truth** (``truth`` and :meth:`BusDay.write_truth`, JSON lines): ``stop_visit`` per call (for a trip's
last call handed over to the next trip, departure = arrival, as the detector reports it; the next trip's first
call arrives at the same time and boards during the layover), ``segment`` per stop-to-stop drive, ``app_rider``
per app rider, and ``device`` for every address any device used while it could be heard (the privacy test
searches the gateway's output for each of them; app phones' records carry their ``token``).

Standalone: ``python -m firmware_sim.bus.sim --gps-link run/dev/ttyGPS0 --ble-socket run/ble.sock
--ground-truth bus.jsonl --rate 60`` prints the pty path.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import itertools
import json
import math
import random
import socket
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cityos.simclock import ScaledClock
from firmware_sim.bus.timetable import SimCall, Timetable
from firmware_sim.device import SimDevice, serve_until_stopped
from firmware_sim.pty import PtyLink

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
DEFAULT_FEED = SCENARIOS / "gtfs-tsuyama-loop"
DEFAULT_SPEC_PATH = SCENARIOS / "bus-day.toml"
EARTH_RADIUS_M = 6_371_008.8
KNOT_MS = 1852 / 3600
APPLE_COMPANY_ID = 0x004C  # Bluetooth SIG company id: Apple (Continuity, iBeacon)

# window frames: where a device is while a window lasts
_WORLD, _BUSFRAME, _INSIDE = 0, 1, 2
_ROLES = ("passenger", "pedestrian", "resident", "traffic", "follower")


# --- spec ---------------------------------------------------------------------------------------------------


def _hhmm_s(text: str) -> int:
    h, _, m = text.partition(":")
    if not (h.isdigit() and m.isdigit()) or int(m) >= 60:
        raise ValueError(f"{text!r} is not HH:MM")
    return int(h) * 3600 + int(m) * 60


Window = tuple[str, float]


class BusDaySpec(BaseModel):
    """What to simulate (every knob has a default; ``scenarios/bus-day.toml`` is the default scenario)."""

    model_config = ConfigDict(extra="forbid")

    feed: Path = DEFAULT_FEED
    date: dt.date = dt.date(2026, 4, 1)  # a Wednesday: the weekday timetable
    block_id: str | None = None  # default: the block of the day's first trip
    seed: int = 0
    # driving
    cruise_kmh: tuple[float, float] = (25.0, 30.0)
    accel_ms2: float = Field(default=1.0, gt=0)
    decel_ms2: float = Field(default=1.2, gt=0)
    delay_start_s: tuple[float, float] = (0.0, 20.0)
    delay_sigma_s: float = Field(default=8.0, ge=0)
    delay_max_s: float = Field(default=120.0, ge=0)
    light_min_wait_s: float = Field(default=8.0, ge=0)
    max_layover_s: float = Field(default=3600.0, ge=0)  # longer breaks are spent at the depot
    pull_in_s: float = Field(default=480.0, ge=60)  # at the terminal this long before a trip after the depot
    depot_lat: float = 35.0532
    depot_lon: float = 134.0031
    dwell_min_s: float = Field(default=8.0, ge=0)
    door_s: float = Field(default=2.0, ge=0)
    per_passenger_s: float = Field(default=2.5, ge=0)
    # gps
    gps_jitter_m: float = Field(default=1.5, ge=0)
    satellites: int = Field(default=12, ge=0, le=99)
    hdop: float = Field(default=0.8, ge=0)
    gps_dropouts: list[Window] = []
    gps_dropout_silent: bool = False
    ble_outages: list[Window] = []
    # passengers
    boardings_per_stop: float = Field(default=0.75, ge=0)
    am_peak: float = Field(default=2.6, ge=0)  # extra factor at 08:00 (Gaussian, σ 50 min)
    pm_peak: float = Field(default=1.1, ge=0)  # extra factor at 16:00 (Gaussian, σ 55 min)
    stop_weights: dict[str, float] = {"1001": 2.0, "1007": 1.8, "1008": 2.5, "1012": 1.5, "1013": 1.3}
    ride_stops: tuple[int, int] = (2, 15)
    wait_s: tuple[float, float] = (30.0, 480.0)
    walk_ms: float = Field(default=1.3, gt=0)
    devices_per_passenger: tuple[float, float, float] = (0.15, 0.65, 0.20)
    second_is_wearable: float = Field(default=0.8, ge=0, le=1)
    app_fraction: float = Field(default=0.10, ge=0, le=1)
    city_uuid: uuid.UUID = uuid.UUID("6f1c0e2a-5d3b-4f7e-9a41-7473757961ff")
    # devices
    phone_interval_s: tuple[float, float] = (0.2, 1.0)
    wearable_interval_s: tuple[float, float] = (0.1, 0.5)
    adv_delay_s: float = Field(default=0.010, ge=0)
    rotation_s: tuple[float, float] = (300.0, 900.0)
    # signal
    tx_dbm: tuple[float, float] = (-65.0, -55.0)
    wearable_tx_offset_db: float = 3.0
    n_inside: float = 2.0
    n_outside: float = 2.5
    bus_body_db: tuple[float, float] = (6.0, 10.0)
    car_body_db: tuple[float, float] = (6.0, 10.0)
    building_db: tuple[float, float] = (3.0, 12.0)
    body_db: tuple[float, float] = (3.0, 5.0)
    body_density: float = Field(default=0.4, ge=0)
    bus_length_m: float = Field(default=9.0, gt=0)
    pocket_db: tuple[float, float] = (0.0, 10.0)
    wearable_pocket_db: tuple[float, float] = (0.0, 3.0)
    shadowing_db: float = Field(default=4.0, ge=0)
    sensitivity_dbm: float = -95.0
    loss: float = Field(default=0.25, ge=0, lt=1)
    reach_m: float = Field(default=80.0, gt=0)
    # false positives
    pedestrians_per_stop_h: float = Field(default=3.0, ge=0)
    passersby_per_stop_h: float = Field(default=8.0, ge=0)
    residents_per_km: float = Field(default=30.0, ge=0)
    traffic_per_min: float = Field(default=2.0, ge=0)
    followers_per_h: float = Field(default=0.6, ge=0)

    @field_validator("gps_dropouts", "ble_outages")
    @classmethod
    def _windows(cls, v: list[Window]) -> list[Window]:
        for at, dur in v:
            _hhmm_s(at)
            if dur < 0:
                raise ValueError("a duration must be ≥ 0")
        return v

    @field_validator("devices_per_passenger")
    @classmethod
    def _probs(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or abs(sum(v) - 1) > 1e-6:
            raise ValueError("devices_per_passenger: three probabilities (0, 1, 2 devices) summing to 1")
        return v

    @classmethod
    def load(cls, path: str | Path) -> BusDaySpec:
        """A spec from TOML; a relative ``feed`` is relative to the file."""
        p = Path(path)
        with p.open("rb") as f:
            data = tomllib.load(f)
        if "feed" in data and not Path(data["feed"]).is_absolute():
            data["feed"] = str((p.parent / data["feed"]).resolve())
        return cls.model_validate(data)


# --- the advert -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Advert:
    """One received advertisement as the BlueZ scanner would report it."""

    address: str  # "AA:BB:CC:DD:EE:FF" upper-case, as BlueZ spells it
    rssi: int
    manufacturer_data: dict[int, bytes]
    service_uuids: tuple[str, ...] = ()
    address_type: str = "random"

    def to_json(self) -> str:
        """One line for the live BLE socket (company ids as decimal strings, payloads as hex)."""
        return json.dumps(
            {
                "address": self.address,
                "address_type": self.address_type,
                "rssi": self.rssi,
                "manufacturer_data": {str(k): v.hex() for k, v in self.manufacturer_data.items()},
                "service_uuids": list(self.service_uuids),
            },
            separators=(",", ":"),
        )


# --- kinematics -----------------------------------------------------------------------------------------------


def _trapezoid(dist: float, v: float, acc: float, dec: float) -> tuple[float, float, float, float]:
    """Rest to rest over ``dist``: (peak speed, accel time, cruise time, brake time)."""
    if dist <= 0:
        return 0.0, 0.0, 0.0, 0.0
    if v * v / (2 * acc) + v * v / (2 * dec) > dist:
        v = math.sqrt(2 * dist * acc * dec / (acc + dec))
    ta, td = v / acc, v / dec
    tc = (dist - v * v / (2 * acc) - v * v / (2 * dec)) / v
    return v, ta, max(tc, 0.0), td


class _Motion:
    """The bus's day as constant-acceleration pieces along straight lines; evaluated with numpy."""

    def __init__(self, x: float, y: float, t: float, acc: float, dec: float) -> None:
        self.x, self.y, self.t = x, y, t
        self.ux, self.uy = 0.0, 1.0
        self.acc, self.dec = acc, dec
        self.pieces: list[tuple[float, float, float, float, float, float, float]] = []

    def _piece(self, dur: float, v0: float, a: float) -> None:
        if dur <= 0:
            return
        self.pieces.append((self.t, self.x, self.y, self.ux, self.uy, v0, a))
        s = v0 * dur + 0.5 * a * dur * dur
        self.x += self.ux * s
        self.y += self.uy * s
        self.t += dur

    def wait_until(self, t1: float) -> None:
        self._piece(t1 - self.t, 0.0, 0.0)

    def drive_time(self, dist: float, v: float) -> float:
        _, ta, tc, td = _trapezoid(dist, v, self.acc, self.dec)
        return ta + tc + td

    def drive(self, bx: float, by: float, v: float, lights: list[tuple[float, float]] | None = None) -> None:
        """To (bx, by), stopping at ``lights`` = [(distance along, wait s)] on the way; ends at rest there."""
        dx, dy = bx - self.x, by - self.y
        dist = math.hypot(dx, dy)
        if dist < 1e-6:
            return
        self.ux, self.uy = dx / dist, dy / dist
        done = 0.0
        for s, wait in [*sorted(lights or ()), (dist, 0.0)]:
            vp, ta, tc, td = _trapezoid(s - done, v, self.acc, self.dec)
            self._piece(ta, 0.0, self.acc)
            self._piece(tc, vp, 0.0)
            self._piece(td, vp, -self.dec)
            done = s
            if wait > 0:
                self.wait_until(self.t + wait)
        self.x, self.y = bx, by  # no drift from rounding

    def arrays(self) -> dict[str, np.ndarray]:
        a = np.array([*self.pieces, (self.t, self.x, self.y, self.ux, self.uy, 0.0, 0.0)], dtype=float)
        return {k: a[:, i] for i, k in enumerate(("t0", "x0", "y0", "ux", "uy", "v0", "a"))}


def _eval(m: dict[str, np.ndarray], t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, speed, piece index) of the bus at times ``t``."""
    i = np.clip(np.searchsorted(m["t0"], t, "right") - 1, 0, len(m["t0"]) - 1)
    dt = np.maximum(t - m["t0"][i], 0.0)
    v0, a = m["v0"][i], m["a"][i]
    if len(m["t0"]) > 1:
        dt = np.where(a < 0, np.minimum(dt, v0 / np.where(a < 0, -a, 1.0)), dt)
    s = v0 * dt + 0.5 * a * dt * dt
    return m["x0"][i] + m["ux"][i] * s, m["y0"][i] + m["uy"][i] * s, np.maximum(v0 + a * dt, 0.0), i


# --- NMEA -----------------------------------------------------------------------------------------------------


def _nmea(body: str) -> bytes:
    """``$body*hh`` CR LF; the XOR checksum folded over a big int (a whole day is 80k sentences)."""
    raw = body.encode("ascii")
    x, n = int.from_bytes(raw, "little"), len(raw)
    while n > 1:
        h = (n + 1) // 2
        x = (x & ((1 << (8 * h)) - 1)) ^ (x >> (8 * h))
        n = h
    return b"$" + raw + f"*{x:02X}\r\n".encode("ascii")


def _ddmm(value: float, deg_digits: int) -> str:
    v = abs(value)
    deg = int(v)
    minutes = round((v - deg) * 60, 5)
    if minutes >= 60:
        deg, minutes = deg + 1, minutes - 60
    return f"{deg:0{deg_digits}d}{minutes:08.5f}"


# --- payloads -----------------------------------------------------------------------------------------------

_PHONE_KINDS = ("apple", "apple", "samsung", "google", "android_cdp")
_WEARABLE_KINDS = ("apple_watch", "garmin", "xiaomi", "fitbit")
_FAST_PAIR = "0000fe2c-0000-1000-8000-00805f9b34fb"
_GOOGLE_FEF3 = "0000fef3-0000-1000-8000-00805f9b34fb"
_FITBIT = "adabfb00-6e7d-4601-bda2-bffaa68956ba"


def _payload(kind: str, r: random.Random) -> tuple[dict[int, bytes], tuple[str, ...]]:
    """Manufacturer data / service UUIDs typical of the device kind; random parts rotate with the address."""

    def rb(n: int) -> bytes:
        return r.randbytes(n)

    if kind in ("apple", "apple_watch"):
        if kind == "apple" and r.random() < 0.3:
            return {APPLE_COMPANY_ID: bytes([0x0C, 0x0E]) + rb(14)}, ()  # Handoff
        return {
            APPLE_COMPANY_ID: bytes([0x10, 0x05, r.choice((0x01, 0x03, 0x07, 0x1B))]) + rb(4)
        }, ()  # Nearby
    if kind == "samsung":
        return {0x0075: bytes([0x42, 0x09, 0x81, 0x02]) + rb(12)}, ()
    if kind == "google":
        return {0x00E0: rb(r.randint(10, 18))}, (_GOOGLE_FEF3,)
    if kind == "android_cdp":
        return {0x0006: bytes([0x01, 0x09, 0x20, 0x02]) + rb(22)}, ()  # Microsoft CDP (Phone Link)
    if kind == "garmin":
        return {0x0087: rb(8)}, ()
    if kind == "xiaomi":
        return {0x038F: rb(12)}, ()
    return {}, (_FITBIT,)


def _ibeacon(city: uuid.UUID, token: int, power: int = -59) -> dict[int, bytes]:
    return {
        APPLE_COMPANY_ID: bytes([0x02, 0x15])
        + city.bytes
        + token.to_bytes(4, "big")
        + power.to_bytes(1, "big", signed=True)
    }


def _address(r: random.Random) -> tuple[str, bytes]:
    raw = bytearray(r.randbytes(6))
    raw[0] = (raw[0] & 0x3F) | 0x40  # resolvable private address: top two bits 0b01
    return ":".join(f"{b:02X}" for b in raw), bytes(raw)


# --- the day --------------------------------------------------------------------------------------------------


@dataclass
class _Device:
    role: str
    wearable: bool
    kind: str  # payload kind; "app" = the city app's iBeacon
    tx: float
    pocket: float
    interval: float
    token: int | None = None
    epochs: np.ndarray | None = None  # rotation boundaries (epoch s)
    first_addr: int = 0  # index of epoch 0's address in the address table


@dataclass
class _Win:
    dev: int
    t0: float
    t1: float
    frame: int
    px: float
    py: float
    vx: float = 0.0
    vy: float = 0.0
    tref: float = 0.0
    dz: float = 1.4
    extra_db: float = 0.0


@dataclass
class _Pax:
    trip: int
    board_seq: int
    alight_seq: int
    board_t: float = 0.0
    alight_t: float = 0.0
    wait_from: float = 0.0


class BusDay:
    """One bus's service day, planned at construction (deterministic from ``spec.seed``); see the module docstring."""

    def __init__(self, spec: BusDaySpec | None = None) -> None:
        self.spec = spec = spec or BusDaySpec()
        self.feed = Timetable(spec.feed)
        trips = self.feed.trips_on(spec.date)
        if not trips:
            raise ValueError(f"no trips on {spec.date} in {spec.feed}")
        block = spec.block_id if spec.block_id is not None else trips[0].block_id
        self.trips = [t for t in trips if t.block_id == block] if block else trips[:1]
        if not self.trips:
            raise ValueError(f"block {block!r} has no trips on {spec.date}")
        self.day0 = self.feed.service_day_ms(spec.date) / 1000
        first = self.feed.stop(self.feed.stop_times_of(self.trips[0].id)[0].stop_id)
        self._lat0, self._lon0 = first.lat, first.lon
        self._kx = EARTH_RADIUS_M * math.pi / 180 * math.cos(math.radians(self._lat0))
        self._ky = EARTH_RADIUS_M * math.pi / 180
        self.truth: list[dict[str, Any]] = []
        self._devices: list[_Device] = []
        self._wins: list[_Win] = []
        self._addr: list[str] = []
        self._mfr: list[dict[int, bytes]] = []
        self._uuids: list[tuple[str, ...]] = []
        self._plan()

    # --- geometry ---
    def _xy(self, lat: float, lon: float) -> tuple[float, float]:
        return (lon - self._lon0) * self._kx, (lat - self._lat0) * self._ky

    def _latlon(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._lat0 + y / self._ky, self._lon0 + x / self._kx

    def _stop_xy(self, stop_id: str) -> tuple[float, float]:
        s = self.feed.stop(stop_id)
        return self._xy(s.lat, s.lon)

    # --- planning ---
    def _plan(self) -> None:
        spec = self.spec
        rng = random.Random(f"bus-day:{spec.seed}")
        pax_by_trip = self._plan_passengers(random.Random(f"bus-pax:{spec.seed}"))
        depot = self._xy(spec.depot_lat, spec.depot_lon)
        times = [self.feed.stop_times_of(t.id) for t in self.trips]
        t_first = self.day0 + times[0][0].departure_s
        start = math.floor(t_first - spec.pull_in_s - 420)
        mo = _Motion(*depot, float(start), spec.accel_ms2, spec.decel_ms2)
        self._visits: list[dict[str, Any]] = []
        at_terminal_since: float | None = None
        delay = rng.uniform(*spec.delay_start_s)
        for k, (trip, calls) in enumerate(zip(self.trips, times, strict=True)):
            sched0 = self.day0 + calls[0].departure_s
            if at_terminal_since is None:  # from the depot: pull in before the trip
                mo.wait_until(max(mo.t, sched0 - spec.pull_in_s - mo.drive_time(
                    math.dist((mo.x, mo.y), self._stop_xy(calls[0].stop_id)), 7.0) - 5))  # fmt: skip
                mo.drive(*self._stop_xy(calls[0].stop_id), 7.0)
                at_terminal_since = mo.t
            delay = min(max(delay, -15.0), spec.delay_max_s)
            pax = pax_by_trip[k]
            self._run_trip(k, trip.id, calls, pax, mo, at_terminal_since, rng, delay)
            delay += rng.gauss(0, spec.delay_sigma_s)
            arr_end = self._visits[-1]["arrival"]
            nxt = self.day0 + times[k + 1][0].departure_s if k + 1 < len(times) else math.inf
            if nxt - arr_end <= spec.max_layover_s:
                at_terminal_since = arr_end
                self._visits[-1]["departure"] = arr_end  # handover: the detector closes the trip at arrival
            else:  # to the depot (breaks longer than a layover, and the end of the day)
                self._visits[-1]["departure"] = mo.t
                mo.drive(*depot, 7.0)
                at_terminal_since = None
        mo.wait_until(mo.t + 60)
        self._start_s = float(start)
        self._end_s = float(math.floor(mo.t))
        self._m = mo.arrays()
        self._track()
        self._occupancy(pax_by_trip)
        self._passenger_devices(pax_by_trip, rng)
        self._false_positives()
        self._assign_addresses()
        self._windows_arrays()
        self._write_truth_records(pax_by_trip)
        self._gps_out_w = self._dropout(spec.gps_dropouts)
        self._dmy: dict[int, str] = {}

    def _demand(self, t_local_s: float, stop_id: str) -> float:
        s = self.spec
        h = t_local_s / 3600
        prof = (
            1
            + s.am_peak * math.exp(-(((h - 8.0) / 0.85) ** 2))
            + s.pm_peak * math.exp(-(((h - 16.0) / 0.9) ** 2))
        )
        return s.boardings_per_stop * prof * s.stop_weights.get(stop_id, 1.0)

    def _plan_passengers(self, r: random.Random) -> list[list[_Pax]]:
        out: list[list[_Pax]] = []
        lo, hi = self.spec.ride_stops
        for k, trip in enumerate(self.trips):
            calls = self.feed.stop_times_of(trip.id)
            n = len(calls)
            pax: list[_Pax] = []
            for i, c in enumerate(calls[:-1]):
                lam = self._demand(c.departure_s, c.stop_id)
                for _ in range(_poisson(r, lam)):
                    pax.append(_Pax(k, i, min(i + r.randint(lo, hi), n - 1)))
            out.append(pax)
        return out

    def _run_trip(
        self, k: int, trip_id: str, calls: tuple[SimCall, ...], pax: list[_Pax], mo: _Motion,
        terminal_since: float, rng: random.Random, delay: float,
    ) -> None:  # fmt: skip
        spec = self.spec
        n = len(calls)
        boards: dict[int, list[_Pax]] = {}
        alights: dict[int, list[_Pax]] = {}
        for p in pax:
            boards.setdefault(p.board_seq, []).append(p)
            alights.setdefault(p.alight_seq, []).append(p)
        for i, c in enumerate(calls):
            if i == 0:
                arr = terminal_since
                sched_dep = self.day0 + c.departure_s + rng.uniform(0, 10)
                bs = boards.get(0, [])
                # they come during the layover and board at once (one at a time at the door)
                t_door = arr + spec.door_s
                for p in sorted(bs, key=lambda _: rng.random()):
                    come = rng.uniform(max(arr - 120, sched_dep - spec.wait_s[1]), sched_dep - 15)
                    p.wait_from = come
                    t_door = max(t_door, come + 5) + spec.per_passenger_s * rng.uniform(0.8, 1.2)
                    p.board_t = t_door
                dep = max(sched_dep, t_door + 3, arr + spec.dwell_min_s)
                mo.wait_until(dep)
                self._visits.append({"k": k, "trip": trip_id, "i": i, "call": c, "arrival": arr, "departure": dep,
                                     "b": len(bs), "a": 0})  # fmt: skip
                continue
            # drive from the previous stop, spending the timetable's slack at traffic lights
            prev = calls[i - 1]
            a_xy, b_xy = (mo.x, mo.y), self._stop_xy(c.stop_id)
            dist = math.dist(a_xy, b_xy)
            v = rng.uniform(*spec.cruise_kmh) / 3.6
            delay = min(max(delay + rng.gauss(0, spec.delay_sigma_s / 3), -15.0), spec.delay_max_s)
            target = self.day0 + c.arrival_s + delay
            slack = target - mo.t - mo.drive_time(dist, v)
            penalty = v / (2 * spec.accel_ms2) + v / (2 * spec.decel_ms2)
            lights: list[tuple[float, float]] = []
            room = dist - 120
            if slack > spec.light_min_wait_s + penalty and room > 0:
                nl = max(1, min(int(room // 80) + 1, math.ceil(slack / 60)))
                while nl > 1 and (slack - nl * penalty) / nl < spec.light_min_wait_s:
                    nl -= 1
                wait = (slack - nl * penalty) / nl
                if wait >= spec.light_min_wait_s:
                    pos = sorted(60 + room * (j + rng.uniform(0.1, 0.9)) / nl for j in range(nl))
                    lights = [(s, wait) for s in pos]
            del prev
            mo.drive(*b_xy, v, lights)
            arr = mo.t
            al, bs = alights.get(i, []), boards.get(i, []) if i < n - 1 else []
            t_door = arr + spec.door_s
            for p in al:
                t_door += spec.per_passenger_s * rng.uniform(0.8, 1.2)
                p.alight_t = t_door
            for p in bs:
                t_door += spec.per_passenger_s * rng.uniform(0.8, 1.2)
                p.board_t = t_door
                p.wait_from = arr - rng.uniform(*spec.wait_s)
            dep = max(arr + spec.dwell_min_s, t_door + spec.dwell_min_s - spec.door_s)  # 8 s + 2.5 s each
            if i < n - 1:
                mo.wait_until(dep)
            self._visits.append({"k": k, "trip": trip_id, "i": i, "call": c, "arrival": arr,
                                 "departure": dep, "b": len(bs), "a": len(al)})  # fmt: skip
        # at the last call everybody is off once the doors have let them out
        mo.wait_until(max(mo.t, self._visits[-1]["arrival"] + spec.dwell_min_s,
                          max((p.alight_t for p in alights.get(n - 1, [])), default=0.0) + 1.0))  # fmt: skip

    def _track(self) -> None:
        """The bus at every GPS second (true position, speed), and the jittered fix the receiver reports."""
        spec = self.spec
        self._ts = np.arange(self._start_s, self._end_s + 1, 1.0)
        x, y, v, idx = _eval(self._m, self._ts)
        self._tx, self._ty, self._tv = x, y, v
        g = np.random.default_rng([spec.seed, 77])
        n = len(self._ts)
        rho = 0.9
        e = g.normal(0, spec.gps_jitter_m * math.sqrt(1 - rho * rho), (n, 2))
        j = np.empty_like(e)
        acc = np.zeros(2)
        for i in range(n):  # AR(1): GPS error wanders slowly rather than jumping each second
            acc = rho * acc + e[i]
            j[i] = acc
        j = np.clip(j, -3.0, 3.0)
        self._lat, self._lon = self._latlon(x + j[:, 0], y + j[:, 1])
        spd = np.where(v > 0.3, v + g.normal(0, 0.1, n), np.abs(g.normal(0, 0.04, n)))
        self._knots = np.maximum(spd, 0) / KNOT_MS
        self._course = (np.degrees(np.arctan2(self._m["ux"][idx], self._m["uy"][idx])) + 360) % 360
        # plain floats for the per-second formatting (numpy scalars format several times slower)
        self._pos_l = [
            f"{_ddmm(la, 2)},{'N' if la >= 0 else 'S'},{_ddmm(lo, 3)},{'E' if lo >= 0 else 'W'}"
            for la, lo in zip(self._lat.tolist(), self._lon.tolist(), strict=True)
        ]
        self._gga_tail = f"1,{spec.satellites:02d},{spec.hdop:.1f},150.0,M,30.0,M,,"
        self._knots_l, self._course_l = self._knots.tolist(), self._course.tolist()

    def _occupancy(self, pax_by_trip: list[list[_Pax]]) -> None:
        ev = sorted(
            [(p.board_t, 1) for ps in pax_by_trip for p in ps]
            + [(p.alight_t, -1) for ps in pax_by_trip for p in ps]
        )
        self._occ_t = np.array([-math.inf] + [t for t, _ in ev])
        self._occ_v = np.cumsum([0] + [d for _, d in ev]).astype(float)

    def occupancy_at(self, t: float) -> int:
        """Passengers on board at epoch second ``t`` (ground truth)."""
        return int(self._occ_v[np.searchsorted(self._occ_t, t, "right") - 1])

    def bus_xy(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(t, self._ts, self._tx), np.interp(t, self._ts, self._ty)

    def _new_device(self, role: str, r: random.Random, wearable: bool = False) -> int:
        s = self.spec
        kind = r.choice(_WEARABLE_KINDS if wearable else _PHONE_KINDS)
        tx = r.uniform(*s.tx_dbm) - (s.wearable_tx_offset_db if wearable else 0.0)
        pocket = r.uniform(*(s.wearable_pocket_db if wearable else s.pocket_db))
        interval = r.uniform(*(s.wearable_interval_s if wearable else s.phone_interval_s))
        self._devices.append(_Device(role, wearable, kind, tx, pocket, interval))
        return len(self._devices) - 1

    def _n_devices(self, r: random.Random) -> int:
        p0, p1, _ = self.spec.devices_per_passenger
        u = r.random()
        return 0 if u < p0 else 1 if u < p0 + p1 else 2

    def _passenger_devices(self, pax_by_trip: list[list[_Pax]], r0: random.Random) -> None:
        s = self.spec
        r = random.Random(f"bus-devices:{s.seed}")
        self._app_riders: list[tuple[_Pax, int]] = []
        for k, ps in enumerate(pax_by_trip):
            calls = self.feed.stop_times_of(self.trips[k].id)
            for p in ps:
                nd = self._n_devices(r)
                bx, by = self._stop_xy(calls[p.board_seq].stop_id)
                ax, ay = self._stop_xy(calls[p.alight_seq].stop_id)
                ang, rad = r.uniform(0, 2 * math.pi), r.uniform(2, 8)
                wx, wy = bx + rad * math.cos(ang), by + rad * math.sin(ang)
                seat = (r.uniform(-s.bus_length_m / 2, s.bus_length_m / 2), r.uniform(-1, 1))
                walk = r.uniform(0, 2 * math.pi)
                for j in range(nd):
                    wear = j == 1 and r.random() < s.second_is_wearable
                    d = self._new_device("passenger", r, wear)
                    dev = self._devices[d]
                    if j == 0 and r.random() < s.app_fraction:
                        dev.kind, dev.token = "app", r.getrandbits(32)
                        self._app_riders.append((p, dev.token))
                    wall = r.uniform(*s.bus_body_db)
                    # waiting: only while the bus can be near (it comes within reach ~20 s before arriving;
                    # at the terminal it stands there during the layover)
                    arr = self._arrival_near(p)
                    w0 = max(p.wait_from, arr - 40)
                    if w0 < p.board_t:
                        self._wins.append(_Win(d, w0, p.board_t, _WORLD, wx, wy, extra_db=wall))
                    self._wins.append(_Win(d, p.board_t, p.alight_t, _INSIDE, seat[0], seat[1], dz=1.2))
                    self._wins.append(_Win(d, p.alight_t, p.alight_t + 75, _WORLD, ax, ay,
                                           s.walk_ms * math.cos(walk), s.walk_ms * math.sin(walk), p.alight_t,
                                           extra_db=wall))  # fmt: skip
        del r0

    def _arrival_near(self, p: _Pax) -> float:
        """When the bus reached the passenger's boarding stop (for the terminal: the start of the layover)."""
        for v in self._visits:
            if v["k"] == p.trip and v["i"] == p.board_seq:
                return float(v["arrival"])
        raise AssertionError("no visit for a passenger")

    def _near(self, x: np.ndarray, y: np.ndarray, reach: float) -> list[list[tuple[float, float]]]:
        """For points (x, y): the time windows during which the bus is within ``reach`` of each."""
        out: list[list[tuple[float, float]]] = []
        for i0 in range(0, len(x), 32):
            xs, ys = x[i0 : i0 + 32, None], y[i0 : i0 + 32, None]
            near = (self._tx[None, :] - xs) ** 2 + (self._ty[None, :] - ys) ** 2 <= reach * reach
            for row in near:
                edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
                ts = self._ts
                out.append([(float(ts[a]) - 1, float(ts[min(b, len(ts)) - 1]) + 1)
                            for a, b in zip(edges[::2], edges[1::2], strict=True)])  # fmt: skip
        return out

    def _false_positives(self) -> None:
        s = self.spec
        r = random.Random(f"bus-fp:{s.seed}")
        reach = s.reach_m
        # people at stops who do not board: waiting (static) and passing by (walking)
        stop_ids = sorted({c.stop_id for t in self.trips for c in self.feed.stop_times_of(t.id)})
        sx = np.array([self._stop_xy(i)[0] for i in stop_ids])
        sy = np.array([self._stop_xy(i)[1] for i in stop_ids])
        near = self._near(sx, sy, reach + 20)
        hours = (self._end_s - self._start_s) / 3600
        for k in range(len(stop_ids)):
            for walking, rate in ((False, s.pedestrians_per_stop_h), (True, s.passersby_per_stop_h)):
                for _ in range(_poisson(r, rate * hours)):
                    t0 = r.uniform(self._start_s, self._end_s)
                    ang = r.uniform(0, 2 * math.pi)
                    if walking:
                        off, head = r.uniform(2, 15), ang + math.pi / 2
                        vx, vy = s.walk_ms * math.cos(head), s.walk_ms * math.sin(head)
                        px, py = sx[k] + off * math.cos(ang), sy[k] + off * math.sin(ang)
                        t1, tref = t0 + 120, t0 + 60
                        px, py = px, py
                    else:
                        rad = r.uniform(3, 20)
                        px, py, vx, vy = sx[k] + rad * math.cos(ang), sy[k] + rad * math.sin(ang), 0.0, 0.0
                        t1, tref = t0 + r.uniform(60, 600), t0
                    spans = [(max(a, t0), min(b, t1)) for a, b in near[k] if a < t1 and b > t0]
                    if not spans:
                        continue
                    wall = r.uniform(*s.bus_body_db)
                    for j in range(self._n_devices(r)):
                        d = self._new_device("pedestrian", r, j == 1 and r.random() < s.second_is_wearable)
                        for a, b in spans:
                            self._wins.append(_Win(d, a, b, _WORLD, px, py, vx, vy, tref, extra_db=wall))
        # residents: static devices in homes and shops along the legs
        legs: set[tuple[str, str]] = set()
        for t in self.trips:
            calls = self.feed.stop_times_of(t.id)
            legs.update((a.stop_id, b.stop_id) for a, b in itertools.pairwise(calls))
        pts: list[tuple[float, float]] = []
        for a, b in sorted(legs):
            (ax, ay), (bx, by) = self._stop_xy(a), self._stop_xy(b)
            length = math.hypot(bx - ax, by - ay)
            for _ in range(_poisson(r, s.residents_per_km * length / 1000)):
                f, lat = r.random(), r.choice((-1, 1)) * r.uniform(8, 40)
                nx, ny = -(by - ay) / length, (bx - ax) / length
                pts.append((ax + (bx - ax) * f + nx * lat, ay + (by - ay) * f + ny * lat))
        if pts:
            res_near = self._near(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]), reach)
            for (px, py), spans in zip(pts, res_near, strict=True):
                d = self._new_device("resident", r, r.random() < 0.3)
                for a, b in spans:
                    extra = r.uniform(*s.bus_body_db) + r.uniform(*s.building_db)
                    self._wins.append(_Win(d, a, b, _WORLD, px, py, dz=0.5, extra_db=extra))
        # traffic: oncoming cars and, rarely, one following the bus (bus frame: x ahead, y left)
        moving = self._ts[self._tv > 3.0]
        for _ in range(_poisson(r, s.traffic_per_min * len(moving) / 60)):
            tc = float(moving[r.randrange(len(moving))]) + r.random()
            vr = float(np.interp(tc, self._ts, self._tv)) + r.uniform(8, 14)
            half = reach / vr
            wall = r.uniform(*s.bus_body_db) + r.uniform(*s.car_body_db)
            lat = -r.uniform(3, 5)
            for _j in range(1 if r.random() < 0.6 else 2):
                d = self._new_device("traffic", r)
                self._wins.append(_Win(d, tc - half, tc + half, _BUSFRAME, 0.0, lat, -vr, 0.0, tc, 1.0, wall))
        for _ in range(_poisson(r, s.followers_per_h * len(moving) / 3600)):
            t0 = float(moving[r.randrange(len(moving))])
            dur = r.uniform(60, 180)
            wall = r.uniform(*s.bus_body_db) + r.uniform(*s.car_body_db)
            x0, vx = -r.uniform(8, 25), r.uniform(-0.05, 0.05)
            for _j in range(1 if r.random() < 0.5 else 2):
                d = self._new_device("follower", r)
                self._wins.append(
                    _Win(d, t0, t0 + dur, _BUSFRAME, x0, r.uniform(-0.5, 0.5), vx, 0.0, t0, 1.0, wall)
                )

    def _assign_addresses(self) -> None:
        """Rotation epochs and an address + payload for each epoch in which a device can be heard."""
        s = self.spec
        r = random.Random(f"bus-addr:{s.seed}")
        span: dict[int, list[tuple[float, float]]] = {}
        for w in self._wins:
            span.setdefault(w.dev, []).append((w.t0, w.t1))
        self._used: list[tuple[int, int]] = []  # (address index, device)
        for d, dev in enumerate(self._devices):
            wins = span.get(d, [])
            if not wins:
                dev.epochs = np.array([-math.inf])
                dev.first_addr = -1
                continue
            lo, hi = min(a for a, _ in wins), max(b for _, b in wins)
            b = [lo - r.uniform(0, s.rotation_s[1])]  # random phase
            while b[-1] <= hi:
                b.append(b[-1] + r.uniform(*s.rotation_s))
            bounds = np.array(b[:-1])
            bounds[0] = -math.inf
            dev.epochs = bounds
            dev.first_addr = len(self._addr)
            used = set()
            for a, z in wins:
                i0 = int(np.searchsorted(bounds, a, "right") - 1)
                i1 = int(np.searchsorted(bounds, z, "right") - 1)
                used.update(range(i0, i1 + 1))
            for e in range(len(bounds)):
                addr, raw = _address(r)
                if dev.kind == "app":
                    assert dev.token is not None
                    mfr, uu = _ibeacon(s.city_uuid, dev.token), ()
                else:
                    while True:
                        mfr, uu = _payload(dev.kind, r)
                        if not any(raw in v or raw[::-1] in v for v in mfr.values()):
                            break
                self._addr.append(addr)
                self._mfr.append(mfr)
                self._uuids.append(uu)
                if e in used:
                    self._used.append((dev.first_addr + e, d))

    def _windows_arrays(self) -> None:
        self._wins.sort(key=lambda w: (w.t0, w.dev))

    def _write_truth_records(self, pax_by_trip: list[list[_Pax]]) -> None:
        out = self.truth
        occ = 0
        prev: dict[str, Any] | None = None
        ms = _ms
        for v in self._visits:
            if v["i"] == 0:
                occ = 0
            occ += v["b"] - v["a"]
            c: SimCall = v["call"]
            if prev is not None and prev["k"] == v["k"]:
                out.append({"event": "segment", "trip_id": v["trip"], "from_sequence": prev["call"].sequence,
                            "to_sequence": c.sequence, "from_stop": prev["call"].stop_id, "to_stop": c.stop_id,
                            "departure_ms": ms(prev["departure"]), "arrival_ms": ms(v["arrival"]),
                            "occupancy": prev["occ"]})  # fmt: skip
            v["occ"] = occ
            out.append({"event": "stop_visit", "trip_id": v["trip"], "stop_id": c.stop_id, "stop_sequence": c.sequence,
                        "arrival_ms": ms(v["arrival"]), "departure_ms": ms(v["departure"]), "boardings": v["b"],
                        "alightings": v["a"], "occupancy_after": occ})  # fmt: skip
            prev = v
        for p, token in self._app_riders:
            calls = self.feed.stop_times_of(self.trips[p.trip].id)
            tid = self.trips[p.trip].id
            b, a = calls[p.board_seq], calls[p.alight_seq]
            out.append({"event": "app_rider", "token": token, "board_trip_id": tid, "board_sequence": b.sequence,
                        "board_stop": b.stop_id, "alight_trip_id": tid, "alight_sequence": a.sequence,
                        "alight_stop": a.stop_id, "board_ms": ms(p.board_t), "alight_ms": ms(p.alight_t)})  # fmt: skip
        for ai, d in self._used:
            rec: dict[str, Any] = {
                "event": "device",
                "address": self._addr[ai],
                "role": self._devices[d].role,
            }
            if self._devices[d].token is not None:
                rec["token"] = self._devices[d].token
            out.append(rec)
        self.passengers = sum(len(ps) for ps in pax_by_trip)

    # --- public -----------------------------------------------------------------------------------------------
    @property
    def start_s(self) -> float:
        """The service day's first GPS second (epoch s)."""
        return self._start_s

    @property
    def end_s(self) -> float:
        """The service day's last GPS second (epoch s)."""
        return self._end_s

    def write_truth(self, path: str | Path) -> None:
        with Path(path).open("w", encoding="utf-8") as f:
            for rec in self.truth:
                f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")

    def _dropout(self, windows: list[Window]) -> list[tuple[float, float]]:
        return [(self.day0 + _hhmm_s(at), self.day0 + _hhmm_s(at) + dur) for at, dur in windows]

    def gps_sentences(self, t: int) -> bytes:
        """RMC + GGA of GPS second ``t`` (epoch s; within the day), or b"" in a silent dropout."""
        i = int(t - self._start_s)
        day, sod = divmod(int(t), 86400)
        dmy = self._dmy.get(day)
        if dmy is None:
            dmy = self._dmy[day] = f"{datetime.fromtimestamp(day * 86400, UTC):%d%m%y}"
        hms = f"{sod // 3600:02d}{sod // 60 % 60:02d}{sod % 60:02d}.00"
        if any(a <= t < b for a, b in self._gps_out_w):
            if self.spec.gps_dropout_silent:
                return b""
            return _nmea(f"GNRMC,{hms},V,,,,,,,{dmy},,,N") + _nmea(f"GNGGA,{hms},,,,,0,00,99.9,,M,,M,,")
        pos = self._pos_l[i]
        return _nmea(f"GNRMC,{hms},A,{pos},{self._knots_l[i]:.2f},{self._course_l[i]:.1f},{dmy},,,A") + _nmea(
            f"GNGGA,{hms},{pos},{self._gga_tail}"
        )

    def _adverts_of(self, wi: int, w: _Win) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, rssi, address index) of the adverts of window ``wi`` that the gateway receives."""
        s = self.spec
        dev = self._devices[w.dev]
        g = np.random.default_rng([s.seed, 1, wi])
        dur = w.t1 - w.t0
        n = int(dur / dev.interval) + 2
        if dur <= 0 or n <= 0:
            return np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64)
        t = (
            w.t0
            + g.uniform(0, dev.interval)
            + np.cumsum(np.full(n, dev.interval) + g.uniform(0, s.adv_delay_s, n))
        )
        t = t[t < w.t1]
        m = len(t)
        if w.frame == _INSIDE:
            d = math.sqrt(w.px * w.px + w.py * w.py + w.dz * w.dz)
            occ = self._occ_v[np.searchsorted(self._occ_t, t, "right") - 1]
            lam = s.body_density * np.maximum(occ - 1, 0) * d / s.bus_length_m
            bodies = g.poisson(lam)
            loss = bodies * g.uniform(*s.body_db, m)
            rssi = dev.tx - 10 * s.n_inside * math.log10(max(d, 0.5)) - loss
        else:
            px, py = w.px + w.vx * (t - w.tref), w.py + w.vy * (t - w.tref)
            if w.frame == _WORLD:
                bx, by = self.bus_xy(t)
                px, py = px - bx, py - by
            d = np.sqrt(px * px + py * py + w.dz * w.dz)
            rssi = dev.tx - 10 * s.n_outside * np.log10(np.maximum(d, 0.5)) - w.extra_db
        rssi = rssi - dev.pocket + g.normal(0, s.shadowing_db, m)
        keep = (rssi >= s.sensitivity_dbm) & (g.random(m) >= s.loss)
        t, rssi = t[keep], rssi[keep]
        assert dev.epochs is not None
        ai = dev.first_addr + np.searchsorted(dev.epochs, t, "right") - 1
        return t, np.rint(rssi).astype(np.int64), ai

    def stream(
        self, start_s: float | None = None, end_s: float | None = None
    ) -> Iterator[tuple[float, bytes | Advert]]:
        """Time-ordered (epoch s, NMEA bytes of one GPS second | received Advert) in ``[start_s, end_s)``.

        Lazy: adverts are generated per device window when the window begins (vectorised, seeded per window, so
        any sub-range is a slice of the whole day's stream) and merged with the GPS seconds in 60 s chunks.
        """
        lo = self._start_s if start_s is None else max(float(start_s), self._start_s)
        hi = self._end_s + 1 if end_s is None else min(float(end_s), self._end_s + 1)
        outages = self._dropout(self.spec.ble_outages)
        wins = self._wins
        starts = [w.t0 for w in wins]
        # windows that began before lo and are still open
        wi = 0
        pend_t: list[np.ndarray] = []
        pend_r: list[np.ndarray] = []
        pend_a: list[np.ndarray] = []
        addr, mfr, uu = self._addr, self._mfr, self._uuids
        chunk = 60.0
        c0 = lo
        while c0 < hi:
            c1 = min(c0 + chunk, hi)
            while wi < len(wins) and starts[wi] < c1:
                w = wins[wi]
                if w.t1 > lo:
                    t, r, a = self._adverts_of(wi, w)
                    if len(t):
                        pend_t.append(t)
                        pend_r.append(r)
                        pend_a.append(a)
                wi += 1
            if pend_t:
                T = np.concatenate(pend_t)
                R = np.concatenate(pend_r)
                A = np.concatenate(pend_a)
                now = c1 > T
                rest = ~now
                pend_t, pend_r, pend_a = [T[rest]], [R[rest]], [A[rest]]
                sel = now & (lo <= T)
                for a0, b0 in outages:
                    sel &= (a0 > T) | (b0 <= T)
                T, R, A = T[sel], R[sel], A[sel]
                order = np.argsort(T, kind="stable")
                tl, rl, al = T[order].tolist(), R[order].tolist(), A[order].tolist()
            else:
                tl, rl, al = [], [], []
            g0 = math.ceil(c0)
            gps = [float(x) for x in range(g0, math.ceil(c1)) if x <= self._end_s]
            # build the chunk's events in bulk (a comprehension is much cheaper than a yield per advert)
            evs: list[tuple[float, bytes | Advert]] = [
                (t, Advert(addr[a], r, mfr[a], uu[a])) for t, r, a in zip(tl, rl, al, strict=True)
            ]
            j = 0
            for g in gps:
                k = bisect.bisect_left(tl, g, j)
                yield from evs[j:k]
                j = k
                data = self.gps_sentences(int(g))
                if data:
                    yield g, data
            yield from evs[j:]
            c0 = c1

    def summary(self) -> dict[str, Any]:
        """Figures of the planned day: trips, passengers, occupancy while in service, devices, addresses."""
        segs = [r for r in self.truth if r["event"] == "segment"]
        occ = [r["occupancy"] for r in segs]
        w = [(r["arrival_ms"] - r["departure_ms"]) / 1000 for r in segs]
        roles: dict[str, int] = {}
        for r in self.truth:
            if r["event"] == "device":
                roles[r["role"]] = roles.get(r["role"], 0) + 1
        return {
            "trips": len(self.trips),
            "passengers": self.passengers,
            "app_riders": len(self._app_riders),
            "mean_occupancy": round(sum(o * t for o, t in zip(occ, w, strict=True)) / max(sum(w), 1e-9), 2),
            "max_occupancy": max(occ, default=0),
            "devices": len(self._devices),
            "addresses_by_role": roles,
            "start": datetime.fromtimestamp(self.start_s, UTC).isoformat(),
            "end": datetime.fromtimestamp(self.end_s, UTC).isoformat(),
        }


def _poisson(r: random.Random, lam: float) -> int:
    """Poisson draw from a stdlib Random (Knuth for small means, normal approximation for large)."""
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(r.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, r.random()
    while p > limit:
        k += 1
        p *= r.random()
    return k


def _ms(t: float) -> int:
    return round(t * 1000)


# --- live driver --------------------------------------------------------------------------------------------


class BusSimLive(SimDevice):
    """Plays :meth:`BusDay.stream` paced by a scaled clock: NMEA onto a pty, adverts as JSON lines to every
    client of a Unix stream socket (the gateway's simulated BLE adapter). Caught up when late, like the truck."""

    WAKE_PIPE = False  # its threads poll their stop event

    def __init__(self, day: BusDay, *, clock: ScaledClock, gps_link: Path | None, ble_socket: Path) -> None:
        super().__init__()
        self.day = day
        self.clock = clock
        self.link = PtyLink(gps_link)
        self.ble_socket = Path(ble_socket)
        self._server: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._outage_until = -math.inf
        self.gen_t = -math.inf
        self.counters = {"gps_seconds": 0, "adverts": 0, "adverts_sent": 0, "clients": 0, "outages": 0}

    @property
    def gps_port(self) -> str:
        return str(self.link.link_path) if self.link.link_path else (self.link.port or "")

    def start(self) -> str:
        """Open the pty and the socket, start playing; returns the GPS port (symlink if given, else the pty)."""
        if self.running:
            return self.gps_port
        self.link.open()
        self.ble_socket.parent.mkdir(parents=True, exist_ok=True)
        self._listen()
        for fn, name in ((self._accept, "bus-sim-accept"), (self._play, "bus-sim-play")):
            self._spawn(fn, name)
        return self.gps_port

    def _close(self) -> None:
        with self._lock:
            self._drop_clients()
            if self._server is not None:
                self._server.close()
                self._server = None
                with contextlib.suppress(FileNotFoundError):
                    self.ble_socket.unlink()
        self.link.close()


    def ble_outage(self, duration_s: float) -> None:
        """The BLE adapter is unplugged for ``duration_s`` simulated seconds: clients are closed and the socket
        is gone, so a connect fails (as with no adapter) until it is back."""
        with self._lock:
            self._outage_until = self.clock.now() + duration_s
            self._drop_clients()
            if self._server is not None:
                self._server.close()
                self._server = None
                with contextlib.suppress(FileNotFoundError):
                    self.ble_socket.unlink()
            self.counters["outages"] += 1

    def wait_until(self, t: float, timeout: float) -> bool:
        """Block until the stream has been played up to simulated epoch second ``t``."""
        deadline = time.monotonic() + timeout
        while self.gen_t < t:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # --- internals ---
    def _in_outage(self) -> bool:
        return self.clock.now() < self._outage_until

    def _drop_clients(self) -> None:
        for c in self._clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self._clients = []

    def _listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ble_socket.unlink()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(self.ble_socket))
        srv.listen(8)
        srv.settimeout(0.1)
        self._server = srv

    def _accept(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if self._server is None and not self._in_outage():
                    self._listen()  # the adapter is back
                srv = self._server
            if srv is None:
                time.sleep(0.05)
                continue
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):  # OSError: closed by ble_outage
                continue
            with self._lock:
                conn.settimeout(2.0)
                self._clients.append(conn)
                self.counters["clients"] += 1

    def _send(self, gps: bytes, lines: list[str]) -> None:
        if gps:
            self.link.write(gps)
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        with self._lock:
            if self._in_outage():
                return
            for c in list(self._clients):
                try:
                    c.sendall(data)
                except OSError:
                    c.close()
                    self._clients.remove(c)
            if self._clients:
                self.counters["adverts_sent"] += len(lines)

    def _play(self) -> None:
        start = max(self.day.start_s, self.clock.now())
        gps = bytearray()
        lines: list[str] = []
        for t, ev in self.day.stream(start):
            while not self._stopping.is_set():
                now = self.clock.now()
                if t <= now:
                    break
                self._send(bytes(gps), lines)  # flush what is due before sleeping
                gps.clear()
                lines = []
                self.gen_t = now
                time.sleep(min(self.clock.real_delay(t - now), 0.05))
            if self._stopping.is_set():
                return
            if isinstance(ev, bytes):
                gps += ev
                self.counters["gps_seconds"] += 1
            else:
                lines.append(ev.to_json())
                self.counters["adverts"] += 1
            if len(lines) >= 500 or len(gps) > 4096:
                self._send(bytes(gps), lines)
                gps.clear()
                lines = []
        self._send(bytes(gps), lines)
        self.gen_t = math.inf


# --- standalone ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m firmware_sim.bus.sim", description="Simulated city bus: GPS on a pty, "
                                "BLE adverts on a Unix socket, ground truth to a file.")  # fmt: skip
    p.add_argument(
        "--spec", type=Path, default=DEFAULT_SPEC_PATH, help="scenario TOML (default: %(default)s)"
    )
    p.add_argument("--gps-link", type=Path, default=None, help="symlink to keep to the GPS pty")
    p.add_argument("--ble-socket", type=Path, required=True, help="Unix socket path for BLE adverts")
    p.add_argument("--ground-truth", type=Path, default=None, help="JSON-lines file for the ground truth")
    p.add_argument("--rate", type=float, default=1.0, help="simulated seconds per real second (default: 1)")
    p.add_argument("--date", type=dt.date.fromisoformat, default=None, help="service day YYYY-MM-DD")
    p.add_argument(
        "--start", default=None, help="simulated local time to start at, HH:MM (default: day start)"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, help="stop after S real seconds (default: Ctrl-C)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = BusDaySpec.load(args.spec) if args.spec.exists() else BusDaySpec()
        upd: dict[str, Any] = {}
        if args.date is not None:
            upd["date"] = args.date
        if args.seed is not None:
            upd["seed"] = args.seed
        spec = spec.model_copy(update=upd)
        day = BusDay(spec)
        sim_start = day.start_s if args.start is None else day.day0 + _hhmm_s(args.start)
        clock = ScaledClock(sim_start=sim_start, real_anchor=time.time(), rate=args.rate)
        if args.ground_truth is not None:
            day.write_truth(args.ground_truth)
        live = BusSimLive(day, clock=clock, gps_link=args.gps_link, ble_socket=args.ble_socket)
    except (ValueError, OSError) as exc:
        print(f"bus sim: {exc}", file=sys.stderr)
        return 2
    return serve_until_stopped(
        "bus sim", [live], duration=args.duration, counters=lambda: live.counters,
        started=lambda: print(f"bus sim: gps {live.gps_port} ({live.link.port}), ble {args.ble_socket}; "
                              f"{json.dumps(day.summary(), ensure_ascii=False)}", flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
