"""Every query behind every dashboard panel and alert rule, proven against real InfluxDB filled by the simulated city.

Grafana is not installed here, so this is the proof that the catalogue (``dashboards/catalog.py``) works: one
simulated afternoon of Tsuyama goes through the real stack (devices → agents → Mosquitto → ingest → InfluxDB
1.6), then every panel target, variable query and alert-rule query is expanded exactly as Grafana would expand it
(:mod:`dashboards.macros`) and run (:mod:`dashboards.queryrun`). Each must run without an InfluxDB error and
return data, except the panels in ``EXPECTED_EMPTY`` (each with its reason; they must stay empty). Some values
are checked against the simulators' ground truth: kg per district per day, kWh per district per day, and the
landslide-warning and tilt-caution alert states through the storm. The same data renders the PNG previews.

The afternoon (tests/city_afternoon.py, played once per session and shared with the API's tests): 12:00-18:00
JST yesterday at 720×: the garbage truck's two rounds, the storm with the sliding slope at forest-01-02, ten
households' meters in one district (k = 10: shown), gateway health, and the ingest's own health.

Time windows. A panel is run over two ranges: the afternoon itself, and the dashboard's default range
(``time_from``, e.g. ``now-30d``) ending at the afternoon's end, with ``now()`` pinned there; it passes with data
in either (a 7-day moving average needs the longer one). ``gateway_status`` and ``ingest_health`` points carry
real (wall-clock) time, not simulated time, so panels and rules reading only those use the fixture's real time.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dashboards.macros import ALL, VarSpec, calculate_interval, expand, panel_max_data_points
from dashboards.model import AlertRule, Dashboard, Panel, Target
from dashboards.queryrun import InfluxSource, Series, evaluate_rule, run_query, source_of, tag_values

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent
RESOLUTION_KG = 10.0  # the truck indicator's display step
RATE = 720
#: Measurements whose points are stamped with real time even in the simulated city (status messages, the ingest).
REALTIME = {"gateway_status", "ingest_health"}
MIN_MS = 60_000



#: Panels (dashboard uid, English title) that no range of this afternoon gives data to, and why. Each is still run
#: (it must not error) and must come back empty, so an entry that starts returning data is noticed.
EXPECTED_EMPTY: dict[tuple[str, str], str] = {
    ("cityos-energy", "Daily use per household: median per district and day"):
        "needs complete days (48 half-hour values per household); the afternoon has 12",
    ("cityos-energy", "Daily use per household: percentiles per district in the period"):
        "needs complete household-days (48 half-hour values); the afternoon has 12",
}


def catalog() -> tuple[tuple[Dashboard, ...], tuple[AlertRule, ...]]:
    from dashboards import catalog as cat

    # The bus ridership dashboard is left out here: the simulated city has no buses yet, so its panels would all
    # be empty. tests/test_dashboards_transit.py runs every one of its queries against a synthetic bus day.
    return tuple(d for d in cat.DASHBOARDS if d.uid != cat.TRANSIT.uid), tuple(cat.ALERT_RULES)


# ------------------------------------------------------------------------------------------------------------
# the simulated afternoon (module fixture)


@dataclass
class CityData:
    """The afternoon (tests/city_afternoon.py) with the dashboards' view of InfluxDB."""

    source: InfluxSource
    t0: int
    t1: int
    wall_t0: int
    wall_t1: int
    truth_waste_kg: dict[str, float]
    truth_energy_kwh: dict[str, float]
    forest_truth: dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def city(city_afternoon) -> CityData:
    a = city_afternoon
    return CityData(source_of(a.info, a.db), a.t0, a.t1, a.wall_t0, a.wall_t1, a.truth_waste_kg,
                    a.truth_energy_kwh, a.forest_truth)


# ------------------------------------------------------------------------------------------------------------
# helpers: Grafana's view of a panel


_REL = re.compile(r"^now-(\d+)([smhdwMy])$")
_REL_MS = {"s": 1000, "m": MIN_MS, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "M": 2_592_000_000,
           "y": 31_536_000_000}


def _span_ms(d: Dashboard) -> int:
    m = _REL.match(d.time_from)
    assert m, f"{d.uid}: time_from {d.time_from!r}"
    return int(m.group(1)) * _REL_MS[m.group(2)]


def _measurements(query: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in re.finditer(r'\bFROM\s+(?:"([^"]+)"|([A-Za-z_]\w*))', query)}


def _realtime(queries: list[str]) -> bool:
    ms = set().union(*(_measurements(q) for q in queries))
    return bool(ms) and ms <= REALTIME


def _variables(city: CityData, d: Dashboard, t0: int, t1: int) -> tuple[dict[str, Any], dict[str, list[str]],
                                                                         dict[str, VarSpec]]:
    """Grafana opening the dashboard: every variable's values from its query, All selected."""
    all_values: dict[str, list[str]] = {}
    specs: dict[str, VarSpec] = {}
    for v in d.variables:
        q = expand(v.query, time_from_ms=t0, time_to_ms=t1, variables={k: [ALL] for k in all_values},
                   all_values=all_values, specs=specs)
        all_values[v.name] = tag_values(city.source, q)
        specs[v.name] = VarSpec(v.multi, v.include_all)
    return {k: [ALL] for k in all_values}, all_values, specs


def _expand_panel(city: CityData, d: Dashboard, p: Panel, t0: int, t1: int) -> list[tuple[Target, str]]:
    sel, all_values, specs = _variables(city, d, t0, t1)
    interval = calculate_interval(t0, t1, panel_max_data_points(p.width), p.min_interval)
    return [(t, expand(t.query, time_from_ms=t0, time_to_ms=t1, interval_ms=interval.ms, variables=sel,
                       all_values=all_values, specs=specs, now_ms=t1)) for t in p.targets]


def _windows(city: CityData, d: Dashboard, p: Panel) -> list[tuple[str, int, int]]:
    """(name, from, to): the afternoon, and the dashboard's default range ending with it (real time for panels
    on real-time measurements)."""
    if _realtime([t.query for t in p.targets]):
        a, b = city.wall_t0, city.wall_t1
    else:
        a, b = city.t0, city.t1
    return [("afternoon", a, b), (d.time_from, b - _span_ms(d), b)]


def _run_panel(city: CityData, d: Dashboard, p: Panel, t0: int, t1: int) -> dict[str, list[Series]]:
    return {t.ref_id: run_query(city.source, q) for t, q in _expand_panel(city, d, p, t0, t1)}


def _find_targets(pattern: str) -> list[tuple[Dashboard, Panel, Target]]:
    dashboards, _rules = catalog()
    rx = re.compile(pattern, re.S)
    return [(d, p, t) for d in dashboards for p in d.panels for t in p.targets if rx.search(t.query)]


def _sum_by_tag(series: list[Series], tag: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for s in series:
        col = next(i for i, c in enumerate(s.columns) if c != "time")
        for row in s.values:
            if row[col] is not None:
                out[s.tags[tag]] += float(row[col])
    return dict(out)


# ------------------------------------------------------------------------------------------------------------
# every query runs


def test_every_variable_has_values(city):
    dashboards, _rules = catalog()
    for d in dashboards:
        _sel, all_values, _specs = _variables(city, d, city.t0, city.t1)
        for name, vals in all_values.items():
            assert vals, f"{d.uid}: variable ${name} has no values"


def test_every_panel_query_runs_and_returns_its_data(city):
    dashboards, _rules = catalog()
    problems: list[str] = []
    report: list[str] = []
    keys = set()
    for d in dashboards:
        for p in d.panels:
            key = (d.uid, p.title("en"))
            keys.add(key)
            counts: list[str] = []
            with_data = []
            for name, a, b in _windows(city, d, p):
                n_series = n_values = 0
                for t, q in _expand_panel(city, d, p, a, b):
                    left = re.search(r"\$[A-Za-z_{]|\[\[", q)
                    assert not left, f"{key}: macro left unexpanded in {q}"
                    try:
                        series = run_query(city.source, q)
                    except Exception as e:  # collect every failing query, report them all at once
                        problems.append(f"{key} {t.ref_id} over {name}: {e}")
                        continue
                    n_series += len(series)
                    n_values += sum(s.non_null() for s in series)
                counts.append(f"{name}: {n_series} series {n_values} values")
                if n_values:
                    with_data.append(name)
            report.append(f"{d.uid:16s} {p.kind:10s} {p.title('en')[:52]:52s} {' | '.join(counts)}")
            if key in EXPECTED_EMPTY:
                if with_data:
                    problems.append(f"{key}: expected empty ({EXPECTED_EMPTY[key]}), has data over {with_data}")
            elif not with_data:
                problems.append(f"{key}: no data over the afternoon nor over {d.time_from}")
    print("\n" + "\n".join(report))
    assert set(EXPECTED_EMPTY) <= keys, f"EXPECTED_EMPTY names unknown panels: {sorted(set(EXPECTED_EMPTY) - keys)}"
    assert not problems, "\n".join(problems)


def test_every_alert_rule_query_runs(city):
    _dashboards, rules = catalog()
    assert rules, "the catalogue has no alert rules"
    problems = []
    for r in rules:
        queries = [r.query, *(q for _ref, q in r.extra_queries)]
        # rules on real-time measurements: in the middle and at the end of the run; the others at 17:30 and 18:00
        if _realtime(queries):
            instants = ((city.wall_t0 + city.wall_t1) // 2, city.wall_t1)
        else:
            instants = (city.t1 - 30 * MIN_MS, city.t1)
        for when in instants:
            try:
                ev = evaluate_rule(city.source, r, when)
            except Exception as e:  # collect them all
                problems.append(f"{r.uid} at {when}: {e}")
                continue
            print(f"{r.uid:28s} at {when}: {ev.state:9s} {ev.firing_labels()} {dict(ev.reduced)}")
            if not _realtime(queries):
                continue
            # the fleet is healthy throughout: status messages arrive, the ingest is not stalled, no backlog
            assert ev.state == "Normal", (r.uid, ev.reduced, ev.queries)
            if r.no_data_state != "OK" or "status" in r.query:
                assert not ev.no_data, (r.uid, "no data", ev.queries)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------------------
# values against the ground truth


def test_kg_per_district_matches_the_truck_truth(city):
    """Every panel that sums kg per district (per day, per week, over the period) adds up to what the
    indicator displayed at each pickup, per district, within one display step."""
    found = [f for f in _find_targets(r'^SELECT sum\("kg"\)(?: AS "\w+")? FROM "waste_collection"')
             if '"district"' in f[2].query.rsplit("GROUP BY", 1)[-1]]
    assert len(found) >= 2, "expected the kg-per-district-per-day panels (overview and waste)"
    assert any("time(1d)" in t.query for _d, _p, t in found)
    for d, p, t in found:
        got = _sum_by_tag(_run_panel(city, d, p, city.t0, city.t1)[t.ref_id], "district")
        got = {k: v for k, v in got.items() if v}  # fill(0) buckets
        assert set(got) == set(city.truth_waste_kg), (d.uid, p.title("en"), got, city.truth_waste_kg)
        for district, kg in city.truth_waste_kg.items():
            assert abs(got[district] - kg) <= RESOLUTION_KG, (d.uid, p.title("en"), district, got[district], kg)


def test_kwh_per_district_matches_the_meter_truth(city):
    """The kWh per district (per day, per half hour) add up to the meters' own fixed-time register values: the
    afternoon's ten households live in one district, k of them, so it is shown (tests/test_dashboards_privacy.py
    has the districts below k)."""
    from cityos.privacy import MIN_HOUSEHOLDS

    k_rule = f'"households" >= {MIN_HOUSEHOLDS}'
    found = _find_targets(r'non_negative_difference\("energy_fixed_kwh"\)')
    found = [f for f in found if f[2].query.startswith('SELECT "kwh" FROM') and k_rule in f[2].query]
    assert any("time(1d" in t.query for _d, _p, t in found), "expected a kWh-per-district-per-day panel"
    for d, p, t in found:
        # From just after power-on: whether a gateway stored the power-on instant's value is a race (see
        # cityverify.verify_energy); the truth counts the slots after it.
        got = _sum_by_tag(_run_panel(city, d, p, city.t0 + 1, city.t1)[t.ref_id], "district")
        assert set(got) == set(city.truth_energy_kwh), (d.uid, p.title("en"), got, city.truth_energy_kwh)
        for district, kwh in city.truth_energy_kwh.items():
            assert abs(got[district] - kwh) < 1e-6, (d.uid, p.title("en"), district, got[district], kwh)


def _rule(uid: str) -> AlertRule:
    _dashboards, rules = catalog()
    found = [r for r in rules if r.uid == uid]
    assert found, f"no alert rule {uid}"
    return found[0]


def _truth_firing(city: CityData, when: int, window_ms: int, condition: Any) -> set[str]:
    """Stations with a sample in (when - window, when] that meets ``condition`` (the simulators' own values)."""
    return {dev for dev, samples in city.forest_truth.items()
            if any(when - window_ms < e["ts"] <= when and condition(e["values"]) for e in samples)}


def _rate_at_least(v: dict[str, Any], limit: float) -> bool:
    return any(abs(v.get(f) or 0.0) >= limit for f in ("tilt_rate_x_deg_h", "tilt_rate_y_deg_h"))


def test_landslide_and_tilt_alerts_follow_the_storm(city):
    """Every 20 minutes of the afternoon, the landslide-warning and tilt-caution rules fire for exactly the
    stations whose true readings of the rule's window met the criterion (the simulators' values, not InfluxDB's)."""
    from dashboards import catalog as cat

    def landslide(v: dict[str, Any]) -> bool:
        wet = (v.get("soil_moisture_pct") or 0) >= cat.SOIL_MOISTURE_WARNING_PCT and (
            v.get("rain_intensity_mm_h") or 0) >= cat.RAIN_INTENSE_MM_H
        return wet or _rate_at_least(v, cat.TILT_RATE_WARNING_DEG_H)

    def caution(v: dict[str, Any]) -> bool:
        return _rate_at_least(v, cat.TILT_RATE_CAUTION_DEG_H)

    window = cat.FOREST_ALERT_WINDOW_MIN * MIN_MS
    seen: dict[str, set[str]] = defaultdict(set)
    timeline = []
    for uid, cond in (("cityos-landslide-warning", landslide), ("cityos-slope-tilt-caution", caution)):
        rule = _rule(uid)
        for when in range(city.t0 + 20 * MIN_MS, city.t1 + 1, 20 * MIN_MS):
            ev = evaluate_rule(city.source, rule, when)
            got = {lab["device"] for lab in ev.firing_labels()}
            want = _truth_firing(city, when, window, cond)
            timeline.append(f"{uid} +{(when - city.t0) // MIN_MS:3d} min: {sorted(got)}")
            assert got == want, (uid, when, got, want, ev.reduced)
            seen[uid] |= got
    print("\n".join(timeline))
    # the storm reaches the warning: both stations by wet soil and rain, the sliding slope by its tilt
    assert seen["cityos-landslide-warning"] == {"forest-01-01", "forest-01-02"}
    assert "forest-01-02" in seen["cityos-slope-tilt-caution"]
    late = evaluate_rule(city.source, _rule("cityos-landslide-warning"), city.t1)
    early = evaluate_rule(city.source, _rule("cityos-landslide-warning"), city.t0 + 60 * MIN_MS)
    assert late.state == "Alerting" and early.state == "Normal"


# ------------------------------------------------------------------------------------------------------------
# the previews


def test_render_writes_one_nontrivial_png_per_dashboard(city, tmp_path):
    from PIL import Image, ImageStat  # matplotlib depends on pillow

    from dashboards.preview import render

    dashboards, _rules = catalog()
    res = render(city.source, tmp_path / "png", dashboards, lang="ja", time_from_ms=city.t0, time_to_ms=city.t1,
                 now_ms=city.t1, geojson=REPO / "scenarios" / "tsuyama-districts.geojson")
    assert not res.errors, [(p.dashboard, p.title, p.error) for p in res.errors]
    assert sorted(f.name for f in res.files) == sorted(f"{d.uid}.png" for d in dashboards)
    for f in res.files:
        assert f.stat().st_size > 20_000, f
        img = Image.open(f).convert("L")
        assert img.width >= 1800 and img.height >= 400, (f, img.size)
        assert ImageStat.Stat(img).var[0] > 100, f  # not blank
    drawn = {(p.dashboard, p.index) for p in res.panels}
    assert drawn == {(d.uid, i) for d in dashboards for i, _p in enumerate(d.panels)}
    assert sum(p.series for p in res.panels) > 50


def test_rule_expressions_without_influxdb():
    """The alert evaluator's pure parts: Grafana's reducers (nulls dropped) and math expressions."""
    from dashboards.queryrun import _math, _reduce

    assert _reduce([1.0, 5.0, 2.0], "last") == 2.0 and _reduce([1.0, 5.0], "max") == 5.0
    assert _reduce([], "count") == 0.0 and _reduce([], "last") is None
    assert _math("$A > 40 && $B > 20", {"A": 41.0, "B": 21.0})
    assert not _math("$A > 40 && ${B} > 20", {"A": 41.0, "B": 19.0})
    assert _math("($A > 30 || $B < -0.5) && !($A > 100)", {"A": 10.0, "B": -0.6})
    assert not _math("$A > 0", {"A": None})  # no value: like Grafana's NaN, never true
    with pytest.raises(ValueError):
        _math("$A > 0; import os", {"A": 1.0})
