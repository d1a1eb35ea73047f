"""The temporal query's parameters (NGSI-LD clauses 4.11, 6.3.12, 4.5.19), pure: ``timerel`` with ``timeAt`` and
``endTimeAt`` into a bounded ``[start, end)`` range, ISO 8601 durations (``aggrPeriodDuration``), and times out.

Bounds (docs/ngsi-ld.md, "Temporal"): raw instances over at most :data:`MAX_RAW_DAYS` days per request,
aggregates over at most :data:`MAX_AGGR_DAYS` days in at most :data:`MAX_PERIODS` periods; ``before`` reads
the :data:`MAX_RAW_DAYS` days before ``timeAt`` (the spec leaves it open-ended); without ``timerel`` (a single
entity's history) the last :data:`DEFAULT_HOURS` hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import HTTPException

from cityos_api.ngsi_ld.errors import NgsiError, bad_request
from cityos_api.params import parse_time

__all__ = ["TimeRange", "parse_duration_ms", "time_range", "utc"]

DAY_MS = 86_400_000
MAX_RAW_DAYS = 31
MAX_AGGR_DAYS = 366
MAX_PERIODS = 10_000
DEFAULT_HOURS = 24
_DURATION = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


def utc(ms: int) -> str:
    """ISO 8601 in UTC with ``Z`` (milliseconds when the time has them), as NGSI-LD brokers write times."""
    t = datetime.fromtimestamp(ms / 1000, UTC)
    text = t.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def _time(param: str, raw: str) -> int:
    try:
        return parse_time(param, raw)
    except HTTPException:
        raise bad_request(param, "an ISO 8601 date-time with its offset (2026-12-01T00:00:00Z)", raw) from None


def parse_duration_ms(raw: str | None) -> int:
    """``aggrPeriodDuration``: ``PT10M``, ``PT1H``, ``P1D``, ``P1W``... in ms (``0``, the default: the whole range).
    Years and months have no fixed length: 400."""
    if raw is None or raw.strip() in ("0", "PT0S", "P0D"):
        return 0
    m = _DURATION.fullmatch(raw.strip())
    if not m or not any(m.groups()) or raw.strip().endswith("T"):
        raise bad_request("aggrPeriodDuration", "an ISO 8601 duration in weeks, days, hours, minutes or seconds "
                          "(PT10M, PT1H, P1D; years and months have no fixed length)", raw)
    w, d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    ms = round(((((w * 7 + d) * 24 + h) * 60 + mi) * 60 + s) * 1000)
    if ms < 1000:
        raise bad_request("aggrPeriodDuration", "at least one second", raw)
    return ms


@dataclass(frozen=True)
class TimeRange:
    start_ms: int
    end_ms: int


def time_range(timerel: str | None, time_at: str | None, end_time_at: str | None, now_ms: int, *,
               aggregated: bool, required: bool) -> TimeRange:
    """The ``[start, end)`` a temporal request reads, bounded; 400 when the parameters are missing, wrong or the
    range too long."""
    longest = (MAX_AGGR_DAYS if aggregated else MAX_RAW_DAYS) * DAY_MS
    days = longest // DAY_MS
    if timerel is None:
        if required:
            raise NgsiError("BadRequestData", "timerel and timeAt are required to query temporal entities "
                            "(timerel=before|after|between)")
        if time_at is not None or end_time_at is not None:
            raise NgsiError("BadRequestData", "timeAt and endTimeAt need timerel")
        return TimeRange(now_ms - DEFAULT_HOURS * 3_600_000, now_ms + 1)
    if timerel not in ("before", "after", "between"):
        raise bad_request("timerel", "before, after or between", timerel)
    if time_at is None:
        raise NgsiError("BadRequestData", "timeAt is required with timerel")
    at = _time("timeAt", time_at)
    if timerel == "between":
        if end_time_at is None:
            raise NgsiError("BadRequestData", "endTimeAt is required with timerel=between")
        end = _time("endTimeAt", end_time_at)
        if end <= at:
            raise bad_request("endTimeAt", "a time after timeAt", end_time_at)
        if end - at > longest:
            raise bad_request("endTimeAt", f"a range of at most {days} days after timeAt (ask for the next range "
                              "in a further request)", end_time_at)
        return TimeRange(at, end)
    if end_time_at is not None:
        raise NgsiError("BadRequestData", "endTimeAt goes only with timerel=between")
    if timerel == "before":
        return TimeRange(at - longest, at)
    if now_ms - at > longest:
        raise bad_request("timeAt", f"with timerel=after, a time at most {days} days ago (use between for older "
                          "ranges)", time_at)
    return TimeRange(at + 1, max(now_ms + 1, at + 2))
