"""Energy per district and per household (cityos_api/families/meter.py) against real InfluxDB 1.6: the small-count
test of issue 14 (districts of 1, 2, 9, 10 and 11 households) for the API's routes, the complementary rule (a
district's day only when every half hour of it is shown), per-household values on their scope only.

Points are written as the ingest writes them (wire-contract ``smart_meter`` readings through
``ingest.lineproto.batch_to_lines``): each household's fixed-time cumulative value at every :00/:30 of one JST day
two days ago (settled), with realistic half-hour use; then one pass of the rollup service (``rollup.run_once``, as
its own InfluxDB user) freezes the district half hours and days the district routes serve.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import influx_write

from citylab.stack import influx_settings
from cityos.privacy import MIN_HOUSEHOLDS
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.app import create_app
from cityos_api.auth import HOUSEHOLDS, SERVICE, TokenStore, parse_expiry
from cityos_api.core import FrozenDays
from cityos_api.opendata import JST
from cityos_api.settings import ApiSettings
from ingest.lineproto import batch_to_lines
from rollup import RollupConfig, run_once

SIZES = {"d1": 1, "d2": 2, "d9": 9, "d10": 10, "d11": 11}
SLOT = 30 * 60_000
#: In district d11 one household misses one fixed-time value: the two half hours around it have 10 households;
#: in d10 one misses one: those half hours have 9 (hidden), so d10's day is hidden too (complementary rule).
GAPS = {("d10", 0): 20, ("d11", 3): 30}


def _day() -> date:
    return datetime.now(JST).date() - timedelta(days=2)


@pytest.fixture(scope="module")
def city(stack_info, stack) -> Iterator[dict[str, Any]]:
    import uuid

    db = "api_energy_" + uuid.uuid4().hex[:8]
    stack.create_database(db)  # and its rollups' database, with the users' grants
    rng = random.Random(14)
    day = _day()
    t0 = int(datetime(day.year, day.month, day.day, tzinfo=JST).timestamp() * 1000)
    truth: dict[tuple[str, str, int], float] = {}  # (district, household, slot start) -> kWh (Wh-exact)
    readings = []
    n = 0
    for district, size in SIZES.items():
        for i in range(size):
            hh = f"hh-{n:05d}"
            n += 1
            wh = rng.randint(1_000_000, 9_000_000)
            missing = GAPS.get((district, i))
            for b in range(49):  # 00:00 .. 24:00
                if b:
                    use = rng.randint(40, 900)
                    wh += use
                    truth[(district, hh, t0 + (b - 1) * SLOT)] = use / 1000
                if missing == b:
                    continue
                readings.append(Reading(device_id=hh, kind="smart_meter", ts=t0 + b * SLOT,
                                        values={"energy_fixed_kwh": wh / 1000}, tags={"district": district}))
            if missing is not None:  # the half hours on each side of the missing value are unknown
                truth.pop((district, hh, t0 + (missing - 1) * SLOT), None)
                truth.pop((district, hh, t0 + missing * SLOT), None)
    # a household without a district: in no district
    readings += [Reading(device_id="hh-99999", kind="smart_meter", ts=t0 + b * SLOT,
                         values={"energy_fixed_kwh": 100.0 + b}) for b in range(49)]
    lines = []
    for i in range(0, len(readings), 500):
        part = readings[i:i + 500]
        batch = checked(TelemetryBatch(gateway_id="gw-meter-01", boot_id="boot-0001", seq=i + 1,
                                       sent_at=part[-1].ts, readings=part))
        lines += batch_to_lines(batch)
    influx_write(stack_info, db, lines)
    rep = run_once(RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", db)}))
    assert rep.energy.days >= 1 and rep.energy.skipped == 0, rep.summary()
    yield {"db": db, "t0": t0, "day": day, "truth": truth}
    stack.drop_database(db)


def _client(stack_info, city, tmp_path) -> tuple[TestClient, dict[str, str]]:
    store = TokenStore(tmp_path / "tokens.json")
    toks = {s: store.create(s, [s], parse_expiry("1d"))[1] for s in (SERVICE, HOUSEHOLDS)}
    settings = ApiSettings.model_validate({
        "influx": influx_settings(stack_info, "reader", city["db"]), "auth": {"tokens_file": store.path},
        "places": {"districts_file": None}})
    return TestClient(create_app(settings)), toks


def _sums(truth, district: str) -> dict[int, tuple[float, int]]:
    out: dict[int, list[float]] = {}
    for (d, _, start), kwh in truth.items():
        if d == district:
            out.setdefault(start, []).append(kwh)
    return {s: (round(sum(v), 3), len(v)) for s, v in out.items()}


def test_half_hours_are_shown_only_where_k_households_report(stack_info, city, tmp_path):
    client, _ = _client(stack_info, city, tmp_path)
    day = city["day"].isoformat()
    resp = client.get(f"/v1/energy/districts/half-hourly?from={day}&to={city['day'] + timedelta(days=1)}")
    assert resp.status_code == 200, resp.text
    items = resp.json()["items"]
    by = {(it["district"], it["start"]): it for it in items}
    for district in ("d1", "d2", "d9"):
        rows = [it for it in items if it["district"] == district]
        assert len(rows) == 48
        assert all(it["kwh"] is None and it["households"] is None and it["kwh_suppressed"] for it in rows)
    for district in ("d10", "d11"):
        truth = _sums(city["truth"], district)
        assert len(truth) == 48
        for start, (kwh, n) in truth.items():
            it = by[(district, datetime.fromtimestamp(start / 1000, JST).isoformat(timespec="seconds"))]
            if n >= MIN_HOUSEHOLDS:
                assert (it["kwh"], it["households"], it["kwh_suppressed"]) == (pytest.approx(kwh, abs=1e-6), n,
                                                                                False)
            else:
                assert it["kwh"] is None and it["kwh_suppressed"], (district, start, n)
    # d10's gap: the first two half hours have 9 households: hidden; d11's gap leaves 10: shown
    assert sum(it["kwh_suppressed"] for it in items if it["district"] == "d10") == 2
    assert not any(it["kwh_suppressed"] for it in items if it["district"] == "d11")
    assert not any(it["district"] == "" for it in items)  # the household without a district is in none


def test_a_day_only_when_every_half_hour_of_it_is_shown(stack_info, city, tmp_path):
    client, _ = _client(stack_info, city, tmp_path)
    day = city["day"]
    resp = client.get(f"/v1/energy/districts/daily?from={day}&to={day + timedelta(days=1)}")
    assert resp.status_code == 200, resp.text
    by = {it["district"]: it for it in resp.json()["items"]}
    assert set(by) == set(SIZES)
    for district in ("d1", "d2", "d9", "d10"):  # d10: two hidden half hours would follow from the day: hidden
        assert by[district]["kwh"] is None and by[district]["kwh_suppressed"], district
    d11 = sum(kwh for (d, _, _), kwh in city["truth"].items() if d == "d11")
    assert by["d11"]["kwh"] == pytest.approx(d11, abs=1e-6) and by["d11"]["households"] == 11
    assert by["d11"]["date"] == day.isoformat()


def test_no_open_route_lets_one_household_through(stack_info, city, tmp_path):
    """Every number any district route answers, in JSON and CSV: none is, for the same half hour or day, a small
    district's household value nor the sum of a small district's households."""
    client, _ = _client(stack_info, city, tmp_path)
    day = city["day"]

    def at(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, JST).isoformat(timespec="seconds")

    small = {(d, hh, s): v for (d, hh, s), v in city["truth"].items() if SIZES[d] < MIN_HOUSEHOLDS}
    forbidden = {(at(s), round(v, 3)) for (_, _, s), v in small.items()}
    for d in ("d1", "d2", "d9"):
        forbidden |= {(at(s), kwh) for s, (kwh, _) in _sums(city["truth"], d).items()}
        forbidden.add((day.isoformat(), round(sum(v for (dd, _, _), v in small.items() if dd == d), 3)))
        forbidden |= {(day.isoformat(), round(sum(v for (dd, h, _), v in small.items() if h == hh), 3))
                      for (dd, hh, _) in small if dd == d}
    seen: list[tuple[str, float]] = []
    for path in ("/v1/energy/districts/half-hourly", "/v1/energy/districts/daily"):
        for fmt in ("json", "csv"):
            resp = client.get(f"{path}?from={day}&to={day + timedelta(days=1)}&format={fmt}")
            assert resp.status_code == 200
            assert "hh-" not in resp.text
            if fmt == "json":
                seen += [(it.get("start") or it["date"], round(it["kwh"], 3)) for it in resp.json()["items"]
                         if it["kwh"] is not None]
            else:
                assert resp.content.startswith("\ufeff".encode())
    assert seen and not forbidden.intersection(seen)


def test_one_household_only_on_its_scope(stack_info, city, tmp_path):
    client, toks = _client(stack_info, city, tmp_path)
    day = city["day"]
    url = f"/v1/energy/households/hh-00000/half-hourly?from={day}&to={day + timedelta(days=1)}"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {toks[SERVICE]}"}).status_code == 403
    resp = client.get(url, headers={"Authorization": f"Bearer {toks[HOUSEHOLDS]}"})
    assert resp.status_code == 200, resp.text
    got = [(it["start"], it["kwh"]) for it in resp.json()["items"]]
    want = sorted((s, v) for (d, hh, s), v in city["truth"].items() if hh == "hh-00000")
    assert [v for _, v in got] == pytest.approx([v for _, v in want])
    bad = client.get(url.replace("hh-00000", "Tanaka%20Taro"), headers={"Authorization": f"Bearer {toks[HOUSEHOLDS]}"})
    assert bad.status_code == 422 and "household_id" in bad.json()["detail"]


def test_a_period_not_settled_is_not_served(stack_info, city, tmp_path):
    client, _ = _client(stack_info, city, tmp_path)
    resp = client.get("/v1/energy/districts/half-hourly")  # the last day, up to now: not settled
    assert resp.status_code == 200
    assert all(it["start"] < datetime.now(JST).isoformat() for it in resp.json()["items"])
    newest = max((it["end"] for it in resp.json()["items"]), default=None)
    if newest is not None:
        assert datetime.fromisoformat(newest) <= datetime.now(JST) - timedelta(hours=6)


def test_without_the_rollups_database_the_district_routes_are_503(stack_info, city, tmp_path, caplog):
    """Not created (or no READ on it for the API's user): 503, never "no rows" (which would read as "nothing
    happened"), and a warning naming the database and the fix."""
    import logging

    caplog.set_level(logging.WARNING)
    settings = ApiSettings.model_validate({
        "influx": influx_settings(stack_info, "reader", city["db"]), "rollup": {"db": "no_rollups_here"},
        "auth": {"tokens_file": tmp_path / "tokens.json"}})
    client = TestClient(create_app(settings))
    day = city["day"]
    for path in ("/v1/energy/districts/half-hourly", "/v1/energy/districts/daily", "/v1/waste/districts/daily",
                 "/v1/waste/districts/monthly"):
        resp = client.get(path if "waste" in path else f"{path}?from={day}&to={day + timedelta(days=1)}")
        assert resp.status_code == 503 and "no_rollups_here" not in resp.text, (path, resp.text)
    assert "no_rollups_here" in caplog.text and "cityos rollup" in caplog.text


def test_ngsi_ld_energy_per_district_shows_published_half_hours_only(stack_info, city, tmp_path):
    """The NGSI-LD facade's DistrictEnergyConsumption: an entity only for districts with a published half hour, an
    instance only per published half hour (the same cells as the open route), aggregates made of those alone."""
    client, toks = _client(stack_info, city, tmp_path)
    auth = {"Authorization": f"Bearer {toks[SERVICE]}"}
    v = "/ngsi-ld/v1"
    resp = client.get(f"{v}/entities", params={"type": "DistrictEnergyConsumption"}, headers=auth)
    assert resp.status_code == 200, resp.text
    assert [e["id"] for e in resp.json()] == ["urn:ngsi-ld:DistrictEnergyConsumption:d10",
                                              "urn:ngsi-ld:DistrictEnergyConsumption:d11"]
    for d in ("d1", "d2", "d9"):
        assert client.get(f"{v}/entities/urn:ngsi-ld:DistrictEnergyConsumption:{d}", headers=auth).status_code == 404
    t0 = city["t0"]

    def z(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, JST).isoformat()

    rng = {"timerel": "between", "timeAt": z(t0), "endTimeAt": z(t0 + 86_400_000)}
    for d, shown in (("d10", 46), ("d11", 48)):
        eid = f"urn:ngsi-ld:DistrictEnergyConsumption:{d}"
        got = client.get(f"{v}/temporal/entities/{eid}", params={**rng, "options": "temporalValues"},
                         headers=auth).json()
        truth = {s: kn for s, kn in _sums(city["truth"], d).items() if kn[1] >= MIN_HOUSEHOLDS}
        assert len(truth) == shown
        values = got["consumption"]["values"]
        assert [(round(x, 3), t) for x, t in values] == [
            (kwh, datetime.fromtimestamp(s / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            for s, (kwh, _) in sorted(truth.items())]
        assert [n for n, _ in got["householdCount"]["values"]] == [n for _, (_, n) in sorted(truth.items())]
        agg = client.get(f"{v}/temporal/entities/{eid}", params={**rng, "options": "aggregatedValues",
                                                                 "aggrMethods": "sum,totalCount", "attrs": "consumption"},
                         headers=auth).json()
        assert agg["consumption"]["totalCount"][0][0] == shown
        assert agg["consumption"]["sum"][0][0] == pytest.approx(sum(kwh for kwh, _ in truth.values()))
    body = client.get(f"{v}/temporal/entities", params={"type": "DistrictEnergyConsumption", **rng},
                      headers=auth).text
    assert "hh-" not in body  # no household id in any answer


def test_frozen_days_kept_by_the_api_answer_as_a_fresh_read(stack_info, city, tmp_path, monkeypatch):
    """Frozen days are kept rendered by the API: any sub-range and district filter, asked after a long range filled
    the memory (and past its size), answers exactly as an API that keeps nothing."""

    kept, _ = _client(stack_info, city, tmp_path / "kept")
    day = city["day"]
    t0 = datetime(day.year, day.month, day.day, tzinfo=JST)
    queries = [("half-hourly", {"from": (t0 - timedelta(days=20)).isoformat(), "to": (t0 + timedelta(days=2)).isoformat()}),
               ("half-hourly", {"from": (t0 + timedelta(hours=5, minutes=30)).isoformat(),
                                "to": (t0 + timedelta(hours=17)).isoformat(), "district": "d11"}),
               ("half-hourly", {"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat(), "district": "d10"}),
               ("daily", {"from": (day - timedelta(days=399)).isoformat(), "to": (day + timedelta(days=1)).isoformat()}),
               ("daily", {"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat(), "district": "d11"})]
    answers = []
    for _ in range(2):
        for route, params in queries:
            resp = kept.get(f"/v1/energy/districts/{route}", params=params)
            assert resp.status_code == 200, resp.text
            answers.append(resp.json()["items"])
    monkeypatch.setattr(FrozenDays, "MAX_DAYS", 0)  # an API that keeps nothing
    fresh, _ = _client(stack_info, city, tmp_path / "fresh")
    for i, (route, params) in enumerate(queries):
        want = fresh.get(f"/v1/energy/districts/{route}", params=params).json()["items"]
        assert answers[i] == want and answers[i + len(queries)] == want, (route, params)
    assert any(it["kwh"] for it in answers[0]) and len(answers[2]) == 48 and answers[4][0]["kwh"] is not None
