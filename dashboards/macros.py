"""Grafana's macros and template variables in InfluxQL, expanded the way Grafana expands them.

A dashboard query goes through two hands in Grafana 10/11 (InfluxQL datasource, server access, the backend
query path): the **frontend** interpolates template variables (``templateSrv.replace`` with the InfluxDB
datasource's ``interpolateQueryExpr`` as format function) but leaves ``$__interval`` / ``$__interval_ms`` alone;
the **backend** (``pkg/tsdb/influxdb/influxql/models``, ``Query.Build``) then replaces ``$timeFilter``,
``$interval``, ``$__interval_ms`` and ``$__interval`` with plain string replacement. :func:`expand` does both, in
that order.

Rules implemented (checked against Grafana's sources: ``rangeutil.ts``, ``template_srv.ts``, the InfluxDB
datasource's ``datasource.ts`` and its tests, ``pkg/tsdb/influxdb/influxql/models/query.go``, ``gtime``):

``$timeFilter``
    ``time >= {from}ms and time <= {to}ms`` (backend ``renderTimeFilter``: absolute epoch milliseconds).
``$__interval`` / ``$interval`` / ``$__interval_ms``
    The interval the frontend computed (:func:`calculate_interval`), as Grafana's backend formats it
    (``gtime.FormatInterval``: the largest unit that fits, integer division: ``1d``, ``12h``, ``5m``, ``90s`` →
    ``1m``) and in milliseconds. Intervals below 1 ms become 1 ms (backend ``QueryParse``).
``$__from`` / ``$__to``
    Epoch milliseconds; ``${__from:date}`` / ``${__from:date:iso}`` ISO 8601 UTC, ``${__from:date:seconds}``.
``$__range`` / ``$__range_s`` / ``$__range_ms``
    ``{seconds}s``, seconds, milliseconds of the time range (seconds rounded like Grafana).
Template variables: ``$name``, ``${name}``, ``${name:format}``, ``[[name]]``, ``[[name:format]]``
    Grafana's variable pattern (``\\$(\\w+)|\\[\\[(\\w+?)(?::(\\w+))?\\]\\]|\\${(\\w+)(?:\\.([^:^\\}]+))?(?::([^\\}]+))?}``);
    unknown names are left as they are. Without an explicit format, the InfluxDB ``interpolateQueryExpr``:

    * a value that JavaScript's ``parseFloat`` reads as a number (``"12.2"``, also ``"3rd"``) is inserted as is
      when it is a single string;
    * a **multi-value** variable: every value regex-escaped, joined as ``(a|b|c)`` (always in parentheses, also
      for one value, and also outside a regex: Grafana does that too);
    * a single-value variable (also a non-multi variable with *All* selected): regex-escaped (and an array
      joined as ``(a|b)``) only if ``$name`` occurs inside a ``=~ /.../`` or ``!~ /.../`` regex literal of the
      query; otherwise inserted as is (an array joined with ``,``, as Grafana's template service does);
    * regex escaping is Grafana's ``escapeRegex``: a backslash before each of ``\\ ^ $ * + ? . ( ) | [ ] { } /``.

    *All* selected (``["$__all"]``) means every value of the variable (``all_values[name]``, from its ``SHOW TAG
    VALUES`` query) — the variable has no custom all value in our model, so the values are formatted as above.
    Explicit formats supported: ``regex``, ``pipe``, ``csv``, ``raw``, ``text``, ``singlequote``,
    ``doublequote``, ``sqlstring``, ``glob``, ``json``, ``distributed``.

Deviations (documented, deliberate):

* Relative ranges: Grafana's frontend-only (legacy, non-backend) path renders ``now-24h`` as ``now() - 24h``; we
  always render absolute milliseconds (the backend path), so a test can place the range on the simulated day.
* ``now_ms`` (tests and previews only, :func:`pin_now`): replaces InfluxQL's ``now()`` with ``{now_ms}ms`` (and
  caps ``time > now() - 1h`` at ``now_ms``) so that an alert query written against ``now()`` can be evaluated
  *as if* it ran at a given instant of a simulated past day. Grafana never does this; InfluxDB evaluates
  ``now()`` itself.
* Variable values from ``$name`` inside ``${...}`` field paths (``${name.field}``) are not supported (our
  variables are plain tag values).
* Ad-hoc filters are not supported (the catalogue uses none).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "ALL",
    "Interval",
    "MacroError",
    "VarSpec",
    "calculate_interval",
    "expand",
    "format_interval",
    "interval_to_ms",
    "pin_now",
    "regex_escape",
    "round_interval",
    "seconds_to_hms",
]

#: Grafana's value for the *All* option of a variable.
ALL = "$__all"

#: Grafana's default maxDataPoints when a panel has no width (backend ``DefaultRes``), and alerting's default.
DEFAULT_MAX_DATA_POINTS = 1500
ALERT_MAX_DATA_POINTS = 43200
ALERT_INTERVAL_MS = 1000


class MacroError(ValueError):
    """A query cannot be expanded (unknown format, bad interval string, a variable without values)."""


# ------------------------------------------------------------------------------------------------------------
# intervals (rangeutil.ts)

#: Grafana's ``roundInterval`` (packages/grafana-data/src/datetime/rangeutil.ts): a raw interval (ms, strictly
#: below the bound) → the rounded interval (ms). The comments give the rounded interval.
ROUNDING_TABLE: tuple[tuple[float, int], ...] = (
    (10, 1),  # 1ms
    (15, 10),  # 10ms
    (35, 20),  # 20ms
    (75, 50),  # 50ms
    (150, 100),  # 100ms
    (350, 200),  # 200ms
    (750, 500),  # 500ms
    (1_500, 1_000),  # 1s
    (3_500, 2_000),  # 2s
    (7_500, 5_000),  # 5s
    (12_500, 10_000),  # 10s
    (17_500, 15_000),  # 15s
    (25_000, 20_000),  # 20s
    (45_000, 30_000),  # 30s
    (90_000, 60_000),  # 1m
    (210_000, 120_000),  # 2m
    (450_000, 300_000),  # 5m
    (750_000, 600_000),  # 10m
    (1_050_000, 900_000),  # 15m
    (1_500_000, 1_200_000),  # 20m
    (2_700_000, 1_800_000),  # 30m
    (5_400_000, 3_600_000),  # 1h
    (9_000_000, 7_200_000),  # 2h
    (16_200_000, 10_800_000),  # 3h
    (32_400_000, 21_600_000),  # 6h
    (86_400_000, 43_200_000),  # 12h
    (604_800_000, 86_400_000),  # 1d
    (1_814_400_000, 604_800_000),  # 1w (formatted "7d")
    (3_628_800_000, 2_592_000_000),  # 30d
)
YEAR_MS = 31_536_000_000  # everything above: 1y

_UNIT_S = {"y": 31_536_000, "M": 2_592_000, "w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1, "ms": 0.001}
_INTERVAL_RE = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|[Mwdhmsy])")


@dataclass(frozen=True)
class Interval:
    ms: int
    text: str


def round_interval(interval_ms: float) -> int:
    """Grafana's ``roundInterval``: the raw interval (range / max data points) to a 'nice' one."""
    for bound, rounded in ROUNDING_TABLE:
        if interval_ms < bound:
            return rounded
    return YEAR_MS


def interval_to_ms(text: str) -> float:
    """Grafana's ``intervalToMs`` (``describeInterval``): ``"10s"`` → 10000; a bare number is seconds; the count
    is an integer (``parseInt``: ``"1.5m"`` is one minute). A leading ``>`` (min-interval syntax) is ignored."""
    s = text.strip().lstrip(">")
    try:
        n = float(s)
    except ValueError:
        n = 0.0
    if n:  # JavaScript: Number(str) truthy → seconds
        return int(n) * 1000
    m = _INTERVAL_RE.match(s)
    if not m:
        raise MacroError(f"invalid interval {text!r}: a number with one of the units {', '.join(_UNIT_S)}")
    return _UNIT_S[m.group(2)] * 1000 * int(float(m.group(1)))


def seconds_to_hms(seconds: float) -> str:
    """Grafana's frontend ``secondsToHms`` (the largest non-zero unit, truncated; the legacy frontend path)."""
    years = math.floor(seconds / 31_536_000)
    if years:
        return f"{years}y"
    rest = seconds % 31_536_000
    for unit_s, suffix in ((86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")):
        n = math.floor(rest / unit_s)
        if n:
            return f"{n}{suffix}"
        rest %= unit_s
    ms = math.floor(seconds * 1000.0)
    return f"{ms}ms" if ms else "less than a millisecond"


def format_interval(ms: float) -> str:
    """Grafana's backend ``gtime.FormatInterval`` (what ``$__interval`` becomes in the query)."""
    for unit_ms, suffix in ((YEAR_MS, "y"), (86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")):
        if ms >= unit_ms:
            return f"{int(ms // unit_ms)}{suffix}"
    return "1ms"


def calculate_interval(
    time_from_ms: int, time_to_ms: int, max_data_points: int = DEFAULT_MAX_DATA_POINTS, min_interval: str | None = None
) -> Interval:
    """Grafana's ``rangeUtil.calculateInterval``: ``roundInterval((to - from) / maxDataPoints)``, raised to the
    min interval (panel "Min interval" or the datasource's ``timeInterval``; default 1 ms) if that is larger.

    In Grafana ``max_data_points`` is the panel's ``maxDataPoints`` or else its width in pixels
    (:func:`panel_max_data_points` approximates that from the grid width)."""
    if max_data_points <= 0:
        raise MacroError(f"max_data_points must be positive, not {max_data_points}")
    low = interval_to_ms(min_interval) if min_interval else 1
    ms = round_interval((time_to_ms - time_from_ms) / max_data_points)
    ms = max(ms, low)
    return Interval(int(ms), format_interval(ms))


def panel_max_data_points(width_cols: int, screen_px: int = 1920) -> int:
    """A panel's width in pixels on a ``screen_px`` wide dashboard (Grafana's default maxDataPoints for it):
    24 grid columns, 8 px gutters, 8 px panel padding on each side."""
    col = (screen_px - 8) / 24
    return max(1, int(width_cols * col - 8 - 16))


# ------------------------------------------------------------------------------------------------------------
# template variables (template_srv.ts + the InfluxDB datasource's interpolateQueryExpr)

_VARIABLE_RE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}"
)
# The InfluxDB datasource's regex-literal finder (``=~ /.../`` or ``!~ /.../``, with JS regex flags).
_REGEX_LITERAL_RE = re.compile(
    r"(\s*(=|!)~\s*)/((?![*+?])(?:[^\r\n\[/\\]|\\.|\[(?:[^\r\n\]\\]|\\.)*\])+)/"
    r"((?:g(?:im?|mi?)?|i(?:gm?|mg?)?|m(?:gi?|ig?)?)?)"
)
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_JS_FLOAT_PREFIX = re.compile(r"^[\s]*[+-]?(Infinity|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")


@dataclass(frozen=True)
class VarSpec:
    """How a variable interpolates: Grafana's ``multi`` and ``includeAll`` flags."""

    multi: bool = True
    include_all: bool = True


def regex_escape(value: str) -> str:
    """Grafana's ``escapeRegex``."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _js_is_number(value: str) -> bool:
    """``!isNaN(parseFloat(value))`` in JavaScript: a numeric *prefix* is enough."""
    return bool(_JS_FLOAT_PREFIX.match(value))


def _in_regex_literal(query: str, name: str) -> bool:
    """Does ``$name`` occur inside one of the query's ``=~ /.../`` literals (Grafana's check, same regexes)?"""
    var_re = re.compile(r"/(?:\^)?(.*)(\$" + re.escape(name) + r")(.*)(?:\$)?/")
    return any(var_re.search(m.group(0)) for m in _REGEX_LITERAL_RE.finditer(query))


def _influx_interpolate(value: str | list[str], spec: VarSpec, name: str, query: str) -> str | list[str]:
    """The InfluxDB datasource's ``interpolateQueryExpr`` (value → text; a list means Grafana's array value)."""
    if isinstance(value, str) and _js_is_number(value):
        return value
    if spec.multi:
        if isinstance(value, str):
            return regex_escape(value)
        return "(" + "|".join(regex_escape(v) for v in value) + ")"
    if _in_regex_literal(query, name):
        return regex_escape(value) if isinstance(value, str) else "(" + "|".join(regex_escape(v) for v in value) + ")"
    return value


def _format(value: str | list[str], fmt: str, text: str | None = None) -> str:
    """Grafana's named formats (``${var:fmt}``)."""
    vals = [value] if isinstance(value, str) else list(value)
    if fmt == "regex":
        if isinstance(value, str):
            return regex_escape(value)
        esc = [regex_escape(v) for v in vals]
        return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"
    if fmt == "pipe":
        return "|".join(vals)
    if fmt in ("csv", "raw"):
        return ",".join(vals)
    if fmt == "text":
        return text if text is not None else " + ".join(vals)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in vals)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in vals)
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in vals)
    if fmt == "glob":
        return vals[0] if isinstance(value, str) or len(vals) == 1 else "{" + ",".join(vals) + "}"
    if fmt == "json":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if fmt == "distributed":
        return vals[0] if len(vals) == 1 else ",".join(vals)
    raise MacroError(f"unsupported variable format {fmt!r}")


def _date_format(ms: int, spec: str | None) -> str:
    """``${__from:date}``, ``${__from:date:iso}``, ``${__from:date:seconds}`` (others: MacroError)."""
    if spec in (None, "iso"):
        t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    if spec == "seconds":
        return str(ms // 1000)
    raise MacroError(f"unsupported date format {spec!r} (supported: iso, seconds)")


# ------------------------------------------------------------------------------------------------------------
# the expansion


def expand(
    query: str,
    *,
    time_from_ms: int,
    time_to_ms: int,
    interval_ms: int | None = None,
    variables: Mapping[str, str | Sequence[str]] | None = None,
    all_values: Mapping[str, Sequence[str]] | None = None,
    specs: Mapping[str, VarSpec] | None = None,
    max_data_points: int = DEFAULT_MAX_DATA_POINTS,
    min_interval: str | None = None,
    now_ms: int | None = None,
) -> str:
    """``query`` as Grafana sends it to InfluxDB for a panel over ``[time_from_ms, time_to_ms]``.

    ``variables``: name → the current value; a list is Grafana's array value (a multi-value selection), a
    string a single selection; ``[ALL]`` (or ``ALL``) selects every value in ``all_values[name]``. ``specs``:
    name → :class:`VarSpec` (default: multi-value with *All*, like the catalogue's :class:`~dashboards.model.
    Variable` default). ``interval_ms``: the panel's interval; None computes it with :func:`calculate_interval`
    from ``max_data_points`` and ``min_interval``. ``now_ms``: see the module doc (not Grafana behaviour).
    """
    variables = dict(variables or {})
    all_values = all_values or {}
    specs = specs or {}
    if interval_ms is None:
        interval_ms = calculate_interval(time_from_ms, time_to_ms, max_data_points, min_interval).ms
    interval_ms = max(1, int(interval_ms))
    range_ms = time_to_ms - time_from_ms
    range_s = round(range_ms / 1000)
    scoped: dict[str, str] = {
        "__from": str(time_from_ms),
        "__to": str(time_to_ms),
        "__range_ms": str(range_ms),
        "__range_s": str(range_s),
        "__range": f"{range_s}s",
    }

    def value_of(name: str) -> str | list[str]:
        v = variables[name]
        if v == ALL or (not isinstance(v, str) and list(v) == [ALL]):
            if name not in all_values:
                raise MacroError(f"variable ${name}: All selected but no values known (all_values[{name!r}])")
            return list(all_values[name])
        return v if isinstance(v, str) else list(v)

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        field_path = m.group(5)
        fmt = m.group(3) or m.group(6)
        if name in ("__from", "__to") and fmt and fmt.startswith("date"):
            return _date_format(int(scoped[name]), fmt.partition(":")[2] or None)
        if name in scoped:
            return scoped[name] if fmt is None else _format(scoped[name], fmt)
        if name not in variables:
            return m.group(0)  # not ours: a macro for the backend ($timeFilter, $__interval) or plain text
        if field_path:
            raise MacroError(f"${{{name}.{field_path}}}: field paths are not supported")
        value = value_of(name)
        if fmt is not None:
            return _format(value, fmt)
        out = _influx_interpolate(value, specs.get(name, VarSpec()), name, query)
        return out if isinstance(out, str) else ",".join(out)

    res = _VARIABLE_RE.sub(replace, query)
    # the backend's Query.Build, in its order (plain string replacement)
    text = format_interval(interval_ms)
    res = res.replace("$timeFilter", f"time >= {time_from_ms}ms and time <= {time_to_ms}ms")
    res = res.replace("$interval", text)
    res = res.replace("$__interval_ms", str(interval_ms))
    res = res.replace("$__interval", text)
    if now_ms is not None:
        res = pin_now(res, now_ms)
    return res


_NOW_COND = re.compile(r"(?i)\btime\s*(>=|<=|>|<|=)\s*now\(\s*\)(\s*[-+]\s*\d+(?:ns|u|µ|ms|s|m|h|d|w))?")


def pin_now(query: str, now_ms: int) -> str:
    """Evaluate ``query`` as if it ran at ``now_ms``: ``time > now() - 1h`` becomes
    ``(time > {now_ms}ms - 1h AND time <= {now_ms}ms)`` (InfluxDB caps a query without an upper time bound at
    its real now(), so the pinned instant needs the cap written out); any other ``now()`` becomes ``{now_ms}ms``.
    """
    lit = f"{int(now_ms)}ms"
    res = _NOW_COND.sub(lambda m: f"(time {m.group(1)} {lit}{m.group(2) or ''} AND time <= {lit})", query)
    return re.sub(r"(?i)\bnow\(\s*\)", lit, res)
