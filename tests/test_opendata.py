"""Open data from the buses (cityos_api/opendata.py, the /open/v1/bus/* routes of cityos_api/app.py).

The suppression is checked twice: on small hand-made tables against an independent oracle (numpy's rank for
"is this hidden cell determined by the totals a reader knows", brute force for "which values could it have"),
and through the API against the real InfluxDB 1.6 of the test stack, filled with wire-contract ``bus_stop`` and
``bus_od`` points as the ingest writes them. Expected numbers are written from the points, not from the code.
"""

from __future__ import annotations

import csv
import io
import itertools
import secrets
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import influx_query, influx_write
from pydantic import ValidationError

from citylab.stack import influx_settings
from cityos.config import ConfigError
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.app import create_app
from cityos_api.opendata import determined, suppress
from cityos_api.settings import ApiSettings, InfluxSettings, OpenDataSettings, load_settings
from ingest.lineproto import batch_to_lines

JST = ZoneInfo("Asia/Tokyo")
K = 10

# ---- the suppression on hand-made tables ------------------------------------------------------------------


def _recoverable(hidden: list[Any], relations: list[dict[Any, int]]) -> set[Any]:
    """Oracle (floating-point linear algebra, independent of opendata.determined): hidden cells whose value
    follows from the relations once the published cells are known. x is determined iff appending its unit
    vector to the relations' matrix (restricted to hidden cells) does not raise the rank."""
    if not hidden:
        return set()
    a = np.array([[rel.get(h, 0) for h in hidden] for rel in relations] or [[0] * len(hidden)], dtype=float)
    base = np.linalg.matrix_rank(a)
    out = set()
    for i, h in enumerate(hidden):
        e = np.zeros((1, len(hidden)))
        e[0, i] = 1
        if np.linalg.matrix_rank(np.vstack([a, e])) == base:
            out.add(h)
    return out


def _feasible(values: dict[Any, int], hidden: set[Any], relations: list[dict[Any, int]], cap: int = 40
              ) -> dict[Any, set[int]]:
    """Oracle (brute force): every value each hidden cell can take, 1..cap (0 is published, so a hidden cell
    is at least 1), given the published cells and that each relation's weighted sum is known."""
    hid = sorted(hidden, key=str)
    known = [sum(c * values[key] for key, c in rel.items()) for rel in relations]
    out: dict[Any, set[int]] = {h: set() for h in hid}
    for guess in itertools.product(range(1, cap + 1), repeat=len(hid)):
        g = dict(zip(hid, guess, strict=True))
        if all(sum(c * g.get(key, values[key]) for key, c in rel.items()) == t
               for rel, t in zip(relations, known, strict=True)):
            for h, v in g.items():
                out[h].add(v)
    return out


def test_primary_hides_1_to_k_minus_1_and_publishes_0_and_k():
    values = {"zero": 0, "one": 1, "nine": 9, "ten": 10, "many": 250}
    assert suppress(values, 10) == {"one", "nine"}
    assert suppress(values, 2) == {"one"}
    with pytest.raises(ValueError, match="at least 2"):
        suppress(values, 1)
    with pytest.raises(ValueError, match="negative"):
        suppress({"x": -1}, 10)


def test_one_hidden_cell_of_a_trip_balance_gets_a_complement_of_the_other_kind():
    # One trip, three stops: everyone who boards alights, so boardings minus alightings is 0: a total every
    # reader knows. Alightings at stop 2 (4) are hidden; published alone it would be 22 + 11 - 29 = 4.
    values = {("b", 1): 22, ("b", 2): 11, ("b", 3): 0, ("a", 1): 0, ("a", 2): 4, ("a", 3): 29}
    balance = [{key: (1 if key[0] == "b" else -1) for key in values}]
    assert _recoverable([("a", 2)], balance) == {("a", 2)}, "the oracle sees the threat"
    assert _feasible(values, {("a", 2)}, balance)[("a", 2)] == {4}

    hidden = suppress(values, K, balance)
    assert hidden == {("a", 2), ("b", 2)}, "the smallest non-zero boardings cell (11, not 22) is hidden too"
    assert not _recoverable(sorted(hidden), balance)
    feasible = _feasible(values, set(hidden), balance)
    # b2 - a2 = 7 is all a reader learns: a2 can be anything from 1 up, b2 anything from 8 up
    assert feasible[("a", 2)] == set(range(1, 34)) and feasible[("b", 2)] == set(range(8, 41))


def test_two_hidden_boardings_get_a_hidden_alighting_so_their_sum_is_not_bounded():
    # b2 + b3 = 22 - ... would bound both from above (and with a small sum pin them: 1 + 1 = 2)
    values = {("b", 1): 30, ("b", 2): 1, ("b", 3): 1, ("a", 1): 0, ("a", 2): 12, ("a", 3): 20}
    balance = [{key: (1 if key[0] == "b" else -1) for key in values}]
    assert _feasible(values, {("b", 2), ("b", 3)}, balance) == {("b", 2): {1}, ("b", 3): {1}}, \
        "two hidden cells of one kind whose sum is 2: both are 1"
    hidden = suppress(values, K, balance)
    assert hidden == {("b", 2), ("b", 3), ("a", 2)}
    feasible = _feasible(values, set(hidden), balance)
    assert all(len(v) > 5 for v in feasible.values()), feasible


def test_a_bridge_between_two_blocks_is_recoverable_though_every_row_and_column_has_two_hidden():
    # Why "each row and column with a total has 0 or >= 2 hidden cells" is not enough, and why the API
    # publishes no totals: with row and column totals, hidden cells forming two 2x2 blocks joined by one cell
    # (r1, c2) satisfy that rule, yet the joining cell is the difference of the blocks' totals.
    table = [[3, 4, 20, 30],
             [5, 6, 2, 40],
             [25, 35, 7, 8],
             [45, 50, 1, 9]]
    values = {(r, c): v for r, row in enumerate(table) for c, v in enumerate(row)}
    rows = [{(r, c): 1 for c in range(4)} for r in range(4)]
    cols = [{(r, c): 1 for r in range(4)} for c in range(4)]
    primary = {key for key, v in values.items() if v < K}
    assert all(len(primary & rel.keys()) in (0, 2, 3) for rel in rows + cols), "the naive rule is content"
    assert _recoverable(sorted(primary), rows + cols) == {(1, 2)}
    assert determined(sorted(primary), rows + cols) == {(1, 2)}

    hidden = suppress(values, K, rows + cols)
    assert primary < hidden
    assert not _recoverable(sorted(hidden), rows + cols)
    assert not determined(sorted(hidden), rows + cols)


def test_determined_on_tiny_systems():
    assert determined(["x"], [{"x": 1, "y": 1}]) == {"x"}
    assert determined(["x", "y"], [{"x": 1, "y": 1}]) == set()
    assert determined(["x", "y"], [{"x": 1, "y": 1}, {"x": 1, "y": -1}]) == {"x", "y"}
    assert determined(["x", "y"], []) == set()


def test_settings_k_and_licence():
    assert ApiSettings().open_data.min_count == 10
    assert ApiSettings().open_data.license == "CC BY 4.0"
    with pytest.raises(ValidationError):
        OpenDataSettings(min_count=1)
    with pytest.raises(ValidationError):
        OpenDataSettings(mincount=5)  # type: ignore[call-arg]


def test_settings_from_toml(tmp_path):
    p = tmp_path / "api.toml"
    p.write_text('[open_data]\nmin_count = 5\nlicense = "CC BY 4.0 国際"\npublish_after_h = 0\n', encoding="utf-8")
    s = load_settings(p).open_data
    assert (s.min_count, s.license, s.publish_after_h) == (5, "CC BY 4.0 国際", 0)
    p.write_text("[open_data]\nmin_count = 0\n")
    with pytest.raises(ConfigError, match=r"open_data\.min_count"):
        load_settings(p)


# ---- through the API, against InfluxDB ----------------------------------------------------------------------

DAY = date(2025, 6, 2)  # a Monday, long published
NEXT = DAY + timedelta(days=1)


def _ms(d: date, hh: int, mm: int) -> int:
    return int(datetime(d.year, d.month, d.day, hh, mm, tzinfo=JST).timestamp() * 1000)


def _write(stack_info, db: str, gateway: str, readings: list[Reading]) -> None:
    batch = checked(TelemetryBatch(gateway_id=gateway, boot_id="boot-0001", seq=1, sent_at=readings[-1].ts,
                                   readings=readings))
    influx_write(stack_info, db, batch_to_lines(batch))


def _visit(bus: str, route: str, trip: str, stop: str, seq: int, ts: int, b: float | None, a: float | None
           ) -> Reading:
    values: dict[str, Any] = {"trip_id": trip, "stop_id": stop, "stop_sequence": float(seq), "dwell_s": 20.0,
                              "complete": b is not None, "devices": 9.0, "wearables": 0.0,
                              "occupancy": 8.0, "occupancy_lo": 5.0, "occupancy_hi": 11.0}
    if b is not None and a is not None:
        values |= {"boardings": b, "alightings": a, "devices_boarded": b, "devices_alighted": a}
    return Reading(device_id=bus, kind="bus_stop_visit", ts=ts, values=values,
                   tags={"route": route, "stop": stop.lower(), "trip": trip})


def _trip(bus: str, route: str, trip: str, calls: list[tuple[str, int, float | None, float | None]]
          ) -> list[Reading]:
    return [_visit(bus, route, trip, stop, i + 1, ts, b, a) for i, (stop, ts, b, a) in enumerate(calls)]


@pytest.fixture
def day(stack_info, influx_db) -> str:
    """One day of visits on two routes; numbers chosen so each rule shows in one cell."""
    d = DAY
    _write(stack_info, influx_db, "gw-bus-01", [
        # 7 h: stop 1002 has 6 boardings and 2 alightings, both hidden; the balance 14 + b = 18 + a says nothing
        *_trip("bus-01", "loop-e", "wd-07", [("1001", _ms(d, 7, 0), 14.2, 0.0), ("1002", _ms(d, 7, 10), 6.0, 2.4),
                                             ("1003", _ms(d, 7, 20), 0.0, 17.8)]),
        # 8 h: only stop 1002's alightings (4) are small: 22 + 11 = 29 + a would give them away, so 11 is hidden
        *_trip("bus-01", "loop-e", "wd-08", [("1001", _ms(d, 8, 0), 22.0, 0.0), ("1002", _ms(d, 8, 10), 10.6, 4.0),
                                             ("1003", _ms(d, 8, 20), 0.0, 28.6)]),
        # 9 h: two buses, summed over trips before rounding: 7.6 + 4.6 = 12.2 → 12; stop 1002: nobody, 0
        *_trip("bus-01", "loop-e", "wd-09", [("1001", _ms(d, 9, 0), 7.6, 0.0), ("1002", _ms(d, 9, 10), 0.0, 0.0),
                                             ("1003", _ms(d, 9, 20), 0.0, 7.6)]),
        # 10 h: the first visit is incomplete (left out, counted); exactly k is published
        *_trip("bus-01", "loop-e", "wd-10", [("1001", _ms(d, 10, 0), None, None),
                                             ("1002", _ms(d, 10, 10), 10.0, 0.0), ("1003", _ms(d, 10, 20), 0.0, 10.0)]),
        # the late trip: 23:30 and 23:50 JST on DAY (14:30, 14:50 UTC), 00:10 JST on the next day
        *_trip("bus-01", "loop-e", "wd-23", [("1001", _ms(d, 23, 30), 11.0, 0.0), ("1002", _ms(d, 23, 50), 0.0, 0.0),
                                             ("1003", _ms(NEXT, 0, 10), 0.0, 11.0)]),
    ])
    _write(stack_info, influx_db, "gw-bus-02", _trip(
        "bus-02", "loop-e", "wx-09", [("1001", _ms(d, 9, 40), 4.6, 0.0), ("1003", _ms(d, 9, 50), 0.0, 4.6)]))
    # another route at the same stop and hour as loop-e's 14 boardings: never summed with them
    _write(stack_info, influx_db, "gw-bus-03", _trip(
        "bus-03", "loop-w", "ww-07", [("1001", _ms(d, 7, 5), 3.0, 0.0), ("2001", _ms(d, 7, 15), 0.0, 3.0)]))
    return influx_db


def _cell(route: str, stop: str, hour: int, visits: int, b: int | None, a: int | None) -> dict[str, Any]:
    return {"route": route, "stop_id": stop, "hour": hour, "visits": visits, "boardings": b,
            "boardings_suppressed": b is None, "alightings": a, "alightings_suppressed": a is None}


EXPECTED_DAY = [
    _cell("loop-e", "1001", 7, 1, 14, 0),
    _cell("loop-e", "1001", 8, 1, 22, 0),
    _cell("loop-e", "1001", 9, 2, 12, 0),
    _cell("loop-e", "1001", 23, 1, 11, 0),
    _cell("loop-e", "1002", 7, 1, None, None),
    _cell("loop-e", "1002", 8, 1, None, None),
    _cell("loop-e", "1002", 9, 1, 0, 0),
    _cell("loop-e", "1002", 10, 1, 10, 0),
    _cell("loop-e", "1002", 23, 1, 0, 0),
    _cell("loop-e", "1003", 7, 1, 0, 18),
    _cell("loop-e", "1003", 8, 1, 0, 29),
    _cell("loop-e", "1003", 9, 2, 0, 12),
    _cell("loop-e", "1003", 10, 1, 0, 10),
    _cell("loop-w", "1001", 7, 1, None, 0),
    _cell("loop-w", "2001", 7, 1, 0, None),
]


def _client(stack_info, db: str, **open_data: Any) -> TestClient:
    settings = ApiSettings(influx=InfluxSettings(**influx_settings(stack_info, "reader", db)),
                           open_data=OpenDataSettings(**open_data))
    return TestClient(create_app(settings))


def _get(client: TestClient, url: str) -> dict[str, Any]:
    resp = client.get(url)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    return resp.json()


def test_stop_hourly_publishes_exact_counts_and_hides_small_ones(stack_info, day):
    before = datetime.now(JST)
    with _client(stack_info, day) as client:
        doc = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}")
    assert doc["cells"] == EXPECTED_DAY
    assert doc["visits"]["counted"] == 17 and doc["visits"]["left_out"] == 1
    assert "incomplete" in doc["visits"]["left_out_reason"]
    for c in doc["cells"]:
        for m in ("boardings", "alightings"):
            assert c[m] is None or c[m] == 0 or c[m] >= K, c
            assert (c[m] is None) == c[f"{m}_suppressed"]
    assert not [key for key in doc if "total" in key] and not [key for c in doc["cells"] for key in c
                                                                if "total" in key], "no totals"

    assert (doc["dataset"], doc["date"], doc["route"], doc["time_zone"]) == (
        "bus-stop-hourly", "2025-06-02", None, "Asia/Tokyo")
    assert doc["license"] == {"name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/deed.ja"}
    assert doc["suppression"]["min_count"] == K and "1 to 9" in doc["suppression"]["rule"]
    assert doc["suppression"]["totals"] == "none published"
    assert "bus_stop" in doc["source"] and doc["publisher"]
    generated = datetime.fromisoformat(doc["generated_at"])
    assert generated.utcoffset() == timedelta(hours=9)
    assert before - timedelta(seconds=1) <= generated <= datetime.now(JST) + timedelta(seconds=1)


def test_a_published_day_answers_as_first_computed(stack_info, influx_db, day):
    """Once published, a day's table is what the API first computed: a visit backfilled later (a gateway offline
    for days) does not change that API's answer (a difference would reveal it); an API started later counts it."""
    with _client(stack_info, day) as client:
        first = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}")
        _write(stack_info, influx_db, "gw-bus-01", _trip("bus-01", "loop-e", "wd-late", [
            ("1001", _ms(DAY, 7, 30), 12.0, 0.0), ("1003", _ms(DAY, 7, 40), 0.0, 12.0)]))
        again = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}")
    assert again["cells"] == first["cells"] == EXPECTED_DAY and again["visits"] == first["visits"]
    with _client(stack_info, day) as restarted:
        later = _get(restarted, f"/open/v1/bus/stop-hourly?date={DAY}")
    assert later["visits"]["counted"] == first["visits"]["counted"] + 2 and later["cells"] != first["cells"]


def test_no_hidden_cell_follows_from_the_balance_a_reader_knows(stack_info, day):
    """A reader who knows that trips run within the hour (the timetable) knows that in each route and hour
    boardings and alightings balance. From the published numbers no hidden cell may follow."""
    with _client(stack_info, day) as client:
        cells = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}")["cells"]
    truth = {  # the rounded sums behind the hidden cells
        ("loop-e", "1002", 7, "boardings"): 6, ("loop-e", "1002", 7, "alightings"): 2,
        ("loop-e", "1002", 8, "boardings"): 11, ("loop-e", "1002", 8, "alightings"): 4,
        ("loop-w", "1001", 7, "boardings"): 3, ("loop-w", "2001", 7, "alightings"): 3,
    }
    values = {(c["route"], c["stop_id"], c["hour"], m): c[m] for c in cells for m in ("boardings", "alightings")}
    hidden = {key for key, v in values.items() if v is None}
    assert hidden == set(truth)
    values |= truth
    relations = {}
    for route, hour in sorted({(key[0], key[2]) for key in values} - {("loop-e", 23)}):  # 23 h: runs past 0 h
        rel = {key: (1 if key[3] == "boardings" else -1) for key in values if (key[0], key[2]) == (route, hour)}
        relations[(route, hour)] = rel
        assert sum(c * values[key] for key, c in rel.items()) == 0, f"the test data balances at {route} {hour} h"
    assert not _recoverable(sorted(hidden), list(relations.values()))
    for rel in relations.values():  # disjoint: each hour's hidden cells on their own
        feasible = _feasible(values, hidden & rel.keys(), [rel], cap=25)
        assert all(len(v) >= 10 for v in feasible.values()), feasible
    # without the complementary cell, 22 + 11 - 29 would give 8 h's alightings at 1002 away
    eight = relations[("loop-e", 8)]
    assert _feasible(values, {("loop-e", "1002", 8, "alightings")}, [eight]) == {
        ("loop-e", "1002", 8, "alightings"): {4}}


def test_hours_are_japan_time_across_midnight(stack_info, day):
    with _client(stack_info, day) as client:
        today = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}")
        tomorrow = _get(client, f"/open/v1/bus/stop-hourly?date={NEXT}")
        before = _get(client, f"/open/v1/bus/stop-hourly?date={DAY - timedelta(days=1)}")
    late = [c for c in today["cells"] if c["hour"] >= 20]
    assert [(c["stop_id"], c["hour"]) for c in late] == [("1001", 23), ("1002", 23)], \
        "23:30 and 23:50 JST are hour 23 of the day (in UTC they would be 14 h)"
    assert {c["hour"] for c in today["cells"]} == {7, 8, 9, 10, 23}
    assert tomorrow["cells"] == [_cell("loop-e", "1003", 0, 1, 0, 11)], \
        "00:10 JST belongs to the next day, hour 0 (in UTC it is 15:10 of the day before)"
    assert tomorrow["visits"] == {**today["visits"], "counted": 1, "left_out": 0}
    assert before["cells"] == [] and before["visits"]["counted"] == 0


def test_route_filter_selects_rows_of_the_same_table(stack_info, day):
    with _client(stack_info, day) as client:
        everything = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}")
        east = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}&route=loop-e")
        west = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}&route=loop-w")
        none = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}&route=no-such-route")
    assert east["route"] == "loop-e"
    assert east["cells"] == [c for c in everything["cells"] if c["route"] == "loop-e"]
    assert west["cells"] == EXPECTED_DAY[-2:]
    assert none["cells"] == []
    # 14 boardings of loop-e at 1001 at 7 h are the same with or without the filter: never 14 + 3
    assert [c["boardings"] for c in everything["cells"] if (c["stop_id"], c["hour"]) == ("1001", 7)] == [14, None]


def test_csv_is_the_same_table_for_excel_in_japan(stack_info, day):
    with _client(stack_info, day) as client:
        doc = _get(client, f"/open/v1/bus/stop-hourly?date={DAY}")
        resp = client.get(f"/open/v1/bus/stop-hourly?date={DAY}&format=csv")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert resp.headers["content-disposition"] == 'attachment; filename="bus-stop-hourly_2025-06-02.csv"'
    assert resp.headers["link"] == '<https://creativecommons.org/licenses/by/4.0/deed.ja>; rel="license"'
    raw = resp.content
    assert raw.startswith(b"\xef\xbb\xbf"), "UTF-8 with BOM, or Excel reads it as Shift_JIS"
    text = raw.decode("utf-8-sig")
    assert text.count("\r\n") == len(doc["cells"]) + 1 and "\n" not in text.replace("\r\n", "")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["date", "hour", "route", "stop_id", "visits", "boardings", "boardings_suppressed",
                             "alightings", "alightings_suppressed"]
    assert len(rows) == len(EXPECTED_DAY)
    for row, c in zip(rows, EXPECTED_DAY, strict=True):
        assert row == {"date": "2025-06-02", "hour": str(c["hour"]), "route": c["route"], "stop_id": c["stop_id"],
                       "visits": str(c["visits"]),
                       "boardings": "" if c["boardings"] is None else str(c["boardings"]),
                       "boardings_suppressed": "true" if c["boardings"] is None else "false",
                       "alightings": "" if c["alightings"] is None else str(c["alightings"]),
                       "alightings_suppressed": "true" if c["alightings"] is None else "false"}


# ---- origin-destination ----------------------------------------------------------------------------------------


def _ride(route: str, board: str, alight: str, ts: int, rider: str) -> Reading:
    return Reading(device_id="bus-01", kind="bus_od", ts=ts,
                   values={"rider": rider, "board_trip_id": "wd-07", "alight_trip_id": "wd-07",
                           "board_sequence": 1.0, "alight_sequence": 3.0, "board_ts": float(ts - 600_000),
                           "ride_s": 600.0},
                   units={"ride_s": "s"}, tags={"route": route, "board_stop": board, "alight_stop": alight})


@pytest.fixture
def month(stack_info, influx_db) -> tuple[str, list[str]]:
    """App riders in June 2025 (JST); returns the database and every rider pseudonym written."""
    riders: list[str] = []
    rides = []

    def ride(board: str, alight: str, ts: int) -> None:
        riders.append(secrets.token_hex(8))
        rides.append(_ride("loop-e", board, alight, ts, riders[-1]))

    for i in range(12):
        ride("1001", "1003", _ms(date(2025, 6, 2 + i), 8, 20))
    ride("1001", "1003", _ms(date(2025, 7, 1), 0, 5))  # July in Japan, June 30 in UTC
    for i in range(3):
        ride("1001", "1002", _ms(date(2025, 6, 10), 7, 10) + i)
    for i in range(9):
        ride("1002", "1003", _ms(date(2025, 6, 20), 9, 20) + i)
    ride("1002", "1003", _ms(date(2025, 6, 1), 0, 5))  # June in Japan, May 31 in UTC
    for i in range(10):
        ride("t-2001a", "1003", _ms(date(2025, 6, 15), 10, 20) + i)
    _write(stack_info, influx_db, "gw-bus-01", rides)
    # the exact GTFS id of the stop whose tag is t-2001a
    _write(stack_info, influx_db, "gw-bus-01", [_visit("bus-01", "loop-e", "wd-10", "T-2001A", 1,
                                                       _ms(date(2025, 6, 15), 10, 0), 10.0, 0.0)])
    return influx_db, riders


def _od(route: str, o: str, d: str, n: int | None) -> dict[str, Any]:
    return {"route": route, "origin_stop_id": o, "destination_stop_id": d, "riders": n,
            "riders_suppressed": n is None}


def test_od_monthly_counts_riders_per_pair_never_their_pseudonyms(stack_info, month):
    db, riders = month
    assert len(set(riders)) == len(riders) == 36
    stored = str(influx_query(stack_info, db, 'SELECT "rider" FROM "bus_od"'))
    assert all(r in stored for r in riders), "positive control: the pseudonyms are there to be leaked"
    with _client(stack_info, db) as client:
        june = client.get("/open/v1/bus/od-monthly?month=2025-06")
        june_csv = client.get("/open/v1/bus/od-monthly?month=2025-06&format=csv")
        july = _get(client, "/open/v1/bus/od-monthly?month=2025-07")
        may = _get(client, "/open/v1/bus/od-monthly?month=2025-05")
    assert june.status_code == 200 and june_csv.status_code == 200
    doc = june.json()
    assert doc["cells"] == [
        _od("loop-e", "1001", "1002", None),
        _od("loop-e", "1001", "1003", 12),  # the ride at 00:05 JST on 1 July is July's
        _od("loop-e", "1002", "1003", 10),  # with the one at 00:05 JST on 1 June
        _od("loop-e", "T-2001A", "1003", 10),  # the exact GTFS id, not the tag
    ]
    assert july["cells"] == [_od("loop-e", "1001", "1003", None)]
    assert may["cells"] == []
    assert (doc["dataset"], doc["month"], doc["time_zone"]) == ("bus-od-monthly", "2025-06", "Asia/Tokyo")
    assert doc["suppression"]["min_count"] == K and doc["license"]["name"] == "CC BY 4.0"

    text = june.text + june_csv.content.decode("utf-8-sig") + str(july)
    leaked = [r for r in riders if r in text or r.upper() in text]
    assert not leaked, f"rider pseudonyms in the open data: {leaked}"
    for word in ("rider\"", "board_ts", "trip_id", "ride_s"):
        assert word not in text
    rows = list(csv.DictReader(io.StringIO(june_csv.content.decode("utf-8-sig"))))
    assert [(r["month"], r["origin_stop_id"], r["destination_stop_id"], r["riders"], r["riders_suppressed"])
            for r in rows] == [("2025-06", "1001", "1002", "", "true"), ("2025-06", "1001", "1003", "12", "false"),
                               ("2025-06", "1002", "1003", "10", "false"),
                               ("2025-06", "T-2001A", "1003", "10", "false")]


def test_k_is_the_setting(stack_info, month):
    db, _ = month
    with _client(stack_info, db, min_count=3) as client:
        doc = _get(client, "/open/v1/bus/od-monthly?month=2025-06")
    assert doc["cells"][0] == _od("loop-e", "1001", "1002", 3)
    assert doc["suppression"]["min_count"] == 3 and "1 to 2" in doc["suppression"]["rule"]


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "words"), [
    ("/open/v1/bus/stop-hourly?date=2025-6-2", ["date", "YYYY-MM-DD", "2025-6-2"]),
    ("/open/v1/bus/stop-hourly?date=2025-02-30", ["date", "YYYY-MM-DD", "2025-02-30"]),
    ("/open/v1/bus/stop-hourly?date=20250602", ["date", "YYYY-MM-DD"]),
    ("/open/v1/bus/stop-hourly?date=1969-12-31", ["date", "years"]),
    ("/open/v1/bus/stop-hourly", ["date", "required"]),
    ("/open/v1/bus/stop-hourly?date=2025-06-02&route=Loop%20E", ["route", "Loop E"]),
    ("/open/v1/bus/stop-hourly?date=2025-06-02&format=xlsx", ["format", "csv"]),
    ("/open/v1/bus/od-monthly?month=2025-13", ["month", "YYYY-MM", "2025-13"]),
    ("/open/v1/bus/od-monthly?month=2025-06-01", ["month", "YYYY-MM"]),
])
def test_bad_parameters_are_422_with_a_message(url, words):
    # an unreachable InfluxDB: parameters are checked before anything is read
    settings = ApiSettings(influx=InfluxSettings(url="http://127.0.0.1:9", db="x", timeout_s=2))
    with TestClient(create_app(settings)) as client:
        resp = client.get(url)
    assert resp.status_code == 422
    for w in words:
        assert w.lower() in resp.text.lower(), (w, resp.text)


def test_a_period_not_over_is_not_published_yet():
    settings = ApiSettings(influx=InfluxSettings(url="http://127.0.0.1:9", db="x", timeout_s=2))
    today = datetime.now(JST).date()
    with TestClient(create_app(settings)) as client:
        for url in (f"/open/v1/bus/stop-hourly?date={today}", f"/open/v1/bus/od-monthly?month={today:%Y-%m}",
                    f"/open/v1/bus/stop-hourly?date={today - timedelta(days=1)}"):
            resp = client.get(url)
            assert resp.status_code == 404, url
            assert "not published yet" in resp.json()["detail"]


def test_influxdb_unreachable_is_503():
    settings = ApiSettings(influx=InfluxSettings(url="http://127.0.0.1:9", db="x", timeout_s=2))
    with TestClient(create_app(settings)) as client:
        for url in (f"/open/v1/bus/stop-hourly?date={DAY}", "/open/v1/bus/od-monthly?month=2025-06",
                    f"/open/v1/bus/stop-hourly?date={DAY}&format=csv"):
            resp = client.get(url)
            assert resp.status_code == 503, url
            assert "InfluxDB unavailable" in resp.json()["detail"]


def test_stops_have_japanese_english_and_kana_names():
    settings = ApiSettings.model_validate({"influx": {"url": "http://127.0.0.1:9", "db": "x", "timeout_s": 2},
                                           "places": {"gtfs_dir": "scenarios/gtfs-tsuyama-loop"}})
    with TestClient(create_app(settings)) as client:
        js = client.get("/v1/bus/stops")
        csv_ = client.get("/v1/bus/stops?format=csv")
    assert js.status_code == 200  # from the feed: InfluxDB (unreachable here) is not read
    stops = {s["stop_id"]: s for s in js.json()["items"]}
    assert len(stops) == 19
    assert stops["1001"] == {"stop_id": "1001", "name_ja": "津山駅", "name_en": "Tsuyama Station",
                             "name_kana": "つやまえき", "lat": 35.0586, "lon": 134.0028}
    assert csv_.content.startswith("\ufeffstop_id,name_ja,name_en".encode())


def test_a_bad_gtfs_dir_is_a_config_error(tmp_path):
    (tmp_path / "stops.txt").write_text("stop_id,stop_name\n1001,x\n")  # no position
    settings = ApiSettings.model_validate({"places": {"gtfs_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"places\.gtfs_dir"):
        create_app(settings)
