"""The dashboards and alert rules of the environment division (環境部局), as data (types: ``dashboards/model.py``).

Read by ``dashboards/build.py`` (Grafana provisioning), ``dashboards/preview.py`` (PNG previews) and the tests that
run every query against InfluxDB 1.6. Queries are InfluxQL exactly as Grafana sends them, macros left in; their
conventions are in ``dashboards/common.py``.

Each device family brings its own section (``dashboards/families/<family>.py``: its dashboards, its rows of the
overview, its error panel on the fleet dashboard, its alert rules), found through the family registry
(:data:`cityos.families.FAMILIES`); this module puts them together with the two views across families, the
environment overview and the fleet, and re-exports each family's named thresholds.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cityos.families import FAMILIES
from dashboards.common import GATEWAY, V_DISTRICT_ALL, V_GATEWAY, T, live_only, where
from dashboards.families.bus import (
    BUS_CROWDED_PCT,
    BUS_FEW_SEATS_PCT,
    BUS_STANDING_PCT,
    MIN_OD_RIDERS,
    TRANSIT,
    V_ROUTE,
)
from dashboards.families.forest import (
    FOREST,
    FOREST_ALERT_WINDOW_MIN,
    RAIN_CUMULATIVE_CAUTION_MM,
    RAIN_CUMULATIVE_WARNING_MM,
    RAIN_EXTREME_MM_H,
    RAIN_INTENSE_MM_H,
    RAIN_VERY_INTENSE_MM_H,
    SOIL_MOISTURE_WARNING_PCT,
    TILT_RATE_CAUTION_DEG_H,
    TILT_RATE_WARNING_DEG_H,
)
from dashboards.families.meter import ENERGY, MIN_HOUSEHOLDS
from dashboards.families.truck import WASTE
from dashboards.model import AlertRule, Dashboard, Panel, Row, Target, Threshold

__all__ = [
    "ALERT_RULES", "BACKLOG_AGE_LIMIT_S", "BUS_CROWDED_PCT", "BUS_FEW_SEATS_PCT", "BUS_STANDING_PCT", "DASHBOARDS",
    "ENERGY", "FLEET", "FOREST", "FOREST_ALERT_WINDOW_MIN", "GATEWAY_KNOWN_DAYS", "GATEWAY_OFFLINE_MIN",
    "MIN_HOUSEHOLDS", "MIN_OD_RIDERS", "OVERVIEW", "RAIN_CUMULATIVE_CAUTION_MM", "RAIN_CUMULATIVE_WARNING_MM",
    "RAIN_EXTREME_MM_H", "RAIN_INTENSE_MM_H", "RAIN_VERY_INTENSE_MM_H", "SOIL_MOISTURE_WARNING_PCT",
    "TILT_RATE_CAUTION_DEG_H", "TILT_RATE_WARNING_DEG_H", "TRANSIT", "V_ROUTE", "WASTE", "live_only",
]

#: Every family's dashboards section, in the registry's order.
_PARTS: tuple[ModuleType, ...] = tuple(importlib.import_module(f.dashboards_module) for f in FAMILIES)

# --------------------------------------------------------------------------------------------------------------
# Thresholds of the views across families (each family's are in its module)

#: A gateway that sent no status message for this long is offline (status every 60 s by default).
GATEWAY_OFFLINE_MIN = 15
#: How far back the offline rule remembers gateways (one silent for longer drops out of the rule).
GATEWAY_KNOWN_DAYS = 7
#: A gateway's oldest unsent reading older than this: the backlog is not draining.
BACKLOG_AGE_LIMIT_S = 3600.0


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
        *(row for part in _PARTS for row in part.OVERVIEW_ROWS),
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
        Row(T("現場機器の通信エラー（種別ごと、毎分）", "Field device errors per family (per minute)"),
            tuple(p for part in _PARTS for p in part.FLEET_PANELS)),
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

#: Every dashboard: the overview, each family's, the fleet.
DASHBOARDS: tuple[Dashboard, ...] = (OVERVIEW, *(d for part in _PARTS for d in part.DASHBOARDS), FLEET)


# --------------------------------------------------------------------------------------------------------------
# Alert rules (Grafana-managed)


def _gateway_silence_query() -> str:
    """Per gateway known in the last GATEWAY_KNOWN_DAYS days: status messages in the last GATEWAY_OFFLINE_MIN
    minutes (0 when silent: the second subquery gives every known gateway a series)."""
    recent = (f'(SELECT count("backlog_depth") AS "n" FROM "gateway_status" '
              f'WHERE time > now() - {GATEWAY_OFFLINE_MIN}m GROUP BY "gateway")')
    known = (f'(SELECT last("backlog_depth") * 0 AS "n" FROM "gateway_status" '
             f'WHERE time > now() - {GATEWAY_KNOWN_DAYS}d GROUP BY "gateway")')
    return f'SELECT sum("n") AS "status_messages" FROM {recent}, {known} GROUP BY "gateway"'




#: The fleet's own rules (gateways, the ingest), after every family's.
_FLEET_RULES: tuple[AlertRule, ...] = (
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

ALERT_RULES: tuple[AlertRule, ...] = (*(r for part in _PARTS for r in part.ALERT_RULES), *_FLEET_RULES)
