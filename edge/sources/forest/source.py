"""Forest sensor stations on an RS-485 Modbus RTU bus: the gateway side (the serial adapter).

One :class:`ForestBus` per serial port, run in its own thread. It owns the port, so the bus needs no further
lock: every request, clock sync and reconnect happens in this one thread, round-robin over the bus's stations
every poll interval. The protocol is sans-I/O in :mod:`edge.sources.forest.codec`: request frames are built
there, and the bytes that come back are parsed there, once, into a verdict and a payload; the register map is
``hardware/forest-station/register-map.md``. This module only moves bytes, waits, retries and counts.

Behaviour
---------
* Each station keeps its latest sample in input registers 0..12. The bus reads that block every poll interval
  and emits one ``forest_station`` reading per *new* sample (new sample number or time), timestamped with the
  station's sample time.
* Clock: on start (and after every reconnect), then every ``clock_sync_interval_s``, the bus reads holding
  registers 0..3 (RTC, sample interval, rain resolution) and writes the gateway's time into the RTC when it is
  more than ``max_clock_skew_s`` off, timed to arrive on a second boundary (see ``_schedule_clock_write``).
  A sample with status bit 3 (RTC lost power) is not emitted (``clock_unset_skips``) and triggers an early
  clock check. Nothing is emitted from a station before its
  holding registers have been read once (the rain resolution is needed for ``rain_mm``).
* Two clocks: *data* time — the gateway's clock that station RTCs are set from and compared with — is
  :func:`edge.clock.now` (the system clock, or the simulated city's scaled clock); scheduling (poll interval,
  timeouts, backoff, ``clock_sync_interval_s``) is ``time.monotonic()`` in real seconds. Station durations (the
  sample interval, holding register 2) are in data-clock seconds and are divided by the clock's rate where they
  meet the scheduler. On a scaled clock the skew tolerance is at least ``1.5 s + rate × 0.1 s`` (what 0.1 s of
  real timing jitter becomes in simulated seconds), and the RTC write is not aimed at a second boundary once a
  simulated second is shorter than the timing that would take, so a fast clock does not make the gateway rewrite
  station clocks on every check.
* Exactly once across restarts: the per-station state (:class:`codec.StationState`: the last *emitted*
  sample's ``{sample_no, ts, tips}`` and the rolling windows of the derived values) is committed with the reading
  (``ctx.emit(reading, state=...)``). A sample whose time is not after the last emitted one is skipped, so a
  restarted agent re-reading the same sample emits nothing; ``rain_mm`` is the tips since the last emitted
  sample, so rain is right across restarts and gaps. Jumps in the sample number are counted as
  ``missed_samples``.
* Derived values (``rain_intensity_mm_h``, ``rain_cumulative_mm``, ``tilt_rate_x_deg_h``/``_y_``): computed by
  :func:`codec.next_reading` from the committed state and the sample alone, so a restarted agent and the
  catch-up from the history ring give exactly the values of an uninterrupted run. ``rain_event_dry_gap_h`` (per
  station, default 24 h) is the dry spell that ends a rain event.

The Modbus master: ours, on pyserial (not pymodbus' client)
-----------------------------------------------------------
pymodbus' sync ``ModbusSerialClient``, which this gateway used before, cannot tell a bus's faults apart: a
silent station, a bad CRC and junk before a reply all end in the same "No response received after N retries".
Its RTU framer hunts byte by byte and its first candidate with a plausible function code decides; a bad CRC
(including a junk byte that merely looks like a frame start) drops the *whole* buffer, valid reply included,
and the request is re-sent. Exact counters need the bytes, so the gateway recorded them and framed every reply
a second time, with a parser of its own that could disagree with pymodbus'. A master for three function codes
is small: now there is one parser, the codec's :class:`~edge.sources.forest.codec.ReplyReader` (sans-I/O,
tested with byte vectors), and this thin adapter over pyserial. pymodbus stays in the simulator
(``firmware_sim/forest/sim.py``), an independent peer for the tests.

* **Port.** pyserial opens the configured path (8 data bits, the configured baud rate, parity and stop bits,
  raw mode, an exclusive lock, as pymodbus opened it); bytes are read with ``os.read`` on its fd after
  ``poll()``, so an idle wait costs no wake-ups, and written with pyserial's ``write`` (write timeout
  ``timeout_s``).
* **One attempt.** Stale input (junk that arrived between frames) is read away and counted as
  ``garbage_bytes``, then the request frame is written. A byte that arrives after that look at the input
  buffer comes in with the reply and is counted there: nothing read goes uncounted. The reply's bytes go to
  the attempt's reader as they arrive, until it holds a good frame from the unit (the station will not answer
  twice; later bytes are stale input for the next request) or the reply time is up: ``timeout_s`` after the
  request was written, plus the time the request and a normal reply take on the wire at the configured baud
  rate (so ``timeout_s`` is the station's time to answer, at any baud rate). No inter-frame gap ends an
  attempt early: USB adapters deliver in latency-timer chunks (FTDI: 16 ms) that break RTU's 3.5-character gap
  at 9600 Bd and below, and noise can come before a slow reply; a damaged reply costs the rest of the reply
  time, as it did with pymodbus (which waited a full timeout after it).
* **Counting, per attempt, from its one parse:** nothing → ``timeouts``; our frame with a bad CRC →
  ``crc_errors``; anything else without a good frame (junk, a short frame, another unit's) →
  ``framing_errors``; every byte outside the accepted frame → ``garbage_bytes``. The rules are
  :class:`~edge.sources.forest.codec.ReplyReader`'s: the ones these counters have always followed
  (``codec.classify_reply``, which used to be applied to the bytes pymodbus had received).
* **Retries, as pymodbus made them:** an attempt that timed out, or brought only a damaged reply or junk, is
  re-sent, up to ``retries`` times (the RTC write: never, see ``_write_clock``); then the request fails with a
  warning. A good frame ends the request: a Modbus exception reply counts as ``exception_responses``; a frame
  with a good CRC whose data does not decode (an odd byte count), and a read reply with a good CRC but the
  wrong number of registers (checked by :func:`codec.decode_sample` and ``decode_holding``), count as
  ``framing_errors``; none of them is retried.
* **Late replies.** RTU has no transaction id: a good frame from the unit answering another function code is a
  late reply to an earlier request. It ends the request unretried, counted as its attempt's ``framing_errors``
  (its bytes as garbage) and once more for the function code mismatch, with a warning, as it was with pymodbus
  (which returned it as the response).
* **I/O errors** (adapter unplugged: EIO on ``in_waiting``/``read``/``write``, or a hang-up): the port is
  closed and reopened with backoff (0.25 s doubling to 5 s) by the configured path, so a udev symlink that now
  points elsewhere is followed; a symlink that changed under an open port also triggers a reopen
  (``port_errors``, ``reconnects``). An attempt cut short by an I/O error gets no verdict; the bytes it had
  count as garbage.
* Warnings are rate-limited: one line per cause per minute, with the number suppressed.

A station that keeps failing is polled less often (doubling backoff, never longer than half its sample
interval or 5 s), so a dead station costs the others little bus time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import serial  # pyserial
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cityos.config import DeviceId
from cityos.wire import Reading
from edge import clock
from edge.sources.base import SourceConfig, SourceContext, register
from edge.sources.common.logs import RateLimited
from edge.sources.forest import codec as codec

log = logging.getLogger(__name__)

KIND = codec.KIND
#: v2: per-station state with the derived values' windows (v1 states are migrated: windows start empty).
STATE_VERSION = 2
_OPEN_BACKOFF_MIN_S = 0.25
_OPEN_BACKOFF_MAX_S = 5.0
_STATION_BACKOFF_MAX_S = 5.0
#: Longest pause between two polls of a healthy station (see ``_sleep_until_next_sample``).
_MAX_POLL_GAP_S = 30.0
#: How often the bus checks that its port path (a udev by-id link) still leads to the device it opened: at most
#: once a second, not per poll (resolving the link is five system calls).
_PORT_CHECK_S = 1.0
#: How far from a second boundary an RTC write may still arrive.
_CLOCK_WRITE_SLACK_S = 0.1
#: Real-time jitter (request latency, thread scheduling) budgeted for the skew check on a scaled clock.
_CLOCK_JITTER_REAL_S = 0.1

COUNTERS = (
    "polls",
    "readings",
    "missed_samples",
    "recovered_samples",
    "timeouts",
    "crc_errors",
    "garbage_bytes",
    "framing_errors",
    "exception_responses",
    "port_errors",
    "reconnects",
    "clock_syncs",
    "clock_unset_skips",
    "clock_implausible_skips",
    "stale_skips",
)


# --- config -------------------------------------------------------------------------------------------------


class StationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: DeviceId
    unit: int = Field(ge=1, le=247)
    clock_sync_interval_s: float = Field(default=600.0, gt=0)
    max_clock_skew_s: float = Field(default=2.0, gt=0)
    #: A rain event (rain_cumulative_mm, 連続雨量) ends after this many hours without rain.
    rain_event_dry_gap_h: float = Field(default=codec.DEFAULT_RAIN_EVENT_DRY_GAP_H, gt=0)
    #: Where the station stands (WGS84 degrees), for the dashboards' map: sent with every reading as the values
    #: ``lat`` and ``lon`` (16 bytes a reading; a station moved by the field team shows up at once).
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)

    @model_validator(mode="after")
    def _position(self) -> StationConfig:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together: give both or neither")
        return self

    @property
    def rain_event_dry_gap_ms(self) -> int:
        return round(self.rain_event_dry_gap_h * 3_600_000)


class ForestBusConfig(SourceConfig):
    type: Literal["forest_station"]
    port: str = Field(min_length=1, description='serial device path, e.g. "/dev/ttyUSB0" or a udev symlink')
    baudrate: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout_s: float = Field(default=0.3, gt=0)
    poll_interval_s: float = Field(default=0.25, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    stations: list[StationConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ForestBusConfig:
        units = [s.unit for s in self.stations]
        ids = [s.device_id for s in self.stations]
        if len(set(units)) != len(units):
            raise ValueError(f"duplicate unit ids on one bus: {units}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate device ids on one bus: {ids}")
        return self


# --- the port -----------------------------------------------------------------------------------------------


class _Port:
    """The bus's serial port: set up by pyserial, bytes moved on its fd (see the module docstring)."""

    #: Most bytes taken from the driver per read: a whole reply and then some.
    CHUNK = 512

    def __init__(self, path: str, config: ForestBusConfig) -> None:
        self.ser: Any = serial.Serial(
            path,
            baudrate=config.baudrate,
            bytesize=serial.EIGHTBITS,
            parity=config.parity,
            stopbits=config.stopbits,
            timeout=0,
            write_timeout=config.timeout_s,
            exclusive=True,
        )
        self._fd = self.ser.fileno()
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        #: Bytes read away before requests (junk between frames), not yet counted by the bus.
        self.stale_bytes = 0

    def send(self, frame: bytes) -> int:
        """Read away (and count in ``stale_bytes``) what waits in the input buffer, then write ``frame``.

        A byte that arrives after the look at the input buffer stays there and comes in with the reply."""
        if waiting := self.ser.in_waiting:
            self.stale_bytes += len(os.read(self._fd, waiting))
        return self.ser.write(frame) or 0

    def recv(self, timeout_s: float) -> bytes:
        """What has arrived, waiting up to ``timeout_s`` for something; b"" when nothing came in that time.
        Raises OSError when the device is gone."""
        if not self._poll.poll(max(0, math.ceil(timeout_s * 1000))):
            return b""
        try:
            data = os.read(self._fd, self.CHUNK)
        except BlockingIOError:
            return b""
        if not data:
            raise OSError(errno.EIO, "the port hung up")
        return data

    def close(self) -> None:
        # closing a vanished device may fail in pyserial; there is nothing to do about it
        with contextlib.suppress(Exception):
            self.ser.close()


# --- the bus ------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Station:
    cfg: StationConfig
    info: codec.StationInfo | None = None
    next_poll: float = 0.0
    next_clock_check: float = 0.0
    last_clock_check: float = -math.inf
    force_clock_write: bool = False
    fails: int = 0
    last_seen: tuple[int, int] | None = None  # (sample_no, ts) of the last sample read, emitted or not
    last_seen_mono: float = 0.0
    last_ok_mono: float = 0.0  # when the station last answered a sample request (0: never since start)
    unset_streak: int = 0
    clock_write_at: float | None = None  # data-clock time (edge.clock.now) at which to send the RTC write
    clock_skew: float = 0.0
    readings: int = 0  # readings emitted from this station since the agent started


class _RequestFailed(Exception):
    """A request got no usable reply (already counted)."""


class ForestBus:
    """The source for one RS-485 bus of forest stations (see the module docstring)."""

    def __init__(self, config: ForestBusConfig) -> None:
        self.config = config
        self.name = config.name
        self._stations = [_Station(cfg) for cfg in config.stations]
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()
        self._port_open = False
        self._port: _Port | None = None
        self._opened_target: str | None = None
        self._port_checked = -math.inf
        self._next_open = 0.0
        self._open_backoff = _OPEN_BACKOFF_MIN_S
        self._port_failed = False
        self._state: dict[str, Any] = {"v": STATE_VERSION, "stations": {}}
        self._warn = RateLimited(log)
        bits = 1 + 8 + (config.parity != "N") + config.stopbits
        self._char_s = bits / config.baudrate  # one character's time on the wire
        self._write_lead_s = 13 * self._char_s  # time on the wire of the 13-byte RTC write

    # --- Source interface ----------------------------------------------------------------------------------
    def health(self) -> dict[str, float]:
        with self._lock:
            out = {k: float(v) for k, v in self._counters.items()}
        out["port_open"] = 1.0 if self._port_open else 0.0
        return out

    def devices(self) -> dict[str, dict[str, float]]:
        """Health per station for the fleet view (one bus carries many): answering now, its Modbus unit,
        consecutive failed requests, seconds since its last answer (-1: none since the agent started), readings
        emitted since the agent started (a station that answers but gives none yet: its clock is being set, or its
        first sample is not due; ``cityos gateway check --live`` waits for one)."""
        now = time.monotonic()
        return {
            st.cfg.device_id: {
                "ok": 1.0 if self._port_open and st.fails == 0 and st.last_ok_mono > 0 else 0.0,
                "unit": float(st.cfg.unit),
                "failures": float(st.fails),
                "last_ok_age_s": round(now - st.last_ok_mono, 1) if st.last_ok_mono > 0 else -1.0,
                "readings": float(st.readings),
            }
            for st in self._stations
        }

    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        self._state = self._load_state(ctx.state)
        try:
            while not stop.is_set():
                if not self._ensure_open():
                    stop.wait(max(0.05, min(self._next_open - time.monotonic(), 0.5)))
                    continue
                for st in self._round_order():
                    if stop.is_set() or self._port is None:
                        break
                    if time.monotonic() >= st.next_poll:
                        self._service(st, ctx)
                if self._port is not None:
                    wait = min(st.next_poll for st in self._stations) - time.monotonic()
                    if wait > 0:
                        stop.wait(wait)
        finally:
            self._close()

    def _round_order(self) -> list[_Station]:
        """Round-robin order, but a station whose RTC write is due goes first (it has a deadline)."""
        now = clock.now()
        due = [st for st in self._stations if st.clock_write_at is not None and st.clock_write_at <= now]
        return due + [st for st in self._stations if st not in due]

    # --- state ---------------------------------------------------------------------------------------------
    @staticmethod
    def _load_state(raw: dict[str, Any] | None) -> dict[str, Any]:
        """Each station's saved state: its own part (how this version saves it, one per station), or else its
        entry in the whole-bus state earlier versions saved (v1 had no windows, v2 had)."""
        raw = raw or {}
        saved: dict[str, Any] = {}
        legacy = raw.get("stations")
        if raw.get("v") in (1, STATE_VERSION) and isinstance(legacy, dict):
            saved.update(legacy)
        parts = raw.get("parts")
        if isinstance(parts, dict):
            saved.update(parts)
        stations = {}
        for device_id, st in saved.items():
            try:  # v1 → v2: exactly-once is kept; the derived values' windows start empty
                stations[device_id] = codec.StationState.from_json(st).to_json()
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("forest: dropping an unreadable saved state of %s: %.200r", device_id, st)
        return {"v": STATE_VERSION, "stations": stations}

    # --- port ----------------------------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counters[name] += n

    def _ensure_open(self) -> bool:
        port = self.config.port
        if self._port is not None:
            now = time.monotonic()
            if now - self._port_checked < _PORT_CHECK_S:
                return True
            self._port_checked = now
            if os.path.realpath(port) == self._opened_target:
                return True
            self._count("port_errors")
            what = "now leads to " + os.path.realpath(port) if os.path.exists(port) else "vanished"
            self._warn(logging.WARNING, "moved", "%s: %s %s; reopening", self.name, port, what)
            self._close(failed=True)
        now = time.monotonic()
        if now < self._next_open:
            return False
        opened: _Port | None = None
        why = "missing"
        if os.path.exists(port):
            try:
                opened = _Port(port, self.config)
            except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
                why = f"open failed: {_short(exc)}"
        if opened is None:
            self._count("port_errors")
            self._warn(
                logging.WARNING,
                "open",
                "%s: cannot open %s (%s); retrying in %.2g s",
                self.name,
                port,
                why,
                self._open_backoff,
            )
            self._port_failed = True
            self._next_open = now + self._open_backoff
            self._open_backoff = min(self._open_backoff * 2, _OPEN_BACKOFF_MAX_S)
            return False
        self._port = opened
        self._opened_target = os.path.realpath(port)
        self._port_open = True
        self._open_backoff = _OPEN_BACKOFF_MIN_S
        if self._port_failed:
            self._count("reconnects")
            log.info("%s: reopened %s (%s)", self.name, port, self._opened_target)
        else:
            log.info("%s: opened %s (%s)", self.name, port, self._opened_target)
        self._port_failed = False
        now = time.monotonic()
        for st in self._stations:  # whatever is on the bus now may have rebooted: check the clocks first
            st.next_clock_check = st.next_poll = now
            st.fails = 0
        return True

    def _close(self, failed: bool = False) -> None:
        if self._port is not None:
            self._port.close()
        self._port = None
        self._port_open = False
        if failed:
            self._port_failed = True
            self._next_open = time.monotonic() + self._open_backoff
            self._open_backoff = min(self._open_backoff * 2, _OPEN_BACKOFF_MAX_S)

    # --- requests ------------------------------------------------------------------------------------------
    def _request(self, request: codec.Request, retries: int | None = None) -> codec.Reply:
        """One request, re-sent up to ``retries`` (default: the configured) times while no good frame comes
        back; every attempt is counted from its one parse. Returns an "ok" reply with its payload, or raises
        _RequestFailed (counted and warned) or OSError (the port failed)."""
        port = self._port
        assert port is not None
        unit, fc = request.unit, request.function_code
        attempts = 1 + (self.config.retries if retries is None else retries)
        kinds = []
        for _ in range(attempts):
            reply = self._attempt(port, request)
            kinds.append(reply.kind)
            if reply.kind in ("ok", "exception") or reply.late_function_code is not None:
                break
        if reply.late_function_code is not None:  # (only ever set when no frame answered this request)
            # a late reply to an earlier request: RTU replies carry no transaction id, only the function code
            self._count("framing_errors")
            self._warn(
                logging.WARNING,
                f"fc:{unit}",
                "%s: unit %d: reply to function %d while waiting for %d",
                self.name,
                unit,
                reply.late_function_code,
                fc,
            )
            raise _RequestFailed
        if reply.kind == "exception":
            self._count("exception_responses")
            self._warn(
                logging.WARNING,
                f"exc:{unit}:{fc}",
                "%s: unit %d: Modbus exception %s to function %d",
                self.name,
                unit,
                reply.exception_code,
                fc,
            )
            raise _RequestFailed
        if reply.kind != "ok":
            self._warn(
                logging.WARNING,
                f"noreply:{unit}",
                "%s: unit %d: No response received after %d retries (%s)",
                self.name,
                unit,
                attempts - 1,
                ", ".join(kinds),
            )
            raise _RequestFailed
        if reply.problem is not None:  # a whole frame with a good CRC whose data does not decode
            self._count("framing_errors")
            self._warn(
                logging.WARNING, f"bad:{unit}", "%s: unit %d: bad reply: %s", self.name, unit, reply.problem
            )
            raise _RequestFailed
        return reply

    def _attempt(self, port: _Port, request: codec.Request) -> codec.Reply:
        """Send once, read the reply until the reader has a good frame or the reply time is up; count it."""
        try:
            port.send(request.frame)
        finally:
            stale, port.stale_bytes = port.stale_bytes, 0
            self._count("garbage_bytes", stale)
        reader = request.reader()
        # the station's time to answer, plus the request's and a normal reply's time on the wire
        wire_s = (len(request.frame) + request.reply_size) * self._char_s
        deadline = time.monotonic() + self.config.timeout_s + wire_s
        try:
            while not reader.complete:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if data := port.recv(left):
                    reader.feed(data)
        except OSError:
            self._count("garbage_bytes", reader.received)  # cut short: no verdict, but the bytes were read
            raise
        reply = reader.reply()
        self._count("garbage_bytes", reply.garbage_bytes)
        if reply.kind == "timeout":
            self._count("timeouts")
        elif reply.kind == "crc":
            self._count("crc_errors")
        elif reply.kind == "framing":
            self._count("framing_errors")
        return reply

    # --- per station ---------------------------------------------------------------------------------------
    def _service(self, st: _Station, ctx: SourceContext) -> None:
        started = time.monotonic()
        unit = st.cfg.unit
        try:
            if started >= st.next_clock_check:
                self._clock_check(st)
            if st.clock_write_at is not None and clock.now() >= st.clock_write_at:
                self._write_clock(st)
            if st.info is None:
                raise _RequestFailed
            self._count("polls")
            sample = self._read_sample(st, codec.INPUT_BLOCK_ADDRESS)
        except _RequestFailed:
            st.fails += 1
            st.next_poll = started + self._backoff(st)
            self._keep_clock_write_time(st)
            return
        except OSError as exc:
            self._io_error(exc)
            return
        if st.fails >= 2:
            log.info("%s: unit %d answers again", self.name, unit)
        st.fails = 0
        st.last_ok_mono = time.monotonic()
        st.next_poll = started + self.config.poll_interval_s
        try:
            self._on_sample(st, sample, ctx)
        except OSError as exc:  # the adapter went away during a history catch-up
            self._io_error(exc)
            return
        self._sleep_until_next_sample(st, started)
        self._keep_clock_write_time(st)

    def _sleep_until_next_sample(self, st: _Station, started: float) -> None:
        """Between samples there is nothing to read: poll next when the next sample is due, not every
        ``poll_interval_s``. A station is first seen with a new sample at most one poll after it took it, so
        ``first seen + interval`` is never early; a sample that isn't there yet is polled for every
        ``poll_interval_s`` again. At a field station's 60 s interval this is one request a minute instead of
        240 (bus time for the other stations, and the gateway's CPU); never longer than ``_MAX_POLL_GAP_S``, so
        a station that dies is still noticed within that."""
        info = st.info
        if info is None or not info.sample_interval_ds or st.last_seen is None:
            return
        due = st.last_seen_mono + info.sample_interval_s / _rate()
        if due > st.next_poll:
            st.next_poll = min(due, started + _MAX_POLL_GAP_S)

    def _io_error(self, exc: BaseException) -> None:
        self._count("port_errors")
        self._warn(
            logging.WARNING,
            "io",
            "%s: I/O error on %s (%s); reopening",
            self.name,
            self.config.port,
            _short(exc),
        )
        self._close(failed=True)

    def _read_sample(self, st: _Station, address: int) -> codec.Sample:
        """One sample record: the live block (address 0) or a slot of the history ring."""
        unit = st.cfg.unit
        request = codec.read_registers(unit, codec.FC_READ_INPUT, address, codec.INPUT_BLOCK_COUNT)
        reply = self._request(request)
        try:
            return codec.decode_sample(list(reply.registers or ()))
        except codec.CodecError as exc:
            self._count("framing_errors")
            self._warn(logging.WARNING, f"codec:{unit}", "%s: unit %d: %s", self.name, unit, exc)
            raise _RequestFailed from None

    def _keep_clock_write_time(self, st: _Station) -> None:
        if st.clock_write_at is not None:
            due = time.monotonic() + (st.clock_write_at - clock.now()) / _rate()
            st.next_poll = min(st.next_poll, due)

    def _backoff(self, st: _Station) -> float:
        poll = self.config.poll_interval_s
        if st.fails < 2:
            return poll
        cap = _STATION_BACKOFF_MAX_S
        if st.info is not None and st.info.sample_interval_ds:
            cap = min(cap, st.info.sample_interval_s / 2 / _rate())
        return max(poll, min(cap, poll * 2 ** (st.fails - 1)))

    def _clock_check(self, st: _Station) -> None:
        unit = st.cfg.unit
        request = codec.read_registers(
            unit, codec.FC_READ_HOLDING, codec.HOLDING_BLOCK_ADDRESS, codec.HOLDING_BLOCK_COUNT
        )
        reply = self._request(request)
        try:
            info = codec.decode_holding(list(reply.registers or ()))
        except codec.CodecError as exc:
            self._count("framing_errors")
            self._warn(logging.WARNING, f"codec:{unit}", "%s: unit %d: %s", self.name, unit, exc)
            raise _RequestFailed from None
        st.info = info
        skew = info.rtc_seconds - clock.now()
        if abs(skew) > _skew_tolerance(st.cfg.max_clock_skew_s) or st.force_clock_write:
            st.clock_skew = skew
            self._schedule_clock_write(st)
        now = time.monotonic()
        st.last_clock_check = now
        st.next_clock_check = now + st.cfg.clock_sync_interval_s

    # The RTC takes whole seconds and starts the written second at ms 0 when the request arrives. Writing
    # round(now) at any moment would leave the station up to 0.5 s off; instead the write is sent so that it
    # arrives on a second boundary (the bus keeps polling the other stations meanwhile), which keeps the
    # station within a few tens of ms of the gateway clock. All of it in data-clock seconds (edge.clock.now);
    # on a scaled clock the frame's time on the wire and the slack scale with the rate.

    def _schedule_clock_write(self, st: _Station) -> None:
        rate = _rate()
        lead = self._write_lead_s * rate
        now = clock.now()
        st.clock_write_at = math.floor(now + lead) + 1 - lead
        st.next_poll = min(st.next_poll, time.monotonic() + (st.clock_write_at - now) / rate)

    def _write_clock(self, st: _Station) -> None:
        unit = st.cfg.unit
        if not clock.plausible():
            # a gateway that booted at 1970 must not pass its error on to the stations: wait for NTP
            st.clock_write_at = None
            self._count("clock_implausible_skips")
            self._warn(
                logging.ERROR, "implausible", "%s: gateway clock is implausible; not setting station clocks", self.name
            )
            return
        rate = _rate()
        arrive = clock.now() + self._write_lead_s * rate
        seconds = round(arrive)
        # (from rate 5 on the slack is 0.5 s: any moment is accepted, a simulated second is too short to aim at)
        if abs(arrive - seconds) > min(0.5, _CLOCK_WRITE_SLACK_S * rate):  # the bus was busy: next second
            self._schedule_clock_write(st)
            return
        st.clock_write_at = None
        # Not retried: a re-sent write would carry a second that is already stale. A write whose reply got
        # lost is simply scheduled again for the next second boundary.
        try:
            rtc = codec.write_registers(unit, codec.HOLDING_RTC, codec.encode_time(seconds))
            self._request(rtc, retries=0)
        except _RequestFailed:
            self._schedule_clock_write(st)
            raise
        self._count("clock_syncs")
        st.force_clock_write = False
        st.unset_streak = 0
        log.info(
            "%s: set the clock of %s (unit %d), it was %+.1f s off",
            self.name,
            st.cfg.device_id,
            unit,
            st.clock_skew,
        )

    def _on_sample(self, st: _Station, s: codec.Sample, ctx: SourceContext) -> None:
        key = (s.sample_no, s.ts_ms)
        if st.last_seen == key:
            return  # the same sample as last poll
        now = time.monotonic()
        prev_seen, prev_mono = st.last_seen, st.last_seen_mono
        st.last_seen, st.last_seen_mono = key, now
        info = st.info
        assert info is not None
        device_id = st.cfg.device_id
        if s.clock_unset:
            self._count("clock_unset_skips")
            if st.clock_write_at is not None:
                return  # the clock write is on its way
            st.unset_streak += 1
            holdoff = max(1.0, 1.5 * info.sample_interval_s / _rate())  # real s
            st.next_clock_check = min(st.next_clock_check, st.last_clock_check + holdoff)
            # still unset well after a write (or with an RTC that reads right): write anyway
            st.force_clock_write = st.unset_streak >= 3
            self._warn(
                logging.WARNING, f"unset:{device_id}", "%s: %s clock not set; waiting", self.name, device_id
            )
            return
        st.unset_streak = 0
        persisted = self._state["stations"].get(device_id)
        if persisted is not None and s.ts_ms <= persisted["ts"]:
            if (s.sample_no, s.ts_ms) != (persisted["sample_no"], persisted["ts"]):
                self._count("stale_skips")
                self._warn(
                    logging.WARNING,
                    f"stale:{device_id}",
                    "%s: %s sample %d time %d is not after the last emitted (%d); skipped",
                    self.name,
                    device_id,
                    s.sample_no,
                    s.ts_ms,
                    persisted["ts"],
                )
            return
        # The last sample this gateway accounted for: the last emitted one, or else (a station never emitted, e.g.
        # the first samples after its clock was set were lost to line noise) the last one seen with its clock unset.
        if persisted is not None:
            base_no, base_ts, elapsed = persisted["sample_no"], persisted["ts"], (s.ts_ms - persisted["ts"]) / 1000
        elif prev_seen is not None:
            base_no, base_ts, elapsed = prev_seen[0], 0, (now - prev_mono) * _rate()  # station s
        else:
            base_no = None
        missed = 0
        if base_no is not None:
            gap = codec.missed_samples(base_no, s.sample_no, elapsed, info.sample_interval_s)
            if gap:
                try:
                    missed = self._catch_up(st, base_no, base_ts, gap, s.ts_ms, ctx)
                except _RequestFailed:
                    st.last_seen, st.last_seen_mono = prev_seen, prev_mono  # retry on the next poll
                    return
                except OSError:
                    st.last_seen, st.last_seen_mono = prev_seen, prev_mono  # retry after the reopen
                    raise
        self._emit(st, s, ctx)
        if missed:
            self._count("missed_samples", missed)
            self._warn(
                logging.WARNING,
                f"missed:{device_id}",
                "%s: %s: %d sample(s) missed",
                self.name,
                device_id,
                missed,
            )

    def _catch_up(
        self, st: _Station, first_no: int, last_ts: int, gap: int, until_ts: int, ctx: SourceContext
    ) -> int:
        """Read the samples this gateway never saw (agent down, cable out) from the station's history ring.

        Returns how many could not be recovered (older than the ring, or not valid). Raises _RequestFailed when the
        bus fails mid-way: what was emitted so far is committed, the rest is retried on the next poll.
        """
        lost = max(0, gap - (codec.HISTORY_DEPTH - 1))  # overwritten in the ring already
        for k in range(lost + 1, gap + 1):
            n = (first_no + k) & 0xFFFF
            rec = self._read_sample(st, codec.history_address(n))
            if rec.sample_no != n:
                # an unwritten slot (all 0xFFFF) means the station restarted and its numbering with it: nothing
                # was lost there; a slot holding another sample was overwritten: that one is gone
                lost += rec.sample_no != codec.NOT_AVAILABLE
                continue
            if rec.clock_unset or not last_ts < rec.ts_ms < until_ts:
                continue  # no valid time (never reportable), or not after what was already emitted
            self._emit(st, rec, ctx)
            last_ts = rec.ts_ms
            self._count("recovered_samples")
        return lost

    def _emit(self, st: _Station, s: codec.Sample, ctx: SourceContext) -> None:
        """Commit one sample as a reading, with the station state that makes it exact across a crash."""
        assert st.info is not None
        device_id = st.cfg.device_id
        persisted = self._state["stations"].get(device_id)
        prev = codec.StationState.from_json(persisted) if persisted is not None else None
        values, units, station_state = codec.next_reading(
            s, prev, st.info.rain_res_x1000, st.cfg.rain_event_dry_gap_ms
        )
        if st.cfg.lat is not None:
            values = {**values, "lat": st.cfg.lat, "lon": st.cfg.lon}
            units = {**units, "lat": "deg", "lon": "deg"}
        reading = Reading(device_id=device_id, kind=KIND, ts=s.ts_ms, values=values, units=units)
        saved = station_state.to_json()
        ctx.emit(reading, state=saved, part=device_id)  # this station's part only (see edge/outbox.py)
        self._state["stations"][device_id] = saved
        st.readings += 1
        self._count("readings")


def _rate() -> float:
    """Data-clock seconds per real second: 1, or the simulated city's scaled clock rate."""
    scaled = clock.scaled()
    return 1.0 if scaled is None else scaled.rate


def _skew_tolerance(max_clock_skew_s: float) -> float:
    """How far a station's RTC may be from the gateway's data clock before it is rewritten (data-clock seconds).

    At rate 1 it is ``max_clock_skew_s``. On a scaled clock the RTC reads whole seconds (up to 1 s short) and
    every real millisecond of request latency is ``rate`` ms of simulated time, so the floor grows with the rate.
    """
    rate = _rate()
    if rate == 1.0:
        return max_clock_skew_s
    return max(max_clock_skew_s, 1.5 + rate * _CLOCK_JITTER_REAL_S)


def _short(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:160]


register("forest_station", ForestBusConfig, ForestBus)
