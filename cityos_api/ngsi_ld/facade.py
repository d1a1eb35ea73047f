"""The read-only NGSI-LD facade's routes under ``/ngsi-ld/v1`` (ETSI GS CIM 009 V1.7.1; docs/ngsi-ld.md).

Every data route has scope ``service``; the ``@context`` document is open (a JSON-LD processor fetches it without
a token). Each request reads the providers' current entities (a few thousand at most), then filters, pages and
renders here; temporal requests ask the providers for the history of the page's entities only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from cityos_api.auth import OPEN, SERVICE
from cityos_api.core import Api
from cityos_api.ngsi_ld import query as nq
from cityos_api.ngsi_ld import render
from cityos_api.ngsi_ld.errors import NgsiError, bad_request
from cityos_api.ngsi_ld.provider import AGGR_METHODS, Entity, EntityProvider, TypeInfo
from cityos_api.ngsi_ld.temporal import MAX_PERIODS, parse_duration_ms, time_range, utc

__all__ = ["BASE", "CONTEXT_PATH", "router"]

BASE = "/ngsi-ld/v1"
CONTEXT_PATH = f"{BASE}/jsonldContexts/cityos"
JSON, LD, GEO = "application/json", "application/ld+json", "application/geo+json"
LD_REL = 'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
DEFAULT_LIMIT, MAX_LIMIT, MAX_TEMPORAL_LIMIT = 20, 1000, 100
#: Raw instances per attribute and entity in one answer; beyond, 206 Partial Content with Content-Range.
MAX_INSTANCES = 10_000
MAX_LAST_N = MAX_INSTANCES
_ENTITY_OPTIONS = {"normalized", "concise", "keyValues", "simplified", "sysAttrs"}
_TEMPORAL_OPTIONS = {"temporalValues", "aggregatedValues", "sysAttrs"}


@dataclass
class _World:
    """Every provider's entities now, with their types and owners."""

    entities: list[Entity]
    types: dict[str, TypeInfo]
    owner: dict[str, EntityProvider]


def _problem_responses() -> dict[int | str, dict[str, Any]]:
    return {400: {"description": "BadRequestData or InvalidRequest (NGSI-LD ProblemDetails, application/json)"},
            406: {"description": "an Accept the route cannot answer"},
            503: {"description": "InfluxDB unavailable"}}


def negotiate(accept: str | None, offered: Sequence[str]) -> str:
    """The media type to answer (``offered[0]`` for ``*/*``, ``application/*`` or no Accept), or 406."""
    if not accept:
        return offered[0]
    prefs: list[tuple[float, int, str]] = []
    for n, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if fields[0] and q > 0:
            prefs.append((-q, n, fields[0].lower()))
    for _, _, mt in sorted(prefs):
        if mt in offered:
            return mt
        if mt in ("*/*", "application/*"):
            return offered[0]
    raise NgsiError("NotAcceptable", f"this route answers {', '.join(offered)}; Accept was {accept[:100]!r}")


def _int(param: str, raw: str | None, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise bad_request(param, f"an integer from {lo} to {hi}", raw) from None
    if not lo <= v <= hi:
        raise bad_request(param, f"an integer from {lo} to {hi}", raw)
    return v


def _bool(param: str, raw: str | None) -> bool:
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise bad_request(param, "true or false", raw)
    return raw == "true"


def _options(raw: str | None, allowed: set[str], fmt: str | None = None) -> set[str]:
    opts = {o.strip() for o in raw.split(",")} if raw else set()
    if fmt is not None:
        opts.add(fmt)
    unknown = opts - allowed
    if unknown:
        raise NgsiError("InvalidRequest", f"options: {', '.join(sorted(unknown))[:80]} not supported here "
                        f"(supported: {', '.join(sorted(allowed))})")
    return opts


def _representation(opts: set[str]) -> str:
    reps = {"keyValues" if o == "simplified" else o for o in opts} & {"normalized", "concise", "keyValues"}
    if len(reps) > 1:
        raise NgsiError("InvalidRequest", "options: only one of normalized, concise, keyValues (simplified)")
    return reps.pop() if reps else "normalized"


class _Facade:
    def __init__(self, api: Api, providers: Sequence[EntityProvider]) -> None:
        self.api = api
        self.providers = list(providers)
        self.types: dict[str, TypeInfo] = {}
        for p in self.providers:
            for name, t in p.types.items():
                old = self.types.get(name)
                self.types[name] = t if old is None else TypeInfo(name, {**old.attrs, **t.attrs}, old.iri,
                                                                   old.description)
        self.iris: dict[str, str] = {}  # IRI of our context → short name
        for t in self.types.values():
            self.iris[t.iri] = t.name
            for k, a in t.attrs.items():
                self.iris.setdefault(a.iri, k)
        self.context = render.context_document(self.types.values())

    # ---- reading
    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(self.api, *args)
        except HTTPException as exc:
            if exc.status_code == 503:
                raise NgsiError("InternalError", "InfluxDB unavailable: try again shortly", 503,
                                "Service Unavailable") from None
            raise

    def world(self) -> _World:
        ents: list[Entity] = []
        owner: dict[str, EntityProvider] = {}
        for p in self.providers:
            for e in self.call(p.entities):
                if e.type in p.types and e.id not in owner:
                    owner[e.id] = p
                    ents.append(e)
        ents.sort(key=lambda e: e.id)
        return _World(ents, self.types, owner)

    # ---- answering
    def link(self, request: Request) -> str:
        return f"<{str(request.base_url).rstrip('/')}{CONTEXT_PATH}>; {LD_REL}"

    def answer(self, request: Request, body: Any, fmt: str, headers: Mapping[str, str] | None = None,
               status: int = 200) -> JSONResponse:
        hdrs = dict(headers or {})
        if fmt == LD:
            ctx = self.context["@context"]
            if isinstance(body, list):
                body = [{"@context": ctx, **b} for b in body]
            else:
                body = {"@context": ctx, **body}
        else:
            hdrs["Link"] = self.link(request)
        return JSONResponse(body, status_code=status, headers=hdrs, media_type=fmt)

    # ---- selection
    def select(self, w: _World, params: Mapping[str, str | None], *, required: bool) -> tuple[
            list[Entity], list[str] | None]:
        types = nq.parse_names("type", params.get("type"), self.iris)
        ids = nq.parse_ids(params.get("id"))
        pattern = nq.parse_id_pattern(params.get("idPattern"))
        attrs = nq.parse_names("attrs", params.get("attrs"), self.iris)
        q = nq.parse_q(params["q"]) if params.get("q") is not None else None
        geo = nq.parse_geo(params.get("georel"), params.get("geometry"), params.get("coordinates"),
                           params.get("geoproperty"))
        if required and not any(x is not None for x in (types, ids, pattern, attrs, q, geo)):
            raise NgsiError("BadRequestData", "at least one of type, id, idPattern, attrs, q or a geo-query "
                            "(georel, geometry, coordinates) is required")
        out = []
        for e in w.entities:
            if types is not None and e.type not in types:
                continue
            if ids is not None and e.id not in ids:
                continue
            if pattern is not None and not pattern.fullmatch(e.id):
                continue
            if attrs is not None and not any(a in e.attrs for a in attrs):
                continue
            if q is not None and not q(e):
                continue
            if geo is not None and not geo(e):
                continue
            out.append(e)
        return out, attrs

    def find(self, w: _World, entity_id: str) -> Entity:
        if len(entity_id) > 256 or not nq._URI_FULL.fullmatch(entity_id):
            raise bad_request("entityId", "an entity id (a URI such as urn:ngsi-ld:<Type>:<id>)", entity_id)
        for e in w.entities:
            if e.id == entity_id:
                return e
        raise NgsiError("ResourceNotFound", f"no entity {entity_id}")

    def type_name(self, raw: str) -> str:
        return self.iris.get(raw, raw)


def router(api: Api, providers: Sequence[EntityProvider]) -> APIRouter:
    """The facade's routes over ``providers``."""
    r = APIRouter(tags=["ngsi-ld"])
    f = _Facade(api, providers)
    resp = _problem_responses()

    # ---- @context
    @api.route(r, CONTEXT_PATH, scope=OPEN, response_class=JSONResponse,
               responses={200: {"content": {LD: {}}}})
    def json_ld_context() -> JSONResponse:
        """Our JSON-LD @context: every type's and attribute's short name → its IRI (a Smart Data Model's term,
        or our extension's ``urn:tsuyama-cityos:terms:``), after the NGSI-LD core context."""
        return JSONResponse(f.context, media_type=LD, headers={"Cache-Control": "max-age=3600"})

    # ---- entities
    @api.route(r, f"{BASE}/entities", scope=SERVICE, responses=resp)
    def query_entities(request: Request, type: str | None = None, id: str | None = None,
                       idPattern: str | None = None, attrs: str | None = None, q: str | None = None,
                       georel: str | None = None, geometry: str | None = None, coordinates: str | None = None,
                       geoproperty: str | None = None, geometryProperty: str | None = None,
                       limit: str | None = None, offset: str | None = None, count: str | None = None,
                       options: str | None = None, format: str | None = None) -> JSONResponse:
        """5.7.2 Query Entities: ``type``, ``id``, ``idPattern``, ``attrs``, ``q``, geo-queries (``near``,
        ``within``), ``limit`` (default 20, at most 1000), ``offset``, ``count=true``, ``options=keyValues``
        (``format=simplified``), ``concise`` or ``normalized``; ``Accept`` JSON, JSON-LD or GeoJSON."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD, GEO))
        rep = _representation(_options(options, _ENTITY_OPTIONS, _format(format)))
        params = dict(request.query_params)
        lim = _int("limit", limit, DEFAULT_LIMIT, 0, MAX_LIMIT)
        off = _int("offset", offset, 0, 0, 10**9)
        cnt = _bool("count", count)
        if lim == 0 and not cnt:
            raise bad_request("limit", "0 only with count=true", limit)
        w = f.world()
        found, only = f.select(w, params, required=True)
        page = found[off:off + lim]
        headers = {"NGSILD-Results-Count": str(len(found))} if cnt else {}
        if fmt == GEO:
            gp = geometryProperty or "location"
            body: Any = {"type": "FeatureCollection",
                         "features": [render.feature(e, w.types[e.type], rep, only, gp) for e in page]}
        else:
            body = [render.entity(e, w.types[e.type], rep, only) for e in page]
        return f.answer(request, body, fmt, headers)

    @api.route(r, f"{BASE}/entities/{{entityId}}", scope=SERVICE,
               responses={**resp, 404: {"description": "ResourceNotFound"}})
    def retrieve_entity(request: Request, entityId: str, type: str | None = None,
                        attrs: str | None = None, geometryProperty: str | None = None,
                        options: str | None = None, format: str | None = None) -> JSONResponse:
        """5.7.1 Retrieve Entity (normalized, concise or keyValues; JSON, JSON-LD or a GeoJSON Feature)."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD, GEO))
        rep = _representation(_options(options, _ENTITY_OPTIONS, _format(format)))
        only = nq.parse_names("attrs", attrs, f.iris)
        types = nq.parse_names("type", type, f.iris)
        e = f.find(f.world(), entityId)
        if types is not None and e.type not in types:
            raise NgsiError("ResourceNotFound", f"no entity {entityId} of type {type}")
        if only is not None and not any(a in e.attrs for a in only):
            raise NgsiError("ResourceNotFound", f"entity {entityId} has none of the attributes {attrs}")
        t = f.types[e.type]
        if fmt == GEO:
            return f.answer(request, render.feature(e, t, rep, only, geometryProperty or "location"), fmt)
        return f.answer(request, render.entity(e, t, rep, only), fmt)

    # ---- types
    @api.route(r, f"{BASE}/types", scope=SERVICE, responses=resp)
    def retrieve_types(request: Request, details: str | None = None) -> JSONResponse:
        """5.7.5/5.7.6: the types that have entities now (``details=true``: with their attribute names)."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        w = f.world()
        present = sorted({e.type for e in w.entities})
        if _bool("details", details):
            body: Any = [{"id": f.types[n].iri, "type": "EntityType", "typeName": n,
                          "attributeNames": _attr_names(w, n)} for n in present]
        else:
            body = {"id": _list_id("EntityTypeList", present), "type": "EntityTypeList", "typeList": present}
        return f.answer(request, body, fmt)

    @api.route(r, f"{BASE}/types/{{type}}", scope=SERVICE,
               responses={**resp, 404: {"description": "ResourceNotFound"}})
    def retrieve_type(request: Request, type: str) -> JSONResponse:
        """5.7.7: one type's entity count and attributes (404 when no entity has it)."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        name = f.type_name(type)
        w = f.world()
        ents = [e for e in w.entities if e.type == name]
        if not ents:
            raise NgsiError("ResourceNotFound", f"no entity of type {type[:100]}")
        t = f.types[name]
        details = [{"id": t.attrs[a].iri, "type": "Attribute", "attributeName": a,
                    "attributeTypes": [t.attrs[a].kind]} for a in _attr_names(w, name)]
        body = {"id": t.iri, "type": "EntityTypeInfo", "typeName": name, "entityCount": len(ents),
                "attributeDetails": details}
        return f.answer(request, body, fmt)

    # ---- attributes
    @api.route(r, f"{BASE}/attributes", scope=SERVICE, responses=resp)
    def retrieve_attributes(request: Request, details: str | None = None) -> JSONResponse:
        """5.7.8/5.7.9: the attributes entities have now (``details=true``: counts, kinds, types)."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        stats = _attr_stats(f.world())
        if _bool("details", details):
            body: Any = [s for _, s in sorted(stats.items())]
        else:
            names = sorted(stats)
            body = {"id": _list_id("AttributeList", names), "type": "AttributeList", "attributeList": names}
        return f.answer(request, body, fmt)

    @api.route(r, f"{BASE}/attributes/{{attrId}}", scope=SERVICE,
               responses={**resp, 404: {"description": "ResourceNotFound"}})
    def retrieve_attribute(request: Request, attrId: str) -> JSONResponse:
        """5.7.10: one attribute's count, kinds and the types that have it (404 when no entity has it)."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        s = _attr_stats(f.world()).get(f.iris.get(attrId, attrId))
        if s is None:
            raise NgsiError("ResourceNotFound", f"no entity has an attribute {attrId[:100]}")
        return f.answer(request, s, fmt)

    # ---- temporal
    def temporal(entities: list[Entity], only: list[str] | None, params: Mapping[str, Any],
                 owner: Mapping[str, EntityProvider], *, required: bool) -> tuple[list[dict[str, Any]], dict[str, str], int]:
        opts = _options(params.get("options"), _TEMPORAL_OPTIONS)
        if {"temporalValues", "aggregatedValues"} <= opts:
            raise NgsiError("InvalidRequest", "options: temporalValues or aggregatedValues, not both")
        aggregated = "aggregatedValues" in opts
        now_ms = int(time.time() * 1000)
        tr = time_range(params.get("timerel"), params.get("timeAt"), params.get("endTimeAt"), now_ms,
                        aggregated=aggregated, required=required)
        if params.get("timeproperty") not in (None, "observedAt"):
            raise bad_request("timeproperty", "observedAt (the only time our data has)", params["timeproperty"])
        by_provider: dict[int, tuple[EntityProvider, list[Entity]]] = {}
        for e in entities:
            p = owner[e.id]
            by_provider.setdefault(id(p), (p, []))[1].append(e)
        headers: dict[str, str] = {}
        status = 200
        results: dict[str, Any] = {}
        if aggregated:
            raw_methods = params.get("aggrMethods")
            if not raw_methods:
                raise NgsiError("BadRequestData", "aggrMethods is required with options=aggregatedValues "
                                f"({', '.join(AGGR_METHODS)})")
            methods = [m.strip() for m in raw_methods.split(",")]
            bad = [m for m in methods if m not in AGGR_METHODS]
            if bad or len(set(methods)) != len(methods):
                raise bad_request("aggrMethods", f"distinct methods of {', '.join(AGGR_METHODS)}", raw_methods)
            period = parse_duration_ms(params.get("aggrPeriodDuration"))
            span = tr.end_ms - tr.start_ms
            if period and -(-span // period) > MAX_PERIODS:
                raise bad_request("aggrPeriodDuration", f"a period giving at most {MAX_PERIODS} periods in the "
                                  "time range", params.get("aggrPeriodDuration"))
            for p, ents in by_provider.values():
                attrs = _temporal_attrs(p, ents, only)
                results.update(f.call(p.aggregated, [e.id for e in ents], attrs, methods, period, tr.start_ms,
                                      tr.end_ms))
            body = [render.temporal_entity(e, f.types[e.type], "aggregatedValues",
                                           aggregates=_known(results.get(e.id, {}), f.types[e.type]))
                    for e in entities]
            return body, headers, status
        last_n = _int("lastN", params.get("lastN"), 0, 1, MAX_LAST_N) or None
        for p, ents in by_provider.values():
            attrs = _temporal_attrs(p, ents, only)
            results.update(f.call(p.history, [e.id for e in ents], attrs, tr.start_ms, tr.end_ms, last_n,
                                  MAX_INSTANCES + 1))
        cut: int | None = None
        for per in results.values():
            for inst in per.values():
                if len(inst) > MAX_INSTANCES:
                    t_last = inst[MAX_INSTANCES - 1][1]
                    cut = t_last if cut is None else min(cut, t_last)
        if cut is not None:
            results = {eid: {a: [i for i in inst if i[1] <= cut] for a, inst in per.items()}
                       for eid, per in results.items()}
            status = 206
            headers["Content-Range"] = f"date-time {utc(tr.start_ms)}-{utc(cut)}/*"
        rep = "temporalValues" if "temporalValues" in opts else "normalized"
        body = [render.temporal_entity(e, f.types[e.type], rep, instances=_known(results.get(e.id, {}),
                                                                               f.types[e.type]))
                for e in entities]
        return body, headers, status

    @api.route(r, f"{BASE}/temporal/entities", scope=SERVICE, responses=resp)
    def query_temporal(request: Request, type: str | None = None, id: str | None = None,
                       idPattern: str | None = None, attrs: str | None = None, q: str | None = None,
                       georel: str | None = None, geometry: str | None = None, coordinates: str | None = None,
                       timerel: str | None = None, timeAt: str | None = None, endTimeAt: str | None = None,
                       lastN: str | None = None, aggrMethods: str | None = None,
                       aggrPeriodDuration: str | None = None, limit: str | None = None,
                       offset: str | None = None, count: str | None = None, options: str | None = None) -> JSONResponse:
        """5.7.4 Query Temporal Evolution of Entities: the selection of Query Entities (type, id, idPattern,
        attrs, q, geo: on the entities' current state) with ``timerel``/``timeAt``/``endTimeAt`` (required),
        ``lastN``, ``options=temporalValues`` or ``aggregatedValues`` (``aggrMethods``, ``aggrPeriodDuration``);
        ``limit`` at most 100 entities."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        params = dict(request.query_params)
        lim = _int("limit", limit, DEFAULT_LIMIT, 0, MAX_TEMPORAL_LIMIT)
        off = _int("offset", offset, 0, 0, 10**9)
        cnt = _bool("count", count)
        if lim == 0 and not cnt:
            raise bad_request("limit", "0 only with count=true", limit)
        w = f.world()
        found, only = f.select(w, params, required=True)
        body, headers, status = temporal(found[off:off + lim], only, params, w.owner, required=True)
        if cnt:
            headers["NGSILD-Results-Count"] = str(len(found))
        return f.answer(request, body, fmt, headers, status)

    @api.route(r, f"{BASE}/temporal/entities/{{entityId}}", scope=SERVICE,
               responses={**resp, 404: {"description": "ResourceNotFound"}})
    def retrieve_temporal(request: Request, entityId: str, attrs: str | None = None,
                          timerel: str | None = None, timeAt: str | None = None,
                          endTimeAt: str | None = None, lastN: str | None = None,
                          aggrMethods: str | None = None, aggrPeriodDuration: str | None = None,
                          options: str | None = None) -> JSONResponse:
        """5.7.3 Retrieve Temporal Evolution of an Entity (without ``timerel``: the last 24 hours)."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        only = nq.parse_names("attrs", attrs, f.iris)
        w = f.world()
        e = f.find(w, entityId)
        body, headers, status = temporal([e], only, dict(request.query_params), w.owner, required=False)
        return f.answer(request, body[0], fmt, headers, status)

    return r


def _format(raw: str | None) -> str | None:
    if raw is None:
        return None
    if raw in ("simplified", "keyValues", "normalized", "concise"):
        return raw
    raise bad_request("format", "simplified, keyValues, normalized or concise", raw)


def _list_id(kind: str, names: Sequence[str]) -> str:
    return f"urn:ngsi-ld:{kind}:{uuid.uuid5(uuid.NAMESPACE_URL, ','.join(names))}"


def _attr_names(w: _World, type_name: str) -> list[str]:
    return sorted({a for e in w.entities if e.type == type_name for a in e.attrs})


def _attr_stats(w: _World) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in w.entities:
        t = w.types[e.type]
        for a in e.attrs:
            info = t.attrs.get(a)
            if info is None:
                continue
            s = out.setdefault(a, {"id": info.iri, "type": "Attribute", "attributeName": a, "attributeCount": 0,
                                   "attributeTypes": [], "typeNames": []})
            s["attributeCount"] += 1
            if info.kind not in s["attributeTypes"]:
                s["attributeTypes"].append(info.kind)
            if e.type not in s["typeNames"]:
                s["typeNames"].append(e.type)
    for s in out.values():
        s["attributeTypes"].sort()
        s["typeNames"].sort()
    return out


def _temporal_attrs(p: EntityProvider, ents: Sequence[Entity], only: Sequence[str] | None) -> list[str]:
    names = {k for e in ents for k, a in p.types[e.type].attrs.items() if a.temporal}
    return sorted(names if only is None else names & set(only))


def _known(per: Mapping[str, Any], t: TypeInfo) -> dict[str, Any]:
    return {a: v for a, v in per.items() if a in t.attrs and t.attrs[a].temporal}
