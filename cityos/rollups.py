"""The rollups' contract and the one computation their writer and their reader share (docs/api.md
"Pre-aggregation").

The rollup service (``rollup/``, ``cityos rollup``) reads the city's raw data and writes pre-aggregated rows into a
database of their own (the *target*, by default the source's name + ``_rollup``: ``cityos`` → ``cityos_rollup``);
the City OS API reads the rows. What both must agree on lives here: the measurements, their tags and fields, the
target's name, and what one household used in one half hour (the API's per-household route and the rollup's
district sums compute it with :func:`household_half_hours`, never with a copy).

Measurements of the target (timestamps are period starts):

=====================  ==========  ===========================================================================
measurement            tags        fields
=====================  ==========  ===========================================================================
``energy_district_30m``  district  ``kwh`` (households' kWh summed, rounded to Wh), ``households`` (int)
``energy_district_1d``   district  ``kwh`` (the day's frozen half hours summed), ``households`` (distinct, int),
                                   ``slots`` (half hours with a row, int), ``min_households`` (fewest in a slot)
``waste_district_1d``    district  ``kg``, ``pickups`` (int); the JST day; ``unknown`` is the pickups without a
                                   district, as the trucks tag them
``rollup_progress``      job       ``until_ms`` (int): where the job stopped (its next period's start)
=====================  ==========  ===========================================================================

Every group is stored, even one below k: the k rule is the readers' (the API, dashboards), at read time.
Pure: the InfluxDB calls go through the ``query`` function a caller passes (``query(db, influxql) -> (status,
body)``, as the API's :data:`~cityos_api.gtfs_rt.QueryFn`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cityos.influx import InfluxQueryError, QueryFn, query_results, quote_literal

__all__ = [
    "DAY_MS", "ENERGY", "ENERGY_1D", "ENERGY_30M", "ENERGY_FIELD", "JST_OFFSET_MS", "MAX_HALF_HOUR_KWH",
    "MAX_PICKUP_KG", "PROGRESS", "SLOTS_PER_DAY", "SLOT_MS", "TARGET_SUFFIX", "UNKNOWN_DISTRICT", "WASTE_1D",
    "WASTE_COLLECTION", "QueryFn", "Slot", "district_sums", "household_half_hours", "jst_day",
    "target_db", "target_missing", "target_results",
]

SLOT_MS = 30 * 60_000
DAY_MS = 86_400_000
SLOTS_PER_DAY = DAY_MS // SLOT_MS
JST_OFFSET_MS = 9 * 3_600_000  # Japan has no daylight saving time: every JST day is 24 h

#: Raw data (the ingest's measurements).
ENERGY = "energy"
ENERGY_FIELD = "energy_fixed_kwh"
WASTE_COLLECTION = "waste_collection"
#: A pickup heavier than this is not a pickup (a packer truck carries at most a few tonnes): skipped and counted.
MAX_PICKUP_KG = 20_000.0
#: The trucks' district tag of a pickup made outside every district (or without a position).
UNKNOWN_DISTRICT = "unknown"
#: A household's half hour above this is a broken value, skipped and counted.
MAX_HALF_HOUR_KWH = 1e6

#: Rollups (the target database).
ENERGY_30M = "energy_district_30m"
ENERGY_1D = "energy_district_1d"
WASTE_1D = "waste_district_1d"
PROGRESS = "rollup_progress"
TARGET_SUFFIX = "_rollup"


def target_db(source_db: str) -> str:
    """The rollups' database of a source database when none is configured: ``cityos`` → ``cityos_rollup``."""
    return source_db + TARGET_SUFFIX


def target_missing(exc: Exception, db: str) -> bool:
    """True if ``exc`` (an :class:`~cityos.influx.InfluxQueryError`) says the target database ``db`` is not
    there for this user: not created yet (``database not found``) or no READ on it (InfluxDB 1.x answers a
    user without a grant on a database that does not exist the same way)."""
    text = str(getattr(exc, "error", "") or exc)
    return f"database not found: {db}" in text or text.rstrip().endswith(f"requires READ on {db}")


_log = logging.getLogger("cityos.rollups")
_warned: dict[str, float] = {}


def target_results(query: QueryFn, db: str, q: str) -> list[dict[str, Any]]:
    """The results of ``q`` on the rollups' database ``db`` (as :func:`~cityos.influx.query_results`). When that
    database is not there for this user (:func:`target_missing`) the failure is raised like any other (a reader
    answers 503: "no rows" would read as "nothing happened"), after a warning naming the database and the fix,
    logged at most once a minute."""
    try:
        return query_results(*query(db, q))
    except InfluxQueryError as exc:
        if target_missing(exc, db):
            now = time.monotonic()
            if now - _warned.get(db, -3600.0) >= 60:
                _warned[db] = now
                _log.warning("the rollups' database %s is not there for this user (create it and grant READ: "
                             "`cityos fleet influxdb`; run `cityos rollup`)", db)
        raise


def jst_day(ms: int) -> int:
    """The start (epoch ms) of the JST day holding ``ms``."""
    return (ms + JST_OFFSET_MS) // DAY_MS * DAY_MS - JST_OFFSET_MS


@dataclass(frozen=True)
class Slot:
    """One household's kWh in the half hour starting at ``start_ms``."""

    device: str
    district: str
    start_ms: int
    kwh: float


def household_half_hours(query: QueryFn, db: str, start_ms: int, end_ms: int, device: str | None = None
                         ) -> tuple[list[Slot], int]:
    """Every household half hour starting in ``[start_ms, end_ms)`` (of one ``device``), and the number of stored
    values that could not be used.

    A household's half hour is the difference of two consecutive fixed-time cumulative values
    (``energy_fixed_kwh``, stamped at the end of each half hour, a meter may add milliseconds) exactly 30 whole
    minutes apart; a missing value leaves both half hours around it unknown (never spread, never guessed).
    Unusable, counted: a value that is not a number (a string or boolean stored in a shard of its own: InfluxDB
    1.x hides such values from a numeric read, so they are counted with a cast), a negative difference (a meter
    that went back), a half hour of :data:`MAX_HALF_HOUR_KWH` or more."""
    # a minute of slack each side (milliseconds past :00/:30); one value before the range gives its first slot
    where = f"time >= {start_ms - 60_000}ms AND time < {end_ms + 60_000}ms"
    exact = f"time >= {start_ms}ms AND time < {end_ms}ms"
    dev = f' AND "device" = {quote_literal(device)}' if device else ""
    f = f'"{ENERGY_FIELD}"'
    values, wrong = query_results(*query(db, (
        f'SELECT {f}::float AS "v" FROM "{ENERGY}" WHERE {where}{dev} GROUP BY "device", "district"; '
        f'SELECT count({f}::string) AS "s", count({f}::boolean) AS "b" FROM "{ENERGY}" WHERE {exact}{dev}')))
    bad = sum(int(row[i] or 0) for s in wrong.get("series", []) for row in s.get("values", []) for i in (1, 2))
    out: list[Slot] = []
    for s in values.get("series", []):
        tags = s.get("tags") or {}
        prev: tuple[int, float] | None = None
        for t, v in s.get("values", []):
            if isinstance(v, bool) or not isinstance(v, int | float):
                prev = None  # not a number (cannot come from a ::float read; counted above if it did)
                continue
            t = int(t)
            if prev is not None and (t - prev[0]) // 60_000 == 30:
                kwh = v - prev[1]
                end = t - t % SLOT_MS  # the value ends the half hour before it
                start = end - SLOT_MS
                if start_ms <= start < end_ms:
                    if not 0 <= kwh < MAX_HALF_HOUR_KWH:
                        bad += 1
                    else:
                        out.append(Slot(tags.get("device", ""), tags.get("district", ""), start, float(kwh)))
            prev = (t, float(v))
    return out, bad


def district_sums(slots: Iterable[Slot]) -> dict[tuple[str, int], tuple[float, int]]:
    """(district, slot start) → (kWh summed over its households, rounded to Wh; households), sorted. Households
    without a district are in no district."""
    acc: dict[tuple[str, int], list[float]] = defaultdict(list)
    for s in slots:
        if s.district:
            acc[(s.district, s.start_ms)].append(s.kwh)
    return {key: (round(sum(vals), 3), len(vals)) for key, vals in sorted(acc.items())}

