"""PNG previews of the dashboards, drawn with matplotlib from the very queries Grafana would run.

Grafana is not installed where this runs, so :func:`render` does what a Grafana server would do for a screenshot:
resolves every template variable from its ``SHOW TAG VALUES`` query (and selects *All*), expands every panel's
queries with Grafana's macros (:mod:`dashboards.macros`), runs them against InfluxDB
(:mod:`dashboards.queryrun`) and draws each panel in its place on Grafana's 24-column grid:

* ``timeseries`` → lines (stacked areas when the panel is stacked), ``barchart`` → grouped bars,
  ``stat`` → big numbers coloured by threshold, ``table`` → a table, ``geomap`` → points on lon/lat with labels
  (district outlines underneath when a GeoJSON is given), ``bargauge`` → horizontal bars, ``text`` → its text;
* threshold steps (after the base step) are drawn as dashed lines (time series) or colour the values;
* a panel whose queries return nothing shows 「データなし」 / "No data"; a query InfluxDB refuses shows its error.

Japanese needs a CJK font: IPAexGothic (Debian ``fonts-ipaexfont-gothic``) is registered with matplotlib when
present; without it Japanese text falls back (with a warning) to the default font and shows as boxes.

Deviation from Grafana: with ``now_ms`` (the CLI sets it to ``--to`` when that is given) InfluxQL's ``now()`` in a
query is pinned to that instant, so a preview of a past simulated day shows what the panel showed at its end.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dashboards.macros import ALL, VarSpec, calculate_interval, expand, panel_max_data_points
from dashboards.model import Dashboard, Panel, Target
from dashboards.queryrun import InfluxSource, QueryError, Series, run_query, source_of, tag_values

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "CJK_FONT",
    "PanelData",
    "PanelResult",
    "RenderResult",
    "layout",
    "panel_data",
    "render",
    "resolve_variables",
    "time_range",
]

CJK_FONT = Path("/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf")
JST = dt.timezone(dt.timedelta(hours=9), "JST")

#: Grafana's grid: 24 columns; a height unit is 30 px plus an 8 px margin. The preview draws at 80 px per column
#: (a 1920 px wide screen) and 45 px per height unit (taller than Grafana's 38, so matplotlib's text fits).
COL_IN = 0.8
UNIT_IN = 0.45
ROW_HEADER_UNITS = 1
TITLE_IN = 0.9

#: Grafana colour names → hex (Grafana's palette).
COLORS = {
    "green": "#73BF69", "yellow": "#FADE2A", "orange": "#FF9830", "red": "#F2495C", "blue": "#5794F2",
    "purple": "#B877D9", "dark-red": "#C4162A", "dark-green": "#37872D", "text": "#444444",
}
SERIES_COLORS = ("#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
                 "#508642", "#CCA300", "#447EBC", "#C15C17")  # fmt: skip

#: Grafana unit ids → suffix shown after a value.
UNITS = {
    "kg": " kg", "kwatth": " kWh", "watt": " W", "kwatt": " kW", "percent": "%", "lengthmm": " mm",
    "degree": "°", "s": " s", "ms": " ms", "short": "", "none": "", "volt": " V", "celsius": " °C",
    "decmbytes": " MB", "lengthkm": " km", "m": " m", "lengthm": " m", "velocitykmh": " km/h",
    "masskg": " kg", "cpm": " cpm", "cps": " cps",
}
NO_DATA = {"ja": "データなし", "en": "No data"}
ALL_TEXT = {"ja": "すべて", "en": "All"}


# ------------------------------------------------------------------------------------------------------------
# results


@dataclass
class PanelResult:
    dashboard: str  # uid
    index: int  # position in Dashboard.panels
    title: str
    kind: str
    series: int = 0  # series returned by all targets
    points: int = 0  # non-null values in them
    queries: list[str] = field(default_factory=list)  # as sent to InfluxDB
    error: str | None = None


@dataclass
class RenderResult:
    files: list[Path] = field(default_factory=list)
    panels: list[PanelResult] = field(default_factory=list)
    #: dashboard uid → variable name → the values "All" stands for
    variables: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def series_counts(self) -> dict[str, int]:
        """``"<dashboard uid>/<panel index>"`` → number of series."""
        return {f"{p.dashboard}/{p.index}": p.series for p in self.panels}

    @property
    def errors(self) -> list[PanelResult]:
        return [p for p in self.panels if p.error]


# ------------------------------------------------------------------------------------------------------------
# time range and variables


_REL = re.compile(r"^now(?:-(\d+)([smhdwMy]))?$")
_REL_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}


def time_range(dashboard: Dashboard, now_ms: int | None = None) -> tuple[int, int]:
    """The dashboard's default range (``time_from`` like ``now-24h``, to now) in epoch ms."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    m = _REL.match(dashboard.time_from.strip())
    if not m:
        warnings.warn(f"{dashboard.uid}: time_from {dashboard.time_from!r} not understood; using now-24h",
                      stacklevel=2)
        return now - 86_400_000, now
    n = int(m.group(1) or 0) * _REL_S.get(m.group(2) or "s", 1) * 1000
    return now - n, now


def resolve_variables(
    source: InfluxSource, dashboard: Dashboard, time_from_ms: int, time_to_ms: int
) -> tuple[dict[str, list[str]], dict[str, VarSpec]]:
    """Each variable's values (its ``SHOW TAG VALUES`` query, expanded with the variables before it, as Grafana
    chains them) and its multi/All flags."""
    values: dict[str, list[str]] = {}
    specs: dict[str, VarSpec] = {}
    for v in dashboard.variables:
        q = expand(v.query, time_from_ms=time_from_ms, time_to_ms=time_to_ms, interval_ms=None,
                   variables={k: [ALL] for k in values}, all_values=values, specs=specs)
        values[v.name] = tag_values(source, q)
        specs[v.name] = VarSpec(multi=v.multi, include_all=v.include_all)
    return values, specs


def _selection(all_values: dict[str, list[str]], specs: dict[str, VarSpec]) -> dict[str, Any]:
    """What a freshly opened dashboard selects: All where offered, else the first value."""
    sel: dict[str, Any] = {}
    for name, vals in all_values.items():
        if specs[name].include_all:
            sel[name] = [ALL]
        else:
            sel[name] = [vals[0]] if specs[name].multi and vals else (vals[0] if vals else "")
    return sel


# ------------------------------------------------------------------------------------------------------------
# data


@dataclass
class Line:
    """One value column of one series: what Grafana makes a field/frame of."""

    label: str
    times: list[int]
    values: list[float | None]
    tags: dict[str, str]
    column: str
    series: Series


@dataclass
class PanelData:
    panel: Panel
    series: list[tuple[Target, list[Series]]]
    queries: list[str]
    error: str | None = None
    lang: str = "ja"

    @property
    def lines(self) -> list[Line]:
        out: list[Line] = []
        for target, series in self.series:
            for s in series:
                out.extend(_lines(s, target, self.lang))
        return out

    @property
    def n_series(self) -> int:
        return sum(len(s) for _, s in self.series)

    @property
    def n_points(self) -> int:
        return sum(s.non_null() for _, ss in self.series for s in ss)


def _alias(alias: str, s: Series, column: str) -> str:
    """Grafana's InfluxDB alias patterns: ``$tag_<key>``/``[[tag_<key>]]``, ``$col``, ``$m``/``$measurement``."""

    def tag(m: re.Match[str]) -> str:
        key = m.group(1) or m.group(2)
        return s.tags.get(key, m.group(0))

    out = re.sub(r"\$tag_(\w+)|\[\[tag_(\w+)\]\]", tag, alias)
    out = re.sub(r"\$col\b|\[\[col\]\]", column, out)
    return re.sub(r"\$measurement\b|\$m\b|\[\[measurement\]\]|\[\[m\]\]", s.name, out)


def _lines(s: Series, target: Target, lang: str = "ja") -> list[Line]:
    has_time = bool(s.columns) and s.columns[0] == "time"
    times = s.column("time") if has_time else []
    out = []
    for i, col in enumerate(s.columns):
        if col == "time":
            continue
        vals = [row[i] for row in s.values]
        if any(isinstance(v, str) for v in vals):
            continue  # text columns are labels, not values
        legend = getattr(target, "legend", None)
        alias = legend(lang) if legend is not None else target.alias
        if alias:
            label = _alias(alias, s, col)
        else:  # Grafana's default: measurement.column {tag: value, ...}
            label = f"{s.name}.{col}" + (" {" + ", ".join(f"{k}: {v}" for k, v in s.tags.items()) + "}"
                                         if s.tags else "")
        out.append(Line(label, times, [None if v is None else float(v) for v in vals], s.tags, col, s))
    return out


def panel_data(
    source: InfluxSource, panel: Panel, *, time_from_ms: int, time_to_ms: int,
    variables: dict[str, Any], all_values: dict[str, list[str]], specs: dict[str, VarSpec],
    now_ms: int | None = None, lang: str = "ja",
) -> PanelData:
    """Run every target of ``panel`` with the macros expanded as Grafana would for this panel's width (and its
    min interval)."""
    interval = calculate_interval(time_from_ms, time_to_ms, panel_max_data_points(panel.width),
                                  getattr(panel, "min_interval", None))
    results: list[tuple[Target, list[Series]]] = []
    queries: list[str] = []
    error = None
    for t in panel.targets:
        q = expand(t.query, time_from_ms=time_from_ms, time_to_ms=time_to_ms, interval_ms=interval.ms,
                   variables=variables, all_values=all_values, specs=specs, now_ms=now_ms)
        queries.append(q)
        try:
            results.append((t, run_query(source, q)))
        except QueryError as e:
            error = f"{t.ref_id}: {e.influx_error}"
            results.append((t, []))
    return PanelData(panel, results, queries, error, lang)


# ------------------------------------------------------------------------------------------------------------
# layout


@dataclass(frozen=True)
class Cell:
    """A place on Grafana's grid (columns 0-23, height units from the top)."""

    x: int
    y: int
    w: int
    h: int
    panel: Panel | None = None  # None: a row header
    title: str = ""


def layout(dashboard: Dashboard, lang: str = "ja") -> list[Cell]:
    """Grafana's gridPos for the catalogue's rows: a row header (height 1) per row, then its panels left to
    right, wrapping to a new line when the next one does not fit in 24 columns (the line is as tall as its
    tallest panel)."""
    cells: list[Cell] = []
    y = 0
    for row in dashboard.rows:
        cells.append(Cell(0, y, 24, ROW_HEADER_UNITS, None, row.title(lang)))
        y += ROW_HEADER_UNITS
        x, line_h = 0, 0
        for p in row.panels:
            w = max(1, min(24, p.width))
            if x + w > 24:
                y, x, line_h = y + line_h, 0, 0
            cells.append(Cell(x, y, w, p.height, p, p.title(lang)))
            x += w
            line_h = max(line_h, p.height)
        y += line_h
    return cells


# ------------------------------------------------------------------------------------------------------------
# drawing


_font_ready: bool | None = None
#: IPAexGothic has one weight: titles stay regular (no "bold not found" warnings); numbers use DejaVu Sans Bold.
_TITLE_WEIGHT = "normal"
_NUMBER_FONT: dict[str, Any] = {"family": "DejaVu Sans", "fontweight": "bold"}


def _setup_matplotlib(lang: str) -> None:
    global _font_ready
    import matplotlib

    matplotlib.use("Agg", force=True)
    if _font_ready is None:
        from matplotlib import font_manager

        if CJK_FONT.exists():
            font_manager.fontManager.addfont(str(CJK_FONT))
            name = font_manager.FontProperties(fname=str(CJK_FONT)).get_name()
            matplotlib.rcParams["font.family"] = [name, "DejaVu Sans"]
            _font_ready = True
        else:
            _font_ready = False
    if not _font_ready and lang == "ja":
        warnings.warn(f"no Japanese font ({CJK_FONT}; Debian package fonts-ipaexfont-gothic): "
                      "Japanese text will not render", stacklevel=3)


def _unit_of(panel: Panel, column: str | None) -> str:
    """The unit of one field: the panel's, or its ``field_units`` override."""
    if column is not None:
        for name, unit in getattr(panel, "field_units", ()):
            if name == column:
                return unit
    return panel.unit


def _fmt(v: float | None, panel: Panel, column: str | None = None, decimals: int | None = None) -> str:
    """A value as the panel shows it: its decimals (or ``decimals``; else automatic) and its unit's suffix."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    unit = _unit_of(panel, column).strip()
    if unit.startswith("suffix:"):
        suffix = " " + unit.removeprefix("suffix:").strip()
    else:
        suffix = UNITS.get(unit, f" {unit}" if unit else "")
    if decimals is None:
        decimals = panel.decimals
    if decimals is not None:
        text = f"{v:,.{decimals}f}"
    elif float(v).is_integer() or abs(v) >= 1000:
        text = f"{v:,.0f}"
    else:  # two decimals from 10 up (35.14 N, 134.03 E), three below; trailing zeros dropped
        text = f"{v:,.{2 if abs(v) >= 10 else 3}f}".rstrip("0").rstrip(".")
    return text + suffix


def _threshold_color(v: float | None, panel: Panel, default: str = COLORS["green"]) -> str:
    if not panel.thresholds or v is None:
        return default
    color = panel.thresholds[0].color
    for t in panel.thresholds[1:]:
        if v >= t.value:
            color = t.color
    return COLORS.get(color, color)


def _last(values: Sequence[float | None]) -> float | None:
    """Grafana's default reducer for stat / bar gauge: last not-null."""
    for v in reversed(values):
        if v is not None:
            return v
    return None


def _to_dt(ms: int, tz: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz)


def _time_labels(times: list[int], tz: dt.tzinfo) -> list[str]:
    ds = [_to_dt(t, tz) for t in times]
    if all(d.hour == 0 and d.minute == 0 for d in ds):
        return [f"{d:%m/%d}" for d in ds]
    span = (max(times) - min(times)) if times else 0
    return [f"{d:%m/%d %H:%M}" if span >= 86_400_000 else f"{d:%H:%M}" for d in ds]


def _no_data(ax: Axes, lang: str) -> None:
    ax.text(0.5, 0.5, NO_DATA.get(lang, NO_DATA["en"]), ha="center", va="center", fontsize=14, color="#888888",
            transform=ax.transAxes)
    ax.set_axis_off()


def _draw_timeseries(ax: Axes, pd: PanelData, lang: str, t0: int, t1: int, tz: dt.tzinfo) -> None:
    import matplotlib.dates as mdates

    lines = [ln for ln in pd.lines if ln.times and any(v is not None for v in ln.values)]
    if not lines:
        _no_data(ax, lang)
        return
    panel = pd.panel
    colors = [SERIES_COLORS[i % len(SERIES_COLORS)] for i in range(len(lines))]
    # timestamps where some series has a value (a GROUP BY time() with fill(null) has many empty buckets)
    times = sorted({t for ln in lines for t, v in zip(ln.times, ln.values, strict=True) if v is not None})
    idx = {t: i for i, t in enumerate(times)}
    matrix = []
    for ln in lines:
        row = [0.0] * len(times)
        for t, v in zip(ln.times, ln.values, strict=True):
            if t in idx:
                row[idx[t]] = v or 0.0
        matrix.append(row)
    lo, hi = min(t0, times[0]), max(t1, times[-1])
    if getattr(panel, "draw", "line") == "bars":
        # a bar per bucket (daily totals: the bucket starts at midnight, maybe before the range: shown anyway)
        gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
        step_ms = min(gaps) if gaps else 86_400_000
        lo, hi = min(lo, times[0] - step_ms // 2), max(hi, times[-1] + step_ms // 2)
        width_days = step_ms / 86_400_000 * 0.8
        xs = [_to_dt(t, tz) for t in times]
        bottom = [0.0] * len(times)
        n = len(lines)
        for i, (ln, row) in enumerate(zip(lines, matrix, strict=True)):
            if panel.stacked:
                ax.bar(xs, row, width=width_days, bottom=bottom, color=colors[i], label=ln.label, align="center")
                bottom = [b + v for b, v in zip(bottom, row, strict=True)]
            else:
                off = dt.timedelta(days=(i - (n - 1) / 2) * width_days / n)
                ax.bar([x + off for x in xs], row, width=width_days / n, color=colors[i], label=ln.label)
    elif panel.stacked:
        ax.stackplot([_to_dt(t, tz) for t in times], matrix, labels=[ln.label for ln in lines], colors=colors,
                     alpha=0.8)
    else:
        for i, ln in enumerate(lines):
            pts = [(_to_dt(t, tz), v) for t, v in zip(ln.times, ln.values, strict=True)]
            xs = [p[0] for p in pts]
            ys2 = [math.nan if p[1] is None else p[1] for p in pts]
            n_real = sum(1 for v in ys2 if not math.isnan(v))
            ax.plot(xs, ys2, label=ln.label, color=colors[i], linewidth=1.4,
                    marker="o" if n_real < 30 else None, markersize=3)
    for th in panel.thresholds[1:]:
        c = COLORS.get(th.color, th.color)
        ax.axhline(th.value, color=c, linestyle="--", linewidth=1.0)
        if th.label is not None:
            ax.annotate(th.label(lang), xy=(1.0, th.value), xycoords=("axes fraction", "data"), ha="right",
                        va="bottom", fontsize=7, color=c)
    ax.set_xlim(_to_dt(lo, tz), _to_dt(hi, tz))
    loc = mdates.AutoDateLocator(tz=tz, maxticks=8)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc, tz=tz, show_offset=False))
    ax.yaxis.set_major_formatter(_unit_formatter(panel))
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    if len(lines) <= 12:
        ax.legend(fontsize=6, loc="upper left", ncols=min(4, len(lines)), framealpha=0.6)


def _unit_formatter(panel: Panel) -> Any:
    """Axis ticks in the panel's unit, with as many decimals as the tick spacing needs (not the panel's
    ``decimals``: 0.02-spaced ticks of a 0-decimal panel would all read "0")."""
    from matplotlib.ticker import Formatter

    class _UnitFormatter(Formatter):
        ticks: list[float] = []  # noqa: RUF012 - replaced per instance by set_locs

        def set_locs(self, locs: Any) -> None:
            self.ticks = sorted(float(v) for v in locs)

        def __call__(self, x: float, pos: int | None = None) -> str:
            steps = [b - a for a, b in itertools.pairwise(self.ticks) if b > a]
            dec = min(4, max(0, -math.floor(math.log10(min(steps))))) if steps else (panel.decimals or 0)
            return _fmt(float(x), panel, decimals=dec)

    return _UnitFormatter()


def _bar_matrix(pd: PanelData, tz: dt.tzinfo) -> tuple[list[str], list[str], list[list[float]]]:
    """(categories, group labels, values[group][category]) for a bar chart."""
    lines = [ln for ln in pd.lines if any(v is not None for v in ln.values)]
    if not lines:
        return [], [], []
    if all(len(ln.values) <= 1 for ln in lines):
        cats = [_short_label(ln) for ln in lines]
        return cats, [""], [[(ln.values[0] or 0.0) if ln.values else 0.0 for ln in lines]]
    times = sorted({t for ln in lines for t in ln.times})
    idx = {t: i for i, t in enumerate(times)}
    vals = []
    for ln in lines:
        row = [0.0] * len(times)
        for t, v in zip(ln.times, ln.values, strict=True):
            row[idx[t]] = v or 0.0
        vals.append(row)
    return _time_labels(times, tz), [_short_label(ln) for ln in lines], vals


def _short_label(ln: Line) -> str:
    """A bar's name: the alias if given, else the series' tag values, else the column."""
    if not ln.label.startswith(f"{ln.series.name}.") and ln.label:
        return ln.label
    return " / ".join(ln.tags.values()) or ln.column


def _draw_barchart(ax: Axes, pd: PanelData, lang: str, tz: dt.tzinfo) -> None:
    cats, groups, vals = _bar_matrix(pd, tz)
    if not cats:
        _no_data(ax, lang)
        return
    n = len(groups)
    width = 0.8 / max(1, n)
    bottoms = [0.0] * len(cats)
    for gi, (g, row) in enumerate(zip(groups, vals, strict=True)):
        xs = [i + (0 if pd.panel.stacked else (gi - (n - 1) / 2) * width) for i in range(len(cats))]
        color = SERIES_COLORS[gi % len(SERIES_COLORS)]
        if n == 1:
            colors = [_threshold_color(v, pd.panel, SERIES_COLORS[0]) if pd.panel.thresholds else
                      SERIES_COLORS[i % len(SERIES_COLORS)] for i, v in enumerate(row)]
        else:
            colors = [color] * len(row)
        ax.bar(xs, row, width=0.8 if pd.panel.stacked else width, bottom=bottoms if pd.panel.stacked else None,
               color=colors, label=g or None)
        if pd.panel.stacked:
            bottoms = [b + v for b, v in zip(bottoms, row, strict=True)]
        elif n <= 3 and len(cats) <= 12:
            for x, v in zip(xs, row, strict=True):
                ax.annotate(_fmt(v, pd.panel), (x, v), ha="center", va="bottom", fontsize=6)
    for th in pd.panel.thresholds[1:]:
        ax.axhline(th.value, color=COLORS.get(th.color, th.color), linestyle="--", linewidth=1.0)
    ax.set_xticks(range(len(cats)), cats, fontsize=7, rotation=30 if len(cats) > 6 else 0)
    ax.yaxis.set_major_formatter(_unit_formatter(pd.panel))
    ax.tick_params(labelsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    if n > 1:
        ax.legend(fontsize=6, ncols=min(4, n), framealpha=0.6)


def _draw_stat(ax: Axes, pd: PanelData, lang: str) -> None:
    items = [(ln, _last(ln.values)) for ln in pd.lines]
    items = [(ln, v) for ln, v in items if v is not None]
    if not items:
        _no_data(ax, lang)
        return
    ax.set_axis_off()
    n = len(items)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    size = max(10, 34 - 4 * max(rows, cols))
    for i, (ln, v) in enumerate(items):
        cx = (i % cols + 0.5) / cols
        cy = 1 - (i // cols + 0.5) / rows
        ax.text(cx, cy, _fmt(v, pd.panel), ha="center", va="center", fontsize=size, **_NUMBER_FONT,
                color=_threshold_color(v, pd.panel), transform=ax.transAxes)
        if n > 1:
            ax.text(cx, cy - 0.42 / rows, _short_label(ln), ha="center", va="center", fontsize=7, color="#555555",
                    transform=ax.transAxes)


def _draw_bargauge(ax: Axes, pd: PanelData, lang: str) -> None:
    items = [(_short_label(ln), _last(ln.values)) for ln in pd.lines]
    items = [(k, v) for k, v in items if v is not None]
    if not items:
        _no_data(ax, lang)
        return
    labels = [k for k, _ in items]
    vals = [v for _, v in items]
    hi = max([*vals, *(t.value for t in pd.panel.thresholds[1:])], default=1.0) or 1.0
    ys = list(range(len(items)))[::-1]
    ax.barh(ys, [hi] * len(vals), color="#EEEEEE", height=0.7)
    ax.barh(ys, vals, color=[_threshold_color(v, pd.panel) for v in vals], height=0.7)
    for y, v in zip(ys, vals, strict=True):
        ax.text(hi, y, " " + _fmt(v, pd.panel), va="center", ha="left", fontsize=7)
    ax.set_yticks(ys, labels, fontsize=7)
    ax.set_xlim(0, hi * 1.25)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)


def _table_rows(pd: PanelData, tz: dt.tzinfo) -> tuple[list[str], list[list[str]]]:
    """Grafana's table of InfluxDB series: the tag columns, then ``Time`` and the fields (``hide_columns``
    dropped), each value in its field's unit."""
    hidden = set(getattr(pd.panel, "hide_columns", ()))
    header: list[str] = []
    rows: list[list[str]] = []
    for _target, series in pd.series:
        for s in series:
            names = [*s.tags, *("Time" if c == "time" else c for c in s.columns)]
            keep = [i for i, n in enumerate(names) if n not in hidden]
            if not header:
                header = [names[i] for i in keep]
            for r in s.values:
                cells = list(s.tags.values())
                for c, v in zip(s.columns, r, strict=True):
                    if c == "time" and isinstance(v, int | float):
                        cells.append(f"{_to_dt(int(v), tz):%m/%d %H:%M}")
                    elif isinstance(v, float | int) and not isinstance(v, bool):
                        cells.append(_fmt(float(v), pd.panel, c))
                    else:
                        cells.append("" if v is None else str(v))
                row = [cells[i] for i in keep]
                rows.append(row[: len(header)] + [""] * (len(header) - len(row)))
    return header, rows


def _draw_table(ax: Axes, pd: PanelData, lang: str, tz: dt.tzinfo, max_rows: int) -> None:
    header, rows = _table_rows(pd, tz)
    if not rows:
        _no_data(ax, lang)
        return
    ax.set_axis_off()
    more = len(rows) - max_rows
    shown = rows[:max_rows]
    if more > 0:
        shown = [*shown[:-1], [f"… +{more + 1}"] + [""] * (len(header) - 1)]
    tbl = ax.table(cellText=shown, colLabels=header, loc="upper center", cellLoc="left", colLoc="left")
    tbl.auto_set_font_size(False)
    tbl.set_fontsize(7)
    tbl.scale(1, 1.1)
    for (r, _c), cell in tbl.get_celld().items():
        cell.set_edgecolor("#DDDDDD")
        if r == 0:
            cell.set_facecolor("#F0F0F0")


@dataclass
class _GeoPoint:
    lon: float
    lat: float
    label: str
    value: float | None  # the colour field's (or the first numeric field's) value
    column: str | None
    layer: int  # the target's index: layer 0 coloured by thresholds, later layers drawn as red rings


def _geo_points(pd: PanelData) -> list[_GeoPoint]:
    """Every row with coordinates (``lat``/``lon`` columns), per target (Grafana geomap layer)."""
    color_field = getattr(pd.panel, "color_field", "")
    pts = []
    for layer, (_t, series) in enumerate(pd.series):
        for s in series:
            cols = [c.lower() for c in s.columns]
            ilat = next((i for i, c in enumerate(cols) if c in ("lat", "latitude") or c.endswith("_lat")), None)
            ilon = next((i for i, c in enumerate(cols) if c in ("lon", "lng", "longitude") or c.endswith("_lon")),
                        None)
            if ilat is None or ilon is None:
                continue
            iname = next((i for i, c in enumerate(cols) if c in ("name", "label", "district", "device")), None)
            if color_field and color_field in s.columns:
                ival: int | None = s.columns.index(color_field)
            else:
                ival = next((i for i, c in enumerate(cols) if c != "time" and i not in (ilat, ilon, iname)
                             and any(isinstance(r[i], int | float) and not isinstance(r[i], bool)
                                     for r in s.values)), None)
            for r in s.values:
                if r[ilat] is None or r[ilon] is None:
                    continue
                label = str(r[iname]) if iname is not None else " / ".join(s.tags.values())
                v = r[ival] if ival is not None and isinstance(r[ival], int | float) else None
                pts.append(_GeoPoint(float(r[ilon]), float(r[ilat]), label, v,
                                     s.columns[ival] if ival is not None else None, layer))
    return pts


def _draw_geomap(ax: Axes, pd: PanelData, lang: str, geojson: dict[str, Any] | None) -> None:
    pts = _geo_points(pd)
    if geojson:
        for f in geojson.get("features", []):
            geom = f.get("geometry") or {}
            if geom.get("type") == "Polygon":
                rings = geom.get("coordinates", [])[:1]
            elif geom.get("type") == "MultiPolygon":
                rings = [poly[0] for poly in geom.get("coordinates", []) if poly]
            else:
                rings = []
            for ring in rings:
                ax.plot([c[0] for c in ring], [c[1] for c in ring], color="#AAAAAA", linewidth=0.8)
            props = f.get("properties", {})
            name = props.get("name" if lang == "ja" else "name_en") or props.get("id", "")
            if rings:
                ring = rings[0]
                ax.text(sum(c[0] for c in ring) / len(ring), sum(c[1] for c in ring) / len(ring), name,
                        fontsize=6, color="#999999", ha="center")
    if not pts:
        if geojson:
            ax.text(0.5, 0.5, NO_DATA.get(lang, NO_DATA["en"]), ha="center", va="center", fontsize=14,
                    color="#888888", transform=ax.transAxes)
        else:
            _no_data(ax, lang)
        return
    base = [p for p in pts if p.layer == 0]
    vals = [p.value for p in base if p.value is not None]
    vmax = max(vals) if vals else 0.0
    sizes = [30 + 150 * (p.value / vmax) if p.value is not None and vmax > 0 else 40 for p in base]
    if base:
        ax.scatter([p.lon for p in base], [p.lat for p in base], s=sizes, alpha=0.8, edgecolors="#333333",
                   c=[_threshold_color(p.value, pd.panel, COLORS["blue"]) for p in base], linewidths=0.4, zorder=3)
    rings = [p for p in pts if p.layer > 0]
    if rings:
        ax.scatter([p.lon for p in rings], [p.lat for p in rings], s=260, facecolors="none",
                   edgecolors=COLORS["red"], linewidths=2.0, zorder=4)
    labelled: set[str] = set()
    for p in base or rings:
        if p.label in labelled and len(pts) > 20:
            continue
        labelled.add(p.label)
        text = p.label if p.value is None else f"{p.label} {_fmt(float(p.value), pd.panel, p.column)}"
        ax.annotate(text, (p.lon, p.lat), fontsize=6, xytext=(4, 4), textcoords="offset points", zorder=5)
    ax.set_aspect(1 / math.cos(math.radians(sum(p.lat for p in pts) / len(pts))))
    ax.tick_params(labelsize=6)
    ax.set_xlabel("lon", fontsize=6)
    ax.set_ylabel("lat", fontsize=6)


def _draw_text(ax: Axes, panel: Panel, lang: str) -> None:
    ax.set_axis_off()
    body = panel.description(lang) if panel.description else ""
    ax.text(0.02, 0.95, body, ha="left", va="top", fontsize=8, wrap=True, transform=ax.transAxes)


def _draw_panel(fig: Figure, rect: tuple[float, float, float, float], title: str, pd: PanelData, lang: str,
                t0: int, t1: int, tz: dt.tzinfo, geojson: dict[str, Any] | None) -> None:
    from matplotlib.patches import Rectangle

    x, y, w, h = rect
    fig.add_artist(Rectangle((x + 0.002, y + 0.002), w - 0.004, h - 0.004, transform=fig.transFigure,
                             facecolor="white", edgecolor="#CCCCCC", linewidth=0.8, zorder=0))
    fig.text(x + 0.006, y + h - 0.006, title, ha="left", va="top", fontsize=9, fontweight=_TITLE_WEIGHT)
    # inner plotting area: leave room for the title and the axis labels
    fh = fig.get_figheight()
    fw = fig.get_figwidth()
    top_pad = 0.32 / fh
    kind = pd.panel.kind
    axis_kinds = ("timeseries", "barchart", "geomap")
    left_pad = (0.55 if kind in axis_kinds else (1.1 if kind == "bargauge" else 0.1)) / fw
    bottom_pad = (0.35 if kind in axis_kinds else 0.1) / fh
    inner = (x + left_pad, y + bottom_pad, max(0.01, w - left_pad - 0.12 / fw), max(0.01, h - top_pad - bottom_pad))
    ax = fig.add_axes(inner)
    if pd.error:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "InfluxDB error:\n" + pd.error[:300], ha="center", va="center", fontsize=7,
                color=COLORS["red"], wrap=True, transform=ax.transAxes)
        return
    if kind == "timeseries":
        _draw_timeseries(ax, pd, lang, t0, t1, tz)
    elif kind == "barchart":
        _draw_barchart(ax, pd, lang, tz)
    elif kind == "stat":
        _draw_stat(ax, pd, lang)
    elif kind == "bargauge":
        _draw_bargauge(ax, pd, lang)
    elif kind == "table":
        _draw_table(ax, pd, lang, tz, max_rows=max(3, int(inner[3] * fh / 0.2) - 1))
    elif kind == "geomap":
        _draw_geomap(ax, pd, lang, geojson)
    elif kind == "text":
        _draw_text(ax, pd.panel, lang)
    else:
        _no_data(ax, lang)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-") or "x"


# ------------------------------------------------------------------------------------------------------------
# the entry point


def render(
    source: InfluxSource | Any,
    out_dir: Path | str,
    dashboards: Sequence[Dashboard] | None = None,
    *,
    lang: str = "ja",
    time_from_ms: int | None = None,
    time_to_ms: int | None = None,
    now_ms: int | None = None,
    per_panel: bool = False,
    tz: dt.tzinfo = JST,
    geojson: Path | str | dict[str, Any] | None = None,
    dpi: int = 100,
) -> RenderResult:
    """Draw every dashboard (default: ``dashboards.catalog.DASHBOARDS``) to ``out_dir/<uid>.png`` (and each panel
    to ``out_dir/<uid>/<nn>-<kind>.png`` with ``per_panel``).

    The range is ``[time_from_ms, time_to_ms]``, or each dashboard's default (``time_from`` back from now).
    Returns the files and, per panel, the queries as sent, the series/point counts and any InfluxDB error.
    """
    _setup_matplotlib(lang)
    from matplotlib.figure import Figure

    if dashboards is None:
        from dashboards.catalog import DASHBOARDS

        dashboards = DASHBOARDS
    src = source if isinstance(source, InfluxSource) else source_of(source)
    geo = json.loads(Path(geojson).read_text(encoding="utf-8")) if isinstance(geojson, str | Path) else geojson
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = RenderResult()
    for d in dashboards:
        if time_from_ms is None or time_to_ms is None:
            t0, t1 = time_range(d, now_ms if time_to_ms is None else time_to_ms)
            t0 = time_from_ms if time_from_ms is not None else t0
            t1 = time_to_ms if time_to_ms is not None else t1
        else:
            t0, t1 = time_from_ms, time_to_ms
        all_values, specs = resolve_variables(src, d, t0, t1)
        selection = _selection(all_values, specs)
        result.variables[d.uid] = all_values
        cells = layout(d, lang)
        total_units = max((c.y + c.h for c in cells), default=1)
        fig_w = 24 * COL_IN
        fig_h = total_units * UNIT_IN + TITLE_IN
        fig = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor="#F7F8FA")
        fig.text(0.008, 1 - 0.12 / fig_h, d.title(lang), ha="left", va="top", fontsize=15, fontweight=_TITLE_WEIGHT)
        var_text = "   ".join(f"{v.label(lang)}: {ALL_TEXT.get(lang, 'All')} ({len(all_values[v.name])})"
                               for v in d.variables)
        fig.text(0.008, 1 - 0.5 / fig_h,
                 f"{_to_dt(t0, tz):%Y-%m-%d %H:%M} – {_to_dt(t1, tz):%Y-%m-%d %H:%M} {tz}    {var_text}",
                 ha="left", va="top", fontsize=8, color="#555555")
        index = {id(p): i for i, p in enumerate(d.panels)}
        for c in cells:
            x = c.x / 24
            w = c.w / 24
            h = c.h * UNIT_IN / fig_h
            y = 1 - (TITLE_IN + (c.y + c.h) * UNIT_IN) / fig_h
            if c.panel is None:
                fig.text(x + 0.004, y + h / 2, c.title, ha="left", va="center", fontsize=11, fontweight=_TITLE_WEIGHT,
                         color="#333333")
                continue
            pd = panel_data(src, c.panel, time_from_ms=t0, time_to_ms=t1, variables=selection,
                            all_values=all_values, specs=specs, now_ms=now_ms, lang=lang)
            pr = PanelResult(d.uid, index[id(c.panel)], c.title, c.panel.kind, pd.n_series, pd.n_points,
                             pd.queries, pd.error)
            result.panels.append(pr)
            _draw_panel(fig, (x, y, w, h), c.title, pd, lang, t0, t1, tz, geo)
            if per_panel:
                pfig = Figure(figsize=(c.w * COL_IN, c.h * UNIT_IN), dpi=dpi, facecolor="#F7F8FA")
                _draw_panel(pfig, (0, 0, 1, 1), c.title, pd, lang, t0, t1, tz, geo)
                pdir = out / d.uid
                pdir.mkdir(exist_ok=True)
                ppath = pdir / f"{pr.index:02d}-{c.panel.kind}-{_slug(c.panel.title('en'))}.png"
                pfig.savefig(ppath, dpi=dpi)
                result.files.append(ppath)
        path = out / f"{d.uid}.png"
        fig.savefig(path, dpi=dpi)
        result.files.append(path)
    return result


# ------------------------------------------------------------------------------------------------------------
# `cityos dashboards preview`


def _parse_time(text: str) -> int:
    """ISO 8601 → epoch ms; without a zone it is Japan time (the city's)."""
    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=JST)
    return int(t.timestamp() * 1000)


def cli_preview(
    *, out: Path, source: InfluxSource, lang: str = "ja", time_from: str | None = None, time_to: str | None = None,
    per_panel: bool = False, only: Sequence[str] = (), geojson: Path | None = None,
) -> int:
    """``cityos dashboards preview``: PNGs of the catalogue's dashboards from ``source``'s data (the CLI resolves a
    developer's stack or ``--influx-url`` to it).

    ``--to`` also pins InfluxQL's ``now()`` (alert-style windows) to that instant; ``--from``/``--to`` without a
    zone are Japan time."""
    import sys

    try:
        t0 = _parse_time(time_from) if time_from else None
        t1 = _parse_time(time_to) if time_to else None
    except ValueError as exc:
        print(f"cityos dashboards preview: {exc}", file=sys.stderr)
        return 2
    from dashboards.catalog import DASHBOARDS

    chosen = [d for d in DASHBOARDS if not only or d.uid in only]
    if only and len(chosen) != len(set(only)):
        known = ", ".join(d.uid for d in DASHBOARDS)
        print(f"cityos dashboards preview: unknown dashboard in {list(only)} (known: {known})", file=sys.stderr)
        return 2
    if geojson is None:
        default_geo = Path(__file__).resolve().parent.parent / "scenarios" / "tsuyama-districts.geojson"
        geojson = default_geo if default_geo.exists() else None
    try:
        res = render(source, out, chosen, lang=lang, time_from_ms=t0, time_to_ms=t1, now_ms=t1, per_panel=per_panel,
                     geojson=geojson)
    except (QueryError, OSError) as exc:
        print(f"cityos dashboards preview: {exc}", file=sys.stderr)
        return 1
    for f in res.files:
        print(f)
    empty = [p for p in res.panels if not p.points and not p.error]
    print(f"{len(res.panels)} panels, {len(empty)} without data, {len(res.errors)} with errors")
    for p in res.errors:
        print(f"  error: {p.dashboard} / {p.title}: {p.error}", file=sys.stderr)
    return 1 if res.errors else 0
