"""A serial port that a source reopens by its path with backoff: shared by the sources that read NMEA GPS and
line-oriented devices (garbage trucks, buses).

Opened with pyserial (it sets baud and raw mode) and read with ``os.read`` after the caller's ``select``. On open
the input buffer is flushed: stale bytes in the driver are of unknown age (a weight or fix from minutes ago). An
I/O error, a hang-up, or a udev symlink that now leads elsewhere (checked every second) closes the port; it is
reopened by its configured path with backoff (0.1 s doubling to 2 s). Reads are *bounded* (``chunk`` bytes per
call) so a thread serving several ports interleaves their backlogs after a stall. Warnings go through the
caller's :class:`~edge.sources.common.logs.RateLimited` (one per minute per cause, with the count suppressed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from edge.sources.common.logs import RateLimited

__all__ = ["SerialPort"]

OPEN_BACKOFF_MIN_S = 0.1
OPEN_BACKOFF_MAX_S = 2.0
LINK_CHECK_S = 1.0


class SerialPort:
    """One serial port, reopened by path with backoff (see the module docstring).

    ``role`` names the port in logs and rate-limit keys (``gps``, ``indicator``); ``source`` is the source's
    name; ``chunk`` bounds each :meth:`read`. Info lines go to ``warn``'s logger, so they carry the source
    module's logger name.
    """

    def __init__(self, role: str, path: str, baud: int, warn: RateLimited, source: str, chunk: int) -> None:
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        self.role, self.path, self.baud, self.chunk = role, path, baud, chunk
        self._warn, self._source = warn, source
        self._log = warn.logger
        self.ser: Any = None
        self.fd: int | None = None
        self.target: str | None = None
        self.errors = 0
        self.reconnects = 0
        self._failed = False
        self._next_open = 0.0
        self._backoff = OPEN_BACKOFF_MIN_S
        self._next_link_check = 0.0

    @property
    def is_open(self) -> bool:
        return self.fd is not None

    def ensure_open(self) -> bool:
        """Open if closed and due; True when just opened (decoders must drop partial lines)."""
        now = time.monotonic()
        if self.fd is not None:
            if now >= self._next_link_check:
                self._next_link_check = now + LINK_CHECK_S
                if os.path.realpath(self.path) != self.target:
                    self.fail("now leads elsewhere" if os.path.exists(self.path) else "vanished")
            return False
        if now < self._next_open:
            return False
        import serial  # pyserial; imported here so the codecs and trackers need no serial stack

        try:
            if not os.path.exists(self.path):
                raise OSError(f"{self.path} missing")
            ser = serial.Serial(self.path, self.baud, timeout=0)
            ser.reset_input_buffer()
        except (OSError, serial.SerialException, ValueError) as exc:
            self.errors += 1
            self._failed = True
            self._warn(
                logging.WARNING, f"open:{self.role}", "%s: cannot open %s port %s (%s); retrying in %.2g s",
                self._source, self.role, self.path, _short(exc), self._backoff,
            )  # fmt: skip
            self._next_open = now + self._backoff
            self._backoff = min(self._backoff * 2, OPEN_BACKOFF_MAX_S)
            return False
        self.ser, self.fd, self.target = ser, ser.fileno(), os.path.realpath(self.path)
        self._backoff = OPEN_BACKOFF_MIN_S
        self._next_link_check = now + LINK_CHECK_S
        if self._failed:
            self.reconnects += 1
            self._log.info("%s: reopened %s port %s (%s)", self._source, self.role, self.path, self.target)
        else:
            self._log.info("%s: opened %s port %s (%s)", self._source, self.role, self.path, self.target)
        self._failed = False
        return True

    def read(self) -> bytes:
        """A bounded chunk of what is waiting; b"" when nothing. Closes the port (and returns b"") on failure."""
        if self.fd is None:
            return b""
        try:
            data = os.read(self.fd, self.chunk)
        except BlockingIOError:
            return b""
        except OSError as exc:
            self.fail(_short(exc))
            return b""
        if not data:
            self.fail("hang-up")
        return data

    def fail(self, why: str) -> None:
        """Count an error, close, and schedule the reopen after the current backoff."""
        self.errors += 1
        self._warn(
            logging.WARNING,
            f"io:{self.role}",
            "%s: %s port %s: %s; reopening",
            self._source,
            self.role,
            self.path,
            why,
        )
        self.close()
        self._failed = True
        self._next_open = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, OPEN_BACKOFF_MAX_S)

    def close(self) -> None:
        if self.ser is not None:
            # Closing a vanished device may fail in pyserial; there is nothing to do about it.
            with contextlib.suppress(Exception):
                self.ser.close()
        self.ser = self.fd = None


def _short(exc: BaseException | str) -> str:
    return str(exc).split("\n", 1)[0][:160]
