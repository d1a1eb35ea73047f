"""Forest stations and landslide risk: the 森林・土砂災害 dashboard, the forest row of the overview, the stations' error
panel and the landslide alert rules, with the thresholds they share."""

from __future__ import annotations

from cityos.landslide import (
    FOREST_ALERT_WINDOW_MIN,
    RAIN_CUMULATIVE_CAUTION_MM,
    RAIN_CUMULATIVE_WARNING_MM,
    RAIN_EXTREME_MM_H,
    RAIN_INTENSE_MM_H,
    RAIN_VERY_INTENSE_MM_H,
    SOIL_MOISTURE_WARNING_PCT,
    TILT_RATE_CAUTION_DEG_H,
    TILT_RATE_FIELDS,
    TILT_RATE_WARNING_DEG_H,
)
from dashboards.common import (
    T,
    family_errors,
    live_only,
    n,
    where,
)
from dashboards.model import AlertRule, Dashboard, Panel, Row, Target, Threshold, Variable

# --------------------------------------------------------------------------------------------------------------
# Thresholds: the kernel's (cityos/landslide.py), shared with the City OS API; panels draw them, alert rules
# evaluate them

STATION = '"device" =~ /^$station$/'


def tilt_condition(limit_deg_h: float) -> str:
    """A reading whose tilting rate on either axis, either direction, is at least ``limit_deg_h``."""
    return " OR ".join(f'"{f}" >= {n(limit_deg_h)} OR "{f}" <= -{n(limit_deg_h)}' for f in TILT_RATE_FIELDS)


def landslide_condition() -> str:
    """The landslide-warning criterion, per reading (so "together" means in the same reading of one station):
    wet soil AND intense rain, OR a slope tilting at the warning rate."""
    return (
        f'("soil_moisture_pct" >= {n(SOIL_MOISTURE_WARNING_PCT)} AND '
        f'"rain_intensity_mm_h" >= {n(RAIN_INTENSE_MM_H)}) OR {tilt_condition(TILT_RATE_WARNING_DEG_H)}'
    )



V_STATION = Variable("station", T("観測点", "Station"), 'SHOW TAG VALUES FROM "forest" WITH KEY = "device"')

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
# Alert rules


def _forest_alert_query(condition: str) -> str:
    """Per station: live readings of the last FOREST_ALERT_WINDOW_MIN minutes that meet ``condition``
    (``count("status")``: status is in every reading, whichever sensors are in fault)."""
    return (f'SELECT count("status") AS "readings" FROM "forest" '
            f'{where(live_only(), condition, f"time > now() - {FOREST_ALERT_WINDOW_MIN}m")} GROUP BY "device"')





#: This family's dashboards (``cityos dashboards build`` writes one JSON file each).
DASHBOARDS: tuple[Dashboard, ...] = (FOREST,)
#: Its rows of the environment overview (``cityos-overview``).
OVERVIEW_ROWS: tuple[Row, ...] = (
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
)
#: Its devices' error panel on the fleet dashboard (``cityos-fleet``).
FLEET_PANELS: tuple[Panel, ...] = (
    Panel(T("森林観測局（RS-485 / Modbus）", "Forest stations (RS-485 / Modbus)"), "timeseries",
          family_errors("forest_station",
                         ("crc_errors", "timeouts", "framing_errors", "exception_responses", "port_errors")),
          unit="cpm", width=8, decimals=1),
)
#: Its alert rules (Grafana-managed).
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
            f"土壌水分（深さ10 cm）{n(SOIL_MOISTURE_WARNING_PCT)} %以上かつ時間雨量 {n(RAIN_INTENSE_MM_H)} mm/h以上、"
            f"または傾斜速度 {n(TILT_RATE_WARNING_DEG_H)} °/h以上の観測が直近{FOREST_ALERT_WINDOW_MIN}分にありました"
            "（遅れて届いた観測は除く）。現地の状況と県・気象庁の土砂災害警戒情報を確認してください。",
            f"A live reading of the last {FOREST_ALERT_WINDOW_MIN} minutes had soil moisture (10 cm) of at least "
            f"{n(SOIL_MOISTURE_WARNING_PCT)} % with hourly rain of at least {n(RAIN_INTENSE_MM_H)} mm/h, or a "
            f"tilting rate of at least {n(TILT_RATE_WARNING_DEG_H)} deg/h. Check the site and the prefecture's "
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
            f"傾斜速度 {n(TILT_RATE_CAUTION_DEG_H)} °/h以上の観測が続いています（警戒は "
            f"{n(TILT_RATE_WARNING_DEG_H)} °/h）。センサーの設置状態も確認してください。",
            f"Tilting rate of at least {n(TILT_RATE_CAUTION_DEG_H)} deg/h (the warning is at "
            f"{n(TILT_RATE_WARNING_DEG_H)} deg/h). Check the sensor's mounting too."),
    ),
)
