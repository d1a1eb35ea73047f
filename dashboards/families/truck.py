"""Waste collection from the garbage trucks: the ごみ収集 dashboard, the waste row of the overview and the trucks'
error panel."""

from __future__ import annotations

from dashboards.common import (
    DISTRICT,
    TZ,
    WEEK,
    T,
    family_errors,
    where,
)
from dashboards.model import AlertRule, Dashboard, Panel, Row, Target, Variable

V_DISTRICT_WASTE = Variable("district", T("地区", "District"),
                            'SHOW TAG VALUES FROM "waste_collection" WITH KEY = "district"')


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


#: This family's dashboards (``cityos dashboards build`` writes one JSON file each).
DASHBOARDS: tuple[Dashboard, ...] = (WASTE,)
#: Its rows of the environment overview (``cityos-overview``).
OVERVIEW_ROWS: tuple[Row, ...] = (
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
)
#: Its devices' error panel on the fleet dashboard (``cityos-fleet``).
FLEET_PANELS: tuple[Panel, ...] = (
    Panel(T("収集車（計量器・GPS）", "Garbage trucks (load cell, GPS)"), "timeseries",
          family_errors("garbage_truck",
                         ("nmea_bad_checksum", "nmea_truncated", "nmea_garbage", "indicator_bad_lines",
                          "gps_dropouts")),
          unit="cpm", width=8, decimals=1),
)
#: Its alert rules (Grafana-managed).
ALERT_RULES: tuple[AlertRule, ...] = ()
