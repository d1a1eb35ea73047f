"""What the environment division sees, as data: dashboards, panels, queries, variables and alert rules.

One catalogue (``dashboards/catalog.py``) is written in these types; three consumers read it:

* ``dashboards/build.py`` turns it into Grafana JSON/YAML provisioning (grafana-foundation-sdk),
* ``dashboards/preview.py`` runs every query against InfluxDB and draws the panels with matplotlib,
* the tests run every query (macros expanded as Grafana expands them, ``dashboards/macros.py``) against InfluxDB
  filled by the simulated city day.

Queries are InfluxQL strings exactly as Grafana sends them, with Grafana's macros (``$timeFilter``,
``$__interval``, ``$district`` ...) left in: the same text goes into the dashboard JSON and, expanded, to InfluxDB.
Every user-visible text has a Japanese (default) and an English form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Text:
    """A user-visible string: Japanese (the division reads Japanese) and English."""

    ja: str
    en: str

    def __call__(self, lang: str) -> str:
        return self.ja if lang == "ja" else self.en


@dataclass(frozen=True)
class Target:
    """One InfluxQL query of a panel (Grafana: a target with ``rawQuery: true``)."""

    ref_id: str
    query: str
    #: Grafana's legend alias (may use ``$tag_<name>`` and ``$col``).
    alias: str = ""
    result_format: Literal["time_series", "table"] = "time_series"
    #: A translated legend, used instead of ``alias`` when set (may use ``$tag_<name>`` and ``$col`` too). For
    #: the geomap it names the layer drawn from this target.
    legend: Text | None = None


@dataclass(frozen=True)
class Threshold:
    value: float
    color: str  # Grafana colour name: "green", "yellow", "orange", "red"
    label: Text | None = None


PanelKind = Literal["timeseries", "barchart", "stat", "table", "geomap", "bargauge", "text"]


@dataclass(frozen=True)
class Panel:
    title: Text
    kind: PanelKind
    targets: tuple[Target, ...]
    unit: str = ""  # Grafana unit id: "kg", "kwatth", "watt", "percent", "lengthmm", "degree", "s", "short"
    description: Text | None = None
    #: Threshold steps drawn on the panel (and used by its colouring); first step is the base colour.
    thresholds: tuple[Threshold, ...] = ()
    width: int = 12  # of Grafana's 24 grid columns
    height: int = 8
    stacked: bool = False
    decimals: int | None = None
    #: timeseries: how the series are drawn (daily and weekly totals as bars).
    draw: Literal["line", "bars"] = "line"
    #: Lower limit of ``$__interval`` (Grafana's panel "Min interval"), where finer buckets would be mostly
    #: empty: e.g. "30m" for half-hourly meter values, "5m" for one status message a minute.
    min_interval: str | None = None
    #: barchart: the category field of a table-format query (a tag column, e.g. "district").
    x_field: str = ""
    #: geomap: the field the markers of the first layer are coloured by (with ``thresholds``).
    color_field: str = ""
    #: Units of single fields where they differ from ``unit``: (field name, Grafana unit id) pairs.
    field_units: tuple[tuple[str, str], ...] = ()
    #: Table columns not shown, e.g. "Time" of a query with several selectors (it is not a point's time then).
    hide_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    title: Text
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A template variable from ``SHOW TAG VALUES`` (Grafana: query variable, multi-value, "All" included)."""

    name: str  # used as $name in queries
    label: Text
    query: str  # e.g. SHOW TAG VALUES FROM "waste_collection" WITH KEY = "district"
    multi: bool = True
    include_all: bool = True


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: Text
    description: Text
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = ("cityos",)
    time_from: str = "now-24h"
    refresh: str = "1m"

    @property
    def panels(self) -> tuple[Panel, ...]:
        return tuple(p for r in self.rows for p in r.panels)


@dataclass(frozen=True)
class AlertRule:
    """A Grafana-managed alert rule: InfluxQL query A, reduced (``reducer`` over the series), compared to a
    threshold (``evaluator``); fires when the comparison holds for ``for_``."""

    uid: str
    title: Text
    query: str  # InfluxQL with $timeFilter-free explicit windows (alert queries have no dashboard time range)
    relative_from_s: int  # the query's relative time range (Grafana relativeTimeRange.from)
    reducer: Literal["last", "max", "min", "mean", "count", "sum"]
    evaluator: Literal["gt", "lt", "within_range", "outside_range"]
    threshold: float
    for_: str = "5m"
    severity: Literal["warning", "critical"] = "warning"
    summary: Text = field(default_factory=lambda: Text("", ""))
    #: What happens when the query returns no series: "OK" (e.g. no late data), "NoData", "Alerting".
    no_data_state: Literal["OK", "NoData", "Alerting"] = "OK"
    #: For rules that compare two conditions (landslide: soil AND rain): extra queries B, C ... and a math
    #: expression over their reduced values (Grafana server-side expression), e.g. "$A > 40 && $B > 20".
    extra_queries: tuple[tuple[str, str], ...] = ()
    math: str | None = None
    #: Longer explanation for whoever gets the notification (Grafana annotation ``description``).
    description: Text | None = None
    #: Grafana rule group (evaluated together, every minute); an id, not translated.
    group: str = "cityos"
