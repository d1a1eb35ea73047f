"""Forest sensor station simulator: Modbus RTU slaves on a pseudo-terminal, and the ground truth they made.

One :class:`ForestStationSim` is one RS-485 bus: a pty pair whose slave side (``.port``, ``/dev/pts/N``,
optionally reachable through a udev-like symlink) the gateway opens exactly like ``/dev/ttyUSB0``, with
several stations (unit ids) answering on it. The register map is ``hardware/forest-station/register-map.md``;
this module implements it on its own (it shares no code with the gateway — the test suite checks that).

How Modbus is served — pymodbus sans-I/O, not pymodbus' server
-------------------------------------------------------------
pymodbus' ``ModbusSerialServer`` opens its port by *name* through pyserial; a pty master has no name (it is
only an fd from ``openpty()``), so the server cannot sit on it without a second pty and a byte-copying bridge.
And the fault switches need byte-level control of every reply (junk before/after it, a corrupted CRC, a
truncated frame, silence) that the server's request handler does not expose. So the simulator runs its own
read/write loop on the master fd and uses pymodbus for all of the protocol: ``FramerRTU`` (with a server-side
``DecodePDU``) cuts and CRC-checks request frames and decodes them into request PDUs; replies are pymodbus
response PDUs (``ReadInputRegistersResponse`` …, ``ExceptionResponse``) turned into bytes by
``FramerRTU.buildFrame``. No Modbus framing or CRC is written by hand here; only the fault injection edits
bytes after pymodbus built them.

The stations
------------
Each station samples every sample interval (holding register 2) on its own clock. Its RTC starts unset (status
bit 3, time counting from 2000-01-01) until the gateway writes holding registers 0-1; after that a sample's
time is the station clock. Values come from :mod:`firmware_sim.forest.scenario` (deterministic from the seed and the
accelerated scenario time) and are quantized into the registers (13 input registers: register 12 is the water
level in mm, 0xFFFF when ``StationSpec.water_sensor`` is off).

Simulated time: given a :class:`cityos.simclock.ScaledClock` (``clock=``), every station's RTC and sampling run
at the clock's rate — the sample interval is in simulated seconds (60 s at rate 288 is a sample every ~0.21 s
real), an RTC set to the simulated time stays on it, event lines are stamped with it, and scenario time is
``(simulated now − clock.sim_start) × accel``. Without a clock (rate 1) the RTCs run in real time and scenario
time is real time since :meth:`ForestStationSim.start` × ``accel``, as before.

Ground truth (JSON lines, flushed per line)
-------------------------------------------
One line per sample taken while the station's clock is set::

    {"device_id": "forest-01", "unit": 1, "ts": <sample ms>, "sample_no": 17, "values": {...}}

``values`` uses the gateway's names and semantics, computed by the simulator from *its own* register values
(``soil_moisture_pct = reg4 / 10`` …). One difference by definition: ``rain_mm`` here is the tips since the
station's previous *sample* (× resolution), while the gateway's is the tips since its previous *emitted*
reading; they are identical when the gateway misses no sample, and when it does, the gateway's next
``rain_mm`` holds the rain of the samples it missed (rain is conserved, never lost). Discrete events (clock
set, clock reset, unplug/replug, power cycle, sensor fault) are lines with an ``"event"`` key and no
``"sample_no"``.

The derived values (``rain_intensity_mm_h``, ``rain_cumulative_mm``, ``tilt_rate_x_deg_h``/``_y_``) are in
``values`` too, computed by :class:`TruthWindows` — this module's own implementation of the register map's
definitions — over the station's true sample stream (every sample with its clock set, across power cycles), so
a gateway that misses nothing must report exactly them, whatever restarts and catch-ups it went through.

Fault switches
--------------
``garbage`` (probability per reply of junk bytes before it, or right after it, i.e. between frames; junk also
appears on the idle line now and then), ``crc`` (probability of a corrupted reply CRC), ``malformed``
(probability of a reply with a valid CRC but a short register block), ``silent`` (unit ids that do not
answer), ``unplug()``/``replug()`` (the adapter leaves and comes back as a new pty, the symlink re-pointed),
``clock_reset(unit)`` (RTC loses power), ``power_cycle(unit)`` (counters restart, RTC unset) and
``sensor_fault(unit, "rain"|"tilt"|"soil", on)``. ``counters`` reports what was injected and served.

Standalone (``main(argv)``; ``cityos sim forest ...`` calls it)::

    python -m firmware_sim.forest.sim --stations forest-01:1,forest-02:2 --link run/dev/ttyFOREST0 \
        --ground-truth gt.jsonl [--accel 3600] [--duration S] [--fault garbage=0.05,crc=0.01,silent=2]
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
    WriteMultipleRegistersResponse,
)

from cityos.simclock import ScaledClock
from firmware_sim.device import SimDevice, serve_until_stopped
from firmware_sim.forest.scenario import Scenario
from firmware_sim.pty import PtyLink

#: The RTC's time after losing power: 2000-01-01T00:00:00Z.
RTC_POWER_ON_MS = 946_684_800_000

STATUS_RAIN_FAULT = 1 << 0
STATUS_TILT_FAULT = 1 << 1
STATUS_SOIL_FAULT = 1 << 2
STATUS_CLOCK_UNSET = 1 << 3
_SENSOR_BITS = {"rain": STATUS_RAIN_FAULT, "tilt": STATUS_TILT_FAULT, "soil": STATUS_SOIL_FAULT}

# Modbus exception codes
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3

N_INPUT = 13
#: History ring: the record of sample n is at input address HISTORY_BASE + (n % HISTORY_DEPTH) * HISTORY_STRIDE.
HISTORY_BASE = 0x1000
HISTORY_DEPTH = 256
HISTORY_STRIDE = 16
N_HOLDING = 4
#: Silence that ends a partial request frame (RTU's 3.5 character times, generous for a pty).
_INTER_FRAME_GAP_S = 0.05

FAULT_NAMES = ("garbage", "crc", "malformed", "silent")


@dataclass(frozen=True)
class StationSpec:
    device_id: str
    unit: int
    sample_interval_ds: int = 10  # 1 s; a real station would run 600 (60 s)
    rain_res_x1000: int = 200  # 0.2 mm per tip
    deep_sensor: bool = True  # 30 cm soil probe fitted
    water_sensor: bool = True  # water-level (groundwater piezometer) sensor fitted: input register 12
    #: Rain event (連続雨量) boundary for the ground truth; must equal the gateway's rain_event_dry_gap_h.
    rain_event_dry_gap_h: float = 24.0

    def __post_init__(self) -> None:
        if not 1 <= self.unit <= 247:
            raise ValueError(f"unit id {self.unit} outside 1..247")
        if not 1 <= self.sample_interval_ds <= 0xFFFF:
            raise ValueError("sample interval must be 1..65535 deciseconds")


def parse_stations(text: str, *, sample_interval_ds: int = 10, **spec: Any) -> list[StationSpec]:
    """``"forest-01:1,forest-02:2"`` → station specs (``spec``: further StationSpec fields for all of them)."""
    specs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        device_id, _, unit = part.partition(":")
        if not unit:
            raise ValueError(f"station {part!r}: expected DEVICE_ID:UNIT")
        specs.append(StationSpec(device_id, int(unit), sample_interval_ds=sample_interval_ds, **spec))
    return specs


def parse_faults(text: str) -> dict[str, Any]:
    """``"garbage=0.05,crc=0.01,silent=2+3"`` → ``{"garbage": 0.05, "crc": 0.01, "silent": {2, 3}}``."""
    faults: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULT_NAMES)})")
        faults[name] = {int(u) for u in value.split("+") if u} if name == "silent" else float(value)
    return faults


def _u16(x: int) -> int:
    return x & 0xFFFF


def _s16(x: int) -> int:
    return x - 0x10000 if x & 0x8000 else x


class TruthWindows:
    """The derived values of the register map, over one station's reported samples (see the map's definitions).

    Rain in integer µm, tilt in integer centidegrees, times in ms: every value is one division of two integers.
    """

    RAIN_MINUTES = 60  # intensity: the current minute and the 59 before it
    TILT_MINUTES = 60  # tilt reference: first sample of the oldest of the current minute and the 60 before
    TILT_MIN_SPAN_MS = 50 * 60_000  # no rate from a shorter span

    def __init__(self, dry_gap_h: float) -> None:
        self.dry_gap_ms = round(dry_gap_h * 3_600_000)
        self.rain_per_minute: dict[int, int] = {}
        self.event_um = 0
        self.event_last_rain_ms: int | None = None
        self.first_tilt_of_minute: dict[int, tuple[int, int, int]] = {}

    def add(self, t_ms: int, rain_um: int | None, tilt: tuple[int, int] | None) -> dict[str, float]:
        minute = t_ms // 60_000
        out: dict[str, float] = {}
        for m in [m for m in self.rain_per_minute if m <= minute - self.RAIN_MINUTES]:
            del self.rain_per_minute[m]
        if rain_um is not None:
            if self.event_last_rain_ms is not None and t_ms - self.event_last_rain_ms >= self.dry_gap_ms:
                self.event_um, self.event_last_rain_ms = 0, None
            if rain_um:
                self.rain_per_minute[minute] = self.rain_per_minute.get(minute, 0) + rain_um
                self.event_um += rain_um
                self.event_last_rain_ms = t_ms
            hour = sum(um for m, um in self.rain_per_minute.items() if m <= minute)
            out["rain_intensity_mm_h"] = hour / 1000
            out["rain_cumulative_mm"] = self.event_um / 1000
        for m in [m for m in self.first_tilt_of_minute if m < minute - self.TILT_MINUTES]:
            del self.first_tilt_of_minute[m]
        if tilt is not None:
            self.first_tilt_of_minute.setdefault(minute, (t_ms, *tilt))
            ref_ms, ref_x, ref_y = self.first_tilt_of_minute[min(self.first_tilt_of_minute)]
            span_ms = t_ms - ref_ms
            if span_ms >= self.TILT_MIN_SPAN_MS:
                # centidegrees per ms → degrees per hour: × 3_600_000 / 100
                out["tilt_rate_x_deg_h"] = (tilt[0] - ref_x) * 36_000 / span_ms
                out["tilt_rate_y_deg_h"] = (tilt[1] - ref_y) * 36_000 / span_ms
        return out


class _Station:
    """One station's firmware state. All access under the simulator's lock."""

    def __init__(self, spec: StationSpec, power_on: float, tips_total: int, rate: float = 1.0) -> None:
        self.spec = spec
        self.rate = rate  # station-clock seconds per real second
        self.interval_ds = spec.sample_interval_ds
        self.sensor_faults: set[str] = set()
        self.inputs = [0] * N_INPUT
        self.history: dict[int, list[int]] = {}  # slot → the 13 registers of the sample stored there
        self.prev_truth_tips: int | None = None
        self.truth_windows = TruthWindows(spec.rain_event_dry_gap_h)  # the truth survives power cycles
        self.power_on(power_on, tips_total)

    def power_on(self, mono: float, tips_total: int) -> None:
        self.rtc_base_ms, self.rtc_ref = RTC_POWER_ON_MS, mono
        self.clock_set = False
        self.sample_no = -1
        self.history = {}  # the ring is RAM: a power cycle empties it
        self.tips_at_power_on = tips_total
        self.next_due = mono  # the first sample is taken at power-on

    def clock_ms(self, mono: float) -> int:
        return self.rtc_base_ms + math.floor((mono - self.rtc_ref) * 1000 * self.rate)

    @property
    def interval_real_s(self) -> float:
        return self.interval_ds / 10 / self.rate

    def set_clock(self, seconds: int, mono: float) -> None:
        self.rtc_base_ms, self.rtc_ref, self.clock_set = seconds * 1000, mono, True

    def holding(self, mono: float) -> list[int]:
        secs = self.clock_ms(mono) // 1000
        return [(secs >> 16) & 0xFFFF, secs & 0xFFFF, self.interval_ds, self.spec.rain_res_x1000]


class ForestStationSim(SimDevice):
    """Several forest stations on one simulated RS-485 bus (a pty). See the module docstring."""

    def __init__(
        self,
        stations: Iterable[StationSpec],
        *,
        link_path: Path | None = None,
        ground_truth: Path,
        scenario: Scenario | None = None,
        seed: int = 0,
        faults: dict[str, Any] | None = None,
        clock: ScaledClock | None = None,
    ) -> None:
        self.specs = list(stations)
        if not self.specs:
            raise ValueError("at least one station")
        units = [s.unit for s in self.specs]
        if len(set(units)) != len(units):
            raise ValueError(f"duplicate unit ids on one bus: {units}")
        self.scenario = scenario or Scenario()
        self.seed = seed
        #: Simulated time (None: real time): the stations' RTCs and sampling run at its rate.
        self.clock = clock
        self._rate = clock.rate if clock is not None else 1.0
        self._wall_minus_mono = time.time() - time.monotonic()
        self.ground_truth = Path(ground_truth)
        super().__init__(self.ground_truth)
        self._rng = random.Random(f"forest-faults:{seed}")
        self._lock = threading.RLock()
        self._frozen = False
        self._faults: dict[str, Any] = {"garbage": 0.0, "crc": 0.0, "malformed": 0.0, "silent": set()}
        for name, value in (faults or {}).items():
            self.set_fault(name, value)
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "requests", "responses", "exceptions", "samples", "truth_lines", "clock_sets",
                "garbage", "garbage_bytes", "crc", "malformed", "silenced", "dropped_bytes",
                "unplugs", "replugs", "clock_resets", "power_cycles",
            ),
            0,
        )  # fmt: skip
        self._link = PtyLink(link_path)
        self._link.open()
        self._framer = FramerRTU(DecodePDU(True))
        self._stations: dict[int, _Station] = {}
        self._t0: float | None = None
        self._cmds: queue.Queue[tuple[Callable[[], Any], threading.Event, list[Any]]] = queue.Queue()

    # --- public API -----------------------------------------------------------------------------------------
    @property
    def port(self) -> str | None:
        """The slave side the gateway opens (``/dev/pts/N``); None while unplugged."""
        return self._link.port if self._link.is_open else None

    @property
    def link_path(self) -> Path | None:
        return self._link.link_path

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def start(self) -> ForestStationSim:
        """Power the stations on and serve the bus from a background thread."""
        if self.running:
            return self
        self._open_truth()
        now = time.monotonic()
        self._t0 = now
        with self._lock:
            for spec in self.specs:
                self._stations[spec.unit] = _Station(spec, now, self._tips_total(spec, now), self._rate)
        self._spawn(self._serve, "forest-sim")
        return self

    def _close(self) -> None:
        self._link.close()

    def set_fault(self, name: str, value: Any) -> None:
        """``garbage``/``crc``/``malformed``: probability per reply; ``silent``: a set of unit ids."""
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULT_NAMES)})")
        with self._lock:
            if name == "silent":
                self._faults[name] = {int(u) for u in (value or ())}
            else:
                p = float(value)
                if not 0.0 <= p <= 1.0:
                    raise ValueError(f"{name} probability {p} outside 0..1")
                self._faults[name] = p

    def unplug(self) -> None:
        """The adapter leaves: the pty closes and the symlink goes away."""
        self._in_loop(self._do_unplug)

    def replug(self) -> str:
        """The adapter comes back as a new pty; the symlink is re-pointed. Returns the new port."""
        return self._in_loop(self._do_replug)

    def clock_reset(self, unit: int) -> None:
        """The station's RTC loses power: back to 2000-01-01, status bit 3 set until the gateway writes it."""
        with self._lock:
            st = self._stations[unit]
            st.rtc_base_ms, st.rtc_ref, st.clock_set = RTC_POWER_ON_MS, time.monotonic(), False
            self._counters["clock_resets"] += 1
            self._event("clock_reset", unit=unit)

    def power_cycle(self, unit: int) -> None:
        """The station reboots: sample number and tip counter start again, RTC unset."""
        with self._lock:
            st = self._stations[unit]
            now = time.monotonic()
            st.power_on(now, self._tips_total(st.spec, now))
            self._counters["power_cycles"] += 1
            self._event("power_cycle", unit=unit)

    def sensor_fault(self, unit: int, sensor: str, on: bool = True) -> None:
        if sensor not in _SENSOR_BITS:
            raise ValueError(f"sensor must be one of {sorted(_SENSOR_BITS)}")
        with self._lock:
            st = self._stations[unit]
            (st.sensor_faults.add if on else st.sensor_faults.discard)(sensor)
            self._event("sensor_fault", unit=unit, sensor=sensor, on=on)

    def freeze(self) -> None:
        """Stop taking samples (every station keeps answering with what it has). Tests use it to end a run:
        once frozen, the ground truth is final and the gateway can be checked to have read all of it."""
        with self._lock:
            self._frozen = True

    def set_sample_interval(self, unit: int, interval_ds: int) -> None:
        """As if a technician changed holding register 2 (takes effect from the next sample)."""
        with self._lock:
            self._set_interval(self._stations[unit], interval_ds)

    def clock_is_set(self, unit: int) -> bool:
        with self._lock:
            return self._stations[unit].clock_set

    def sample_no(self, unit: int) -> int:
        with self._lock:
            return self._stations[unit].sample_no

    # --- the bus loop ---------------------------------------------------------------------------------------
    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the serving thread (it owns the fds), or here when not running."""
        if not self._threads or threading.current_thread() is self._threads[0]:
            with self._lock:
                return fn()
        done, out = threading.Event(), []
        self._cmds.put((fn, done, out))
        self.wake()
        if not done.wait(5):
            raise TimeoutError("simulator loop did not respond")
        return out[0] if out else None

    def _serve(self) -> None:
        buf = b""
        last_rx = 0.0
        while not self._stopping.is_set():
            while True:
                try:
                    fn, done, out = self._cmds.get_nowait()
                except queue.Empty:
                    break
                with self._lock:
                    try:
                        out.append(fn())
                    finally:
                        done.set()
            now = time.monotonic()
            with self._lock:
                self._take_due_samples(now)
                next_due = min(st.next_due for st in self._stations.values())
            if buf and now - last_rx > _INTER_FRAME_GAP_S:
                with self._lock:
                    self._counters["dropped_bytes"] += len(buf)
                buf = b""
            timeout = min(max(next_due - now, 0.0), 0.05)
            try:
                data = self._link.read(timeout, extra_fds=(self._wake_r,))
            except OSError:
                data = b""
                time.sleep(timeout)
            self._drain_wake()
            if data:
                buf += data
                last_rx = time.monotonic()
                buf = self._handle_bytes(buf)

    def _handle_bytes(self, buf: bytes) -> bytes:
        while buf:
            try:
                used, pdu = self._framer.handleFrame(buf, 0, 0)
            except ModbusIOException:  # a frame with a good CRC whose PDU does not decode
                with self._lock:
                    self._counters["dropped_bytes"] += len(buf)
                return b""
            buf = buf[used:]
            if pdu is None:
                return buf
            with self._lock:
                self._counters["requests"] += 1
                reply = self._respond(pdu)
            if reply is not None:
                self._send_reply(reply)
        return buf

    def _respond(self, req: ModbusPDU) -> ModbusPDU | None:
        st = self._stations.get(req.dev_id)
        if st is None:
            return None  # another unit's request (or a broadcast): not for anyone on this bus
        if st.spec.unit in self._faults["silent"]:
            self._counters["silenced"] += 1
            return None
        fc = req.function_code
        now = time.monotonic()
        reply: ModbusPDU
        if fc == 0x04:
            regs = self._input_registers(st, req.address, req.count)
            if regs is None:
                reply = self._exception(fc, ILLEGAL_ADDRESS)
            else:
                if self._rng.random() < self._faults["malformed"] and len(regs) > 1:
                    self._counters["malformed"] += 1
                    regs = regs[: self._rng.randrange(1, len(regs))]
                reply = ReadInputRegistersResponse(registers=regs)
        elif fc == 0x03:
            if not (req.count >= 1 and req.address + req.count <= N_HOLDING):
                reply = self._exception(fc, ILLEGAL_ADDRESS)
            else:
                reply = ReadHoldingRegistersResponse(
                    registers=st.holding(now)[req.address : req.address + req.count]
                )
        elif fc == 0x10:
            reply = self._write(st, req, now)
        else:
            reply = self._exception(fc, ILLEGAL_FUNCTION)
        reply.dev_id = st.spec.unit
        if reply.isError():
            self._counters["exceptions"] += 1
        return reply

    @staticmethod
    def _input_registers(st: _Station, address: int, count: int) -> list[int] | None:
        """The live block (0..12) or one record of the history ring (an unwritten slot reads as 0xFFFF)."""
        if count >= 1 and address + count <= N_INPUT:
            return st.inputs[address : address + count]
        off = address - HISTORY_BASE
        if 0 <= off < HISTORY_DEPTH * HISTORY_STRIDE and off % HISTORY_STRIDE + count <= N_INPUT and count >= 1:
            rec = st.history.get(off // HISTORY_STRIDE, [0xFFFF] * N_INPUT)
            return rec[off % HISTORY_STRIDE : off % HISTORY_STRIDE + count]
        return None

    def _write(self, st: _Station, req: ModbusPDU, now: float) -> ModbusPDU:
        fc, addr, regs = req.function_code, req.address, list(req.registers)
        if not regs or len(regs) != req.count or addr + len(regs) > N_HOLDING:
            return self._exception(fc, ILLEGAL_ADDRESS)
        touched = set(range(addr, addr + len(regs)))
        if 3 in touched:
            return self._exception(fc, ILLEGAL_ADDRESS)  # rain gauge resolution is read-only
        if touched & {0, 1} and not {0, 1} <= touched:
            return self._exception(fc, ILLEGAL_VALUE)  # the RTC is set with both words at once
        if 2 in touched and regs[2 - addr] == 0:
            return self._exception(fc, ILLEGAL_VALUE)
        if 0 in touched:
            seconds = (regs[0 - addr] << 16) | regs[1 - addr]
            st.set_clock(seconds, now)
            self._counters["clock_sets"] += 1
            self._event("clock_set", unit=st.spec.unit, station_s=seconds)
        if 2 in touched:
            self._set_interval(st, regs[2 - addr])
        return WriteMultipleRegistersResponse(address=addr, count=len(regs))

    def _exception(self, fc: int, code: int) -> ModbusPDU:
        return ExceptionResponse(fc, code)

    def _send_reply(self, pdu: ModbusPDU) -> None:
        frame = self._framer.buildFrame(pdu)
        with self._lock:
            p_garbage, p_crc = self._faults["garbage"], self._faults["crc"]
            before = after = b""
            if self._rng.random() < p_garbage:
                junk = self._junk()
                if self._rng.random() < 0.6:
                    before = junk
                else:
                    after = junk
            if self._rng.random() < p_crc:
                self._counters["crc"] += 1
                frame = frame[:-1] + bytes([frame[-1] ^ (1 << self._rng.randrange(8))])
            self._counters["responses"] += 1
        self._link.write(before + frame)
        if after:
            self._link.write(after)

    def _junk(self) -> bytes:
        junk = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(1, 8)))
        self._counters["garbage"] += 1
        self._counters["garbage_bytes"] += len(junk)
        return junk

    def _do_unplug(self) -> None:
        if self._link.is_open:
            self._link.close()
            self._counters["unplugs"] += 1
            self._event("unplug")

    def _do_replug(self) -> str:
        if not self._link.is_open:
            self._link.open()
            self._counters["replugs"] += 1
            self._event("replug", port=self._link.port)
        return self._link.port or ""

    # --- the stations ---------------------------------------------------------------------------------------
    def _set_interval(self, st: _Station, interval_ds: int) -> None:
        if not 1 <= interval_ds <= 0xFFFF:
            raise ValueError("sample interval must be 1..65535 deciseconds")
        if interval_ds != st.interval_ds:
            last = st.next_due - st.interval_real_s
            st.interval_ds = interval_ds
            st.next_due = max(last + st.interval_real_s, time.monotonic())

    def _scenario_t(self, mono: float) -> float:
        if self.clock is None:
            return (mono - (self._t0 or mono)) * self.scenario.accel
        sim_s = self.clock.sim_start + (mono + self._wall_minus_mono - self.clock.real_anchor) * self._rate
        return (sim_s - self.clock.sim_start) * self.scenario.accel

    def _now_s(self) -> float:
        """Wall time for event lines: the simulated clock's when there is one."""
        return self.clock.now() if self.clock is not None else time.time()

    def _tips_total(self, spec: StationSpec, mono: float) -> int:
        state = self.scenario.state(self.seed, spec.unit, self._scenario_t(mono))
        return math.floor(state.rain_total_mm * 1000 / spec.rain_res_x1000 + 1e-9)

    def _take_due_samples(self, now: float) -> None:
        for st in self._stations.values():
            if self._frozen:
                break
            while st.next_due <= now:
                self._sample(st, st.next_due)
                st.next_due += st.interval_real_s
        if self._faults["garbage"] and self._rng.random() < self._faults["garbage"] * 0.02:
            self._link.write(self._junk())  # noise on the idle line, between frames

    def _sample(self, st: _Station, mono: float) -> None:
        spec = st.spec
        s = self.scenario.state(self.seed, spec.unit, self._scenario_t(mono))
        st.sample_no = (st.sample_no + 1) & 0xFFFF
        t_ms = st.clock_ms(mono)
        secs, millis = divmod(t_ms, 1000)
        tips = (self._tips_total(spec, mono) - st.tips_at_power_on) & 0xFFFFFFFF
        status = 0 if st.clock_set else STATUS_CLOCK_UNSET
        for sensor in st.sensor_faults:
            status |= _SENSOR_BITS[sensor]
        soil = 0xFFFF if "soil" in st.sensor_faults else min(1000, max(0, round(s.soil10_pct * 10)))
        deep = (
            0xFFFF
            if "soil" in st.sensor_faults or not spec.deep_sensor
            else (min(1000, max(0, round(s.soil30_pct * 10))))
        )
        tilt_x = 0 if "tilt" in st.sensor_faults else max(-32768, min(32767, round(s.tilt_x_deg * 100)))
        tilt_y = 0 if "tilt" in st.sensor_faults else max(-32768, min(32767, round(s.tilt_y_deg * 100)))
        battery = min(0xFFFE, max(0, round(s.battery_v * 1000)))
        water = min(0xFFFE, max(0, round(s.water_level_m * 1000))) if spec.water_sensor else 0xFFFF
        st.inputs = [
            (secs >> 16) & 0xFFFF, secs & 0xFFFF, millis, st.sample_no, soil, deep,
            (tips >> 16) & 0xFFFF, tips & 0xFFFF, _u16(tilt_x), _u16(tilt_y), battery, status, water,
        ]  # fmt: skip
        st.history[st.sample_no % HISTORY_DEPTH] = list(st.inputs)
        self._counters["samples"] += 1
        values = self._truth_values(st)
        if st.clock_set:
            rain_um = None
            if not status & STATUS_RAIN_FAULT:
                prev = st.prev_truth_tips
                rain_um = 0 if prev is None else (tips - prev if tips >= prev else tips) * spec.rain_res_x1000
            tilt = None if status & STATUS_TILT_FAULT else (tilt_x, tilt_y)
            values.update(st.truth_windows.add(t_ms, rain_um, tilt))
        if st.clock_set and st.inputs[11] & STATUS_RAIN_FAULT == 0:
            # rain_mm in the truth is since the previous *reported* sample (one with a valid time): the first after
            # power-up reports 0.0, and rain during a clock outage lands in the next reported sample, as on the edge.
            st.prev_truth_tips = tips
        if st.clock_set:
            self._write_truth(
                {"device_id": spec.device_id, "unit": spec.unit, "ts": t_ms, "sample_no": st.sample_no,
                 "values": values}
            )  # fmt: skip

    def _truth_values(self, st: _Station) -> dict[str, float]:
        """The reading a gateway should make of this sample, from the registers (register map semantics)."""
        r = st.inputs
        status = r[11]
        values: dict[str, float] = {}
        if not status & STATUS_SOIL_FAULT:
            if r[4] != 0xFFFF:
                values["soil_moisture_pct"] = r[4] / 10
            if r[5] != 0xFFFF:
                values["soil_moisture_deep_pct"] = r[5] / 10
        if not status & STATUS_RAIN_FAULT:
            tips = (r[6] << 16) | r[7]
            prev = st.prev_truth_tips
            delta = 0 if prev is None else (tips - prev if tips >= prev else tips)
            values["rain_tips"] = float(tips)
            values["rain_mm"] = delta * st.spec.rain_res_x1000 / 1000
        if not status & STATUS_TILT_FAULT:
            values["tilt_x_deg"] = _s16(r[8]) / 100
            values["tilt_y_deg"] = _s16(r[9]) / 100
        if r[10] != 0xFFFF:
            values["battery_v"] = r[10] / 1000
        if r[12] != 0xFFFF:
            values["water_level_m"] = r[12] / 1000
        values["status"] = float(status)
        return values

    def _event(self, kind: str, **fields: Any) -> None:
        self._write_truth({"event": kind, "ts": int(self._now_s() * 1000), **fields})

    def _write_truth(self, obj: dict[str, Any]) -> None:
        if self._truth is None:
            return
        self._truth.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._truth.flush()
        if "sample_no" in obj:
            self._counters["truth_lines"] += 1


# --- standalone ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cityos sim forest",
        description="Simulated forest sensor stations (Modbus RTU) on a pseudo-terminal.",
    )
    p.add_argument("--stations", default="forest-01:1", help="DEVICE_ID:UNIT,... (default: %(default)s)")
    p.add_argument(
        "--link", type=Path, default=None, help="symlink to maintain to the pty, e.g. run/dev/ttyFOREST0"
    )
    p.add_argument(
        "--ground-truth", type=Path, required=True, help="JSON-lines file the samples are appended to"
    )
    p.add_argument(
        "--accel",
        type=float,
        default=1.0,
        help="scenario seconds per real second, or per simulated second with --clock (default: 1)",
    )
    p.add_argument(
        "--sample-interval",
        type=float,
        default=1.0,
        help="station sample interval, s (simulated s with --clock; default: 1)",
    )
    p.add_argument(
        "--clock",
        default=None,
        metavar="JSON",
        help='run the stations on a scaled clock: {"sim_start": S, "real_anchor": S, "rate": R} '
        "(the same three numbers as the gateway's [clock] section)",
    )
    p.add_argument(
        "--scenario",
        choices=("storm", "heavy-rain"),
        default="storm",
        help="storm: the default 12 h storm; heavy-rain: the landslide-warning storm (Scenario.heavy_rain)",
    )
    p.add_argument(
        "--landslide-unit",
        type=int,
        default=None,
        help="unit id whose slope starts to slide in the storm (heavy-rain default: the first station)",
    )
    p.add_argument(
        "--rain-event-dry-gap-h",
        type=float,
        default=24.0,
        help="hours without rain that end a rain event in the ground truth (default: 24; match the gateway)",
    )
    p.add_argument(
        "--duration", type=float, default=None, help="stop after S seconds (default: until Ctrl-C)"
    )
    p.add_argument("--fault", default="", help="e.g. garbage=0.05,crc=0.01,malformed=0.01,silent=2+3")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        interval_ds = round(args.sample_interval * 10)
        specs = parse_stations(
            args.stations, sample_interval_ds=interval_ds, rain_event_dry_gap_h=args.rain_event_dry_gap_h
        )
        faults = parse_faults(args.fault)
        clock = ScaledClock.model_validate_json(args.clock) if args.clock else None
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"forest sim: {exc}", file=sys.stderr)
        return 2
    if args.scenario == "heavy-rain":
        unit = args.landslide_unit if args.landslide_unit is not None else specs[0].unit
        scenario = Scenario.heavy_rain(landslide_unit=unit, accel=args.accel)
    else:
        scenario = Scenario(accel=args.accel, landslide_unit=args.landslide_unit)
    sim = ForestStationSim(
        specs,
        link_path=args.link,
        ground_truth=args.ground_truth,
        scenario=scenario,
        seed=args.seed,
        faults=faults,
        clock=clock,
    )
    link = f" (link {args.link})" if args.link else ""
    units = ", ".join(f"{s.device_id}=unit {s.unit}" for s in specs)
    # SIGUSR1: stop sampling but keep answering (end of a test run: the ground truth is then final)
    return serve_until_stopped(
        "forest sim", [sim], duration=args.duration, counters=lambda: sim.counters,
        signals={signal.SIGUSR1: sim.freeze},
        started=lambda: print(f"forest sim: {sim.port}{link}: {units}; ground truth {args.ground_truth}", flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
