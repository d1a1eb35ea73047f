"""The temporal query's parameters (NGSI-LD clauses 4.11, 6.3.12, 4.5.19), pure: ``timerel`` with ``timeAt`` and
``endTimeAt`` into a bounded ``[start, end)`` range, ISO 8601 durations (``aggrPeriodDuration``), and times out.

Bounds (docs/ngsi-ld.md, "Temporal"): raw instances over at most :data:`MAX_RAW_DAYS` days per request,
aggregates over at most :data:`MAX_AGGR_DAYS` days in at most :data:`MAX_PERIODS` periods; ``before`` reads
the :data:`MAX_RAW_DAYS` days before ``timeAt`` (the spec leaves it open-ended); without ``timerel`` (a single
entity's history) the last :data:`DEFAULT_HOURS` hours. :func:`aggregate` is the aggregation of 4.5.19 for a
provider that has its instances in hand (the InfluxDB helper has InfluxDB aggregate).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException

from cityos_api.ngsi_ld.errors import NgsiError, bad_request
from cityos_api.params import parse_time

__all__ = ["TimeRange", "aggregate", "aggregate_history", "parse_duration_ms", "time_range", "utc"]

DAY_MS = 86_400_000
MAX_RAW_DAYS = 31
MAX_AGGR_DAYS = 366
MAX_PERIODS = 10_000
DEFAULT_HOURS = 24
_DURATION = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


@functools.lru_cache(maxsize=1 << 16)
def utc(ms: int) -> str:
    """ISO 8601 in UTC with ``Z`` (milliseconds when the time has them), as NGSI-LD brokers write times. Kept for
    the last 65,536 times: aggregates repeat their periods' starts and ends for every entity."""
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


def _reduce(method: str, vs: list[float]) -> float | int | None:
    if method == "totalCount":
        return len(vs)
    if method == "distinctCount":
        return len(set(vs))
    if method == "sum":
        return sum(vs)
    if method == "avg":
        return sum(vs) / len(vs)
    if method == "min":
        return min(vs)
    if method == "max":
        return max(vs)
    if method == "stddev":  # the sample's, as InfluxDB's STDDEV (none for one value)
        if len(vs) < 2:
            return None
        mean = sum(vs) / len(vs)
        return math.sqrt(sum((v - mean) ** 2 for v in vs) / (len(vs) - 1))
    raise ValueError(f"not an aggregation method: {method!r}")


def aggregate(instances: Iterable[tuple[float, int]], methods: Sequence[str], period_ms: int, start_ms: int,
              end_ms: int) -> dict[str, list[tuple[float | int, int, int]]]:
    """``methods`` over the numeric instances ``(value, ms)`` in ``[start_ms, end_ms)``, in consecutive periods of
    ``period_ms`` from ``start_ms`` (0: one period, the whole range), as InfluxDB's ``GROUP BY time(period,
    offset) fill(none)`` does for :class:`~cityos_api.ngsi_ld.InfluxFields`: periods without an instance are left
    out, the last ends with the range. A value that is not a finite number is not counted."""
    groups: dict[int, list[float]] = {}
    for v, ms in instances:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            continue
        if start_ms <= ms < end_ms:
            k = (ms - start_ms) // period_ms if period_ms else 0
            groups.setdefault(k, []).append(float(v))
    out: dict[str, list[tuple[float | int, int, int]]] = {}
    for k in sorted(groups):
        t0 = start_ms + k * period_ms if period_ms else start_ms
        t1 = min(t0 + period_ms, end_ms) if period_ms else end_ms
        for m in methods:
            r = _reduce(m, groups[k])
            if r is not None:
                out.setdefault(m, []).append((r, t0, t1))
    return out


def aggregate_history(history: Mapping[str, Mapping[str, Sequence[tuple[Any, int]]]], methods: Sequence[str],
                      period_ms: int, start_ms: int, end_ms: int) -> dict[str, dict[str, Any]]:
    """:func:`aggregate` over a provider's history (entity → attribute → instances): the ``Aggregates`` of a
    provider that has its instances in hand; attributes and entities without a value are left out."""
    out: dict[str, dict[str, Any]] = {}
    for eid, per in history.items():
        agg = {a: r for a, inst in per.items() if (r := aggregate(inst, methods, period_ms, start_ms, end_ms))}
        if agg:
            out[eid] = agg
    return out
