"""Incremental line splitting for line-oriented serial devices (weighing indicators, NMEA GPS receivers).

Reads from a serial port return arbitrary fragments: half a line, or three lines and a bit. ``readline()`` on a
pyserial port would block a thread per port and lets a line with no terminator grow without bound; this
splitter is fed whatever a non-blocking read returned and bounds what it holds.
"""

from __future__ import annotations

MAX_LINE = 128


class LineSplitter:
    """Incremental line splitter: feed arbitrary byte fragments, get complete lines (terminators removed).

    CR, LF and CR LF all end a line (indicators differ); empty lines are dropped. A pending line longer than
    ``max_len`` is discarded up to the next terminator and counted in ``overlong``. :meth:`reset` drops a
    pending partial line (the port was reopened: its start is gone) and counts it in ``partial``.
    """

    def __init__(self, max_len: int = MAX_LINE) -> None:
        self.max_len = max_len
        self._buf = bytearray()
        self._discarding = False
        self.overlong = 0
        self.partial = 0

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        n = len(data)
        while start < n:
            cut = _first_terminator(data, start)
            if cut < 0:
                self._append(data[start:])
                break
            self._append(data[start:cut])
            if self._discarding:
                self._discarding = False
            elif self._buf:
                lines.append(bytes(self._buf))
            self._buf.clear()
            start = cut + 1
        return lines

    def _append(self, chunk: bytes) -> None:
        if self._discarding or not chunk:
            return
        if len(self._buf) + len(chunk) > self.max_len:
            self._buf.clear()
            self._discarding = True
            self.overlong += 1
            return
        self._buf += chunk

    def reset(self) -> None:
        if self._buf:
            self.partial += 1
        self._buf.clear()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an unterminated line held."""
        return len(self._buf)


def _first_terminator(data: bytes, start: int) -> int:
    cr, lf = data.find(b"\r", start), data.find(b"\n", start)
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)
