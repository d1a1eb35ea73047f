"""Logging helpers shared by the source plug-ins: our own rate-limited warnings (:class:`RateLimited`) and the
one filter for the protocol libraries' own log lines (:class:`LibraryLogFilter`, :func:`install_once`)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

#: A device fault repeats every poll: one log line per kind of fault per minute is enough.
LOG_PERIOD_S = 60.0


class RateLimited:
    """At most one log line per key per period; the next one says how many were suppressed."""

    def __init__(self, logger: logging.Logger, period_s: float = LOG_PERIOD_S) -> None:
        self.logger, self.period_s = logger, period_s
        self._seen: dict[str, list[float]] = {}  # key -> [last logged (monotonic), suppressed]

    def __call__(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.period_s:
            entry[1] += 1
            return
        suppressed = int(entry[1]) if entry else 0
        self._seen[key] = [now, 0]
        if suppressed:
            msg += " (%d similar suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args)


class LibraryLogFilter(logging.Filter):
    """Rate-limits a protocol library's own log lines (momonga's): one line per key per period, so a
    device that fails every poll does not fill the journal; everything passes while the library's logger is at
    DEBUG (a technician chasing a fault wants every line). ``observe`` sees every record first (to count what the
    library only logs), ``drop`` discards chatter outright; lines are "the same" by logger and first 80 chars."""

    def __init__(
        self,
        library: str,
        period_s: float = LOG_PERIOD_S,
        *,
        drop: Callable[[logging.LogRecord], bool] | None = None,
        observe: Callable[[logging.LogRecord], None] | None = None,
    ) -> None:
        super().__init__()
        self.library, self.period_s = library, period_s
        self._drop, self._observe = drop, observe
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if self._observe is not None:
            self._observe(record)
        if logging.getLogger(self.library).getEffectiveLevel() <= logging.DEBUG:
            return True
        if self._drop is not None and self._drop(record):
            return False
        key = f"{record.name}:{str(record.msg)[:80]}"
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -math.inf) < self.period_s:
                return False
            self._last[key] = now
        return True


_installed: set[str] = set()
_installed_lock = threading.Lock()


def install_once(name: str, loggers: Iterable[logging.Logger], make: Callable[[], logging.Filter]) -> None:
    """Add the filter ``make()`` to ``loggers`` once per process, however many sources start (each source's
    thread would otherwise add its own, and every line would pass through all of them)."""
    with _installed_lock:
        if name in _installed:
            return
        f = make()
        for lg in loggers:
            lg.addFilter(f)
        _installed.add(name)
