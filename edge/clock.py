"""Can the gateway's own clock be trusted? Every edge timestamp depends on it (stations' clocks are set from it).

A Raspberry Pi has no RTC: until NTP syncs it boots at the last shutdown time (fake-hwclock) or at 1970. Writing
that into a station would stamp its samples with a wrong time, and those points would land elsewhere in InfluxDB
(or be dead-lettered as out of range). So sources refuse to set device clocks from an implausible gateway clock,
and the status message reports whether the kernel considers the clock synchronised.
"""

from __future__ import annotations

import ctypes
import functools
import time

from cityos.simclock import ScaledClock

#: No gateway of this project runs before this date: a clock earlier than it is certainly wrong (1970 boot).
MIN_PLAUSIBLE_EPOCH_S = 1_767_225_600  # 2026-01-01T00:00:00Z

_TIME_ERROR = 5  # adjtimex(2) clock state: not synchronised


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]  # fmt: skip


_scaled: ScaledClock | None = None


def now() -> float:
    """The gateway's data clock in epoch seconds: what readings are stamped with and device clocks are set from.

    It is the system clock, except in the simulated city, where the agent's ``[clock]`` section makes it the
    scenario's scaled clock (see :mod:`cityos.simclock`). Sources use this, never ``time.time()``, for data time.
    """
    return time.time() if _scaled is None else _scaled.now()


def use_scaled(clock: ScaledClock | None) -> None:
    """Make :func:`now` follow a scaled clock (``None``: the system clock again)."""
    global _scaled
    _scaled = clock


def scaled() -> ScaledClock | None:
    return _scaled


def plausible(now_s: float | None = None) -> bool:
    return (now() if now_s is None else now_s) >= MIN_PLAUSIBLE_EPOCH_S


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, for the calls Python's os module lacks (adjtimex, malloc_trim); None if not loadable."""
    try:
        return ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them: no ldconfig run
    except OSError:
        return None


def kernel_synced() -> bool | None:
    """True/False as the kernel's NTP discipline says (what `timedatectl` shows), None where it cannot be asked."""
    c = libc()
    try:
        state = c.adjtimex(ctypes.byref(_Timex())) if c is not None else -1
    except AttributeError:
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR
