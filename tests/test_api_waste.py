"""The waste routes of the City OS API (cityos_api/families/truck.py, docs/trucks.md "City OS API") against real
InfluxDB 1.6.

Points are written as the ingest writes them: wire-contract ``truck_collection`` and ``truck_trip`` readings
(docs/trucks.md) through ``ingest.lineproto.batch_to_lines``. Two trucks over two JST days, 2026-11-30 and
2026-12-01 (a month boundary too): truck-01 runs a trip on the 30th and one across midnight (pickups at 23:59 and
00:01 JST, and one without a position), truck-02 one trip on the 1st with a pickup whose kg cannot be served and
one with a latitude out of range (in its district's totals and its trip, skipped from the collection points).
The district routes and the collection points read the rollups: one pass of the rollup service (``rollup.run_once``,
as of 2026-12-02) sums the days into ``waste_district_1d`` and ``waste_cell_1d`` and counts the pickups it could not
use (the negative kg; the latitude of 95, which only the cells cannot use).
"""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import influx_write

from citylab.stack import influx_settings
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.app import create_app
from cityos_api.auth import SERVICE, TokenStore, parse_expiry
from cityos_api.core import FrozenDays
from cityos_api.families import truck as truck_api
from cityos_api.opendata import JST
from cityos_api.settings import ApiSettings
from ingest.lineproto import batch_to_lines
from rollup import Report, RollupConfig, run_once

DISTRICTS = Path(__file__).resolve().parents[1] / "scenarios" / "tsuyama-districts.geojson"
D1, D2 = "2026-11-30", "2026-12-01"


def _ms(day: str, hh: int, mm: int, ss: int = 0) -> int:
    y, m, d = (int(x) for x in day.split("-"))
    return int(datetime(y, m, d, hh, mm, ss, tzinfo=JST).timestamp() * 1000)


def _pickup(truck: str, ts: int, district: str, kg: float, trip_no: int, no: int,
            pos: tuple[float, float] | None) -> Reading:
    values: dict[str, Any] = {"kg": kg, "load_kg": 1000.0, "trip_no": float(trip_no), "pickup_no": float(no)}
    units = {"kg": "kg", "load_kg": "kg"}
    if pos is not None:
        values |= {"lat": pos[0], "lon": pos[1], "fix_age_s": 0.0}
        units |= {"lat": "deg", "lon": "deg", "fix_age_s": "s"}
    return Reading(device_id=truck, kind="truck_collection", ts=ts, values=values, units=units,
                   tags={"district": district})


def _trip(truck: str, ts: int, trip_no: int, kg: float, unloaded: float, pickups: int, unknown: int,
          duration_s: float) -> Reading:
    return Reading(device_id=truck, kind="truck_trip", ts=ts, values={
        "trip_no": float(trip_no), "kg_collected": kg, "kg_unloaded": unloaded, "pickups": float(pickups),
        "pickups_unknown_district": float(unknown), "distance_km": 12.5, "duration_s": duration_s},
        units={"kg_collected": "kg", "kg_unloaded": "kg", "distance_km": "km", "duration_s": "s"})


def _write(stack_info, db: str, gateway: str, readings: list[Reading]) -> None:
    batch = checked(TelemetryBatch(gateway_id=gateway, boot_id="boot-0001", seq=1, sent_at=readings[-1].ts,
                                   readings=readings))
    influx_write(stack_info, db, batch_to_lines(batch))


CHUO_A, CHUO_B = (35.0600, 134.0050), (35.0603, 134.0049)  # one cell
ICHI_A, ICHI_B = (35.0900, 134.0100), (35.0950, 134.0150)
INNO_A, INNO_B = (35.0600, 133.9600), (35.0650, 133.9650)

#: (date, district) -> (kg, pickups), as written below
DAILY = {
    (D1, "chuo"): (120.5 + 80.25 + 50.0, 3),
    (D1, "ichinomiya"): (200.0, 1),
    (D2, "ichinomiya"): (60.0, 1),
    (D2, "innosho"): (300.0 + 150.5 + 75.0, 3),
    (D2, "unknown"): (10.0, 1),
    (D2, "chuo"): (5.0, 1),  # its latitude is out of range: in the district's total, at no collection point
}


@pytest.fixture
def waste(stack_info, influx_db) -> str:
    t1_end = _ms(D1, 11, 30)
    _write(stack_info, influx_db, "gw-truck-01", [
        # trip 1: the morning of the 30th
        _pickup("truck-01", _ms(D1, 10, 0), "chuo", 120.5, 1, 1, CHUO_A),
        _pickup("truck-01", _ms(D1, 10, 5), "chuo", 80.25, 1, 2, CHUO_A),
        _pickup("truck-01", _ms(D1, 10, 30), "ichinomiya", 200.0, 1, 3, ICHI_A),
        _trip("truck-01", t1_end, 1, 400.75, 398.0, 3, 0, 3.5 * 3600),
        # trip 2: across midnight, ends on the 1st
        _pickup("truck-01", _ms(D1, 23, 59), "chuo", 50.0, 2, 1, CHUO_B),
        _pickup("truck-01", _ms(D2, 0, 1), "ichinomiya", 60.0, 2, 2, ICHI_B),
        _pickup("truck-01", _ms(D2, 0, 20), "unknown", 10.0, 2, 3, None),
        _trip("truck-01", _ms(D2, 1, 0), 2, 120.0, 119.0, 3, 1, (_ms(D2, 1, 0) - t1_end) / 1000),
    ])
    _write(stack_info, influx_db, "gw-truck-02", [
        _pickup("truck-02", _ms(D2, 9, 0), "innosho", 300.0, 1, 1, INNO_A),
        _pickup("truck-02", _ms(D2, 9, 10), "innosho", 150.5, 1, 2, INNO_A),
        _pickup("truck-02", _ms(D2, 9, 20), "innosho", 75.0, 1, 3, INNO_B),
        # valid on the wire, unservable: a negative increase, a latitude out of range
        _pickup("truck-02", _ms(D2, 9, 30), "chuo", -5.0, 1, 4, CHUO_A),
        _pickup("truck-02", _ms(D2, 9, 40), "chuo", 5.0, 1, 5, (95.0, 134.0)),
        _trip("truck-02", _ms(D2, 10, 0), 1, 530.5, 520.0, 4, 0, 3600.0),
    ])
    return influx_db


@pytest.fixture
def rollup_report(stack_info, waste) -> Report:
    cfg = RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", waste)})
    return run_once(cfg, _ms("2026-12-02", 6, 0))


@pytest.fixture
def client(stack_info, waste, rollup_report, tmp_path):
    settings = ApiSettings.model_validate({
        "influx": influx_settings(stack_info, "reader", waste),
        "places": {"districts_file": DISTRICTS},
        "auth": {"tokens_file": tmp_path / "tokens.json"},
    })
    app = create_app(settings)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def service(tmp_path) -> dict[str, str]:
    _, tok = TokenStore(tmp_path / "tokens.json").create("waste division", [SERVICE], parse_expiry("30d"))
    return {"Authorization": f"Bearer {tok}"}


def _skipped(client: TestClient, measurement: str) -> float:
    api = client.app.state.api  # type: ignore[attr-defined]
    return api.metrics.registry.get_sample_value("cityos_api_points_skipped_total",
                                                 {"measurement": measurement}) or 0.0


def _all_pages(client: TestClient, url: str, headers: dict[str, str] | None = None) -> tuple[list[dict], int]:
    """Every row, following next_cursor (and checking the Link header agrees with it); the number of pages."""
    rows: list[dict] = []
    pages = 0
    cursor = None
    while True:
        resp = client.get(url + (f"&cursor={cursor}" if cursor else ""), headers=headers)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        rows += doc["items"]
        pages += 1
        cursor = doc.get("next_cursor")
        if cursor is None:
            assert "link" not in resp.headers
            return rows, pages
        assert resp.headers["link"].endswith(f'cursor={cursor}>; rel="next"')
        # the Link header's URL is a complete request of the next page
        nxt = client.get(resp.headers["link"][1:].split(">")[0], headers=headers).json()
        assert nxt["items"], "a next page exists"
        assert pages < 20


def test_daily_kg_per_district_and_jst_day(client, rollup_report):
    before = _skipped(client, "waste_district_1d")
    resp = client.get(f"/v1/waste/districts/daily?from={D1}&to=2026-12-02")  # open: no token
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["from"] == "2026-11-30T00:00:00+09:00" and doc["to"] == "2026-12-02T00:00:00+09:00"
    assert doc["units"] == {"kg": "kg"} and doc["time_zone"] == "Asia/Tokyo" and doc["next_cursor"] is None
    got = {(r["date"], r["district"]): (r["kg"], r["pickups"]) for r in doc["items"]}
    assert got == DAILY, "23:59 JST counts on the 30th, 00:01 JST on the 1st; the bad points nowhere"
    assert [(r["date"], r["district"]) for r in doc["items"]] == sorted(DAILY)
    chuo = next(r for r in doc["items"] if r["district"] == "chuo")
    assert (chuo["district_name_ja"], chuo["district_name_en"]) == ("中央", "Tsuyama central")
    inno = next(r for r in doc["items"] if r["district"] == "innosho")
    assert (inno["district_name_ja"], inno["district_name_en"]) == ("院庄", "Innosho")
    unknown = next(r for r in doc["items"] if r["district"] == "unknown")
    assert unknown["district_name_en"].startswith("unknown")
    # the negative kg is left out of the sums and counted, by the rollup that summed them (and the latitude of 95,
    # left out of the collection points); the rows all serve
    assert rollup_report.waste.skipped == 2 and rollup_report.waste.rows == len(DAILY)
    assert _skipped(client, "waste_district_1d") - before == 0

    one = client.get(f"/v1/waste/districts/daily?from={D2}T12:00:00%2B09:00&to={D2}T13:00:00%2B09:00"
                     "&district=innosho").json()
    assert one["from"] == "2026-12-01T00:00:00+09:00" and one["to"] == "2026-12-02T00:00:00+09:00", \
        "a day partly in the range counts whole"
    assert [(r["date"], r["kg"], r["pickups"]) for r in one["items"]] == [(D2, 525.5, 3)]
    assert client.get(f"/v1/waste/districts/daily?from=2026-11-01&to={D1}").json()["items"] == []


def test_daily_paging_returns_each_row_once(client):
    rows, pages = _all_pages(client, f"/v1/waste/districts/daily?from={D1}&to=2026-12-02&limit=2")
    assert pages == 3
    keys = [(r["date"], r["district"]) for r in rows]
    assert keys == sorted(DAILY) and len(set(keys)) == len(keys)


def test_monthly_kg_per_district(client):
    doc = client.get("/v1/waste/districts/monthly?month=2026-11").json()
    assert doc["from"] == "2026-11-01T00:00:00+09:00" and doc["to"] == "2026-12-01T00:00:00+09:00"
    assert {r["district"]: (r["kg"], r["pickups"]) for r in doc["items"]} == {
        "chuo": DAILY[(D1, "chuo")], "ichinomiya": DAILY[(D1, "ichinomiya")]}
    both = client.get("/v1/waste/districts/monthly?from=2026-11&to=2027-01").json()
    got = {(r["month"], r["district"]): (r["kg"], r["pickups"]) for r in both["items"]}
    assert got == {(d[:7], dist): v for (d, dist), v in DAILY.items()}
    assert both["items"][0]["district_name_ja"] == "中央"
    dec = client.get("/v1/waste/districts/monthly?from=2026-12&district=ichinomiya").json()
    assert [(r["month"], r["kg"]) for r in dec["items"]] == [("2026-12", 60.0)]


def test_trips_per_truck_and_day(client, service):
    resp = client.get(f"/v1/waste/trucks/truck-01/trips?date={D1}", headers=service)
    assert resp.status_code == 200, resp.text
    (t1,) = resp.json()["items"]
    assert (t1["truck"], t1["trip_no"], t1["end"], t1["kg"], t1["kg_unloaded"], t1["pickups"]) == (
        "truck-01", 1, "2026-11-30T11:30:00+09:00", 400.75, 398.0, 3)
    assert t1["start"] == "2026-11-30T08:00:00+09:00" and t1["first_pickup"] == "2026-11-30T10:00:00+09:00"
    assert [(d["district"], d["district_name_ja"], d["kg"], d["pickups"]) for d in t1["districts"]] == [
        ("chuo", "中央", 200.75, 2), ("ichinomiya", "一宮", 200.0, 1)]

    (t2,) = client.get(f"/v1/waste/trucks/truck-01/trips?date={D2}", headers=service).json()["items"]
    assert t2["trip_no"] == 2 and t2["end"] == "2026-12-01T01:00:00+09:00", "listed on the day it ended"
    assert t2["first_pickup"] == "2026-11-30T23:59:00+09:00" and t2["last_pickup"] == "2026-12-01T00:20:00+09:00"
    assert {d["district"]: (d["kg"], d["pickups"]) for d in t2["districts"]} == {
        "chuo": (50.0, 1), "ichinomiya": (60.0, 1), "unknown": (10.0, 1)}
    assert t2["pickups_unknown_district"] == 1

    doc = client.get(f"/v1/waste/trips?date={D2}", headers=service).json()
    assert [(t["truck"], t["trip_no"], t["kg"]) for t in doc["items"]] == [("truck-01", 2, 120.0),
                                                                            ("truck-02", 1, 530.5)]
    t3 = doc["items"][1]
    assert [(d["district"], d["kg"], d["pickups"]) for d in t3["districts"]] == [("chuo", 5.0, 1), ("innosho", 525.5, 3)]
    rows, pages = _all_pages(client, f"/v1/waste/trips?date={D2}&limit=1", service)
    assert pages == 2 and [(t["truck"], t["trip_no"]) for t in rows] == [("truck-01", 2), ("truck-02", 1)]
    assert client.get("/v1/waste/trucks/truck-09/trips?date=2026-11-30", headers=service).json()["items"] == []


def test_collection_points(client, service):
    url = f"/v1/waste/collection-points?from={D1}&to=2026-12-02"
    before = _skipped(client, "waste_cell_1d")
    doc = client.get(url, headers=service).json()
    assert _skipped(client, "waste_cell_1d") - before == 0, "the rollup counted the negative kg and latitude of 95"
    assert doc["pickups_without_position"] == 1
    got = {(r["lat"], r["lon"], r["district"]): (r["kg"], r["pickups"]) for r in doc["items"]}
    assert got == {
        (35.06, 134.005, "chuo"): (250.75, 3),  # three pickups 30 m apart on two days: one cell
        (35.09, 134.01, "ichinomiya"): (200.0, 1),
        (35.095, 134.015, "ichinomiya"): (60.0, 1),
        (35.06, 133.96, "innosho"): (450.5, 2),
        (35.065, 133.965, "innosho"): (75.0, 1),
    }
    assert all(r["district_name_en"] and r["cell_deg"] == 0.001 for r in doc["items"])
    assert sum(r["kg"] for r in doc["items"]) == pytest.approx(sum(kg for kg, _ in DAILY.values()) - 10.0 - 5.0)
    rows, pages = _all_pages(client, url + "&limit=2", service)
    assert pages == 3 and rows == doc["items"]
    only = client.get(url + "&district=innosho", headers=service).json()["items"]
    assert {r["district"] for r in only} == {"innosho"} and len(only) == 2
    assert client.get(url + "&district=ichinomiya", headers=service).json()["pickups_without_position"] == 0


def test_collection_points_are_whole_jst_days_of_the_rollup(client, service, stack_info, waste):
    clock = [_ms("2026-12-02", 6, 5) / 1000]
    client.app.state.api.clock = lambda: clock[0]  # type: ignore[attr-defined]
    url = f"/v1/waste/collection-points?from={D2}T09:05:00%2B09:00&to={D2}T09:15:00%2B09:00"
    doc = client.get(url, headers=service).json()
    assert doc["from"] == "2026-12-01T00:00:00+09:00" and doc["to"] == "2026-12-02T00:00:00+09:00", \
        "a day partly in the range counts whole, as the districts' days"
    got = {(r["lat"], r["lon"], r["district"]): (r["kg"], r["pickups"]) for r in doc["items"]}
    assert got == {(35.095, 134.015, "ichinomiya"): (60.0, 1), (35.06, 133.96, "innosho"): (450.5, 2),
                   (35.065, 133.965, "innosho"): (75.0, 1)}
    assert doc["pickups_without_position"] == 1
    # a pickup the rollup has not summed yet is listed after its next pass, as in the districts' days: the days
    # the rollup still recomputes are kept 10 s (RECENT_CELLS_TTL_S), so within 10 s of that pass
    _write(stack_info, waste, "gw-truck-02", [_pickup("truck-02", _ms(D2, 11, 0), "innosho", 24.5, 2, 1, INNO_A)])
    assert client.get(url, headers=service).json()["items"] == doc["items"]
    run_once(RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", waste)}),
             _ms("2026-12-02", 6, 10))

    def cells() -> dict[tuple[float, float, str], tuple[float, int]]:
        return {(r["lat"], r["lon"], r["district"]): (r["kg"], r["pickups"])
                for r in client.get(url, headers=service).json()["items"]}

    clock[0] += 5
    assert cells() == got  # kept: read 5 s ago
    clock[0] += 6  # 11 s: the first request after it refreshes behind itself, the next ones see the pass
    cells()
    for _ in range(100):
        if (again := cells()) != got:
            break
        time.sleep(0.02)
    assert again == {**got, (35.06, 133.96, "innosho"): (475.0, 3)}
    # the rollup stopped (its progress point over 7 days behind): nothing kept, each request sums its own days
    clock[0] += 9 * 86_400
    _write(stack_info, waste, "gw-truck-02", [_pickup("truck-02", _ms(D2, 12, 0), "innosho", 5.5, 2, 2, INNO_A)])
    run_once(RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", waste)}),
             _ms("2026-12-02", 6, 15))
    assert cells() == {**got, (35.06, 133.96, "innosho"): (480.5, 4)}


def test_collection_points_of_settled_days_are_kept_and_answer_as_a_fresh_read(stack_info, waste, service, tmp_path,
                                                                               monkeypatch):
    """With ``recompute_days`` 0 both days are settled (before the cells job's progress point): the API reads them
    once and keeps them; every range and district filter answers as an API that keeps nothing. A pickup landing
    in a settled day is, as documented, in neither (the rollup no longer looks at the day)."""
    cfg = RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", waste),
                                       "rollup": {"recompute_days": 0}})
    run_once(cfg, _ms("2026-12-02", 6, 0))
    settings = ApiSettings.model_validate({
        "influx": influx_settings(stack_info, "reader", waste), "places": {"districts_file": DISTRICTS},
        "auth": {"tokens_file": tmp_path / "tokens.json"}})
    urls = [f"/v1/waste/collection-points?from={D1}&to=2026-12-02", f"/v1/waste/collection-points?from={D2}",
            f"/v1/waste/collection-points?from={D1}&to={D2}", f"/v1/waste/collection-points?from={D1}&district=innosho",
            f"/v1/waste/collection-points?from={D1}&to=2026-12-02&limit=2"]
    with TestClient(create_app(settings)) as kept:
        answers = [kept.get(u, headers=service).json() for u in urls + urls]
        assert len(kept.app.state.api.frozen_days("waste_cell_1d")._days) == 2
    monkeypatch.setattr(FrozenDays, "MAX_DAYS", 0)  # an API that keeps nothing
    with TestClient(create_app(settings)) as fresh:
        for i, u in enumerate(urls):
            want = fresh.get(u, headers=service).json()
            for got in (answers[i], answers[i + len(urls)]):
                assert {k: v for k, v in got.items() if k != "generated_at"} == \
                    {k: v for k, v in want.items() if k != "generated_at"}, u
    got = {(r["lat"], r["lon"], r["district"]): (r["kg"], r["pickups"]) for r in answers[0]["items"]}
    assert got[(35.06, 134.005, "chuo")] == (250.75, 3) and answers[0]["pickups_without_position"] == 1
    assert [r["district"] for r in answers[3]["items"]] == ["innosho", "innosho"]


def test_csv(client, service):
    resp = client.get(f"/v1/waste/districts/daily?from={D1}&to=2026-12-02&format=csv")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"] == 'attachment; filename="waste-district-daily_2026-11-30.csv"'
    raw = resp.content
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    table = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert table[0] == ["date", "district", "district_name_ja", "district_name_en", "kg", "pickups"]
    assert table[1] == [D1, "chuo", "中央", "Tsuyama central", "250.75", "3"]
    assert len(table) == 1 + len(DAILY)

    resp = client.get("/v1/waste/districts/monthly?month=2026-12&format=csv")
    assert resp.headers["content-disposition"] == 'attachment; filename="waste-district-monthly_2026-12.csv"'
    resp = client.get(f"/v1/waste/trips?date={D2}&format=csv", headers=service)
    table = list(csv.reader(io.StringIO(resp.content.decode("utf-8-sig"))))
    assert table[0][:4] == ["truck", "trip_no", "start", "end"] and table[0][-1] == "districts"
    assert table[1][0] == "truck-01" and table[1][-1] == "chuo ichinomiya unknown"
    assert resp.headers["content-disposition"] == 'attachment; filename="waste-trips_2026-12-01.csv"'
    resp = client.get(f"/v1/waste/collection-points?from={D1}&to=2026-12-02&format=csv&limit=2", headers=service)
    assert resp.headers["link"].startswith("</v1/waste/collection-points?") and "format=csv" in resp.headers["link"]
    assert resp.content.decode("utf-8-sig").splitlines()[0] == ("lat,lon,cell_deg,district,district_name_ja,"
                                                                "district_name_en,pickups,kg")


@pytest.mark.parametrize(("url", "param"), [
    ("/v1/waste/districts/daily?from=yesterday", "from"),
    ("/v1/waste/districts/daily?from=2026-12-02&to=2026-12-01", "from"),
    ("/v1/waste/districts/daily?from=2025-01-01&to=2026-12-01", "to"),
    ("/v1/waste/districts/daily?district=Chuo%20Ku", "district"),
    ("/v1/waste/districts/daily?limit=0", "limit"),
    ("/v1/waste/districts/daily?cursor=bm90LWEtY3Vyc29y", "cursor"),
    ("/v1/waste/districts/daily?format=xml", "format"),
    ("/v1/waste/districts/monthly?month=2026-13", "month"),
    ("/v1/waste/districts/monthly?month=2026-11&from=2026-11", "month"),
    ("/v1/waste/districts/monthly?from=2024-01&to=2026-12", "to"),
    ("/v1/waste/districts/monthly?from=2026-1", "from"),
    ("/v1/waste/trucks/Truck%201/trips", "truck_id"),
    ("/v1/waste/trips?date=2026-02-30", "date"),
    ("/v1/waste/collection-points?from=2026-10-01&to=2026-12-01", "to"),
])
def test_a_bad_parameter_is_422_naming_it(client, service, url, param):
    resp = client.get(url, headers=service)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["detail"].startswith(f"{param}:"), resp.json()


def test_service_routes_need_a_service_token(client, service):
    for url in (f"/v1/waste/trucks/truck-01/trips?date={D1}", f"/v1/waste/trips?date={D1}",
                f"/v1/waste/collection-points?from={D1}&to=2026-12-02"):
        resp = client.get(url)
        assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer"), url
        assert client.get(url, headers=service).status_code == 200, url
    scopes = {p: op["x-scope"] for p, item in client.get("/openapi.json").json()["paths"].items()
              for op in item.values() if p.startswith("/v1/waste")}
    assert scopes == {"/v1/waste/districts/daily": "open", "/v1/waste/districts/monthly": "open",
                      "/v1/waste/trucks/{truck_id}/trips": SERVICE, "/v1/waste/trips": SERVICE,
                      "/v1/waste/collection-points": SERVICE}


def test_influxdb_down_is_503(tmp_path, service):
    settings = ApiSettings.model_validate({"influx": {"url": "http://127.0.0.1:9", "db": "x", "timeout_s": 2},
                                           "auth": {"tokens_file": tmp_path / "tokens.json"}})
    with TestClient(create_app(settings)) as c:
        for url in ("/v1/waste/districts/daily", "/v1/waste/districts/monthly", "/v1/waste/trips",
                    "/v1/waste/collection-points"):
            resp = c.get(url, headers=service)
            assert resp.status_code == 503 and resp.json()["detail"].startswith("InfluxDB unavailable"), url


#: (date, truck, trip_no) → (first pickup, last pickup, {district: (kg, pickups)}): the fixture's pickups per trip
TRIPS = {
    (D1, "truck-01", 1): ("2026-11-30T10:00:00+09:00", "2026-11-30T10:30:00+09:00",
                          {"chuo": (200.75, 2), "ichinomiya": (200.0, 1)}),
    (D2, "truck-01", 2): ("2026-11-30T23:59:00+09:00", "2026-12-01T00:20:00+09:00",
                          {"chuo": (50.0, 1), "ichinomiya": (60.0, 1), "unknown": (10.0, 1)}),
    (D2, "truck-02", 1): ("2026-12-01T09:00:00+09:00", "2026-12-01T09:40:00+09:00",
                          {"chuo": (5.0, 1), "innosho": (525.5, 3)}),
}


def _trip_view(c: TestClient, headers: dict[str, str]) -> dict[tuple[str, str, int], tuple]:
    out = {}
    for day in (D1, D2):
        resp = c.get(f"/v1/waste/trips?date={day}&limit=2000", headers=headers)
        assert resp.status_code == 200, resp.text
        for t in resp.json()["items"]:
            out[(day, t["truck"], t["trip_no"])] = (t["first_pickup"], t["last_pickup"], {
                d["district"]: (d["kg"], d["pickups"]) for d in t["districts"]})
    return out


def test_trips_are_the_raw_truth_whatever_the_rollup_has_done(stack_info, waste, service, tmp_path, monkeypatch):
    # trip 1's number on a pickup after trip 1 ended (in trip 2's span): in no trip, and its day's row for trip 1
    # only partly in trip 1's span (the API then attaches truck-01's pickups one by one)
    _write(stack_info, waste, "gw-truck-01", [_pickup("truck-01", _ms(D1, 12, 0), "chuo", 7.0, 1, 4, CHUO_A)])
    settings = ApiSettings.model_validate({
        "influx": influx_settings(stack_info, "reader", waste), "places": {"districts_file": DISTRICTS},
        "auth": {"tokens_file": tmp_path / "tokens.json"}})
    cfg = RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", waste)})
    with TestClient(create_app(settings)) as c:
        assert _trip_view(c, service) == TRIPS, "no rollup pass yet: every pickup read raw"
        before = _skipped(c, "waste_collection")
        # as of the 1st, 06:00: the 30th from the rollup's rows, the 1st too up to 06:00, then raw (trip 2 crosses
        # midnight)
        run_once(cfg, _ms(D2, 6, 0))
        assert _trip_view(c, service) == TRIPS
        # 09:35, in the middle of truck-02's trip: its pickups up to then from today's rows, the rest raw
        run_once(cfg, _ms(D2, 9, 35))
        assert _trip_view(c, service) == TRIPS
        # a reader that read the progress point of the pass before (06:00) meets today's rows of the 09:35 pass:
        # those trucks are read raw, not counted twice
        real = truck_api.job_progress
        monkeypatch.setattr(truck_api, "job_progress", lambda q, db, job: _ms(D2, 6, 0) if job == "waste_trips"
                            else real(q, db, job))
        assert _trip_view(c, service) == TRIPS
        monkeypatch.setattr(truck_api, "job_progress", real)
        assert _skipped(c, "waste_collection") - before >= 2, "the negative kg, read raw at 06:00 and just now"
        before = _skipped(c, "waste_collection")
        run_once(cfg, _ms("2026-12-02", 6, 0))  # both days rolled up
        assert _trip_view(c, service) == TRIPS
        assert _skipped(c, "waste_collection") - before == 0, \
            "the negative kg, rolled up at 09:35: the rollup counts it, the readers no longer meet it"
        assert _skipped(c, "waste_trip_district_1d") == 0
        # a late pickup of trip 2 lands in the answer at the rollup's next pass, as it would read raw
        _write(stack_info, waste, "gw-truck-01", [_pickup("truck-01", _ms(D2, 0, 30), "chuo", 2.5, 2, 4, None)])
        run_once(cfg, _ms("2026-12-02", 6, 10))
        first, _, districts = TRIPS[(D2, "truck-01", 2)]
        assert _trip_view(c, service)[(D2, "truck-01", 2)] == (
            first, "2026-12-01T00:30:00+09:00", {**districts, "chuo": (52.5, 2)})
