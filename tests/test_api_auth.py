"""The City OS API's front door (cityos_api/auth.py, core.py, app.py): scoped tokens, the rate limit of open
routes, CORS, the docs page without a CDN, errors without internal detail, and the two crashes of the first API
(a bad stored bus position took the GTFS-Realtime feed down; a newline in a parameter reached a header).

Routes are walked from the app itself, so a route added later is covered by the scope tests.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import stat
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.transit import gtfs_realtime_pb2 as rt
from helpers import influx_write
from prometheus_client.parser import text_string_to_metric_families

from citylab.stack import influx_settings
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api.app import create_app
from cityos_api.auth import FLEET, HOUSEHOLDS, OPEN, SCOPES, SERVICE, TokenStore, parse_expiry
from cityos_api.settings import ApiSettings, InfluxSettings
from cityos_cli.cli import main
from ingest.lineproto import batch_to_lines

UNREACHABLE = InfluxSettings(url="http://127.0.0.1:9", db="x", timeout_s=2)


def _settings(tmp_path, **kw: Any) -> ApiSettings:
    data: dict[str, Any] = {"influx": UNREACHABLE, "auth": {"tokens_file": tmp_path / "tokens.json"}, **kw}
    return ApiSettings.model_validate(data)


def _routes(app) -> list[tuple[str, str]]:
    """(path, scope) of every route of the OpenAPI document (every route is in it: the legacy redirects alone
    are not, and they only point at documented routes)."""
    return [(path, op["x-scope"]) for path, item in app.openapi()["paths"].items() for op in item.values()]


def _concrete(path: str) -> str:
    return path.replace("{", "").replace("}", "")  # a path parameter's name as its value: it is never reached


@pytest.fixture
def tokens(tmp_path) -> tuple[TokenStore, dict[str, str]]:
    store = TokenStore(tmp_path / "tokens.json")
    exp = parse_expiry("30d")
    out = {}
    for scope in (SERVICE, FLEET, HOUSEHOLDS):
        _, tok = store.create(f"holder of {scope}", [scope], exp)
        out[scope] = tok
    return store, out


def test_every_route_declares_its_scope_in_openapi(tmp_path):
    app = create_app(_settings(tmp_path))
    doc = TestClient(app).get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    ops = [(p, op) for p, item in doc["paths"].items() for m, op in item.items() if m == "get"]
    assert len(ops) >= 6
    for path, op in ops:
        assert op["x-scope"] in SCOPES, path
        if op["x-scope"] == OPEN:
            assert {} in op["security"], path  # no token needed
        else:
            assert op["security"] == [{"bearer": [op["x-scope"]]}], path
            assert "403" in op["responses"] and "401" in op["responses"], path


def test_a_token_without_the_scope_is_403_on_every_internal_route(tmp_path, tokens, caplog):
    _, toks = tokens
    app = create_app(_settings(tmp_path))
    internal = [(p, s) for p, s in _routes(app) if s != OPEN]
    assert any(s == FLEET for _, s in internal)
    caplog.set_level(logging.WARNING, "cityos_api")
    with TestClient(app) as client:
        for path, scope in internal:
            for other, tok in toks.items():
                if other == scope:
                    continue
                resp = client.get(_concrete(path), headers={"Authorization": f"Bearer {tok}"})
                assert resp.status_code == 403, (path, other, resp.text)
                assert resp.headers["content-type"] == "application/problem+json"
                assert scope in resp.json()["detail"]
            # no token at all: 401 with the challenge
            resp = client.get(_concrete(path))
            assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
    logged = caplog.text
    assert "denied 403" in logged
    for tok in toks.values():
        assert tok not in logged and tok.split("_", 2)[2] not in logged  # the id is logged, never the secret


def test_expired_revoked_unknown_and_malformed_tokens_are_401(tmp_path, tokens):
    store, toks = tokens
    app = create_app(_settings(tmp_path))
    # expired: the record's expiry moved into the past, as time would
    rec = next(r for r in store.records() if r.scopes == (FLEET,))
    store._write([dataclasses.replace(r, expires="2020-01-01T00:00:00Z") if r.id == rec.id else r
                  for r in store.records()])
    revoked = next(r for r in store.records() if r.scopes == (SERVICE,))
    with TestClient(app) as client:
        ok = client.get("/metrics", headers={"Authorization": f"Bearer {toks[FLEET]}"})
        assert ok.status_code == 401 and "expired" in ok.json()["detail"]
        store.revoke(revoked.id)  # takes effect at the next request: no restart
        resp = client.get("/healthz", headers={"Authorization": f"Bearer {toks[SERVICE]}"})
        assert resp.status_code == 401 and "revoked" in resp.json()["detail"]
        secret = toks[HOUSEHOLDS]
        for bad in (secret[:-1] + ("A" if secret[-1] != "A" else "B"), "cityos_00000000_" + "x" * 43, "hello",
                    "Basic dXNlcjpwYXNz"):
            header = bad if bad.startswith("Basic") else f"Bearer {bad}"
            resp = client.get("/metrics", headers={"Authorization": header})
            assert resp.status_code == 401, bad
            assert secret not in resp.text and "x" * 43 not in resp.text


def test_the_fleet_token_reads_metrics(tmp_path, tokens):
    _, toks = tokens
    with TestClient(create_app(_settings(tmp_path))) as client:
        client.get("/v1/bus/stop-hourly?date=bad")
        resp = client.get("/metrics", headers={"Authorization": f"Bearer {toks[FLEET]}"})
    assert resp.status_code == 200
    fams = {f.name: f for f in text_string_to_metric_families(resp.text)}
    reqs = {(s.labels["route"], s.labels["status"]): s.value for s in fams["cityos_api_requests"].samples
            if s.name.endswith("_total")}
    assert reqs[("/v1/bus/stop-hourly", "422")] == 1


def test_token_store_is_private_and_holds_no_token(tmp_path, tokens):
    store, toks = tokens
    raw = store.path.read_text()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    for tok in toks.values():
        secret = tok.split("_", 2)[2]  # the secret may itself hold "_" (URL-safe base64)
        assert len(secret) == 43 and tok not in raw and secret not in raw
    assert {tuple(r["scopes"]) for r in json.loads(raw)["tokens"]} == {(SERVICE,), (FLEET,), (HOUSEHOLDS,)}


def test_cli_creates_lists_and_revokes(tmp_path, capsys):
    cfg = tmp_path / "api.toml"
    cfg.write_text(f'[auth]\ntokens_file = "{tmp_path / "t.json"}"\n')
    assert main(["api", "token", "--config", str(cfg), "create", "--scope", "service", "--scope",
                 "internal:fleet", "--expires", "90d", "--name", "bus app (city)"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("cityos_") and len(out.out.splitlines()) == 1  # stdout: the token alone
    tid = token.split("_")[1]
    assert main(["api", "token", "--config", str(cfg), "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [{"id": tid, "name": "bus app (city)", "scopes": ["service", "internal:fleet"],
                       "created": listed[0]["created"], "expires": listed[0]["expires"], "revoked": None,
                       "state": "active"}]
    assert main(["api", "token", "--config", str(cfg), "revoke", tid]) == 0
    assert main(["api", "token", "--config", str(cfg), "list"]) == 0
    assert "revoked" in capsys.readouterr().out
    # bad input: a clear message, exit 2
    assert main(["api", "token", "--config", str(cfg), "create", "--scope", "open", "--expires", "1d",
                 "--name", "x"]) == 2
    assert main(["api", "token", "--config", str(cfg), "create", "--scope", "service", "--expires", "9999d",
                 "--name", "x"]) == 2
    assert main(["api", "token", "--config", str(cfg), "create", "--scope", "service", "--expires", "2001-01-01",
                 "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert "open needs no token" in err and "at most" in err and "not in the future" in err


def test_open_routes_are_rate_limited_per_client(tmp_path, tokens):
    _, toks = tokens
    app = create_app(_settings(tmp_path, rate_limit={"open_per_minute": 60, "burst": 3}))
    with TestClient(app) as client:
        codes = [client.get("/v1/bus/stop-hourly?date=nope").status_code for _ in range(5)]
        assert codes == [422, 422, 422, 429, 429]
        resp = client.get("/v1/bus/stop-hourly?date=nope")
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
        # a token holder is not limited as an anonymous client
        resp = client.get("/v1/bus/stop-hourly?date=nope", headers={"Authorization": f"Bearer {toks[SERVICE]}"})
        assert resp.status_code == 422


def test_cors_only_for_allowed_origins(tmp_path):
    app = create_app(_settings(tmp_path, cors={"allow_origins": ["https://opendata.example.jp"]}))
    with TestClient(app) as client:
        ok = client.get("/healthz", headers={"Origin": "https://opendata.example.jp"})
        assert ok.headers["access-control-allow-origin"] == "https://opendata.example.jp"
        other = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        pre = client.options("/v1/bus/stop-hourly", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert pre.status_code == 400
    # no allowlist: no CORS header at all
    with TestClient(create_app(_settings(tmp_path))) as client:
        assert "access-control-allow-origin" not in client.get(
            "/healthz", headers={"Origin": "https://opendata.example.jp"}).headers


def test_docs_page_loads_nothing_from_a_cdn(tmp_path):
    with TestClient(create_app(_settings(tmp_path))) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        srcs = [s.split('"')[1] for s in page.text.split("src=")[1:]] + [
            h.split('"')[1] for h in page.text.split("href=")[1:] if h.startswith('"/')]
        assert any(s.endswith(".js") for s in srcs)
        for src in srcs:
            if src.startswith("/"):
                assert client.get(src).status_code == 200, src


def test_503_says_nothing_internal(tmp_path):
    with TestClient(create_app(_settings(tmp_path))) as client:
        resp = client.get("/v1/bus/vehicle-positions.json")
        h = client.get("/healthz")
    assert resp.status_code == 503 and resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["detail"].startswith("InfluxDB unavailable")
    assert "127.0.0.1" not in resp.text and "Connect" not in resp.text and ":9" not in resp.text
    assert h.status_code == 503 and h.json()["influxdb"] == "unreachable"


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_newline_in_a_parameter_never_reaches_a_header(tmp_path, fmt):
    with TestClient(create_app(_settings(tmp_path))) as client:
        resp = client.get(f"/v1/bus/stop-hourly?date=2025-06-02&route=loop%0A&format={fmt}")
    assert resp.status_code == 422 and "route" in resp.json()["detail"]


# ---- a bad stored point never fails a feed (real InfluxDB)


def test_gtfs_rt_skips_and_counts_a_bad_stored_position(stack_info, influx_db, tmp_path, tokens):
    _, toks = tokens
    now = int(time.time() * 1000)
    base = {"lat": 35.06, "lon": 134.0, "speed_kmh": 10.0, "trip_id": "", "route_id": "", "start_date": "",
            "stop_id": "", "stop_sequence": 0.0, "stopped": False, "occupancy": 3.0}
    readings = [
        Reading(device_id="bus-01", kind="bus_position", ts=now - 5000, values=base),
        # valid under the wire contract, out of what a feed can carry
        Reading(device_id="bus-02", kind="bus_position", ts=now - 4000, values={**base, "occupancy_pct": 1e30}),
        # no position at all
        Reading(device_id="bus-03", kind="bus_position", ts=now - 3000,
                values={k: v for k, v in base.items() if k not in ("lat", "lon")}),
    ]
    batch = checked(TelemetryBatch(gateway_id="gw-bus-01", boot_id="boot-0001", seq=1, sent_at=now,
                                   readings=readings))
    influx_write(stack_info, influx_db, batch_to_lines(batch))
    settings = _settings(tmp_path)
    settings.influx = InfluxSettings(**influx_settings(stack_info, "reader", influx_db))
    with TestClient(create_app(settings)) as client:
        for _ in range(2):
            pb = client.get("/v1/bus/vehicle-positions.pb")
            assert pb.status_code == 200
        js = client.get("/v1/bus/vehicle-positions.json")
        assert js.status_code == 200
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {toks[FLEET]}"}).text
    feed = rt.FeedMessage()
    feed.ParseFromString(pb.content)
    assert [e.id for e in feed.entity] == ["bus-01"]
    skipped = [s.value for f in text_string_to_metric_families(metrics) if f.name == "cityos_api_points_skipped"
               for s in f.samples if s.name.endswith("_total") and s.labels["measurement"] == "bus_position"]
    assert skipped == [6.0]  # two bad points, three requests
