"""Grafana's InfluxQL macros and template variables, expanded as Grafana expands them (dashboards/macros.py).

Expected strings follow Grafana's own sources and tests (rangeutil.ts ``roundInterval``/``calculateInterval``,
the InfluxDB datasource's ``interpolateQueryExpr`` tests, the backend's ``Query.Build``)."""

from __future__ import annotations

import pytest

from dashboards.macros import (
    ALL,
    MacroError,
    VarSpec,
    calculate_interval,
    expand,
    format_interval,
    interval_to_ms,
    regex_escape,
    round_interval,
    seconds_to_hms,
)

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
H = 3_600_000
DAY = 24 * H


def _x(q: str, **kw):
    kw.setdefault("time_from_ms", T0)
    kw.setdefault("time_to_ms", T0 + DAY)
    kw.setdefault("interval_ms", 60_000)
    return expand(q, **kw)


# --- $timeFilter, $__interval, $__from/$__to ------------------------------------------------------------------


def test_time_filter_is_absolute_milliseconds():
    q = 'SELECT mean("power_w") FROM "energy" WHERE $timeFilter GROUP BY time($__interval) fill(null)'
    assert _x(q) == (
        'SELECT mean("power_w") FROM "energy" WHERE time >= 1700000000000ms and time <= 1700086400000ms '
        "GROUP BY time(1m) fill(null)"
    )


def test_interval_forms():
    q = "$__interval $interval $__interval_ms ${__from} $__to $__range $__range_s $__range_ms"
    assert _x(q, interval_ms=300_000) == "5m 5m 300000 1700000000000 1700086400000 86400s 86400 86400000"


def test_from_to_date_formats():
    assert _x("${__from:date}|${__from:date:iso}|${__to:date:seconds}") == (
        "2023-11-14T22:13:20.000Z|2023-11-14T22:13:20.000Z|1700086400"
    )


def test_interval_computed_from_range_and_max_data_points():
    # 24 h over 1500 points = 57.6 s → rounded to 1m; over 300 points = 288 s → 5m
    assert _x("$__interval", interval_ms=None) == "1m"
    assert _x("$__interval", interval_ms=None, max_data_points=300) == "5m"
    # a min interval above the computed one wins
    assert _x("$__interval", interval_ms=None, min_interval="10m") == "10m"
    assert _x("$__interval_ms", interval_ms=None, min_interval=">1h") == "3600000"


def test_now_is_left_to_influxdb_unless_pinned():
    q = 'SELECT last("x") FROM "forest" WHERE time > now() - 1h'
    assert _x(q) == q
    assert _x(q, now_ms=T0) == (
        'SELECT last("x") FROM "forest" WHERE (time > 1700000000000ms - 1h AND time <= 1700000000000ms)'
    )
    assert _x("WHERE time >= now() AND x < now()", now_ms=5) == "WHERE (time >= 5ms AND time <= 5ms) AND x < 5ms"


# --- the rounding table -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_ms", "rounded_ms", "text"),
    [
        (5, 1, "1ms"),
        (12, 10, "10ms"),
        (700, 500, "500ms"),
        (1_499, 1_000, "1s"),
        (1_500, 2_000, "2s"),
        (9_000, 10_000, "10s"),
        (14_000, 15_000, "15s"),
        (44_999, 30_000, "30s"),
        (45_000, 60_000, "1m"),
        (100_000, 120_000, "2m"),
        (400_000, 300_000, "5m"),
        (1_000_000, 900_000, "15m"),
        (2_000_000, 1_800_000, "30m"),
        (5_000_000, 3_600_000, "1h"),
        (20_000_000, 21_600_000, "6h"),
        (50_000_000, 43_200_000, "12h"),
        (86_400_000, 86_400_000, "1d"),
        (600_000_000, 86_400_000, "1d"),
        (1_000_000_000, 604_800_000, "7d"),
        (3_000_000_000, 2_592_000_000, "30d"),
        (4_000_000_000, 31_536_000_000, "1y"),
    ],
)
def test_round_interval_table(raw_ms, rounded_ms, text):
    assert round_interval(raw_ms) == rounded_ms
    assert format_interval(rounded_ms) == text


def test_calculate_interval_for_typical_ranges():
    assert calculate_interval(0, 6 * H, 1500).text == "15s"  # 14.4 s
    assert calculate_interval(0, DAY, 1500).text == "1m"  # 57.6 s
    assert calculate_interval(0, 7 * DAY, 1500).text == "5m"  # 403 s
    assert calculate_interval(0, 30 * DAY, 1000) == calculate_interval(0, 30 * DAY, 1000)
    assert calculate_interval(0, 30 * DAY, 1000).text == "30m"  # 2592 s
    assert calculate_interval(0, DAY, 100).text == "15m"  # 864 s
    assert calculate_interval(0, DAY, 1500, "1h").ms == H


def test_interval_strings_and_formatting():
    assert interval_to_ms("10s") == 10_000
    assert interval_to_ms("1.5m") == 60_000  # parseInt: Grafana drops the fraction
    assert interval_to_ms("30") == 30_000  # unit-less is seconds
    assert interval_to_ms(">2h") == 7_200_000
    with pytest.raises(MacroError):
        interval_to_ms("soon")
    # the backend's FormatInterval and the frontend's secondsToHms truncate to the largest unit
    assert format_interval(90_000) == "1m" and seconds_to_hms(90) == "1m"
    assert format_interval(604_800_000) == "7d" and seconds_to_hms(604_800) == "7d"
    assert seconds_to_hms(0.5) == "500ms"


# --- template variables ---------------------------------------------------------------------------------------


def test_multi_value_in_regex_becomes_escaped_alternation():
    q = 'SELECT sum("kg") FROM "waste_collection" WHERE "district" =~ /^$district$/ AND $timeFilter'
    out = _x(q, variables={"district": ["chuo", "ichinomiya"]})
    assert out.startswith('SELECT sum("kg") FROM "waste_collection" WHERE "district" =~ /^(chuo|ichinomiya)$/ AND ')


def test_all_selection_uses_every_value():
    q = 'WHERE "district" =~ /^${district}$/ OR "d2" =~ /^[[district]]$/'
    out = _x(q, variables={"district": [ALL]}, all_values={"district": ["a.b", "c"]})
    assert out == r'WHERE "district" =~ /^(a\.b|c)$/ OR "d2" =~ /^(a\.b|c)$/'
    with pytest.raises(MacroError):
        _x(q, variables={"district": ALL})


def test_multi_value_single_selection_keeps_parentheses():
    assert _x("/^$d$/", variables={"d": ["chuo"]}) == "/^(chuo)$/"


def test_multi_value_is_escaped_even_outside_a_regex():
    # Grafana's test "should escape the value **always** if the variable is a multi-value variable"
    out = _x("select that where path = '$tempVar'", variables={"tempVar": ["/special/path", "/some/other/path"]})
    assert out == r"select that where path = '(\/special\/path|\/some\/other\/path)'"


def test_single_value_escaped_only_inside_a_regex_literal():
    single = {"tempVar": VarSpec(multi=False, include_all=False)}
    v = {"tempVar": "/special/path"}
    assert _x("select that where path =~ /$tempVar/", variables=v, specs=single) == r"select that where path =~ /\/special\/path/"
    assert _x("x !~ /^$tempVar$/", variables=v, specs=single) == r"x !~ /^\/special\/path$/"
    assert _x("select that where path = '$tempVar'", variables=v, specs=single) == "select that where path = '/special/path'"
    # a regex elsewhere in the query does not make the variable a regex
    q = "select value where (\"tag\"::tag =~ /value/) AND other = $tempVar $timeFilter GROUP BY time($__interval)"
    out = _x(q, variables={"tempVar": "testmatch"}, specs=single)
    assert "other = testmatch time >= " in out and out.endswith("GROUP BY time(1m)")


def test_numbers_are_inserted_as_they_are():
    single = {"v": VarSpec(multi=False, include_all=False)}
    assert _x("x = '$v'", variables={"v": "12.2"}, specs=single) == "x = '12.2'"
    assert _x("select value / $v from /^m$/", variables={"v": "1.0"}, specs=single) == "select value / 1.0 from /^m$/"
    assert _x("=~ /^$v$/", variables={"v": "3rd.x"}) == "=~ /^3rd.x$/"  # JS parseFloat("3rd.x") is 3: not escaped


def test_non_multi_all_variable_in_regex():
    spec = {"tempVar": VarSpec(multi=False, include_all=True)}
    out = _x("thing from path =~ /^($tempVar)$/", variables={"tempVar": [ALL]}, specs=spec,
             all_values={"tempVar": ["env", "env2", "env3"]})
    assert out == "thing from path =~ /^((env|env2|env3))$/"
    # outside a regex Grafana's template service joins the array with commas
    assert _x("x = $tempVar", variables={"tempVar": ["a", "b"]}, specs=spec) == "x = a,b"


def test_explicit_formats():
    v = {"d": ["a b", "c'd"]}
    assert _x("${d:csv}|${d:pipe}|${d:raw}", variables=v) == "a b,c'd|a b|c'd|a b,c'd"
    assert _x("${d:singlequote}", variables=v) == r"'a b','c\'d'"
    assert _x("${d:doublequote}", variables=v) == '"a b","c\'d"'
    assert _x("${d:sqlstring}", variables=v) == "'a b','c''d'"
    assert _x("${d:regex}", variables={"d": ["x.y", "z"]}) == r"(x\.y|z)"
    assert _x("${d:glob}", variables=v) == "{a b,c'd}"
    assert _x("${d:json}", variables=v) == '["a b","c\'d"]'
    assert _x("[[d:pipe]]", variables=v) == "a b|c'd"
    with pytest.raises(MacroError):
        _x("${d:nonsense}", variables=v)


def test_unknown_names_and_backend_macros_are_left_alone():
    q = "SELECT $col FROM m WHERE $timeFilter AND x = '$unknown' AND ${other}"
    out = _x(q, variables={"col": ["a"]})
    assert out.startswith("SELECT (a) FROM m WHERE time >= 1700000000000ms and time <= 1700086400000ms")
    assert out.endswith("AND x = '$unknown' AND ${other}")


def test_longest_name_wins_and_underscores_are_part_of_names():
    # Grafana's \$(\w+) is greedy: $district_id is its own variable, not $district + "_id"
    out = _x("$district_id $district", variables={"district": ["a"], "district_id": ["1x"]})
    assert out == "(1x) (a)"


def test_regex_escape_matches_grafana():
    assert regex_escape(r"a.b*c+d?e(f)g|h[i]j{k}l/m\n^o$p") == r"a\.b\*c\+d\?e\(f\)g\|h\[i\]j\{k\}l\/m\\n\^o\$p"
    assert regex_escape("tsuyama-chuo_1") == "tsuyama-chuo_1"
