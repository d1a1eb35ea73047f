"""Household energy from the smart meters: the 電力使用量 dashboard, the energy row of the overview and the meters'
error panel.

The privacy rule (docs/privacy.md, ``cityos.privacy``): no query shows a household (``"device"`` is grouped by only
inside a subquery), and every value over households is shown for a district and time bucket only when at least
:data:`MIN_HOUSEHOLDS` households report in that district and bucket. How, in InfluxQL (no HAVING): per bucket one
row per household first (``GROUP BY "device"``), then the district's value together with ``count(...) AS
"households"`` of those rows, then ``WHERE "households" >= MIN_HOUSEHOLDS`` at the outermost level
(:func:`k_filter`). Every value is per district: no panel adds districts up (a city total next to the districts
would give a hidden district away by subtraction), and a sum over a bucket longer than half an hour needs k
households in *each* of its half hours (else the day minus its shown half hours would give the hidden ones away)."""

from __future__ import annotations

from cityos.privacy import MIN_HOUSEHOLDS
from dashboards.common import (
    DISTRICT,
    METER_DAY,
    TZ,
    T,
    family_errors,
    where,
)
from dashboards.model import AlertRule, Dashboard, Panel, Row, Target, Variable

__all__ = ["ALERT_RULES", "DASHBOARDS", "ENERGY", "FLEET_PANELS", "HOUSEHOLDS", "MIN_HOUSEHOLDS", "OVERVIEW_ROWS",
           "k_filter"]

#: Half-hour values in a complete day: a household's day counts in the distributions only when complete.
HALF_HOURS_PER_DAY = 48
#: The field every grouped energy query carries: how many households the value is over (the k rule reads it).
HOUSEHOLDS = '"households"'

V_DISTRICT_ENERGY = Variable("district", T("地区", "District"), 'SHOW TAG VALUES FROM "energy" WITH KEY = "district"')


def k_filter() -> str:
    """The condition that shows a group only when at least k households report in it (docs/privacy.md)."""
    return f'{HOUSEHOLDS} >= {MIN_HOUSEHOLDS}'


def _half_hour_kwh(group_by: str = '"device", "district"') -> str:
    """Subquery: each household's energy per half hour, kWh, stamped at the end of the half hour (the difference
    of consecutive fixed-time cumulative values; a meter replaced or reset gives no negative value)."""
    return (f'(SELECT non_negative_difference("energy_fixed_kwh") AS "kwh" FROM "energy" '
            f'{where(DISTRICT, "$timeFilter")} GROUP BY {group_by})')


def _district_half_hours() -> str:
    """Subquery: per district and half hour, the kWh of its households and how many households they are (one
    row per household first, so that ``households`` counts households, not points)."""
    per_household = (f'(SELECT sum("kwh") AS "kwh" FROM {_half_hour_kwh()} WHERE $timeFilter '
                     f'GROUP BY time(30m), "device", "district")')
    return (f'(SELECT sum("kwh") AS "kwh", count("kwh") AS {HOUSEHOLDS} FROM {per_household} WHERE $timeFilter '
            f'GROUP BY time(30m), "district")')


def _kwh_per_district(bucket: str, tz: str = "") -> str:
    """kWh per district and ``bucket`` (a ``time(...)`` clause), shown only where every half hour of the bucket
    has k households: ``households`` of a bucket is the smallest of its half hours'."""
    inner = (f'(SELECT sum("kwh") AS "kwh", min({HOUSEHOLDS}) AS {HOUSEHOLDS} FROM {_district_half_hours()} '
             f'WHERE $timeFilter GROUP BY {bucket}, "district" fill(none){" " + tz if tz else ""})')
    return f'SELECT "kwh" FROM {inner} WHERE {k_filter()} GROUP BY "district"'


def q_kwh_per_day() -> str:
    return _kwh_per_district(METER_DAY, TZ)


def q_kwh_per_interval() -> str:
    return _kwh_per_district("time($__interval)")


def _district_load_5m() -> str:
    """Subquery: each district's load, W: the sum over its households of their mean power in 5-minute buckets
    (meters are polled about once a minute, at different seconds: a sum at one instant would miss most), and
    how many households it is over."""
    per_household = (f'(SELECT mean("power_w") AS "w" FROM "energy" {where(DISTRICT, "$timeFilter")} '
                     f'GROUP BY time(5m), "device", "district")')
    return (f'(SELECT sum("w") AS "load", count("w") AS {HOUSEHOLDS} FROM {per_household} WHERE $timeFilter '
            f'GROUP BY time(5m), "district")')


def q_load_per_interval() -> str:
    return (f'SELECT max("load") FROM {_district_load_5m()} WHERE $timeFilter AND {k_filter()} '
            f'GROUP BY time($__interval), "district" fill(none)')


def q_peak_load_per_day() -> str:
    return (f'SELECT max("load") FROM {_district_load_5m()} WHERE $timeFilter AND {k_filter()} '
            f'GROUP BY time(1d), "district" fill(none) {TZ}')


def _household_days() -> str:
    """Subquery: kWh of each household for each complete day (48 half hours), tagged with its district; no
    identity leaves it."""
    per_day = (f'(SELECT sum("kwh") AS "kwh", count("kwh") AS "half_hours" FROM {_half_hour_kwh()} '
               f'WHERE $timeFilter GROUP BY {METER_DAY}, "device", "district" {TZ})')
    return f'(SELECT "kwh" FROM {per_day} WHERE "half_hours" = {HALF_HOURS_PER_DAY})'


PERCENTILES = (10, 25, 50, 75, 90)


def _percentiles() -> str:
    return ", ".join(f'percentile("kwh", {p}) AS "p{p}"' for p in PERCENTILES)


def _percentile_columns() -> str:
    return ", ".join(f'"p{p}"' for p in PERCENTILES)


def q_household_median_per_day() -> str:
    """Per district and day, the median of its households' complete days (k households with a complete day)."""
    inner = (f'(SELECT percentile("kwh", 50) AS "p50", count("kwh") AS {HOUSEHOLDS} FROM {_household_days()} '
             f'WHERE $timeFilter GROUP BY {METER_DAY}, "district" {TZ})')
    return f'SELECT "p50" FROM {inner} WHERE {k_filter()} GROUP BY "district"'


def q_household_distribution_range() -> str:
    """Per district, percentiles over every complete household-day of the range, shown when k *households*
    (not household-days: one household over 30 days is still one) have one. The second subquery gives one row per
    household for the count (InfluxQL has no count of distinct tag values)."""
    households = (f'(SELECT count("kwh") AS "days" FROM {_household_days()} WHERE $timeFilter '
                  f'GROUP BY "device", "district")')
    inner = (f'(SELECT {_percentiles()}, count("days") AS {HOUSEHOLDS} FROM {_household_days()}, {households} '
             f'WHERE $timeFilter GROUP BY "district")')
    return f'SELECT {HOUSEHOLDS}, {_percentile_columns()} FROM {inner} WHERE {k_filter()} GROUP BY "district"'


def q_households_reporting() -> str:
    """Households that sent half-hourly values in the range, over the districts with at least k of them only
    (the districts whose values can be shown; a city-wide count would give a hidden district's away)."""
    per_household = (f'(SELECT last("energy_fixed_kwh") AS "kwh" FROM "energy" {where(DISTRICT, "$timeFilter")} '
                     f'GROUP BY "device", "district")')
    per_district = f'(SELECT count("kwh") AS {HOUSEHOLDS} FROM {per_household} GROUP BY "district")'
    return f'SELECT sum({HOUSEHOLDS}) FROM {per_district} WHERE {k_filter()}'


# --------------------------------------------------------------------------------------------------------------
# 電力使用量 / Household energy

ENERGY = Dashboard(
    uid="cityos-energy",
    title=T("電力使用量", "Household electricity"),
    description=T(
        f"スマートメーター（B ルート）による地区別の電力使用量と需要。世帯を特定できる表示はありません。"
        f"値は{MIN_HOUSEHOLDS}世帯以上が計測している地区・時間帯のみ表示します。",
        f"Electricity use and demand per district from the smart meters (B-route). Nothing here identifies a "
        f"household: a value is shown only for a district and time with at least {MIN_HOUSEHOLDS} households "
        f"reporting.",
    ),
    variables=(V_DISTRICT_ENERGY,),
    time_from="now-7d",
    refresh="5m",
    rows=(
        Row(T("使用量", "Energy used"), (
            Panel(T("日別の電力使用量（地区別）", "Electricity used per day, by district"), "timeseries",
                  (Target("A", q_kwh_per_day(), alias="$tag_district"),),
                  unit="kwatth", draw="bars", stacked=True, decimals=1,
                  description=T(f"30分ごとの積算値の差の合計（日本時間の暦日）。その日のどの30分間も"
                                f"{MIN_HOUSEHOLDS}世帯以上が計測している地区のみ。",
                                f"Sum of the differences of the half-hourly cumulative readings (calendar days, "
                                f"Japan time); only districts with at least {MIN_HOUSEHOLDS} households reporting "
                                f"in every half hour of the day.")),
            Panel(T("30分ごとの電力使用量（地区別）", "Electricity used per half hour, by district"), "timeseries",
                  (Target("A", q_kwh_per_interval(), alias="$tag_district"),),
                  unit="kwatth", decimals=2, min_interval="30m",
                  description=T(f"時刻はその30分間の終わり（10:00 は 9:30〜10:00 の使用量）。"
                                f"{MIN_HOUSEHOLDS}世帯以上が計測している30分間のみ。",
                                f"Time is the end of the half hour (10:00 is the use from 9:30 to 10:00); only "
                                f"half hours with at least {MIN_HOUSEHOLDS} households reporting.")),
        )),
        Row(T("需要電力", "Demand"), (
            Panel(T("地区の需要電力（5分平均）", "District demand (5-minute means)"), "timeseries",
                  (Target("A", q_load_per_interval(), alias="$tag_district"),),
                  unit="watt", decimals=1, min_interval="5m",
                  description=T(f"各世帯の瞬時電力の5分平均を地区で合計した値（表示間隔内の最大）。"
                                f"{MIN_HOUSEHOLDS}世帯以上が計測している5分間のみ。",
                                f"Households' power, 5-minute means, summed per district (the maximum in each "
                                f"display interval); only 5 minutes with at least {MIN_HOUSEHOLDS} households "
                                f"reporting.")),
            Panel(T("日別の最大需要電力（地区別）", "Peak demand per day, by district"), "timeseries",
                  (Target("A", q_peak_load_per_day(), alias="$tag_district"),),
                  unit="watt", draw="bars", decimals=1,
                  description=T(f"地区の需要電力（5分平均の合計）の日最大値（{MIN_HOUSEHOLDS}世帯以上が計測している"
                                f"5分間のみ）。",
                                f"Daily maximum of the district's demand (5-minute means summed; only 5 minutes "
                                f"with at least {MIN_HOUSEHOLDS} households reporting).")),
        )),
        Row(T("世帯ごとの使用量の分布（匿名）", "Spread across households (anonymous)"), (
            Panel(T("1世帯1日あたりの使用量の中央値（地区別・日別）",
                    "Daily use per household: median per district and day"),
                  "timeseries", (Target("A", q_household_median_per_day(), alias="$tag_district"),),
                  unit="kwatth", decimals=1,
                  description=T(
                      f"その日の全30分値がそろった地区内世帯の1日の使用量の中央値。そのような世帯が"
                      f"{MIN_HOUSEHOLDS}世帯未満の地区・日は表示しません。",
                      f"Median of the day's use of the district's households with all half-hour values that day; "
                      f"districts and days with fewer than {MIN_HOUSEHOLDS} such households are not shown.")),
            Panel(T("1世帯1日あたりの使用量の分布（地区別・期間全体）",
                    "Daily use per household: percentiles per district in the period"),
                  "table", (Target("A", q_household_distribution_range(), result_format="table"),),
                  unit="kwatth", decimals=1, width=8, hide_columns=("Time",), field_units=(("households", "short"),),
                  description=T(
                      f"地区ごとに、期間内のすべての「世帯・日」についての百分位（10・25・50・75・90）と世帯数。"
                      f"{MIN_HOUSEHOLDS}世帯未満の地区は表示しません。",
                      f"Per district, percentiles (10, 25, 50, 75, 90) over every complete household-day in the "
                      f"period, and the households they are from; districts with fewer than {MIN_HOUSEHOLDS} "
                      f"households are not shown.")),
            Panel(T("集計対象の世帯数", "Households reporting"), "stat",
                  (Target("A", q_households_reporting(), legend=T("世帯", "households")),),
                  unit="short", decimals=0, width=4,
                  description=T(f"期間内に30分値を送った世帯の数（{MIN_HOUSEHOLDS}世帯以上の地区のみ）。",
                                f"Households that sent half-hourly values in the period (in the districts with "
                                f"at least {MIN_HOUSEHOLDS} of them only).")),
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
              description=T(f"スマートメーターの30分ごとの積算値から求めた、B ルートを提供している世帯の合計。"
                            f"その日のどの30分間も{MIN_HOUSEHOLDS}世帯以上が計測している地区のみ。",
                            f"From the smart meters' half-hourly cumulative readings: the households that "
                            f"opened their B-route to the city; only districts with at least {MIN_HOUSEHOLDS} "
                            f"households reporting in every half hour of the day.")),
        Panel(T("日別の最大需要電力（地区別）", "Peak demand per day, by district"), "timeseries",
              (Target("A", q_peak_load_per_day(), alias="$tag_district"),),
              unit="watt", draw="bars", decimals=1,
              description=T(f"地区内世帯の瞬時電力（5分平均）の合計の日最大値（{MIN_HOUSEHOLDS}世帯以上が"
                            f"計測している5分間のみ）。",
                            f"Daily maximum of the district's load: its households' power, 5-minute means, "
                            f"summed (only 5 minutes with at least {MIN_HOUSEHOLDS} households reporting).")),
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
