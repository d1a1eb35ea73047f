"""NMEA 0183 GPS over serial: bytes in, fixes out (sans-I/O), plus a small fix tracker. Reusable by any vehicle.

Parsing and checksums are pynmea2's (``pynmea2.parse(line, check=True)``); this module adds what a gateway needs
around it:

* :class:`NmeaDecoder` — bytes from arbitrary reads → :class:`RmcFix` / :class:`GgaFix`, counting every sentence
  it could not use by cause: ``bad_checksum`` (``*hh`` present but wrong), ``truncated`` (no ``*hh``: the line was
  cut, e.g. by an unplug or a buffer overrun, or a new ``$`` started before the old sentence ended), ``garbage``
  (not NMEA at all), ``field_errors`` (checksum right but a field does not parse), ``ignored`` (valid sentences of
  other types: GSV, VTG, TXT ...). pynmea2 parses fields lazily, so a malformed field only raises when read;
  the decoder reads every field it uses inside the same ``try``.
* :class:`GpsTracker` — the receiver's state over time: the last usable fix and when it arrived, whether the fix
  is currently good (RMC status ``A``, received within ``timeout_s`` of the data clock), ``dropouts`` (a good fix
  was lost: status ``V`` or silence), and the GGA quality gauges for the status message.

**One fix type.** :class:`RmcFix` is what every consumer takes (the truck's collection tracker, the bus's stop
detector and core): the tracker hands on the decoder's own objects, unchanged, so nothing is converted into
another representation and back. A fix is what the sentence says (a byte vector always gives the same fix); when
it *arrived* is the tracker's business (:meth:`GpsTracker.age_s`, :meth:`GpsTracker.gps_ms_at`). An empty speed
field stays ``None``: each consumer decides what an unknown speed means.

Time: RMC date + time are UTC; a fix's time is taken from them (which in the simulated city is simulated time).
``now_s`` given to the tracker is the gateway's data clock (:func:`edge.clock.now`) when the bytes arrived, used
to age a fix and to extrapolate GPS time during a dropout. Talker ids are not checked (``GP``, ``GN``, ``GL`` ...
all accepted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pynmea2

from edge.sources.common.lines import LineSplitter

#: NMEA 0183 allows 82 characters; leave room for receivers that exceed it a little.
MAX_SENTENCE = 120
KNOT_KMH = 1.852
_CHECKSUM_TAIL = re.compile(r"\*[0-9A-Fa-f]{2}\s*$")


@dataclass(frozen=True, slots=True)
class RmcFix:
    """Recommended minimum data. ``valid`` is status ``A``; with ``V`` the position fields are usually empty.

    ``time_ms`` is GPS time (epoch ms, UTC), ``speed_kmh`` the speed over ground (None: the field was empty).
    """

    valid: bool
    time_ms: int | None
    lat: float | None
    lon: float | None
    speed_kmh: float | None
    course_deg: float | None

    @property
    def usable(self) -> bool:
        """Status ``A`` with a position and a time: a fix a consumer can place and order."""
        return self.valid and self.lat is not None and self.lon is not None and self.time_ms is not None


@dataclass(frozen=True, slots=True)
class GgaFix:
    """Fix quality (0 none, 1 GPS, 2 DGPS, 4/5 RTK ...), satellites in use, horizontal dilution of precision."""

    quality: int
    satellites: int
    hdop: float | None
    lat: float | None
    lon: float | None
    altitude_m: float | None


NmeaEvent = RmcFix | GgaFix


@dataclass
class NmeaCounters:
    sentences: int = 0
    rmc: int = 0
    gga: int = 0
    bad_checksum: int = 0
    truncated: int = 0
    garbage: int = 0
    field_errors: int = 0
    ignored: int = 0
    overlong: int = 0


def _latlon(value: str, hemi: str, deg_digits: int) -> float | None:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` + N/S/E/W → signed degrees; None when empty."""
    if not value:
        return None
    deg = int(value[:deg_digits])
    minutes = float(value[deg_digits:])
    if not 0 <= minutes < 60:
        raise ValueError(f"minutes out of range: {value!r}")
    out = deg + minutes / 60
    if hemi in ("S", "W"):
        out = -out
    elif hemi not in ("N", "E"):
        raise ValueError(f"bad hemisphere {hemi!r}")
    return out


def _float(value: str) -> float | None:
    return float(value) if value else None


def _field(data: list[str], i: int) -> str:
    return data[i].strip() if i < len(data) else ""


def _utc_ms(date: str, hms: str) -> int | None:
    """``ddmmyy`` + ``hhmmss[.sss]`` → epoch ms (UTC); None when either is empty. Years are 2000-2099."""
    if not date or not hms:
        return None
    if len(date) != 6 or len(hms) < 6 or not date.isdigit() or not hms[:6].isdigit():
        raise ValueError(f"bad date/time {date!r} {hms!r}")
    frac = float("0" + hms[6:]) if len(hms) > 6 else 0.0
    dt = datetime(
        2000 + int(date[4:6]),
        int(date[2:4]),
        int(date[0:2]),
        int(hms[0:2]),
        int(hms[2:4]),
        int(hms[4:6]),
        tzinfo=UTC,
    )
    return round((dt.timestamp() + frac) * 1000)


# pynmea2 parses fields lazily and, for a malformed typed field, returns the raw string instead of raising
# (``gps_qual`` 'x', ``timestamp`` '1x3519'): so fields are parsed here from ``msg.data`` and checked.


def _rmc(msg: pynmea2.RMC) -> RmcFix:
    d = msg.data
    speed = _float(_field(d, 6))
    return RmcFix(
        valid=_field(d, 1) == "A",
        time_ms=_utc_ms(_field(d, 8), _field(d, 0)),
        lat=_latlon(_field(d, 2), _field(d, 3), 2),
        lon=_latlon(_field(d, 4), _field(d, 5), 3),
        speed_kmh=None if speed is None else speed * KNOT_KMH,
        course_deg=_float(_field(d, 7)),
    )


def _gga(msg: pynmea2.GGA) -> GgaFix:
    d = msg.data
    quality, sats = _field(d, 5), _field(d, 6)
    return GgaFix(
        quality=int(quality) if quality else 0,
        satellites=int(sats) if sats else 0,
        hdop=_float(_field(d, 7)),
        lat=_latlon(_field(d, 1), _field(d, 2), 2),
        lon=_latlon(_field(d, 3), _field(d, 4), 3),
        altitude_m=_float(_field(d, 8)),
    )


class NmeaDecoder:
    """Bytes from a GPS receiver → RMC/GGA events; everything else counted (see the module docstring)."""

    def __init__(self, max_len: int = MAX_SENTENCE) -> None:
        self.splitter = LineSplitter(max_len)
        self.counters = NmeaCounters()

    def feed(self, data: bytes) -> list[NmeaEvent]:
        out: list[NmeaEvent] = []
        for raw in self.splitter.feed(data):
            ev = self.parse_line(raw)
            if ev is not None:
                out.append(ev)
        self.counters.overlong = self.splitter.overlong
        return out

    def reset(self) -> None:
        """The port was reopened: a pending partial sentence is lost (counted as truncated)."""
        if self.splitter.pending:
            self.counters.truncated += 1
        self.splitter.reset()

    def parse_line(self, raw: bytes) -> NmeaEvent | None:
        c = self.counters
        dollar = raw.rfind(b"$")
        if dollar < 0:
            c.garbage += 1
            return None
        if dollar > 0:
            # Something before the last '$': a sentence cut short by the next one, or line noise.
            if b"$" in raw[:dollar]:
                c.truncated += 1
            else:
                c.garbage += 1
            raw = raw[dollar:]
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            c.garbage += 1
            return None
        if not _CHECKSUM_TAIL.search(line):
            c.truncated += 1
            return None
        try:
            msg = pynmea2.parse(line, check=True)
        except pynmea2.ChecksumError:
            c.bad_checksum += 1
            return None
        except pynmea2.SentenceTypeError:
            c.sentences += 1
            c.ignored += 1  # a valid sentence of a type pynmea2 does not know
            return None
        except (pynmea2.ParseError, ValueError):
            c.garbage += 1
            return None
        c.sentences += 1
        kind = getattr(msg, "sentence_type", "")
        try:
            if kind == "RMC":
                ev: NmeaEvent = _rmc(msg)
                c.rmc += 1
            elif kind == "GGA":
                ev = _gga(msg)
                c.gga += 1
            else:
                c.ignored += 1
                return None
        except (ValueError, TypeError, IndexError, AttributeError):
            c.field_errors += 1
            return None
        return ev


class GpsTracker:
    """The state of one GPS receiver, fed with bytes and the data clock (see the module docstring)."""

    def __init__(self, timeout_s: float = 5.0, max_len: int = MAX_SENTENCE) -> None:
        self.timeout_s = timeout_s
        self.decoder = NmeaDecoder(max_len)
        self.last: RmcFix | None = None  # the last usable fix ...
        self.last_rx_s = 0.0  # ... and the data clock when it arrived
        self.fix_ok = False
        self.dropouts = 0
        self.fix_quality = 0
        self.satellites = 0
        self.hdop = 0.0
        self._last_gga_s = -1e18

    @property
    def counters(self) -> NmeaCounters:
        return self.decoder.counters

    def feed(self, data: bytes, now_s: float) -> list[RmcFix]:
        """New usable fixes (the decoder's own objects) in arrival order; updates fix state and gauges."""
        out: list[RmcFix] = []
        for ev in self.decoder.feed(data):
            if isinstance(ev, RmcFix):
                if ev.usable:
                    self.fix_ok = True
                    self.last, self.last_rx_s = ev, now_s
                    out.append(ev)
                else:
                    self._lose()
            else:
                self.fix_quality, self.satellites = ev.quality, ev.satellites
                self.hdop = ev.hdop if ev.hdop is not None else 0.0
                self._last_gga_s = now_s
        self.tick(now_s)
        return out

    def _lose(self) -> None:
        if self.fix_ok:
            self.dropouts += 1
        self.fix_ok = False

    def tick(self, now_s: float) -> None:
        """Silence counts as losing the fix (receiver unplugged, cable cut, receiver hung)."""
        if self.fix_ok and self.last is not None and now_s - self.last_rx_s > self.timeout_s:
            self._lose()
        if now_s - self._last_gga_s > self.timeout_s:
            self.fix_quality, self.satellites, self.hdop = 0, 0, 0.0

    def current(self, now_s: float) -> RmcFix | None:
        """The live fix, or None during a dropout."""
        self.tick(now_s)
        return self.last if self.fix_ok else None

    def age_s(self, now_s: float) -> float:
        """How long ago (data clock) the last usable fix arrived."""
        return max(0.0, now_s - self.last_rx_s)

    def gps_ms_at(self, now_s: float) -> int:
        """GPS time of the last usable fix extrapolated to ``now_s`` with the data clock (for events between
        fixes and during a dropout). Only with a fix (``last`` not None)."""
        if self.last is None or self.last.time_ms is None:
            raise ValueError("no usable fix yet")
        return self.last.time_ms + round(self.age_s(now_s) * 1000)

    def reset(self) -> None:
        self.decoder.reset()
