"""What every dashboard of the catalogue shares: query fragments, the rules every query follows, the district and
gateway variables, and the per-family device error panel of the fleet dashboard (``dashboards/catalog.py`` puts
the families' sections together; ``dashboards/families/<family>.py`` holds each family's own).

Conventions (``docs/dashboards.md`` explains them):

* every live panel query has ``$timeFilter``; where it aggregates over time it groups by ``time($__interval)``,
  or by whole days/weeks of Japan time (``time(1d)``/``time(1w, 4d)`` with ``tz('Asia/Tokyo')``: weeks start on
  Monday);
* template variables are matched as Grafana does for InfluxDB: ``"district" =~ /^$district$/``;
* the thresholds are named constants in the family's module, used by its panels and alert rules alike;
* alert rules read only live readings (:func:`live_only`): a reading delivered late after an outage
  (``backfill = true``) is history, not an emergency;
* no query on the ``energy`` measurement shows a household: ``"device"`` is grouped by only inside a subquery;
* and none shows a group of fewer than k households (``cityos.privacy.MIN_HOUSEHOLDS``): the outermost level
  filters on ``"households" >= k``, a count of households in the group and bucket
  (``dashboards/families/meter.py``, docs/privacy.md).
"""

from __future__ import annotations

from dashboards.model import Target, Text, Variable

# --------------------------------------------------------------------------------------------------------------
# Query fragments

TZ = "tz('Asia/Tokyo')"
DISTRICT = '"district" =~ /^$district$/'
GATEWAY = '"gateway" =~ /^$gateway$/'
#: Days of Japan time for the half-hourly meter values: the value stamped hh:mm is the energy of the half hour
#: *ending* then, so the day D is the values stamped D 00:30 … D+1 00:00, i.e. the buckets start at 00:30.
METER_DAY = "time(1d, 30m)"
#: Weeks of Japan time starting on Monday (InfluxDB's weeks start on Thursday 1970-01-01: offset 4 days).
WEEK = "time(1w, 4d)"



def n(v: float) -> str:
    """A threshold as InfluxQL/Grafana text: 40.0 → "40", 0.5 → "0.5"."""
    return f"{v:g}"


def live_only() -> str:
    """The WHERE fragment that keeps only live readings, for every alert rule on edge readings.

    Every point of a reading carries the boolean field ``backfill`` (``cityos/wire.py``): ``true`` when it was
    sent late, from the backlog after an outage. InfluxQL has no "IS NULL" and ``"backfill" != true`` is false
    where the field is absent, so the live points are the ones with ``backfill = false`` (checked on InfluxDB
    1.6.7). Measurements not made of readings (``gateway_status``, ``ingest_health``) have no such field and
    their rules do not use this.
    """
    return '"backfill" = false'



def where(*conditions: str) -> str:
    """``WHERE a AND b ...``, each condition with an OR in it parenthesised."""
    return "WHERE " + " AND ".join(f"({c})" if " OR " in c else c for c in conditions)



T = Text

V_DISTRICT_ALL = Variable("district", T("地区", "District"),
                          'SHOW TAG VALUES FROM "waste_collection", "energy" WITH KEY = "district"')
V_GATEWAY = Variable("gateway", T("ゲートウェイ", "Gateway"),
                     'SHOW TAG VALUES FROM "gateway_health", "gateway_status" WITH KEY = "gateway"')


def family_errors(family: str, fields: tuple[str, ...]) -> tuple[Target, ...]:
    """Errors per minute of one device family, summed over its devices (counters restart with the agent: the
    non-negative derivative per device ignores the reset)."""
    out = []
    family_is = f'"family" = \'{family}\''
    for i, f in enumerate(fields):
        inner = (f'(SELECT non_negative_derivative(max("{f}"), 1m) AS "per_min" FROM "source_health" '
                 f'{where(GATEWAY, family_is, "$timeFilter")} GROUP BY time($__interval), "device", "family")')
        out.append(Target(chr(ord("A") + i), f'SELECT sum("per_min") FROM {inner} WHERE $timeFilter '
                                             f'GROUP BY time($__interval), "family" fill(none)', alias=f))
    return tuple(out)

