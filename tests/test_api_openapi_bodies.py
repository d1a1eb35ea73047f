"""The OpenAPI document types every JSON body: each JSON data route's 200 has an ``application/json`` schema (the
family's models: ``cityos_api/families/<family>_models.py``, ``cityos_api.core.Body``), closed to fields it does
not name, so the property run (tests/test_api_properties.py, schemathesis' ``response_schema_conformance``)
checks every body against it and a field added to a route without its model fails there. No InfluxDB needed: the
document alone, and schemathesis over a made-up answer.
"""

from __future__ import annotations

import typing
from datetime import timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import ignored_auth, positive_data_acceptance
from schemathesis.core.failures import FailureGroup

from cityos.landslide import CRITERIA, LEVELS
from cityos.wire import GatewayStatus
from cityos_api.app import create_app
from cityos_api.settings import ApiSettings

#: Routes with no JSON body to type, and why.
NOT_JSON = {
    "/v1/bus/vehicle-positions.pb": "GTFS-Realtime protobuf (binary): its schema is gtfs-realtime.proto",
    "/metrics": "Prometheus text exposition format",
}
#: The NGSI-LD facade (/ngsi-ld/v1/...) is typed by the ETSI NGSI-LD OAS schemas it declares (cityos_api/ngsi_ld/).
NGSI_LD = "/ngsi-ld/"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return TestClient(create_app(ApiSettings.model_validate({}))).get("/openapi.json").json()


def _schema(doc: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in s:
        s = doc["components"]["schemas"][s["$ref"].rsplit("/", 1)[1]]
    return s


def _reachable(doc: dict[str, Any], s: Any, seen: set[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(component name, schema) of every component ``s`` refers to, directly or not."""
    seen = set() if seen is None else seen
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(s, dict):
        ref = s.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[1]
            if name not in seen:
                seen.add(name)
                target = doc["components"]["schemas"][name]
                out.append((name, target))
                out += _reachable(doc, target, seen)
        for v in s.values():
            out += _reachable(doc, v, seen)
    elif isinstance(s, list):
        for v in s:
            out += _reachable(doc, v, seen)
    return out


def _json_routes(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, item["get"]) for path, item in doc["paths"].items()
            if "get" in item and not path.startswith(NGSI_LD) and path not in NOT_JSON]


def test_every_json_route_has_a_typed_200(doc):
    routes = _json_routes(doc)
    assert {p for p, _ in routes} >= {"/healthz", "/v1/bus/vehicle-positions.json", "/v1/fleet/devices",
                                      "/v1/forest/stations", "/v1/energy/districts/daily", "/v1/waste/trips"}
    assert all(p == "/healthz" or p.startswith("/v1/") for p, _ in routes), "a new kind of route: type it here"
    for path, op in routes:
        content = op["responses"]["200"].get("content", {})
        schema = content.get("application/json", {}).get("schema")
        assert schema and "$ref" in schema, f"{path}: its 200 JSON body has no schema"
        body = _schema(doc, schema)
        assert body["type"] == "object" and body["required"], path
        assert "dataset" in body["properties"] or path in ("/healthz", "/v1/bus/vehicle-positions.json",
                                                           "/v1/fleet/gateways/{gateway_id}"), path


def test_the_exceptions_are_routes_of_the_document(doc):
    for path in NOT_JSON:
        assert path in doc["paths"], f"{path}: gone from the document: take it off NOT_JSON"
        assert "application/json" not in doc["paths"][path]["get"]["responses"]["200"].get("content", {})
    assert any(p.startswith(NGSI_LD) for p in doc["paths"])


def test_bodies_name_every_field(doc):
    """Every object of a JSON body is closed (``additionalProperties: false``): a field a route adds and its model
    lacks fails the property run. A map (units by field name) is typed by its values instead. Every field but a
    constant, an enum or an object of its own is described."""
    for path, op in _json_routes(doc):
        for name, s in _reachable(doc, op["responses"]["200"]["content"]["application/json"]["schema"]):
            assert s.get("type") == "object", (path, name)
            assert s.get("additionalProperties") is False, f"{path}: {name} takes fields it does not name"
            for field, p in s["properties"].items():
                assert p.get("description") or p.get("$ref") or "const" in p or p.get("enum"), \
                    f"{name}.{field}: say what it is (unit, time zone, when null)"


def test_csv_is_declared_where_it_is_answered(doc):
    """A route that takes ``format`` answers CSV too and declares it; one that does not, declares JSON alone."""
    for path, op in _json_routes(doc):
        takes_format = any(p["name"] == "format" for p in op.get("parameters", []))
        content = op["responses"]["200"]["content"]
        assert ("text/csv" in content) == takes_format, path


def _enum(doc: dict[str, Any], model: str, field: str) -> set[Any]:
    p = doc["components"]["schemas"][model]["properties"][field]
    options = p.get("anyOf", [p])
    return {v for o in options for v in o.get("enum", [o["const"]] if "const" in o else [])}


def test_enums_are_the_kernels(doc):
    assert _enum(doc, "ForestAlertNow", "level") == {*LEVELS, "unknown"}
    assert _enum(doc, "ForestRawReading", "alert_level") == set(LEVELS)
    assert _enum(doc, "ForestEpisode", "level") == set(LEVELS) - {"none"}
    items = doc["components"]["schemas"]["ForestRawReading"]["properties"]["alert_criteria"]["items"]
    assert set(items["enum"]) == set(CRITERIA)
    states = set(typing.get_args(typing.get_type_hints(GatewayStatus)["state"]))
    assert _enum(doc, "FleetGateway", "state") == states


def test_schemathesis_checks_bodies_against_them(doc):
    """The property run's checks (schemathesis' defaults but the two it leaves out) include the body's schema:
    a body with a field its model does not name fails them."""
    schema = schemathesis.openapi.from_dict(doc)
    case = schema["/v1/bus/stops"]["GET"].Case(query={})
    body = {"dataset": "bus-stops", "items": [{"stop_id": "1001", "name_ja": "津山駅", "name_en": "Tsuyama Station",
                                               "name_kana": "つやまえき", "lat": 35.06, "lon": 134.0}]}
    request = httpx.Request("GET", "http://testserver/v1/bus/stops")

    def check(b: dict[str, Any]) -> None:
        resp = httpx.Response(200, json=b, request=request)
        resp.elapsed = timedelta(0)  # as if sent
        case.validate_response(resp, excluded_checks=[positive_data_acceptance, ignored_auth])

    check(body)
    for wrong in ({"surprise": 1}, {"lat": None}):
        with pytest.raises(FailureGroup) as failed:
            check({**body, "items": [{**body["items"][0], **wrong}]})
        assert [type(e).__name__ for e in failed.value.exceptions] == ["JsonSchemaError"]
        assert "Response violates schema" in str(failed.value.exceptions[0])
