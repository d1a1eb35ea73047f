"""Run an (expanded) InfluxQL query the way Grafana's InfluxDB datasource does: InfluxDB 1.x ``/query`` over HTTP.

``GET`` or ``POST`` (Grafana's ``httpMode``), ``epoch=ms``, HTTP Basic auth (or ``u``/``p`` parameters, as
Grafana's legacy path sends them). Every statement's error is raised as :class:`QueryError` with InfluxDB's own
error text, so a test failure or a preview shows what InfluxDB said about which query.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cityos.influx import InfluxClient, InfluxQueryError, InfluxUnreachable, query_results

__all__ = [
    "InfluxSource", "QueryError", "RuleEvaluation", "Series", "evaluate_rule", "run_query", "source_of",
    "tag_values",
]


class QueryError(RuntimeError):
    """InfluxDB refused a query (or could not be reached); ``influx_error`` is InfluxDB's text."""

    def __init__(self, query: str, influx_error: str, status: int | None = None) -> None:
        self.query = query
        self.influx_error = influx_error
        self.status = status
        where = f"HTTP {status}: " if status is not None else ""
        super().__init__(f"InfluxDB error: {where}{influx_error}\n  query: {query}")


@dataclass(frozen=True)
class InfluxSource:
    """Where the queries go: an InfluxDB 1.x HTTP endpoint and database (Grafana's datasource settings)."""

    url: str
    db: str
    username: str = ""
    password: str = ""
    method: Literal["GET", "POST"] = "GET"
    #: Send the credentials as ``u``/``p`` query parameters (Grafana's legacy frontend path) instead of Basic auth.
    auth_params: bool = False
    timeout: float = 30.0


@dataclass
class Series:
    """One InfluxDB result series: ``columns[0]`` is ``time`` (epoch ms) except for SHOW statements."""

    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)
    statement_id: int = 0

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.values]

    def non_null(self) -> int:
        """Values other than null in the non-time columns (an all-null GROUP BY time() series counts 0)."""
        skip = 1 if self.columns and self.columns[0] == "time" else 0
        return sum(1 for row in self.values for v in row[skip:] if v is not None)


def source_of(info: Any, db: str | None = None, **kw: Any) -> InfluxSource:
    """The :class:`InfluxSource` of anything that names an InfluxDB the way a developer's stack does
    (``influx_url``, ``influx_db`` and ``reader_login()``): as its read-only user, as Grafana reads."""
    user, password = info.reader_login()
    return InfluxSource(info.influx_url, db or info.influx_db, user, password, **kw)


@functools.lru_cache(maxsize=8)
def _client(src: InfluxSource) -> InfluxClient:
    """One kept-open client per source (a preview runs hundreds of queries against one)."""
    return InfluxClient(src.url, src.db, src.username or None, src.password, timeout_s=src.timeout)


def run_query(source: InfluxSource | Any, query: str) -> list[Series]:
    """Run ``query`` (already expanded: no Grafana macros left) and return every statement's series."""
    src = source if isinstance(source, InfluxSource) else source_of(source)
    params = {"db": src.db, "q": query, "epoch": "ms"}
    if src.username and src.auth_params:
        params.update(u=src.username, p=src.password)
    client = _client(src)
    try:
        if src.method == "POST":
            # Grafana POSTs q as a form body, everything else in the URL
            url_params = {k: v for k, v in params.items() if k != "q"}
            status, raw = client.request("/query", method="POST", params=url_params, form={"q": query},
                                         auth=not src.auth_params)
        else:
            status, raw = client.request("/query", params=params, auth=not src.auth_params)
    except InfluxUnreachable as e:
        raise QueryError(query, str(e)) from e
    try:
        results = query_results(status, raw)
    except InfluxQueryError as e:
        raise QueryError(query, e.error, None if e.status == 200 else e.status) from None
    out: list[Series] = []
    for result in results:
        for s in result.get("series", []):
            out.append(Series(
                name=s.get("name", ""), columns=list(s.get("columns", [])), values=s.get("values", []),
                tags=dict(s.get("tags") or {}), statement_id=int(result.get("statement_id", 0)),
            ))
    return out


def tag_values(source: InfluxSource | Any, query: str) -> list[str]:
    """The values a Grafana query variable offers: the ``value`` column of ``SHOW TAG VALUES`` (or the first
    non-time column of any other query), deduplicated in order."""
    seen: dict[str, None] = {}
    for s in run_query(source, query):
        col = "value" if "value" in s.columns else next((c for c in s.columns if c != "time"), None)
        if col is None:
            continue
        for v in s.column(col):
            if v is not None:
                seen.setdefault(str(v), None)
    return list(seen)


# ------------------------------------------------------------------------------------------------------------
# alert rules: query → reduce → threshold or math, as Grafana's alerting evaluates them


@dataclass
class RuleEvaluation:
    """One evaluation of an :class:`~dashboards.model.AlertRule` at ``now_ms``."""

    rule_uid: str
    now_ms: int
    queries: dict[str, str]  # ref id → the query as sent
    #: ref id → labels (sorted tag items) → the reduced value (None: the series had no non-null value)
    reduced: dict[str, dict[tuple[tuple[str, str], ...], float | None]]
    #: labels → the condition holds
    firing: dict[tuple[tuple[str, str], ...], bool]
    no_data: bool

    @property
    def state(self) -> str:
        """``"Alerting"`` if any instance fires, else ``"Normal"``; with no data, the rule's no-data state
        (before its ``for`` duration, which needs repeated evaluations and is not modelled here)."""
        if any(self.firing.values()):
            return "Alerting"
        return "Normal"

    def firing_labels(self) -> list[dict[str, str]]:
        return [dict(k) for k, v in self.firing.items() if v]


_REDUCERS: dict[str, Any] = {
    "last": lambda v: v[-1], "max": max, "min": min, "sum": sum, "count": len,
    "mean": lambda v: sum(v) / len(v),
}


def _reduce(values: list[float], reducer: str) -> float | None:
    """Grafana's Reduce expression in "drop non-numeric" mode (nulls dropped; an empty series gives None,
    except count → 0)."""
    if not values:
        return 0.0 if reducer == "count" else None
    return float(_REDUCERS[reducer](values))


def _compare(v: float | None, evaluator: str, threshold: float) -> bool:
    if v is None:
        return False
    if evaluator == "gt":
        return v > threshold
    if evaluator == "lt":
        return v < threshold
    raise ValueError(f"evaluator {evaluator!r} needs two thresholds; the model has one")


_MATH_TOKENS = re.compile(r"\$\{?([A-Za-z]\w*)\}?|&&|\|\||!(?!=)|[0-9.]+(?:[eE][+-]?\d+)?|[<>]=?|==|!=|[-+*/()]|\s+")


def _math(expr: str, env: dict[str, float | None]) -> bool:
    """Evaluate a Grafana math expression over reduced numbers (``$A > 40 && $B > 20``): comparison, boolean
    and arithmetic operators only; a missing value (None) makes the expression false, like Grafana's NaN."""
    out: list[str] = []
    pos = 0
    for m in _MATH_TOKENS.finditer(expr):
        if m.start() != pos:
            raise ValueError(f"math expression {expr!r}: unexpected {expr[pos:m.start()]!r}")
        pos = m.end()
        tok = m.group(0)
        if m.group(1):
            v = env.get(m.group(1))
            if v is None:
                return False
            out.append(repr(float(v)))
        elif tok == "&&":
            out.append(" and ")
        elif tok == "||":
            out.append(" or ")
        elif tok == "!":
            out.append(" not ")
        else:
            out.append(tok)
    if pos != len(expr):
        raise ValueError(f"math expression {expr!r}: unexpected {expr[pos:]!r}")
    return bool(eval("".join(out), {"__builtins__": {}}, {}))  # only the tokens checked above


def evaluate_rule(source: InfluxSource | Any, rule: Any, now_ms: int) -> RuleEvaluation:
    """Evaluate an alert rule as Grafana would at ``now_ms``: each query over ``[now - relative_from_s, now]``
    (``$timeFilter``, ``$__interval`` = alerting's default 1 s, ``now()`` pinned to ``now_ms``), every series
    reduced with ``rule.reducer``, then ``rule.math`` over the reduced values (series matched by labels; a ref
    with one series applies to all) or ``rule.evaluator``/``rule.threshold`` on query A."""
    from dashboards.macros import ALERT_INTERVAL_MS, expand

    t0 = now_ms - int(rule.relative_from_s) * 1000
    refs = [("A", rule.query), *rule.extra_queries]
    queries: dict[str, str] = {}
    reduced: dict[str, dict[tuple[tuple[str, str], ...], float | None]] = {}
    for ref, q in refs:
        eq = expand(q, time_from_ms=t0, time_to_ms=now_ms, interval_ms=ALERT_INTERVAL_MS, now_ms=now_ms)
        queries[ref] = eq
        per: dict[tuple[tuple[str, str], ...], float | None] = {}
        for s in run_query(source, eq):
            key = tuple(sorted(s.tags.items()))
            cols = [i for i, c in enumerate(s.columns) if c != "time"]
            vals = [float(r[cols[0]]) for r in s.values if cols and isinstance(r[cols[0]], int | float)
                    and not isinstance(r[cols[0]], bool)]
            per[key] = _reduce(vals, rule.reducer)
        reduced[ref] = per
    no_data = all(not per for per in reduced.values())
    firing: dict[tuple[tuple[str, str], ...], bool] = {}
    if rule.math:
        keys = max(reduced.values(), key=len).keys() if reduced else []
        for key in keys:
            env: dict[str, float | None] = {}
            for ref, per in reduced.items():
                if key in per:
                    env[ref] = per[key]
                elif len(per) == 1:
                    env[ref] = next(iter(per.values()))
                else:
                    env[ref] = None
            firing[key] = _math(rule.math, env)
    else:
        for key, v in reduced.get("A", {}).items():
            firing[key] = _compare(v, rule.evaluator, rule.threshold)
    return RuleEvaluation(rule.uid, now_ms, queries, reduced, firing, no_data)
