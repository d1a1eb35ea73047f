"""Forest sensor stations, sans-I/O: the Modbus RTU master's bytes and the register map, decoded.

Nothing here touches a serial port. The bus master's half of Modbus RTU for the three functions the gateway
uses (read holding registers 3, read input registers 4, write multiple registers 16): :func:`read_registers`
and :func:`write_registers` build a request frame (CRC-16/MODBUS, :func:`crc16`), and :class:`ReplyReader`
parses the bytes that come back after it, as they arrive, into one :class:`Reply`: the verdict the bus driver
counts (ok, a Modbus exception and its code, a CRC error, junk, nothing), the garbage bytes around the frame,
and the payload of a good frame (registers, or the write's echo). One parse per reply; :func:`parse_reply`
takes the bytes at once and :func:`classify_reply` returns only the verdict. The serial I/O is the adapter's
(:mod:`edge.sources.forest.source`).

Then the register map: :func:`decode_sample` turns the 13 input registers into a :class:`Sample`,
:func:`reading_values` turns a sample (and the previous emitted rain-tip count) into the value/unit dicts of a
``Reading``, and :func:`next_reading` adds the derived landslide-watch values (rain intensity, event rainfall,
tilt rate) from the rolling windows kept in :class:`StationState`. The register map is
``hardware/forest-station/register-map.md``; the derived values are specified there and in ``docs/forest.md``.

Float arithmetic is part of the contract: every value is ``register / scale`` (one division of an integer),
rain is ``Δtips * resolution / 1000`` (an integer product, then one division), and each derived value is one
division of two integers as well (rain sums are kept in integer µm = mm × 1000, tilt in integer centidegrees and
milliseconds), so the device simulator, which implements the same map independently, produces bit-identical
floats for its ground truth.

Derived values and their windows (times are the stations' sample times, ms; minute = ``ts // 60000``, UTC):

* ``rain_intensity_mm_h``: the rain of the samples in the current minute and the 59 before it (a 60-minute
  window at minute resolution: with a 60 s station, exactly the last 60 sample intervals).
* ``rain_cumulative_mm`` (連続雨量): the rain since the current rain event began. An event starts with the first
  rain after a dry spell and ends once ``dry_gap`` has passed since its last rain (default 24 h; the first
  sample after that reads 0.0 again).
* ``tilt_rate_x_deg_h`` / ``tilt_rate_y_deg_h``: ``(tilt now − tilt ref) / (t now − t ref)`` in deg/h, where the
  reference is the first tilt sample of the oldest minute still in the window (the current minute and the 60
  before it), i.e. a span of 60 minutes in steady state. Omitted until the reference is at least
  :data:`TILT_RATE_MIN_SPAN_MS` (50 min) old: a rate over a few minutes of a 0.01° sensor is noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The readings' kind (one reading per emitted sample).
KIND = "forest_station"

#: Input registers 0..12 are read as one block.
INPUT_BLOCK_ADDRESS = 0
INPUT_BLOCK_COUNT = 13
#: The station's history ring: sample n's 13-register record is at HISTORY_BASE + (n % HISTORY_DEPTH) * STRIDE.
HISTORY_BASE = 0x1000
HISTORY_DEPTH = 256
HISTORY_STRIDE = 16
#: Holding registers 0..3: RTC hi/lo, sample interval (ds), rain resolution (mm per tip x1000).
HOLDING_BLOCK_ADDRESS = 0
HOLDING_BLOCK_COUNT = 4
HOLDING_RTC = 0

NOT_AVAILABLE = 0xFFFF

STATUS_RAIN_FAULT = 1 << 0
STATUS_TILT_FAULT = 1 << 1
STATUS_SOIL_FAULT = 1 << 2
STATUS_CLOCK_UNSET = 1 << 3

FC_READ_HOLDING = 0x03
FC_READ_INPUT = 0x04
FC_WRITE_MULTIPLE = 0x10

UNITS = {
    "soil_moisture_pct": "%VWC",
    "soil_moisture_deep_pct": "%VWC",
    "rain_tips": "count",
    "rain_mm": "mm",
    "tilt_x_deg": "deg",
    "tilt_y_deg": "deg",
    "battery_v": "V",
    "water_level_m": "m",
    "rain_intensity_mm_h": "mm/h",
    "rain_cumulative_mm": "mm",
    "tilt_rate_x_deg_h": "deg/h",
    "tilt_rate_y_deg_h": "deg/h",
}

MINUTE_MS = 60_000
#: Rain intensity: the rain of the current minute and the RAIN_WINDOW_MIN - 1 minutes before it.
RAIN_WINDOW_MIN = 60
#: Tilt rate: the reference is the first tilt sample of the oldest minute among the current one and the
#: TILT_WINDOW_MIN before it ...
TILT_WINDOW_MIN = 60
#: ... and the rate is omitted while that reference is younger than this.
TILT_RATE_MIN_SPAN_MS = 50 * MINUTE_MS
#: A rain event (連続雨量) ends after this long without rain.
DEFAULT_RAIN_EVENT_DRY_GAP_H = 24.0


class CodecError(ValueError):
    """Registers that cannot be a forest station sample (wrong count, out-of-range field)."""


def u32(hi: int, lo: int) -> int:
    """Two 16-bit registers, high word first, as an unsigned 32-bit integer."""
    return ((hi & 0xFFFF) << 16) | (lo & 0xFFFF)


def encode_time(seconds: int) -> list[int]:
    """Seconds since the epoch as the two RTC holding registers ``[hi, lo]``."""
    if not 0 <= seconds <= 0xFFFFFFFF:
        raise ValueError(f"time {seconds} does not fit in uint32")
    return [(seconds >> 16) & 0xFFFF, seconds & 0xFFFF]


def int16(register: int) -> int:
    """A register as a two's-complement signed 16-bit integer."""
    return register - 0x10000 if register & 0x8000 else register


@dataclass(frozen=True)
class Sample:
    """The input-register block of one station, decoded (raw integers kept; scaled values as properties)."""

    seconds: int
    millis: int
    sample_no: int
    soil_raw: int
    soil_deep_raw: int
    rain_tips: int
    tilt_x_raw: int  # signed, degrees x100
    tilt_y_raw: int
    battery_mv: int
    status: int
    water_mm: int = NOT_AVAILABLE

    @property
    def ts_ms(self) -> int:
        return self.seconds * 1000 + self.millis

    @property
    def clock_unset(self) -> bool:
        return bool(self.status & STATUS_CLOCK_UNSET)

    @property
    def rain_ok(self) -> bool:
        return not self.status & STATUS_RAIN_FAULT

    @property
    def soil_moisture_pct(self) -> float | None:
        if self.status & STATUS_SOIL_FAULT or self.soil_raw == NOT_AVAILABLE:
            return None
        return self.soil_raw / 10

    @property
    def soil_moisture_deep_pct(self) -> float | None:
        if self.status & STATUS_SOIL_FAULT or self.soil_deep_raw == NOT_AVAILABLE:
            return None
        return self.soil_deep_raw / 10

    @property
    def tilt_x_deg(self) -> float | None:
        return None if self.status & STATUS_TILT_FAULT else self.tilt_x_raw / 100

    @property
    def tilt_y_deg(self) -> float | None:
        return None if self.status & STATUS_TILT_FAULT else self.tilt_y_raw / 100

    @property
    def tilt_ok(self) -> bool:
        return not self.status & STATUS_TILT_FAULT

    @property
    def battery_v(self) -> float | None:
        return None if self.battery_mv == NOT_AVAILABLE else self.battery_mv / 1000

    @property
    def water_level_m(self) -> float | None:
        return None if self.water_mm == NOT_AVAILABLE else self.water_mm / 1000


def decode_sample(registers: list[int]) -> Sample:
    """Input registers 0..12 → :class:`Sample`. Raises :class:`CodecError` for anything malformed."""
    regs = list(registers)
    if len(regs) != INPUT_BLOCK_COUNT:
        raise CodecError(f"expected {INPUT_BLOCK_COUNT} registers, got {len(regs)}")
    if any(not 0 <= r <= 0xFFFF for r in regs):
        raise CodecError("register value outside 0..65535")
    millis = regs[2]
    if millis > 999:
        raise CodecError(f"milliseconds register {millis} > 999")
    return Sample(
        seconds=u32(regs[0], regs[1]),
        millis=millis,
        sample_no=regs[3],
        soil_raw=regs[4],
        soil_deep_raw=regs[5],
        rain_tips=u32(regs[6], regs[7]),
        tilt_x_raw=int16(regs[8]),
        tilt_y_raw=int16(regs[9]),
        battery_mv=regs[10],
        status=regs[11],
        water_mm=regs[12],
    )


@dataclass(frozen=True)
class StationInfo:
    """Holding registers 0..3."""

    rtc_seconds: int
    sample_interval_ds: int
    rain_res_x1000: int  # mm per tip x1000

    @property
    def sample_interval_s(self) -> float:
        return self.sample_interval_ds / 10


def decode_holding(registers: list[int]) -> StationInfo:
    regs = list(registers)
    if len(regs) != HOLDING_BLOCK_COUNT:
        raise CodecError(f"expected {HOLDING_BLOCK_COUNT} holding registers, got {len(regs)}")
    if regs[3] == 0:
        raise CodecError("rain gauge resolution register is 0")
    return StationInfo(rtc_seconds=u32(regs[0], regs[1]), sample_interval_ds=regs[2], rain_res_x1000=regs[3])


def rain_um(prev_tips: int | None, tips: int, res_x1000: int) -> int:
    """Rain since the previous emitted sample in µm (mm × 1000, an integer: tips × resolution register).

    ``prev_tips`` is None on the very first sample ever (no state): 0. A counter that went backwards means
    the station was power-cycled (the counter is "since power-on"), so all of the new count is new rain.
    """
    if prev_tips is None:
        return 0
    delta = tips - prev_tips if tips >= prev_tips else tips
    return delta * res_x1000


def rain_mm(prev_tips: int | None, tips: int, res_x1000: int) -> float:
    """Rain since the previous emitted sample, mm (see :func:`rain_um`): one division of an integer."""
    return rain_um(prev_tips, tips, res_x1000) / 1000


def reading_values(
    sample: Sample, prev_tips: int | None, res_x1000: int
) -> tuple[dict[str, float], dict[str, str]]:
    """The ``values`` and ``units`` of the reading for ``sample`` (a sensor in fault is omitted)."""
    values: dict[str, float] = {}
    for name in ("soil_moisture_pct", "soil_moisture_deep_pct"):
        v = getattr(sample, name)
        if v is not None:
            values[name] = v
    if sample.rain_ok:
        values["rain_tips"] = float(sample.rain_tips)
        values["rain_mm"] = rain_mm(prev_tips, sample.rain_tips, res_x1000)
    for name in ("tilt_x_deg", "tilt_y_deg", "battery_v", "water_level_m"):
        v = getattr(sample, name)
        if v is not None:
            values[name] = v
    values["status"] = float(sample.status)
    units = {k: UNITS[k] for k in values if k in UNITS}
    return values, units


# --- derived values: rolling windows over the emitted sample stream ------------------------------------------


@dataclass(frozen=True)
class StationState:
    """What the gateway commits per station with each reading: the last emitted sample and the rolling windows.

    JSON layout (:meth:`to_json`), all integers::

        {"sample_no": 17, "ts": 1795593842190, "tips": 1234,         # the last emitted sample
         "rain_min": [[29926564, 400], ...],   # [minute, µm]: minutes with rain, the last RAIN_WINDOW_MIN
         "event_um": 104200,                   # rain of the current event (連続雨量), µm
         "event_last_rain_ts": 1795593840190,  # sample time of its last rain (null: no event)
         "tilt_min": [[1795590242190, 112, -35], ...]}  # [ts, x, y ×100]: first tilt sample of each minute

    About 2 kB per station at most (61 tilt entries, ≤ 60 rain minutes).
    """

    sample_no: int
    ts: int
    tips: int | None = None
    rain_min: tuple[tuple[int, int], ...] = ()
    event_um: int = 0
    event_last_rain_ts: int | None = None
    tilt_min: tuple[tuple[int, int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "sample_no": self.sample_no,
            "ts": self.ts,
            "tips": self.tips,
            "rain_min": [list(b) for b in self.rain_min],
            "event_um": self.event_um,
            "event_last_rain_ts": self.event_last_rain_ts,
            "tilt_min": [list(e) for e in self.tilt_min],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StationState:
        """From :meth:`to_json`; a state of layout v1 (no windows) starts with empty windows."""
        return cls(
            sample_no=int(d["sample_no"]),
            ts=int(d["ts"]),
            tips=None if d.get("tips") is None else int(d["tips"]),
            rain_min=tuple((int(m), int(um)) for m, um in d.get("rain_min", ())),
            event_um=int(d.get("event_um", 0)),
            event_last_rain_ts=None if d.get("event_last_rain_ts") is None else int(d["event_last_rain_ts"]),
            tilt_min=tuple((int(t), int(x), int(y)) for t, x, y in d.get("tilt_min", ())),
        )


def next_reading(
    sample: Sample, prev: StationState | None, res_x1000: int, dry_gap_ms: int
) -> tuple[dict[str, float], dict[str, str], StationState]:
    """The reading for the next emitted ``sample`` of a station and the state to commit with it.

    ``prev`` is the state committed with the previous emitted reading (None: the first ever). The result depends
    only on ``prev`` and ``sample``, so a gateway restarted from its committed state, or one catching up from the
    history ring, computes exactly what an uninterrupted one would.
    """
    prev_tips = prev.tips if prev is not None else None
    values, _ = reading_values(sample, prev_tips, res_x1000)
    ts, minute = sample.ts_ms, sample.ts_ms // MINUTE_MS
    base = prev or StationState(sample_no=sample.sample_no, ts=ts)

    # rain: per-minute buckets of the last hour, and the event total
    buckets = {m: um for m, um in base.rain_min if m > minute - RAIN_WINDOW_MIN}
    event_um, last_rain = base.event_um, base.event_last_rain_ts
    tips = prev_tips
    if sample.rain_ok:
        tips = sample.rain_tips
        um = rain_um(prev_tips, sample.rain_tips, res_x1000)
        if last_rain is not None and ts - last_rain >= dry_gap_ms:
            event_um, last_rain = 0, None  # dry for the whole gap: the event is over
        if um > 0:
            buckets[minute] = buckets.get(minute, 0) + um
            event_um += um
            last_rain = ts
        values["rain_intensity_mm_h"] = sum(um for m, um in buckets.items() if m <= minute) / 1000
        values["rain_cumulative_mm"] = event_um / 1000

    # tilt: the first sample of each minute of the last hour
    tilt = [e for e in base.tilt_min if e[0] // MINUTE_MS >= minute - TILT_WINDOW_MIN]
    if sample.tilt_ok:
        if not any(e[0] // MINUTE_MS == minute for e in tilt):
            tilt.append((ts, sample.tilt_x_raw, sample.tilt_y_raw))
            tilt.sort()
        ref_ts, ref_x, ref_y = tilt[0]
        span = ts - ref_ts
        if span >= TILT_RATE_MIN_SPAN_MS:
            values["tilt_rate_x_deg_h"] = (sample.tilt_x_raw - ref_x) * 36_000 / span  # ×100 → deg, ms → h
            values["tilt_rate_y_deg_h"] = (sample.tilt_y_raw - ref_y) * 36_000 / span

    state = StationState(
        sample_no=sample.sample_no,
        ts=ts,
        tips=tips,
        rain_min=tuple(sorted(buckets.items())),
        event_um=event_um,
        event_last_rain_ts=last_rain,
        tilt_min=tuple(tilt),
    )
    units = {k: UNITS[k] for k in values if k in UNITS}
    return values, units, state


def sample_jump(prev_no: int, new_no: int) -> int:
    """How far the 16-bit sample counter moved (1 = the next sample; wraps 65535 → 0)."""
    return (new_no - prev_no) & 0xFFFF


def history_address(sample_no: int) -> int:
    return HISTORY_BASE + (sample_no % HISTORY_DEPTH) * HISTORY_STRIDE


def missed_samples(prev_no: int, new_no: int, elapsed_s: float | None, interval_s: float | None) -> int:
    """Samples the station produced between two we saw, or 0 when the counter evidently restarted.

    A jump larger than the elapsed time can explain (station power cycle: the counter starts again at 0) is
    not a gap. ``elapsed_s``/``interval_s`` unknown → only the 16-bit jump is used.
    """
    jump = sample_jump(prev_no, new_no)
    if jump == 0:
        return 0
    if elapsed_s is not None and interval_s and interval_s > 0:
        plausible = max(2, int(elapsed_s / interval_s) + 2)
        if jump > plausible:
            return 0
    elif jump > 0x8000:
        return 0
    return jump - 1


# --- Modbus RTU, master side: requests out, replies in (bytes only; the serial I/O is the adapter's) --------
#
# An RTU frame is ``unit, function, data..., CRC-16/MODBUS (low byte first)`` with no length field and no
# transaction id: a reply's length follows from its function code (a read reply carries a byte count) and a
# reply belongs to the request that is outstanding. The gateway sends three requests: read holding registers
# (3), read input registers (4) and write multiple registers (16). A reply to one of them is, on the wire::
#
#     3/4:       unit, fc, byte count N, N bytes (N/2 big-endian registers), CRC      (5 + N bytes)
#     16:        unit, 0x10, address hi, lo, count hi, lo, CRC                         (8 bytes: the echo)
#     exception: unit, fc | 0x80, exception code, CRC                                 (5 bytes)


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data`` (reflected polynomial 0xA001, initial 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def crc_ok(frame: bytes) -> bool:
    """Whether the last two bytes of ``frame`` are the Modbus CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def _frame(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def reply_size(function_code: int, count: int = 0) -> int:
    """Bytes of a normal RTU reply: read → addr+fc+bytecount+2*count+crc; write multiple → 8."""
    if function_code in (FC_READ_HOLDING, FC_READ_INPUT):
        return 5 + 2 * count
    if function_code == FC_WRITE_MULTIPLE:
        return 8
    raise ValueError(f"unsupported function code {function_code}")


#: Most registers one request may read (3/4) or write (16): the Modbus application protocol's limits.
MAX_READ_COUNT = 125
MAX_WRITE_COUNT = 123


@dataclass(frozen=True)
class Request:
    """One request of the bus master: the frame to send, and what its normal reply looks like."""

    unit: int
    function_code: int
    frame: bytes
    reply_size: int  # bytes of the normal reply (:func:`reply_size`)

    def reader(self) -> ReplyReader:
        """A fresh reader for the bytes that come back after this request is sent (one per attempt)."""
        return ReplyReader(self.unit, self.function_code, self.reply_size)


def _check_target(unit: int, address: int, count: int, most: int) -> None:
    if not 1 <= unit <= 247:
        raise ValueError(f"unit id {unit} outside 1..247")
    if not 1 <= count <= most:
        raise ValueError(f"register count {count} outside 1..{most}")
    if not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"registers {address}..{address + count - 1} outside 0..65535")


def read_registers(unit: int, function_code: int, address: int, count: int) -> Request:
    """Read ``count`` holding (function 3) or input (function 4) registers from ``address`` of ``unit``."""
    if function_code not in (FC_READ_HOLDING, FC_READ_INPUT):
        raise ValueError(f"not a register read: function code {function_code}")
    _check_target(unit, address, count, MAX_READ_COUNT)
    body = bytes([unit, function_code]) + address.to_bytes(2, "big") + count.to_bytes(2, "big")
    return Request(unit, function_code, _frame(body), reply_size(function_code, count))


def write_registers(unit: int, address: int, values: list[int]) -> Request:
    """Write multiple registers (function 16): ``values`` into ``unit``'s registers from ``address`` on."""
    _check_target(unit, address, len(values), MAX_WRITE_COUNT)
    if any(not 0 <= v <= 0xFFFF for v in values):
        raise ValueError("register value outside 0..65535")
    body = (
        bytes([unit, FC_WRITE_MULTIPLE])
        + address.to_bytes(2, "big")
        + len(values).to_bytes(2, "big")
        + bytes([2 * len(values)])
        + b"".join(v.to_bytes(2, "big") for v in values)
    )
    return Request(unit, FC_WRITE_MULTIPLE, _frame(body), reply_size(FC_WRITE_MULTIPLE))


@dataclass(frozen=True)
class ReplyVerdict:
    """What came back on the line for one request attempt."""

    kind: str  # "ok", "exception", "timeout" (nothing), "crc" (our frame, bad CRC), "framing" (junk / short)
    garbage_bytes: int = 0


@dataclass(frozen=True)
class Reply:
    """The bytes received after one request attempt, parsed: the verdict and, for a good frame, its payload.

    ``kind`` and ``garbage_bytes`` are the verdict (:class:`ReplyVerdict`, rules in :class:`ReplyReader`).
    """

    kind: str
    garbage_bytes: int = 0
    #: "ok" to a read (3/4): the registers, however many the station sent (the caller checks the count).
    registers: tuple[int, ...] | None = None
    #: "ok" to a write (16): the echoed ``(address, count)``.
    echo: tuple[int, int] | None = None
    #: "exception": the station's exception code (1 illegal function, 2 illegal address, 3 illegal value).
    exception_code: int | None = None
    #: A good frame from the unit answering *another* function: a late reply to an earlier request (RTU has no
    #: transaction id). Its bytes are garbage to this request; the verdict stays what the rules say.
    late_function_code: int | None = None
    #: "ok" (the frame is whole and its CRC good) but its data does not decode: why. No payload then.
    problem: str | None = None

    @property
    def verdict(self) -> ReplyVerdict:
        return ReplyVerdict(self.kind, self.garbage_bytes)


_READS = (FC_READ_HOLDING, FC_READ_INPUT)
_FUNCTIONS = (FC_READ_HOLDING, FC_READ_INPUT, FC_WRITE_MULTIPLE)
_WAIT, _REJECT, _OURS, _LATE = range(4)


class ReplyReader:
    """The reply to one request attempt, parsed as its bytes arrive (sans-I/O: bytes in, a :class:`Reply`).

    The adapter writes the request, then passes whatever the port delivers to :meth:`feed` until
    :attr:`complete` or until its reply time is up, and takes :meth:`reply` once. Each byte position is
    decided once as a possible frame start (one whose frame is not whole yet waits for more bytes), and each
    whole candidate frame's CRC is computed once, however the bytes are chunked.

    The verdict, over the bytes fed:

    * **ok** / **exception**: the first position where a frame from ``unit`` with the request's function code
      (its length from the byte count for a read, ``size`` for a write), or with that code | 0x80 (5 bytes),
      is whole and has a good CRC. Every other byte, before or after it, is garbage. A read reply with fewer
      or more registers than asked for is "ok": checking the count is the register decoder's job (counted
      once, there).
    * **timeout**: nothing at all.
    * **crc**: no good frame, but ``unit``, the function code and ``size`` bytes from there: our reply,
      damaged. Garbage is everything but those ``size`` bytes.
    * **framing**: anything else (junk, a truncated frame, another unit's frame, a late reply); all garbage.

    Completeness: :attr:`complete` turns true as soon as the bytes fed hold a good frame from ``unit``: ours
    (ok/exception; the first by position among the bytes fed so far), or one answering another function (a
    late reply: the station has spoken and will not answer twice). The adapter stops reading there: the
    verdict is the rules' verdict over the bytes it read, and bytes that come later are stale input for the
    next request (fed after a frame of ours anyway, they would only add garbage). Without a good frame the
    adapter reads until its reply time is up: a candidate frame may still be completing, and bytes may still
    follow a damaged one. No inter-frame gap ends an attempt early (the adapter's docstring says why).
    """

    def __init__(self, unit: int, function_code: int, size: int) -> None:
        if function_code not in _FUNCTIONS:
            raise ValueError(f"unsupported function code {function_code}")
        self.unit, self.function_code, self.size = unit, function_code, size
        self._buf = bytearray()
        self._next = 0  # the first position not yet looked at as a frame start
        self._waiting: list[int] = []  # frame starts whose frame is not whole yet, in order
        self._ours: tuple[int, int] | None = None  # (start, length) of the good frame answering this request
        self._late: int | None = None  # the function code of the first good frame answering another one

    @property
    def complete(self) -> bool:
        """A good frame from the unit is in: the adapter stops reading."""
        return self._ours is not None or self._late is not None

    @property
    def received(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> bool:
        """Add received bytes; returns :attr:`complete`."""
        self._buf += data
        if self._ours is None:
            self._hunt()
        return self.complete

    def _hunt(self) -> None:
        n = len(self._buf)
        starts = [*self._waiting, *range(self._next, n - 1)]  # a start needs its function code byte
        self._next = max(self._next, n - 1)
        waiting = []
        for k in starts:
            what, length = self._candidate(k, n)
            if what == _WAIT:
                waiting.append(k)
            elif what == _OURS:
                self._ours = (k, length)
                break
            elif what == _LATE and self._late is None:
                self._late = self._buf[k + 1]
        self._waiting = waiting

    def _candidate(self, k: int, n: int) -> tuple[int, int]:
        buf = self._buf
        if buf[k] != self.unit:
            return _REJECT, 0
        fc = buf[k + 1]
        ours = self.function_code
        if fc & 0x80:
            if fc & 0x7F not in _FUNCTIONS:
                return _REJECT, 0
            length = 5
        elif fc in _READS:
            if k + 2 >= n:
                return _WAIT, 0
            length = buf[k + 2] + 5
        elif fc == FC_WRITE_MULTIPLE:
            length = self.size if fc == ours else reply_size(FC_WRITE_MULTIPLE)
        else:
            return _REJECT, 0
        if k + length > n:
            return _WAIT, 0
        if not crc_ok(buf[k : k + length]):
            return _REJECT, 0
        return (_OURS if fc in (ours, ours | 0x80) else _LATE), length

    def reply(self) -> Reply:
        """The verdict and payload over everything fed so far (see the class docstring)."""
        buf, n = bytes(self._buf), len(self._buf)
        if self._ours is not None:
            k, length = self._ours
            return _decode_frame(buf[k : k + length], n - length)
        if not n:
            return Reply("timeout")
        for k in range(n - 1):
            if buf[k] == self.unit and buf[k + 1] == self.function_code and k + self.size <= n:
                return Reply("crc", n - self.size, late_function_code=self._late)
        return Reply("framing", n, late_function_code=self._late)


def _decode_frame(frame: bytes, garbage: int) -> Reply:
    """A whole frame with a good CRC answering the request: its payload."""
    fc = frame[1]
    if fc & 0x80:
        return Reply("exception", garbage, exception_code=frame[2])
    if fc == FC_WRITE_MULTIPLE:
        address, count = int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big")
        return Reply("ok", garbage, echo=(address, count))
    count = frame[2]
    if count % 2:
        return Reply("ok", garbage, problem=f"odd byte count {count} in a register reply")
    registers = tuple(int.from_bytes(frame[i : i + 2], "big") for i in range(3, 3 + count, 2))
    return Reply("ok", garbage, registers=registers)


def parse_reply(raw: bytes, unit: int, function_code: int, size: int) -> Reply:
    """All the bytes received after one request to ``unit`` at once; ``size`` from :func:`reply_size`."""
    reader = ReplyReader(unit, function_code, size)
    reader.feed(raw)
    return reader.reply()


def classify_reply(raw: bytes, unit: int, function_code: int, size: int) -> ReplyVerdict:
    """Only the verdict of :func:`parse_reply` (the rules are in :class:`ReplyReader`)."""
    return parse_reply(raw, unit, function_code, size).verdict
