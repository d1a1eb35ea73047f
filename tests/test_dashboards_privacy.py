"""The privacy rule on the dashboards (docs/privacy.md, issue 14 item 5): every panel and alert-rule query over the
``energy`` measurement shows a group of households (a district, a distribution, a count) for a time bucket only
when at least k = ``cityos.privacy.MIN_HOUSEHOLDS`` households report in that group and bucket.

Two ways, both over every query that reads ``energy`` (found by looping over the built catalogue, so a panel added
later is covered):

* **the text**: the outermost level of every energy query filters on ``"households" >= k``, and every
  ``"households"`` field is a ``count()`` over one row per household (a level grouped by ``"device"``) or the
  smallest such count of the bucket's half hours;
* **the data**: a small simulated city written straight to the project's InfluxDB 1.6 (the session stack of
  ``tests/conftest.py``, no mock), 33 households in districts of exactly 1, 2, 9, 10 and 11 households, each with
  its meter's cumulative ``energy_fixed_kwh`` every half hour and ``power_w`` every minute for one day, as the meter
  source writes them (kind ``smart_meter`` → measurement ``energy``, tags ``device``, ``gateway``, ``district``;
  lines from ``ingest.lineproto.batch_to_lines``). Every query is expanded as Grafana would
  (:mod:`dashboards.macros`, as tests/test_dashboards_queries.py does) over the day and over the dashboard's
  default range, and: no series or row belongs to the districts of 1, 2 or 9 households, no value equals any single
  value of one of their households in the same time bucket, and the districts of 10 and 11 households are there
  with the values the ground truth gives.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import random
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from cityos import privacy
from cityos.wire import Reading, TelemetryBatch, checked
from dashboards import catalog as cat
from dashboards.families import meter
from dashboards.macros import (
    ALERT_INTERVAL_MS,
    ALL,
    VarSpec,
    calculate_interval,
    expand,
    panel_max_data_points,
)
from dashboards.model import Dashboard, Panel
from dashboards.queryrun import InfluxSource, Series, run_query, source_of, tag_values
from ingest.lineproto import batch_to_lines

pytestmark = pytest.mark.timeout(120)

K = privacy.MIN_HOUSEHOLDS
JST = dt.timezone(dt.timedelta(hours=9))
DAY = dt.datetime(2026, 11, 24, tzinfo=JST)
T0 = int(DAY.timestamp() * 1000)  # 00:00 JST: the first register value
T1 = T0 + 86_400_000  # 24:00 JST: the last register value (the half hour 23:30-24:00), inclusive
MIN_MS = 60_000
SLOT_MS = 30 * MIN_MS
WINDOW_MS = 5 * MIN_MS
#: district → households (k - 1 and fewer must never show; k and k + 1 must).
SIZES = {"shohoku": 1, "sarayama": 2, "kume": K - 1, "chuo": K, "ichinomiya": K + 1, "innosho": K}
SMALL = {d for d, n in SIZES.items() if n < K}
#: A district of k households one of which reports only from 06:00 (a meter opened to the city that morning): k
#: households in the day, k - 1 in its first twelve half hours. Its day must not show, or the day minus the shown
#: half hours would give the k - 1 households' early half hours away.
LATE_DISTRICT, LATE_FROM_MIN = "innosho", 6 * 60
#: Districts that every district-wise query shows.
SHOWN = {d for d, n in SIZES.items() if n >= K} - {LATE_DISTRICT}
#: The meters' resolution (ECHONET E1 = 0x03 with coefficient 1: 0.001 kWh).
KWH_DECIMALS = 3
_DUR = {"s": 1000, "m": MIN_MS, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


# ------------------------------------------------------------------------------------------------------------
# every query over "energy", from the catalogue


@dataclass(frozen=True)
class EnergyQuery:
    name: str
    query: str
    dashboard: Dashboard | None = None
    panel: Panel | None = None
    relative_from_s: int = 0  # alert rules


def energy_queries() -> list[EnergyQuery]:
    """Every panel target and alert-rule query (extra queries too) that reads ``energy``, across the catalogue."""
    out = []
    for d in cat.DASHBOARDS:
        for p in d.panels:
            for t in p.targets:
                if _reads_energy(t.query):
                    out.append(EnergyQuery(f"{d.uid} / {p.title('en')} / {t.ref_id}", t.query, d, p))
    for r in cat.ALERT_RULES:
        for ref, q in (("A", r.query), *r.extra_queries):
            if _reads_energy(q):
                out.append(EnergyQuery(f"rule {r.uid} / {ref}", q, relative_from_s=int(r.relative_from_s)))
    return out


def _reads_energy(query: str) -> bool:
    return bool(re.search(r'\bFROM\s+(?:"energy"|energy\b)', query))


# ------------------------------------------------------------------------------------------------------------
# the rule in the text


def _subquery(query: str, i: int) -> str:
    """The parenthesised subquery that opens at ``query[i] == "("``, without its parentheses."""
    depth = 0
    for j in range(i, len(query)):
        depth += {"(": 1, ")": -1}.get(query[j], 0)
        if depth == 0:
            return query[i + 1:j]
    raise AssertionError(f"unbalanced: {query[i:]}")


def _level(query: str) -> str:
    """The query's own level: every ``(SELECT ...)`` cut out (what this level selects, filters and groups by)."""
    out, i = [], 0
    while i < len(query):
        if query.startswith("(SELECT", i):
            out.append("(…)")
            i += len(_subquery(query, i)) + 2
        else:
            out.append(query[i])
            i += 1
    return "".join(out)


def _levels(query: str) -> list[str]:
    """Every SELECT of the query, outermost first, each as its full text (subqueries included)."""
    out = [query]
    for m in re.finditer(r"\(SELECT", query):
        out.append(_subquery(query, m.start()))
    return out


def _group_by(level: str) -> str:
    return level.rsplit("GROUP BY", 1)[1] if "GROUP BY" in level else ""


def rule_violations(query: str, k: int = K) -> list[str]:
    """Why ``query`` (over ``energy``) breaks the k rule, as text; empty when it follows it."""
    problems = []
    top = _level(query)
    if f'"households" >= {k}' not in top.split("GROUP BY", 1)[0]:
        problems.append(f'the outermost level has no WHERE "households" >= {k}: {top}')
    if '"device"' in top or "*" in top:
        problems.append(f"the outermost level shows households: {top}")
    made = 0
    for sub in _levels(query):
        lv = _level(sub)
        for m in re.finditer(r'(\w+)\(("\w+")\) AS "households"', lv):
            made += 1
            fn, arg = m.groups()
            if '"device"' in _group_by(lv):
                problems.append(f'"households" computed per household: {lv}')
            if fn == "min" and arg == '"households"':
                continue  # the smallest count of the bucket's half hours (each checked as a level of its own)
            if fn != "count":
                problems.append(f'"households" is {fn}({arg}), not a count: {lv}')
                continue
            # the counted rows: one per household (an aggregation grouped by "device"), never raw points
            if not _one_row_per_household(sub, arg):
                problems.append(f'"households" = count({arg}) does not count one row per household: {lv}')
    if not made:
        problems.append('no "households" field (a count of households) anywhere in the query')
    return problems


def _direct_subqueries(query: str) -> list[str]:
    """The subqueries directly in the FROM of ``query``'s own level (not nested deeper), without parentheses."""
    out, i = [], 0
    for m in re.finditer(r"\(SELECT", query):
        if m.start() >= i:
            out.append(_subquery(query, m.start()))
            i = m.start() + len(out[-1]) + 2
    return out


def _one_row_per_household(query: str, fld: str) -> bool:
    """Every subquery of ``query``'s FROM that gives ``fld`` gives one row per household and bucket: it aggregates
    grouped by ``"device"``, or passes through (a raw SELECT) rows of such a subquery."""
    givers = [sub for sub in _direct_subqueries(query) if fld in _level(sub).split(" FROM ", 1)[0]]
    if not givers:
        return False
    for sub in givers:
        lv = _level(sub)
        raw = re.fullmatch(r'SELECT\s+"\w+"(?:\s*,\s*"\w+")*', lv.split(" FROM ", 1)[0].strip())
        if raw:
            if not _one_row_per_household(sub, fld):
                return False
        elif '"device"' not in _group_by(lv):
            return False
    return True


def test_k_is_the_privacy_constant():
    assert K == 10
    assert meter.MIN_HOUSEHOLDS is privacy.MIN_HOUSEHOLDS and cat.MIN_HOUSEHOLDS == privacy.MIN_HOUSEHOLDS
    assert meter.k_filter() == f'"households" >= {privacy.MIN_HOUSEHOLDS}'


def test_every_energy_query_states_the_k_rule():
    found = energy_queries()
    assert len(found) >= 9, [q.name for q in found]
    problems = [f"{q.name}: {p}" for q in found for p in rule_violations(q.query)]
    assert not problems, "\n".join(problems)


def test_the_text_check_catches_a_district_sum_without_the_filter():
    """The check is not vacuous: the district energy queries as they were before the rule, and the rule with a
    count of points instead of households, are refused."""
    before = ('SELECT sum("kwh") FROM (SELECT non_negative_difference("energy_fixed_kwh") AS "kwh" FROM "energy" '
              'WHERE $timeFilter GROUP BY "device", "district") WHERE $timeFilter GROUP BY time(1d, 30m), '
              '"district" fill(none)')
    assert rule_violations(before)
    points = ('SELECT "kwh" FROM (SELECT sum("kwh") AS "kwh", count("kwh") AS "households" FROM (SELECT '
              'non_negative_difference("energy_fixed_kwh") AS "kwh" FROM "energy" WHERE $timeFilter GROUP BY '
              '"district") WHERE $timeFilter GROUP BY time(1d), "district") WHERE "households" >= 10 GROUP BY '
              '"district"')
    assert any("one row per household" in p for p in rule_violations(points)), rule_violations(points)
    smaller_k = meter.q_kwh_per_day().replace(f'"households" >= {K}', '"households" >= 5')
    assert rule_violations(smaller_k)
    assert not rule_violations(meter.q_kwh_per_day())


# ------------------------------------------------------------------------------------------------------------
# the simulated city (module fixture)


@dataclass
class Household:
    device: str
    district: str
    registers: list[tuple[int, float]] = field(default_factory=list)  # (slot end ms, kWh)
    power: list[tuple[int, float]] = field(default_factory=list)  # (ms, W)

    def half_hours(self) -> list[tuple[int, float]]:
        """(slot end ms, kWh of the half hour)."""
        return [(t, round(b - a, KWH_DECIMALS + 3)) for (_, a), (t, b) in zip(self.registers, self.registers[1:],
                                                                               strict=False)]

    def windows(self) -> list[tuple[int, float]]:
        """(5-minute window start ms, mean power W)."""
        by: dict[int, list[float]] = defaultdict(list)
        for t, w in self.power:
            by[t - t % WINDOW_MS].append(w)
        return sorted((t, sum(v) / len(v)) for t, v in by.items())

    def day_kwh(self) -> float:
        return self.registers[-1][1] - self.registers[0][1]


@dataclass
class City:
    source: InfluxSource
    households: list[Household]

    def of(self, district: str) -> list[Household]:
        return [h for h in self.households if h.district == district]


def _simulate() -> list[Household]:
    """Households with a realistic day: a base load, a morning and an evening peak, minute-to-minute noise; the
    register integrates the power and is read at :00/:30 to the meter's resolution."""
    rng = random.Random(14)
    out = []
    n = 0
    for district, size in SIZES.items():
        for i in range(size):
            n += 1
            h = Household(f"hh-{n:05d}", district)
            base, evening, morning = rng.uniform(120, 350), rng.uniform(400, 1800), rng.uniform(150, 900)
            reg = rng.uniform(2_000, 40_000)
            first = LATE_FROM_MIN if district == LATE_DISTRICT and i == 0 else 0
            for m in range(first, 24 * 60 + 1):
                ts = T0 + m * MIN_MS
                if m % 30 == 0:
                    h.registers.append((ts, round(reg, KWH_DECIMALS)))
                if m == 24 * 60:
                    break
                hour = m / 60
                w = (base + evening * math.exp(-(((hour - 19.5) / 1.8) ** 2))
                     + morning * math.exp(-(((hour - 7.5) / 1.2) ** 2)) + rng.uniform(-40, 40))
                w = float(int(max(40.0, w)))  # E7 is whole watts
                h.power.append((ts + rng.randint(0, 59) * 1000, w))  # polled once a minute, at any second
                reg += w / 60_000
            out.append(h)
    return out


def _lines(households: list[Household]) -> list[str]:
    lines = []
    for i, h in enumerate(households):
        readings = [Reading(device_id=h.device, kind="smart_meter", ts=t, values={"energy_fixed_kwh": kwh},
                            units={"energy_fixed_kwh": "kWh"}, tags={"district": h.district})
                    for t, kwh in h.registers]
        readings += [Reading(device_id=h.device, kind="smart_meter", ts=t, values={"power_w": w},
                             units={"power_w": "W"}, tags={"district": h.district}) for t, w in h.power]
        readings.sort(key=lambda r: r.ts)
        gateway = f"gw-meter-{i // 6 + 1:02d}"  # an apartment block's concentrator reads six
        for j in range(0, len(readings), 500):
            chunk = readings[j:j + 500]
            lines += batch_to_lines(checked(TelemetryBatch(gateway_id=gateway, boot_id="boot-0001", seq=j,
                                                           sent_at=chunk[-1].ts, readings=chunk)))
    return lines


@pytest.fixture(scope="module")
def city(stack) -> Any:
    from helpers import influx_write

    db = f"t_kprivacy_{uuid.uuid4().hex[:8]}"
    stack.create_database(db)
    info = stack.info()
    households = _simulate()
    assert {d: sum(h.district == d for h in households) for d in SIZES} == SIZES
    influx_write(info, db, _lines(households))
    yield City(source_of(info, db), households)
    stack.drop_database(db)


# ------------------------------------------------------------------------------------------------------------
# Grafana's view of a query


@dataclass
class Run:
    q: EnergyQuery
    window: str
    t0: int
    t1: int
    interval_ms: int
    expanded: str
    series: list[Series]

    def bucket_ms(self) -> int:
        """The widest time bucket the query groups by (a row's value is over [time, time + this)); the whole
        window when it groups by no time."""
        found = [int(n) * _DUR[u] for n, u in re.findall(r"\btime\((\d+)([smhdw])\b", self.expanded)]
        return max(found) if found else self.t1 - self.t0 + 1

    def rows(self) -> list[tuple[dict[str, str], int, str, Any]]:
        """(tags, time, column, value) of every non-null value."""
        return [(s.tags, row[0], col, v) for s in self.series for row in s.values
                for col, v in zip(s.columns[1:], row[1:], strict=True) if v is not None]


def _expand(city: City, q: EnergyQuery, t0: int, t1: int) -> tuple[str, int]:
    if q.dashboard is None:  # an alert rule: as queryrun.evaluate_rule sends it
        return expand(q.query, time_from_ms=t0, time_to_ms=t1, interval_ms=ALERT_INTERVAL_MS, now_ms=t1), \
            ALERT_INTERVAL_MS
    assert q.panel is not None
    all_values: dict[str, list[str]] = {}
    specs: dict[str, VarSpec] = {}
    for v in q.dashboard.variables:
        vq = expand(v.query, time_from_ms=t0, time_to_ms=t1, variables={k: [ALL] for k in all_values},
                    all_values=all_values, specs=specs)
        all_values[v.name] = tag_values(city.source, vq)
        specs[v.name] = VarSpec(v.multi, v.include_all)
    interval = calculate_interval(t0, t1, panel_max_data_points(q.panel.width), q.panel.min_interval)
    text = expand(q.query, time_from_ms=t0, time_to_ms=t1, interval_ms=interval.ms,
                  variables={k: [ALL] for k in all_values}, all_values=all_values, specs=specs, now_ms=t1)
    return text, interval.ms


def _windows(q: EnergyQuery) -> list[tuple[str, int, int]]:
    """The day, and the dashboard's default range (or the rule's window) ending with it."""
    if q.dashboard is None:
        return [("rule window", T1 - q.relative_from_s * 1000, T1)]
    m = re.match(r"^now-(\d+)([smhdw])$", q.dashboard.time_from)
    assert m, q.dashboard.time_from
    return [("day", T0, T1), (q.dashboard.time_from, T1 - int(m.group(1)) * _DUR[m.group(2)], T1)]


@pytest.fixture(scope="module")
def runs(city) -> list[Run]:
    out = []
    for q in energy_queries():
        for name, a, b in _windows(q):
            text, interval = _expand(city, q, a, b)
            assert not re.search(r"\$[A-Za-z_{]|\[\[", text), f"{q.name}: macro left in {text}"
            out.append(Run(q, name, a, b, interval, text, run_query(city.source, text)))
    return out


def _runs_of(runs: list[Run], query: str) -> list[Run]:
    found = [r for r in runs if r.q.query == query]
    assert found, f"no panel runs {query[:80]}…"
    return found


# ------------------------------------------------------------------------------------------------------------
# the rule in the data


def test_the_data_would_show_the_small_districts_without_the_rule(city):
    """Positive control: the same queries with k = 1 show all five districts, and the 1-household district's
    daily kWh is its household's (so the checks below would see a leak)."""
    q = EnergyQuery("k = 1", meter.q_kwh_per_day().replace(f'"households" >= {K}', '"households" >= 1'),
                    cat.ENERGY, next(p for p in cat.ENERGY.panels if p.targets[0].query == meter.q_kwh_per_day()))
    text, _ = _expand(city, q, T0, T1)
    got = {s.tags["district"]: s.values[0][1] for s in run_query(city.source, text)}
    assert set(got) == set(SIZES)
    (alone,) = city.of("shohoku")
    assert got["shohoku"] == pytest.approx(alone.day_kwh(), abs=1e-6)


def test_no_value_of_a_district_below_k(city, runs):
    """Over every energy query and window: no series or row of a district with fewer than k households, every
    district-wise query shows both districts with k or more, and no value equals a value of a single household of
    a small district in the same time bucket (its half hours and their sum, its day, its 5-minute means and their
    maximum, its raw power readings and registers)."""
    problems = []
    small = [h for h in city.households if h.district in SMALL]
    per_hh: list[dict[str, list[tuple[int, float]]]] = [
        {"half_hours": h.half_hours(), "windows": h.windows(), "power": h.power, "registers": h.registers}
        for h in small]
    days = [h.day_kwh() for h in small]

    def single_values(t: int, width: int) -> list[float]:
        out = list(days)
        for series in per_hh:
            for kind in ("half_hours", "windows", "power", "registers"):
                xs = series[kind]
                lo = bisect.bisect_left(xs, (t, -math.inf))
                hi = bisect.bisect_left(xs, (t + width, -math.inf))
                vals = [v for _t, v in xs[lo:hi]]
                out += vals
                if vals:
                    out += [sum(vals), max(vals)]
        return out

    checked_values = 0
    for r in runs:
        districts = {s.tags.get("district") for s in r.series if any(v is not None for row in s.values
                                                                      for v in row[1:])}
        if leaked := districts & SMALL:
            problems.append(f"{r.q.name} over {r.window}: shows districts {sorted(leaked)}")
        if '"district"' in _group_by(_level(r.q.query)) and not (
                SHOWN <= districts - {None} <= SHOWN | {LATE_DISTRICT}):
            problems.append(f"{r.q.name} over {r.window}: districts {sorted(districts - {None})}, want "
                            f"{sorted(SHOWN)} (and maybe {LATE_DISTRICT})")
        if not r.rows():
            problems.append(f"{r.q.name} over {r.window}: no data (the districts of {K} and {K + 1} households "
                            "must show)")
        width = r.bucket_ms()
        for _tags, t, col, v in r.rows():
            checked_values += 1
            for c in single_values(t, width):
                if abs(float(v) - c) <= 1e-6 * max(1.0, abs(c)):
                    problems.append(f"{r.q.name} over {r.window}: {col} at {t} = {v}, a single household's value")
                    break
    assert not problems, "\n".join(problems[:40])
    assert checked_values > 500


# ------------------------------------------------------------------------------------------------------------
# the districts shown: the right numbers (an oracle of the rule over the ground truth)


def _slots(city: City, district: str) -> dict[int, tuple[float, int]]:
    """Half-hour end ms → (kWh of the district's households, how many households have that half hour)."""
    out: dict[int, tuple[float, int]] = {}
    for h in city.of(district):
        for t, kwh in h.half_hours():
            s, n = out.get(t, (0.0, 0))
            out[t] = (s + kwh, n + 1)
    return out


def _loads(city: City, district: str) -> dict[int, tuple[float, int]]:
    """5-minute window start ms → (the district's load W, how many households have a reading in the window)."""
    out: dict[int, tuple[float, int]] = {}
    for h in city.of(district):
        for t, w in h.windows():
            s, n = out.get(t, (0.0, 0))
            out[t] = (s + w, n + 1)
    return out


def _want_kwh(city: City, bucket: Any) -> dict[str, dict[int, float]]:
    """District → bucket start → kWh, where every half hour of the bucket has k households."""
    out: dict[str, dict[int, float]] = {}
    for d in SIZES:
        sums: dict[int, float] = defaultdict(float)
        least: dict[int, int] = {}
        for t, (kwh, n) in _slots(city, d).items():
            b = bucket(t)
            sums[b] += kwh
            least[b] = min(least.get(b, n), n)
        if shown := {b: v for b, v in sums.items() if least[b] >= K}:
            out[d] = shown
    return out


def _by_district(r: Run, col: str | None = None) -> dict[str, dict[int, Any]]:
    out: dict[str, dict[int, Any]] = defaultdict(dict)
    for tags, t, c, v in r.rows():
        if col is None or c == col:
            out[tags["district"]][t] = v
    return dict(out)


def _approx(want: dict[str, dict[int, float]]) -> dict[str, Any]:
    return {d: pytest.approx(v, abs=1e-6) for d, v in want.items()}


def test_kwh_per_district_is_the_sum_of_its_households(city, runs):
    day = _want_kwh(city, lambda t: T0 + SLOT_MS if T0 < t <= T1 else None)
    assert set(day) == SHOWN, "the district with a household from 06:00 has half hours below k: no day"
    for r in _runs_of(runs, meter.q_kwh_per_day()):
        assert _by_district(r) == _approx(day), (r.q.name, r.window)
    for r in _runs_of(runs, meter.q_kwh_per_interval()):
        assert _by_district(r) == _approx(_want_kwh(city, lambda t, r=r: t - t % r.interval_ms)), r.window
    half_hours = _want_kwh(city, lambda t: t)
    late = half_hours[LATE_DISTRICT]
    assert min(late) == T0 + LATE_FROM_MIN * MIN_MS + SLOT_MS, "its half hours with k households only"


def test_a_longer_display_interval_needs_k_households_in_every_half_hour(city):
    """The half-hour panel over a range long enough for 3-hour buckets: the bucket holding 06:00 has half hours
    with k - 1 households in the late district, so it is hidden there; the district's later buckets show."""
    (q,) = [q for q in energy_queries() if q.query == meter.q_kwh_per_interval()]
    text = expand(q.query, time_from_ms=T0, time_to_ms=T1, interval_ms=3 * 3_600_000,
                  variables={"district": [ALL]}, all_values={"district": sorted(SIZES)},
                  specs={"district": VarSpec(True, True)}, now_ms=T1)
    r = Run(q, "3h buckets", T0, T1, 3 * 3_600_000, text, run_query(city.source, text))
    want = _want_kwh(city, lambda t: t - t % (3 * 3_600_000))
    assert _by_district(r) == _approx(want)
    assert set(want) == SHOWN | {LATE_DISTRICT}
    assert all(b >= T0 + LATE_FROM_MIN * MIN_MS for b in want[LATE_DISTRICT]), sorted(want[LATE_DISTRICT])


def _want_loads(city: City, bucket: Any) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for d in SIZES:
        peaks: dict[int, float] = {}
        for t, (w, n) in _loads(city, d).items():
            if n >= K:
                peaks[bucket(t)] = max(peaks.get(bucket(t), 0.0), w)
        if peaks:
            out[d] = peaks
    return out


def test_district_load_and_peak(city, runs):
    for r in _runs_of(runs, meter.q_peak_load_per_day()):
        assert _by_district(r) == _approx(_want_loads(city, lambda _t: T0)), r.window
    for r in _runs_of(runs, meter.q_load_per_interval()):
        want = _want_loads(city, lambda t, r=r: t - t % r.interval_ms)
        assert set(want) == SHOWN | {LATE_DISTRICT}
        assert _by_district(r) == _approx(want), r.window


def _nearest_rank(values: list[float], p: float) -> float | None:
    """InfluxDB 1.x ``percentile()``: the value at rank floor(n * p / 100 + 0.5)."""
    vs = sorted(values)
    i = math.floor(len(vs) * p / 100 + 0.5) - 1
    return vs[i] if 0 <= i < len(vs) else None


def _complete_days(city: City) -> dict[str, list[float]]:
    """District → the daily kWh of its households with all 48 half hours, where there are k of them."""
    out = {d: [h.day_kwh() for h in city.of(d) if len(h.half_hours()) == meter.HALF_HOURS_PER_DAY] for d in SIZES}
    return {d: v for d, v in out.items() if len(v) >= K}


def test_distributions_per_district(city, runs):
    days = _complete_days(city)
    assert set(days) == SHOWN
    for r in _runs_of(runs, meter.q_household_median_per_day()):
        assert _by_district(r) == _approx({d: {T0 + SLOT_MS: _nearest_rank(v, 50)} for d, v in days.items()})
    for r in _runs_of(runs, meter.q_household_distribution_range()):
        got = {d: {c: v for tags, _t, c, v in r.rows() if tags["district"] == d} for d in days}
        want = {d: {"households": len(v), **{f"p{p}": _nearest_rank(v, p) for p in meter.PERCENTILES}}
                for d, v in days.items()}
        assert {tags["district"] for tags, *_ in r.rows()} == set(days)
        assert got == _approx(want), r.window


def test_households_reporting_counts_the_shown_districts_only(runs):
    for r in _runs_of(runs, meter.q_households_reporting()):
        assert [v for _tags, _t, _c, v in r.rows()] == [sum(n for n in SIZES.values() if n >= K)], r.window
