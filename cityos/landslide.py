"""The landslide-watch thresholds and criteria of the forest stations: the one source the dashboards' panels and
alert rules (``dashboards/families/forest.py``) and the City OS API (``cityos_api/families/forest.py``) share.

Pure: no I/O, nothing else of the project. The thresholds are docs/forest.md's; :func:`assess` gives one
reading's alert level exactly as the two Grafana alert rules decide it, reading by reading:

* ``warning`` (rule ``cityos-landslide-warning``): ``soil_moisture_pct`` >= :data:`SOIL_MOISTURE_WARNING_PCT`
  AND ``rain_intensity_mm_h`` >= :data:`RAIN_INTENSE_MM_H` in the same reading, OR ``|tilt_rate_x_deg_h|`` or
  ``|tilt_rate_y_deg_h|`` >= :data:`TILT_RATE_WARNING_DEG_H`;
* ``caution`` (rule ``cityos-slope-tilt-caution``): ``|tilt rate|`` >= :data:`TILT_RATE_CAUTION_DEG_H` on
  either axis;
* ``none`` otherwise.

As in InfluxQL, a value that is absent (a sensor in fault) meets no criterion, and so does one that is not a
finite number. Every criterion met is listed (a tilting rate at the warning rate meets the caution criterion
too, as both rules fire then).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ASSESSED_FIELDS",
    "CAUTION",
    "CRITERIA",
    "FOREST_ALERT_WINDOW_MIN",
    "LEVELS",
    "NONE",
    "RAIN_CUMULATIVE_CAUTION_MM",
    "RAIN_CUMULATIVE_WARNING_MM",
    "RAIN_EXTREME_MM_H",
    "RAIN_INTENSE_MM_H",
    "RAIN_VERY_INTENSE_MM_H",
    "SOIL_AND_RAIN",
    "SOIL_MOISTURE_WARNING_PCT",
    "TILT_RATE_CAUTION",
    "TILT_RATE_CAUTION_DEG_H",
    "TILT_RATE_FIELDS",
    "TILT_RATE_WARNING",
    "TILT_RATE_WARNING_DEG_H",
    "WARNING",
    "AlertSpan",
    "Assessment",
    "alert_spans",
    "assess",
    "criteria_bits",
    "criteria_of",
    "finite_number",
    "highest",
    "influxql_at_caution",
    "join_spans",
]

#: Hourly rain (60-minute rainfall), JMA's terms for rain intensity (雨の強さと降り方): 30–50 mm/h 激しい雨,
#: 50–80 mm/h 非常に激しい雨, ≥ 80 mm/h 猛烈な雨.
RAIN_INTENSE_MM_H = 30.0
RAIN_VERY_INTENSE_MM_H = 50.0
RAIN_EXTREME_MM_H = 80.0
#: Continuous rainfall (連続雨量): the range in which road administrators' pre-emptive closures start (docs/forest.md).
RAIN_CUMULATIVE_CAUTION_MM = 100.0
RAIN_CUMULATIVE_WARNING_MM = 150.0
#: Volumetric soil water content at 10 cm above which the ground counts as wet enough for a landslide warning.
SOIL_MOISTURE_WARNING_PCT = 40.0
#: Tilting rate of a slope, deg/h (docs/forest.md: ~0.1 deg/h caution in the literature; this city warns at 0.5).
TILT_RATE_CAUTION_DEG_H = 0.1
TILT_RATE_WARNING_DEG_H = 0.5
#: Window of the forest alert queries: longer than the slowest station sampling (600 s) plus delivery.
FOREST_ALERT_WINDOW_MIN = 20

TILT_RATE_FIELDS = ("tilt_rate_x_deg_h", "tilt_rate_y_deg_h")
#: The fields a reading's level is assessed on (:func:`assess` reads nothing else).
ASSESSED_FIELDS = ("soil_moisture_pct", "rain_intensity_mm_h", *TILT_RATE_FIELDS)

NONE, CAUTION, WARNING = "none", "caution", "warning"
#: The levels, lowest first.
LEVELS = (NONE, CAUTION, WARNING)

SOIL_AND_RAIN = "soil_moisture_and_rain"
TILT_RATE_WARNING = "tilt_rate_warning"
TILT_RATE_CAUTION = "tilt_rate_caution"
#: Each criterion: the level it raises and what it is, in the order criteria are listed.
CRITERIA: dict[str, tuple[str, str]] = {
    SOIL_AND_RAIN: (WARNING, f"soil_moisture_pct >= {SOIL_MOISTURE_WARNING_PCT:g} and rain_intensity_mm_h >= "
                             f"{RAIN_INTENSE_MM_H:g} in the same reading"),
    TILT_RATE_WARNING: (WARNING, f"|tilt_rate_x_deg_h| or |tilt_rate_y_deg_h| >= {TILT_RATE_WARNING_DEG_H:g}"),
    TILT_RATE_CAUTION: (CAUTION, f"|tilt_rate_x_deg_h| or |tilt_rate_y_deg_h| >= {TILT_RATE_CAUTION_DEG_H:g}"),
}


@dataclass(frozen=True)
class Assessment:
    """A level (one of :data:`LEVELS`) and the criteria met (keys of :data:`CRITERIA`, in its order)."""

    level: str
    criteria: tuple[str, ...] = ()


def finite_number(v: Any) -> float | None:
    """A finite number as a float, else None (exact types: a ``bool`` is not a number here). Cheap: every
    reading of a page of history is assessed, every column of every rollup row read checked
    (:mod:`cityos.rollups`)."""
    t = type(v)
    if t is float:
        return v if v - v == 0.0 else None  # type: ignore[no-any-return]
    if t is int:
        return float(v)
    return None


def _at_least(v: Any, limit: float) -> bool:
    x = finite_number(v)
    return x is not None and x >= limit


def _tilt_rate(values: Mapping[str, Any]) -> float | None:
    """The larger tilting rate of the two axes, either direction (``|x| >= limit`` is InfluxQL's ``f >= limit OR
    f <= -limit``), or None when neither is a number."""
    x, y = finite_number(values.get(TILT_RATE_FIELDS[0])), finite_number(values.get(TILT_RATE_FIELDS[1]))
    if x is None:
        return None if y is None else abs(y)
    return abs(x) if y is None else max(abs(x), abs(y))


def _level(criteria: Iterable[str]) -> str:
    return max((CRITERIA[c][0] for c in criteria), key=LEVELS.index, default=NONE)


#: The assessment of a reading that meets no criterion (most of them: one shared value).
_QUIET = Assessment(NONE)


def assess(values: Mapping[str, Any]) -> Assessment:
    """One reading's level and the criteria it meets (see the module's docstring). Every reading of a page of
    history is assessed: each field is read once."""
    met = []
    if _at_least(values.get("soil_moisture_pct"), SOIL_MOISTURE_WARNING_PCT) and _at_least(
            values.get("rain_intensity_mm_h"), RAIN_INTENSE_MM_H):
        met.append(SOIL_AND_RAIN)
    tilt = _tilt_rate(values)
    if tilt is not None and tilt >= TILT_RATE_WARNING_DEG_H:
        met.append(TILT_RATE_WARNING)
    if tilt is not None and tilt >= TILT_RATE_CAUTION_DEG_H:
        met.append(TILT_RATE_CAUTION)
    return Assessment(_level(met), tuple(met)) if met else _QUIET


def highest(assessments: Iterable[Assessment]) -> Assessment:
    """Several readings together (a station's window, an episode): the highest level, every criterion met."""
    met = {c for a in assessments for c in a.criteria}
    criteria = tuple(c for c in CRITERIA if c in met)
    return Assessment(_level(criteria), criteria)


def influxql_at_caution() -> str:
    """The readings at caution or above as an InfluxQL condition: the rules' thresholds, a superset check that
    lets InfluxDB leave out the calm readings (:func:`assess` decides each reading's level)."""
    tilt = " OR ".join(f'"{f}" >= {TILT_RATE_CAUTION_DEG_H:g} OR "{f}" <= -{TILT_RATE_CAUTION_DEG_H:g}'
                       for f in TILT_RATE_FIELDS)
    return (f'(("soil_moisture_pct" >= {SOIL_MOISTURE_WARNING_PCT:g} AND "rain_intensity_mm_h" >= '
            f'{RAIN_INTENSE_MM_H:g}) OR {tilt})')


@dataclass(frozen=True)
class AlertSpan:
    """A station's readings at caution or above that lie less than a window apart: the first and the last one's
    time, how many, and every criterion met. The rollups keep one per station and 10 minutes (any two readings in
    10 minutes are less than the 20-minute window apart, so nothing is lost); joined (:func:`join_spans`) they are
    the episodes, exactly as joining the readings themselves would give."""

    station: str
    first_ms: int
    last_ms: int
    readings: int
    criteria: tuple[str, ...]

    @property
    def level(self) -> str:
        return _level(self.criteria)


def criteria_bits(criteria: Iterable[str]) -> int:
    """Criteria as a bitmask (bit i: the i-th of :data:`CRITERIA`), as the rollups store them."""
    names = list(CRITERIA)
    return sum(1 << names.index(c) for c in set(criteria))


def criteria_of(bits: int) -> tuple[str, ...]:
    """The criteria of a bitmask, in :data:`CRITERIA`'s order (unknown bits ignored)."""
    return tuple(c for i, c in enumerate(CRITERIA) if bits >> i & 1)


def _merge(a: AlertSpan, b: AlertSpan) -> AlertSpan:
    met = set(a.criteria) | set(b.criteria)
    return AlertSpan(a.station, min(a.first_ms, b.first_ms), max(a.last_ms, b.last_ms), a.readings + b.readings,
                     tuple(c for c in CRITERIA if c in met))


def alert_spans(points: Iterable[tuple[str, int, Assessment]], step_ms: int) -> list[AlertSpan]:
    """(station, time, assessment) of readings → a span per station and ``step_ms`` bucket of those at caution or
    above (the others are left out); sorted by station and time."""
    acc: dict[tuple[str, int], AlertSpan] = {}
    for st, t, a in points:
        if a.level == NONE:
            continue
        span = AlertSpan(st, t, t, 1, a.criteria)
        key = (st, t // step_ms)
        acc[key] = _merge(acc[key], span) if key in acc else span
    return [acc[k] for k in sorted(acc)]


def join_spans(spans: Iterable[AlertSpan], window_ms: int) -> list[AlertSpan]:
    """Spans of the same station joined while the next one's first reading is less than ``window_ms`` after the
    current one's last: the episodes (as a rule stays firing while such a reading is in its window); sorted by
    start, then station."""
    per: dict[str, list[AlertSpan]] = {}
    for s in spans:
        per.setdefault(s.station, []).append(s)
    out: list[AlertSpan] = []
    for items in per.values():
        items.sort(key=lambda s: (s.first_ms, s.last_ms))
        cur: AlertSpan | None = None
        for s in items:
            if cur is not None and s.first_ms - cur.last_ms < window_ms:
                cur = _merge(cur, s)
            else:
                if cur is not None:
                    out.append(cur)
                cur = s
        if cur is not None:
            out.append(cur)
    return sorted(out, key=lambda s: (s.first_ms, s.station))
