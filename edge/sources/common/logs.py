"""Logging helpers shared by the source plug-ins."""

from __future__ import annotations

import logging
import time
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
