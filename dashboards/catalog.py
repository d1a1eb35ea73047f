"""The dashboards and alert rules of the environment division (環境部局), as data (types: ``dashboards/model.py``).

Read by ``dashboards/build.py`` (Grafana provisioning), ``dashboards/preview.py`` (PNG previews) and the tests that
run every query against InfluxDB 1.6. Queries are InfluxQL exactly as Grafana sends them, macros left in.

Conventions (``docs/dashboards.md`` explains them):

* every live panel query has ``$timeFilter``; where it aggregates over time it groups by ``time($__interval)``,
  or by whole days/weeks of Japan time (``time(1d)``/``time(1w, 4d)`` with ``tz('Asia/Tokyo')``: weeks start on
  Monday);
* template variables are matched as Grafana does for InfluxDB: ``"district" =~ /^$district$/``;
* the thresholds are the named constants below, used by the panels and the alert rules alike;
* alert rules read only live readings (:func:`live_only`): a reading delivered late after an outage
  (``backfill = true``) is history, not an emergency;
* no query on the ``energy`` measurement shows a household: ``"device"`` is grouped by only inside a subquery.
"""

from __future__ import annotations

import csv
from pathlib import Path

from dashboards.model import AlertRule, Dashboard, Panel, Row, Target, Text, Threshold, Variable

# --------------------------------------------------------------------------------------------------------------
# Thresholds: the one place for the numbers (panels draw them, alert rules evaluate them)

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
#: A gateway that sent no status message for this long is offline (status every 60 s by default).
GATEWAY_OFFLINE_MIN = 15
#: How far back the offline rule remembers gateways (one silent for longer drops out of the rule).
GATEWAY_KNOWN_DAYS = 7
#: A gateway's oldest unsent reading older than this: the backlog is not draining.
BACKLOG_AGE_LIMIT_S = 3600.0
#: Window of the forest alert queries: longer than the slowest station sampling (600 s) plus delivery.
FOREST_ALERT_WINDOW_MIN = 20
#: Household distributions are shown only for days with at least this many households (no small groups).
MIN_HOUSEHOLDS = 5
#: Half-hour values in a complete day: a household's day counts in the distributions only when complete.
HALF_HOURS_PER_DAY = 48

#: Bus occupancy, percent of the configured capacity (standing places included): the colours of the live map.
#: The same bounds as the GTFS-Realtime occupancy status (cityos_api/gtfs_rt.py OCCUPANCY_STEPS): below 40 %
#: many seats, below 70 % few seats, below 90 % standing room, above that crowded.
BUS_FEW_SEATS_PCT = 40.0
BUS_STANDING_PCT = 70.0
BUS_CROWDED_PCT = 90.0
#: App riders' origin-destination pairs are shown only with at least this many riders in the range (as the
#: household distributions: no small group, so a single journey cannot be picked out).
MIN_OD_RIDERS = 3
#: The GTFS feed the stop numbers are named from (at build time: names are not in InfluxDB). The committed feed
#: is the simulation's; a deployment points this at the city's real GTFS-JP feed and rebuilds.
GTFS_FEED = Path(__file__).resolve().parent.parent / "scenarios" / "gtfs-tsuyama-loop"

TILT_RATE_FIELDS = ("tilt_rate_x_deg_h", "tilt_rate_y_deg_h")

# --------------------------------------------------------------------------------------------------------------
# Query fragments

TZ = "tz('Asia/Tokyo')"
DISTRICT = '"district" =~ /^$district$/'
STATION = '"device" =~ /^$station$/'
GATEWAY = '"gateway" =~ /^$gateway$/'
#: Days of Japan time for the half-hourly meter values: the value stamped hh:mm is the energy of the half hour
#: *ending* then, so the day D is the values stamped D 00:30 … D+1 00:00, i.e. the buckets start at 00:30.
METER_DAY = "time(1d, 30m)"
#: Weeks of Japan time starting on Monday (InfluxDB's weeks start on Thursday 1970-01-01: offset 4 days).
WEEK = "time(1w, 4d)"


def _n(v: float) -> str:
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


def tilt_condition(limit_deg_h: float) -> str:
    """A reading whose tilting rate on either axis, either direction, is at least ``limit_deg_h``."""
    return " OR ".join(f'"{f}" >= {_n(limit_deg_h)} OR "{f}" <= -{_n(limit_deg_h)}' for f in TILT_RATE_FIELDS)


def landslide_condition() -> str:
    """The landslide-warning criterion, per reading (so "together" means in the same reading of one station):
    wet soil AND intense rain, OR a slope tilting at the warning rate."""
    return (
        f'("soil_moisture_pct" >= {_n(SOIL_MOISTURE_WARNING_PCT)} AND '
        f'"rain_intensity_mm_h" >= {_n(RAIN_INTENSE_MM_H)}) OR {tilt_condition(TILT_RATE_WARNING_DEG_H)}'
    )


def where(*conditions: str) -> str:
    """``WHERE a AND b ...``, each condition with an OR in it parenthesised."""
    return "WHERE " + " AND ".join(f"({c})" if " OR " in c else c for c in conditions)


# --------------------------------------------------------------------------------------------------------------
# Shared pieces

T = Text

V_DISTRICT_WASTE = Variable("district", T("地区", "District"),
                            'SHOW TAG VALUES FROM "waste_collection" WITH KEY = "district"')
V_DISTRICT_ENERGY = Variable("district", T("地区", "District"), 'SHOW TAG VALUES FROM "energy" WITH KEY = "district"')
V_DISTRICT_ALL = Variable("district", T("地区", "District"),
                          'SHOW TAG VALUES FROM "waste_collection", "energy" WITH KEY = "district"')
V_STATION = Variable("station", T("観測点", "Station"), 'SHOW TAG VALUES FROM "forest" WITH KEY = "device"')
V_GATEWAY = Variable("gateway", T("ゲートウェイ", "Gateway"),
                     'SHOW TAG VALUES FROM "gateway_health", "gateway_status" WITH KEY = "gateway"')

RAIN_UNIT = "suffix:mm/h"
TILT_RATE_UNIT = "suffix:°/h"

RAIN_STEPS = (
    Threshold(0, "green"),
    Threshold(RAIN_INTENSE_MM_H, "yellow", T("激しい雨", "intense rain (JMA)")),
    Threshold(RAIN_VERY_INTENSE_MM_H, "orange", T("非常に激しい雨", "very intense rain (JMA)")),
    Threshold(RAIN_EXTREME_MM_H, "red", T("猛烈な雨", "extreme rain (JMA)")),
)
CUMULATIVE_STEPS = (
    Threshold(0, "green"),
    Threshold(RAIN_CUMULATIVE_CAUTION_MM, "orange", T("連続雨量 注意", "continuous rain: caution")),
    Threshold(RAIN_CUMULATIVE_WARNING_MM, "red", T("連続雨量 警戒", "continuous rain: warning")),
)
SOIL_STEPS = (
    Threshold(0, "green"),
    Threshold(SOIL_MOISTURE_WARNING_PCT, "orange", T("警戒の目安（時間雨量と併せて判定）",
                                                     "warning level (together with hourly rain)")),
)
TILT_RATE_STEPS = (
    Threshold(0, "green"),
    Threshold(TILT_RATE_CAUTION_DEG_H, "yellow", T("注意", "caution")),
    Threshold(TILT_RATE_WARNING_DEG_H, "red", T("警戒", "warning")),
)


# --------------------------------------------------------------------------------------------------------------
# Queries used on more than one dashboard


def q_waste_per_day() -> str:
    return (f'SELECT sum("kg") FROM "waste_collection" {where(DISTRICT, "$timeFilter")} '
            f'GROUP BY time(1d), "district" fill(0) {TZ}')


def q_waste_per_week() -> str:
    return (f'SELECT sum("kg") FROM "waste_collection" {where(DISTRICT, "$timeFilter")} '
            f'GROUP BY {WEEK}, "district" fill(0) {TZ}')


def q_waste_trend() -> str:
    """7-day moving average of the daily kg per district (days without collection count as 0)."""
    return (f'SELECT moving_average(sum("kg"), 7) FROM "waste_collection" {where(DISTRICT, "$timeFilter")} '
            f'GROUP BY time(1d), "district" fill(0) {TZ}')


def q_waste_total_per_district() -> str:
    return f'SELECT sum("kg") AS "kg" FROM "waste_collection" {where(DISTRICT, "$timeFilter")} GROUP BY "district"'


DEVICE = '"device"'


def _half_hour_kwh(group_by: str = '"device", "district"') -> str:
    """Subquery: each household's energy per half hour, kWh, stamped at the end of the half hour (the difference
    of consecutive fixed-time cumulative values; a meter replaced or reset gives no negative value)."""
    return (f'(SELECT non_negative_difference("energy_fixed_kwh") AS "kwh" FROM "energy" '
            f'{where(DISTRICT, "$timeFilter")} GROUP BY {group_by})')


def q_kwh_per_day() -> str:
    return (f'SELECT sum("kwh") FROM {_half_hour_kwh()} WHERE $timeFilter '
            f'GROUP BY {METER_DAY}, "district" fill(none) {TZ}')


def _district_load_5m() -> str:
    """Subquery: each district's load, W: the sum over its households of their mean power in 5-minute buckets
    (meters are polled about once a minute, at different seconds: a sum at one instant would miss most)."""
    per_household = (f'(SELECT mean("power_w") AS "w" FROM "energy" {where(DISTRICT, "$timeFilter")} '
                     f'GROUP BY time(5m), "device", "district")')
    return f'(SELECT sum("w") AS "load" FROM {per_household} WHERE $timeFilter GROUP BY time(5m), "district")'


def q_peak_load_per_day() -> str:
    return (f'SELECT max("load") FROM {_district_load_5m()} WHERE $timeFilter '
            f'GROUP BY time(1d), "district" fill(none) {TZ}')


def _household_days() -> str:
    """Subquery: kWh of each household for each complete day (48 half hours), no identity leaves it."""
    per_day = (f'(SELECT sum("kwh") AS "kwh", count("kwh") AS "half_hours" FROM {_half_hour_kwh(DEVICE)} '
               f'WHERE $timeFilter GROUP BY {METER_DAY}, "device" {TZ})')
    return f'(SELECT "kwh" FROM {per_day} WHERE "half_hours" = {HALF_HOURS_PER_DAY})'


PERCENTILES = (10, 25, 50, 75, 90)


def _percentiles() -> str:
    return ", ".join(f'percentile("kwh", {p}) AS "p{p}"' for p in PERCENTILES)


def _percentile_columns() -> str:
    return ", ".join(f'"p{p}"' for p in PERCENTILES)


def q_household_distribution_per_day() -> str:
    inner = (f'(SELECT {_percentiles()}, count("kwh") AS "households" FROM {_household_days()} '
             f'WHERE $timeFilter GROUP BY {METER_DAY} {TZ})')
    return f'SELECT {_percentile_columns()} FROM {inner} WHERE "households" >= {MIN_HOUSEHOLDS}'


def q_household_distribution_range() -> str:
    inner = (f'(SELECT {_percentiles()}, count("kwh") AS "household_days" FROM {_household_days()} '
             f'WHERE $timeFilter)')
    return f'SELECT {_percentile_columns()} FROM {inner} WHERE "household_days" >= {MIN_HOUSEHOLDS}'


def q_stations_latest() -> str:
    fields = ("lat", "lon", "soil_moisture_pct", "soil_moisture_deep_pct", "rain_intensity_mm_h", "rain_cumulative_mm",
              *TILT_RATE_FIELDS)
    sel = ", ".join(f'last("{f}") AS "{f}"' for f in fields)
    return f'SELECT {sel} FROM "forest" WHERE $timeFilter GROUP BY "device"'


def q_stations_in_warning(extra: str = "") -> str:
    """Stations with readings that met the landslide-warning criterion in the time range (history: backfilled
    readings count here), with their position for the map."""
    conds = [c for c in (extra, "$timeFilter", landslide_condition()) if c]
    return (f'SELECT last("lat") AS "lat", last("lon") AS "lon", count("status") AS "readings" FROM "forest" '
            f'{where(*conds)} GROUP BY "device"')


# --------------------------------------------------------------------------------------------------------------
# 環境概況 / Environment overview

OVERVIEW = Dashboard(
    uid="cityos-overview",
    title=T("環境概況", "Environment overview"),
    description=T(
        "ごみ収集量、電力使用量、森林観測局の最新値を地区ごとに一覧します。詳細は各ダッシュボードへ。",
        "Waste collected, electricity used and the forest stations' latest values, per district. "
        "Details on the other dashboards.",
    ),
    variables=(V_DISTRICT_ALL,),
    time_from="now-30d",
    refresh="5m",
    rows=(
        Row(T("ごみ収集量", "Waste collected"), (
            Panel(T("日別のごみ収集量（地区別）", "Waste collected per day, by district"), "timeseries",
                  (Target("A", q_waste_per_day(), alias="$tag_district"),),
                  unit="masskg", draw="bars", stacked=True, decimals=0,
                  description=T("収集車の計量器で量った収集量の日合計（日本時間の暦日）。「unknown」は位置が取れなかった収集。",
                                "Daily totals (calendar days, Japan time) weighed by the trucks' load cells. "
                                "'unknown': pickups without a position fix.")),
            Panel(T("ごみ収集量の傾向（7日移動平均）", "Waste trend (7-day moving average)"), "timeseries",
                  (Target("A", q_waste_trend(), alias="$tag_district"),),
                  unit="masskg", decimals=0,
                  description=T("日別収集量の7日移動平均。収集のない日は0として平均します。",
                                "7-day moving average of the daily totals; days without collection count as 0.")),
            Panel(T("週別のごみ収集量（地区別）", "Waste collected per week, by district"), "timeseries",
                  (Target("A", q_waste_per_week(), alias="$tag_district"),),
                  unit="masskg", draw="bars", stacked=True, decimals=0,
                  description=T("月曜始まりの週ごとの合計（日本時間）。",
                                "Weekly totals, weeks from Monday (Japan time).")),
            Panel(T("地区別のごみ収集量（期間合計）", "Waste collected in the period, by district"), "barchart",
                  (Target("A", q_waste_total_per_district(), result_format="table"),),
                  unit="masskg", x_field="district", decimals=0),
        )),
        Row(T("電力使用量", "Electricity use"), (
            Panel(T("日別の電力使用量（地区別）", "Electricity used per day, by district"), "timeseries",
                  (Target("A", q_kwh_per_day(), alias="$tag_district"),),
                  unit="kwatth", draw="bars", stacked=True, decimals=1,
                  description=T("スマートメーターの30分ごとの積算値から求めた、B ルートを提供している世帯の合計。",
                                "From the smart meters' half-hourly cumulative readings: the households that "
                                "opened their B-route to the city.")),
            Panel(T("日別の最大需要電力（地区別）", "Peak demand per day, by district"), "timeseries",
                  (Target("A", q_peak_load_per_day(), alias="$tag_district"),),
                  unit="watt", draw="bars", decimals=1,
                  description=T("地区内世帯の瞬時電力（5分平均）の合計の日最大値。",
                                "Daily maximum of the district's load: its households' power, 5-minute means, "
                                "summed.")),
        )),
        Row(T("森林観測局", "Forest stations"), (
            Panel(T("森林観測局の最新値", "Forest stations, latest values"), "geomap",
                  (Target("A", q_stations_latest(), result_format="table",
                          legend=T("観測点（色: 時間雨量）", "Stations (colour: hourly rain)")),
                   Target("B", q_stations_in_warning(), result_format="table",
                          legend=T("土砂災害の警戒基準に達した観測点", "Stations that met the landslide criterion"))),
                  unit=RAIN_UNIT, thresholds=RAIN_STEPS, color_field="rain_intensity_mm_h", width=16, height=12,
                  field_units=(("soil_moisture_pct", "percent"), ("soil_moisture_deep_pct", "percent"),
                               ("rain_cumulative_mm", "lengthmm"), ("tilt_rate_x_deg_h", TILT_RATE_UNIT),
                               ("tilt_rate_y_deg_h", TILT_RATE_UNIT), ("lat", "none"), ("lon", "none"),
                               ("readings", "short")),
                  description=T(
                      "各観測点の期間内の最新値。赤い印は、期間内に土砂災害の警戒基準（土壌水分と時間雨量がともに"
                      "基準以上、または傾斜速度が基準以上）に達した観測点です。",
                      "Each station's latest values in the period. Red marks: stations that met the landslide "
                      "criterion in the period (soil moisture and hourly rain both at their levels, or the tilting "
                      "rate at its level).")),
            Panel(T("警戒基準に達した観測点", "Stations that met the landslide criterion"), "table",
                  (Target("A", q_stations_in_warning(), result_format="table"),),
                  unit="short", width=8, height=12, hide_columns=("Time",),
                  field_units=(("lat", "none"), ("lon", "none")),
                  description=T("期間内に基準に達した観測回数（観測点ごと）。",
                                "Readings that met the criterion, per station.")),
        )),
    ),
)


# --------------------------------------------------------------------------------------------------------------
# 森林・土砂災害 / Forest and landslides


def _forest(field: str, agg: str = "max") -> str:
    return (f'SELECT {agg}("{field}") FROM "forest" {where(STATION, "$timeFilter")} '
            f'GROUP BY time($__interval), "device" fill(none)')


def _tilt_rate_abs(field: str) -> str:
    inner = f'(SELECT abs("{field}") AS "rate" FROM "forest" {where(STATION, "$timeFilter")} GROUP BY "device")'
    return f'SELECT max("rate") FROM {inner} WHERE $timeFilter GROUP BY time($__interval), "device" fill(none)'


FOREST = Dashboard(
    uid="cityos-forest",
    title=T("森林・土砂災害", "Forest and landslides"),
    description=T(
        "山林の観測局（雨量・土壌水分・地下水位・傾斜）の値と、土砂災害の警戒基準の線。"
        "気象庁・県の土砂災害警戒情報に代わるものではありません。",
        "The forest stations' rain, soil moisture, groundwater and tilt, with the landslide criteria drawn. "
        "Not a substitute for the prefecture's and JMA's sediment-disaster alerts.",
    ),
    variables=(V_STATION,),
    time_from="now-24h",
    refresh="1m",
    rows=(
        Row(T("雨量", "Rain"), (
            Panel(T("時間雨量（60分間積算雨量）", "Hourly rain (60-minute rainfall)"), "timeseries",
                  (Target("A", _forest("rain_intensity_mm_h"), alias="$tag_device"),),
                  unit=RAIN_UNIT, thresholds=RAIN_STEPS, decimals=1,
                  description=T("直近60分間の雨量。基準線は気象庁の雨の強さの用語。",
                                "Rain of the last 60 minutes; the lines are JMA's rain-intensity terms.")),
            Panel(T("連続雨量", "Continuous rainfall"), "timeseries",
                  (Target("A", _forest("rain_cumulative_mm"), alias="$tag_device"),),
                  unit="lengthmm", thresholds=CUMULATIVE_STEPS, decimals=1,
                  description=T("降り始めからの雨量（24時間雨が降らないと0に戻ります）。",
                                "Rain since the rain began (back to 0 after 24 h without rain).")),
        )),
        Row(T("土壌水分・地下水位", "Soil moisture and groundwater"), (
            Panel(T("土壌水分（深さ10 cm・30 cm）", "Soil moisture (10 cm and 30 cm deep)"), "timeseries",
                  (Target("A", _forest("soil_moisture_pct"), alias="$tag_device 10cm"),
                   Target("B", _forest("soil_moisture_deep_pct"), alias="$tag_device 30cm")),
                  unit="percent", thresholds=SOIL_STEPS, decimals=1,
                  description=T("体積含水率。30 cm の上昇は浸潤前線が深部に達したことを示します。",
                                "Volumetric water content; a rise at 30 cm means the wetting front went deep.")),
            Panel(T("地下水位", "Groundwater level"), "timeseries",
                  (Target("A", _forest("water_level_m", "mean"), alias="$tag_device"),),
                  unit="lengthm", decimals=2,
                  description=T("水位計のある観測点のみ。", "Stations with a water-level sensor only.")),
        )),
        Row(T("斜面の傾き", "Slope tilt"), (
            Panel(T("傾斜角", "Tilt"), "timeseries",
                  (Target("A", _forest("tilt_x_deg", "mean"), alias="$tag_device X"),
                   Target("B", _forest("tilt_y_deg", "mean"), alias="$tag_device Y")),
                  unit="degree", decimals=2),
            Panel(T("傾斜速度（1時間あたり、絶対値）", "Tilting rate (per hour, absolute)"), "timeseries",
                  (Target("A", _tilt_rate_abs("tilt_rate_x_deg_h"), alias="$tag_device X"),
                   Target("B", _tilt_rate_abs("tilt_rate_y_deg_h"), alias="$tag_device Y")),
                  unit=TILT_RATE_UNIT, thresholds=TILT_RATE_STEPS, decimals=2,
                  description=T("直近約1時間の傾斜の変化。観測開始から50分間は値がありません。",
                                "Tilt change over about the last hour; none in a station's first 50 minutes.")),
        )),
        Row(T("警戒判定・観測局の状態", "Criterion and station state"), (
            Panel(T("土砂災害の警戒基準に達した観測", "Readings that met the landslide criterion"), "timeseries",
                  (Target("A", f'SELECT count("status") FROM "forest" '
                               f'{where(STATION, "$timeFilter", landslide_condition())} '
                               f'GROUP BY time($__interval), "device" fill(0)', alias="$tag_device"),),
                  unit="short", draw="bars", decimals=0,
                  description=T("土壌水分と時間雨量がともに基準以上、または傾斜速度が警戒基準以上だった観測の数。"
                                "遅れて届いた観測（バックフィル）も含みます。アラートは遅延分を除いて判定します。",
                                "Readings with soil moisture and hourly rain both at their levels, or the tilting "
                                "rate at its warning level. Late (backfilled) readings included; the alert rule "
                                "leaves them out.")),
            Panel(T("観測局の電池電圧", "Station battery voltage"), "timeseries",
                  (Target("A", _forest("battery_v", "mean"), alias="$tag_device"),),
                  unit="volt", decimals=2),
        )),
    ),
)


# --------------------------------------------------------------------------------------------------------------
# ごみ収集 / Waste collection


def _trip(field: str) -> str:
    return (f'SELECT sum("{field}") FROM "waste_trip" WHERE $timeFilter '
            f'GROUP BY time(1d), "device" fill(0) {TZ}')


WASTE = Dashboard(
    uid="cityos-waste",
    title=T("ごみ収集", "Waste collection"),
    description=T(
        "収集車の計量器とGPSによる、地区別・日別のごみ収集量と収集便ごとの記録。",
        "Waste per district and day from the trucks' load cells and GPS, and the record of each trip.",
    ),
    variables=(V_DISTRICT_WASTE,),
    time_from="now-30d",
    refresh="5m",
    rows=(
        Row(T("地区別の収集量", "Collected per district"), (
            Panel(T("日別のごみ収集量（地区別）", "Waste collected per day, by district"), "timeseries",
                  (Target("A", q_waste_per_day(), alias="$tag_district"),),
                  unit="masskg", draw="bars", stacked=True, decimals=0),
            Panel(T("週別のごみ収集量（地区別）", "Waste collected per week, by district"), "timeseries",
                  (Target("A", q_waste_per_week(), alias="$tag_district"),),
                  unit="masskg", draw="bars", stacked=True, decimals=0),
            Panel(T("ごみ収集量の傾向（7日移動平均）", "Waste trend (7-day moving average)"), "timeseries",
                  (Target("A", q_waste_trend(), alias="$tag_district"),),
                  unit="masskg", decimals=0),
            Panel(T("地区別のごみ収集量（期間合計）", "Waste collected in the period, by district"), "barchart",
                  (Target("A", q_waste_total_per_district(), result_format="table"),),
                  unit="masskg", x_field="district", decimals=0),
            Panel(T("日別の収集回数（地区別）", "Pickups per day, by district"), "timeseries",
                  (Target("A", f'SELECT count("kg") FROM "waste_collection" {where(DISTRICT, "$timeFilter")} '
                               f'GROUP BY time(1d), "district" fill(0) {TZ}', alias="$tag_district"),),
                  unit="short", draw="bars", stacked=True, decimals=0, width=24, height=6,
                  description=T("計量器が積み込みとして記録した回数。", "Loads the weighing recorded as a pickup.")),
        )),
        Row(T("収集車・収集便", "Trucks and trips"), (
            Panel(T("収集車別の収集量（日別）", "Collected per truck per day"), "timeseries",
                  (Target("A", _trip("kg_collected"), alias="$tag_device"),),
                  unit="masskg", draw="bars", decimals=0),
            Panel(T("収集量と搬入量（日別、全車）", "Collected and unloaded per day (all trucks)"), "timeseries",
                  (Target("A", f'SELECT sum("kg_collected") FROM "waste_trip" WHERE $timeFilter '
                               f'GROUP BY time(1d) fill(0) {TZ}', legend=T("収集量", "collected")),
                   Target("B", f'SELECT sum("kg_unloaded") FROM "waste_trip" WHERE $timeFilter '
                               f'GROUP BY time(1d) fill(0) {TZ}', legend=T("搬入量", "unloaded"))),
                  unit="masskg", draw="bars", decimals=0,
                  description=T("積み込みの合計と、処分場で降ろした量の比較（計量器の確認）。",
                                "Sum of the pickups against what was unloaded at the disposal site (a check of "
                                "the weighing).")),
            Panel(T("収集便の記録", "Trips"), "table",
                  (Target("A", 'SELECT "trip_no", "pickups", "kg_collected", "kg_unloaded", '
                               '"kg_collected" - "kg_unloaded" AS "kg_difference", "distance_km", "duration_s" '
                               'FROM "waste_trip" WHERE $timeFilter GROUP BY "device" ORDER BY time DESC',
                          result_format="table"),),
                  unit="masskg", width=24, height=10, decimals=0,
                  field_units=(("trip_no", "none"), ("pickups", "short"), ("distance_km", "lengthkm"),
                               ("duration_s", "s")),
                  description=T("処分場で荷を降ろすたびに1便。時刻は便の終了時刻。",
                                "One trip per unloading at the disposal site; time is the trip's end.")),
        )),
    ),
)


# --------------------------------------------------------------------------------------------------------------
# 電力使用量 / Household energy

ENERGY = Dashboard(
    uid="cityos-energy",
    title=T("電力使用量", "Household electricity"),
    description=T(
        "スマートメーター（B ルート）による地区別の電力使用量と需要。世帯を特定できる表示はありません。",
        "Electricity use and demand per district from the smart meters (B-route). Nothing here identifies a "
        "household.",
    ),
    variables=(V_DISTRICT_ENERGY,),
    time_from="now-7d",
    refresh="5m",
    rows=(
        Row(T("使用量", "Energy used"), (
            Panel(T("日別の電力使用量（地区別）", "Electricity used per day, by district"), "timeseries",
                  (Target("A", q_kwh_per_day(), alias="$tag_district"),),
                  unit="kwatth", draw="bars", stacked=True, decimals=1,
                  description=T("30分ごとの積算値の差の合計（日本時間の暦日）。",
                                "Sum of the differences of the half-hourly cumulative readings (calendar days, "
                                "Japan time).")),
            Panel(T("30分ごとの電力使用量（地区別）", "Electricity used per half hour, by district"), "timeseries",
                  (Target("A", f'SELECT sum("kwh") FROM {_half_hour_kwh()} WHERE $timeFilter '
                               f'GROUP BY time($__interval), "district" fill(none)', alias="$tag_district"),),
                  unit="kwatth", decimals=2, min_interval="30m",
                  description=T("時刻はその30分間の終わり（10:00 は 9:30〜10:00 の使用量）。",
                                "Time is the end of the half hour (10:00 is the use from 9:30 to 10:00).")),
        )),
        Row(T("需要電力", "Demand"), (
            Panel(T("地区の需要電力（5分平均）", "District demand (5-minute means)"), "timeseries",
                  (Target("A", f'SELECT max("load") FROM {_district_load_5m()} WHERE $timeFilter '
                               f'GROUP BY time($__interval), "district" fill(none)', alias="$tag_district"),),
                  unit="watt", decimals=1, min_interval="5m",
                  description=T("各世帯の瞬時電力の5分平均を地区で合計した値（表示間隔内の最大）。",
                                "Households' power, 5-minute means, summed per district (the maximum in each "
                                "display interval).")),
            Panel(T("日別の最大需要電力（地区別）", "Peak demand per day, by district"), "timeseries",
                  (Target("A", q_peak_load_per_day(), alias="$tag_district"),),
                  unit="watt", draw="bars", decimals=1),
        )),
        Row(T("世帯ごとの使用量の分布（匿名）", "Spread across households (anonymous)"), (
            Panel(T("1世帯1日あたりの使用量の分布（日別）", "Daily use per household: percentiles per day"),
                  "timeseries", (Target("A", q_household_distribution_per_day(), alias="$col"),),
                  unit="kwatth", decimals=1,
                  description=T(
                      f"その日の全30分値がそろった世帯の1日の使用量の百分位（10・25・50・75・90）。"
                      f"{MIN_HOUSEHOLDS}世帯未満の日は表示しません。",
                      f"Percentiles (10, 25, 50, 75, 90) of the day's use of the households with all half-hour "
                      f"values that day; days with fewer than {MIN_HOUSEHOLDS} households are not shown.")),
            Panel(T("1世帯1日あたりの使用量の分布（期間全体）", "Daily use per household: percentiles in the period"),
                  "bargauge", (Target("A", q_household_distribution_range(), alias="$col"),),
                  unit="kwatth", decimals=1, width=8,
                  description=T("期間内のすべての「世帯・日」についての百分位。",
                                "Percentiles over every complete household-day in the period.")),
            Panel(T("集計対象の世帯数", "Households reporting"), "stat",
                  (Target("A", f'SELECT count("kwh") FROM (SELECT last("energy_fixed_kwh") AS "kwh" FROM "energy" '
                               f'{where(DISTRICT, "$timeFilter")} GROUP BY "device")',
                          legend=T("世帯", "households")),),
                  unit="short", decimals=0, width=4,
                  description=T("期間内に30分値を送った世帯の数。",
                                "Households that sent half-hourly values in the period.")),
        )),
    ),
)


# --------------------------------------------------------------------------------------------------------------
# 機器の稼働状況 / Fleet and ingest health


def _status_messages() -> str:
    """Per gateway: status messages of the last GATEWAY_OFFLINE_MIN minutes, 0 for a gateway known in the time
    range but silent (the second subquery contributes the 0: a silent gateway has no series of its own)."""
    recent = (f'(SELECT count("backlog_depth") AS "n" FROM "gateway_status" '
              f'{where(GATEWAY, "$timeFilter", f"time > now() - {GATEWAY_OFFLINE_MIN}m")} GROUP BY "gateway")')
    known = (f'(SELECT last("backlog_depth") * 0 AS "n" FROM "gateway_status" {where(GATEWAY, "$timeFilter")} '
             f'GROUP BY "gateway")')
    return f'SELECT sum("n") AS "status_messages" FROM {recent}, {known} GROUP BY "gateway"'


def _rate_target(measurement: str, field: str, alias: str, tag: str, cond: str, ref: str = "A") -> Target:
    conds = [c for c in (cond, "$timeFilter") if c]
    return Target(ref, f'SELECT non_negative_derivative(max("{field}"), 1m) FROM "{measurement}" {where(*conds)} '
                       f'GROUP BY time($__interval), "{tag}" fill(none)', alias=alias)


def _rates(measurement: str, fields: tuple[str, ...], tag: str, cond: str = "", alias: str = "") -> tuple[Target, ...]:
    return tuple(_rate_target(measurement, f, alias or f"$tag_{tag} {f}", tag, cond, chr(ord("A") + i))
                 for i, f in enumerate(fields))


def _family_errors(family: str, fields: tuple[str, ...]) -> tuple[Target, ...]:
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


def _ingest(field: str, agg: str = "max") -> Target:
    return Target("A", f'SELECT {agg}("{field}") FROM "ingest_health" WHERE $timeFilter '
                       f'GROUP BY time($__interval), "instance" fill(none)', alias="$tag_instance")


FLEET = Dashboard(
    uid="cityos-fleet",
    title=T("機器の稼働状況", "Fleet and ingest health"),
    description=T(
        "ゲートウェイの接続状態と未送信データ、現場機器の通信エラー、クラウド側取り込み（ingest）の状態。",
        "Gateways online and their unsent backlog, field devices' link errors, and the cloud ingest's health.",
    ),
    variables=(V_GATEWAY,),
    time_from="now-24h",
    refresh="1m",
    rows=(
        Row(T("ゲートウェイ", "Gateways"), (
            Panel(T(f"接続状態（直近{GATEWAY_OFFLINE_MIN}分の状態通知数）",
                    f"Connection (status messages in the last {GATEWAY_OFFLINE_MIN} min)"), "stat",
                  (Target("A", _status_messages(), alias="$tag_gateway"),),
                  unit="short", decimals=0, thresholds=(
                      Threshold(0, "red"), Threshold(1, "green", T("オンライン", "online"))),
                  description=T(
                      f"ゲートウェイは約1分ごとに状態を通知します。0（赤）は{GATEWAY_OFFLINE_MIN}分以上通知がない"
                      "（オフライン）ことを示します。期間内に一度も通知のないゲートウェイは表示されません。",
                      f"Gateways report their status about once a minute; 0 (red) means none for "
                      f"{GATEWAY_OFFLINE_MIN} minutes (offline). Gateways silent for the whole period are not "
                      "listed.")),
            Panel(T("最終受信時刻", "Last status received"), "table",
                  (Target("A", f'SELECT last("backlog_depth") AS "backlog_depth" FROM "gateway_status" '
                               f'{where(GATEWAY, "$timeFilter")} GROUP BY "gateway"', result_format="table"),),
                  unit="short", width=6, decimals=0,
                  description=T("各ゲートウェイから最後に状態通知を受けた時刻と、その時点の未送信件数。",
                                "When each gateway's last status message arrived, and its backlog then.")),
            Panel(T("エージェントの版と設定", "Agent version and configuration"), "table",
                  (Target("A", f'SELECT last("agent_version") AS "agent_version", last("config_hash") AS "config_hash" '
                               f'FROM "gateway_status" {where(GATEWAY, "$timeFilter")} GROUP BY "gateway"',
                          result_format="table"),),
                  unit="none", width=6, hide_columns=("Time",)),
            Panel(T("状態通知の受信数", "Status messages received"), "timeseries",
                  (Target("A", f'SELECT count("backlog_depth") FROM "gateway_status" {where(GATEWAY, "$timeFilter")} '
                               f'GROUP BY time($__interval), "gateway" fill(0)', alias="$tag_gateway"),),
                  unit="short", draw="bars", decimals=0, min_interval="5m",
                  description=T("0 の区間は通知が届いていない（オフライン）区間。",
                                "Intervals at 0: no status received (offline).")),
            Panel(T("ゲートウェイ本体の状態（最新）", "Gateway machines (latest)"), "table",
                  (Target("A", 'SELECT last("cpu_pct") AS "cpu_pct", last("mem_used_pct") AS "mem_used_pct", '
                               'last("disk_used_pct") AS "disk_used_pct", last("cpu_temp_c") AS "cpu_temp_c", '
                               'last("agent_rss_mb") AS "agent_rss_mb", last("agent_uptime_s") AS "agent_uptime_s" '
                               f'FROM "gateway_health" {where(GATEWAY, "$timeFilter")} GROUP BY "gateway"',
                          result_format="table"),),
                  unit="percent", hide_columns=("Time",), decimals=1,
                  field_units=(("cpu_temp_c", "celsius"), ("agent_rss_mb", "decmbytes"), ("agent_uptime_s", "s")),
                  description=T("CPU 使用率は1コアを100 %とした値。",
                                "CPU percent of one core (100 = one core busy).")),
        )),
        Row(T("未送信データ（バックログ）", "Unsent backlog"), (
            Panel(T("未送信の件数", "Backlog depth"), "timeseries",
                  (Target("A", f'SELECT max("backlog_depth") FROM "gateway_health" {where(GATEWAY, "$timeFilter")} '
                               f'GROUP BY time($__interval), "gateway" fill(none)', alias="$tag_gateway"),),
                  unit="short", decimals=0,
                  description=T("ゲートウェイに保存され、まだ送れていない観測の数。通信断の間に増え、回復後に減ります。",
                                "Readings stored on the gateway and not yet delivered: grows during an outage, "
                                "drains after it.")),
            Panel(T("最も古い未送信データの経過時間", "Age of the oldest unsent reading"), "timeseries",
                  (Target("A", f'SELECT max("backlog_age_s") FROM "gateway_health" {where(GATEWAY, "$timeFilter")} '
                               f'GROUP BY time($__interval), "gateway" fill(none)', alias="$tag_gateway"),),
                  unit="s", decimals=0, thresholds=(
                      Threshold(0, "green"), Threshold(BACKLOG_AGE_LIMIT_S, "red", T("アラート", "alert")))),
        )),
        Row(T("現場機器の通信エラー（種別ごと、毎分）", "Field device errors per family (per minute)"), (
            Panel(T("森林観測局（RS-485 / Modbus）", "Forest stations (RS-485 / Modbus)"), "timeseries",
                  _family_errors("forest_station",
                                 ("crc_errors", "timeouts", "framing_errors", "exception_responses", "port_errors")),
                  unit="cpm", width=8, decimals=1),
            Panel(T("スマートメーター（Wi-SUN / B ルート）", "Smart meters (Wi-SUN / B-route)"), "timeseries",
                  _family_errors("smart_meter",
                                 ("timeouts", "garbled_lines", "request_errors", "join_failures", "port_errors")),
                  unit="cpm", width=8, decimals=1),
            Panel(T("収集車（計量器・GPS）", "Garbage trucks (load cell, GPS)"), "timeseries",
                  _family_errors("garbage_truck",
                                 ("nmea_bad_checksum", "nmea_truncated", "nmea_garbage", "indicator_bad_lines",
                                  "gps_dropouts")),
                  unit="cpm", width=8, decimals=1),
        )),
        Row(T("クラウド取り込み（ingest）", "Cloud ingest"), (
            Panel(T("受信・確認・書き込み件数（毎分）", "Received, acknowledged, written (per minute)"), "timeseries",
                  _rates("ingest_health", ("messages_received", "messages_acked", "points_written"), "instance"),
                  unit="cpm", decimals=0),
            Panel(T("デッドレター・書き込みエラー・再接続（毎分）",
                    "Dead letters, write errors, reconnects (per minute)"),
                  "timeseries",
                  _rates("ingest_health", ("dead_lettered_total", "write_errors_total", "reconnects"), "instance"),
                  unit="cpm", decimals=1,
                  description=T("デッドレターは規約に合わず保管されたメッセージ（docs/wire-protocol.md）。",
                                "Dead letters: messages that broke the contract, kept aside (docs/wire-protocol.md).")),
            Panel(T("停止・接続", "Stalled, connected"), "timeseries",
                  (Target("A", 'SELECT max("stalled") FROM "ingest_health" WHERE $timeFilter '
                               'GROUP BY time($__interval), "instance" fill(none)', alias="$tag_instance stalled"),
                   Target("B", 'SELECT min("connected") FROM "ingest_health" WHERE $timeFilter '
                               'GROUP BY time($__interval), "instance" fill(none)', alias="$tag_instance connected")),
                  unit="short", width=6, decimals=0,
                  description=T("1 = 停止（書き込みが進まない）／接続中。",
                                "1 = stalled (no writes progressing) / connected.")),
            Panel(T("処理待ちの件数", "Messages waiting"), "timeseries",
                  (Target("A", 'SELECT max("pending") FROM "ingest_health" WHERE $timeFilter '
                               'GROUP BY time($__interval), "instance" fill(none)', alias="$tag_instance pending"),
                   Target("B", 'SELECT max("queued") FROM "ingest_health" WHERE $timeFilter '
                               'GROUP BY time($__interval), "instance" fill(none)', alias="$tag_instance queued"),
                   Target("C", 'SELECT max("unacked") FROM "ingest_health" WHERE $timeFilter '
                               'GROUP BY time($__interval), "instance" fill(none)', alias="$tag_instance unacked")),
                  unit="short", width=6, decimals=0),
            Panel(T("最も古い未確認メッセージ", "Oldest unacknowledged message"), "timeseries",
                  (_ingest("oldest_unacked_s"),), unit="s", width=6, decimals=0),
            Panel(T("書き込み遅延（95パーセンタイル）", "Write latency (95th percentile)"), "timeseries",
                  (_ingest("write_latency_p95_ms"),), unit="ms", width=6, decimals=0),
        )),
    ),
)

# --------------------------------------------------------------------------------------------------------------
# 路線バス・乗降 / Bus ridership (issue 5: docs/bus.md; measurements bus_stop, bus_segment, bus_od, bus_position)

ROUTE = '"route" =~ /^$route$/'
V_ROUTE = Variable("route", T("路線", "Route"), 'SHOW TAG VALUES FROM "bus_stop", "bus_segment" WITH KEY = "route"')
BUS_STEPS = (
    Threshold(0, "green"),
    Threshold(BUS_FEW_SEATS_PCT, "yellow", T("空席わずか", "few seats")),
    Threshold(BUS_STANDING_PCT, "orange", T("立ち客あり", "standing room only")),
    Threshold(BUS_CROWDED_PCT, "red", T("混雑", "crowded")),
)
ESTIMATE = T("人数は車内の Bluetooth 機器数からの推定値で、90 %区間（occupancy_lo〜occupancy_hi）があります。",
             "Passenger numbers are estimates from the in-vehicle Bluetooth devices, with a 90 % interval "
             "(occupancy_lo to occupancy_hi).")


def _stop_names() -> tuple[str, str]:
    """"1001 津山駅, 1002 …" in Japanese and English, from the GTFS feed's stops.txt and translations.txt (stop
    tags are ``stop_id``s; the people reading the dashboard know the names). Empty when the feed is not there."""
    try:
        with (GTFS_FEED / "stops.txt").open(encoding="utf-8-sig", newline="") as fh:
            stops = [(r["stop_id"], r["stop_name"]) for r in csv.DictReader(fh)]
        with (GTFS_FEED / "translations.txt").open(encoding="utf-8-sig", newline="") as fh:
            en = {r["record_id"]: r["translation"] for r in csv.DictReader(fh)
                  if r["table_name"] == "stops" and r["field_name"] == "stop_name" and r["language"] == "en"}
    except (OSError, KeyError):
        return "", ""
    return (", ".join(f"{i} {name}" for i, name in stops),
            ", ".join(f"{i} {en.get(i, i)}" for i, _name in stops))


def _with_stops(ja: str, en: str) -> Text:
    names_ja, names_en = _stop_names()
    if not names_ja:
        return T(ja, en)
    return T(f"{ja}\n\n停留所: {names_ja}", f"{en}\n\nStops: {names_en}")


def _segment(field: str, agg: str) -> str:
    return (f'SELECT {agg}("{field}") FROM "bus_segment" {where(ROUTE, "$timeFilter")} '
            f'GROUP BY time($__interval), "trip" fill(none)')


def q_bus_boardings_per_stop() -> str:
    return (f'SELECT sum("boardings") AS "boardings", sum("alightings") AS "alightings" FROM "bus_stop" '
            f'{where(ROUTE, "$timeFilter")} GROUP BY "stop"')


def q_bus_boardings_per_hour() -> str:
    """Boardings per clock hour, as the mean hour of each display interval (at least an hour), so the value is
    "per hour" whatever the range."""
    hourly = (f'(SELECT sum("boardings") AS "per_hour" FROM "bus_stop" {where(ROUTE, "$timeFilter")} '
              f'GROUP BY time(1h), "route" fill(0))')
    return f'SELECT mean("per_hour") FROM {hourly} WHERE $timeFilter GROUP BY time($__interval), "route" fill(none)'


def q_bus_occupancy_per_trip_day() -> str:
    return (f'SELECT max("occupancy") AS "max", mean("occupancy") AS "mean", max("occupancy_hi") AS "max_hi", '
            f'max("occupancy_pct") AS "max_pct" FROM "bus_segment" {where(ROUTE, "$timeFilter")} '
            f'GROUP BY time(1d), "route", "trip" fill(none) {TZ}')


def q_bus_od() -> str:
    """Riders per (boarding stop, alighting stop), only pairs with MIN_OD_RIDERS or more. Counts ``ride_s``,
    never the ``rider`` field: the per-day rider hash is not for display."""
    pairs = (f'(SELECT count("ride_s") AS "riders", mean("ride_s") AS "mean_ride_s" FROM "bus_od" '
             f'{where(ROUTE, "$timeFilter")} GROUP BY "board_stop", "alight_stop")')
    return (f'SELECT "riders", "mean_ride_s" FROM {pairs} WHERE "riders" >= {MIN_OD_RIDERS} '
            f'GROUP BY "board_stop", "alight_stop"')


def q_bus_latest() -> str:
    """Each bus's newest position in the range, the whole point (``last()`` per field would, on InfluxDB 1.6,
    fill a field missing from the newest point from an older one)."""
    return ('SELECT "lat", "lon", "occupancy", "occupancy_pct", "speed_kmh", "trip_id", "stop_id" '
            'FROM "bus_position" WHERE $timeFilter GROUP BY "device" ORDER BY time DESC LIMIT 1')


TRANSIT = Dashboard(
    uid="cityos-transit",
    title=T("路線バス・乗降", "Bus ridership"),
    description=T(
        "路線バスの停留所ごとの乗降、便ごとの乗車人数（推定）、アプリ利用者の乗車区間、各バスの現在地。"
        "人数は車内の Bluetooth 機器数から推定した値です。",
        "Boardings and alightings per stop, passengers on board per trip (estimated), app riders' journeys, "
        "and where each bus is. Numbers are estimated from in-vehicle Bluetooth devices.",
    ),
    variables=(V_ROUTE,),
    time_from="now-24h",
    refresh="1m",
    rows=(
        Row(T("乗降（停留所別）", "Boardings and alightings"), (
            Panel(T("停留所別の乗車・降車人数（期間合計）", "Boardings and alightings per stop (period total)"),
                  "barchart", (Target("A", q_bus_boardings_per_stop(), result_format="table"),),
                  unit="short", x_field="stop", decimals=0, width=24, height=9,
                  description=_with_stops(
                      "停留所番号（GTFS の stop_id）ごとの合計。前の区間を観測できなかった停車（complete = false）は"
                      "含まれません。" + ESTIMATE.ja,
                      "Totals per stop number (GTFS stop_id). Stop visits whose previous segment was not observed "
                      "(complete = false) have no counts. " + ESTIMATE.en)),
            Panel(T("1時間あたりの乗車人数（路線別）", "Boardings per hour, by route"), "timeseries",
                  (Target("A", q_bus_boardings_per_hour(), alias="$tag_route"),),
                  unit="short", draw="bars", decimals=1, min_interval="1h", width=24, height=7,
                  description=T("各時台の乗車人数。表示間隔が1時間より長いときはその間の1時間あたりの平均。"
                                + ESTIMATE.ja,
                                "Boardings in each clock hour; the hourly mean when a display interval is longer "
                                "than an hour. " + ESTIMATE.en)),
        )),
        Row(T("乗車人数（推定）", "Passengers on board (estimated)"), (
            Panel(T("便別の乗車人数と90 %区間", "Passengers on board per trip, with the 90 % interval"),
                  "timeseries",
                  (Target("A", _segment("occupancy", "max"), alias="$tag_trip"),
                   Target("B", _segment("occupancy_lo", "min"), legend=T("$tag_trip 90 %区間 下限",
                                                                          "$tag_trip 90 % lower")),
                   Target("C", _segment("occupancy_hi", "max"), legend=T("$tag_trip 90 %区間 上限",
                                                                          "$tag_trip 90 % upper"))),
                  unit="short", decimals=1, width=16, height=9,
                  description=T("区間（停留所間）ごとの乗車人数の推定値（表示間隔内の最大）と、その90 %区間の下限・"
                                "上限。" + ESTIMATE.ja,
                                "Estimated passengers on board per segment between stops (the maximum in each "
                                "display interval), with the lower and upper ends of the 90 % interval. "
                                + ESTIMATE.en)),
            Panel(T("便別の最大・平均乗車人数（日別）", "Maximum and mean passengers per trip and day"), "table",
                  (Target("A", q_bus_occupancy_per_trip_day(), result_format="table"),),
                  unit="short", decimals=1, width=8, height=9, field_units=(("max_pct", "percent"),),
                  description=T("区間ごとの推定値の最大・平均（平均は区間の単純平均）。max_hi は90 %区間上限の最大、"
                                "max_pct は定員に対する割合（定員を設定した車両のみ）。",
                                "Maximum and mean of the per-segment estimates (the mean is per segment, not "
                                "time-weighted). max_hi: the largest upper end of the 90 % interval; max_pct: of "
                                "the capacity (vehicles with a capacity configured only).")),
        )),
        Row(T("アプリ利用者の乗車区間", "App riders' journeys"), (
            Panel(T("乗車区間別の人数（アプリ利用者）", "Riders per origin and destination (app users)"), "table",
                  (Target("A", q_bus_od(), result_format="table"),),
                  unit="short", decimals=0, width=24, height=8, hide_columns=("Time",),
                  field_units=(("mean_ride_s", "s"),),
                  description=_with_stops(
                      f"同意したアプリ利用者の乗車停留所と降車停留所の組ごとの人数と平均乗車時間。{MIN_OD_RIDERS}人未満の"
                      "組は表示しません。個人を示す値は表示しません。",
                      f"Consenting app riders per pair of boarding and alighting stop, with the mean ride time. "
                      f"Pairs with fewer than {MIN_OD_RIDERS} riders are not shown; nothing identifying a rider "
                      "is shown.")),
        )),
        Row(T("バスの現在地", "Where the buses are"), (
            Panel(T("バスの位置と乗車人数（最新）", "Buses: position and passengers (latest)"), "geomap",
                  (Target("A", q_bus_latest(), result_format="table",
                          legend=T("バス（色: 定員に対する乗車率）", "Buses (colour: occupancy of capacity)")),),
                  unit="percent", thresholds=BUS_STEPS, color_field="occupancy_pct", width=16, height=12,
                  field_units=(("lat", "none"), ("lon", "none"), ("occupancy", "short"),
                               ("speed_kmh", "velocitykmh")),
                  description=T("各バスの期間内で最新の位置。色は定員に対する乗車率（定員を設定した車両のみ）。"
                                + ESTIMATE.ja,
                                "Each bus's newest position in the period, coloured by occupancy of its capacity "
                                "(vehicles with a capacity configured). " + ESTIMATE.en)),
            Panel(T("各バスの最新の状態", "Buses: latest state"), "table",
                  (Target("A", q_bus_latest(), result_format="table"),),
                  unit="short", decimals=1, width=8, height=12, thresholds=BUS_STEPS,
                  field_units=(("lat", "none"), ("lon", "none"), ("occupancy_pct", "percent"),
                               ("speed_kmh", "velocitykmh")),
                  description=T("時刻は最新の位置の時刻。trip_id が空のバスは運行中の便と対応付いていません。",
                                "Time is that of the newest position. An empty trip_id: the bus is not matched "
                                "to a trip.")),
        )),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (OVERVIEW, FOREST, WASTE, ENERGY, FLEET, TRANSIT)


# --------------------------------------------------------------------------------------------------------------
# Alert rules (Grafana-managed)


def _forest_alert_query(condition: str) -> str:
    """Per station: live readings of the last FOREST_ALERT_WINDOW_MIN minutes that meet ``condition``
    (``count("status")``: status is in every reading, whichever sensors are in fault)."""
    return (f'SELECT count("status") AS "readings" FROM "forest" '
            f'{where(live_only(), condition, f"time > now() - {FOREST_ALERT_WINDOW_MIN}m")} GROUP BY "device"')


def _gateway_silence_query() -> str:
    """Per gateway known in the last GATEWAY_KNOWN_DAYS days: status messages in the last GATEWAY_OFFLINE_MIN
    minutes (0 when silent: the second subquery gives every known gateway a series)."""
    recent = (f'(SELECT count("backlog_depth") AS "n" FROM "gateway_status" '
              f'WHERE time > now() - {GATEWAY_OFFLINE_MIN}m GROUP BY "gateway")')
    known = (f'(SELECT last("backlog_depth") * 0 AS "n" FROM "gateway_status" '
             f'WHERE time > now() - {GATEWAY_KNOWN_DAYS}d GROUP BY "gateway")')
    return f'SELECT sum("n") AS "status_messages" FROM {recent}, {known} GROUP BY "gateway"'


ALERT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        uid="cityos-landslide-warning",
        title=T("土砂災害警戒（観測点）", "Landslide warning (station)"),
        query=_forest_alert_query(landslide_condition()),
        relative_from_s=FOREST_ALERT_WINDOW_MIN * 60,
        reducer="last", evaluator="gt", threshold=0.0, for_="1m", severity="critical", group="landslide",
        summary=T("観測点 {{ $labels.device }} で土砂災害の警戒基準に達しました",
                  "Station {{ $labels.device }} met the landslide criterion"),
        description=T(
            f"土壌水分（深さ10 cm）{_n(SOIL_MOISTURE_WARNING_PCT)} %以上かつ時間雨量 {_n(RAIN_INTENSE_MM_H)} mm/h以上、"
            f"または傾斜速度 {_n(TILT_RATE_WARNING_DEG_H)} °/h以上の観測が直近{FOREST_ALERT_WINDOW_MIN}分にありました"
            "（遅れて届いた観測は除く）。現地の状況と県・気象庁の土砂災害警戒情報を確認してください。",
            f"A live reading of the last {FOREST_ALERT_WINDOW_MIN} minutes had soil moisture (10 cm) of at least "
            f"{_n(SOIL_MOISTURE_WARNING_PCT)} % with hourly rain of at least {_n(RAIN_INTENSE_MM_H)} mm/h, or a "
            f"tilting rate of at least {_n(TILT_RATE_WARNING_DEG_H)} deg/h. Check the site and the prefecture's "
            "and JMA's sediment-disaster alerts."),
    ),
    AlertRule(
        uid="cityos-slope-tilt-caution",
        title=T("斜面の傾斜速度（注意）", "Slope tilting rate (caution)"),
        query=_forest_alert_query(tilt_condition(TILT_RATE_CAUTION_DEG_H)),
        relative_from_s=FOREST_ALERT_WINDOW_MIN * 60,
        reducer="last", evaluator="gt", threshold=0.0, for_="5m", severity="warning", group="landslide",
        summary=T("観測点 {{ $labels.device }} の斜面が傾き始めています",
                  "The slope at station {{ $labels.device }} has started tilting"),
        description=T(
            f"傾斜速度 {_n(TILT_RATE_CAUTION_DEG_H)} °/h以上の観測が続いています（警戒は "
            f"{_n(TILT_RATE_WARNING_DEG_H)} °/h）。センサーの設置状態も確認してください。",
            f"Tilting rate of at least {_n(TILT_RATE_CAUTION_DEG_H)} deg/h (the warning is at "
            f"{_n(TILT_RATE_WARNING_DEG_H)} deg/h). Check the sensor's mounting too."),
    ),
    AlertRule(
        uid="cityos-gateway-offline",
        title=T("ゲートウェイのオフライン", "Gateway offline"),
        query=_gateway_silence_query(),
        relative_from_s=GATEWAY_KNOWN_DAYS * 86400,
        reducer="last", evaluator="lt", threshold=1.0, for_="0s", severity="warning", group="fleet",
        summary=T(f"ゲートウェイ {{{{ $labels.gateway }}}} から{GATEWAY_OFFLINE_MIN}分以上状態通知がありません",
                  f"Gateway {{{{ $labels.gateway }}}} sent no status for {GATEWAY_OFFLINE_MIN} minutes"),
        description=T(
            "電源・回線・エージェントを確認してください。観測はゲートウェイに保存され、復旧後に送られます。"
            f"撤去したゲートウェイは{GATEWAY_KNOWN_DAYS}日後に対象から外れます。",
            "Check power, uplink and the agent. Readings are kept on the gateway and sent after recovery. A "
            f"removed gateway leaves this rule after {GATEWAY_KNOWN_DAYS} days."),
    ),
    AlertRule(
        uid="cityos-ingest-stalled",
        title=T("取り込み（ingest）の停止", "Ingest stalled"),
        query='SELECT last("stalled") FROM "ingest_health" WHERE time > now() - 5m GROUP BY "instance"',
        relative_from_s=300,
        reducer="last", evaluator="gt", threshold=0.5, for_="2m", severity="critical", group="fleet",
        no_data_state="Alerting",
        summary=T("取り込み {{ $labels.instance }} が停止しています", "Ingest {{ $labels.instance }} is stalled"),
        description=T(
            "InfluxDB への書き込みが進んでいません。ingest_health が5分間届かない場合（取り込みの停止・"
            "InfluxDB 障害）もこのアラートになります。",
            "Writes to InfluxDB are not progressing. No ingest_health points for 5 minutes (ingest down, "
            "InfluxDB failing) raises this alert too."),
    ),
    AlertRule(
        uid="cityos-backlog-old",
        title=T("未送信データの滞留", "Backlog not draining"),
        query='SELECT last("backlog_age_s") FROM "gateway_status" WHERE time > now() - 15m GROUP BY "gateway"',
        relative_from_s=900,
        reducer="last", evaluator="gt", threshold=BACKLOG_AGE_LIMIT_S, for_="5m", severity="warning", group="fleet",
        summary=T(f"ゲートウェイ {{{{ $labels.gateway }}}} に"
                  f"{BACKLOG_AGE_LIMIT_S / 60:g}分以上前の未送信データがあります",
                  f"Gateway {{{{ $labels.gateway }}}} holds unsent readings older than {BACKLOG_AGE_LIMIT_S / 60:g} "
                  "minutes"),
        description=T(
            "接続中なのに未送信データが減っていません。取り込み側の拒否（デッドレター）や回線の帯域を確認してください。",
            "Connected, but the backlog does not drain: check the ingest's dead letters and the uplink's "
            "bandwidth."),
    ),
)
