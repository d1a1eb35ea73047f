"""The read-only NGSI-LD facade (cityos_api/ngsi_ld, docs/ngsi-ld.md) against its contract, the NGSI-LD OAS 1.7.1
(tests/data/ngsi-ld-oas-1.7.1.yaml, ETSI GS CIM 009 V1.7.1): every answer is validated against its operation's
response schema from that file ($refs resolved within it), headers checked (Link to our @context, content types,
NGSILD-Results-Count).

The core runs over a provider of fixed entities (q, geo with known distances, paging, options, Accept, 400s);
the forest stations' provider runs against the session's InfluxDB through the whole app.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from helpers import influx_write
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from citylab.stack import influx_settings
from cityos.wire import Reading, TelemetryBatch, checked
from cityos_api import ngsi_ld
from cityos_api.app import create_app
from cityos_api.auth import SERVICE, TokenStore, parse_expiry
from cityos_api.core import MAX_AGE_TTLS, Api
from cityos_api.families import forest_ngsi
from cityos_api.families.forest_ngsi import ForestProvider
from cityos_api.ngsi_ld import Attr, AttrInfo, Entity, TypeInfo
from cityos_api.ngsi_ld.facade import MAX_ANSWER_INSTANCES, MAX_INSTANCES, WORLD_TTL_S, per_series_limit
from cityos_api.ngsi_ld.query import haversine_m
from cityos_api.settings import ApiSettings, InfluxSettings
from ingest.lineproto import batch_to_lines
from rollup import RollupConfig, run_once

OAS_FILE = Path(__file__).parent / "data" / "ngsi-ld-oas-1.7.1.yaml"
OAS: dict[str, Any] = yaml.safe_load(OAS_FILE.read_text(encoding="utf-8"))
OAS_URI = "urn:ngsi-ld-oas-1.7.1"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
LINK_RE = re.compile(r'^<(http[^>]+/ngsi-ld/v1/jsonldContexts/cityos)>; '
                     r'rel="http://www\.w3\.org/ns/json-ld#context"; type="application/ld\+json"$')
V = "/ngsi-ld/v1"


# ------------------------------------------------------------------------------------------------------------
# the contract


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _validator(doc: dict[str, Any], pointer: str) -> OAS31Validator:
    registry = Registry().with_resource(OAS_URI, Resource.from_contents(doc, default_specification=DRAFT202012))
    return OAS31Validator({"$ref": OAS_URI + pointer}, registry=registry,
                          format_checker=OAS31Validator.FORMAT_CHECKER)


def response_schema(path: str, status: str = "200", media: str = "application/json") -> OAS31Validator:
    """The OAS's schema of ``GET path``'s answer (its ``application/json+ld`` for ``application/ld+json``)."""
    key = "application/json+ld" if media == "application/ld+json" else media
    return _validator(OAS, _pointer("paths", path, "get", "responses", status, "content", key, "schema"))


def error_schema(name: str = "BadRequest") -> OAS31Validator:
    return _validator(OAS, _pointer("components", "responses", name, "content", "application/json", "schema"))


def derived(patch: dict[str, Any]) -> dict[str, Any]:
    """The OAS with schemas added (for the representations it has no schema of)."""
    doc = copy.deepcopy(OAS)
    doc["components"]["schemas"].update(patch)
    return doc


# keyValues (4.5.4), temporalValues (4.5.9), aggregatedValues (4.5.19): the OAS 1.7.1 has no schema for them (its
# Entity allows attributes only as Property/Relationship/GeoProperty objects, its EntityTemporal only as arrays of
# instances). These are the OAS's own Entity / EntityTemporal with the attribute shape of those clauses.
_TIME = {"type": "string", "format": "date-time"}
SIMPLIFIED = derived({"SimplifiedEntity": {
    "type": "object", "required": ["id", "type"],
    "properties": {"id": {"$ref": "#/components/schemas/Entity/properties/id"},
                   "type": {"$ref": "#/components/schemas/Entity/properties/type"},
                   "location": {"$ref": "#/components/schemas/Geometry"}},
    "additionalProperties": {"$ref": "#/components/schemas/AnyValue"}}})
_KIND = {"type": "string", "enum": ["Property", "GeoProperty", "Relationship"]}
TEMPORAL_VALUES = derived({"TemporalValuesEntity": {
    "type": "object", "required": ["id", "type"],
    "properties": {"id": {"$ref": "#/components/schemas/EntityTemporal/properties/id"},
                   "type": {"$ref": "#/components/schemas/EntityTemporal/properties/type"}},
    "additionalProperties": {
        "type": "object", "required": ["type", "values"], "additionalProperties": False,
        "properties": {"type": _KIND, "values": {"type": "array", "minItems": 1, "items": {
            "type": "array", "prefixItems": [{}, _TIME], "minItems": 2, "maxItems": 2}}}}}})
AGGREGATED = derived({"AggregatedEntity": {
    "type": "object", "required": ["id", "type"],
    "properties": {"id": {"$ref": "#/components/schemas/EntityTemporal/properties/id"},
                   "type": {"$ref": "#/components/schemas/EntityTemporal/properties/type"}},
    "additionalProperties": {
        "type": "object", "required": ["type"], "additionalProperties": False,
        "properties": {"type": _KIND, **{m: {"type": "array", "items": {
            "type": "array", "prefixItems": [{}, _TIME, _TIME], "minItems": 3, "maxItems": 3}}
            for m in ("totalCount", "distinctCount", "sum", "avg", "min", "max", "stddev", "sumsq")}}}}})


def valid(validator: OAS31Validator, body: Any) -> None:
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message[:300]}" for e in errors[:5])


def valid_ld(path: str, body: Any) -> None:
    """A JSON-LD entity answer. The OAS's ``application/json+ld`` schema of entities is allOf (``@context``,
    Entity), and Entity's additionalProperties (attributes only) applies to ``@context`` as well: no body with an
    ``@context`` passes it. So: ``@context`` against LdContext, the rest against the ``application/json`` schema."""
    ctx = _validator(OAS, "#/components/schemas/LdContext")
    items = body if isinstance(body, list) else [body]
    for item in items:
        valid(ctx, item["@context"])
    bare = [{k: v for k, v in item.items() if k != "@context"} for item in items]
    valid(response_schema(path), bare if isinstance(body, list) else bare[0])
    assert list(response_schema(path, media="application/ld+json").iter_errors(body))  # the OAS defect, still there


def check_json(resp: Any, schema: OAS31Validator, status: int = 200, count: int | None = None) -> Any:
    """A JSON answer: status, content type, the Link to our context, the count header, and its schema."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert LINK_RE.match(resp.headers["link"]), resp.headers["link"]
    if count is not None:
        assert resp.headers["ngsild-results-count"] == str(count)
    body = resp.json()
    valid(schema, body)
    return body


def check_error(resp: Any, status: int, kind: str, *words: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    valid(error_schema("NotFound" if status == 404 else "BadRequest"), body)
    assert body["type"] == ERR + kind and body["status"] == status and body["title"]
    for w in words:
        assert w in body["detail"], body["detail"]
    return body


# ------------------------------------------------------------------------------------------------------------
# a provider of fixed entities

T0 = 1_780_000_000_000  # 2026-05-28T20:26:40Z
STATION = TypeInfo("Station", {
    "weight": AttrInfo(unit_code="KGM", temporal=True),
    "level": AttrInfo(unit_code="P1", temporal=True),
    "district": AttrInfo(), "active": AttrInfo(), "address": AttrInfo(), "dateObserved": AttrInfo(),
    "tags": AttrInfo(),
    "location": AttrInfo("GeoProperty", iri="https://uri.etsi.org/ngsi-ld/location"),
}, iri="https://example.org/terms/Station")
TRUCK = TypeInfo("Truck", {
    "cargoWeight": AttrInfo(unit_code="KGM", temporal=True),
    "refStation": AttrInfo("Relationship"),
    "location": AttrInfo("GeoProperty", iri="https://uri.etsi.org/ngsi-ld/location"),
})


def _pt(lon: float, lat: float) -> Attr:
    return Attr({"type": "Point", "coordinates": [lon, lat]}, T0)


def _station(n: int, lon: float | None, lat: float | None, district: str, weight: float | None, **kw: Any
             ) -> Entity:
    attrs: dict[str, Attr] = {"district": Attr(district), "active": Attr(n % 2 == 1),
                              "address": Attr({"district": district, "street": f"{n}-chome"}),
                              "dateObserved": Attr(f"2026-05-{20 + n:02d}T00:00:00Z"),
                              "tags": Attr(["a", f"t{n}"])}
    if lon is not None and lat is not None:
        attrs["location"] = _pt(lon, lat)
    if weight is not None:
        attrs["weight"] = Attr(weight, T0 + n)
    attrs.update(kw)
    return Entity(f"urn:ngsi-ld:Station:S{n}", "Station", attrs)


#: S1 at the origin; S2 0.01° north (1111.95 m); S3 0.01° east (910.9 m at 35°N); S4 ~14 km; S5 nowhere.
ENTITIES = [
    _station(1, 134.0, 35.0, "Kamo", 120.5),
    _station(2, 134.0, 35.01, "Kamo", 80),
    _station(3, 134.01, 35.0, "Sakuto", 100),
    _station(4, 134.1, 35.1, "Kamo", 300.25),
    _station(5, None, None, "Hokubo", None),
    Entity("urn:ngsi-ld:Truck:T1", "Truck", {"cargoWeight": Attr(1500.0, T0),
                                             "refStation": Attr("urn:ngsi-ld:Station:S1"),
                                             "location": _pt(134.0005, 35.0005)}),
]


class FixedProvider:
    def __init__(self, n_instances: int = 3) -> None:
        self.types = {"Station": STATION, "Truck": TRUCK}
        self.n = n_instances
        self.calls: list[tuple[Any, ...]] = []
        self.fail = False

    def entities(self, api: Api) -> list[Entity]:
        if self.fail:
            raise HTTPException(503, "InfluxDB unavailable: try again shortly")
        return list(ENTITIES)

    def history(self, api, ids, attrs, start_ms, end_ms, last_n, max_n):
        self.calls.append(("history", tuple(ids), tuple(attrs), start_ms, end_ms, last_n, max_n))
        n = min(last_n or self.n, max_n)
        out = {}
        for i in ids:
            per = {a: [(float(k), start_ms + 60_000 * k) for k in range(n)] for a in attrs if a != "level"}
            out[i] = {a: v for a, v in per.items() if any(a in e.attrs for e in ENTITIES if e.id == i)}
        return out

    def aggregated(self, api, ids, attrs, methods, period_ms, start_ms, end_ms):
        self.calls.append(("aggregated", tuple(ids), tuple(attrs), tuple(methods), period_ms, start_ms, end_ms))
        step = period_ms or end_ms - start_ms
        return {i: {a: {m: [(1.5, start_ms, start_ms + step), (2.5, start_ms + step, start_ms + 2 * step)]
                        for m in methods} for a in attrs} for i in ids}


@pytest.fixture(scope="module")
def token(tmp_path_factory) -> tuple[Any, str]:
    d = tmp_path_factory.mktemp("ngsi")
    _, tok = TokenStore(d / "tokens.json").create("platform", [SERVICE], parse_expiry("30d"))
    return d / "tokens.json", tok


def _settings(tokens_file: Path, influx: InfluxSettings | None = None) -> ApiSettings:
    return ApiSettings.model_validate({
        "influx": influx or InfluxSettings(url="http://127.0.0.1:9", db="x", timeout_s=2),
        "auth": {"tokens_file": tokens_file}})


@pytest.fixture(scope="module")
def fixed(token) -> tuple[TestClient, FixedProvider]:
    tokens_file, tok = token
    provider = FixedProvider()
    app = FastAPI()
    ngsi_ld.install(app, Api(_settings(tokens_file)), [provider])
    client = TestClient(app, headers={"Authorization": f"Bearer {tok}"})
    return client, provider


def _get(client: TestClient, path: str, params: dict[str, Any] | None = None, **headers: str) -> Any:
    return client.get(V + path, params=params, headers={k.replace("_", "-"): v for k, v in headers.items()})


def _ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [e["id"].rsplit(":", 1)[1] for e in resp.json()]


# ------------------------------------------------------------------------------------------------------------
# entities


def test_entities_normalized_keyvalues_and_one_entity_follow_the_oas(fixed):
    client, _ = fixed
    body = check_json(_get(client, "/entities", {"type": "Station"}), response_schema("/entities"))
    assert [e["id"] for e in body] == [f"urn:ngsi-ld:Station:S{n}" for n in range(1, 6)]
    s1 = body[0]
    assert s1["weight"] == {"type": "Property", "value": 120.5, "observedAt": "2026-05-28T20:26:40.001Z",
                            "unitCode": "KGM"}
    assert s1["location"] == {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [134.0, 35.0]},
                              "observedAt": "2026-05-28T20:26:40Z"}
    assert s1["district"] == {"type": "Property", "value": "Kamo"}

    one = check_json(_get(client, "/entities/urn:ngsi-ld:Truck:T1"), response_schema("/entities/{entityId}"))
    assert one["refStation"] == {"type": "Relationship", "object": "urn:ngsi-ld:Station:S1"}

    simplified = response_schema("/entities")  # the envelope (an array) from the OAS ...
    kv_item = _validator(SIMPLIFIED, "#/components/schemas/SimplifiedEntity")  # ... each entity simplified
    for params in ({"type": "Station", "options": "keyValues"}, {"type": "Station", "format": "simplified"},
                   {"type": "Station", "options": "keyValues,sysAttrs"}):
        resp = _get(client, "/entities", params)
        kv = resp.json()
        assert resp.status_code == 200 and isinstance(kv, list)
        for e in kv:
            valid(kv_item, e)
        assert kv[0]["weight"] == 120.5 and kv[0]["location"] == {"type": "Point", "coordinates": [134.0, 35.0]}
        assert kv[0]["address"] == {"district": "Kamo", "street": "1-chome"}
    assert not list(simplified.iter_errors([]))
    # the OAS's own Entity schema refuses the simplified form: hence the derived schema above
    assert list(response_schema("/entities").iter_errors(kv))

    concise = _get(client, "/entities/urn:ngsi-ld:Station:S1", {"options": "concise"}).json()
    assert concise["weight"] == {"value": 120.5, "observedAt": "2026-05-28T20:26:40.001Z", "unitCode": "KGM"}

    only = check_json(_get(client, "/entities/urn:ngsi-ld:Station:S1", {"attrs": "weight,nothing"}),
                      response_schema("/entities/{entityId}"))
    assert set(only) == {"id", "type", "weight"}


@pytest.mark.parametrize(("q", "expect"), [
    ("weight>100", ["S1", "S4"]),
    ("weight>=100;district==\"Kamo\"", ["S1", "S4"]),
    ("district==\"Kamo\"|district==\"Sakuto\"", ["S1", "S2", "S3", "S4"]),
    ("(district==\"Kamo\"|district==\"Sakuto\");weight<100", ["S2"]),
    ("district==\"Sakuto\";weight<100|district==\"Hokubo\"", ["S5"]),  # ';' binds tighter than '|'
    ("district==\"Kamo\"|district==\"Sakuto\";weight<100", ["S1", "S2", "S4"]),
    ("weight==80..120.5", ["S1", "S2", "S3"]),
    ("weight!=80..120.5", ["S4"]),  # S5 has no weight: a term on a missing attribute is false
    ("weight<=80", ["S2"]),
    ("weight==300.25", ["S4"]),
    ("weight==-1", []),
    ("weight==1e2", ["S3"]),
    ("district==\"Kamo\",\"Hokubo\"", ["S1", "S2", "S4", "S5"]),
    ("district!=\"Kamo\"", ["S3", "S5"]),
    ("weight", ["S1", "S2", "S3", "S4"]),
    ("active==true", ["S1", "S3", "S5"]),
    ("active==false;weight", ["S2", "S4"]),
    ("address[street]==\"3-chome\"", ["S3"]),
    ("address[nothing]==\"x\"", []),
    ("dateObserved>2026-05-23T00:00:00Z", ["S4", "S5"]),
    ("dateObserved==2026-05-21T00:00:00Z..2026-05-22T09:00:00+09:00", ["S1", "S2"]),
    ("tags==\"t2\"", ["S2"]),  # a list matches when one member does
    ("district>\"K\";district<\"L\"", ["S1", "S2", "S4"]),
    ("((weight>100))", ["S1", "S4"]),
    ("weight>\"100\"", []),  # a string does not compare with a number
    ("refStation==urn:ngsi-ld:Station:S1", ["T1"]),
])
def test_q_subset(fixed, q, expect):
    client, _ = fixed
    assert _ids(_get(client, "/entities", {"q": q})) == expect


@pytest.mark.parametrize("q", [
    "", "weight>", "weight=>1", "(weight>1", "weight>1)", "weight~=\"a.*\"", "weight!~=\"a\"", "a.b==1",
    "weight>abc", "district==\"unterminated", "weight>1;", ";weight>1", "weight>1||weight<2", "weight>1..2",
    "__import__('os').system('x')", "weight==1 or 1==1", "weight[==1", "weight==2024-13-45T99:00:00Z",
    "x" * 2001, ";".join(["w==1"] * 101),
])
def test_q_outside_the_subset_is_400(fixed, q):
    client, _ = fixed
    check_error(_get(client, "/entities", {"q": q}), 400, "BadRequestData", "q")


def test_at_least_one_selector_and_other_selectors(fixed):
    client, _ = fixed
    check_error(_get(client, "/entities"), 400, "BadRequestData", "at least one of type")
    check_error(_get(client, "/entities", {"limit": "5"}), 400, "BadRequestData")
    assert _ids(_get(client, "/entities", {"id": "urn:ngsi-ld:Station:S2,urn:ngsi-ld:Truck:T1"})) == ["S2", "T1"]
    assert _ids(_get(client, "/entities", {"idPattern": r"urn:ngsi-ld:Station:S[24]"})) == ["S2", "S4"]
    assert _ids(_get(client, "/entities", {"attrs": "cargoWeight"})) == ["T1"]
    assert _ids(_get(client, "/entities", {"type": "Truck,Station", "q": "weight>200"})) == ["S4"]
    assert _ids(_get(client, "/entities", {"type": "Nothing"})) == []
    # a type or attribute as its full IRI from our context
    assert _ids(_get(client, "/entities", {"type": "https://example.org/terms/Station", "q": "weight>200"})) == ["S4"]
    check_error(_get(client, "/entities", {"idPattern": "(a+)+b"}), 400, "BadRequestData", "idPattern")
    check_error(_get(client, "/entities", {"idPattern": "[unclosed"}), 400, "BadRequestData", "idPattern")
    check_error(_get(client, "/entities", {"id": "not a uri"}), 400, "BadRequestData", "id")
    check_error(_get(client, "/entities", {"type": "Bad Type!"}), 400, "BadRequestData", "type")


def test_geo_near_and_within(fixed):
    client, _ = fixed
    # the known distances, by an independent formula (spherical law of cosines)
    def slc(lon1, lat1, lon2, lat2):
        p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
        return 6_371_008.8 * math.acos(math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl))

    assert haversine_m(134.0, 35.0, 134.0, 35.01) == pytest.approx(1111.95, abs=0.01)
    assert haversine_m(134.0, 35.0, 134.01, 35.0) == pytest.approx(slc(134.0, 35.0, 134.01, 35.0), abs=0.01)
    assert 910 < haversine_m(134.0, 35.0, 134.01, 35.0) < 912

    def near(rel: str, **kw: str) -> list[str]:
        return _ids(_get(client, "/entities", {"type": "Station", "georel": rel, "geometry": "Point",
                                               "coordinates": "[134.0,35.0]", **kw}))

    assert near("near;maxDistance==1000") == ["S1", "S3"]
    assert near("near;maxDistance==1112") == ["S1", "S2", "S3"]
    assert near("near;maxDistance==1111") == ["S1", "S3"]
    assert near("near;minDistance==1000") == ["S2", "S4"]
    assert near("near;minDistance==500;maxDistance==1000") == ["S3"]
    # without a type: the truck 0.0005° off is 70 m away
    assert _ids(_get(client, "/entities", {"georel": "near;maxDistance==100", "geometry": "Point",
                                           "coordinates": "[134.0,35.0]"})) == ["S1", "T1"]

    square = [[133.995, 34.995], [134.005, 34.995], [134.005, 35.015], [133.995, 35.015], [133.995, 34.995]]
    hole = [[133.999, 35.009], [134.001, 35.009], [134.001, 35.011], [133.999, 35.011], [133.999, 35.009]]

    def within(rings: list[Any]) -> list[str]:
        return _ids(_get(client, "/entities", {"type": "Station", "georel": "within", "geometry": "Polygon",
                                               "coordinates": json.dumps(rings)}))

    assert within([square]) == ["S1", "S2"]
    assert within([square, hole]) == ["S1"]

    for params, word in [
        ({"georel": "near;maxDistance==10", "geometry": "Point"}, "together"),
        ({"georel": "near", "geometry": "Point", "coordinates": "[134,35]"}, "georel"),
        ({"georel": "near;maxDistance==x", "geometry": "Point", "coordinates": "[134,35]"}, "georel"),
        ({"georel": "near;maxDistance==10", "geometry": "Point", "coordinates": "[35,200]"}, "geometry"),
        ({"georel": "near;maxDistance==10", "geometry": "Polygon", "coordinates": "[134,35]"}, "geometry"),
        ({"georel": "within", "geometry": "Polygon", "coordinates": "[[[134,35],[135,35],[134,35]]]"}, "Polygon"),
        ({"georel": "within", "geometry": "Polygon", "coordinates": "not json"}, "coordinates"),
        ({"georel": "intersects", "geometry": "Polygon", "coordinates": json.dumps([square])}, "georel"),
    ]:
        check_error(_get(client, "/entities", {"type": "Station", **params}), 400, "BadRequestData", word)


def test_paging_and_count(fixed):
    client, _ = fixed
    schema = response_schema("/entities")
    body = check_json(_get(client, "/entities", {"type": "Station", "limit": "2", "offset": "1", "count": "true"}),
                      schema, count=5)
    assert [e["id"][-2:] for e in body] == ["S2", "S3"]
    assert check_json(_get(client, "/entities", {"type": "Station", "limit": "0", "count": "true"}), schema,
                      count=5) == []
    assert check_json(_get(client, "/entities", {"type": "Station", "offset": "4"}), schema)[0]["id"][-2:] == "S5"
    assert "ngsild-results-count" not in _get(client, "/entities", {"type": "Station"}).headers
    assert len(_get(client, "/entities", {"type": "Station", "limit": "1000"}).json()) == 5
    for params, word in [({"limit": "1001"}, "limit"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
                         ({"offset": "-1"}, "offset"), ({"count": "yes"}, "count")]:
        check_error(_get(client, "/entities", {"type": "Station", **params}), 400, "BadRequestData", word)


def test_options_errors(fixed):
    client, _ = fixed
    check_error(_get(client, "/entities", {"type": "Station", "options": "keyValues,normalized"}), 400,
                "InvalidRequest", "only one")
    check_error(_get(client, "/entities", {"type": "Station", "options": "temporalValues"}), 400,
                "InvalidRequest", "temporalValues")
    check_error(_get(client, "/entities", {"type": "Station", "format": "csv"}), 400, "BadRequestData", "format")


def test_accept_negotiation_and_context(fixed):
    client, _ = fixed
    # JSON-LD: @context in the body, no Link
    resp = _get(client, "/entities", {"type": "Truck"}, accept="application/ld+json")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/ld+json"
    assert "link" not in resp.headers
    body = resp.json()
    valid_ld("/entities", body)
    ctx = body[0]["@context"]
    assert ctx[0].startswith("https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context")
    one = _get(client, "/entities/urn:ngsi-ld:Truck:T1", accept="application/ld+json").json()
    valid_ld("/entities/{entityId}", one)

    # the context document the Link points at: open (a JSON-LD processor fetches it without a token)
    link = _get(client, "/entities", {"type": "Truck"}).headers["link"]
    url = LINK_RE.match(link).group(1)  # type: ignore[union-attr]
    doc = TestClient(client.app).get(urllib.parse.urlsplit(url).path)
    assert doc.status_code == 200 and doc.headers["content-type"] == "application/ld+json"
    terms = doc.json()["@context"][1]
    assert doc.json()["@context"] == ctx
    assert terms["Station"] == "https://example.org/terms/Station"
    assert terms["cargoWeight"] == "urn:tsuyama-cityos:terms:cargoWeight"
    assert "location" not in terms  # a core term: never redefined

    # GeoJSON
    resp = _get(client, "/entities", {"type": "Station"}, accept="application/geo+json")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/geo+json"
    assert LINK_RE.match(resp.headers["link"])
    fc = resp.json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 5
    with_geometry = {**fc, "features": [f for f in fc["features"] if f["geometry"] is not None]}
    valid(response_schema("/entities", media="application/geo+json"), with_geometry)
    assert fc["features"][0]["geometry"] == {"type": "Point", "coordinates": [134.0, 35.0]}
    assert fc["features"][0]["properties"]["type"] == "Station"
    assert fc["features"][4]["geometry"] is None  # S5 has no location
    feat = _get(client, "/entities/urn:ngsi-ld:Truck:T1", accept="application/geo+json").json()
    valid(response_schema("/entities/{entityId}", media="application/geo+json"), feat)
    assert _get(client, "/entities/urn:ngsi-ld:Truck:T1", {"geometryProperty": "nothing"},
                accept="application/geo+json").json()["geometry"] is None

    # preferences, wildcards, 406
    assert _get(client, "/entities", {"type": "Truck"}, accept="*/*").headers["content-type"] == "application/json"
    assert _get(client, "/entities", {"type": "Truck"},
                accept="text/html;q=0.9, application/geo+json;q=0.5").headers["content-type"] == \
        "application/geo+json"
    assert _get(client, "/entities", {"type": "Truck"},
                accept="application/json;q=0.1, application/ld+json").headers["content-type"] == \
        "application/ld+json"
    resp = _get(client, "/entities", {"type": "Truck"}, accept="text/html")
    assert resp.status_code == 406 and resp.json()["status"] == 406
    valid(error_schema(), resp.json())
    assert _get(client, "/types", accept="application/geo+json").status_code == 406

    # a request's Link to a context we do not know: accepted, nothing expanded
    resp = _get(client, "/entities", {"type": "Truck"},
                link='<https://example.org/other.jsonld>; rel="http://www.w3.org/ns/json-ld#context"; '
                     'type="application/ld+json"')
    assert resp.status_code == 200 and _ids(resp) == ["T1"]


def test_types_and_attributes_follow_the_oas(fixed):
    client, _ = fixed
    tl = check_json(_get(client, "/types"), response_schema("/types"))
    assert tl["type"] == "EntityTypeList" and tl["typeList"] == ["Station", "Truck"]
    details = check_json(_get(client, "/types", {"details": "true"}), response_schema("/types"))
    assert details[0] == {"id": "https://example.org/terms/Station", "type": "EntityType", "typeName": "Station",
                          "attributeNames": ["active", "address", "dateObserved", "district", "location", "tags",
                                             "weight"]}
    info = check_json(_get(client, "/types/Station"), response_schema("/types/{type}"))
    assert info["entityCount"] == 5 and info["typeName"] == "Station"
    assert {a["attributeName"]: a["attributeTypes"] for a in info["attributeDetails"]}["location"] == \
        ["GeoProperty"]
    assert check_json(_get(client, "/types/https%3A%2F%2Fexample.org%2Fterms%2FStation"),
                      response_schema("/types/{type}"))["entityCount"] == 5
    ld = _get(client, "/types/Truck", accept="application/ld+json")
    valid(response_schema("/types/{type}", media="application/ld+json"), ld.json())

    al = check_json(_get(client, "/attributes"), response_schema("/attributes"))
    assert al["type"] == "AttributeList" and "cargoWeight" in al["attributeList"] and "weight" in al["attributeList"]
    ad = check_json(_get(client, "/attributes", {"details": "true"}), response_schema("/attributes"))
    loc = next(a for a in ad if a["attributeName"] == "location")
    assert loc["attributeCount"] == 5 and loc["typeNames"] == ["Station", "Truck"]
    w = check_json(_get(client, "/attributes/weight"), response_schema("/attributes/{attrId}"))
    assert w == {"id": "urn:tsuyama-cityos:terms:weight", "type": "Attribute", "attributeName": "weight",
                 "attributeCount": 4, "attributeTypes": ["Property"], "typeNames": ["Station"]}

    check_error(_get(client, "/types/Nothing"), 404, "ResourceNotFound", "Nothing")
    check_error(_get(client, "/attributes/nothing"), 404, "ResourceNotFound")
    check_error(_get(client, "/entities/urn:ngsi-ld:Station:S9"), 404, "ResourceNotFound", "S9")
    check_error(_get(client, "/entities/urn:ngsi-ld:Station:S1", {"type": "Truck"}), 404, "ResourceNotFound")
    check_error(_get(client, "/entities/urn:ngsi-ld:Station:S5", {"attrs": "weight"}), 404, "ResourceNotFound")
    check_error(_get(client, "/entities/not-a-uri"), 400, "BadRequestData", "entityId")


# ------------------------------------------------------------------------------------------------------------
# temporal


BETWEEN = {"timerel": "between", "timeAt": "2026-05-01T00:00:00Z", "endTimeAt": "2026-05-02T00:00:00Z"}
MAY1 = 1_777_593_600_000


def test_temporal_normalized_and_values_follow_the_oas(fixed):
    client, provider = fixed
    one = check_json(_get(client, "/temporal/entities/urn:ngsi-ld:Station:S1", BETWEEN),
                     response_schema("/temporal/entities/{entityId}"))
    assert one["id"] == "urn:ngsi-ld:Station:S1" and set(one) == {"id", "type", "weight"}  # level: no instances
    assert one["weight"][1] == {"type": "Property", "value": 1.0, "observedAt": "2026-05-01T00:01:00Z",
                                "unitCode": "KGM"}
    assert provider.calls[-1] == ("history", ("urn:ngsi-ld:Station:S1",), ("level", "weight"), MAY1,
                                  MAY1 + 86_400_000, None, MAX_ANSWER_INSTANCES // 2 + 1)  # two attributes

    many = check_json(_get(client, "/temporal/entities", {"type": "Station", "q": "weight>100", "count": "true",
                                                          "lastN": "2", **BETWEEN}),
                      response_schema("/temporal/entities"), count=2)
    assert [e["id"][-2:] for e in many] == ["S1", "S4"] and len(many[0]["weight"]) == 2
    assert provider.calls[-1][5] == 2

    tv = _get(client, "/temporal/entities", {"type": "Station,Truck", "attrs": "weight,cargoWeight",
                                             "options": "temporalValues", **BETWEEN})
    body = check_json(tv, OAS31Validator({"type": "array"}))
    item = _validator(TEMPORAL_VALUES, "#/components/schemas/TemporalValuesEntity")
    for e in body:
        valid(item, e)
    assert body[0]["weight"] == {"type": "Property", "values": [[0.0, "2026-05-01T00:00:00Z"],
                                                                [1.0, "2026-05-01T00:01:00Z"],
                                                                [2.0, "2026-05-01T00:02:00Z"]]}
    assert body[-1]["id"] == "urn:ngsi-ld:Truck:T1" and "cargoWeight" in body[-1]
    # the OAS's EntityTemporal allows only arrays of instances: it refuses the simplified temporal form
    assert list(response_schema("/temporal/entities").iter_errors(body))

    ld = _get(client, "/temporal/entities/urn:ngsi-ld:Truck:T1", BETWEEN, accept="application/ld+json")
    assert ld.headers["content-type"] == "application/ld+json" and "link" not in ld.headers
    valid(response_schema("/temporal/entities/{entityId}", media="application/ld+json"), ld.json())


def test_temporal_aggregated_values(fixed):
    client, provider = fixed
    resp = _get(client, "/temporal/entities/urn:ngsi-ld:Station:S1",
                {"options": "aggregatedValues", "aggrMethods": "totalCount,sum,avg,min,max",
                 "aggrPeriodDuration": "PT1H", "attrs": "weight", **BETWEEN})
    body = check_json(resp, _validator(AGGREGATED, "#/components/schemas/AggregatedEntity"))
    assert body["weight"]["type"] == "Property"
    assert body["weight"]["avg"] == [[1.5, "2026-05-01T00:00:00Z", "2026-05-01T01:00:00Z"],
                                     [2.5, "2026-05-01T01:00:00Z", "2026-05-01T02:00:00Z"]]
    assert set(body["weight"]) == {"type", "totalCount", "sum", "avg", "min", "max"}
    assert provider.calls[-1] == ("aggregated", ("urn:ngsi-ld:Station:S1",), ("weight",),
                                  ("totalCount", "sum", "avg", "min", "max"), 3_600_000, MAY1, MAY1 + 86_400_000)
    for dur, ms in [("PT10M", 600_000), ("P1D", 86_400_000), ("PT1H30M", 5_400_000), ("P1W", 604_800_000),
                    (None, 0), ("PT0.5S", None)]:
        params = {"options": "aggregatedValues", "aggrMethods": "max", **BETWEEN}
        if dur:
            params["aggrPeriodDuration"] = dur
        resp = _get(client, "/temporal/entities/urn:ngsi-ld:Station:S1", params)
        if ms is None:
            check_error(resp, 400, "BadRequestData", "aggrPeriodDuration")
        else:
            assert resp.status_code == 200 and provider.calls[-1][4] == ms, (dur, resp.text)
    # a year of days is fine aggregated, not raw
    year = {"timerel": "between", "timeAt": "2025-06-01T00:00:00Z", "endTimeAt": "2026-06-01T00:00:00Z"}
    assert _get(client, "/temporal/entities/urn:ngsi-ld:Station:S1",
                {"options": "aggregatedValues", "aggrMethods": "sum", "aggrPeriodDuration": "P1D", **year}
                ).status_code == 200
    check_error(_get(client, "/temporal/entities/urn:ngsi-ld:Station:S1", year), 400, "BadRequestData",
                "31 days")
    # more values than one answer holds (entities x attributes x methods x periods): the first whole periods
    # that fit, 206 with the range they cover; asked from its end, the next page
    five = "totalCount,sum,avg,min,max"
    hours = {"options": "aggregatedValues", "aggrMethods": five, "aggrPeriodDuration": "PT1H", "attrs": "weight",
             **year}
    resp = _get(client, "/temporal/entities/urn:ngsi-ld:Station:S1", hours)
    y0 = 1_748_736_000_000  # 2025-06-01T00:00:00Z
    assert resp.status_code == 206  # 5 series: 1,000 periods of the 8,760
    assert resp.headers["content-range"] == "date-time 2025-06-01T00:00:00Z-2025-07-12T16:00:00Z/*"
    assert provider.calls[-1][4:] == (3_600_000, y0, y0 + 1_000 * 3_600_000)
    resp = _get(client, "/temporal/entities/urn:ngsi-ld:Station:S1",
                {**hours, "timeAt": "2025-07-12T16:00:00Z"})
    assert resp.status_code == 206 and provider.calls[-1][5:] == (y0 + 1_000 * 3_600_000, y0 + 2_000 * 3_600_000)
    resp = _get(client, "/temporal/entities/urn:ngsi-ld:Station:S1", {**hours, "aggrPeriodDuration": "P1D"})
    assert resp.status_code == 200 and "content-range" not in resp.headers  # 365 x 5 values fit
    assert provider.calls[-1][5:] == (y0, y0 + 365 * 86_400_000)


@pytest.mark.parametrize(("path", "params", "kind", "word"), [
    ("/temporal/entities", {"type": "Station"}, "BadRequestData", "timerel"),
    ("/temporal/entities", {"timerel": "after", "timeAt": "2026-05-27T00:00:00Z"}, "BadRequestData",
     "at least one"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {"timerel": "between", "timeAt": "2026-05-01T00:00:00Z"},
     "BadRequestData", "endTimeAt"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {"timerel": "during", "timeAt": "2026-05-01T00:00:00Z"},
     "BadRequestData", "timerel"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {"timerel": "before"}, "BadRequestData", "timeAt"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {"timerel": "before", "timeAt": "yesterday"}, "BadRequestData",
     "timeAt"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {"timerel": "before", "timeAt": "2026-05-01T00:00:00"},
     "BadRequestData", "timeAt"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {"timerel": "after", "timeAt": "2020-01-01T00:00:00Z"},
     "BadRequestData", "between"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "endTimeAt": "2026-04-01T00:00:00Z"},
     "BadRequestData", "after timeAt"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "lastN": "0"}, "BadRequestData", "lastN"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "options": "aggregatedValues"}, "BadRequestData",
     "aggrMethods"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "options": "aggregatedValues",
                                                   "aggrMethods": "sum,median"}, "BadRequestData", "aggrMethods"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "options": "aggregatedValues", "aggrMethods": "sum",
                                                   "aggrPeriodDuration": "P1M"}, "BadRequestData", "months"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "options": "aggregatedValues", "aggrMethods": "sum",
                                                   "aggrPeriodDuration": "PT1S"}, "BadRequestData", "periods"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "options": "temporalValues,aggregatedValues"},
     "InvalidRequest", "not both"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "options": "keyValues"}, "InvalidRequest",
     "keyValues"),
    ("/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "timeproperty": "modifiedAt"}, "BadRequestData",
     "observedAt"),
    ("/temporal/entities", {"type": "Station", "limit": "101", **BETWEEN}, "BadRequestData", "limit"),
])
def test_temporal_400s(fixed, path, params, kind, word):
    client, _ = fixed
    check_error(_get(client, path, params), 400, kind, word)


def test_temporal_defaults_bounds_and_partial_content(fixed, token):
    client, provider = fixed
    now = int(time.time() * 1000)
    assert _get(client, "/temporal/entities/urn:ngsi-ld:Station:S1").status_code == 200
    _, _, _, start, end, *_ = provider.calls[-1]
    assert end - start == 24 * 3_600_000 + 1 and abs(end - now) < 60_000  # the last 24 hours
    _get(client, "/temporal/entities/urn:ngsi-ld:Station:S1", {"timerel": "before", "timeAt": "2026-05-01T00:00:00Z"})
    assert provider.calls[-1][3:5] == (MAY1 - 31 * 86_400_000, MAY1)
    check_error(_get(client, "/temporal/entities/urn:ngsi-ld:Station:S9", BETWEEN), 404, "ResourceNotFound")

    # more instances than one answer holds: 206 with the range it covers
    tokens_file, tok = token
    big = FixedProvider(n_instances=MAX_INSTANCES + 5)
    app = FastAPI()
    api = Api(_settings(tokens_file))
    ngsi_ld.install(app, api, [big])
    c2 = TestClient(app, headers={"Authorization": f"Bearer {tok}"})
    resp = _get(c2, "/temporal/entities/urn:ngsi-ld:Station:S1", {**BETWEEN, "attrs": "weight",
                                                                   "options": "temporalValues"})
    assert resp.status_code == 206  # one attribute of one entity: the whole answer's share
    assert resp.headers["content-range"] == "date-time 2026-05-01T00:00:00Z-2026-05-02T17:39:00Z/*"
    assert len(resp.json()["weight"]["values"]) == MAX_ANSWER_INSTANCES == 2_500
    assert per_series_limit(1) == 2_500 and per_series_limit(60) == 41 and per_series_limit(10**6) == 10

    # the provider's InfluxDB failing: 503 ProblemDetails, nothing internal (once the kept entities are too old)
    api.clock = lambda: time.time() + MAX_AGE_TTLS * WORLD_TTL_S + 1
    big.fail = True
    resp = _get(c2, "/entities", {"type": "Station"})
    assert resp.status_code == 503 and resp.json()["type"] == ERR + "InternalError"
    valid(error_schema(), resp.json())


def test_service_scope_and_the_apps_wiring(token):
    """Through the whole app (create_app): the facade is there, its data routes need scope service, its
    @context is open, and its errors stay NGSI-LD ProblemDetails next to the app's own handler."""
    tokens_file, tok = token
    client = TestClient(create_app(_settings(tokens_file)))
    doc = client.get("/openapi.json").json()
    ops = {p: item["get"]["x-scope"] for p, item in doc["paths"].items() if p.startswith(V)}
    assert ops.pop(f"{V}/jsonldContexts/cityos") == "open"
    assert set(ops) == {f"{V}/{p}" for p in ("entities", "entities/{entityId}", "types", "types/{type}",
                                             "attributes", "attributes/{attrId}", "temporal/entities",
                                             "temporal/entities/{entityId}")}
    assert set(ops.values()) == {SERVICE}
    assert client.get(f"{V}/entities?type=WeatherObserved").status_code == 401
    resp = client.get(f"{V}/entities", headers={"Authorization": f"Bearer {tok}"})
    check_error(resp, 400, "BadRequestData", "at least one")
    resp = client.get(f"{V}/entities?type=WeatherObserved", headers={"Authorization": f"Bearer {tok}"})
    assert resp.status_code == 503 and resp.json()["type"] == ERR + "InternalError"  # InfluxDB unreachable
    ctx = client.get(f"{V}/jsonldContexts/cityos").json()["@context"][1]
    assert ctx["WeatherObserved"] == "https://smartdatamodels.org/dataModel.Weather/WeatherObserved"
    assert ctx["precipitation"] == "https://smartdatamodels.org/dataModel.Weather/precipitation"
    assert ctx["continuousRainfall"] == "urn:tsuyama-cityos:terms:continuousRainfall"


# ------------------------------------------------------------------------------------------------------------
# the forest stations' provider, on InfluxDB


def _forest(device: str, ts: int, **values: float) -> Reading:
    return Reading(device_id=device, kind="forest_station", ts=ts, values=values)


@pytest.fixture
def forest(stack_info, influx_db, token) -> tuple[TestClient, int]:
    """Two stations: forest-01-01 (rain, soil at both depths, tilt with its rate, a position) every 10 minutes
    for 3 hours; forest-01-02 (soil only, no position) once. Returns the newest time (ms)."""
    now = int(time.time() * 1000)
    t_end = now - now % 600_000 - 600_000
    readings = []
    for k in range(18, -1, -1):  # 3 hours, oldest first
        t = t_end - k * 600_000
        i = 18 - k
        vals: dict[str, float] = {"rain_mm": 1.0 * (i % 3), "rain_intensity_mm_h": 10.0 + i,
                                  "rain_cumulative_mm": 5.0 * i, "soil_moisture_pct": 30.0 + i,
                                  "soil_moisture_deep_pct": 25.0, "tilt_x_deg": 0.5 + i / 100,
                                  "tilt_y_deg": -0.25, "lat": 35.136, "lon": 133.978}
        if i >= 6:
            vals["tilt_rate_x_deg_h"] = 0.06
        readings.append(_forest("forest-01-01", t, **vals))
    readings.append(_forest("forest-01-02", t_end - 300_000, soil_moisture_pct=41.5))
    batch = checked(TelemetryBatch(gateway_id="gw-forest-01", boot_id="boot-0001", seq=1, sent_at=t_end,
                                   readings=readings))
    influx_write(stack_info, influx_db, batch_to_lines(batch))
    tokens_file, tok = token
    settings = _settings(tokens_file, InfluxSettings(**influx_settings(stack_info, "reader", influx_db)))
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {tok}"}), t_end


def test_forest_stations_as_ngsi_ld(forest):
    client, t_end = forest
    iso_end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_end / 1000))
    body = check_json(_get(client, "/entities", {"type": "WeatherObserved,DeviceMeasurement", "count": "true"}),
                      response_schema("/entities"), count=6)
    ids = [e["id"] for e in body]
    assert ids == ["urn:ngsi-ld:DeviceMeasurement:forest-01-01-soilMoisture",
                   "urn:ngsi-ld:DeviceMeasurement:forest-01-01-soilMoistureDeep",
                   "urn:ngsi-ld:DeviceMeasurement:forest-01-01-tiltX",
                   "urn:ngsi-ld:DeviceMeasurement:forest-01-01-tiltY",
                   "urn:ngsi-ld:DeviceMeasurement:forest-01-02-soilMoisture",
                   "urn:ngsi-ld:WeatherObserved:forest-01-01"]
    wo = body[-1]
    assert wo["precipitation"] == {"type": "Property", "value": 28.0, "observedAt": iso_end, "unitCode": "MMT"}
    assert wo["continuousRainfall"]["value"] == 90.0 and wo["rainfall"]["value"] == 0.0
    assert wo["location"]["value"] == {"type": "Point", "coordinates": [133.978, 35.136]}
    assert wo["refDevice"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:forest-01-01"}
    assert wo["dateObserved"] == {"type": "Property", "value": iso_end}
    soil = body[0]
    assert soil["numValue"] == {"type": "Property", "value": 48.0, "observedAt": iso_end, "unitCode": "P1"}
    assert soil["controlledProperty"]["value"] == "soilMoisture" and soil["depth"]["value"] == 10
    tilt = body[2]
    assert tilt["numValue"]["unitCode"] == "DD" and tilt["controlledProperty"]["value"] == "tilt"
    assert tilt["tiltRate"]["value"] == 0.06 and "tiltRate" not in body[3]
    assert "location" not in body[4]

    # the facade's selection over real data
    assert [e["id"] for e in _get(client, "/entities", {
        "q": "controlledProperty==\"soilMoisture\";numValue>45", "options": "keyValues"}).json()] == \
        ["urn:ngsi-ld:DeviceMeasurement:forest-01-01-soilMoisture"]
    near = _get(client, "/entities", {"type": "WeatherObserved", "georel": "near;maxDistance==100",
                                      "geometry": "Point", "coordinates": "[133.9785,35.136]"}).json()
    assert [e["id"] for e in near] == ["urn:ngsi-ld:WeatherObserved:forest-01-01"]  # 45.6 m away
    geo = _get(client, "/entities/urn:ngsi-ld:WeatherObserved:forest-01-01", accept="application/geo+json")
    valid(response_schema("/entities/{entityId}", media="application/geo+json"), geo.json())
    types = check_json(_get(client, "/types/DeviceMeasurement"), response_schema("/types/{type}"))
    assert types["entityCount"] == 5
    assert types["id"] == "https://smartdatamodels.org/dataModel.Device/DeviceMeasurement"


def test_forest_temporal_on_influxdb(forest):
    client, t_end = forest

    def iso(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))

    rng = {"timerel": "between", "timeAt": iso(t_end - 3 * 3_600_000), "endTimeAt": iso(t_end + 1000)}
    wo = "urn:ngsi-ld:WeatherObserved:forest-01-01"
    one = check_json(_get(client, f"/temporal/entities/{wo}", {**rng, "attrs": "precipitation"}),
                     response_schema("/temporal/entities/{entityId}"))
    inst = one["precipitation"]
    assert len(inst) == 19 and inst[0]["value"] == 10.0 and inst[-1] == {
        "type": "Property", "value": 28.0, "observedAt": iso(t_end), "unitCode": "MMT"}

    last = _get(client, f"/temporal/entities/{wo}", {**rng, "lastN": "3", "options": "temporalValues"}).json()
    for e in (last,):
        valid(_validator(TEMPORAL_VALUES, "#/components/schemas/TemporalValuesEntity"), e)
    assert last["precipitation"]["values"] == [[26.0, iso(t_end - 1_200_000)], [27.0, iso(t_end - 600_000)],
                                               [28.0, iso(t_end)]]
    assert set(last) == {"id", "type", "precipitation", "continuousRainfall", "rainfall"}

    # the tilt rate exists from the 7th reading on: lastN is per attribute
    tilt = _get(client, "/temporal/entities/urn:ngsi-ld:DeviceMeasurement:forest-01-01-tiltX",
                {**rng, "options": "temporalValues"}).json()
    assert len(tilt["numValue"]["values"]) == 19 and len(tilt["tiltRate"]["values"]) == 13

    # aggregates: periods from timeAt (the first hour holds readings 0..5)
    agg = _get(client, f"/temporal/entities/{wo}", {
        **rng, "attrs": "rainfall,precipitation", "options": "aggregatedValues",
        "aggrMethods": "totalCount,distinctCount,sum,avg,min,max,stddev", "aggrPeriodDuration": "PT1H"})
    body = check_json(agg, _validator(AGGREGATED, "#/components/schemas/AggregatedEntity"))
    h0 = t_end - 3 * 3_600_000
    assert body["rainfall"]["totalCount"][0] == [6, iso(h0), iso(h0 + 3_600_000)]
    assert body["rainfall"]["sum"][0][0] == 6.0  # 0+1+2+0+1+2
    assert body["rainfall"]["distinctCount"][0][0] == 3
    assert body["precipitation"]["min"][0][0] == 10.0 and body["precipitation"]["max"][0][0] == 15.0
    assert body["precipitation"]["avg"][0][0] == pytest.approx(12.5)
    assert [p[0] for p in body["rainfall"]["totalCount"]] == [6, 6, 6, 1]
    assert body["rainfall"]["totalCount"][-1][2] == iso(t_end + 1000)  # the last period ends with the range

    whole = _get(client, f"/temporal/entities/{wo}", {**rng, "attrs": "rainfall", "options": "aggregatedValues",
                                                      "aggrMethods": "sum"}).json()
    assert whole["rainfall"]["sum"] == [[18.0, rng["timeAt"], rng["endTimeAt"]]]

    many = check_json(_get(client, "/temporal/entities", {"type": "DeviceMeasurement", "q": "depth==10",
                                                          "attrs": "numValue", "lastN": "1", "count": "true", **rng}),
                      response_schema("/temporal/entities"), count=2)
    assert [e["numValue"][0]["value"] for e in many] == [48.0, 41.5]
    assert many[1]["numValue"][0]["unitCode"] == "P1"


def test_forest_aggregates_from_the_rollups_equal_the_raw_ones(forest, stack_info, influx_db, monkeypatch):
    """Periods made of whole rollup rows are answered from the rollups (rows up to the rollup's progress, raw points
    after it): the same numbers as InfluxDB's aggregation of the raw points."""
    client, t_end = forest

    def iso(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))

    h0 = t_end - 3 * 3_600_000
    cases = [{"aggrPeriodDuration": "PT1H", "timeAt": iso(h0 - h0 % 3_600_000)},
             {"aggrPeriodDuration": "PT20M", "timeAt": iso(h0), "aggrMethods": "avg,max"},
             {"timeAt": iso(h0), "aggrMethods": "sum"}]  # one period, the whole range
    wanted = []
    for case in cases:
        params = {"timerel": "between", "endTimeAt": iso(t_end + 600_000), "attrs": "rainfall,precipitation",
                  "options": "aggregatedValues", "aggrMethods": "totalCount,sum,avg,min,max", **case}
        wanted.append((params, _get(client, "/temporal/entities/urn:ngsi-ld:WeatherObserved:forest-01-01",
                                    params).json()))
    run_once(RollupConfig.model_validate({"influx": influx_settings(stack_info, "rollup", influx_db)}),
             t_end - 50 * 60_000)
    calls = []
    real = forest_ngsi.rolled_up
    monkeypatch.setattr(forest_ngsi, "rolled_up", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    for params, want in wanted:
        got = _get(client, "/temporal/entities/urn:ngsi-ld:WeatherObserved:forest-01-01", params).json()
        assert got == want, params
    assert calls == [3_600_000, 600_000, 600_000]


def test_forest_provider_alone(stack_info, influx_db):
    """The provider's own contract: ids it does not know are left out, tag values are checked."""
    influx_write(stack_info, influx_db, batch_to_lines(checked(TelemetryBatch(
        gateway_id="gw-forest-01", boot_id="boot-0001", seq=1, sent_at=int(time.time() * 1000),
        readings=[_forest("forest-09-01", int(time.time() * 1000) - 1000, rain_mm=0.5)]))))
    api = Api(ApiSettings(influx=InfluxSettings(**influx_settings(stack_info, "reader", influx_db))))
    p = ForestProvider()
    now = int(time.time() * 1000)
    got = p.history(api, ["urn:ngsi-ld:WeatherObserved:forest-09-01", "urn:ngsi-ld:WeatherObserved:x' OR 1=1",
                          "urn:ngsi-ld:DeviceMeasurement:forest-09-01-nothing", "urn:ngsi-ld:Other:forest-09-01"],
                    ["rainfall"], now - 3_600_000, now + 1, None, 10)
    assert list(got) == ["urn:ngsi-ld:WeatherObserved:forest-09-01"]
    assert got["urn:ngsi-ld:WeatherObserved:forest-09-01"]["rainfall"][0][0] == 0.5
    assert isinstance(p, ngsi_ld.EntityProvider)
    api.close()


def test_forest_current_state_of_stations_silent_for_days(stack_info, influx_db):
    """Each attribute's newest value over the 30 days looked back, though the last day is looked in first: a
    station silent for 3 days is an entity with its last values, a field a station stopped sending keeps its
    older value, one older than 30 days is gone."""
    now = int(time.time() * 1000)
    day = 86_400_000
    readings = [
        _forest("forest-09-01", now - 2 * day, soil_moisture_pct=30.0, soil_moisture_deep_pct=25.0),
        _forest("forest-09-01", now - 60_000, soil_moisture_pct=31.0),  # no deep value since 2 days
        _forest("forest-09-02", now - 3 * day, soil_moisture_pct=40.0, lat=35.1, lon=134.0),  # silent 3 days
        _forest("forest-09-03", now - 31 * day, soil_moisture_pct=50.0),  # beyond the 30 days
    ]
    influx_write(stack_info, influx_db, batch_to_lines(checked(TelemetryBatch(
        gateway_id="gw-forest-09", boot_id="boot-0001", seq=1, sent_at=now, readings=readings))))
    api = Api(ApiSettings(influx=InfluxSettings(**influx_settings(stack_info, "reader", influx_db))))
    got = {e.id: e for e in ForestProvider().entities(api)}
    assert sorted(got) == ["urn:ngsi-ld:DeviceMeasurement:forest-09-01-soilMoisture",
                           "urn:ngsi-ld:DeviceMeasurement:forest-09-01-soilMoistureDeep",
                           "urn:ngsi-ld:DeviceMeasurement:forest-09-02-soilMoisture"]
    deep = got["urn:ngsi-ld:DeviceMeasurement:forest-09-01-soilMoistureDeep"].attrs["numValue"]
    assert (deep.value, deep.observed_ms) == (25.0, now - 2 * day)
    assert got["urn:ngsi-ld:DeviceMeasurement:forest-09-01-soilMoisture"].attrs["numValue"].value == 31.0
    silent = got["urn:ngsi-ld:DeviceMeasurement:forest-09-02-soilMoisture"].attrs
    assert silent["numValue"].value == 40.0 and silent["location"].value == {"type": "Point",
                                                                             "coordinates": [134.0, 35.1]}
    api.close()


def test_current_entities_are_kept_and_refreshed_behind_the_requests(token, monkeypatch):
    """A platform polling every second costs one build of every provider's state per WORLD_TTL_S, not one per
    request; after it, a request starts a rebuild and is answered at once, and changes show."""
    tokens_file, tok = token
    p = FixedProvider()
    built = []
    now = list(ENTITIES)
    monkeypatch.setattr(p, "entities", lambda api: built.append(1) or list(now))
    app = FastAPI()
    api = Api(_settings(tokens_file))
    t = [time.time()]
    api.clock = lambda: t[0]
    ngsi_ld.install(app, api, [p])
    c = TestClient(app, headers={"Authorization": f"Bearer {tok}"})
    for _ in range(5):
        assert _ids(_get(c, "/entities", {"type": "Station"}))[-1] == "S5"
    assert len(built) == 1
    now[4] = _station(6, None, None, "Hokubo", None)  # S5 is gone, S6 came
    t[0] += WORLD_TTL_S
    assert _ids(_get(c, "/entities", {"type": "Station"}))[-1] == "S5"  # the kept world, while it is rebuilt
    deadline = time.monotonic() + 5
    while _ids(_get(c, "/entities", {"type": "Station"}))[-1] != "S6":
        assert time.monotonic() < deadline, "the rebuilt world is served"
        time.sleep(0.01)
    assert len(built) == 2
