"""The InfluxDB side of a provider for the common case (docs/ngsi-ld.md, "Providers"): one measurement, one tag
naming the device, one field per temporal attribute. A family's provider maps each entity to a :class:`Target`
(the tag's value and its attributes' fields) and hands the reading to :class:`InfluxFields`.

Every query is one InfluxDB statement per field, each its own request, side by side (a field alone: InfluxDB 1.x
returns only the points that have it, so ``lastN`` and the instances' times are per attribute). Tag values are
checked against the wire contract's id pattern before they reach InfluxQL; field names come from the provider's
code. ``valid`` bounds a field's values (history and aggregates leave a point outside them out, as a family's own
routes skip unservable points).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cityos.influx import QueryFn, query_results
from cityos.rollups import FOREST_ROLLED, forest_merge
from cityos.wire import ID_PATTERN
from cityos_api.core import Api
from cityos_api.ngsi_ld.provider import Aggregates, History
from cityos_api.params import literal

__all__ = ["InfluxFields", "Target", "aggregate_rows"]

_ID_RE = re.compile(ID_PATTERN)
_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
#: NGSI-LD aggregation method → InfluxQL function.
_FUNCS = {"totalCount": 'COUNT("{f}")', "distinctCount": 'COUNT(DISTINCT("{f}"))', "sum": 'SUM("{f}")',
          "avg": 'MEAN("{f}")', "min": 'MIN("{f}")', "max": 'MAX("{f}")', "stddev": 'STDDEV("{f}")'}


@dataclass(frozen=True)
class Target:
    """Where an entity's temporal attributes are stored: the tag's value (a device id) and attribute → field."""

    tag_value: str
    fields: Mapping[str, str]


def _ident(name: str) -> str:
    if not _FIELD_RE.fullmatch(name):
        raise ValueError(f"not a field or tag name: {name!r}")
    return f'"{name}"'


class InfluxFields:
    """Reads fields of ``measurement`` per value of ``tag``; ``valid``: field → (lowest, highest) servable value."""

    def __init__(self, measurement: str, tag: str = "device",
                 valid: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.measurement = _ident(measurement)
        self.tag = _ident(tag)
        self._tag_name = tag
        self._valid = {f: (float(lo), float(hi)) for f, (lo, hi) in (valid or {}).items()}

    def _bounds(self, field: str) -> str:
        """`` AND`` the field's servable range, when it has one."""
        if field not in self._valid:
            return ""
        lo, hi = self._valid[field]
        return f" AND {_ident(field)} >= {lo!r} AND {_ident(field)} <= {hi!r}"

    def _tags(self, values: Sequence[str]) -> str:
        ok = sorted({v for v in values if _ID_RE.fullmatch(v)})
        return "(" + " OR ".join(f"{self.tag} = {literal(v)}" for v in ok) + ")" if ok else "false"

    def _run(self, api: Api, statements: list[str]) -> list[dict[str, Any]]:
        if not statements:
            return []

        def fetch(query: QueryFn, db: str, statement: str) -> list[dict[str, Any]]:
            return query_results(*query(db, statement))

        # one request per statement, side by side (InfluxDB runs a request's statements one after the other)
        return [r for got in api.read_side_by_side([(fetch, s) for s in statements]) for r in got]

    def _series(self, result: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
        return [((s.get("tags") or {}).get(self._tag_name, ""), s["columns"], s.get("values") or [])
                for s in result.get("series", [])]

    # ---- current state
    def latest(self, api: Api, fields: Sequence[str], since_ms: int, recent_ms: int | None = None
               ) -> dict[str, dict[str, tuple[Any, int]]]:
        """tag value → field → its newest ``(value, ms)`` since ``since_ms``. With ``recent_ms`` (after
        ``since_ms``), looked for from there first, and before it only for the tag values (of ``SHOW TAG VALUES``)
        without that field there: a device silent since, a field it stopped sending. ``LAST()`` over a month reads
        every shard of it for every series, over the last day one or two (200 stations' eleven fields: 284 -> 100 ms
        of InfluxDB at each refresh of the NGSI-LD state, docs/benchmarks.md issue 14)."""
        if recent_ms is None or recent_ms <= since_ms:
            return self._latest(api, {f: None for f in fields}, since_ms, None, {})
        out = self._latest(api, {f: None for f in fields}, recent_ms, None, {})

        def tags(query: QueryFn, db: str) -> list[str]:
            res = query_results(*query(db, f"SHOW TAG VALUES FROM {self.measurement} WITH KEY = {self.tag}"))
            return [str(v[1]) for r in res for s in r.get("series", []) for v in s.get("values", [])]

        known = [t for t in api.read(tags) if _ID_RE.fullmatch(t)]
        missing = {f: ts for f in fields if (ts := [t for t in known if f not in out.get(t, {})])}
        return self._latest(api, missing, since_ms, recent_ms, out) if missing else out

    def _latest(self, api: Api, fields: Mapping[str, Sequence[str] | None], start_ms: int, end_ms: int | None,
                out: dict[str, dict[str, tuple[Any, int]]]) -> dict[str, dict[str, tuple[Any, int]]]:
        """:meth:`latest` over ``[start_ms, end_ms)`` of each field for its tag values (None: all), added to
        ``out``."""
        stmts = []
        for f, only in fields.items():
            cond = f"time >= {int(start_ms)}ms" + ("" if end_ms is None else f" AND time < {int(end_ms)}ms")
            if only is not None:
                cond += f" AND {self._tags(only)}"
            stmts.append(f"SELECT LAST({_ident(f)}) FROM {self.measurement} WHERE {cond}{self._bounds(f)} "
                         f"GROUP BY {self.tag}")
        for f, result in zip(fields, self._run(api, stmts), strict=True):
            for tag, _cols, rows in self._series(result):
                for row in rows:
                    if row[1] is not None:
                        out.setdefault(tag, {})[f] = (row[1], int(row[0]))
        return out

    def _per_field(self, targets: Mapping[str, Target], attrs: Sequence[str]
                   ) -> dict[str, list[tuple[str, str, str]]]:
        """field → [(entity id, attribute, tag value)] for the requested attributes."""
        need: dict[str, list[tuple[str, str, str]]] = {}
        for eid, t in targets.items():
            for a in attrs:
                f = t.fields.get(a)
                if f is not None and _ID_RE.fullmatch(t.tag_value):
                    need.setdefault(f, []).append((eid, a, t.tag_value))
        return need

    # ---- history
    def history(self, api: Api, targets: Mapping[str, Target], attrs: Sequence[str], start_ms: int, end_ms: int,
                last_n: int | None, max_n: int) -> History:
        need = self._per_field(targets, attrs)
        order, limit = ("DESC", last_n) if last_n else ("ASC", max_n)
        fields = sorted(need)
        stmts = [f"SELECT {_ident(f)} FROM {self.measurement} WHERE {self._tags([t for *_, t in need[f]])} AND "
                 f"time >= {int(start_ms)}ms AND time < {int(end_ms)}ms{self._bounds(f)} GROUP BY {self.tag} "
                 f"ORDER BY time {order} LIMIT {int(limit)}" for f in fields]
        out: History = {}
        for f, result in zip(fields, self._run(api, stmts), strict=True):
            by_tag: dict[str, list[tuple[Any, int]]] = {}
            for tag, _cols, rows in self._series(result):
                inst = [(row[1], int(row[0])) for row in rows if row[1] is not None]
                by_tag[tag] = inst[::-1] if last_n else inst
            for eid, a, tag in need[f]:
                if by_tag.get(tag):
                    out.setdefault(eid, {})[a] = by_tag[tag]
        return out

    # ---- aggregates
    def aggregated(self, api: Api, targets: Mapping[str, Target], attrs: Sequence[str], methods: Sequence[str],
                   period_ms: int, start_ms: int, end_ms: int) -> Aggregates:
        need = self._per_field(targets, attrs)
        fields = sorted(need)
        group = f"GROUP BY time({int(period_ms)}ms, {int(start_ms) % int(period_ms)}ms), {self.tag} fill(none)" \
            if period_ms else f"GROUP BY {self.tag}"
        stmts = []
        for f in fields:
            sel = ", ".join(f'{_FUNCS[m].format(f=f)} AS "{m}"' for m in methods)
            stmts.append(f"SELECT {sel} FROM {self.measurement} WHERE {self._tags([t for *_, t in need[f]])} AND "
                         f"time >= {int(start_ms)}ms AND time < {int(end_ms)}ms{self._bounds(f)} {group}")
        out: Aggregates = {}
        for f, result in zip(fields, self._run(api, stmts), strict=True):
            by_tag: dict[str, dict[str, list[tuple[Any, int, int]]]] = {}
            for tag, cols, rows in self._series(result):
                per: dict[str, list[tuple[Any, int, int]]] = {}
                for row in rows:
                    t0 = int(row[0]) if period_ms else int(start_ms)
                    t0 = max(t0, int(start_ms))
                    t1 = min(t0 + period_ms, int(end_ms)) if period_ms else int(end_ms)
                    for col, v in zip(cols[1:], row[1:], strict=True):
                        if v is not None:
                            per.setdefault(col, []).append((v, t0, t1))
                by_tag[tag] = per
            for eid, a, tag in need[f]:
                if by_tag.get(tag):
                    out.setdefault(eid, {})[a] = by_tag[tag]
        return out


def aggregate_rows(rows: Sequence[tuple[str, int, Mapping[str, float | int]]], targets: Mapping[str, Target],
                   attrs: Sequence[str], methods: Sequence[str], period_ms: int, start_ms: int, end_ms: int,
                   fields: tuple[str, ...] = FOREST_ROLLED) -> Aggregates:
    """``methods`` (``totalCount``, ``sum``, ``avg``, ``min``, ``max``) per period from rollup-shaped rows
    ``(device, bucket start, row)`` (each wholly inside one period: stored rows and raw points aggregated alike,
    :mod:`cityos.rollups`), merged per period exactly (:func:`~cityos.rollups.forest_merge`); periods start at
    ``start_ms`` (``period_ms`` 0: one, the whole range), the last ends with the range, a period without a value is
    left out (as :meth:`InfluxFields.aggregated`)."""
    periods: dict[tuple[str, int], list[Mapping[str, float | int]]] = {}
    for dev, t, row in rows:
        k = (t - start_ms) // period_ms if period_ms else 0
        periods.setdefault((dev, start_ms + k * period_ms), []).append(row)
    by_device: dict[str, list[tuple[int, Mapping[str, float | int]]]] = {}
    for (dev, t0), per_rows in sorted(periods.items()):
        by_device.setdefault(dev, []).append((t0, per_rows[0] if len(per_rows) == 1 else
                                              forest_merge(per_rows, fields)))
    out: Aggregates = {}
    for eid, target in targets.items():
        dev_rows = by_device.get(target.tag_value)
        if not dev_rows:
            continue
        for a in attrs:
            f = target.fields.get(a)
            if f is None:
                continue
            k_sum, k_n = f + "_sum", f + "_n"  # forest_n inlined: 100 stations' 30 days are 9,000 values
            lists: list[tuple[str, str, list[tuple[Any, int, int]]]] = [(m, f"{f}_{m}", []) for m in methods]
            for t0, row in dev_rows:
                s = row.get(k_sum)
                if s is None:
                    continue
                n = int(row.get(k_n, row["readings"]))
                if not n:
                    continue
                t1 = min(t0 + period_ms, end_ms) if period_ms else end_ms
                for m, key, got in lists:
                    got.append((s if m == "sum" else n if m == "totalCount" else float(s) / n if m == "avg"
                                else row[key], t0, t1))
            if lists[0][2]:
                out.setdefault(eid, {})[a] = {m: got for m, _, got in lists}
    return out
