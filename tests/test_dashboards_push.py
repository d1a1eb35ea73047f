"""`cityos dashboards push` against a stand-in Grafana HTTP API.

Grafana can't be installed here (see docs/dashboards.md), so this server keeps the objects the real API keeps
(datasources, folders, dashboards, alert rules, rule groups by uid), answers 404 for unknown uids as Grafana does,
and refuses requests without the bearer token. What it checks is push's side of the contract: every committed
object arrives, by uid, with the environment expanded, and a second push updates instead of duplicating.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from dashboards.push import PROVISIONING, PushError, load, push

TOKEN = "glsa_test_token"
ENV = {"INFLUXDB_URL": "http://influx.example:8086", "INFLUXDB_DB": "cityos", "INFLUXDB_USER": "grafana",
       "INFLUXDB_PASSWORD": "s3cret"}  # fmt: skip


class FakeGrafana:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {"ds": {}, "folder": {}, "dash": {}, "rule": {}, "group": {}}
        self.calls: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def _reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                fake.calls.append((method, self.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._reply(401, {"message": "Unauthorized"})
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                code, out = fake.route(method, self.path.split("?")[0], body)
                self._reply(code, out)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        o = self.objects
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "datasources", "uid"]:
            uid = parts[3]
            if method == "GET":
                return (200, o["ds"][uid]) if uid in o["ds"] else (404, {"message": "Data source not found"})
            if uid not in o["ds"]:
                return 404, {"message": "Data source not found"}
            o["ds"][uid] = body
            return 200, {"message": "Datasource updated"}
        if parts == ["api", "datasources"] and method == "POST":
            if body["uid"] in o["ds"] or any(d["name"] == body["name"] for d in o["ds"].values()):
                return 409, {"message": "data source with the same name already exists"}
            o["ds"][body["uid"]] = body
            return 200, {"message": "Datasource added"}
        if parts[:2] == ["api", "folders"]:
            if method == "GET":
                uid = parts[2]
                return (200, o["folder"][uid]) if uid in o["folder"] else (404, {"message": "folder not found"})
            if body["uid"] in o["folder"]:
                return 409, {"message": "folder exists"}
            o["folder"][body["uid"]] = body
            return 200, body
        if parts[:3] == ["api", "dashboards", "uid"]:
            uid = parts[3]
            return (200, {"dashboard": o["dash"][uid]}) if uid in o["dash"] else (404, {"message": "not found"})
        if parts == ["api", "dashboards", "db"]:
            d = body["dashboard"]
            if d["uid"] in o["dash"] and not body.get("overwrite"):
                return 412, {"message": "version-mismatch"}
            if body["folderUid"] not in o["folder"]:
                return 400, {"message": "folder not found"}
            o["dash"][d["uid"]] = d
            return 200, {"status": "success", "uid": d["uid"]}
        if parts[:4] == ["api", "v1", "provisioning", "alert-rules"]:
            if method == "GET":
                uid = parts[4]
                return (200, o["rule"][uid]) if uid in o["rule"] else (404, None)
            uid = parts[4] if len(parts) > 4 else body["uid"]
            if method == "POST" and uid in o["rule"]:
                return 409, {"message": "rule exists"}
            if method == "PUT" and uid not in o["rule"]:
                return 404, None
            if body["folderUID"] not in o["folder"]:
                return 400, {"message": "folder not found"}
            o["rule"][uid] = body
            return (201 if method == "POST" else 200), body
        if parts[:4] == ["api", "v1", "provisioning", "folder"] and parts[5] == "rule-groups" and method == "PUT":
            o["group"][f"{parts[4]}/{parts[6]}"] = body
            for r in body["rules"]:
                o["rule"][r["uid"]] = r
            return 200, body
        return 404, {"message": f"no route {method} {path}"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    g = FakeGrafana()
    try:
        yield g
    finally:
        g.close()


def test_push_upserts_every_committed_object_by_uid(grafana: FakeGrafana):
    committed = load(PROVISIONING, ENV)
    first = push(grafana.url, TOKEN, env=ENV)
    o = grafana.objects
    assert set(o["dash"]) == {d["uid"] for d in committed["dashboards"]} and len(o["dash"]) >= 5
    rules = {r["uid"] for g in committed["groups"] for r in g["rules"]}
    assert set(o["rule"]) == rules and len(rules) >= 4
    assert all(r["folderUID"] == "cityos" for r in o["rule"].values())
    (ds,) = o["ds"].values()
    assert ds["url"] == ENV["INFLUXDB_URL"] and ds["secureJsonData"]["password"] == "s3cret"
    assert "$" not in json.dumps(ds)  # every environment reference expanded
    for key, group in o["group"].items():  # the group PUT carries all its rules, not only the interval
        folder, name = key.split("/")
        assert folder == "cityos" and {r["uid"] for r in group["rules"]} == {
            r["uid"] for g in committed["groups"] if g["name"] == name for r in g["rules"]
        }
    assert not first.updated or all(u.startswith("folder") for u in first.updated)

    snapshot = json.dumps(o, sort_keys=True, default=str)
    second = push(grafana.url, TOKEN, env=ENV)
    assert not second.created and len(second.updated) == len(first.created)
    assert json.dumps(o, sort_keys=True, default=str) == snapshot  # idempotent: same objects, nothing doubled


def test_push_names_a_missing_variable_and_a_refused_token(grafana: FakeGrafana):
    with pytest.raises(PushError, match="INFLUXDB_PASSWORD"):
        push(grafana.url, TOKEN, env={k: v for k, v in ENV.items() if k != "INFLUXDB_PASSWORD"})
    with pytest.raises(PushError, match="refused"):
        push(grafana.url, "wrong-token", env=ENV)
    assert not grafana.objects["ds"]


def test_the_datasource_file_refers_to_the_environment_for_secrets():
    raw = (PROVISIONING / "datasources").glob("*.yaml")
    for f in raw:
        doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        for ds in doc["datasources"]:
            assert str(ds["secureJsonData"]["password"]).startswith("$")
