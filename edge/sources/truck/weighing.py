"""Weighing-indicator ASCII lines (``ST,GS,+00123.45kg\\r\\n``): bytes in, weight frames out. Sans-I/O.

A truck-scale indicator streams one line per display update over RS-232/RS-485: a header (``ST`` stable,
``US`` unstable, ``OL`` overload), the weighing mode (``GS`` gross, ``NT`` net), a signed, zero-padded value and
a unit (``kg`` or ``t``, some indicators put a space before it). Nothing here touches a port: the source feeds
whatever bytes a read returned to :class:`WeighingDecoder` and gets :class:`WeightFrame` objects back, so every
framing and format rule is tested with byte vectors, not with a serial line.

Why a hand-written splitter rather than ``readline()``: reads return arbitrary fragments (a line split across
two reads, three lines in one), a noisy line may never send its CR LF, and a line must not be able to grow
without bound in a 40 MB process. :class:`~edge.sources.common.lines.LineSplitter` (shared with the NMEA decoder) keeps
at most ``max_len`` bytes of a pending line and discards (and counts) the rest up to the next terminator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from edge.sources.common.lines import LineSplitter

__all__ = [
    "MAX_LINE",
    "LineSplitter",
    "WeighingDecoder",
    "WeighingFormatError",
    "WeightFrame",
    "parse_weight_line",
]

Status = Literal["ST", "US", "OL"]
Mode = Literal["GS", "NT"]

#: Longest line an indicator sends; real ones are 17-20 bytes. Longer means noise or a missing terminator.
MAX_LINE = 64

_LINE_RE = re.compile(
    rb"^(?P<status>ST|US|OL),(?P<mode>GS|NT),(?P<sign>[+-])\s*(?P<value>\d{1,9}(?:\.\d{1,6})?)\s*(?P<unit>kg|t)$"
)
#: An overload line carries no usable value (indicators send ``+OL``, ``9999999`` or blanks): only the header.
_OL_RE = re.compile(rb"^OL,(?P<mode>GS|NT),")
_UNIT_KG = {b"kg": 1.0, b"t": 1000.0}


class WeighingFormatError(ValueError):
    """A complete line that is not a weight line (garbage, a truncated line, an unknown header or unit)."""


@dataclass(frozen=True, slots=True)
class WeightFrame:
    """One display update. ``kg`` is None for an overload line (the display shows no number)."""

    status: Status
    mode: Mode
    kg: float | None

    @property
    def stable(self) -> bool:
        return self.status == "ST"


def parse_weight_line(line: bytes) -> WeightFrame:
    """One line without its terminator → a frame; raise :class:`WeighingFormatError` saying what is wrong."""
    line = line.strip(b" \t")
    m = _LINE_RE.match(line)
    if m is None:
        ol = _OL_RE.match(line)
        if ol is not None:
            return WeightFrame("OL", ol["mode"].decode(), None)  # type: ignore[arg-type]
        raise WeighingFormatError(f"not a weight line: {line[:40]!r}")
    if m["status"] == b"OL":  # some indicators still print a number (full scale) with OL: it is not a weight
        return WeightFrame("OL", m["mode"].decode(), None)  # type: ignore[arg-type]
    value = float(m["value"]) * _UNIT_KG[m["unit"]]
    if m["sign"] == b"-":
        value = -value
    # 1e-6 kg is finer than any indicator resolves: rounding removes the t → kg float noise (0.00123 t).
    value = round(value, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    return WeightFrame(m["status"].decode(), m["mode"].decode(), value)  # type: ignore[arg-type]


@dataclass
class WeighingCounters:
    lines: int = 0
    stable: int = 0
    unstable: int = 0
    overload: int = 0
    bad_lines: int = 0
    overlong: int = 0
    partial: int = 0
    last_error: str = field(default="", repr=False)


class WeighingDecoder:
    """Bytes from the indicator → :class:`WeightFrame` list, counting what it could not use."""

    def __init__(self, max_len: int = MAX_LINE) -> None:
        self.splitter = LineSplitter(max_len)
        self.counters = WeighingCounters()

    def feed(self, data: bytes) -> list[WeightFrame]:
        frames: list[WeightFrame] = []
        c = self.counters
        for line in self.splitter.feed(data):
            try:
                frame = parse_weight_line(line)
            except WeighingFormatError as exc:
                c.bad_lines += 1
                c.last_error = str(exc)
                continue
            c.lines += 1
            if frame.status == "ST":
                c.stable += 1
            elif frame.status == "US":
                c.unstable += 1
            else:
                c.overload += 1
            frames.append(frame)
        c.overlong = self.splitter.overlong
        return frames

    def reset(self) -> None:
        """The port was reopened: a partial line pending from before is garbage now."""
        self.splitter.reset()
        self.counters.partial = self.splitter.partial
