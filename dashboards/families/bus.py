"""Bus ridership: the 路線バス・乗降 dashboard (docs/bus.md; measurements bus_stop, bus_segment, bus_od, bus_position)."""

from __future__ import annotations

import csv
from pathlib import Path

from dashboards.common import (
    TZ,
    T,
    where,
)
from dashboards.model import AlertRule, Dashboard, Panel, Row, Target, Text, Threshold, Variable

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
GTFS_FEED = Path(__file__).resolve().parents[2] / "scenarios" / "gtfs-tsuyama-loop"


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


#: This family's dashboards (``cityos dashboards build`` writes one JSON file each).
DASHBOARDS: tuple[Dashboard, ...] = (TRANSIT,)
#: Its rows of the environment overview (``cityos-overview``).
OVERVIEW_ROWS: tuple[Row, ...] = ()
#: Its devices' error panel on the fleet dashboard (``cityos-fleet``).
FLEET_PANELS: tuple[Panel, ...] = ()
#: Its alert rules (Grafana-managed).
ALERT_RULES: tuple[AlertRule, ...] = ()
