"""The forest stations' routes (cityos_api/families/forest.py) against real InfluxDB 1.6, and the kernel's
landslide criteria (cityos/landslide.py) they share with the Grafana alert rules.

Points are written as the ingest writes them: wire-contract ``forest_station`` readings through
``ingest.lineproto.batch_to_lines``. A small storm for three stations, a reading every 5 minutes from 2 h before
a JST midnight to 3 h after it (the API's clock is frozen 5 minutes after the last reading):

* forest-01-01: wet soil and intense rain exactly at the thresholds (40 %, 30 mm/h) for its last 10 readings
  (and 3 readings earlier), just below them in two readings; it moved 100 m with its newest reading;
* forest-01-02: a slope creeping: tilting rates exactly at caution (0.1, -0.1 deg/h) then warning (0.5 deg/h),
  with two readings just below caution in between (less than the window apart: one episode); its newest reading
  came late (backfill: not live, not counted by the rule);
* forest-02-01: one reading at -0.5 deg/h; silent for the last 35 minutes (stale).
"""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import influx_write
from prometheus_client.parser import text_string_to_metric_families

from citylab.stack import influx_settings
from cityos import landslide as ls
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.app import create_app
from cityos_api.auth import FLEET, TokenStore, parse_expiry
from cityos_api.families.forest import AGGREGATES, FIELDS, episode, episodes
from cityos_api.opendata import JST
from cityos_api.settings import ApiSettings, InfluxSettings
from ingest.lineproto import batch_to_lines
from rollup import RollupConfig, run_once

MIN = 60_000
T0 = int(datetime(2025, 6, 10, tzinfo=JST).timestamp() * 1000)  # a JST midnight
START = T0 - 120 * MIN
N = 60
NOW = START + N * 5 * MIN  # T0 + 3 h; the last reading is at NOW - 5 min
A, B, C = "forest-01-01", "forest-01-02", "forest-02-01"
POS = {A: (35.1360, 133.9780), B: (35.1420, 133.9960), C: (35.2000, 134.1000)}


def t(i: int) -> int:
    return START + i * 5 * MIN


def _values(station: str, i: int) -> dict[str, float]:
    lat, lon = POS[station]
    if station == A and i == N - 1:
        lat += 0.0009  # moved about 100 m with its newest reading
    v: dict[str, float] = {
        "soil_moisture_pct": 35.0, "soil_moisture_deep_pct": 30.0 + (i % 3), "rain_tips": float(i * 3),
        "rain_mm": (i % 4) * 0.5, "rain_intensity_mm_h": 10.0, "rain_cumulative_mm": float(i),
        "tilt_x_deg": 1.0 + i * 0.01, "tilt_y_deg": -0.5, "battery_v": 12.5 - i * 0.01, "status": 0.0,
        "lat": lat, "lon": lon,
    }
    if i >= 11:  # no rate in a station's first 50 minutes
        v["tilt_rate_x_deg_h"] = 0.0
        v["tilt_rate_y_deg_h"] = 0.0
    if station == A:
        if 10 <= i <= 12:
            v.update(soil_moisture_pct=41.0, rain_intensity_mm_h=31.0)
        elif i == 20:
            v.update(soil_moisture_pct=39.9, rain_intensity_mm_h=30.0)
        elif i == 21:
            v.update(soil_moisture_pct=40.0, rain_intensity_mm_h=29.9)
        elif i >= 50:
            v.update(soil_moisture_pct=40.0, rain_intensity_mm_h=30.0)
    elif station == B:
        if 40 <= i <= 44:
            v["tilt_rate_x_deg_h"] = 0.1
        elif i in (45, 46):
            v["tilt_rate_x_deg_h"] = 0.0999
        elif 47 <= i <= 54:
            v["tilt_rate_y_deg_h"] = -0.1
        elif i >= 55:
            v["tilt_rate_x_deg_h"] = 0.5
    else:
        v["water_level_m"] = 1.25 + i * 0.01
        if i == 30:
            v["tilt_rate_x_deg_h"] = -0.5
    return v


def _readings(station: str) -> list[tuple[int, dict[str, float], bool]]:
    last = 53 if station == C else N - 1
    return [(t(i), _values(station, i), station == B and i == N - 1) for i in range(last + 1)]


def _write(stack_info, db: str, gateway: str, readings: list[Reading]) -> None:
    batch = checked(TelemetryBatch(gateway_id=gateway, boot_id="boot-0001", seq=1, sent_at=readings[-1].ts,
                                   readings=readings))
    influx_write(stack_info, db, batch_to_lines(batch))


def _settings(stack_info, db: str, tmp_path) -> ApiSettings:
    return ApiSettings.model_validate({
        "influx": InfluxSettings(**influx_settings(stack_info, "reader", db)),
        "auth": {"tokens_file": tmp_path / "tokens.json"},
        "rate_limit": {"open_per_minute": 1e6, "burst": 100_000},
    })


def _client(stack_info, db: str, tmp_path, now_ms: int = NOW) -> TestClient:
    client = TestClient(create_app(_settings(stack_info, db, tmp_path)))
    client.app.state.api.clock = lambda: now_ms / 1000
    return client


@pytest.fixture(scope="module", params=["raw", "rolled-up"])
def storm(request, stack, stack_info) -> Any:
    """The storm's database (module-wide: written once, dropped at the end); every route's test runs on raw points
    alone and again with the rollups made by a pass 100 minutes before the API's clock: rows up to there (days,
    hours, 10 minutes and alert readings), raw points after it. The answers must not differ."""
    db = f"t_forest_storm_{request.param.replace('-', '_')}"
    stack.create_database(db)
    for gw, stations in (("gw-forest-01", (A, B)), ("gw-forest-02", (C,))):
        rs = [Reading(device_id=s, kind="forest_station", ts=ts, values=v, backfill=bf)
              for s in stations for ts, v, bf in _readings(s)]
        _write(stack_info, db, gw, rs)
    if request.param == "rolled-up":
        rep = run_once(RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", db)}),
                       NOW - 100 * MIN)
        assert rep.forest.until_ms == NOW - 100 * MIN and rep.forest.rows > 0
    yield db
    stack.drop_database(db)


@pytest.fixture
def api(stack_info, storm, tmp_path) -> Any:
    with _client(stack_info, storm, tmp_path) as client:
        yield client


def _get(client: TestClient, path: str, **params: Any) -> Any:
    resp = client.get(path, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, JST).isoformat(timespec="seconds")


# ---- the kernel


@pytest.mark.parametrize(("values", "level", "criteria"), [
    ({"soil_moisture_pct": 40.0, "rain_intensity_mm_h": 30.0}, "warning", ("soil_moisture_and_rain",)),
    ({"soil_moisture_pct": 39.99, "rain_intensity_mm_h": 30.0}, "none", ()),
    ({"soil_moisture_pct": 40.0, "rain_intensity_mm_h": 29.99}, "none", ()),
    ({"soil_moisture_pct": 40.0}, "none", ()),  # an absent value meets nothing, as in InfluxQL
    ({"tilt_rate_x_deg_h": 0.5}, "warning", ("tilt_rate_warning", "tilt_rate_caution")),
    ({"tilt_rate_y_deg_h": -0.5}, "warning", ("tilt_rate_warning", "tilt_rate_caution")),
    ({"tilt_rate_x_deg_h": 0.4999}, "caution", ("tilt_rate_caution",)),
    ({"tilt_rate_y_deg_h": 0.1}, "caution", ("tilt_rate_caution",)),
    ({"tilt_rate_x_deg_h": -0.1}, "caution", ("tilt_rate_caution",)),
    ({"tilt_rate_x_deg_h": 0.0999, "tilt_rate_y_deg_h": -0.0999}, "none", ()),
    ({"soil_moisture_pct": "wet", "rain_intensity_mm_h": 30.0, "tilt_rate_x_deg_h": True}, "none", ()),
    ({"soil_moisture_pct": 45.0, "rain_intensity_mm_h": 50.0, "tilt_rate_y_deg_h": 0.2}, "warning",
     ("soil_moisture_and_rain", "tilt_rate_caution")),
])
def test_assess_decides_as_the_alert_rules(values, level, criteria):
    a = ls.assess(values)
    assert (a.level, a.criteria) == (level, criteria)


def test_kernel_is_the_dashboards_source():
    from dashboards.families import forest as dash

    for name in ("RAIN_INTENSE_MM_H", "SOIL_MOISTURE_WARNING_PCT", "TILT_RATE_CAUTION_DEG_H",
                 "TILT_RATE_WARNING_DEG_H", "FOREST_ALERT_WINDOW_MIN", "TILT_RATE_FIELDS"):
        assert getattr(dash, name) is getattr(ls, name)
    assert ls.highest([]).level == "none"
    assert ls.highest([ls.assess({"tilt_rate_x_deg_h": 0.2}), ls.assess(
        {"soil_moisture_pct": 40.0, "rain_intensity_mm_h": 30.0})]).criteria == (
        "soil_moisture_and_rain", "tilt_rate_caution")


def test_episodes_join_readings_less_than_the_window_apart():
    w = ls.FOREST_ALERT_WINDOW_MIN * MIN
    caution, warning, none = (ls.assess({"tilt_rate_x_deg_h": x}) for x in (0.1, 0.5, 0.0))
    eps = episodes([("s", 0, caution), ("s", w - 1, warning), ("s", 2 * w - 2, caution),  # joined
                    ("s", 3 * w - 2, caution),  # exactly the window after: a new episode
                    ("s", 3 * w + 5, none), ("r", 10, caution)])
    assert [(e.station, e.first_ms, e.last_ms, e.readings) for e in eps] == [
        ("s", 0, 2 * w - 2, 3), ("r", 10, 10, 1), ("s", 3 * w - 2, 3 * w - 2, 1)]
    assert episode(eps[0], 2 * w - 2 + w)["end"] is not None and episode(eps[0], 2 * w - 3 + w)["end"] is None
    assert eps[0].level == "warning" and eps[2].level == "caution"


# ---- stations


def test_stations_latest_values_positions_and_levels(api):
    doc = _get(api, "/v1/forest/stations")
    assert doc["units"]["rain_intensity_mm_h"] == "mm/h" and doc["units"]["tilt_rate_x_deg_h"] == "deg/h"
    assert doc["units"]["soil_moisture_pct"] == "%" and doc["units"]["water_level_m"] == "m"
    assert doc["alert_window_min"] == ls.FOREST_ALERT_WINDOW_MIN
    items = {s["station"]: s for s in doc["items"]}
    assert list(items) == [A, B, C]
    assert items[A]["gateway"] == "gw-forest-01" and items[C]["gateway"] == "gw-forest-02"

    # latest reading: every field as written, the time in JST
    for st in (A, B, C):
        ts, values, backfill = _readings(st)[-1]
        latest = items[st]["latest"]
        assert latest["time"] == _iso(ts)
        assert latest["backfill"] is backfill
        for f in FIELDS:
            if f in values:
                assert latest[f] == pytest.approx(values[f]), (st, f)
            else:
                assert latest[f] is None, (st, f)
        assert items[st]["position"] == {"lat": pytest.approx(values["lat"]), "lon": pytest.approx(values["lon"])}
    assert items[A]["position"]["lat"] == pytest.approx(POS[A][0] + 0.0009)  # the newest point's

    # levels: the kernel's assessment of the live readings in the window (time > now - 20 min: t57..t59)
    window = [i for i in range(N) if t(i) > NOW - ls.FOREST_ALERT_WINDOW_MIN * MIN]
    assert window == [57, 58, 59]
    for st, live in ((A, window), (B, [57, 58])):  # B's t59 came as backfill: not live
        want = ls.highest(ls.assess(_values(st, i)) for i in live)
        got = items[st]
        assert got["stale"] is False
        assert got["alert"] == {"level": want.level, "criteria": list(want.criteria), "live_readings": len(live)}
    assert items[A]["alert"]["level"] == "warning" and items[A]["alert"]["criteria"] == ["soil_moisture_and_rain"]
    assert items[B]["alert"]["criteria"] == ["tilt_rate_warning", "tilt_rate_caution"]
    assert items[C]["stale"] is True
    assert items[C]["alert"] == {"level": "unknown", "criteria": [], "live_readings": 0}

    one = _get(api, f"/v1/forest/stations/{B}")
    assert {k: one[k] for k in items[B]} == items[B]


def test_stations_silent_for_days_keep_their_newest_reading(stack_info, storm, tmp_path):
    """The newest readings are looked for in the last day first: stations silent longer are still listed with
    theirs, stale, and one silent station found alone."""
    later = NOW + 3 * 86_400_000
    with _client(stack_info, storm, tmp_path, now_ms=later) as client:
        items = {s["station"]: s for s in _get(client, "/v1/forest/stations")["items"]}
        assert list(items) == [A, B, C]
        for st in (A, B, C):
            assert items[st]["latest"]["time"] == _iso(_readings(st)[-1][0]) and items[st]["stale"] is True
        assert _get(client, f"/v1/forest/stations/{C}")["latest"] == items[C]["latest"]


def test_stations_csv_has_bom_and_header(api):
    resp = api.get("/v1/forest/stations", params={"format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert resp.content.startswith("\ufeff".encode())
    assert 'filename="forest-stations.csv"' in resp.headers["content-disposition"]
    text = resp.content.decode("utf-8-sig")
    assert "\r\n" in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["station"] for r in rows] == [A, B, C]
    assert rows[0]["alert_level"] == "warning" and rows[2]["stale"] == "true"
    assert float(rows[0]["soil_moisture_pct"]) == 40.0


# ---- history


def test_raw_readings_page_through_every_row_once(api):
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params = {"from": _iso(START), "to": _iso(NOW), "limit": 7, **({"cursor": cursor} if cursor else {})}
        resp = api.get(f"/v1/forest/stations/{A}/readings", params=params)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        seen += doc["items"]
        pages += 1
        cursor = doc["next_cursor"]
        if cursor is None:
            assert "link" not in resp.headers
            break
        assert resp.headers["link"].endswith('>; rel="next"') and "cursor=" in resp.headers["link"]
    assert pages == 9
    assert [r["time"] for r in seen] == [_iso(t(i)) for i in range(N)]
    for i, row in enumerate(seen):
        a = ls.assess(_values(A, i))
        assert (row["alert_level"], row["alert_criteria"]) == (a.level, list(a.criteria))
        assert row["rain_mm"] == _values(A, i)["rain_mm"]
    assert seen[20]["alert_level"] == "none" and seen[50]["alert_level"] == "warning"


def _expected_buckets(station: str, step_ms: int, offset_ms: int = 0) -> dict[int, dict[str, Any]]:
    groups: dict[int, list[dict[str, float]]] = {}
    for ts, v, _ in _readings(station):
        groups.setdefault((ts + offset_ms) // step_ms * step_ms - offset_ms, []).append(v)
    out = {}
    for start, vs in groups.items():
        row: dict[str, Any] = {"readings": len(vs)}
        for col, fn, f in AGGREGATES:
            xs = [v[f] for v in vs if f in v]
            row[col] = None if not xs else {"mean": sum(xs) / len(xs), "sum": sum(xs), "max": max(xs)}[fn]
        out[start] = row
    return out


@pytest.mark.parametrize(("interval", "step", "offset"), [("1h", 3_600_000, 0), ("1d", 86_400_000, 9 * 3_600_000)])
def test_aggregates_are_the_sums_and_means_of_what_was_written(api, interval, step, offset):
    for st in (A, C):
        doc = _get(api, f"/v1/forest/stations/{st}/readings", **{"from": _iso(START), "to": _iso(NOW)},
                   interval=interval)
        want = _expected_buckets(st, step, offset)
        got = {row["start"]: row for row in doc["items"]}
        assert list(got) == [_iso(s) for s in sorted(want)]
        for s, w in want.items():
            row = got[_iso(s)]
            assert row["end"] == _iso(s + step)
            for k, v in w.items():
                assert row[k] == (None if v is None else pytest.approx(v)), (st, interval, s, k)
    # 1d: JST days, so the storm is cut at the JST midnight T0
    if interval == "1d":
        assert [r["start"] for r in doc["items"]] == ["2025-06-09T00:00:00+09:00", "2025-06-10T00:00:00+09:00"]
        assert doc["items"][0]["readings"] == 24


def test_aggregated_pages_cover_every_bucket_once(api):
    rows, cursor = [], None
    for _ in range(20):
        params = {"from": _iso(START + 3 * MIN), "to": _iso(NOW), "interval": "10m", "limit": 4}
        doc = _get(api, f"/v1/forest/stations/{B}/readings", **params, **({"cursor": cursor} if cursor else {}))
        rows += doc["items"]
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert [r["start"] for r in rows] == [_iso(START + k * 10 * MIN) for k in range(N // 2)]
    assert sum(r["readings"] for r in rows) == N
    # a page reads ahead only as far as it can hold, then on past buckets without a reading (two days before the
    # storm here): pages of 2 hours give every bucket of one page of 500
    wide = {"from": _iso(START - 2 * 86_400_000), "to": _iso(NOW), "interval": "1h"}
    whole = _get(api, f"/v1/forest/stations/{B}/readings", **wide, limit=500)["items"]
    paged, cursor = [], None
    for _ in range(20):
        doc = _get(api, f"/v1/forest/stations/{B}/readings", **wide, limit=2, **({"cursor": cursor} if cursor else {}))
        paged += doc["items"]
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert paged == whole and len(whole) >= 4 and whole[0]["start"] >= _iso(START - 3_600_000)
    csv_resp = api.get(f"/v1/forest/stations/{B}/readings", params={**params, "format": "csv"})
    header = csv_resp.content.decode("utf-8-sig").split("\r\n")[0].split(",")
    assert header[:3] == ["start", "end", "readings"] and "rain_intensity_mm_h_max" in header


# ---- alerts


def test_alert_episodes(api):
    w = ls.FOREST_ALERT_WINDOW_MIN * MIN
    doc = _get(api, "/v1/forest/alerts", **{"from": _iso(START), "to": _iso(NOW)})
    got = [(e["station"], e["level"], e["start"], e["end"], e["criteria"], e["readings"]) for e in doc["items"]]
    assert got == [
        (A, "warning", _iso(t(10)), _iso(t(12) + w), ["soil_moisture_and_rain"], 3),
        (C, "warning", _iso(t(30)), _iso(t(30) + w), ["tilt_rate_warning", "tilt_rate_caution"], 1),
        (B, "warning", _iso(t(40)), None, ["tilt_rate_warning", "tilt_rate_caution"], 5 + 8 + 5),
        (A, "warning", _iso(t(50)), None, ["soil_moisture_and_rain"], 10),
    ]
    assert doc["items"][2]["ongoing"] is True and doc["items"][0]["ongoing"] is False
    only_c = _get(api, "/v1/forest/alerts", **{"from": _iso(START), "to": _iso(NOW)}, station_id=C)
    assert [e["station"] for e in only_c["items"]] == [C]
    # one per page: each episode exactly once
    paged, cursor = [], None
    for _ in range(10):
        p = _get(api, "/v1/forest/alerts", **{"from": _iso(START), "to": _iso(NOW)}, limit=1,
                 **({"cursor": cursor} if cursor else {}))
        paged += p["items"]
        cursor = p["next_cursor"]
        if cursor is None:
            break
    assert paged == doc["items"]
    # an episode overlapping the range's start is served whole
    late = _get(api, "/v1/forest/alerts", **{"from": _iso(t(12) + 5 * MIN), "to": _iso(t(35))})
    assert [(e["station"], e["start"]) for e in late["items"]] == [(A, _iso(t(10))), (C, _iso(t(30)))]



def test_alert_episodes_after_the_rollup_are_at_most_ten_seconds_behind(stack_info, influx_db, tmp_path):
    """The raw readings after the rollup's progress point are read for every station at most every 10 s
    (``ALERT_TAIL_TTL_S``, as the station list): a reading at warning is an episode within that, never later."""
    st = "forest-tail-01"

    def reading(at: int, rate: float) -> str:
        return (f"forest,device={st},gateway=gw-tail-01 soil_moisture_pct=20,rain_intensity_mm_h=0,"
                f"tilt_rate_x_deg_h={rate},tilt_rate_y_deg_h=0,status=0,backfill=false {at}")

    influx_write(stack_info, influx_db, [reading(NOW - k * 5 * MIN, 0.0) for k in range(1, 30)])
    rep = run_once(RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", influx_db)}),
                   NOW - 60 * MIN)
    assert rep.forest.until_ms == NOW - 60 * MIN
    influx_write(stack_info, influx_db, [reading(NOW - 8000, 0.6)])
    clock = [NOW / 1000]

    def alerts(**params: Any) -> list[tuple[str, str, str, int]]:
        return [(e["station"], e["level"], e["start"], e["readings"])
                for e in _get(client, "/v1/forest/alerts", **params)["items"]]

    with TestClient(create_app(_settings(stack_info, influx_db, tmp_path))) as client:
        client.app.state.api.clock = lambda: clock[0]
        assert alerts() == [(st, "warning", _iso(NOW - 8000), 1)]
        influx_write(stack_info, influx_db, [reading(NOW - 3000, 0.6)])
        clock[0] += 5
        assert alerts() == [(st, "warning", _iso(NOW - 8000), 1)]  # kept: read 5 s ago
        clock[0] += 6  # 11 s: the first request after it refreshes behind itself, the next ones see it
        alerts()
        for _ in range(100):
            if (got := alerts()) != [(st, "warning", _iso(NOW - 8000), 1)]:
                break
            time.sleep(0.02)
        assert got == [(st, "warning", _iso(NOW - 8000), 2)]
        # the rollup stopped (over 6 h behind): nothing kept, every request reads its own range
        clock[0] = (NOW + 7 * 3_600_000) / 1000
        assert len(alerts()) == 1
        influx_write(stack_info, influx_db, [reading(NOW + 7 * 3_600_000 - 3000, 0.6)])
        assert [e[2] for e in alerts()] == [_iso(NOW - 8000), _iso(NOW + 7 * 3_600_000 - 3000)]

# ---- errors


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/v1/forest/stations/Forest_01", {}, "station_id"),
    ("/v1/forest/stations/forest%2001", {}, "station_id"),
    (f"/v1/forest/stations/{'x' * 65}", {}, "station_id"),
    (f"/v1/forest/stations/{A}/readings", {"interval": "5m"}, "interval"),
    (f"/v1/forest/stations/{A}/readings", {"from": "2025-06-01", "to": "2025-06-09"}, "to"),
    (f"/v1/forest/stations/{A}/readings", {"interval": "1h", "from": "2025-01-01", "to": "2025-06-09"}, "to"),
    (f"/v1/forest/stations/{A}/readings", {"from": "yesterday"}, "from"),
    (f"/v1/forest/stations/{A}/readings", {"limit": 0}, "limit"),
    (f"/v1/forest/stations/{A}/readings", {"limit": 100_001}, "limit"),
    (f"/v1/forest/stations/{A}/readings", {"limit": 1_001}, "limit"),  # raw: 1,000 a page
    (f"/v1/forest/stations/{A}/readings", {"interval": "1h", "limit": 501}, "limit"),  # buckets: 500 a page
    (f"/v1/forest/stations/{A}/readings", {"interval": "10m", "from": "2025-06-01", "to": "2025-06-09"}, "to"),
    (f"/v1/forest/stations/{A}/readings", {"cursor": "bm9wZQ"}, "cursor"),
    ("/v1/forest/alerts", {"station_id": "A;DROP"}, "station_id"),
    ("/v1/forest/alerts", {"from": "2025-01-01", "to": "2025-06-01"}, "to"),
    ("/v1/forest/stations", {"format": "xml"}, "format"),
])
def test_bad_parameters_are_422_naming_them(api, path, params, param):
    resp = api.get(path, params=params)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["detail"].startswith(param), resp.json()


def test_unknown_station_is_404(api):
    for path in ("/v1/forest/stations/forest-99-99", "/v1/forest/stations/forest-99-99/readings"):
        resp = api.get(path)
        assert resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json"
        assert "forest-99-99" in resp.json()["detail"]


def test_routes_are_open_in_openapi(api):
    paths = api.get("/openapi.json").json()["paths"]
    forest = {p: item["get"] for p, item in paths.items() if p.startswith("/v1/forest")}
    assert set(forest) == {"/v1/forest/stations", "/v1/forest/stations/{station_id}",
                           "/v1/forest/stations/{station_id}/readings", "/v1/forest/alerts"}
    assert all(op["x-scope"] == "open" for op in forest.values())


# ---- bad stored points


def test_bad_stored_points_are_skipped_and_counted(stack_info, influx_db, tmp_path):
    now = NOW
    lines = [
        f"forest,device=forest-bad-01,gateway=gw-bad-01 lat=35.1,lon=134.0,rain_mm=0.5,status=0,backfill=false "
        f"{now - 10 * MIN}",
        f"forest,device=forest-bad-01,gateway=gw-bad-01 lat=95.0,lon=134.0,rain_mm=0.5,status=0,backfill=false "
        f"{now - 5 * MIN}",
        f'forest,device=forest-bad-02,gateway=gw-bad-01 soil_moisture_pct="wet",rain_mm=1.0,status=0,'
        f"backfill=false {now - 5 * MIN}",
    ]
    influx_write(stack_info, influx_db, lines)
    _, token = TokenStore(tmp_path / "tokens.json").create("ops", [FLEET], parse_expiry("1d"))
    with _client(stack_info, influx_db, tmp_path, now) as client:
        items = {s["station"]: s for s in _get(client, "/v1/forest/stations")["items"]}
        # bad-01: the newest point has lat 95: the one before it is served
        assert items["forest-bad-01"]["latest"]["time"] == _iso(now - 10 * MIN)
        assert items["forest-bad-01"]["position"] == {"lat": 35.1, "lon": 134.0}
        assert items["forest-bad-01"]["alert"]["live_readings"] == 1
        # bad-02: its only point has a string soil moisture: listed, without a reading
        assert items["forest-bad-02"]["latest"] is None and items["forest-bad-02"]["stale"] is True
        expected = 2  # each bad point once per request, though both queries read it
        raw = _get(client, "/v1/forest/stations/forest-bad-02/readings", **{"from": _iso(now - 3_600_000)})
        assert raw["items"] == []
        expected += 1
        hourly = _get(client, "/v1/forest/stations/forest-bad-02/readings", interval="1h",
                      **{"from": _iso(now - 3_600_000)})
        assert [(r["readings"], r["rain_mm"], r["soil_moisture_pct"]) for r in hourly["items"]] == [(1, 1.0, None)]
        expected += 1
        alerts = _get(client, "/v1/forest/alerts")
        assert alerts["items"] == []
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert metrics.status_code == 200
    fams = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    skipped = {s.labels["measurement"]: s.value for s in fams["cityos_api_points_skipped"].samples
               if s.name.endswith("_total")}
    assert skipped == {"forest": expected}
    statuses = {s.labels["status"] for s in fams["cityos_api_requests"].samples if s.name.endswith("_total")}
    assert statuses == {"200"}
