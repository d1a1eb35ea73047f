"""Household energy from the smart meters: the 電力使用量 dashboard, the energy row of the overview and the meters'
error panel. No query shows a household: ``"device"`` is grouped by only inside a subquery, and distributions
need at least MIN_HOUSEHOLDS households."""

from __future__ import annotations

from dashboards.common import (
    DISTRICT,
    METER_DAY,
    TZ,
    T,
    family_errors,
    where,
)
from dashboards.model import AlertRule, Dashboard, Panel, Row, Target, Variable

#: Household distributions are shown only for days with at least this many households (no small groups).
MIN_HOUSEHOLDS = 5
#: Half-hour values in a complete day: a household's day counts in the distributions only when complete.
HALF_HOURS_PER_DAY = 48

V_DISTRICT_ENERGY = Variable("district", T("地区", "District"), 'SHOW TAG VALUES FROM "energy" WITH KEY = "district"')


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


#: This family's dashboards (``cityos dashboards build`` writes one JSON file each).
DASHBOARDS: tuple[Dashboard, ...] = (ENERGY,)
#: Its rows of the environment overview (``cityos-overview``).
OVERVIEW_ROWS: tuple[Row, ...] = (
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
)
#: Its devices' error panel on the fleet dashboard (``cityos-fleet``).
FLEET_PANELS: tuple[Panel, ...] = (
    Panel(T("スマートメーター（Wi-SUN / B ルート）", "Smart meters (Wi-SUN / B-route)"), "timeseries",
          family_errors("smart_meter",
                         ("timeouts", "garbled_lines", "request_errors", "join_failures", "port_errors")),
          unit="cpm", width=8, decimals=1),
)
#: Its alert rules (Grafana-managed).
ALERT_RULES: tuple[AlertRule, ...] = ()
