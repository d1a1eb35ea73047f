"""Forest sensor station register map, decoded sans-I/O: registers in, values out.

Nothing here touches a serial port. :func:`decode_sample` turns the 12 input registers into a :class:`Sample`,
:func:`reading_values` turns a sample (and the previous emitted rain-tip count) into the value/unit dicts of a
``Reading``, and :func:`classify_reply` looks at the raw bytes that came back for one Modbus request so that
the bus driver can count CRC errors, garbage bytes and timeouts (pymodbus itself reports all three as the same
"no response" timeout). The register map is ``hardware/forest-station/register-map.md``.

Float arithmetic is part of the contract: every value is ``register / scale`` (one division of an integer),
and rain is ``Δtips * resolution / 1000`` (an integer product, then one division), so the device simulator,
which implements the same map independently, produces bit-identical floats for its ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymodbus.framer import FramerRTU

#: Input registers 0..11 are read as one block.
INPUT_BLOCK_ADDRESS = 0
INPUT_BLOCK_COUNT = 12
#: Holding registers 0..3: RTC hi/lo, sample interval (ds), rain resolution (mm per tip x1000).
#: The station's history ring: sample n's 12-register record is at HISTORY_BASE + (n % HISTORY_DEPTH) * STRIDE.
HISTORY_BASE = 0x1000
HISTORY_DEPTH = 256
HISTORY_STRIDE = 16
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
}


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
    def battery_v(self) -> float | None:
        return None if self.battery_mv == NOT_AVAILABLE else self.battery_mv / 1000


def decode_sample(registers: list[int]) -> Sample:
    """Input registers 0..11 → :class:`Sample`. Raises :class:`CodecError` for anything malformed."""
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


def rain_mm(prev_tips: int | None, tips: int, res_x1000: int) -> float:
    """Rain since the previous emitted sample.

    ``prev_tips`` is None on the very first sample ever (no state): 0.0. A counter that went backwards means
    the station was power-cycled (the counter is "since power-on"), so all of the new count is new rain.
    """
    if prev_tips is None:
        return 0.0
    delta = tips - prev_tips if tips >= prev_tips else tips
    return delta * res_x1000 / 1000


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
    for name in ("tilt_x_deg", "tilt_y_deg", "battery_v"):
        v = getattr(sample, name)
        if v is not None:
            values[name] = v
    values["status"] = float(sample.status)
    units = {k: UNITS[k] for k in values if k in UNITS}
    return values, units


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


# --- raw reply classification (for error counters) ----------------------------------------------------------


def reply_size(function_code: int, count: int = 0) -> int:
    """Bytes of a normal RTU reply: read → addr+fc+bytecount+2*count+crc; write multiple → 8."""
    if function_code in (FC_READ_HOLDING, FC_READ_INPUT):
        return 5 + 2 * count
    if function_code == FC_WRITE_MULTIPLE:
        return 8
    raise ValueError(f"unsupported function code {function_code}")


def crc_ok(frame: bytes) -> bool:
    """Whether the last two bytes of ``frame`` are the Modbus CRC of the rest (pymodbus' CRC routine)."""
    return len(frame) >= 4 and FramerRTU.compute_CRC(frame[:-2]) == int.from_bytes(frame[-2:], "big")


@dataclass(frozen=True)
class ReplyVerdict:
    """What came back on the line for one request attempt."""

    kind: str  # "ok", "exception", "timeout" (nothing), "crc" (our frame, bad CRC), "framing" (junk / short)
    garbage_bytes: int = 0


def classify_reply(raw: bytes, unit: int, function_code: int, size: int) -> ReplyVerdict:
    """Classify the bytes received after one request to ``unit``; ``size`` from :func:`reply_size`.

    A frame with a good CRC is "ok" even when its register count is not what was asked for: that is for the
    decoder to reject (counted once, there). Bytes around the frame are garbage.
    """
    if not raw:
        return ReplyVerdict("timeout")
    n = len(raw)
    for k in range(n - 1):
        if raw[k] != unit:
            continue
        fc = raw[k + 1]
        if fc == function_code:
            got = raw[k + 2] + 5 if fc in (FC_READ_HOLDING, FC_READ_INPUT) and k + 2 < n else size
            if k + got <= n and crc_ok(raw[k : k + got]):
                return ReplyVerdict("ok", n - got)
        elif fc == function_code | 0x80 and k + 5 <= n and crc_ok(raw[k : k + 5]):
            return ReplyVerdict("exception", n - 5)
    for k in range(n):
        if raw[k] == unit and k + 1 < n and raw[k + 1] == function_code and k + size <= n:
            return ReplyVerdict("crc", n - size)
    return ReplyVerdict("framing", n)
